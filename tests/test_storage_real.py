"""
Tests of the arena store (L{realize.storage.local} and the modules
beneath it) that need a real filesystem: path safety
against symlinks and special files, listing, directory cleanup, group
commit and streamed I/O.  The behaviour shared with every store is in
L{tests.test_storage}.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from realize.errors import InvalidPath, IOFailure, NotFound, RealizeError
from realize.hashing import LEAF_SIZE, hash_fd_range, merkle_root
from realize.model import ArenaName, FileInfo, FileState, SmallFile
from realize.storage import fs
from realize.storage.arena import ArenaDir
from realize.storage.commit import CommitItem, Committer, commit_group
from realize.storage.local import LocalStore
from tests.helpers import failure_of, result_of, sync_run_in_thread
from tests.test_storage import (
    BIG,
    MTIME,
    chunked,
    expected_leaves,
    random_bytes,
    read_all,
    stream,
)

A = ArenaName("a")


def write_file(path: str, data: bytes, mtime_ns: int | None = None) -> None:
    """
    Create a file (and its directories) with some content.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def tree(directory: str) -> list[str]:
    """
    @return: every entry below a directory (files, directories, links),
        relative to it, sorted.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        relative = os.path.relpath(dirpath, directory)
        for name in dirnames + filenames:
            found.append(os.path.normpath(os.path.join(relative, name)))
    return sorted(found)


def open_fds() -> int:
    """
    @return: the number of file descriptors this process has open.
    """
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """
    Fail with an exception instead of hanging when the block takes longer
    than C{seconds} (a blocking C{open} of a FIFO is interrupted by
    C{SIGALRM}).
    """

    class Hung(Exception):
        pass

    def alarm(signum: int, frame: object) -> None:
        raise Hung(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _LocalCase(SynchronousTestCase):
    """
    A store serving arena C{a} at C{self.root}, with a directory
    C{self.outside} next to it holding C{secret}.
    """

    exclude: str | None = None

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.root = os.path.join(self.base, "root")
        self.outside = os.path.join(self.base, "outside")
        os.makedirs(self.root)
        self.secret = os.path.join(self.outside, "secret")
        write_file(self.secret, b"secret", MTIME)
        self.arena_root = ArenaDir("a", self.root, self.exclude)
        self.store = LocalStore({A: self.arena_root}, sync_run_in_thread)

    def at(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def assert_outside_untouched(self) -> None:
        """
        Fail if anything outside the arena root changed.
        """
        self.assertEqual(sorted(os.listdir(self.base)), ["outside", "root"])
        self.assertEqual(os.listdir(self.outside), ["secret"])
        self.assertEqual(read_file(self.secret), b"secret")
        self.assertEqual(os.stat(self.secret).st_mtime_ns, MTIME)

    def coros(self, path: str) -> dict[str, Any]:
        """
        @return: a read, write, hash, truncate and delete of a path, by
            name, not yet run.
        """
        return {
            "read": read_all(self.store, A, path, 0, 10),
            "write": self.store.write(A, path, 0, 3, 3, stream(b"new")),
            "hash": self.store.hash(A, path, 0, 10),
            "truncate": self.store.truncate(A, path, 0),
            "delete": self.store.delete(A, path),
        }

    def assert_refused(self, path: str, *types: type[BaseException]) -> None:
        """
        Read, write, hash, truncate and delete of C{path} all fail with
        one of C{types} (L{InvalidPath} by default).
        """
        for name, coro in self.coros(path).items():
            with deadline(5):
                error = failure_of(self, coro, *(types or (InvalidPath,)))
            self.assertIn(repr(path), str(error), name)


class UnsafePathTests(_LocalCase):
    """
    Symlinks, FIFOs, sockets and devices in an arena are refused with
    L{InvalidPath} and never followed.
    """

    def test_symlink_final_outside(self) -> None:
        """
        A symlink as the final file, pointing outside the arena, is refused
        by every command; its target is neither read, written nor deleted.
        """
        os.symlink(self.secret, self.at("link"))
        self.assert_refused("link")
        self.assertEqual(os.readlink(self.at("link")), self.secret)
        self.assertEqual(os.listdir(self.root), ["link"])
        self.assert_outside_untouched()

    def test_symlink_final_inside(self) -> None:
        """
        A symlink to a file of the arena is refused too: it is a second
        name for a file that the arena already lists.
        """
        write_file(self.at("target"), b"target", MTIME)
        os.symlink("target", self.at("link"))
        self.assert_refused("link")
        self.assertEqual(read_file(self.at("target")), b"target")
        self.assertEqual(os.stat(self.at("target")).st_mtime_ns, MTIME)
        self.assertEqual(sorted(os.listdir(self.root)), ["link", "target"])

    def test_symlink_final_finish(self) -> None:
        """
        Finishing a path whose final file is a symlink fails and does not
        set the mtime of the target.
        """
        os.symlink(self.secret, self.at("link"))
        failure_of(self, self.store.finish(A, "link", MTIME + 1), InvalidPath)
        self.assertTrue(os.path.islink(self.at("link")))
        self.assert_outside_untouched()

    def test_symlink_partial(self) -> None:
        """
        A symlink as the partial file is refused by read, write, hash and
        truncate; delete removes the link, not its target.
        """
        os.symlink(self.secret, self.at(".link.part"))
        coros = self.coros("link")
        delete = coros.pop("delete")
        for coro in coros.values():
            failure_of(self, coro, InvalidPath)
        failure_of(self, self.store.finish(A, "link", MTIME + 1), InvalidPath)
        self.assertTrue(os.path.islink(self.at(".link.part")))
        self.assert_outside_untouched()
        result_of(self, delete)
        self.assertEqual(os.listdir(self.root), [])
        self.assert_outside_untouched()

    def test_symlink_directory_outside(self) -> None:
        """
        A path crossing a symlink to a directory outside the arena is
        refused, also when the write would create directories beneath it;
        nothing is created or removed outside.
        """
        os.symlink(self.outside, self.at("out"))
        self.assert_refused("out/secret")
        self.assert_refused("out/new")
        self.assert_refused("out/sub/new")
        failure_of(self, self.store.finish(A, "out/secret", MTIME + 1), InvalidPath)
        self.assertEqual(os.listdir(self.root), ["out"])
        self.assert_outside_untouched()

    def test_symlink_directory_inside(self) -> None:
        """
        A path crossing a symlink to a directory of the arena is refused;
        the directory's files stay as they were.
        """
        write_file(self.at("real", "f"), b"inside", MTIME)
        os.symlink("real", self.at("lnk"))
        self.assert_refused("lnk/f")
        self.assert_refused("lnk/g")
        self.assertEqual(tree(self.root), ["lnk", "real", "real/f"])
        self.assertEqual(read_file(self.at("real", "f")), b"inside")
        self.assertEqual(os.stat(self.at("real", "f")).st_mtime_ns, MTIME)

    def test_file_as_directory(self) -> None:
        """
        A path through a regular file as if it were a directory is refused
        with L{InvalidPath}.
        """
        write_file(self.at("f"), b"file")
        self.assert_refused("f/g")
        self.assertEqual(tree(self.root), ["f"])

    def test_fifo(self) -> None:
        """
        A FIFO as the file is refused by every command without blocking on
        opening it (no writer ever comes) and is left in place.
        """
        os.mkfifo(self.at("fifo"))
        self.assert_refused("fifo")
        with deadline(5):
            failure_of(self, self.store.finish(A, "fifo"), InvalidPath)
        self.assertTrue(stat.S_ISFIFO(os.lstat(self.at("fifo")).st_mode))
        self.assertEqual(os.listdir(self.root), ["fifo"])

    def test_fifo_partial(self) -> None:
        """
        A FIFO as the partial file is refused by read, write, hash and
        finish without blocking.
        """
        os.mkfifo(self.at(".fifo.part"))
        coros = self.coros("fifo")
        coros.pop("delete").close()
        for coro in coros.values():
            with deadline(5):
                failure_of(self, coro, InvalidPath)
        with deadline(5):
            failure_of(self, self.store.finish(A, "fifo"), InvalidPath)
        self.assertEqual(os.listdir(self.root), [".fifo.part"])

    def test_fifo_as_directory(self) -> None:
        """
        A path through a FIFO as if it were a directory is refused without
        blocking, also by a write that would create directories.
        """
        os.mkfifo(self.at("fifo"))
        self.assert_refused("fifo/x")
        self.assert_refused("fifo/d/x")
        self.assertEqual(os.listdir(self.root), ["fifo"])

    def test_socket(self) -> None:
        """
        A unix socket as the file is refused by every command and left in
        place.
        """
        os.mknod(self.at("sock"), stat.S_IFSOCK | 0o600)
        self.assert_refused("sock")
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.at("sock")).st_mode))

    def test_device(self) -> None:
        """
        A character device as the file is refused by every command.
        """
        try:
            os.mknod(self.at("null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except PermissionError:
            raise SkipTest("cannot create device nodes here") from None
        self.assert_refused("null")
        self.assertTrue(stat.S_ISCHR(os.lstat(self.at("null")).st_mode))

    def test_directory_as_file(self) -> None:
        """
        A directory where a file is expected is refused and left alone.
        """
        write_file(self.at("d", "f"), b"x")
        self.assert_refused("d")
        self.assertEqual(tree(self.root), ["d", "d/f"])


class ExcludeTests(_LocalCase):
    """
    An arena's workdir inside its root is not part of the arena.
    """

    exclude = "work"

    def test_not_listed(self) -> None:
        """
        The excluded directory is not listed; a deeper directory of the
        same name is.
        """
        write_file(self.at("work", "db"), b"db")
        write_file(self.at("d", "work", "f"), b"f", MTIME)
        self.assertEqual(
            result_of(self, self.store.list_files(A)),
            [FileInfo("d/work/f", 1, MTIME, False)],
        )

    def test_refused(self) -> None:
        """
        Every command on a path in the excluded directory fails with
        L{InvalidPath} and leaves its files alone.
        """
        write_file(self.at("work", "db"), b"db")
        self.assert_refused("work/db")
        self.assert_refused("work/new")
        failure_of(self, self.store.finish(A, "work/db"), InvalidPath)
        self.assertEqual(tree(self.root), ["work", "work/db"])
        self.assertEqual(read_file(self.at("work", "db")), b"db")


class ListFilesTests(_LocalCase):
    """
    L{ArenaDir.list_files} lists regular files only.
    """

    def test_skips(self) -> None:
        """
        Symlinks (to files and to directories), FIFOs, sockets, empty
        directories and names that are not UTF-8 are not listed; regular
        files and partial files are.
        """
        write_file(self.at("ok"), b"ok", MTIME)
        write_file(self.at("d", ".p.part"), b"part", MTIME + 1)
        write_file(self.at("real", "f"), b"f", MTIME + 2)
        os.symlink("ok", self.at("link"))
        os.symlink("real", self.at("dirlink"))
        os.symlink(self.outside, self.at("outlink"))
        os.mkfifo(self.at("fifo"))
        os.mknod(self.at("sock"), stat.S_IFSOCK | 0o600)
        os.makedirs(self.at("empty", "deeper"))
        root = os.fsencode(self.root)
        with open(os.path.join(root, b"bad\xff"), "wb") as f:
            f.write(b"bad")
        os.makedirs(os.path.join(root, b"dir\xfe"))
        with open(os.path.join(root, b"dir\xfe", b"f"), "wb") as f:
            f.write(b"hidden")
        self.assertEqual(
            sorted(result_of(self, self.store.list_files(A)), key=lambda f: f.path),
            [
                FileInfo("d/p", 4, MTIME + 1, True),
                FileInfo("ok", 2, MTIME, False),
                FileInfo("real/f", 1, MTIME + 2, False),
            ],
        )

    def test_missing_root(self) -> None:
        """
        Listing an arena whose directory does not exist fails with
        L{NotFound} naming the directory.
        """
        store = LocalStore.single(A, self.at("missing"), sync_run_in_thread)
        error = failure_of(self, store.list_files(A), NotFound)
        self.assertIn(self.at("missing"), str(error))


class MissingRootTests(_LocalCase):
    """
    Commands on an arena whose directory is missing fail with L{NotFound}
    naming the directory, and do not create it.
    """

    def test_commands(self) -> None:
        """
        Read, write, hash, truncate, finish and list fail with L{NotFound}
        naming the missing directory; delete has nothing to do but fails
        the same way; nothing is created.
        """
        missing = self.at("missing")
        store = LocalStore.single(A, missing, sync_run_in_thread)
        coros = [
            read_all(store, A, "f", 0, 10),
            store.write(A, "d/f", 0, 1, 1, stream(b"x")),
            store.hash(A, "f", 0, 10),
            store.truncate(A, "f", 0),
            store.finish(A, "f"),
            store.list_files(A),
            store.delete(A, "f"),
        ]
        for coro in coros:
            error = failure_of(self, coro, NotFound)
            self.assertIn(missing, str(error))
        self.assertFalse(os.path.exists(missing))


class DeleteTests(_LocalCase):
    """
    L{LocalStore.delete} removes the directories it leaves empty.
    """

    def test_removes_empty_directories(self) -> None:
        """
        Deleting the last file of nested directories removes them up to
        the first one that is not empty.
        """
        write_file(self.at("a", "b", "c", "f"), b"f")
        write_file(self.at("a", "keep"), b"keep")
        result_of(self, self.store.delete(A, "a/b/c/f"))
        self.assertEqual(tree(self.root), ["a", "a/keep"])

    def test_partial_keeps_directory(self) -> None:
        """
        A directory holding the partial file of another path is not empty
        and stays.
        """
        write_file(self.at("d", "f"), b"f")
        write_file(self.at("d", ".g.part"), b"g")
        result_of(self, self.store.delete(A, "d/f"))
        self.assertEqual(tree(self.root), ["d", "d/.g.part"])

    def test_keeps_root(self) -> None:
        """
        Deleting every file leaves the arena root in place, empty.
        """
        write_file(self.at("a", "b", "f"), b"f")
        write_file(self.at("top"), b"t")
        result_of(self, self.store.delete(A, "a/b/f"))
        result_of(self, self.store.delete(A, "top"))
        self.assertTrue(os.path.isdir(self.root))
        self.assertEqual(os.listdir(self.root), [])


class DeferringRunner:
    """
    A L{realize.interfaces.RunInThread} that records calls and runs them
    only when told.

    @ivar calls: the function, arguments and Deferred of each call not run
        yet.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], /, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((f, args, d))
        return d

    def names(self) -> list[str]:
        """
        @return: the names of the functions of the pending calls.
        """
        return [f.__name__ for f, _, _ in self.calls]

    def run_next(self) -> None:
        """
        Run the oldest pending call and fire its Deferred.
        """
        f, args, d = self.calls.pop(0)
        try:
            result = f(*args)
        except BaseException as e:  # delivered as a Failure
            d.errback(e)
        else:
            d.callback(result)


class CommitterTests(_LocalCase):
    """
    L{Committer} groups the commits requested while one runs.
    """

    def setUp(self) -> None:
        super().setUp()
        self.runner = DeferringRunner()
        self.committer = Committer(self.runner)

    def item(self, path: str, mtime_ns: int | None = None) -> CommitItem:
        return CommitItem(self.arena_root, path, mtime_ns)

    def batch_paths(self, index: int = 0) -> list[str]:
        _, args, _ = self.runner.calls[index]
        return [item.path for item in args[0]]

    def test_lone_commit(self) -> None:
        """
        A commit with none running starts at once, alone, and fires when
        it is done.
        """
        write_file(self.at(".f.part"), b"f")
        d = self.committer.commit(self.item("f", MTIME))
        self.assertEqual(self.batch_paths(), ["f"])
        self.assertNoResult(d)
        self.runner.run_next()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(tree(self.root), ["f"])
        self.assertEqual(os.stat(self.at("f")).st_mtime_ns, MTIME)
        self.assertEqual(self.runner.calls, [])

    def test_grouping(self) -> None:
        """
        Commits requested while one runs wait, then go together in one
        batch; each gets its own result: a missing file fails only its own
        commit.
        """
        for name in ["f1", "f2", "f3", "f4"]:
            write_file(self.at("d", f".{name}.part"), name.encode())
        d1 = self.committer.commit(self.item("d/f1"))
        d2 = self.committer.commit(self.item("d/f2", MTIME))
        d3 = self.committer.commit(self.item("d/missing"))
        d4 = self.committer.commit(self.item("d/f3", MTIME + 1))
        self.assertEqual(len(self.runner.calls), 1)
        self.assertEqual(self.batch_paths(), ["d/f1"])
        self.runner.run_next()
        self.assertIsNone(self.successResultOf(d1))
        for d in (d2, d3, d4):
            self.assertNoResult(d)
        self.assertEqual(len(self.runner.calls), 1)
        self.assertEqual(self.batch_paths(), ["d/f2", "d/missing", "d/f3"])
        d5 = self.committer.commit(self.item("d/f4"))
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.run_next()
        self.assertIsNone(self.successResultOf(d2))
        error = self.failureResultOf(d3, NotFound).value
        self.assertIn("d/missing", str(error))
        self.assertIsNone(self.successResultOf(d4))
        self.assertNoResult(d5)
        self.assertEqual(self.batch_paths(), ["d/f4"])
        self.runner.run_next()
        self.assertIsNone(self.successResultOf(d5))
        self.assertEqual(self.runner.calls, [])
        self.assertEqual(tree(self.root), ["d", "d/f1", "d/f2", "d/f3", "d/f4"])
        self.assertEqual(os.stat(self.at("d", "f2")).st_mtime_ns, MTIME)
        self.assertEqual(os.stat(self.at("d", "f3")).st_mtime_ns, MTIME + 1)
        self.assertEqual(read_file(self.at("d", "f3")), b"f3")

    def test_commit_all(self) -> None:
        """
        The files of one L{Committer.commit_all} request go in one group,
        even when a commit is running: the request waits, then goes whole,
        and gets its own results in order.
        """
        for name in ["a", "b", "c"]:
            write_file(self.at(f".{name}.part"), name.encode())
        first = self.committer.commit(self.item("a"))
        both = self.committer.commit_all([self.item("b"), self.item("missing")])
        self.assertEqual(self.batch_paths(), ["a"])
        self.runner.run_next()
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(self.batch_paths(), ["b", "missing"])
        self.runner.run_next()
        results = self.successResultOf(both)
        self.assertIsNone(results[0])
        self.assertIsInstance(results[1], NotFound)
        self.assertEqual(self.successResultOf(self.committer.commit_all([])), [])

    def test_whole_batch_fails(self) -> None:
        """
        If the commit call itself fails, every commit of its batch fails
        with that error, and the commits queued meanwhile still run.
        """
        d1 = self.committer.commit(self.item("f1"))
        d2 = self.committer.commit(self.item("f2"))
        d3 = self.committer.commit(self.item("f3"))
        _, _, running = self.runner.calls.pop(0)
        running.errback(IOFailure("disk on fire"))
        self.failureResultOf(d1, IOFailure)
        self.assertEqual(self.batch_paths(), ["f2", "f3"])
        _, _, running = self.runner.calls.pop(0)
        running.errback(IOFailure("still on fire"))
        for d in (d2, d3):
            self.assertEqual(
                str(self.failureResultOf(d, IOFailure).value), "still on fire"
            )
        self.assertEqual(self.runner.calls, [])


class ArenaDirCommitTests(_LocalCase):
    """
    L{commit_group} renames partial files to final ones, durably.
    """

    def test_one(self) -> None:
        """
        A group of one file is renamed and given its mtime.
        """
        write_file(self.at("d", ".f.part"), b"data")
        results = commit_group([CommitItem(self.arena_root, "d/f", MTIME)])
        self.assertEqual(results, [None])
        self.assertEqual(tree(self.root), ["d", "d/f"])
        self.assertEqual(read_file(self.at("d", "f")), b"data")
        self.assertEqual(os.stat(self.at("d", "f")).st_mtime_ns, MTIME)

    def test_many(self) -> None:
        """
        A group of several files in several directories renames them all,
        sets the mtimes asked for, leaves an already final file's content
        alone (setting its mtime) and reports a missing one.
        """
        write_file(self.at(".f1.part"), b"1")
        write_file(self.at("d", ".f2.part"), b"2")
        write_file(self.at("d", "e", ".f3.part"), b"3")
        write_file(self.at("d", "e", "f3"), b"old")
        write_file(self.at("final"), b"final")
        items = [
            CommitItem(self.arena_root, "f1", MTIME),
            CommitItem(self.arena_root, "d/f2"),
            CommitItem(self.arena_root, "d/e/f3", MTIME + 3),
            CommitItem(self.arena_root, "final", MTIME + 4),
            CommitItem(self.arena_root, "nothing", MTIME + 5),
        ]
        results = commit_group(items)
        self.assertEqual(results[:4], [None] * 4)
        self.assertIsInstance(results[4], NotFound)
        self.assertEqual(tree(self.root), ["d", "d/e", "d/e/f3", "d/f2", "f1", "final"])
        self.assertEqual(read_file(self.at("f1")), b"1")
        self.assertEqual(read_file(self.at("d", "f2")), b"2")
        self.assertEqual(read_file(self.at("d", "e", "f3")), b"3")
        self.assertEqual(read_file(self.at("final")), b"final")
        self.assertEqual(os.stat(self.at("f1")).st_mtime_ns, MTIME)
        self.assertEqual(os.stat(self.at("d", "e", "f3")).st_mtime_ns, MTIME + 3)
        self.assertEqual(os.stat(self.at("final")).st_mtime_ns, MTIME + 4)

    def test_unsafe_item(self) -> None:
        """
        An item of a group whose partial file is a symlink fails with
        L{InvalidPath} alone; the link is not renamed or followed.
        """
        os.symlink(self.secret, self.at(".link.part"))
        write_file(self.at(".f.part"), b"f")
        results = commit_group(
            [
                CommitItem(self.arena_root, "link", MTIME + 1),
                CommitItem(self.arena_root, "f", MTIME),
            ]
        )
        self.assertIsInstance(results[0], InvalidPath)
        self.assertIsNone(results[1])
        self.assertEqual(tree(self.root), [".link.part", "f"])
        self.assert_outside_untouched()


class StreamTests(_LocalCase):
    """
    Streamed writes and reads of L{LocalStore} on real files.
    """

    def test_multi_chunk_write(self) -> None:
        """
        A write given as several chunks smaller than a leaf, not aligned
        on leaves, writes them all in place and hashes them.
        """
        data = random_bytes(BIG, seed=20)
        start = 1000
        write_file(self.at(".f.part"), bytes(start))
        result = result_of(
            self,
            self.store.write(
                A, "f", start, BIG, BIG, chunked(data[start:], 300_001), hash=True
            ),
        )
        expected = bytes(start) + data[start:]
        self.assertEqual(read_file(self.at(".f.part")), expected)
        self.assertEqual(result.leaves, expected_leaves(expected))

    def test_tiny_chunks(self) -> None:
        """
        A write of many tiny chunks writes them in order.
        """
        data = random_bytes(1000, seed=21)
        result_of(self, self.store.write(A, "f", 0, 1000, 1000, chunked(data, 7)))
        self.assertEqual(read_file(self.at(".f.part")), data)

    def test_round_trip(self) -> None:
        """
        A 5 MiB file streamed in, finished by its root and read back with
        C{hash_from=0} has the same bytes, and the same leaves as
        L{hash_fd_range} of the file on disk; with a small writeback step
        the write also asks the kernel for early writeback on the way.
        """
        self.patch(fs, "WRITEBACK_STEP", LEAF_SIZE + 1)
        size = 5 * LEAF_SIZE + 123
        data = random_bytes(size, seed=22)
        leaves = expected_leaves(data)
        result = result_of(
            self,
            self.store.write(
                A,
                "d/big",
                0,
                size,
                size,
                chunked(data, LEAF_SIZE),
                hash=True,
                finish_root=merkle_root(leaves),
                mtime_ns=MTIME,
            ),
        )
        self.assertTrue(result.finished)
        self.assertEqual(result.leaves, leaves)
        got, state = result_of(self, read_all(self.store, A, "d/big", 0, size, 0))
        self.assertEqual(got, data)
        fd = os.open(self.at("d", "big"), os.O_RDONLY)
        try:
            on_disk = tuple(hash_fd_range(fd, 0, size))
        finally:
            os.close(fd)
        self.assertEqual(state, FileState(on_disk, size, MTIME))
        self.assertEqual(on_disk, leaves)
        self.assertEqual(tree(self.root), ["d", "d/big"])

    def test_cancel_closes(self) -> None:
        """
        Cancelling a read mid-stream closes its file.
        """
        write_file(self.at("f"), random_bytes(BIG, seed=23))
        before = open_fds()

        async def first_then_cancel() -> int:
            read = self.store.read(A, "f", 0, BIG)
            await anext(aiter(read))
            during = open_fds()
            read.cancel()
            return during

        during = result_of(self, first_then_cancel())
        self.assertEqual(during, before + 1)
        self.assertEqual(open_fds(), before)

    def start_read(self) -> tuple[DeferringRunner, Any, Deferred[list[bytes]]]:
        """
        Start consuming a read of a multi-chunk file from a store whose
        thread calls run only when told.

        @return: the runner, the read stream and the Deferred of the list
            of chunks the consumer gets.
        """
        write_file(self.at("f"), random_bytes(BIG, seed=24))
        runner = DeferringRunner()
        store = LocalStore({A: self.arena_root}, runner)
        read = store.read(A, "f", 0, BIG)

        async def consume() -> list[bytes]:
            return [chunk async for chunk in read]

        return runner, read, Deferred.fromCoroutine(consume())

    def test_cancel_while_reading(self) -> None:
        """
        Cancelling a read while one of its chunks is being read in a thread
        closes the file only after that read has returned (closing it under
        the read would let the descriptor be reused by another file), and
        ends the stream.
        """
        before = open_fds()
        runner, read, consumed = self.start_read()
        self.assertEqual(runner.names(), ["open_read"])
        runner.run_next()
        self.assertEqual(runner.names(), ["read_chunk"])
        read.cancel()
        self.assertEqual(runner.names(), ["read_chunk"])
        runner.run_next()
        self.assertEqual(self.successResultOf(consumed), [])
        self.assertEqual(runner.names(), ["close"])
        runner.run_next()
        self.assertEqual(runner.names(), [])
        self.assertEqual(open_fds(), before)

    def test_cancel_while_opening(self) -> None:
        """
        Cancelling a read while its file is being opened ends the stream
        and closes the file once it is open.
        """
        before = open_fds()
        runner, read, consumed = self.start_read()
        read.cancel()
        self.assertEqual(runner.names(), ["open_read"])
        runner.run_next()
        self.assertEqual(self.successResultOf(consumed), [])
        self.assertEqual(runner.names(), ["close"])
        runner.run_next()
        self.assertEqual(runner.names(), [])
        self.assertEqual(open_fds(), before)

    def test_failed_writes_close(self) -> None:
        """
        Writes that fail mid-stream (too much data, too little, or the data
        source failing) close the files they opened.
        """

        async def broken() -> Any:
            yield b"abc"
            raise ValueError("source failed")

        before = open_fds()
        failures: list[tuple[Any, type[BaseException]]] = [
            (stream(b"ab", b"cdef"), RealizeError),
            (stream(b"ab"), RealizeError),
            (broken(), ValueError),
        ]
        for data, error in failures:
            failure_of(self, self.store.write(A, "f", 0, 4, 4, data), error)
        self.assertEqual(open_fds(), before)


class BatchOnDiskTests(SynchronousTestCase):
    """
    The batch commands of L{LocalStore} on a real directory.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.store = LocalStore.single(ArenaName("a"), self.root, sync_run_in_thread)

    def test_delete_files_removes_emptied_directories(self) -> None:
        """
        delete_files removes the directories it emptied, not the arena root
        and not a directory that still holds something.
        """
        write_file(f"{self.root}/x/y/one", b"1", mtime_ns=10)
        write_file(f"{self.root}/x/two", b"2", mtime_ns=10)
        write_file(f"{self.root}/z/three", b"3", mtime_ns=10)
        write_file(f"{self.root}/z/other", b"o", mtime_ns=10)
        outcomes = result_of(
            self,
            self.store.delete_files(
                ArenaName("a"),
                [
                    FileInfo("x/y/one", 1, 10),
                    FileInfo("x/two", 1, 10),
                    FileInfo("z/three", 1, 10),
                ],
            ),
        )
        self.assertEqual(outcomes, [None, None, None])
        self.assertEqual(tree(self.root), ["z", "z/other"])
        self.assertTrue(os.path.isdir(self.root))

    def test_write_files_refuses_symlink_final(self) -> None:
        """
        write_files refuses a path whose final file is a symlink: the link
        and its target are untouched and no partial is left behind.
        """
        target = os.path.abspath(self.mktemp())
        write_file(target, b"outside")
        os.symlink(target, f"{self.root}/link")
        [outcome] = result_of(
            self,
            self.store.write_files(
                ArenaName("a"), [SmallFile("link", 3, 1, merkle_root([b""]))], [b"new"]
            ),
        )
        self.assertIsInstance(outcome, InvalidPath)
        self.assertEqual(read_file(target), b"outside")
        self.assertTrue(os.path.islink(f"{self.root}/link"))
        self.assertEqual(os.listdir(self.root), ["link"])

    def test_write_files_symlink_directory(self) -> None:
        """
        A directory component that is a symlink is refused, never followed.
        """
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.symlink(outside, f"{self.root}/dir")
        [outcome] = result_of(
            self,
            self.store.write_files(
                ArenaName("a"), [SmallFile("dir/f", 1, 1, merkle_root([b""]))], [b"x"]
            ),
        )
        self.assertIsInstance(outcome, InvalidPath)
        self.assertEqual(os.listdir(outside), [])
