"""
What the local store keeps track of (L{realize.storage.tracking}) and
whom it tells: the listener of finished and deleted files and the roots
it already knows, one writer per path, thread pools by kind, and the
views a daemon gives its peers (L{realize.services.store}).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from realize.config import parse_config
from realize.errors import Conflict, NotFound, Unauthorized
from realize.hashing import EMPTY_ROOT, LEAF_SIZE, leaf_hash, merkle_root
from realize.model import ArenaName, FileInfo, PeerId, SmallFile
from realize.services.store import PeerView, StoreService
from realize.storage.fs import Stamp
from realize.storage.local import LocalStore
from realize.storage.tracking import LeafBook, WriterRegistry
from tests.helpers import failure_of, make_key, result_of, sync_run_in_thread
from tests.test_storage import (
    BIG,
    MTIME,
    chunked,
    expected_leaves,
    random_bytes,
    read_all,
    stream,
)
from tests.test_storage_real import DeferringRunner

A = ArenaName("a")
KEY = ("/arena", "f")


@define
class Listener:
    """
    A L{realize.interfaces.StoreListener} that records what it is told.
    """

    finished: list[tuple[str, str, int, int, bytes]] = field(factory=list)
    deleted: list[tuple[str, str]] = field(factory=list)

    def file_finished(
        self, arena: ArenaName, path: str, size: int, mtime_ns: int, root: bytes
    ) -> None:
        self.finished.append((arena, path, size, mtime_ns, root))

    def file_deleted(self, arena: ArenaName, path: str) -> None:
        self.deleted.append((arena, path))


@define
class Recorder:
    """
    A L{realize.interfaces.RunInThread} that runs at once and records the
    names of the functions it ran.
    """

    names: list[str] = field(factory=list)

    def __call__(self, f: Callable[..., Any], /, *args: Any) -> Deferred[Any]:
        self.names.append(f.__name__)
        return sync_run_in_thread(f, *args)


class _Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.listener = Listener()
        self.store = LocalStore.single(
            A, self.root, sync_run_in_thread, listener=self.listener
        )

    def at(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def put(self, name: str, data: bytes) -> None:
        with open(self.at(name), "wb") as f:
            f.write(data)


class ListenerTests(_Case):
    """
    The listener hears of every file finished and every final file
    deleted, after the change, with the root the store already knew.
    """

    def test_write_files(self) -> None:
        """
        Each file WriteFiles finished is told with its size, mtime and
        root; a file that failed is not.
        """
        files = [
            SmallFile("x", 3, MTIME, merkle_root([leaf_hash(b"xxx")])),
            SmallFile("bad", 3, MTIME, leaf_hash(b"other")),
            SmallFile("e", 0, MTIME + 1, EMPTY_ROOT),
        ]
        result_of(self, self.store.write_files(A, files, [b"xxx", b"abc", b""]))
        self.assertEqual(
            self.listener.finished,
            [
                (A, "x", 3, MTIME, files[0].root),
                (A, "e", 0, MTIME + 1, EMPTY_ROOT),
            ],
        )
        self.assertEqual(self.store.counts.rehashed, 0)

    def test_verified_write(self) -> None:
        """
        A Write that finishes its file by C{finish_root} tells that root.
        """
        data = random_bytes(BIG, seed=1)
        root = merkle_root(expected_leaves(data))
        result_of(
            self,
            self.store.write(
                A,
                "f",
                0,
                BIG,
                BIG,
                chunked(data, LEAF_SIZE),
                finish_root=root,
                mtime_ns=MTIME,
            ),
        )
        self.assertEqual(self.listener.finished, [(A, "f", BIG, MTIME, root)])
        self.assertEqual(self.store.counts.rehashed, 0)

    def test_finish_after_hashed_writes(self) -> None:
        """
        Finish after Writes that hashed what they wrote (a move) tells the
        file's root without hashing it again.
        """
        data = random_bytes(BIG, seed=2)
        split = LEAF_SIZE + 5
        result_of(
            self,
            self.store.write(A, "f", 0, split, BIG, stream(data[:split]), hash=True),
        )
        result_of(
            self,
            self.store.write(
                A, "f", split, BIG, BIG, chunked(data[split:], 300_000), hash=True
            ),
        )
        result_of(self, self.store.finish(A, "f", MTIME))
        root = merkle_root(expected_leaves(data))
        self.assertEqual(self.listener.finished, [(A, "f", BIG, MTIME, root)])
        self.assertEqual(self.store.counts.rehashed, 0)
        self.assertEqual(len(self.store.book), 0)

    def test_resume_concurrent(self) -> None:
        """
        A resumed move hashes the partial's start while it writes the rest
        (both at once, finishing in either order): Finish still knows the
        root.
        """
        data = random_bytes(3 * LEAF_SIZE + 7, seed=3)
        size = len(data)
        have = LEAF_SIZE + 100
        root = merkle_root(expected_leaves(data))
        for order in ([0, 1], [1, 0]):
            self.put(".f.part", data[:have])
            runner = DeferringRunner()
            store = LocalStore.single(A, self.root, runner, listener=self.listener)
            hashed = Deferred.fromCoroutine(store.hash(A, "f", 0, LEAF_SIZE))
            written = Deferred.fromCoroutine(
                store.write(A, "f", have, size, size, stream(data[have:]), hash=True)
            )
            self.assertEqual(runner.names(), ["hash", "write_all"])
            first = runner.calls.pop(order[0])
            runner.calls.insert(0, first)
            runner.run_next()
            runner.run_next()
            self.successResultOf(hashed)
            self.successResultOf(written)
            finished = Deferred.fromCoroutine(store.finish(A, "f", MTIME))
            runner.run_next()
            self.successResultOf(finished)
            self.assertEqual(self.listener.finished[-1], (A, "f", size, MTIME, root))
            self.assertEqual(store.counts.rehashed, 0)
            os.unlink(self.at("f"))

    def test_finish_unknown_root(self) -> None:
        """
        Finish after a Write that did not hash hashes the file once more,
        and counts it.
        """
        result_of(self, self.store.write(A, "f", 0, 5, 5, stream(b"hello")))
        result_of(self, self.store.finish(A, "f", MTIME))
        self.assertEqual(
            self.listener.finished, [(A, "f", 5, MTIME, leaf_hash(b"hello"))]
        )
        self.assertEqual(self.store.counts.rehashed, 1)

    def test_changed_by_another_program(self) -> None:
        """
        A partial file changed by another program after the store wrote it
        is hashed again at Finish: the listener gets its real root.
        """
        result_of(self, self.store.write(A, "f", 0, 5, 5, stream(b"hello"), hash=True))
        with open(self.at(".f.part"), "r+b") as f:
            f.write(b"J")
        os.utime(self.at(".f.part"), ns=(MTIME - 7, MTIME - 7))
        result_of(self, self.store.finish(A, "f"))
        self.assertEqual(
            self.listener.finished, [(A, "f", 5, MTIME - 7, leaf_hash(b"Jello"))]
        )
        self.assertEqual(self.store.counts.rehashed, 1)

    def test_truncate_then_write(self) -> None:
        """
        Truncating a final file (the start of a resumed move), hashing the
        partial's start and writing the rest leaves the root known.
        """
        data = random_bytes(2 * LEAF_SIZE + 3, seed=4)
        self.put("f", data[:LEAF_SIZE] + b"stale tail")
        result_of(self, self.store.truncate(A, "f", LEAF_SIZE))
        result_of(self, self.store.hash(A, "f", 0, LEAF_SIZE))
        result_of(
            self,
            self.store.write(
                A,
                "f",
                LEAF_SIZE,
                len(data),
                len(data),
                stream(data[LEAF_SIZE:]),
                hash=True,
            ),
        )
        result_of(self, self.store.finish(A, "f", MTIME))
        root = merkle_root(expected_leaves(data))
        self.assertEqual(self.listener.finished, [(A, "f", len(data), MTIME, root)])
        self.assertEqual(self.store.counts.rehashed, 0)

    def test_finish_already_final(self) -> None:
        """
        Finish of a file that is already final changes no content: the
        listener is not told.
        """
        self.put("f", b"final")
        result_of(self, self.store.finish(A, "f", MTIME))
        self.assertEqual(self.listener.finished, [])

    def test_deletes(self) -> None:
        """
        Delete and DeleteFiles tell of each final file they deleted; not of
        a partial file alone, a missing file or a changed one.
        """
        self.put("f", b"final")
        self.put(".p.part", b"partial")
        result_of(self, self.store.delete(A, "f"))
        result_of(self, self.store.delete(A, "p"))
        result_of(self, self.store.delete(A, "missing"))
        self.put("g", b"g")
        self.put("h", b"h")
        st = os.stat(self.at("g"))
        result_of(
            self,
            self.store.delete_files(
                A,
                [FileInfo("g", 1, st.st_mtime_ns), FileInfo("h", 7, 0)],
            ),
        )
        self.assertEqual(self.listener.deleted, [(A, "f"), (A, "g")])

    def test_listener_fails(self) -> None:
        """
        A listener that raises does not fail the command: it is logged.
        """

        class Broken(Listener):
            def file_deleted(self, arena: ArenaName, path: str) -> None:
                raise RuntimeError("listener bug")

        store = LocalStore.single(A, self.root, sync_run_in_thread, listener=Broken())
        self.put("f", b"x")
        result_of(self, store.delete(A, "f"))
        self.assertFalse(os.path.exists(self.at("f")))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def stamp(size: int, mtime: int = 1, ino: int = 7) -> Stamp:
    return Stamp(ino, size, mtime, mtime)


class LeafBookTests(SynchronousTestCase):
    """
    L{LeafBook} knows a root only when every leaf is known for the file as
    it is.
    """

    def leaves(self, count: int) -> tuple[bytes, ...]:
        return tuple(bytes([i]) * 32 for i in range(count))

    def test_whole(self) -> None:
        """
        A write with all leaves gives the root of exactly that file.
        """
        book = LeafBook()
        leaves = self.leaves(3)
        size = 2 * LEAF_SIZE + 10
        token = book.begin(KEY, 0, None, modifies=True)
        book.end(token, stamp(size), 0, size, leaves)
        self.assertEqual(book.root(KEY, stamp(size)), merkle_root(leaves))
        self.assertIsNone(book.root(KEY, stamp(size, mtime=2)))
        self.assertIsNone(book.root(KEY, stamp(size, ino=8)))
        self.assertIsNone(book.root(KEY, stamp(size + 1)))

    def test_unhashed_write(self) -> None:
        """
        A write that did not hash forgets the leaves of its range.
        """
        book = LeafBook()
        size = 3 * LEAF_SIZE
        token = book.begin(KEY, 0, None, modifies=True)
        book.end(token, stamp(size), 0, size, self.leaves(3))
        token = book.begin(KEY, LEAF_SIZE + 1, LEAF_SIZE + 2, modifies=True)
        book.end(token, stamp(size, mtime=2))
        self.assertIsNone(book.root(KEY, stamp(size, mtime=2)))

    def test_truncate(self) -> None:
        """
        Cutting a file forgets the leaves past its new end and its last
        leaf; extending it again does not bring them back.
        """
        book = LeafBook()
        size = 3 * LEAF_SIZE
        token = book.begin(KEY, 0, None, modifies=True)
        book.end(token, stamp(size), 0, size, self.leaves(3))
        token = book.begin(KEY, LEAF_SIZE + 5, None, modifies=True)
        book.end(token, stamp(LEAF_SIZE + 5, mtime=2))
        self.assertIsNone(book.root(KEY, stamp(LEAF_SIZE + 5, mtime=2)))
        token = book.begin(KEY, LEAF_SIZE, None, modifies=True)
        book.end(token, stamp(LEAF_SIZE, mtime=3))
        self.assertEqual(book.root(KEY, stamp(LEAF_SIZE, mtime=3)), self.leaves(1)[0])

    def test_concurrent_modifications(self) -> None:
        """
        Two modifying commands at once leave nothing known; a hash that
        ran during a write keeps only the leaves the write could not
        change.
        """
        book = LeafBook()
        size = 4 * LEAF_SIZE
        one = book.begin(KEY, 0, LEAF_SIZE, modifies=True)
        two = book.begin(KEY, 2 * LEAF_SIZE, None, modifies=True)
        book.end(one, stamp(size), 0, LEAF_SIZE, self.leaves(1))
        book.end(two, stamp(size), 2 * LEAF_SIZE, size, self.leaves(4)[2:])
        self.assertIsNone(book.root(KEY, stamp(size)))
        hashing = book.begin(KEY, 0, size, modifies=False)
        writing = book.begin(KEY, 2 * LEAF_SIZE, None, modifies=True)
        book.end(hashing, stamp(3 * LEAF_SIZE, mtime=5), 0, size, self.leaves(4))
        other = tuple(bytes([9]) * 32 for _ in range(2))
        book.end(writing, stamp(size, mtime=6), 2 * LEAF_SIZE, size, other)
        self.assertEqual(
            book.root(KEY, stamp(size, mtime=6)),
            merkle_root(self.leaves(2) + other),
        )

    def test_failed(self) -> None:
        """
        A modifying command that failed leaves nothing known.
        """
        book = LeafBook()
        token = book.begin(KEY, 0, None, modifies=True)
        book.end(token, stamp(LEAF_SIZE), 0, LEAF_SIZE, self.leaves(1))
        token = book.begin(KEY, 5, 6, modifies=True)
        book.abort(token)
        self.assertIsNone(book.root(KEY, stamp(LEAF_SIZE)))
        self.assertEqual(len(book), 0)

    def test_bounds(self) -> None:
        """
        Past L{LeafBook.max_files} files or L{LeafBook.max_leaves} leaves,
        the least recently used idle files are forgotten.
        """
        book = LeafBook(max_files=3, max_leaves=10)
        for index in range(5):
            token = book.begin(("/a", f"f{index}"), 0, None, modifies=True)
            book.end(token, stamp(LEAF_SIZE), 0, LEAF_SIZE, self.leaves(1))
        self.assertEqual(len(book), 3)
        self.assertIsNone(book.root(("/a", "f0"), stamp(LEAF_SIZE)))
        self.assertIsNotNone(book.root(("/a", "f4"), stamp(LEAF_SIZE)))
        token = book.begin(("/a", "big"), 0, None, modifies=True)
        book.end(token, stamp(8 * LEAF_SIZE), 0, 8 * LEAF_SIZE, self.leaves(8))
        self.assertLessEqual(book.leaves, 10)
        self.assertIsNotNone(book.root(("/a", "big"), stamp(8 * LEAF_SIZE)))


class WriterTests(_Case):
    """
    One writer per path: a view of the store writing a file keeps every
    other view from writing it at the same time (issue 14, item 13).
    """

    def pending(self) -> tuple[LocalStore, DeferringRunner, Deferred[Any]]:
        """
        @return: a view whose threads wait, the runner, and a Write of
            C{f} it started (waiting for its thread).
        """
        runner = DeferringRunner()
        view = self.store.with_runners(runner)
        writing = Deferred.fromCoroutine(view.write(A, "f", 0, 3, 3, stream(b"one")))
        self.assertEqual(runner.names(), ["write_all"])
        return view, runner, writing

    def test_other_view_refused(self) -> None:
        """
        While one view writes a file, a Write, Truncate, ApplyDelta or
        WriteFiles entry of it from another view answers L{Conflict}; the
        same view may write it again (a mover repairs ranges in parallel);
        once the write ends, others may.
        """
        view, runner, writing = self.pending()
        other = self.store.with_runners(sync_run_in_thread)
        for coro in [
            other.write(A, "f", 0, 3, 3, stream(b"two")),
            other.truncate(A, "f", 0),
            other.apply_delta(A, "f", 0, 3, 3, b""),
        ]:
            error = failure_of(self, coro, Conflict)
            self.assertIn("being written by another command", str(error))
        files = [
            SmallFile("f", 1, MTIME, leaf_hash(b"x")),
            SmallFile("g", 1, MTIME, merkle_root([leaf_hash(b"y")])),
        ]
        outcomes = result_of(self, other.write_files(A, files, [b"x", b"y"]))
        self.assertIsInstance(outcomes[0], Conflict)
        self.assertIsNone(outcomes[1])
        again = Deferred.fromCoroutine(view.truncate(A, "f", 0))
        runner.run_next()
        runner.run_next()
        self.successResultOf(writing)
        self.successResultOf(again)
        self.assertEqual(len(self.store.writers), 0)
        result_of(self, other.write(A, "f", 0, 3, 3, stream(b"two")))

    def test_registry(self) -> None:
        """
        L{WriterRegistry} counts the commands of one owner.
        """
        registry = WriterRegistry()
        me, you = object(), object()
        registry.enter(KEY, me, "a")
        registry.enter(KEY, me, "a")
        self.assertRaises(Conflict, registry.enter, KEY, you, "a")
        registry.leave(KEY)
        self.assertRaises(Conflict, registry.enter, KEY, you, "a")
        registry.leave(KEY)
        registry.enter(KEY, you, "a")
        self.assertEqual(len(registry), 1)


class RunnerTests(_Case):
    """
    File I/O and CPU work run in their own pools.
    """

    def test_by_kind(self) -> None:
        """
        Hash, Signature, Diff and ApplyDelta run through C{run_cpu}; the
        file I/O commands through C{run_in_thread}.
        """
        io, cpu = Recorder(), Recorder()
        store = LocalStore.single(A, self.root, io, run_cpu=cpu)
        data = random_bytes(5000, seed=5)
        result_of(self, store.write(A, "f", 0, 5000, 5000, stream(data)))
        result_of(self, store.hash(A, "f", 0, 5000))
        signature = result_of(self, store.signature(A, "f", 0, 5000))
        assert signature is not None
        change = result_of(self, store.diff(A, "f", 0, 5000, signature))
        result_of(self, store.apply_delta(A, "f", 0, 5000, 5000, change))
        result_of(self, store.finish(A, "f"))
        result_of(self, read_all(store, A, "f", 0, 10))
        result_of(self, store.list_files(A))
        result_of(self, store.delete(A, "f"))
        self.assertEqual(cpu.names, ["hash", "signature", "diff", "apply_delta"])
        self.assertEqual(
            io.names,
            ["write_all", "commit_group", "read_all", "list_files", "delete_files"],
        )

    def test_with_runners(self) -> None:
        """
        L{LocalStore.with_runners} uses its runners and shares the rest.
        """
        io = Recorder()
        view = self.store.with_runners(io)
        self.assertIs(view.run_cpu, io)
        for name in (
            "arena_dirs",
            "committer",
            "listener",
            "writers",
            "book",
            "counts",
        ):
            self.assertIs(getattr(view, name), getattr(self.store, name), name)
        self.assertIsNot(view.owner, self.store.owner)
        self.put("f", b"x")
        result_of(self, view.delete(A, "f"))
        self.assertEqual(io.names, ["delete_files"])
        self.assertEqual(self.listener.deleted, [(A, "f")])


class PeerViewTests(SynchronousTestCase):
    """
    L{StoreService.view} gives each peer the local store behind one
    ACL-checked arena resolver.
    """

    def setUp(self) -> None:
        base = Path(self.mktemp()).absolute()
        for name in ("docs", "photos"):
            (base / name).mkdir(parents=True)
        peers = {name: {"pubkey": make_key()[1]} for name in ("a", "c")}
        config = parse_config(
            {
                "peers": peers,
                "arena": [
                    {"name": "docs", "datadir": "docs", "peers": ["a"]},
                    {"name": "photos", "datadir": "photos", "peers": ["c"]},
                    {"name": "ghost", "workdir": "ghost"},
                ],
            },
            "realize.toml",
            base,
        )
        self.base = base
        self.service = StoreService(config, sync_run_in_thread)

    def test_acl(self) -> None:
        """
        A peer sees and uses the arenas it may; the others are refused
        with one answer, whether outside its ACL, absent or without a
        datadir (so that it cannot probe for arena names).
        """
        view = self.service.view(PeerId("a"))
        self.assertIsInstance(view, PeerView)
        self.assertEqual(result_of(self, view.arenas()), ["docs"])
        (self.base / "docs" / "f").write_bytes(b"doc")
        self.assertEqual(
            result_of(self, view.list_files(ArenaName("docs")))[0].path, "f"
        )
        error = failure_of(self, view.list_files(ArenaName("photos")), Unauthorized)
        self.assertEqual(str(error), "arena 'photos' is not available to peer 'a' here")
        error = failure_of(self, view.list_files(ArenaName("nope")), NotFound)
        self.assertEqual(str(error), "arena 'nope' is not available to peer 'a' here")
        error = failure_of(self, view.list_files(ArenaName("ghost")), NotFound)
        self.assertEqual(str(error), "arena 'ghost' is not available to peer 'a' here")
        stranger = self.service.view(PeerId("z"))
        error = failure_of(self, stranger.arenas(), Unauthorized)
        self.assertEqual(str(error), "peer 'z' is no longer in the config")
        self.assertEqual(view.describe(), "daemon (as seen by a)")

    def test_runners(self) -> None:
        """
        A view given runners runs its commands there and is its own writer;
        views without runners share the daemon's.
        """
        io, cpu = Recorder(), Recorder()
        view = self.service.view(PeerId("a"), io, cpu)
        docs = ArenaName("docs")
        result_of(self, view.write(docs, "f", 0, 1, 1, stream(b"x")))
        result_of(self, view.hash(docs, "f", 0, 1))
        self.assertEqual((io.names, cpu.names), (["write_all"], ["hash"]))
        self.assertIsNot(view.owner, self.service.store.owner)
        self.assertIs(view.writers, self.service.store.writers)
        plain = self.service.view(PeerId("a"))
        self.assertIs(plain.owner, self.service.store.owner)

    def test_reload(self) -> None:
        """
        A view made before a reload sees the new config's arenas.
        """
        view = self.service.view(PeerId("a"))
        committer = self.service.store.committer
        (self.base / "more").mkdir()
        config = parse_config(
            {
                "peers": {"a": {"pubkey": make_key()[1]}},
                "arena": [{"name": "more", "datadir": "more"}],
            },
            "realize.toml",
            self.base,
        )
        self.service.reconfigure(config)
        self.assertEqual(result_of(self, view.arenas()), ["more"])
        self.assertIs(self.service.store.committer, committer)
