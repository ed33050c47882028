"""
Tests for marks: their values and inheritance (L{realize.storage.marks}),
setting them from the view and from real files
(L{realize.services.marks.MarkKeeper}), and how the daemon's FUSE backend
shows them (L{realize.services.unreal.UnrealBackend}).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import BadRequest, NotFound
from realize.services.unreal import UnrealBackend
from realize.storage.consensus import _txn_done
from realize.storage.globaldb import ROOT_INODE
from realize.storage.marks import (
    ORIGIN_DEFAULT,
    ORIGIN_INHERITED,
    ORIGIN_SET,
    EffectiveMark,
    _txn_set_mark,
    ancestors,
    effective_in,
    effective_mark,
    mark_at,
    parse_mark,
)
from realize.storage.realfiles import XATTR_MARK
from tests.consensus_world import ARENA, P, World


class ValueTests(SynchronousTestCase):
    """
    Mark values and inheritance.
    """

    def test_parse(self) -> None:
        """
        own, keep and watch are marks (a trailing NUL or newline is
        ignored); anything else is refused.
        """
        for value in (b"own", b"keep", b"watch", b"keep\0", "own\n"):
            self.assertIn(parse_mark(value), ("own", "keep", "watch"))
        for bad in (b"", b"Own", b"mine", b"\xff", "own keep"):
            self.assertRaises(BadRequest, parse_mark, bad)

    def test_ancestors(self) -> None:
        """
        A path and the directories above it, nearest first, root last.
        """
        self.assertEqual(ancestors("a/b/c"), ["a/b/c", "a/b", "a", ""])
        self.assertEqual(ancestors(""), [""])

    def test_inheritance(self) -> None:
        """
        The effective mark is the path's own, else the nearest one above,
        else the arena's default; shown as C{own}, C{own (inherited)},
        C{watch (default)}.
        """
        marks = {"a": "own", "a/b/c": "keep", "": "watch"}
        self.assertEqual(
            effective_in(marks, "a/b/c", "keep"),
            EffectiveMark("keep", ORIGIN_SET, "a/b/c"),
        )
        self.assertEqual(
            effective_in(marks, "a/b/d", "keep"),
            EffectiveMark("own", ORIGIN_INHERITED, "a"),
        )
        self.assertEqual(
            effective_in(marks, "z", "keep"),
            EffectiveMark("watch", ORIGIN_INHERITED, ""),
        )
        self.assertEqual(
            effective_in({}, "z", "keep"), EffectiveMark("keep", ORIGIN_DEFAULT, None)
        )
        self.assertEqual(effective_in(marks, "a", "x").describe(), "own")
        self.assertEqual(effective_in(marks, "a/b", "x").describe(), "own (inherited)")
        self.assertEqual(effective_in({}, "a", "watch").describe(), "watch (default)")

    def test_table(self) -> None:
        """
        The mark table: set, replaced (last set wins), removed; each call
        says whether it changed anything.
        """
        world = World(self)
        self.assertTrue(world.run(_txn_set_mark, "d", "own", "view", 1))
        self.assertFalse(world.run(_txn_set_mark, "d", "own", "real", 2))
        self.assertTrue(world.run(_txn_set_mark, "d", "keep", "real", 3))
        self.assertEqual(mark_at(world.pool.connection, "d"), "keep")
        self.assertEqual(
            effective_mark(world.pool.connection, "d/e/f", "watch"),
            EffectiveMark("keep", ORIGIN_INHERITED, "d"),
        )
        self.assertTrue(world.run(_txn_set_mark, "d", None, "view", 4))
        self.assertFalse(world.run(_txn_set_mark, "d", None, "view", 5))
        self.assertRaises(
            BadRequest, _txn_set_mark, world.pool.connection.cursor(), "d", "x", "", 0
        )


def settle(case: SynchronousTestCase, coro: Any) -> Any:
    return case.successResultOf(Deferred.fromCoroutine(coro))


class MarkKeeperTests(SynchronousTestCase):
    """
    One mark per path, from both sides.
    """

    def setUp(self) -> None:
        self.world = World(self)
        self.keeper = self.world.service.marks
        os.makedirs(self.world.real("dir"))

    def db_mark(self, path: str) -> str | None:
        return mark_at(self.world.pool.connection, path)

    def test_view_writes_real(self) -> None:
        """
        A mark set on the view is also written on the real directory of
        that path; removed on the view, it goes from both.
        """
        settle(self, self.keeper.set_mark(ARENA, "dir", "own"))
        self.assertEqual(self.db_mark("dir"), "own")
        self.assertEqual(os.getxattr(self.world.real("dir"), XATTR_MARK), b"own")
        settle(self, self.keeper.set_mark(ARENA, "dir", None))
        self.assertIsNone(self.db_mark("dir"))
        self.assertRaises(OSError, os.getxattr, self.world.real("dir"), XATTR_MARK)

    def test_view_without_real(self) -> None:
        """
        A mark on a path with no real entry is kept in the db only.
        """
        settle(self, self.keeper.set_mark(ARENA, "remote/only", "keep"))
        self.assertEqual(self.db_mark("remote/only"), "keep")
        self.assertFalse(os.path.exists(self.world.real("remote")))

    def test_unknown_arena(self) -> None:
        """
        An arena that is not configured: C{NotFound}.
        """
        self.failureResultOf(
            Deferred.fromCoroutine(self.keeper.set_mark("nope", "x", "own")),  # type: ignore[arg-type]
            NotFound,
        )

    def test_real_attribute(self) -> None:
        """
        An attribute set, changed or removed on a real entry sets, changes
        or removes the mark (the watcher's C{IN_ATTRIB}); the datadir
        itself is the arena root.
        """
        full = self.world.real("dir")
        os.setxattr(full, XATTR_MARK, b"keep")
        self.keeper.attributes_changed(ARENA, "dir")
        self.assertEqual(self.db_mark("dir"), "keep")
        os.setxattr(full, XATTR_MARK, b"own")
        self.keeper.attributes_changed(ARENA, "dir")
        self.assertEqual(self.db_mark("dir"), "own")
        os.removexattr(full, XATTR_MARK)
        self.keeper.attributes_changed(ARENA, "dir")
        self.assertIsNone(self.db_mark("dir"))
        os.setxattr(self.world.datadir, XATTR_MARK, b"watch")
        self.keeper.attributes_changed(ARENA, "")
        self.assertEqual(self.db_mark(""), "watch")

    def test_real_bad_or_gone(self) -> None:
        """
        A real attribute that is not a mark is ignored (and logged); an
        entry gone by the time it is read changes nothing.
        """
        settle(self, self.keeper.set_mark(ARENA, "gone", "own"))
        self.keeper.attributes_changed(ARENA, "gone")
        self.assertEqual(self.db_mark("gone"), "own")
        settle(self, self.keeper.set_mark(ARENA, "dir", "keep"))
        os.setxattr(self.world.real("dir"), XATTR_MARK, b"bogus")
        self.keeper.attributes_changed(ARENA, "dir")
        self.assertEqual(self.db_mark("dir"), "keep")
        self.flushLoggedErrors()

    def test_catch_up(self) -> None:
        """
        At start the marks found on real entries are set; marks of the db
        that the disk has not stay.
        """
        settle(self, self.keeper.set_mark(ARENA, "remote", "keep"))
        os.setxattr(self.world.real("dir"), XATTR_MARK, b"own")
        settle(self, self.keeper.catch_up(ARENA))
        self.assertEqual(self.db_mark("dir"), "own")
        self.assertEqual(self.db_mark("remote"), "keep")

    def test_queues(self) -> None:
        """
        A mark that changes queues the files beneath (a job looks at them);
        the same mark set again does not.
        """
        self.world.peer_adds(P, "dir/f", b"x")
        settle(self, self.keeper.set_mark(ARENA, "dir", "watch"))
        self.assertEqual([r[0] for r in self.world.queue()], ["dir/f"])
        self.world.run(_txn_done, "dir/f", 1)
        settle(self, self.keeper.set_mark(ARENA, "dir", "watch"))
        self.assertEqual(self.world.queue(), [])
        settle(self, self.keeper.set_mark(ARENA, "dir", "own"))
        self.assertEqual([r[0] for r in self.world.queue()], ["dir/f"])


class SyncBridge:
    """
    A bridge that runs the call at once (the test is the reactor).
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.case = case

    def call(self, f: Callable[[], Any]) -> Any:
        result = f()
        if isinstance(result, Deferred):
            return self.case.successResultOf(result)
        return result


class BackendMarkTests(SynchronousTestCase):
    """
    Marks and job statuses on the daemon's FUSE backend.
    """

    def setUp(self) -> None:
        self.world = World(self)
        self.world.peer_adds(P, "d/f", b"remote")
        self.backend = UnrealBackend(
            self.world.view,
            SyncBridge(self),  # type: ignore[arg-type]
            {},
            marks=self.world.service.marks,
            default_mark=lambda arena: "keep",
        )
        arena = self.world.view.lookup(ROOT_INODE, ARENA)
        assert arena is not None
        self.root = arena.inode
        d = self.world.view.lookup(self.root, "d")
        assert d is not None
        self.d = d.inode
        f = self.world.view.lookup(self.d, "f")
        assert f is not None
        self.f = f.inode

    def test_set_and_read(self) -> None:
        """
        A mark set on a directory reads back on it, and as inherited below;
        without marks, the arena's default shows.
        """
        self.assertEqual(self.backend.effective_mark(self.f), "keep (default)")
        self.backend.set_mark(self.d, "own")
        self.assertEqual(self.backend.mark(self.d), "own")
        self.assertIsNone(self.backend.mark(self.f))
        self.assertEqual(self.backend.effective_mark(self.f), "own (inherited)")
        self.backend.set_mark(self.root, "watch")
        self.assertEqual(self.backend.effective_mark(self.d), "own")
        self.backend.set_mark(self.d, None)
        self.assertEqual(self.backend.effective_mark(self.f), "watch (inherited)")

    def test_outside_arenas(self) -> None:
        """
        The mount's root has no mark and takes none (C{EINVAL}); an inode
        that does not exist: C{ENOENT}.
        """
        self.assertIsNone(self.backend.mark(ROOT_INODE))
        self.assertIsNone(self.backend.effective_mark(ROOT_INODE))
        self.assertRaises(BadRequest, self.backend.set_mark, ROOT_INODE, "own")
        self.assertRaises(NotFound, self.backend.set_mark, 10**9, "own")
        self.assertRaises(NotFound, self.backend.mark, 10**9)

    def test_status(self) -> None:
        """
        A file's status says what a job does or did about it.
        """
        self.assertEqual(self.backend.status(self.f), "remote")
        self.world.downloader.fail = BadRequest("no peer")
        self.world.start()
        self.backend.set_mark(self.d, "own")
        status = self.backend.status(self.f)
        assert status is not None
        self.assertTrue(
            status.startswith("remote; realize failed: no peer; retry in "), status
        )
        self.assertIsNone(self.backend.status(self.d))
