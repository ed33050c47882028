"""
Every C{_txn_*} of the block cache (L{realize.storage.cache}, and those
L{realize.storage.blobs} gained for it) on a bare sqlite3 connection, and
the blocking file functions of the consistency job.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from realize.model import ByteRanges
from realize.storage.blobs import (
    QUEUE_DELETING,
    QUEUE_PENDING_REMOVAL,
    QUEUE_PROTECTED,
    QUEUE_WORKING,
    _txn_deleting,
    _txn_open_blob,
    _txn_release,
    _txn_set_disk_usage,
    blob_path,
    decode_ranges,
    encode_ranges,
    ensure_blob_file,
    punch_hole,
    write_blob_range,
)
from realize.storage.cache import (
    BlobFileRow,
    Inspection,
    _txn_apply_plan,
    _txn_fix,
    _txn_load,
    _txn_pending,
    _txn_rows,
    _txn_set_queue,
    _txn_set_usage,
    _txn_touch,
    inspect_blob_files,
    list_blob_files,
)
from realize.storage.unreal import _txn_add

from .test_unreal_tables import P, add, arena_db, h, inode_of, make_tree, run

MIB = 1 << 20

NONE = ByteRanges()


def insert(
    db: sqlite3.Connection,
    inode: int,
    digest: bytes,
    queue: str = QUEUE_WORKING,
    last_access_ns: int = 0,
    ranges: ByteRanges = NONE,
    size: int = 10,
) -> int:
    """
    A blob row, committed.

    @return: its id.
    """
    cursor = db.execute(
        "INSERT INTO blob (inode, hash, size, ranges, disk_usage, queue,"
        " last_access_ns) VALUES (?, ?, ?, ?, 4096, ?, ?)",
        (inode, digest, size, encode_ranges(ranges), queue, last_access_ns),
    )
    db.commit()
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def column(db: sqlite3.Connection, blob_id: int, name: str) -> object:
    row = db.execute(f"SELECT {name} FROM blob WHERE id = ?", (blob_id,)).fetchone()
    return None if row is None else row[0]


class TransactionTests(SynchronousTestCase):
    """
    The transactions, each on its own.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)

    def test_load(self) -> None:
        """
        L{_txn_load} gives the live blobs, least recently used first, with
        their usage and queue; rows being deleted are left out.
        """
        a = insert(self.db, 1, h(1), last_access_ns=3_000_000_000)
        b = insert(self.db, 2, h(2), QUEUE_PROTECTED, 1_000_000_000)
        insert(self.db, 3, h(3), QUEUE_DELETING, 0)
        c = insert(self.db, 4, h(4), QUEUE_PENDING_REMOVAL, 2_000_000_000)
        entries = run(self.db, _txn_load)
        self.assertEqual([e.id for e in entries], [b, c, a])
        self.assertEqual(
            [(e.queue, e.last_access, e.disk_usage) for e in entries],
            [
                (QUEUE_PROTECTED, 1.0, 4096),
                (QUEUE_PENDING_REMOVAL, 2.0, 4096),
                (QUEUE_WORKING, 3.0, 4096),
            ],
        )

    def test_pending(self) -> None:
        """
        L{_txn_pending} gives the ids pending removal.
        """
        insert(self.db, 1, h(1))
        b = insert(self.db, 2, h(2), QUEUE_PENDING_REMOVAL)
        self.assertEqual(run(self.db, _txn_pending), [b])

    def test_apply_plan(self) -> None:
        """
        L{_txn_apply_plan} writes queue changes (not over a deletion) and
        marks evicted rows; it answers the evicted ids that have a row.
        """
        a = insert(self.db, 1, h(1))
        b = insert(self.db, 2, h(2))
        c = insert(self.db, 3, h(3), QUEUE_DELETING)
        found = run(
            self.db,
            _txn_apply_plan,
            [(a, QUEUE_PROTECTED), (c, QUEUE_WORKING)],
            [b, 999],
        )
        self.assertEqual(found, [b])
        self.assertEqual(
            [column(self.db, i, "queue") for i in (a, b, c)],
            [QUEUE_PROTECTED, QUEUE_DELETING, QUEUE_DELETING],
        )

    def test_touch(self) -> None:
        """
        L{_txn_touch} records last accesses, never going back in time.
        """
        a = insert(self.db, 1, h(1), last_access_ns=50)
        run(self.db, _txn_touch, [(a, 70)])
        self.assertEqual(column(self.db, a, "last_access_ns"), 70)
        run(self.db, _txn_touch, [(a, 60)])
        self.assertEqual(column(self.db, a, "last_access_ns"), 70)

    def test_set_usage_and_queue(self) -> None:
        """
        L{_txn_set_usage} records usages; L{_txn_set_queue} moves a live
        row only.
        """
        a = insert(self.db, 1, h(1))
        b = insert(self.db, 2, h(2), QUEUE_DELETING)
        run(self.db, _txn_set_usage, [(a, 8192)])
        self.assertEqual(column(self.db, a, "disk_usage"), 8192)
        self.assertTrue(run(self.db, _txn_set_queue, a, QUEUE_PROTECTED))
        self.assertFalse(run(self.db, _txn_set_queue, b, QUEUE_PROTECTED))
        self.assertEqual(column(self.db, b, "queue"), QUEUE_DELETING)
        run(self.db, _txn_set_disk_usage, a, 12288)
        self.assertEqual(column(self.db, a, "disk_usage"), 12288)

    def test_rows(self) -> None:
        """
        L{_txn_rows} gives every row with its claimed ranges.
        """
        a = insert(self.db, 1, h(1), ranges=ByteRanges.of((0, 5)))
        b = insert(self.db, 2, h(2), QUEUE_DELETING)
        self.assertEqual(
            run(self.db, _txn_rows),
            [
                BlobFileRow(a, 10, ByteRanges.of((0, 5)), QUEUE_WORKING),
                BlobFileRow(b, 10, ByteRanges(), QUEUE_DELETING),
            ],
        )

    def test_fix(self) -> None:
        """
        L{_txn_fix} drops rows of missing files, forgets deleted rows (only
        if still marked), trims claimed ranges and records usages.
        """
        missing = insert(self.db, 1, h(1))
        deleted = insert(self.db, 2, h(2), QUEUE_DELETING)
        trimmed = insert(self.db, 3, h(3), ranges=ByteRanges.of((0, 10)))
        revived = insert(self.db, 4, h(4))
        run(
            self.db,
            _txn_fix,
            Inspection(
                missing=(missing,),
                trimmed=((trimmed, ByteRanges.of((4, 6))),),
                usages=((trimmed, 8192),),
                deleted=(deleted, revived),
            ),
        )
        self.assertIsNone(column(self.db, missing, "id"))
        self.assertIsNone(column(self.db, deleted, "id"))
        self.assertEqual(column(self.db, revived, "id"), revived)
        self.assertEqual(
            decode_ranges(bytes(column(self.db, trimmed, "ranges"))),  # type: ignore[arg-type]
            ByteRanges.of((0, 4), (6, 10)),
        )
        self.assertEqual(column(self.db, trimmed, "disk_usage"), 8192)

    def test_release(self) -> None:
        """
        L{_txn_release} takes ranges out of a live row only.
        """
        a = insert(self.db, 1, h(1), ranges=ByteRanges.of((0, 10)))
        b = insert(self.db, 2, h(2), QUEUE_DELETING, ranges=ByteRanges.of((0, 10)))
        self.assertEqual(
            run(self.db, _txn_release, a, ByteRanges.of((2, 5))),
            ByteRanges.of((0, 2), (5, 10)),
        )
        self.assertIsNone(run(self.db, _txn_release, b, ByteRanges.of((2, 5))))
        self.assertIsNone(run(self.db, _txn_release, 999, ByteRanges.of((2, 5))))

    def test_deleting_takes_pending(self) -> None:
        """
        L{_txn_deleting} marks every blob pending removal, and answers all
        the marked ones.
        """
        a = insert(self.db, 1, h(1), QUEUE_PENDING_REMOVAL)
        b = insert(self.db, 2, h(2), QUEUE_DELETING)
        insert(self.db, 3, h(3))
        self.assertEqual(run(self.db, _txn_deleting), [a, b])

    def test_open_revives_pending(self) -> None:
        """
        L{_txn_open_blob} of a version whose blob was pending removal (the
        default came back to it) gives that blob, back in working.
        """
        tree = make_tree()
        run(self.db, _txn_add, tree, P, add("f", 10, 10, h(1)))
        inode = inode_of(self.db, "f")
        blob_id = insert(self.db, inode, h(1), QUEUE_PENDING_REMOVAL, 5)
        blob, new = run(self.db, _txn_open_blob, inode, h(1), 9)
        self.assertEqual((blob.id, blob.queue, new), (blob_id, QUEUE_WORKING, False))
        self.assertEqual(column(self.db, blob_id, "queue"), QUEUE_WORKING)
        self.assertEqual(column(self.db, blob_id, "last_access_ns"), 9)


class FileTests(SynchronousTestCase):
    """
    The blocking file functions.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_list(self) -> None:
        """
        L{list_blob_files} lists the numbered files only; a missing
        directory has none.
        """
        for name in ("1", "20", "x", "007", "-3"):
            open(os.path.join(self.directory, name), "w").close()
        self.assertEqual(list_blob_files(self.directory), {1, 20})
        self.assertEqual(list_blob_files(self.directory + "-missing"), set())

    def test_inspect(self) -> None:
        """
        L{inspect_blob_files} deletes files without a row and those of rows
        being deleted, finds rows whose file is missing, claimed ranges the
        file does not hold (holes, past its end), and measures usages;
        skipped ids are left alone.
        """
        ensure_blob_file(self.directory, 1, 4 * MIB)
        write_blob_range(self.directory, 1, 0, b"x" * MIB)
        ensure_blob_file(self.directory, 2, 10)  # orphan
        ensure_blob_file(self.directory, 3, 10)  # being deleted
        ensure_blob_file(self.directory, 5, 10)  # orphan, skipped
        rows = [
            BlobFileRow(1, 4 * MIB, ByteRanges.of((0, 3 * MIB)), QUEUE_WORKING),
            BlobFileRow(3, 10, ByteRanges(), QUEUE_DELETING),
            BlobFileRow(4, 10, ByteRanges.of((0, 10)), QUEUE_WORKING),
            BlobFileRow(6, 10, ByteRanges(), QUEUE_WORKING),
        ]
        files = list_blob_files(self.directory)
        found = inspect_blob_files(self.directory, rows, files, lambda i: i in (5, 6))
        self.assertEqual(found.missing, (4,))
        self.assertEqual(found.orphans, (2,))
        self.assertEqual(found.deleted, (3,))
        self.assertEqual(found.trimmed, ((1, ByteRanges.of((MIB, 3 * MIB))),))
        self.assertEqual(
            found.usages,
            ((1, os.stat(blob_path(self.directory, 1)).st_blocks * 512),),
        )
        self.assertEqual(found.fixes, 3)
        self.assertEqual(list_blob_files(self.directory), {1, 5})

    def test_punch_hole(self) -> None:
        """
        L{punch_hole} gives the blocks of ranges back and keeps the file's
        length; a missing file is C{None}.
        """
        ensure_blob_file(self.directory, 1, 4 * MIB)
        before = write_blob_range(self.directory, 1, 0, b"y" * (4 * MIB))
        after = punch_hole(self.directory, 1, ByteRanges.of((0, 2 * MIB)))
        assert after is not None
        self.assertLessEqual(after, before - 2 * MIB)
        path = blob_path(self.directory, 1)
        self.assertEqual(os.stat(path).st_size, 4 * MIB)
        with open(path, "rb") as f:
            self.assertEqual(f.read(2 * MIB), b"\0" * (2 * MIB))
            self.assertEqual(f.read(), b"y" * (2 * MIB))
        self.assertIsNone(punch_hole(self.directory, 9, ByteRanges.of((0, 1))))
