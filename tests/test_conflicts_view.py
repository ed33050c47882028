"""
Tests for the conflicts in the FUSE view (DESIGN.md section 11): the
C{user.realize.conflicts} attribute and the C{.realize/conflicts/} tree of
L{realize.services.unreal.UnrealBackend}, over real sqlite files, with a
bridge that runs calls at once and fake peers' stores.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable
from typing import Any

from attrs import define
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import BadRequest, IOFailure, NotFound
from realize.fuse.ops import XATTR_CONFLICTS, RealizeOperations
from realize.hashing import LEAF_SIZE, merkle_root
from realize.model import ArenaName, Notification, PeerId
from realize.services import unreal as unreal_service
from realize.services.downloader import Downloader
from realize.services.unreal import VIRTUAL_BASE, ArenaCache, UnrealBackend
from realize.storage.consensus import create_consensus_tables
from realize.storage.globaldb import ROOT_INODE
from realize.storage.unreal import RESERVED, ArenaTree, _txn_apply_batch
from realize.storage.unrealview import SqliteUnrealView

from .test_downloader import FakeStore, FakeStream, content, leaves_of
from .test_unreal_tables import h
from .test_unrealview import SqliteViewMixin

ARENA = ArenaName("docs")
P = PeerId("p")
Q = PeerId("q")
R = PeerId("r")


def replace(
    path: str, size: int, mtime: int, digest: bytes, old: bytes, pos: int = 2
) -> Notification:
    return Notification(
        "replace",
        ARENA,
        pos,
        path=path,
        size=size,
        mtime_ns=mtime,
        hash=digest,
        old_hash=old,
    )


class SyncBridge:
    """
    A bridge that runs the call at once (the test is the reactor) and
    raises what its Deferred failed with.
    """

    def call(self, f: Callable[[], Any]) -> Any:
        result = f()
        if not isinstance(result, Deferred):
            return result
        outcome: list[Any] = []
        result.addBoth(outcome.append)
        assert outcome, "the call did not finish"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]


class PathStore(FakeStore):
    """
    A fake peer's store of the file C{d/f}.
    """

    def read(self, arena: str, path: str, start: int, end: int) -> FakeStream:
        assert arena == ARENA and path == "d/f", (arena, path)
        self.reads.append((start, end))
        stream = FakeStream(self, start, end)
        self.streams.append(stream)
        return stream


@define
class FakeFi:
    flags: int = 0
    fh: int = 0
    keep_cache: int = 0


class ConflictViewTests(SqliteViewMixin, SynchronousTestCase):
    """
    A file that two peers replaced shows its other version beside it.
    """

    size = 2 * LEAF_SIZE + 77

    def setUp(self) -> None:
        view, global_db, writers = self.build_sqlite(
            {"docs": [("d/f", 3, 10, h(1)), ("g", 3, 10, h(1))]}
        )
        self.view: SqliteUnrealView = view
        self.writer: sqlite3.Connection = writers["docs"]
        create_consensus_tables(self.writer.cursor())
        self.writer.commit()
        root = view.root_inode_of(ARENA)
        assert root is not None
        self.root = root
        self.tree = ArenaTree(
            ARENA, root, lambda end: global_db.alloc_range(ARENA, end), lambda: 7
        )
        # The fork's content, as peer Q has it.
        self.data = content(self.size, seed=5)
        self.fork_hash = merkle_root(leaves_of(self.data))
        self.stores: dict[PeerId, Any] = {}
        self.clock = Clock()
        main = Downloader(
            ARENA,
            None,  # type: ignore[arg-type]
            lambda inode: succeed(None),
            self.stores.get,
            self.clock,
        )
        self.backend = UnrealBackend(
            view,
            SyncBridge(),  # type: ignore[arg-type]
            {ARENA: main},
        )

    def apply(self, peer: PeerId, *notifications: Notification) -> Any:
        result = _txn_apply_batch(
            self.writer.cursor(), self.tree, peer, list(notifications)
        )
        self.writer.commit()
        return result

    def fork(self) -> None:
        self.apply(P, replace("d/f", 4, 20, h(2), h(1)))
        self.apply(Q, replace("d/f", self.size, 21, self.fork_hash, h(1)))

    def path(self, *names: str) -> Any:
        inode = ROOT_INODE
        entry = None
        for name in names:
            entry = self.backend.lookup(inode, name)
            if entry is None:
                return None
            inode = entry.inode
        return entry

    def names(self, *path: str) -> list[str]:
        entry = self.path(*path)
        assert entry is not None
        return [name for name, _ in self.backend.readdir(entry.inode)]

    def test_no_conflict(self) -> None:
        """
        Without conflicts: no attribute, C{.realize} not listed (but there
        by name, with an empty C{conflicts}).
        """
        f = self.path("docs", "d", "f")
        self.assertIsNone(self.backend.conflicts(f.inode))
        self.assertNotIn(".realize", self.names("docs"))
        self.assertEqual(self.names("docs", ".realize"), ["conflicts"])
        self.assertEqual(self.names("docs", ".realize", "conflicts"), [])
        # Only at an arena's root.
        self.assertIsNone(self.path("docs", "d", ".realize"))
        self.assertIsNone(self.path(".realize"))

    def test_attribute(self) -> None:
        """
        C{user.realize.conflicts} lists the other versions, one
        C{<peer>-<12 hex digits>} per line, sorted.
        """
        self.fork()
        f = self.path("docs", "d", "f")
        short = self.fork_hash.hex()[:12]
        self.assertEqual(self.backend.conflicts(f.inode), f"q-{short}")
        self.apply(R, replace("d/f", 5, 22, h(9), h(1)))
        self.assertEqual(
            self.backend.conflicts(f.inode), f"q-{short}\nr-{h(9).hex()[:12]}"
        )
        d = self.path("docs", "d")
        self.assertIsNone(self.backend.conflicts(d.inode))
        self.assertIsNone(self.backend.conflicts(self.path("docs", "g").inode))

    def test_tree(self) -> None:
        """
        C{.realize/conflicts/d/f/q-<hash>} is a file with the fork's size,
        mtime and hash; C{.realize} is listed at the arena's root; the
        directories count their subdirectories.
        """
        self.fork()
        self.assertIn(".realize", self.names("docs"))
        self.assertEqual(self.names("docs", ".realize", "conflicts"), ["d"])
        self.assertEqual(self.names("docs", ".realize", "conflicts", "d"), ["f"])
        name = f"q-{self.fork_hash.hex()[:12]}"
        self.assertEqual(self.names("docs", ".realize", "conflicts", "d", "f"), [name])
        entry = self.path("docs", ".realize", "conflicts", "d", "f", name)
        self.assertEqual(
            (entry.kind, entry.size, entry.mtime_ns, entry.hash, entry.nlink),
            ("file", self.size, 21, self.fork_hash, 1),
        )
        self.assertGreaterEqual(entry.inode, VIRTUAL_BASE)
        self.assertEqual(self.backend.getattr(entry.inode), entry)
        self.assertEqual(self.path("docs", ".realize", "conflicts", "d").nlink, 3)
        self.assertEqual(self.path("docs", ".realize", "conflicts", "d", "f").nlink, 2)
        # The same inode on each lookup.
        again = self.path("docs", ".realize", "conflicts", "d", "f", name)
        self.assertEqual(again.inode, entry.inode)
        self.assertIsNone(self.path("docs", ".realize", "conflicts", "g"))
        self.assertIsNone(self.path("docs", ".realize", "nothing"))
        # Marks: none there, and none can be set.
        self.assertIsNone(self.backend.mark(entry.inode))
        self.assertIsNone(self.backend.effective_mark(entry.inode))
        self.assertRaises(BadRequest, self.backend.set_mark, entry.inode, "own")
        self.assertEqual(
            self.backend.version(entry.inode), f"blake3m:{self.fork_hash.hex()}"
        )

    def test_settled(self) -> None:
        """
        A Replace of the default settles the conflict: the attribute, the
        tree and the file's entry go; the old inode answers nothing.
        """
        self.fork()
        name = f"q-{self.fork_hash.hex()[:12]}"
        entry = self.path("docs", ".realize", "conflicts", "d", "f", name)
        directory = self.path("docs", ".realize", "conflicts", "d")
        self.apply(P, replace("d/f", 6, 30, h(3), h(2), pos=3))
        f = self.path("docs", "d", "f")
        self.assertIsNone(self.backend.conflicts(f.inode))
        self.assertIsNone(self.backend.getattr(entry.inode))
        self.assertIsNone(self.path("docs", ".realize", "conflicts", "d"))
        self.assertRaises(NotFound, self.backend.readdir, directory.inode)
        self.assertRaises(NotFound, self.backend.open, entry.inode)
        self.assertEqual(self.names("docs", ".realize", "conflicts"), [])
        self.assertNotIn(".realize", self.names("docs"))

    def test_read(self) -> None:
        """
        A conflict's file reads the fork's bytes from the peer that has
        it, verified against its hash.
        """
        self.fork()
        self.stores[Q] = PathStore("q", self.data)
        name = f"q-{self.fork_hash.hex()[:12]}"
        entry = self.path("docs", ".realize", "conflicts", "d", "f", name)
        opened = self.backend.open(entry.inode)
        self.assertFalse(opened.keep_cache)
        self.assertEqual(
            self.backend.read(entry.inode, opened.handle, 0, self.size + 10),
            self.data,
        )
        self.assertEqual(
            self.backend.read(entry.inode, opened.handle, LEAF_SIZE, 100),
            self.data[LEAF_SIZE : LEAF_SIZE + 100],
        )
        self.backend.release(entry.inode, opened.handle)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_read_verified(self) -> None:
        """
        Bytes that do not match the fork's hash are never returned.
        """
        self.fork()
        store = PathStore("q", self.data)
        store.corrupt = True
        self.stores[Q] = store
        name = f"q-{self.fork_hash.hex()[:12]}"
        entry = self.path("docs", ".realize", "conflicts", "d", "f", name)
        opened = self.backend.open(entry.inode)
        self.assertRaises(
            IOFailure, self.backend.read, entry.inode, opened.handle, 0, 100
        )
        self.flushLoggedErrors()

    def test_read_settled(self) -> None:
        """
        A conflict settled while its file is open: reads fail (C{EIO}).
        """
        self.fork()
        self.stores[Q] = PathStore("q", self.data)
        name = f"q-{self.fork_hash.hex()[:12]}"
        entry = self.path("docs", ".realize", "conflicts", "d", "f", name)
        opened = self.backend.open(entry.inode)
        self.apply(P, replace("d/f", 6, 30, h(3), h(2), pos=3))
        self.assertRaises(
            IOFailure, self.backend.read, entry.inode, opened.handle, 0, 100
        )

    def test_operations(self) -> None:
        """
        Through the FUSE operations: the attribute by name (C{ENODATA}
        without conflicts), never listed (a copy-up would carry it into
        the datadir); the conflict's file opens read-only and reads.
        """
        ops = RealizeOperations(self.backend, 0, 0)
        with self.assertRaises(OSError) as caught:
            ops.getxattr("/docs/d/f", XATTR_CONFLICTS)
        self.assertEqual(caught.exception.errno, errno.ENODATA)
        self.fork()
        self.stores[Q] = PathStore("q", self.data)
        name = f"q-{self.fork_hash.hex()[:12]}"
        self.assertEqual(
            ops.getxattr("/docs/d/f", XATTR_CONFLICTS), name.encode("utf-8")
        )
        self.assertEqual(ops.listxattr("/docs/d/f"), [])
        fi = FakeFi()
        path = f"/docs/.realize/conflicts/d/f/{name}"
        ops.open(path, fi)
        self.assertEqual(ops.read(None, 100, 0, fi), self.data[:100])
        ops.release(None, fi)
        with self.assertRaises(OSError) as caught:
            ops.open(path, FakeFi(flags=1))
        self.assertEqual(caught.exception.errno, errno.EROFS)


class ArenaCacheTests(SynchronousTestCase):
    """
    L{ArenaCache.apply} counts the open conflicts and warns of reserved
    paths.
    """

    def test_metrics_and_warning(self) -> None:
        from .test_unreal_tables import add, arena_db, make_tree

        db = arena_db(self)
        counted: list[tuple[str, int]] = []

        @define
        class Metrics:
            def conflicts_open(self, arena: str, count: int) -> None:
                counted.append((arena, count))

        def interaction(f: Any, *args: Any) -> Any:
            result = f(db.cursor(), *args)
            db.commit()
            return succeed(result)

        events: list[dict[str, Any]] = []
        self.patch(
            unreal_service,
            "log",
            Logger(namespace="realize.unreal", observer=events.append),
        )
        cache = ArenaCache(make_tree(), interaction, metrics=Metrics())
        self.assertEqual(self.successResultOf(cache.count_conflicts()), 0)
        self.successResultOf(
            cache.apply(P, [add("f", 1, 10, h(1)), add(".realize/x", 1, 10, h(1), 2)])
        )
        result = self.successResultOf(
            cache.apply(
                Q,
                [
                    Notification(
                        "replace",
                        ArenaName("docs"),
                        3,
                        path="f",
                        size=1,
                        mtime_ns=20,
                        hash=h(2),
                        old_hash=h(1),
                    )
                ],
            )
        )
        self.successResultOf(
            cache.apply(
                PeerId("s"),
                [
                    Notification(
                        "replace",
                        ArenaName("docs"),
                        3,
                        path="f",
                        size=1,
                        mtime_ns=21,
                        hash=h(3),
                        old_hash=h(1),
                    )
                ],
            )
        )
        self.assertEqual(result.conflicts, 0)
        self.assertEqual(counted, [("docs", 0), ("docs", 0), ("docs", 0), ("docs", 1)])
        warned = [e for e in events if ".realize" in str(e.get("path"))]
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["log_level"].name, "warn")
        self.assertNotIn(RESERVED, result.outcomes)
