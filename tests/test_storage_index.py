"""
Tests for L{realize.storage.schema}, L{realize.storage.pool} and
L{realize.storage.index}: every transaction on a bare sqlite3 connection
on a temporary file, the upgrade from an empty db and the refusal of a
newer one, and the real pool with its pragmas.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from realize.model import ADD, CATCHUP, DROP, REMOVE, REPLACE, ArenaName
from realize.storage import index as ix
from realize.storage.globaldb import InodeRange
from realize.storage.index import ArenaIndex, IndexEntry, Positions, Version
from realize.storage.pool import BUSY_TIMEOUT_MS, configure, open_pool, open_reader
from realize.storage.schema import UPGRADES, SchemaTooNew, schema_version, upgrade
from realize.storage.unreal import ArenaTree, _txn_apply_batch
from realize.storage.unrealpaths import set_unreal_root
from tests.sqlite_helpers import SyncPool

A = ArenaName("a")
H1 = b"1" * 32
H2 = b"2" * 32
H3 = b"3" * 32


class _DbCase(SynchronousTestCase):
    """
    A fresh arena db on a temporary file, upgraded, with a cursor.
    """

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp() + ".d", "arena.db")
        os.makedirs(os.path.dirname(self.path))
        self.db = sqlite3.connect(self.path)
        configure(self.db)
        upgrade(self.db, self.path)
        self.addCleanup(self.db.close)
        self.cursor = self.db.cursor()

    def commit(self) -> None:
        self.db.commit()

    def history(self) -> list[tuple[Any, ...]]:
        return self.db.execute(
            "SELECT position, kind, path, old_hash, mtime_ns FROM history "
            "ORDER BY position"
        ).fetchall()

    def index(self) -> dict[str, tuple[Any, ...]]:
        rows = self.db.execute(
            "SELECT path, size, mtime_ns, hash, position FROM file_index"
        )
        return {r[0]: r[1:] for r in rows}


class SchemaTests(SynchronousTestCase):
    """
    L{upgrade}: from empty, idempotent, newer dbs refused.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        return db

    def test_from_empty(self) -> None:
        """
        An empty db gets every upgrade: the version is C{len(UPGRADES)},
        the tables exist and the settings hold a fresh 32-hex-digit uuid
        and no trimmed position.
        """
        db = self.connect()
        self.assertEqual(schema_version(db), 0)
        self.assertEqual(upgrade(db, self.path), len(UPGRADES))
        self.assertEqual(schema_version(db), len(UPGRADES))
        tables = {
            r[0]
            for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        self.assertTrue(
            {"settings", "file_index", "history", "acknowledgement"} <= tables
        )
        settings = dict(db.execute("SELECT key, value FROM settings").fetchall())
        self.assertEqual(len(settings["uuid"]), 32)
        int(settings["uuid"], 16)
        self.assertEqual(settings["trimmed_through"], "0")

    def test_again(self) -> None:
        """
        Upgrading an up-to-date db changes nothing: the uuid stays.
        """
        db = self.connect()
        upgrade(db, self.path)
        uuid = db.execute("SELECT value FROM settings WHERE key='uuid'").fetchone()
        self.assertEqual(upgrade(db, self.path), len(UPGRADES))
        self.assertEqual(
            db.execute("SELECT value FROM settings WHERE key='uuid'").fetchone(), uuid
        )

    def test_new_db_new_uuid(self) -> None:
        """
        Two new dbs get two different uuids.
        """
        uuids = []
        for name in ("one", "two"):
            db = sqlite3.connect(os.path.join(self.mktemp()) + name)
            self.addCleanup(db.close)
            upgrade(db, name)
            uuids.append(db.execute("SELECT value FROM settings").fetchall())
        self.assertNotEqual(uuids[0], uuids[1])

    def test_newer_refused(self) -> None:
        """
        A db whose version is above what the code knows is refused with
        L{SchemaTooNew} naming the file and both versions, and is left as
        it was.
        """
        db = self.connect()
        db.execute(f"PRAGMA user_version = {len(UPGRADES) + 5}")
        error = self.assertRaises(SchemaTooNew, upgrade, db, "/w/arena.db")
        self.assertIn("/w/arena.db", str(error))
        self.assertIn(str(len(UPGRADES) + 5), str(error))
        self.assertIn(f"({len(UPGRADES)})", str(error))
        self.assertEqual(schema_version(db), len(UPGRADES) + 5)
        self.assertEqual(
            db.execute("SELECT count(*) FROM sqlite_master").fetchone(), (0,)
        )

    def test_in_order_each_committed(self) -> None:
        """
        Upgrades run in order from the db's version; one that fails is
        rolled back with its version number, the earlier ones stay.
        """
        ran = []

        def first(cursor: sqlite3.Cursor) -> None:
            ran.append(1)
            cursor.execute("CREATE TABLE one (x)")

        def second(cursor: sqlite3.Cursor) -> None:
            ran.append(2)
            cursor.execute("CREATE TABLE two (x)")
            raise sqlite3.OperationalError("boom")

        db = self.connect()
        self.assertRaises(
            sqlite3.OperationalError, upgrade, db, self.path, [first, second]
        )
        self.assertEqual(ran, [1, 2])
        self.assertEqual(schema_version(db), 1)
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        self.assertEqual(names, {"one"})
        # Run again: only the missing one runs.
        ran.clear()
        self.assertEqual(upgrade(db, self.path, [first, lambda c: None]), 2)
        self.assertEqual(ran, [])


class RecordTests(_DbCase):
    """
    The recording transactions.
    """

    def test_unhashed_add(self) -> None:
        """
        A new file seen unhashed is an Add with no version, and enters the
        index with hash C{NULL} at that position.
        """
        [note] = ix._txn_record_unhashed(self.cursor, A, [("f", 3, 10)], 99)
        self.assertEqual(
            (note.kind, note.position, note.path, note.size, note.mtime_ns, note.hash),
            (ADD, 1, "f", 3, 10, None),
        )
        self.assertEqual(self.index(), {"f": (3, 10, None, 1)})
        self.assertEqual(
            self.db.execute("SELECT time_ns FROM history").fetchall(), [(99,)]
        )

    def test_many_versions(self) -> None:
        """
        Files recorded together (more than L{ix.INSERT_CHUNK}) all enter
        the history and the index, in a few multi-row statements rather
        than a statement per row.
        """
        statements: list[str] = []
        cursor = self.cursor

        class Counting:
            def execute(self, sql: str, *args: Any) -> Any:
                statements.append(sql)
                return cursor.execute(sql, *args)

        count = 2 * ix.INSERT_CHUNK + 3
        versions = [Version(f"d/f{i:04}", i, i, H1) for i in range(count)]
        notes = ix._txn_record_versions(Counting(), A, versions, 7)  # type: ignore[arg-type]
        self.assertEqual([n.position for n in notes], list(range(1, count + 1)))
        self.assertEqual(len(self.history()), count)
        self.assertEqual(self.index()["d/f0258"], (258, 258, H1, 259))
        inserts = [sql for sql in statements if sql.startswith("INSERT")]
        self.assertEqual(len(inserts), 6)

    def test_unhashed_unchanged(self) -> None:
        """
        A file seen unhashed with the index's size and mtime records
        nothing, hashed or not.
        """
        ix._txn_record_unhashed(self.cursor, A, [("f", 3, 10)], 0)
        ix._txn_record_versions(self.cursor, A, [Version("g", 1, 1, H1)], 0)
        self.assertEqual(
            ix._txn_record_unhashed(self.cursor, A, [("f", 3, 10), ("g", 1, 1)], 0),
            [],
        )
        self.assertEqual(len(self.history()), 2)

    def test_unhashed_changed(self) -> None:
        """
        A hashed file seen again with another size or mtime is a Replace to
        no version, whose old hash is the index's.
        """
        ix._txn_record_versions(self.cursor, A, [Version("f", 1, 1, H1)], 0)
        [note] = ix._txn_record_unhashed(self.cursor, A, [("f", 1, 2)], 0)
        self.assertEqual((note.kind, note.hash, note.old_hash), (REPLACE, None, H1))
        self.assertEqual(self.index(), {"f": (1, 2, None, 2)})

    def test_version_add(self) -> None:
        """
        A new hashed file is an Add with its hash.
        """
        [note] = ix._txn_record_versions(self.cursor, A, [Version("d/f", 5, 7, H1)], 0)
        self.assertEqual(
            (note.kind, note.path, note.size, note.mtime_ns, note.hash, note.old_hash),
            (ADD, "d/f", 5, 7, H1, None),
        )
        self.assertEqual(self.index(), {"d/f": (5, 7, H1, 1)})

    def test_version_of_unhashed(self) -> None:
        """
        The version of a file recorded as no version is a Replace whose old
        hash is C{None} (#musthash).
        """
        ix._txn_record_unhashed(self.cursor, A, [("f", 5, 7)], 0)
        [note] = ix._txn_record_versions(self.cursor, A, [Version("f", 5, 7, H1)], 0)
        self.assertEqual((note.kind, note.hash, note.old_hash), (REPLACE, H1, None))
        self.assertEqual(self.index(), {"f": (5, 7, H1, 2)})

    def test_version_replace(self) -> None:
        """
        A new version is a Replace whose old hash is the previous one.
        """
        ix._txn_record_versions(self.cursor, A, [Version("f", 5, 7, H1)], 0)
        [note] = ix._txn_record_versions(self.cursor, A, [Version("f", 6, 8, H2)], 0)
        self.assertEqual(
            (note.kind, note.position, note.hash, note.old_hash, note.size),
            (REPLACE, 2, H2, H1, 6),
        )

    def test_version_touched(self) -> None:
        """
        The same content with a new mtime is a Replace (peers learn the
        mtime); the same size, mtime and hash records nothing.
        """
        ix._txn_record_versions(self.cursor, A, [Version("f", 5, 7, H1)], 0)
        self.assertEqual(
            ix._txn_record_versions(self.cursor, A, [Version("f", 5, 7, H1)], 0), []
        )
        [note] = ix._txn_record_versions(self.cursor, A, [Version("f", 5, 9, H1)], 0)
        self.assertEqual((note.kind, note.hash, note.old_hash), (REPLACE, H1, H1))

    def test_same_path_twice(self) -> None:
        """
        A batch naming a path twice records both in order: the second's
        old hash is the first's.
        """
        notes = ix._txn_record_versions(
            self.cursor, A, [Version("f", 1, 1, H1), Version("f", 2, 2, H2)], 0
        )
        self.assertEqual(
            [(n.kind, n.position, n.old_hash) for n in notes],
            [(ADD, 1, None), (REPLACE, 2, H1)],
        )
        self.assertEqual(self.index(), {"f": (2, 2, H2, 2)})

    def test_many(self) -> None:
        """
        More files than one lookup query takes are all recorded, with
        consecutive positions.
        """
        versions = [Version(f"f{i}", 1, 1, H1) for i in range(1234)]
        notes = ix._txn_record_versions(self.cursor, A, versions, 0)
        self.assertEqual([n.position for n in notes], list(range(1, 1235)))
        self.assertEqual(ix._txn_record_versions(self.cursor, A, versions, 0), [])
        self.assertEqual(ix._txn_positions(self.cursor), Positions(1, 1234))

    def test_removal(self) -> None:
        """
        A removal is a Remove with the given mtime and the index's hash as
        old hash; the file leaves the index; a path not in the index
        records nothing.
        """
        ix._txn_record_versions(self.cursor, A, [Version("f", 5, 7, H1)], 0)
        notes = ix._txn_record_removals(self.cursor, A, [("f", 40), ("g", 41)], 0)
        self.assertEqual(
            [(n.kind, n.position, n.path, n.mtime_ns, n.old_hash) for n in notes],
            [(REMOVE, 2, "f", 40, H1)],
        )
        self.assertEqual(self.index(), {})
        self.assertEqual(self.history()[-1], (2, REMOVE, "f", H1, 40))

    def test_many_removals(self) -> None:
        """
        Many removals at once (more than a chunk of each statement), a
        path named twice among them, each get one Remove, in order, with
        the positions that follow; the index keeps the others.
        """
        count = 2 * ix.INSERT_CHUNK + 600
        versions = [Version(f"f{i:04}", 1, 1, H1) for i in range(count + 1)]
        ix._txn_record_versions(self.cursor, A, versions, 0)
        removals = [(f"f{i:04}", i) for i in range(count)] + [("f0000", 9)]
        notes = ix._txn_record_removals(self.cursor, A, removals, 0)
        self.assertEqual(
            [(n.position, n.path, n.mtime_ns) for n in notes],
            [(count + 2 + i, f"f{i:04}", i) for i in range(count)],
        )
        self.assertEqual(list(self.index()), [f"f{count:04}"])
        self.assertEqual(ix._txn_positions(self.cursor).last, 2 * count + 1)

    def test_drop(self) -> None:
        """
        A drop is a Drop with the old hash; the file leaves the index.
        """
        ix._txn_record_versions(self.cursor, A, [Version("f", 5, 7, H1)], 0)
        [note] = ix._txn_record_drops(self.cursor, A, ["f", "nothing"], 0)
        self.assertEqual((note.kind, note.path, note.old_hash), (DROP, "f", H1))
        self.assertEqual(self.index(), {})

    def test_positions(self) -> None:
        """
        An empty history has first 1 and last 0; positions grow by one per
        entry, and are never reused, even once every entry was trimmed.
        """
        self.assertEqual(ix._txn_positions(self.cursor), Positions(1, 0))
        ix._txn_record_versions(
            self.cursor, A, [Version("f", 1, 1, H1), Version("g", 1, 1, H1)], 0
        )
        self.assertEqual(ix._txn_positions(self.cursor), Positions(1, 2))
        self.assertEqual(ix._txn_trim(self.cursor, [], 10, 0), 2)
        self.assertEqual(ix._txn_positions(self.cursor), Positions(3, 2))
        self.commit()
        [note] = ix._txn_record_versions(self.cursor, A, [Version("h", 1, 1, H1)], 0)
        self.assertEqual(note.position, 3)

    def test_origins_by_directory(self) -> None:
        """
        Files new to the index where the Unreal shows a version are
        Replaces of it, found a directory at a time: at the root, in
        nested directories, not under a file, not for a directory, nor
        for a version not hashed, nor once the index holds the path.
        """
        root = 7
        set_unreal_root(self.cursor, root)
        ranges = iter(range(100, 10_000, 100))

        def alloc(end: int) -> InodeRange:
            start = next(ranges)
            return InodeRange(start, start + 100)

        tree = ArenaTree(A, root, alloc, lambda: 1)
        peer_files = {
            "top": H1,
            "d/f": H2,
            "d/e/g": H3,
            "file": H1,
            "dir/x": H2,
            "unhashed": None,
            "known": H3,
        }
        notes = [
            ix.Notification(ADD, A, i + 1, path=path, size=1, mtime_ns=1, hash=digest)
            for i, (path, digest) in enumerate(peer_files.items())
        ]
        _txn_apply_batch(self.cursor, tree, "b", notes)
        ix._txn_record_versions(self.cursor, A, [Version("known", 1, 1, H1)], 0)
        new = ["top", "d/f", "d/e/g", "d/none", "file/under", "dir", "unhashed"]
        recorded = ix._txn_record_versions(
            self.cursor,
            A,
            [*(Version(p, 2, 2, b"9" * 32) for p in new), Version("known", 2, 2, H2)],
            0,
        )
        self.assertEqual(
            {n.path: (n.kind, n.old_hash) for n in recorded},
            {
                "top": (REPLACE, H1),
                "d/f": (REPLACE, H2),
                "d/e/g": (REPLACE, H3),
                "d/none": (ADD, None),
                "file/under": (ADD, None),
                "dir": (ADD, None),
                "unhashed": (ADD, None),
                "known": (REPLACE, H1),
            },
        )


class ReadTests(_DbCase):
    """
    Reading entries back: the replay re-derivation and index pages.
    """

    def test_replay_current_state(self) -> None:
        """
        Entries replay with the current size, mtime and hash of their
        file: an Add of a file replaced since carries the new version.
        """
        ix._txn_record_versions(self.cursor, A, [Version("f", 1, 1, H1)], 0)
        ix._txn_record_versions(self.cursor, A, [Version("f", 2, 2, H2)], 0)
        notes, last = ix._txn_history_after(self.cursor, A, 0, 100)
        self.assertEqual(last, 2)
        self.assertEqual(
            [(n.kind, n.position, n.size, n.hash, n.old_hash) for n in notes],
            [(ADD, 1, 2, H2, None), (REPLACE, 2, 2, H2, H1)],
        )

    def test_replay_replace_of_removed(self) -> None:
        """
        A Replace of a file removed since replays as a Remove (with the old
        hash of the Replace); an Add of a file gone since is skipped, but
        its position is read.
        """
        ix._txn_record_versions(self.cursor, A, [Version("f", 1, 1, H1)], 0)
        ix._txn_record_versions(self.cursor, A, [Version("f", 2, 2, H2)], 0)
        ix._txn_record_removals(self.cursor, A, [("f", 30)], 0)
        notes, last = ix._txn_history_after(self.cursor, A, 0, 100)
        self.assertEqual(last, 3)
        self.assertEqual(
            [(n.kind, n.position, n.path, n.old_hash, n.size) for n in notes],
            [(REMOVE, 2, "f", H1, None), (REMOVE, 3, "f", H2, None)],
        )
        self.assertEqual(notes[0].mtime_ns, 2)
        self.assertEqual(notes[1].mtime_ns, 30)
        notes, last = ix._txn_history_after(self.cursor, A, 0, 1)
        self.assertEqual((notes, last), ([], 1))

    def test_replay_drop_and_readd(self) -> None:
        """
        A Drop replays as recorded; an Add after a Remove of the same path
        replays with the file as it is.
        """
        ix._txn_record_versions(self.cursor, A, [Version("f", 1, 1, H1)], 0)
        ix._txn_record_drops(self.cursor, A, ["f"], 0)
        ix._txn_record_versions(self.cursor, A, [Version("f", 3, 3, H3)], 0)
        notes, _ = ix._txn_history_after(self.cursor, A, 1, 100)
        self.assertEqual(
            [(n.kind, n.position, n.old_hash, n.hash) for n in notes],
            [(DROP, 2, H1, None), (ADD, 3, None, H3)],
        )

    def test_replay_from_position(self) -> None:
        """
        Reading after a position starts at the next one; past the end it
        reads nothing and stays.
        """
        ix._txn_record_versions(
            self.cursor, A, [Version(p, 1, 1, H1) for p in "abc"], 0
        )
        notes, last = ix._txn_history_after(self.cursor, A, 1, 1)
        self.assertEqual(([n.path for n in notes], last), (["b"], 2))
        self.assertEqual(ix._txn_history_after(self.cursor, A, 3, 10), ([], 3))

    def test_replay_checks_positions(self) -> None:
        """
        L{_txn_replay_after} reads like L{_txn_history_after} when the
        history reaches back to the position, and gives C{None} when it was
        trimmed past it or the position is beyond the end.
        """
        ix._txn_record_versions(
            self.cursor, A, [Version(p, 1, 1, H1) for p in "abcd"], 0
        )
        ix._txn_trim(self.cursor, ["b"], 2, 0)
        self.assertIsNone(ix._txn_replay_after(self.cursor, A, 1, 10))
        self.assertIsNone(ix._txn_replay_after(self.cursor, A, 5, 10))
        result = ix._txn_replay_after(self.cursor, A, 2, 10)
        assert result is not None
        notes, last, positions = result
        self.assertEqual(([n.path for n in notes], last), (["c", "d"], 4))
        self.assertEqual(positions, Positions(3, 4))

    def test_index_pages(self) -> None:
        """
        The index is read in path order, page by page after the last path.
        """
        paths = ["b", "a/x", "a.txt", "a/y/z", "c"]
        ix._txn_record_versions(
            self.cursor, A, [Version(p, 1, 1, H1) for p in paths], 0
        )
        seen: list[str] = []
        after = None
        while True:
            page = ix._txn_index_after(self.cursor, after, 2)
            if not page:
                break
            seen += [e.path for e in page]
            after = page[-1].path
        self.assertEqual(seen, sorted(paths))

    def test_index_prefix(self) -> None:
        """
        A prefix selects exactly the paths beneath that directory.
        """
        paths = ["a", "a/x", "a/y/z", "a.txt", "a0", "ab/c", "b"]
        ix._txn_record_versions(
            self.cursor, A, [Version(p, 1, 1, H1) for p in paths], 0
        )
        page = ix._txn_index_after(self.cursor, None, 100, "a")
        self.assertEqual([e.path for e in page], ["a/x", "a/y/z"])
        page = ix._txn_index_after(self.cursor, "a/x", 100, "a")
        self.assertEqual([e.path for e in page], ["a/y/z"])
        self.assertEqual(len(ix._txn_index_after(self.cursor, None, 100)), 7)

    def test_lookup(self) -> None:
        """
        L{_txn_lookup} gives the entries of the paths held.
        """
        ix._txn_record_versions(self.cursor, A, [Version("f", 1, 2, H1)], 0)
        self.assertEqual(
            ix._txn_lookup(self.cursor, ["f", "g"]), {"f": IndexEntry("f", 1, 2, H1, 1)}
        )
        self.assertEqual(ix._txn_index_stats(self.cursor), (1, 1))
        self.assertEqual(ix._txn_history_count(self.cursor), 1)

    def test_settings(self) -> None:
        """
        Settings are set and replaced; the uuid is there.
        """
        self.assertIsNone(ix._txn_get_setting(self.cursor, "x"))
        ix._txn_set_setting(self.cursor, "x", "1")
        ix._txn_set_setting(self.cursor, "x", "2")
        self.assertEqual(ix._txn_get_setting(self.cursor, "x"), "2")
        self.assertEqual(len(ix._txn_store_uuid(self.cursor)), 32)


class TrimTests(_DbCase):
    """
    L{_txn_trim} and acknowledgements (#trimhistory).
    """

    def fill(self, count: int, time_ns: int = 0) -> None:
        for i in range(count):
            ix._txn_record_versions(
                self.cursor, A, [Version(f"f{i}", 1, i, H1)], time_ns + i
            )

    def test_acknowledge_only_raises(self) -> None:
        """
        An acknowledgement only ever raises a peer's position.
        """
        ix._txn_acknowledge(self.cursor, "b", 5)
        ix._txn_acknowledge(self.cursor, "b", 3)
        ix._txn_acknowledge(self.cursor, "c", 1)
        self.assertEqual(ix._txn_acknowledgements(self.cursor), {"b": 5, "c": 1})

    def test_acknowledged_by_all(self) -> None:
        """
        Entries are trimmed up to the lowest position acknowledged by the
        ACL's peers; a peer that never acknowledged keeps everything.
        """
        self.fill(10)
        ix._txn_acknowledge(self.cursor, "b", 7)
        self.assertEqual(ix._txn_trim(self.cursor, ["b", "c"], 100, 0), 0)
        ix._txn_acknowledge(self.cursor, "c", 4)
        self.assertEqual(ix._txn_trim(self.cursor, ["b", "c"], 100, 0), 4)
        self.assertEqual(ix._txn_positions(self.cursor), Positions(5, 10))
        self.assertEqual(self.history()[0][0], 5)
        self.assertEqual(ix._txn_trim(self.cursor, ["b"], 100, 0), 3)
        self.assertEqual(ix._txn_positions(self.cursor), Positions(8, 10))

    def test_acknowledged_beyond_end(self) -> None:
        """
        An acknowledgement beyond the end trims what there is.
        """
        self.fill(3)
        ix._txn_acknowledge(self.cursor, "b", 50)
        self.assertEqual(ix._txn_trim(self.cursor, ["b"], 100, 0), 3)
        self.assertEqual(ix._txn_positions(self.cursor), Positions(4, 3))

    def test_max_entries(self) -> None:
        """
        Beyond C{max_entries}, the oldest go, whatever was acknowledged.
        """
        self.fill(10)
        self.assertEqual(ix._txn_trim(self.cursor, ["b"], 4, 0), 6)
        self.assertEqual(ix._txn_history_count(self.cursor), 4)
        self.assertEqual(ix._txn_positions(self.cursor), Positions(7, 10))

    def test_max_age(self) -> None:
        """
        Entries recorded before the oldest time allowed go.
        """
        self.fill(10, time_ns=1000)
        self.assertEqual(ix._txn_trim(self.cursor, ["b"], 100, 1003), 3)
        self.assertEqual(ix._txn_positions(self.cursor), Positions(4, 10))
        self.assertEqual(ix._txn_trim(self.cursor, ["b"], 100, 5000), 7)

    def test_batches(self) -> None:
        """
        One transaction drops at most C{limit} entries; the next continues.
        """
        self.fill(10)
        self.assertEqual(ix._txn_trim(self.cursor, [], 100, 0, limit=4), 4)
        self.assertEqual(ix._txn_trim(self.cursor, [], 100, 0, limit=4), 4)
        self.assertEqual(ix._txn_trim(self.cursor, [], 100, 0, limit=4), 2)
        self.assertEqual(ix._txn_positions(self.cursor), Positions(11, 10))

    def test_can_replay_after(self) -> None:
        """
        A replay is complete from any position between the last trimmed
        and the last recorded.
        """
        p = Positions(5, 10)
        self.assertEqual(
            [p.can_replay_after(n) for n in (3, 4, 5, 10, 11)],
            [False, True, True, True, False],
        )


class ArenaIndexTests(SynchronousTestCase):
    """
    L{ArenaIndex} over a synchronous pool.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000)
        path = self.mktemp()
        self.pool = SyncPool(path)
        self.index = self.successResultOf(
            Deferred.fromCoroutine(ArenaIndex.open(A, path, self.pool, self.clock))
        )
        self.told: list[list[Any]] = []
        self.index.listeners.append(lambda i, notes: self.told.append(notes))

    def wait(self, coro: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def test_records_and_tells(self) -> None:
        """
        Each recording method records with the clock's time and tells the
        listeners what it recorded; nothing recorded, nothing told.
        """
        notes = self.wait(self.index.record_versions([Version("f", 1, 1, H1)]))
        self.assertEqual(self.told, [notes])
        self.wait(self.index.record_versions([Version("f", 1, 1, H1)]))
        self.assertEqual(len(self.told), 1)
        self.wait(self.index.record_unhashed([("g", 1, 1)]))
        self.wait(self.index.record_removals([("g", 5)]))
        self.wait(self.index.record_drops(["f"]))
        self.assertEqual([n[0].kind for n in self.told], [ADD, ADD, REMOVE, DROP])
        self.assertEqual(
            self.pool.connection.execute(
                "SELECT DISTINCT time_ns FROM history"
            ).fetchall(),
            [(1_000_000_000_000,)],
        )

    def test_empty_calls_skip_the_db(self) -> None:
        """
        Recording nothing costs no transaction.
        """
        before = self.pool.interactions
        for method in (
            self.index.record_versions,
            self.index.record_unhashed,
            self.index.record_removals,
            self.index.record_drops,
        ):
            self.assertEqual(self.wait(method([])), [])
        self.assertEqual(self.pool.interactions, before)

    def test_listener_failure_logged(self) -> None:
        """
        A listener that raises is logged; the others are still told.
        """

        def broken(i: Any, notes: Any) -> None:
            raise RuntimeError("listener bug")

        self.index.listeners.insert(0, broken)
        self.wait(self.index.record_versions([Version("f", 1, 1, H1)]))
        self.assertEqual(len(self.told), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_catchup_page(self) -> None:
        """
        A catch-up page lists index entries as C{catchup} notifications
        with the given position.
        """
        self.wait(self.index.record_versions([Version("f", 1, 2, H1)]))
        [note] = self.wait(self.index.catchup_page(None, 10, 7))
        self.assertEqual(
            (note.kind, note.position, note.path, note.size, note.mtime_ns, note.hash),
            (CATCHUP, 7, "f", 1, 2, H1),
        )

    def test_trim_loops(self) -> None:
        """
        L{ArenaIndex.trim} trims in batches until nothing more is due,
        counting max_age from the clock.
        """
        self.patch(ix, "TRIM_BATCH", 3)
        for i in range(10):
            self.wait(self.index.record_versions([Version(f"f{i}", 1, 1, H1)]))
        self.assertEqual(self.wait(self.index.trim(["b"], 100, 60)), 0)
        self.clock.advance(61)
        self.assertEqual(self.wait(self.index.trim(["b"], 100, 60)), 10)
        self.assertEqual(self.wait(self.index.positions()), Positions(11, 10))

    def test_acknowledge(self) -> None:
        """
        Acknowledgements are stored per peer.
        """
        self.wait(self.index.acknowledge("b", 3))  # type: ignore[arg-type]
        self.assertEqual(self.wait(self.index.acknowledgements()), {"b": 3})

    def test_close(self) -> None:
        """
        Closing the index closes its pool.
        """
        self.index.close()
        self.assertTrue(self.pool.closed)


class PoolTests(TestCase):
    """
    The real pool: pragmas, the upgrade at open, refusal, readers.  These
    run threads, so on the real reactor.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "arena.db")

    async def _open(self) -> ArenaIndex:
        pool = open_pool(self.path, reactor=reactor)
        index = await ArenaIndex.open(A, self.path, pool, reactor)
        self.addCleanup(index.close)
        return index

    def test_pragmas(self) -> Deferred[None]:
        """
        The pool's connection is in WAL mode with synchronous=NORMAL,
        foreign keys on and the busy timeout set, and upgraded at open.
        """

        async def check() -> None:
            index = await self._open()

            def pragmas(cursor: sqlite3.Cursor) -> list[Any]:
                return [
                    cursor.execute(f"PRAGMA {p}").fetchone()[0]
                    for p in (
                        "journal_mode",
                        "synchronous",
                        "foreign_keys",
                        "busy_timeout",
                        "user_version",
                    )
                ]

            found = await index.pool.runInteraction(pragmas)
            self.assertEqual(found, ["wal", 1, 1, BUSY_TIMEOUT_MS, len(UPGRADES)])
            self.assertEqual(len(index.uuid), 32)

        return Deferred.fromCoroutine(check())

    def test_uuid_kept(self) -> Deferred[None]:
        """
        Reopening a db gives the same store uuid.
        """

        async def check() -> None:
            first = await self._open()
            first.close()
            second = await self._open()
            self.assertEqual(first.uuid, second.uuid)

        return Deferred.fromCoroutine(check())

    def test_newer_refused(self) -> Deferred[None]:
        """
        Opening a db newer than the code fails with L{SchemaTooNew}, and
        the pool is closed.
        """
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA user_version = 999")
        db.close()

        async def check() -> None:
            pool = open_pool(self.path, reactor=reactor)
            with self.assertRaises(SchemaTooNew) as caught:
                await ArenaIndex.open(A, self.path, pool, reactor)
            self.assertIn(self.path, str(caught.exception))
            self.assertFalse(pool.running)

        return Deferred.fromCoroutine(check())

    def test_reader(self) -> Deferred[None]:
        """
        A reader sees what the writer committed and cannot write; a
        read-only pool reads the same db.
        """

        async def check() -> None:
            index = await self._open()
            await index.record_versions([Version("f", 1, 1, H1)])
            reader = open_reader(self.path)
            self.addCleanup(reader.close)
            self.assertEqual(
                reader.execute("SELECT path FROM file_index").fetchall(), [("f",)]
            )
            with self.assertRaises(sqlite3.OperationalError):
                reader.execute("DELETE FROM file_index")
            pool = open_pool(self.path, reactor=reactor, readonly=True)
            self.addCleanup(pool.close)
            ro = await ArenaIndex.open(A, self.path, pool, reactor)
            self.assertEqual(ro.uuid, index.uuid)
            self.assertEqual(list(await ro.lookup(["f"])), ["f"])
            with self.assertRaises(sqlite3.OperationalError):
                await ro.record_versions([Version("g", 1, 1, H1)])

        return Deferred.fromCoroutine(check())

    def test_reader_of_missing_db(self) -> None:
        """
        A reader of a db that does not exist fails, and creates nothing.
        """
        self.assertRaises(sqlite3.OperationalError, open_reader, self.path)
        self.assertFalse(os.path.exists(self.path))
