"""
Tests for L{realize.services.watcher} and L{realize.storage.scan}: the
watcher over a fake inotify and a L{Clock} on a real temporary tree (unit),
and over real inotify with a real reactor (integration, slower: their
classes say so).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
)
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from realize.config import ArenaConfig, Config
from realize.hashing import hash_fd_range, merkle_root
from realize.metrics import HistoryMetrics, make_registry
from realize.model import ADD, REMOVE, REPLACE, ArenaName
from realize.services import watcher as watcher_module
from realize.services.watcher import (
    NEW_DIRECTORY_DELAY,
    RENAME_EVENT_WAIT,
    RESCAN_INTERVAL,
    STABILITY_DELAY,
    ArenaWatcher,
    KernelNotifier,
    WatcherService,
)
from realize.storage import scan
from realize.storage.index import ArenaIndex, Version
from realize.storage.pool import open_pool
from tests.helpers import sync_run_in_thread
from tests.sqlite_helpers import SyncPool

A = ArenaName("a")


def root_of(data: bytes) -> bytes:
    """
    The Merkle root of some bytes.
    """
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"root-{os.getpid()}")
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return merkle_root(hash_fd_range(fd, 0, len(data)))
    finally:
        os.close(fd)
        os.unlink(path)


class FakeNotifier:
    """
    A L{realize.services.watcher.Notifier} driven by the test.

    @ivar watches: watched directory (bytes path) by watch descriptor.
    @ivar removed: watch descriptors removed.
    @ivar limit: fail with C{ENOSPC} past this many watches.
    @ivar refuse: paths (bytes) refused with C{EACCES}.
    """

    def __init__(self) -> None:
        self.watches: dict[int, bytes] = {}
        self.removed: list[int] = []
        self.callback: Callable[[int, int, int, bytes], None] | None = None
        self.limit: int | None = None
        self.refuse: set[bytes] = set()
        self.closed = False
        self._next = 1

    def start(self, callback: Callable[[int, int, int, bytes], None]) -> None:
        self.callback = callback

    def add_watch(self, path: bytes, mask: int) -> int:
        if path in self.refuse:
            raise OSError(errno.EACCES, "Permission denied", path)
        for wd, watched in self.watches.items():
            if watched == path:
                return wd
        if self.limit is not None and len(self.watches) >= self.limit:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        if not os.path.isdir(path):
            raise OSError(errno.ENOENT, "No such file or directory", path)
        wd, self._next = self._next, self._next + 1
        self.watches[wd] = path
        return wd

    def remove_watch(self, wd: int) -> None:
        self.removed.append(wd)
        self.watches.pop(wd, None)

    def close(self) -> None:
        self.closed = True

    def wd(self, directory: str) -> int:
        for wd, path in self.watches.items():
            if path == os.fsencode(directory):
                return wd
        raise KeyError(directory)

    def emit(
        self, directory: str, mask: int, name: str | bytes = b"", cookie: int = 0
    ) -> None:
        """
        Deliver an event for C{name} in the watched C{directory}.
        """
        assert self.callback is not None
        raw = name if isinstance(name, bytes) else os.fsencode(name)
        self.callback(self.wd(directory), mask, cookie, raw)

    def rename(self, directory: str, old: str, new: str, cookie: int) -> None:
        """
        Deliver the two events of a rename within C{directory}.
        """
        self.emit(directory, IN_MOVED_FROM, old, cookie)
        self.emit(directory, IN_MOVED_TO, new, cookie)


class HeldRunner:
    """
    A L{realize.interfaces.RunInThread} that runs everything at once
    except the functions named in C{hold}, whose calls wait in C{held}
    until L{release}.
    """

    def __init__(self, *hold: Callable[..., Any]) -> None:
        self.hold = set(hold)
        self.held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self.calls: list[Callable[..., Any]] = []
        self.log: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self.every: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], /, *args: Any, **kw: Any) -> Any:
        self.calls.append(f)
        self.every.append((f, args))
        if f in self.hold:
            d: Deferred[Any] = Deferred()
            self.held.append((d, f, args))
            self.log.append((d, f, args))
            return d
        return sync_run_in_thread(f, *args, **kw)

    def release(self) -> None:
        held, self.held = self.held, []
        for d, f, args in held:
            try:
                result = f(*args)
            except BaseException as e:
                d.errback(e)
            else:
                d.callback(result)


class _WatcherCase(SynchronousTestCase):
    """
    An arena tree on disk, its index over a synchronous pool, a watcher
    over a fake notifier and a L{Clock}.
    """

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.root = os.path.join(base, "data")
        os.makedirs(self.root)
        self.db = os.path.join(base, "arena.db")
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.pool = SyncPool(self.db)
        self.index: ArenaIndex = self.successResultOf(
            Deferred.fromCoroutine(ArenaIndex.open(A, self.db, self.pool, self.clock))
        )
        self.addCleanup(self.index.close)
        self.registry = make_registry()
        self.metrics = HistoryMetrics(self.registry)
        self.notifiers: list[FakeNotifier] = []
        self.runner: Callable[..., Any] = sync_run_in_thread
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def notifier(self) -> FakeNotifier:
        n = FakeNotifier()
        self.notifiers.append(n)
        return n

    def write(self, path: str, data: bytes = b"x", mtime_ns: int | None = None) -> None:
        full = os.path.join(self.root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        if mtime_ns is not None:
            os.utime(full, ns=(mtime_ns, mtime_ns))

    def start(self, exclude: str | None = None, **kwargs: Any) -> ArenaWatcher:
        watcher = ArenaWatcher(
            A,
            self.root,
            exclude,
            self.index,
            self.clock,
            self.runner,
            self.notifier,
            self.metrics,
            **kwargs,
        )
        self.successResultOf(Deferred.fromCoroutine(watcher.start()))
        self.addCleanup(self.stop, watcher)
        self.clock.advance(0)
        return watcher

    def stop(self, watcher: ArenaWatcher) -> None:
        self.successResultOf(watcher.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def settle(self, seconds: float = STABILITY_DELAY) -> None:
        """
        Let new directories be watched and scanned, then C{seconds} pass.
        """
        self.clock.advance(0)
        self.clock.advance(NEW_DIRECTORY_DELAY)
        self.clock.advance(seconds)
        self.clock.advance(0)

    def history(self) -> list[tuple[str, str, Any, Any]]:
        rows = self.pool.connection.execute(
            "SELECT kind, path, old_hash, mtime_ns FROM history ORDER BY position"
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]

    def kinds(self) -> list[tuple[str, str]]:
        return [(k, p) for k, p, _, _ in self.history()]

    def indexed(self) -> dict[str, tuple[int, int, bytes | None]]:
        rows = self.pool.connection.execute(
            "SELECT path, size, mtime_ns, hash FROM file_index"
        )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def stat(self, path: str) -> os.stat_result:
        return os.lstat(os.path.join(self.root, path))


class CatchupTests(_WatcherCase):
    """
    The scan at start: what is on disk against the index.
    """

    def test_reader_kept(self) -> None:
        """
        Scans through an L{scan.IndexReader} share its connection, each in
        a transaction of its own (it sees what was recorded since the
        last); a scan that fails closes it, and the next opens another.
        """
        reader = scan.IndexReader(self.db)
        self.addCleanup(reader.close)
        self.write("f", b"1")
        first = scan.scan_tree(self.root, "", None, reader)
        self.assertEqual([c[0] for c in first.changed], ["f"])
        connection = reader.connection()
        st = self.stat("f")
        self.successResultOf(
            Deferred.fromCoroutine(
                self.index.record_versions(
                    [Version("f", st.st_size, st.st_mtime_ns, root_of(b"1"))]
                )
            )
        )
        self.assertEqual(scan.scan_tree(self.root, "", None, reader).changed, [])
        self.assertIs(reader.connection(), connection)
        shutil.rmtree(self.root)
        self.assertRaises(OSError, scan.scan_tree, self.root, "", None, reader)
        self.assertIsNot(reader.connection(), connection)

    def test_first_indexing(self) -> None:
        """
        An empty index catches up with every regular file, with its Merkle
        root, size and mtime; every directory is watched.
        """
        self.write("a.txt", b"hello")
        self.write("d/e/f", b"")
        self.write("d/g", b"x" * 3000)
        big = os.urandom(1 << 20) * 2 + b"tail"
        self.write("d/h", big)
        watcher = self.start()
        self.assertEqual(
            self.kinds(),
            [
                # The large file is announced with no version first.
                (ADD, "d/h"),
                (ADD, "a.txt"),
                (ADD, "d/e/f"),
                (ADD, "d/g"),
                (REPLACE, "d/h"),
            ],
        )
        self.assertEqual(self.indexed()["d/h"][2], root_of(big))
        indexed = self.indexed()
        st = self.stat("a.txt")
        self.assertEqual(indexed["a.txt"], (5, st.st_mtime_ns, root_of(b"hello")))
        self.assertEqual(indexed["d/g"][2], root_of(b"x" * 3000))
        self.assertEqual(indexed["d/e/f"][2], root_of(b""))
        watched = sorted(self.notifiers[0].watches.values())
        self.assertEqual(
            watched,
            sorted(
                os.fsencode(os.path.join(self.root, d) if d else self.root)
                for d in ("", "d", "d/e")
            ),
        )
        self.assertEqual(self.metric("realize_watcher_watches", arena="a"), 3)
        self.assertEqual(
            self.metric(
                "realize_watcher_files_recorded_total", arena="a", source="hashed"
            ),
            4,
        )
        self.successResultOf(watcher.wait_idle())

    def test_hashing_goes_on_while_recording(self) -> None:
        """
        A batch hashed frees its thread before it is recorded: the next
        batch hashes while the db records, up to L{RECORD_BACKLOG} batches
        waiting for the db; everything is recorded once the db answers.
        """
        self.patch(watcher_module, "HASH_BATCH_FILES", 1)
        self.patch(watcher_module, "HASH_CONCURRENCY", 1)
        self.patch(watcher_module, "RECORD_BACKLOG", 2)
        for name in ("a", "b", "c"):
            self.write(name)
        hashed: list[list[str]] = []

        def counting(f: Callable[..., Any], /, *args: Any, **kw: Any) -> Any:
            if f is scan.hash_files:
                hashed.append([item[0] for item in args[1]])
            return sync_run_in_thread(f, *args, **kw)

        self.runner = counting
        held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []
        pool = self.pool

        class Holding:
            def runInteraction(self, f: Callable[..., Any], *args: Any) -> Any:
                if f.__name__ != "_txn_record_versions":
                    return pool.runInteraction(f, *args)
                d: Deferred[Any] = Deferred()
                held.append((d, f, args))
                return d

            def close(self) -> None:
                pool.close()

        self.index.pool = Holding()
        watcher = self.start()
        # Two batches hashed, both waiting for the db; the third waits.
        self.assertEqual(hashed, [["a"], ["b"]])
        self.assertEqual(len(held), 2)
        self.assertNoResult(watcher.wait_idle())
        while held:
            d, f, args = held.pop(0)
            pool.runInteraction(f, *args).chainDeferred(d)
            self.clock.advance(0)
        self.assertEqual(hashed, [["a"], ["b"], ["c"]])
        self.assertEqual(sorted(self.indexed()), ["a", "b", "c"])
        self.successResultOf(watcher.wait_idle())

    def test_never_indexed(self) -> None:
        """
        Partial files, symlinks, FIFOs, sockets and the excluded workdir are
        not indexed; the workdir is not watched.
        """
        self.write("keep")
        self.write(".half.part")
        self.write("d/.x.part")
        self.write(".work/arena.db")
        os.symlink("keep", os.path.join(self.root, "link"))
        os.symlink(self.root, os.path.join(self.root, "dirlink"))
        os.mkfifo(os.path.join(self.root, "fifo"))
        s = socket.socket(socket.AF_UNIX)
        self.addCleanup(s.close)
        # A short path to the same place: a socket's path is at most 107
        # bytes, and a deep checkout's temporary directory may be longer.
        short = tempfile.mkdtemp(prefix="rw")
        self.addCleanup(shutil.rmtree, short)
        os.symlink(self.root, os.path.join(short, "r"))
        s.bind(os.path.join(short, "r", "sock"))
        self.start(exclude=".work")
        self.assertEqual(self.kinds(), [(ADD, "keep")])
        watched = {os.path.basename(p) for p in self.notifiers[0].watches.values()}
        self.assertNotIn(b".work", watched)
        self.assertNotIn(b"dirlink", watched)

    def test_restart(self) -> None:
        """
        A watcher started after changes made while none ran records exactly
        those: a Replace for the modified file (old hash: the previous
        one), a Remove for the deleted one, an Add for the new one; an
        unchanged file is not recorded, and a second start records nothing.
        """
        self.write("same", b"1")
        self.write("changed", b"old")
        self.write("gone/file", b"g")
        first = self.start()
        self.stop(first)
        old = self.indexed()["changed"][2]
        before = len(self.history())
        self.write("changed", b"new content")
        shutil.rmtree(os.path.join(self.root, "gone"))
        self.write("new", b"n")
        second = self.start()
        changes = sorted(self.history()[before:], key=lambda r: r[1])
        self.assertEqual(
            [(k, p) for k, p, _, _ in changes],
            [(REPLACE, "changed"), (REMOVE, "gone/file"), (ADD, "new")],
        )
        self.assertEqual(changes[0][2], old)
        self.assertEqual(changes[1][3], self.stat(".").st_mtime_ns)
        self.stop(second)
        count = len(self.history())
        self.start()
        self.assertEqual(len(self.history()), count)

    def test_no_version_hashed(self) -> None:
        """
        A file left with no version (recorded, not hashed before a stop)
        is hashed by the next catch-up.
        """
        self.write("f", b"data")
        st = self.stat("f")
        self.successResultOf(
            Deferred.fromCoroutine(
                self.index.record_unhashed([("f", 4, st.st_mtime_ns)])
            )
        )
        self.start()
        self.assertEqual(self.indexed()["f"][2], root_of(b"data"))
        self.assertEqual(self.kinds(), [(ADD, "f"), (REPLACE, "f")])

    def test_missing_root(self) -> None:
        """
        A datadir that is gone fails the start and removes nothing from
        the index.
        """
        self.write("f")
        self.stop(self.start())
        shutil.rmtree(self.root)
        watcher = ArenaWatcher(
            A, self.root, None, self.index, self.clock, self.runner, self.notifier
        )
        self.failureResultOf(Deferred.fromCoroutine(watcher.start()), OSError)
        self.successResultOf(watcher.stop())
        self.assertEqual(list(self.indexed()), ["f"])

    def test_unreadable_directory(self) -> None:
        """
        A directory that cannot be read is logged once; the files the index
        holds beneath it are not taken as removed, and the rest of the tree
        is indexed and watched.
        """
        self.write("ok/f")
        self.write("secret/f")
        self.stop(self.start())
        self.write("ok/g")
        real_open = os.open

        def refusing(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if path == "secret":
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real_open(path, flags, *args, **kwargs)

        self.patch(scan.os, "open", refusing)
        self.start()
        self.assertEqual(sorted(self.indexed()), ["ok/f", "ok/g", "secret/f"])
        warnings = [e for e in self.events if e.get("path") == "secret"]
        self.assertEqual(len(warnings), 1)

    def test_unreadable_directory_after_a_removed_file(self) -> None:
        """
        A file removed that sorts just before an unreadable directory
        (C{secret.txt} before C{secret/}) is a Remove; the files the index
        holds beneath the directory are still left alone (the scan does
        not even name them as missing).
        """
        self.write("secret.txt")
        self.write("secret/f")
        self.stop(self.start())
        os.unlink(os.path.join(self.root, "secret.txt"))
        real_open = os.open

        def refusing(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if path == "secret":
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real_open(path, flags, *args, **kwargs)

        self.patch(scan.os, "open", refusing)
        result = scan.scan_tree(self.root, "", None, self.db)
        self.assertEqual(result.missing, ["secret.txt"])
        self.start()
        self.assertEqual(sorted(self.indexed()), ["secret/f"])


class EventTests(_WatcherCase):
    """
    Changes seen through (fake) inotify events.
    """

    def setUp(self) -> None:
        super().setUp()
        self.write("d/old", b"1")
        self.watcher = self.start()
        self.fake = self.notifiers[0]
        self.base = len(self.history())

    def new(self) -> list[tuple[str, str]]:
        return self.kinds()[self.base :]

    def test_stability_delay(self) -> None:
        """
        A file is recorded once nothing happened to it for the stability
        delay; every event restarts the delay.
        """
        self.write("f", b"a")
        self.fake.emit(self.root, IN_CREATE, "f")
        self.clock.advance(STABILITY_DELAY * 0.6)
        self.assertEqual(self.new(), [])
        self.write("f", b"ab")
        self.fake.emit(self.root, IN_CLOSE_WRITE, "f")
        self.clock.advance(STABILITY_DELAY * 0.6)
        self.assertEqual(self.new(), [])
        self.clock.advance(STABILITY_DELAY * 0.5)
        self.assertEqual(self.new(), [(ADD, "f")])
        self.assertEqual(self.indexed()["f"][2], root_of(b"ab"))

    def test_modify(self) -> None:
        """
        A modified file is a Replace whose old hash is the previous one.
        """
        old = self.indexed()["d/old"][2]
        self.write("d/old", b"22")
        self.fake.emit(os.path.join(self.root, "d"), IN_CLOSE_WRITE, "old")
        self.settle()
        [(kind, path, old_hash, _)] = self.history()[self.base :]
        self.assertEqual((kind, path, old_hash), (REPLACE, "d/old", old))

    def test_unchanged_event(self) -> None:
        """
        An event on a file whose size and mtime are the index's records
        nothing (and hashes nothing).
        """
        self.fake.emit(os.path.join(self.root, "d"), IN_ATTRIB, "old")
        self.settle()
        self.assertEqual(self.new(), [])

    def test_changed_while_hashing(self) -> None:
        """
        A file that changes while it is hashed is not recorded then: it is
        hashed again after the delay, and recorded once, with its final
        content.
        """
        real = scan.leaf_hash
        changes = [b"changed meanwhile"]

        def changing(data: bytes) -> bytes:
            leaf = real(data)
            if changes:
                self.write("f", changes.pop(), mtime_ns=123_000_000_000)
            return leaf

        self.patch(scan, "leaf_hash", changing)
        self.write("f", b"first")
        self.fake.emit(self.root, IN_CLOSE_WRITE, "f")
        self.settle()
        self.assertEqual(self.new(), [])
        self.settle()
        self.assertEqual(self.new(), [(ADD, "f")])
        self.assertEqual(
            self.indexed()["f"], (17, 123_000_000_000, root_of(b"changed meanwhile"))
        )

    def test_large_file_no_version_first(self) -> None:
        """
        A large file is recorded with no version as soon as it is stable,
        before hashing, then replaced by its version (#musthash); the
        hashing backlog shows meanwhile.
        """
        runner = HeldRunner(scan.hash_files)
        self.watcher.run_in_thread = runner
        self.watcher.unhashed_notice_size = 1000
        self.write("big", b"b" * 5000)
        self.write("small", b"s")
        self.fake.emit(self.root, IN_CLOSE_WRITE, "big")
        self.fake.emit(self.root, IN_CLOSE_WRITE, "small")
        self.settle()
        self.assertEqual(self.new(), [(ADD, "big")])
        self.assertIsNone(self.indexed()["big"][2])
        self.assertEqual(
            self.metric("realize_watcher_hash_backlog_bytes", arena="a"), 0
        )
        self.assertEqual(self.metric("realize_watcher_queue_files", arena="a"), 2)
        runner.release()
        self.clock.advance(0)
        history = self.history()[self.base :]
        self.assertEqual(
            [(k, p) for k, p, _, _ in history],
            [(ADD, "big"), (REPLACE, "big"), (ADD, "small")],
        )
        self.assertIsNone(history[1][2])
        self.assertEqual(self.indexed()["big"][2], root_of(b"b" * 5000))

    def test_remove_unlinktime(self) -> None:
        """
        A deleted file is a Remove whose mtime is its directory's, taken
        after the delete.
        """
        hash = self.indexed()["d/old"][2]
        os.unlink(os.path.join(self.root, "d/old"))
        self.fake.emit(os.path.join(self.root, "d"), IN_DELETE, "old")
        self.settle()
        [(kind, path, old_hash, mtime)] = self.history()[self.base :]
        self.assertEqual((kind, path, old_hash), (REMOVE, "d/old", hash))
        self.assertEqual(mtime, self.stat("d").st_mtime_ns)
        self.assertEqual(self.indexed(), {})

    def test_rm_rf_deep(self) -> None:
        """
        C{rm -rf} of a deep tree: every file is a Remove whose mtime is that
        of the nearest directory still there (the root), with the
        watches of the tree dropped.
        """
        for i in range(3):
            self.write(f"top/a/b/c/f{i}", bytes([i]))
        self.write("top/a/g")
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "top")
        self.settle()
        self.assertEqual(len(self.new()), 4)
        dirs = ["top", "top/a", "top/a/b", "top/a/b/c"]
        wds = [self.fake.wd(os.path.join(self.root, d)) for d in dirs]
        shutil.rmtree(os.path.join(self.root, "top"))
        for d in reversed(dirs[1:]):
            parent, name = os.path.split(d)
            self.fake.emit(os.path.join(self.root, d), IN_DELETE_SELF)
            self.fake.emit(os.path.join(self.root, parent), IN_DELETE | IN_ISDIR, name)
        self.fake.emit(self.root, IN_DELETE | IN_ISDIR, "top")
        self.settle()
        removes = [r for r in self.history() if r[0] == REMOVE]
        self.assertEqual(
            sorted(r[1] for r in removes),
            ["top/a/b/c/f0", "top/a/b/c/f1", "top/a/b/c/f2", "top/a/g"],
        )
        self.assertEqual({r[3] for r in removes}, {self.stat(".").st_mtime_ns})
        self.assertTrue(set(wds) <= set(self.fake.removed) | set())
        self.assertEqual(sorted(self.indexed()), ["d/old"])

    def test_exists_again(self) -> None:
        """
        A file deleted and made again within the delay is no Remove: a
        Replace (or nothing, if it is the same).
        """
        os.unlink(os.path.join(self.root, "d/old"))
        self.fake.emit(os.path.join(self.root, "d"), IN_DELETE, "old")
        self.write("d/old", b"again")
        self.fake.emit(os.path.join(self.root, "d"), IN_CLOSE_WRITE, "old")
        self.settle()
        self.assertEqual(self.new(), [(REPLACE, "d/old")])

    def test_rename_file(self) -> None:
        """
        A rename is a Remove of the old path and an Add of the new one.
        """
        os.rename(os.path.join(self.root, "d/old"), os.path.join(self.root, "d/new"))
        d = os.path.join(self.root, "d")
        self.fake.emit(d, IN_MOVED_FROM, "old")
        self.fake.emit(d, IN_MOVED_TO, "new")
        self.settle()
        self.assertEqual(sorted(self.new()), [(ADD, "d/new"), (REMOVE, "d/old")])

    def test_rename_directory(self) -> None:
        """
        A directory renamed is a Remove and an Add per file; the watches
        follow the new name.
        """
        self.write("d/sub/x", b"x")
        self.fake.emit(os.path.join(self.root, "d"), IN_CREATE | IN_ISDIR, "sub")
        self.settle()
        self.base = len(self.history())
        os.rename(os.path.join(self.root, "d"), os.path.join(self.root, "e"))
        self.fake.emit(self.root, IN_MOVED_FROM | IN_ISDIR, "d")
        self.fake.emit(self.root, IN_MOVED_TO | IN_ISDIR, "e")
        self.settle()
        self.assertEqual(
            sorted(self.new()),
            [(ADD, "e/old"), (ADD, "e/sub/x"), (REMOVE, "d/old"), (REMOVE, "d/sub/x")],
        )
        self.fake.watches.pop(self.fake.wd(os.path.join(self.root, "e")), None)
        watched = set(self.fake.watches.values())
        self.assertIn(os.fsencode(os.path.join(self.root, "e/sub")), watched)
        self.assertNotIn(os.fsencode(os.path.join(self.root, "d/sub")), watched)

    def test_new_directory(self) -> None:
        """
        A directory that appears is watched L{NEW_DIRECTORY_DELAY} later,
        then scanned: the files made in it before (its watch) are added;
        a directory found in it, not watched yet, is watched and scanned
        once more.
        """
        self.write("n/m/f1")
        self.write("n/f2")
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "n")
        self.clock.advance(NEW_DIRECTORY_DELAY * 0.9)
        self.assertRaises(KeyError, self.fake.wd, os.path.join(self.root, "n"))
        self.assertEqual(self.scans(), [])
        self.settle()
        self.assertEqual(sorted(self.new()), [(ADD, "n/f2"), (ADD, "n/m/f1")])
        self.fake.wd(os.path.join(self.root, "n"))
        self.fake.wd(os.path.join(self.root, "n/m"))
        self.assertEqual(
            self.metric("realize_watcher_rescans_total", arena="a", reason="directory"),
            2,
        )
        # Scans that found files to look at are logged as news.
        self.assertEqual(
            [(e["prefix"], e["changed"], e["log_level"]) for e in self.scans()],
            [("n", 2, LogLevel.info), ("n/m", 1, LogLevel.info)],
        )

    def test_new_directories_scanned_together(self) -> None:
        """
        Directories that appear together are scanned in one call of a
        thread; one whose scan fails is logged, the others are recorded.
        """
        runner = HeldRunner()
        self.watcher.run_in_thread = runner
        for name in ("n1", "n2", "n3"):
            self.write(f"{name}/f")
            self.fake.emit(self.root, IN_CREATE | IN_ISDIR, name)
        scan_tree = scan._scan_tree

        def failing(root: str, prefix: str, *args: Any) -> scan.ScanResult:
            if prefix == "n2":
                raise OSError(errno.EIO, "I/O error")
            return scan_tree(root, prefix, *args)

        # Each directory's scan of scan_trees.
        self.patch(scan, "_scan_tree", failing)
        self.settle()
        scans = [args[1] for f, args in runner.every if f is scan.scan_trees]
        self.assertEqual(scans, [["n1", "n2", "n3"]])
        self.assertEqual(sorted(self.new()), [(ADD, "n1/f"), (ADD, "n3/f")])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_new_directory_gone(self) -> None:
        """
        A directory that went before its watch is neither watched nor
        scanned (its removal's event is a scan of its path).
        """
        self.write("n/f")
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "n")
        shutil.rmtree(os.path.join(self.root, "n"))
        self.fake.emit(self.root, IN_DELETE | IN_ISDIR, "n")
        self.settle()
        self.assertRaises(KeyError, self.fake.wd, os.path.join(self.root, "n"))
        self.assertEqual(self.new(), [])
        self.assertEqual(len(self.scans()), 1)
        self.assertTrue(self.watcher._is_idle())

    def test_store_directory_scan_quiet(self) -> None:
        """
        The scan of a new directory whose files the store told of finds
        nothing to look at: it is logged at debug level, not info (a move
        makes one for every directory it fills).
        """
        self.write("n/got", b"from the store")
        st = self.stat("n/got")
        self.watcher.known("n/got", st.st_size, st.st_mtime_ns, b"R" * 32)
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "n")
        self.settle()
        self.assertEqual(self.new(), [(ADD, "n/got")])
        scans = self.scans()
        self.assertEqual(len(scans), 1)
        self.assertEqual(
            {(e["files"], e["changed"], e["log_level"]) for e in scans},
            {(1, 0, LogLevel.debug)},
        )

    def scans(self, reason: str = "directory") -> list[dict[str, Any]]:
        """
        @return: the log events of the scans made for C{reason}.
        """
        return [
            e
            for e in self.events
            if "scanned {prefix}" in e.get("log_format", "")
            and e.get("reason") == reason
        ]

    def test_store_file_scanned_not_looked_at_again(self) -> None:
        """
        A scan of a directory the store fills finds a file the store told
        of (its look under way) with the size and mtime of the store's
        hint: it is not looked at again.  A file the scan finds otherwise
        is.
        """
        runner = HeldRunner(scan.check_paths)
        self.watcher.run_in_thread = runner
        self.write("n/got", b"from the store")
        st = self.stat("n/got")
        # A look under way: something named the file before the store's word.
        self.watcher.touch("n/got", 0)
        self.watcher.known("n/got", st.st_size, st.st_mtime_ns, b"R" * 32)
        self.clock.advance(0)
        self.assertEqual(len(runner.held), 1)
        self.write("n/other", b"not the store's")
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "n")
        runner.release()
        self.settle()
        runner.release()
        looked = [args[1] for _, f, args in runner.log if f is scan.check_paths]
        self.assertEqual(looked, [["n/got"], ["n/other"]])
        self.assertEqual(sorted(self.new()), [(ADD, "n/got"), (ADD, "n/other")])
        self.assertEqual(self.indexed()["n/got"][2], b"R" * 32)

    def test_new_directory_waits(self) -> None:
        """
        The files a scan finds in a directory that just appeared are new:
        they wait for the stability delay, so that one the store finishes
        meanwhile is recorded with its root, without hashing (a move into
        new directories raced the store's hints before).
        """
        runner = HeldRunner()
        self.watcher.run_in_thread = runner
        self.write("n/got", b"from the store")
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "n")
        self.clock.advance(0)
        self.assertNotIn(scan.hash_files, runner.calls)
        st = self.stat("n/got")
        self.watcher.known("n/got", st.st_size, st.st_mtime_ns, b"R" * 32)
        self.settle()
        self.assertEqual(self.new(), [(ADD, "n/got")])
        self.assertEqual(self.indexed()["n/got"][2], b"R" * 32)
        self.assertNotIn(scan.hash_files, runner.calls)
        # The scan saw the size and mtime the store gave: not looked at.
        self.assertNotIn(scan.check_paths, runner.calls)

    def test_overflow(self) -> None:
        """
        After an inotify queue overflow, a rescan records what no event
        told.
        """
        self.write("quiet", b"q")
        self.fake.callback(-1, IN_Q_OVERFLOW, 0, b"")  # type: ignore[misc]
        self.settle(0)
        self.assertEqual(self.new(), [(ADD, "quiet")])
        self.assertEqual(
            self.metric("realize_watcher_rescans_total", arena="a", reason="overflow"),
            1,
        )

    def test_store_finished(self) -> None:
        """
        A file the store finished is recorded with the root it gave, at
        once and without hashing, when size and mtime match; otherwise it
        is hashed.
        """
        runner = HeldRunner()
        self.watcher.run_in_thread = runner
        self.write("got", b"from the store")
        st = self.stat("got")
        self.watcher.known("got", st.st_size, st.st_mtime_ns, b"R" * 32)
        self.fake.emit(self.root, IN_MOVED_TO, "got")
        self.clock.advance(0)
        self.assertEqual(self.new(), [(ADD, "got")])
        self.assertEqual(self.indexed()["got"][2], b"R" * 32)
        self.assertNotIn(scan.hash_files, runner.calls)
        self.assertEqual(
            self.metric(
                "realize_watcher_files_recorded_total", arena="a", source="store"
            ),
            1,
        )
        self.write("other", b"changed since")
        self.fake.emit(self.root, IN_CLOSE_WRITE, "other")
        self.watcher.known("other", 1, 1, b"S" * 32)
        self.clock.advance(0)
        self.assertIn(scan.hash_files, runner.calls)
        self.assertEqual(self.indexed()["other"][2], root_of(b"changed since"))
        self.settle()

    def looks(self, runner: HeldRunner) -> list[list[str]]:
        """
        @return: the paths of each look (C{check_paths}) C{runner} ran.
        """
        return [args[1] for f, args in runner.every if f is scan.check_paths]

    def test_stop_closes_reader(self) -> None:
        """
        The scans' connection to the index is closed when the watcher
        stops.
        """
        self.write("n/f")
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "n")
        self.settle()
        reader = self.watcher._reader
        assert reader is not None
        connection = reader.connection()
        self.successResultOf(self.watcher.stop())
        self.assertIsNone(self.watcher._reader)
        self.assertRaises(sqlite3.ProgrammingError, connection.execute, "SELECT 1")

    def test_store_word_not_looked_at(self) -> None:
        """
        A file the store finished that no other event named is recorded
        with the store's root without a look, whether the event of its
        partial file's rename into place comes after the store's word or
        before it.
        """
        runner = HeldRunner(scan.check_paths)
        self.watcher.run_in_thread = runner
        self.write("first", b"word first")
        st = self.stat("first")
        self.watcher.known("first", st.st_size, st.st_mtime_ns, b"F" * 32)
        self.clock.advance(0)
        self.assertEqual(self.new(), [(ADD, "first")])
        self.fake.rename(self.root, ".first.part", "first", 7)
        self.write("second", b"event first")
        self.fake.rename(self.root, ".second.part", "second", 8)
        st = self.stat("second")
        self.watcher.known("second", st.st_size, st.st_mtime_ns, b"S" * 32)
        self.clock.advance(0)
        self.clock.advance(STABILITY_DELAY * 2)
        self.assertEqual(self.new(), [(ADD, "first"), (ADD, "second")])
        self.assertEqual(self.indexed()["second"][2], b"S" * 32)
        self.assertEqual(runner.calls, [])
        self.assertTrue(self.watcher._is_idle())

    def test_store_word_after_other_event(self) -> None:
        """
        A file an event other than its rename named before the store's
        word is looked at: one the disk shows otherwise than the store
        said is hashed.
        """
        runner = HeldRunner()
        self.watcher.run_in_thread = runner
        self.write("f", b"changed after the rename")
        self.fake.rename(self.root, ".f.part", "f", 9)
        self.fake.emit(self.root, IN_CLOSE_WRITE, "f")
        self.watcher.known("f", 3, 1_000_000_000, b"R" * 32)
        self.settle()
        self.assertIn(scan.hash_files, runner.calls)
        self.assertEqual(self.indexed()["f"][2], root_of(b"changed after the rename"))

    def test_store_rename_without_word(self) -> None:
        """
        A partial file renamed into place with no word of the store (it
        failed to tell) is looked at and hashed after the delay.
        """
        self.write("f", b"renamed")
        self.fake.rename(self.root, ".f.part", "f", 10)
        self.clock.advance(0)
        self.assertEqual(self.new(), [])
        self.settle()
        self.assertEqual(self.new(), [(ADD, "f")])
        self.assertEqual(self.indexed()["f"][2], root_of(b"renamed"))

    def test_store_word_late_rename(self) -> None:
        """
        The event of a rename into place long after the store's word for
        the file (its directory was not watched then) is news again; so
        is any rename of a file recorded from the store's word once its
        own rename's event came.
        """
        runner = HeldRunner()
        self.watcher.run_in_thread = runner
        self.write("f", b"stored")
        st = self.stat("f")
        self.watcher.known("f", st.st_size, st.st_mtime_ns, root_of(b"stored"))
        self.clock.advance(RENAME_EVENT_WAIT + 1)
        self.assertEqual(self.looks(runner), [])
        self.fake.rename(self.root, ".f.part", "f", 11)
        self.settle()
        self.assertEqual(self.looks(runner), [["f"]])
        self.write("g", b"stored")
        st = self.stat("g")
        self.watcher.known("g", st.st_size, st.st_mtime_ns, root_of(b"stored"))
        self.fake.rename(self.root, ".g.part", "g", 12)
        self.write("g", b"a partial file of another program, renamed")
        self.fake.rename(self.root, ".g.part", "g", 13)
        self.settle()
        self.assertEqual(self.looks(runner), [["f"], ["g"]])
        self.assertEqual(
            self.indexed()["g"][2],
            root_of(b"a partial file of another program, renamed"),
        )

    def test_store_word_unwatched_directory(self) -> None:
        """
        The store's word for a file in a directory not watched yet waits
        for no rename event (none can come): a partial file another
        program renames onto it once the directory is watched, soon after,
        is looked at and recorded with its own root.
        """
        runner = HeldRunner()
        self.watcher.run_in_thread = runner
        self.write("n/f", b"stored")
        st = self.stat("n/f")
        self.watcher.known("n/f", st.st_size, st.st_mtime_ns, root_of(b"stored"))
        self.clock.advance(0)
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "n")
        self.settle()
        self.assertEqual(self.indexed()["n/f"][2], root_of(b"stored"))
        self.assertEqual(self.looks(runner), [])
        self.write("n/f", b"a partial file of another program, renamed")
        self.fake.rename(os.path.join(self.root, "n"), ".f.part", "f", 14)
        self.settle()
        self.assertEqual(self.looks(runner), [["n/f"]])
        self.assertEqual(
            self.indexed()["n/f"][2],
            root_of(b"a partial file of another program, renamed"),
        )

    def test_store_word_not_recorded(self) -> None:
        """
        A file recorded from the store's word whose recording failed is
        looked at again after the delay.
        """
        self.write("f", b"stored")
        st = self.stat("f")
        index = self.watcher.index

        class Failing:
            def __getattr__(self, name: str) -> Any:
                return getattr(index, name)

            def record_versions(self, *args: Any) -> Deferred[None]:
                return fail(OSError("disk full"))

        self.watcher.index = Failing()  # type: ignore[assignment]
        self.watcher.known("f", st.st_size, st.st_mtime_ns, root_of(b"stored"))
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.watcher.index = index
        self.assertEqual(self.new(), [])
        self.settle()
        self.assertEqual(self.new(), [(ADD, "f")])

    def test_store_finished_logged_per_batch(self) -> None:
        """
        Files the store finished together are logged as one debug event
        with their count, not an info event each (a move finishes
        thousands a second; the daemon's log would format every one).
        """
        for name in ("a1", "a2", "a3"):
            self.write(name, b"moved")
            st = self.stat(name)
            self.watcher.known(name, st.st_size, st.st_mtime_ns, root_of(b"moved"))
        self.clock.advance(0)
        self.assertEqual(len(self.new()), 3)
        stored = [e for e in self.events if e.get("source") == "store"]
        self.assertEqual(
            [(e["log_level"], e["files"]) for e in stored], [(LogLevel.debug, 3)]
        )

    def test_store_same_stat_new_content(self) -> None:
        """
        A file the store finished with the size and mtime the index already
        holds (a move keeps the source's mtime) takes the store's root.
        """
        st = self.stat("d/old")
        with open(os.path.join(self.root, "d/old"), "wb") as f:
            f.write(b"2")
        os.utime(os.path.join(self.root, "d/old"), ns=(st.st_atime_ns, st.st_mtime_ns))
        self.watcher.known("d/old", 1, st.st_mtime_ns, root_of(b"2"))
        self.clock.advance(0)
        self.assertEqual(self.new(), [(REPLACE, "d/old")])
        self.assertEqual(self.indexed()["d/old"][2], root_of(b"2"))

    def test_store_deleted(self) -> None:
        """
        A file the store deleted is removed at once.
        """
        os.unlink(os.path.join(self.root, "d/old"))
        self.watcher.touch("d/old", 0)
        self.clock.advance(0)
        self.assertEqual(self.new(), [(REMOVE, "d/old")])

    def test_partial_and_invalid_names(self) -> None:
        """
        Events on partial files are ignored; names that are not valid paths
        are logged once and ignored.
        """
        self.write(".f.part")
        self.fake.emit(self.root, IN_CLOSE_WRITE, ".f.part")
        self.fake.emit(self.root, IN_CLOSE_WRITE, b"bad\xff")
        self.fake.emit(self.root, IN_CLOSE_WRITE, b"bad\xff")
        self.settle()
        self.assertEqual(self.new(), [])
        warned = [
            e for e in self.events if "not a valid path" in e.get("log_format", "")
        ]
        self.assertEqual(len(warned), 1)

    def test_partial_names_on_bytes(self) -> None:
        """
        Only files named as partials are dropped at their event: a
        directory with such a name is scanned, a file named C{..part} (no
        final name inside) is recorded.
        """
        self.write(".d.part/f")
        self.write("..part")
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, ".d.part")
        self.fake.emit(self.root, IN_CLOSE_WRITE, "..part")
        self.settle()
        self.assertEqual(sorted(self.new()), [(ADD, "..part"), (ADD, ".d.part/f")])

    def test_attributes_hook(self) -> None:
        """
        C{IN_ATTRIB} calls the marks hook with the path.
        """
        seen: list[str] = []
        self.watcher.on_attributes = seen.append
        self.fake.emit(os.path.join(self.root, "d"), IN_ATTRIB, "old")
        self.fake.emit(self.root, IN_ATTRIB | IN_ISDIR, "d")
        self.assertEqual(seen, ["d/old", "d"])
        self.settle()

    def test_attributes_of_the_datadir(self) -> None:
        """
        C{IN_ATTRIB} on the datadir itself calls the hook with C{""} (the
        arena root); on another watched directory itself, nothing (its
        parent's event names it).
        """
        seen: list[str] = []
        self.watcher.on_attributes = seen.append
        self.fake.emit(self.root, IN_ATTRIB | IN_ISDIR)
        self.fake.emit(os.path.join(self.root, "d"), IN_ATTRIB | IN_ISDIR)
        self.assertEqual(seen, [""])
        self.settle()

    def test_ignored_watch(self) -> None:
        """
        C{IN_IGNORED} (the kernel dropped a watch) forgets it; later events
        for that descriptor are dropped.
        """
        d = os.path.join(self.root, "d")
        wd = self.fake.wd(d)
        self.fake.emit(d, IN_IGNORED)
        assert self.fake.callback is not None
        self.fake.callback(wd, IN_CLOSE_WRITE, 0, b"old")
        self.settle()
        self.assertEqual(self.new(), [])

    def test_stop(self) -> None:
        """
        A stopped watcher closes its notifier, records nothing more and
        leaves no timer.
        """
        self.write("f")
        self.fake.emit(self.root, IN_CLOSE_WRITE, "f")
        self.successResultOf(self.watcher.stop())
        self.assertTrue(self.fake.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.settle()
        self.assertEqual(self.new(), [])


class WatchLimitTests(_WatcherCase):
    """
    Running out of inotify watches; directories that cannot be watched.
    """

    def test_out_of_watches(self) -> None:
        """
        When watches run out, a warning is logged once, and the
        directories left unwatched are rescanned every
        L{RESCAN_INTERVAL}.
        """
        for d in "abcd":
            self.write(f"{d}/f")

        def limited() -> FakeNotifier:
            n = self.notifier()
            n.limit = 2
            return n

        watcher = ArenaWatcher(
            A,
            self.root,
            None,
            self.index,
            self.clock,
            self.runner,
            limited,
            self.metrics,
        )
        self.successResultOf(Deferred.fromCoroutine(watcher.start()))
        self.addCleanup(self.stop, watcher)
        self.clock.advance(0)
        self.assertEqual(len(self.indexed()), 4)
        warnings = [
            e
            for e in self.events
            if "out of inotify watches" in e.get("log_format", "")
        ]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(
            self.metric("realize_watcher_unwatched_directories", arena="a"), 3
        )
        unwatched = [
            d
            for d in "abcd"
            if os.fsencode(os.path.join(self.root, d))
            not in self.notifiers[0].watches.values()
        ]
        self.write(f"{unwatched[0]}/new")
        self.clock.advance(RESCAN_INTERVAL - 1)
        self.assertNotIn(f"{unwatched[0]}/new", self.indexed())
        self.clock.advance(1)
        self.clock.advance(0)
        self.assertIn(f"{unwatched[0]}/new", self.indexed())
        self.assertEqual(
            self.metric("realize_watcher_rescans_total", arena="a", reason="unwatched"),
            3,
        )

    def test_refused_watch(self) -> None:
        """
        A directory that refuses a watch is logged once; the others are
        watched.
        """
        self.write("a/f")
        self.write("b/f")

        def refusing() -> FakeNotifier:
            n = self.notifier()
            n.refuse.add(os.fsencode(os.path.join(self.root, "a")))
            return n

        watcher = ArenaWatcher(
            A, self.root, None, self.index, self.clock, self.runner, refusing
        )
        self.successResultOf(Deferred.fromCoroutine(watcher.start()))
        self.addCleanup(self.stop, watcher)
        self.clock.advance(0)
        self.assertEqual(len(self.notifiers[0].watches), 2)
        self.assertEqual(sorted(self.indexed()), ["a/f", "b/f"])
        warned = [e for e in self.events if "cannot watch" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)


class WatcherServiceTests(_WatcherCase):
    """
    L{WatcherService}: a watcher per arena once the history is ready, the
    store's hook, reloads.
    """

    def setUp(self) -> None:
        super().setUp()
        # The arena's db in its workdir, inside the datadir.
        self.index.close()
        workdir = os.path.join(self.root, ".w")
        os.makedirs(workdir)
        self.db = os.path.join(workdir, "arena.db")
        self.pool = SyncPool(self.db)
        self.index = self.successResultOf(
            Deferred.fromCoroutine(ArenaIndex.open(A, self.db, self.pool, self.clock))
        )
        self.addCleanup(self.index.close)

    def make(self) -> WatcherService:
        config = Config(
            "t.toml",
            arenas={A: ArenaConfig(A, Path(self.root), Path(self.root) / ".w")},
        )
        ready: Deferred[None] = Deferred()
        service = WatcherService(
            config,
            {A: self.index},
            ready,
            self.clock,
            self.runner,
            self.notifier,
            self.metrics,
        )
        service.startService()
        self.assertEqual(service.watchers, {})
        ready.callback(None)
        self.successResultOf(service.started)
        self.clock.advance(0)
        self.addCleanup(lambda: self.successResultOf(service.stopService()))
        return service

    def test_hooks(self) -> None:
        """
        Watchers start once the history is ready (the workdir inside the
        datadir excluded); the store's hook reaches the arena's watcher;
        other arenas are ignored.
        """
        self.write(".w/other")
        self.write("f", b"1")
        service = self.make()
        self.assertEqual(list(service.watchers), [A])
        self.assertEqual(service.watchers[A].exclude, ".w")
        self.assertEqual(self.kinds(), [(ADD, "f")])
        self.write("g", b"2")
        st = self.stat("g")
        service.file_finished(A, "g", st.st_size, st.st_mtime_ns, b"G" * 32)
        service.file_finished(ArenaName("other"), "g", 1, 1, b"G" * 32)
        os.unlink(os.path.join(self.root, "f"))
        service.file_deleted(A, "f")
        service.file_deleted(ArenaName("other"), "f")
        self.clock.advance(0)
        self.assertEqual(self.kinds()[1:], [(ADD, "g"), (REMOVE, "f")])
        self.assertEqual(self.indexed()["g"][2], b"G" * 32)

    def test_attributes(self) -> None:
        """
        Attribute changes reach the service's C{attributes} hook with the
        arena, whenever it is set.
        """
        self.write("f", b"1")
        service = self.make()
        seen: list[tuple[str, str]] = []
        service.attributes = lambda arena, path: seen.append((arena, path))
        self.notifiers[0].emit(self.root, IN_ATTRIB, "f")
        self.assertEqual(seen, [(A, "f")])
        self.clock.advance(STABILITY_DELAY)

    def test_reconfigure(self) -> None:
        """
        A reload without the arena stops its watcher (and its notifier);
        one with it again starts a new watcher.
        """
        service = self.make()
        watcher = service.watchers[A]
        self.successResultOf(
            Deferred.fromCoroutine(service.reconfigure(Config("t.toml")))
        )
        self.assertEqual(service.watchers, {})
        self.assertTrue(self.notifiers[0].closed)
        config = Config(
            "t.toml",
            arenas={A: ArenaConfig(A, Path(self.root), Path(self.root) / ".w")},
        )
        self.successResultOf(Deferred.fromCoroutine(service.reconfigure(config)))
        self.assertIsNot(service.watchers[A], watcher)
        self.clock.advance(0)
        moved = Config(
            "t.toml",
            arenas={A: ArenaConfig(A, Path(self.root), Path(self.root) / ".new")},
        )
        self.successResultOf(Deferred.fromCoroutine(service.reconfigure(moved)))
        # The open index is the old workdir's: no watcher until the
        # history service opened the new one.
        self.assertEqual(service.watchers, {})


class ScanTests(SynchronousTestCase):
    """
    L{realize.storage.scan} helpers on their own.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)

    def test_unlink_mtime(self) -> None:
        """
        The #unlinktime mtime is that of the nearest existing ancestor
        directory, up to the root.
        """
        os.makedirs(os.path.join(self.root, "a/b"))
        os.utime(os.path.join(self.root, "a"), ns=(5, 5_000))
        os.utime(self.root, ns=(7, 7_000))
        self.assertEqual(
            scan.unlink_mtime(self.root, "a/b/c/d/file"),
            os.lstat(os.path.join(self.root, "a/b")).st_mtime_ns,
        )
        self.assertEqual(scan.unlink_mtime(self.root, "a/x/file"), 5_000)
        self.assertEqual(scan.unlink_mtime(self.root, "z/file"), 7_000)
        self.assertEqual(scan.unlink_mtime(self.root, "file"), 7_000)
        shutil.rmtree(self.root)
        now = time.time_ns()
        self.assertGreaterEqual(scan.unlink_mtime(self.root, "a/file"), now)

    def test_walk_order(self) -> None:
        """
        The walk yields paths in the index's order, even where a file name
        sorts between a directory and its children.
        """
        for path in ("a/x", "a.txt", "a0", "b/c/d", "b/c.txt", "ab"):
            full = os.path.join(self.root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            open(full, "w").close()
        out = scan.ScanResult()
        paths = [item[1] for item in scan._walk(self.root, "", None, out)]
        self.assertEqual(paths, sorted(paths))
        self.assertEqual(len(paths), 6)
        self.assertEqual(out.files, 6)

    def test_symlinked_directory_not_followed(self) -> None:
        """
        Hashing through a path whose directory became a symlink fails as
        gone, reading nothing outside the arena.
        """
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        with open(os.path.join(outside, "f"), "w") as f:
            f.write("secret")
        os.symlink(outside, os.path.join(self.root, "d"))
        result = scan.hash_files(
            self.root, [("d/f", 6, os.lstat(os.path.join(outside, "f")).st_mtime_ns)]
        )
        self.assertEqual((result.versions, result.gone), ([], ["d/f"]))


class _RealReactorMixin:
    """
    Helpers for the integration tests on the real reactor.
    """

    async def until(
        self, predicate: Callable[[], bool], what: str, timeout: float = 15.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await deferLater(reactor, 0.02, lambda: None)


def _async_test(
    f: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], Deferred[None]]:
    def wrapper(self: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(f(self))

    wrapper.__doc__ = f.__doc__
    wrapper.__name__ = f.__name__
    return wrapper


class RealInotifyIntegrationTests(_RealReactorMixin, TestCase):
    """
    The watcher on real inotify, a real adbapi pool and real threads, on a
    temporary directory (slower: seconds).
    """

    timeout = 60

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.base = base
        self.root = os.path.join(base, "data")
        os.makedirs(self.root)
        self.db = os.path.join(base, "arena.db")
        self.registry = make_registry()
        self.metrics = HistoryMetrics(self.registry)

    async def open_index(self) -> ArenaIndex:
        index = await ArenaIndex.open(
            A, self.db, open_pool(self.db, reactor=reactor), reactor
        )
        self.addCleanup(index.close)
        return index

    async def watcher(self, index: ArenaIndex, delay: float = 0.2) -> ArenaWatcher:
        watcher = ArenaWatcher(
            A,
            self.root,
            None,
            index,
            reactor,
            deferToThread,
            lambda: KernelNotifier(reactor),
            self.metrics,
            delay=delay,
        )
        self.addCleanup(watcher.stop)
        await watcher.start()
        return watcher

    def read_db(self, query: str) -> list[Any]:
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()

    def indexed(self) -> dict[str, tuple[int, int, bytes | None]]:
        rows = self.read_db("SELECT path, size, mtime_ns, hash FROM file_index")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def history(self) -> list[tuple[str, str]]:
        return [
            (r[0], r[1])
            for r in self.read_db("SELECT kind, path FROM history ORDER BY position")
        ]

    def matches_disk(self) -> bool:
        """
        Whether the index holds exactly the regular files on disk, with
        their sizes, mtimes and hashes.
        """
        disk = {}
        for directory, _, files in os.walk(self.root):
            for name in files:
                full = os.path.join(directory, name)
                st = os.lstat(full)
                with open(full, "rb") as f:
                    data = f.read()
                disk[os.path.relpath(full, self.root)] = (
                    st.st_size,
                    st.st_mtime_ns,
                    root_of(data),
                )
        return self.indexed() == disk

    def write(self, path: str, data: bytes = b"x") -> None:
        full = os.path.join(self.root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)

    @_async_test
    async def test_changes(self) -> None:
        """
        Files and directories created, modified, renamed and deleted are
        recorded, and the index ends equal to the disk; deleting a watched
        directory does not stop the watching (Twisted's own dispatch would
        close the inotify descriptor there).
        """
        index = await self.open_index()
        await self.watcher(index)
        self.write("a", b"1")
        self.write("d/e/f", b"2")
        await self.until(lambda: {"a", "d/e/f"} <= set(self.indexed()), "adds")
        self.write("a", b"modified")
        await self.until(lambda: self.history().count((REPLACE, "a")) == 1, "replace")
        os.rename(os.path.join(self.root, "a"), os.path.join(self.root, "b"))
        await self.until(
            lambda: {(REMOVE, "a"), (ADD, "b")} <= set(self.history()), "rename"
        )
        os.rename(os.path.join(self.root, "d"), os.path.join(self.root, "g"))
        await self.until(lambda: "g/e/f" in self.indexed(), "directory rename")
        self.assertIn((REMOVE, "d/e/f"), self.history())
        self.write("g/e/later", b"3")
        await self.until(lambda: "g/e/later" in self.indexed(), "watch follows")
        shutil.rmtree(os.path.join(self.root, "g"))
        await self.until(lambda: set(self.indexed()) == {"b"}, "rm -rf")
        self.write("after", b"4")
        await self.until(lambda: "after" in self.indexed(), "still watching")
        await self.until(self.matches_disk, "index equal to disk")

    @_async_test
    async def test_restart(self) -> None:
        """
        Stop the watcher, change files, start it again: exactly those
        changes are recorded (nothing missed, nothing invented).
        """
        self.write("keep", b"k")
        self.write("change", b"c")
        self.write("remove/x", b"r")
        index = await self.open_index()
        watcher = await self.watcher(index)
        await watcher.wait_idle()
        await watcher.stop()
        before = len(self.history())
        self.write("change", b"changed")
        os.unlink(os.path.join(self.root, "remove/x"))
        self.write("new/y", b"n")
        watcher = await self.watcher(index)
        await self.until(lambda: len(self.history()) >= before + 3, "catch-up")
        await watcher.wait_idle()
        self.assertEqual(
            sorted(self.history()[before:]),
            [(ADD, "new/y"), (REMOVE, "remove/x"), (REPLACE, "change")],
        )
        await self.until(self.matches_disk, "index equal to disk")

    @_async_test
    async def test_store_finish_not_hashed(self) -> None:
        """
        A file finished by the store (its hook) is recorded with the
        store's root: the metrics count it from the store, none hashed.
        """
        index = await self.open_index()
        service = WatcherService(
            Config(
                "t.toml",
                arenas={A: ArenaConfig(A, Path(self.root), Path(self.base))},
            ),
            {A: index},
            succeed(None),
            reactor,
            deferToThread,
            lambda: KernelNotifier(reactor),
            self.metrics,
        )
        service.startService()
        self.addCleanup(service.stopService)
        await service.started
        partial = os.path.join(self.root, ".f.part")
        with open(partial, "wb") as f:
            f.write(b"moved in")
        os.rename(partial, os.path.join(self.root, "f"))
        st = os.lstat(os.path.join(self.root, "f"))
        service.file_finished(A, "f", st.st_size, st.st_mtime_ns, root_of(b"moved in"))
        await self.until(lambda: "f" in self.indexed(), "finished file")
        await service.watchers[A].wait_idle()
        self.assertEqual(
            self.registry.get_sample_value(
                "realize_watcher_files_recorded_total",
                {"arena": "a", "source": "store"},
            ),
            1,
        )
        self.assertIsNone(
            self.registry.get_sample_value(
                "realize_watcher_hashed_bytes_total", {"arena": "a"}
            )
        )
