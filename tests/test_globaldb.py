"""
Tests for L{realize.storage.globaldb}: inode ranges (#inoderange) and the
global tree of arena roots.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from realize.errors import BadRequest, InvalidPath, IOFailure
from realize.model import ArenaName
from realize.storage.globaldb import (
    ARENA_RANGE_SIZE,
    GLOBAL_RANGE_SIZE,
    GLOBAL_TREE,
    ROOT_INODE,
    GlobalDb,
    InodeRange,
    _txn_alloc_range,
    _txn_set_arenas,
    create_global_tables,
)

A = ArenaName("a")
B = ArenaName("b")


def bare_db(case: SynchronousTestCase) -> sqlite3.Connection:
    """
    A bare sqlite3 connection on a temporary file with the global tables.
    """
    path = os.path.join(case.mktemp() + ".db")
    connection = sqlite3.connect(path)
    create_global_tables(connection.cursor())
    connection.commit()
    case.addCleanup(connection.close)
    return connection


def tree(connection: sqlite3.Connection) -> dict[str, int]:
    """
    The global tree as C{{path: inode}}, the root as C{""}.
    """
    rows = connection.execute("SELECT inode, parent, name FROM tree").fetchall()
    by_inode = {inode: (parent, name) for inode, parent, name in rows}

    def path(inode: int) -> str:
        parent, name = by_inode[inode]
        if inode == ROOT_INODE:
            return ""
        above = path(parent)
        return f"{above}/{name}" if above else name

    return {path(inode): inode for inode in by_inode}


class AllocRangeTests(SynchronousTestCase):
    """
    Tests for L{_txn_alloc_range}, the three cases of #inoderange.
    """

    def test_first_ranges(self) -> None:
        """
        The global tree's first range starts at the mount root (inode 1)
        and is L{GLOBAL_RANGE_SIZE} long; arenas get L{ARENA_RANGE_SIZE}
        inodes each, one after the other.
        """
        db = bare_db(self)
        cursor = db.cursor()
        self.assertEqual(
            _txn_alloc_range(cursor, GLOBAL_TREE, 0),
            InodeRange(ROOT_INODE, ROOT_INODE + GLOBAL_RANGE_SIZE),
        )
        a = _txn_alloc_range(cursor, A, 0)
        b = _txn_alloc_range(cursor, B, 0)
        self.assertEqual(a, InodeRange(101, 101 + ARENA_RANGE_SIZE))
        self.assertEqual(b, InodeRange(a.end, a.end + ARENA_RANGE_SIZE))

    def test_forgotten_range_returned_again(self) -> None:
        """
        An arena that asks again with the end of its last known range (it
        forgot the one given since, e.g. its transaction was rolled back
        after the global one committed) gets that same range, not a new
        one.
        """
        db = bare_db(self)
        cursor = db.cursor()
        first = _txn_alloc_range(cursor, A, 0)
        second = _txn_alloc_range(cursor, A, first.end)
        _txn_alloc_range(cursor, B, 0)
        self.assertEqual(_txn_alloc_range(cursor, A, first.end), second)
        self.assertEqual(_txn_alloc_range(cursor, A, first.end), second)

    def test_ranges_only_grow(self) -> None:
        """
        Each new range starts where the highest range given ended, whoever
        it was given to: ranges never overlap and never go back.
        """
        db = bare_db(self)
        cursor = db.cursor()
        given = [_txn_alloc_range(cursor, GLOBAL_TREE, 0)]
        last = {A: 0, B: 0, GLOBAL_TREE: given[0].end}
        for owner in [A, B, A, GLOBAL_TREE, A, B, B]:
            new = _txn_alloc_range(cursor, owner, last[owner])
            self.assertEqual(new.start, given[-1].end)
            last[owner] = new.end
            given.append(new)
        ends = [r.end for r in given]
        self.assertEqual(ends, sorted(set(ends)))

    def test_arena_db_deleted_gets_old_range(self) -> None:
        """
        An arena db deleted and recreated asks with 0 and gets its first
        range back, then its second one, before any new range.
        """
        path = self.mktemp() + ".db"
        db = GlobalDb.open(path)
        first = db.alloc_range(A, 0)
        second = db.alloc_range(A, first.end)
        other = db.alloc_range(B, 0)
        db.close()
        # Every instance is dropped and made again; a's db starts from
        # nothing.
        db = GlobalDb.open(path)
        self.addCleanup(db.close)
        self.assertEqual(db.alloc_range(A, 0), first)
        self.assertEqual(db.alloc_range(A, first.end), second)
        third = db.alloc_range(A, second.end)
        self.assertEqual(third.start, other.end)
        self.assertEqual(db.alloc_range(B, 0), other)

    def test_negative_end(self) -> None:
        """
        A negative exhausted end is refused.
        """
        db = bare_db(self)
        self.assertRaises(BadRequest, _txn_alloc_range, db.cursor(), A, -1)

    def test_bad_arena_name(self) -> None:
        """
        L{GlobalDb.alloc_range} refuses a malformed arena name (and so
        never the global tree's owner, C{""}).
        """
        db = GlobalDb.open(self.mktemp() + ".db")
        self.addCleanup(db.close)
        self.assertRaises(InvalidPath, db.alloc_range, ArenaName(""), 0)
        self.assertRaises(InvalidPath, db.alloc_range, ArenaName("../x"), 0)


class SetArenasTests(SynchronousTestCase):
    """
    Tests for L{_txn_set_arenas}: arena roots and compound directories.
    """

    def test_compound_names(self) -> None:
        """
        C{a/b} and C{a/c/d} need the directories C{a} and C{a/c}; each
        arena root has an inode from the global tree's range, distinct and
        not 1.
        """
        db = bare_db(self)
        roots = _txn_set_arenas(
            db.cursor(),
            [ArenaName("a/b"), ArenaName("a/c/d"), ArenaName("e")],
            now_ns=5,
        )
        shown = tree(db)
        self.assertEqual(sorted(shown), ["", "a", "a/b", "a/c", "a/c/d", "e"])
        self.assertEqual(shown[""], ROOT_INODE)
        for name, root in roots.items():
            self.assertEqual(shown[name], root)
        self.assertEqual(len(set(shown.values())), 6)
        self.assertTrue(all(i < ROOT_INODE + GLOBAL_RANGE_SIZE for i in shown.values()))

    def test_stable(self) -> None:
        """
        Setting the same arenas again changes nothing.
        """
        db = bare_db(self)
        names = [ArenaName("a/b"), ArenaName("c")]
        first = _txn_set_arenas(db.cursor(), names, now_ns=5)
        before = tree(db)
        self.assertEqual(_txn_set_arenas(db.cursor(), names, now_ns=9), first)
        self.assertEqual(tree(db), before)

    def test_removed_arena_keeps_root(self) -> None:
        """
        An arena that leaves the config leaves the tree with the compound
        directories only it needed; when it comes back it has its old root
        inode, while the directory made again gets a new inode (inodes are
        never reused).
        """
        db = bare_db(self)
        cursor = db.cursor()
        roots = _txn_set_arenas(cursor, [ArenaName("x/y"), B], now_ns=5)
        old_dir = tree(db)["x"]
        _txn_set_arenas(cursor, [B], now_ns=6)
        self.assertEqual(sorted(tree(db)), ["", "b"])
        again = _txn_set_arenas(cursor, [ArenaName("x/y"), B], now_ns=7)
        self.assertEqual(again, roots)
        self.assertNotEqual(tree(db)["x"], old_dir)

    def test_prefix_refused(self) -> None:
        """
        An arena name plus C{/} that prefixes another is refused.
        """
        db = bare_db(self)
        self.assertRaises(
            BadRequest,
            _txn_set_arenas,
            db.cursor(),
            [ArenaName("a"), ArenaName("a/b")],
            1,
        )

    def test_mtime(self) -> None:
        """
        The mount root gets the time of the first call as mtime, and a
        directory's mtime moves when an entry is added or removed.
        """
        db = bare_db(self)
        cursor = db.cursor()
        _txn_set_arenas(cursor, [A], now_ns=5)

        def mtime(inode: int) -> int:
            row = db.execute(
                "SELECT mtime_ns FROM tree WHERE inode = ?", (inode,)
            ).fetchone()
            return int(row[0])

        self.assertEqual(mtime(ROOT_INODE), 5)
        _txn_set_arenas(cursor, [A, B], now_ns=8)
        self.assertEqual(mtime(ROOT_INODE), 8)
        _txn_set_arenas(cursor, [B], now_ns=9)
        self.assertEqual(mtime(ROOT_INODE), 9)

    def test_many_arenas_span_ranges(self) -> None:
        """
        More tree entries than one global range holds take a second global
        range after the arenas' ranges; no inode is given twice.
        """
        path = self.mktemp() + ".db"
        db = GlobalDb.open(path)
        self.addCleanup(db.close)
        arena_range = db.alloc_range(A, 0)
        names = [ArenaName(f"n{i}") for i in range(GLOBAL_RANGE_SIZE + 5)]
        roots = db.set_arenas(names, now_ns=1)
        values = sorted(roots.values())
        self.assertEqual(len(set(values)), len(values))
        self.assertTrue(
            all(not arena_range.start <= v < arena_range.end for v in values)
        )
        self.assertGreaterEqual(values[-1], arena_range.end)


class OpenTests(SynchronousTestCase):
    """
    Tests for L{GlobalDb.open}.
    """

    def test_newer_schema(self) -> None:
        """
        A db written by a newer realize is refused with a message naming
        the file.
        """
        path = self.mktemp() + ".db"
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA user_version = 99")
        connection.close()
        error = self.assertRaises(IOFailure, GlobalDb.open, path)
        self.assertIn(path, str(error))

    def test_rollback(self) -> None:
        """
        A failing transaction leaves nothing behind.
        """
        db = GlobalDb.open(self.mktemp() + ".db")
        self.addCleanup(db.close)
        self.assertRaises(
            BadRequest, db.set_arenas, [ArenaName("a"), ArenaName("a/b")], 1
        )
        rows = db.connection.execute("SELECT count(*) FROM tree").fetchone()
        self.assertEqual(rows[0], 1)
