"""
Tests for L{realize.storage.blobs} and L{realize.model.ByteRanges}.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import IOFailure, NotFound
from realize.model import ByteRanges
from realize.storage.blobs import (
    QUEUE_DELETING,
    QUEUE_PENDING_REMOVAL,
    BlobStore,
    blob_path,
    decode_ranges,
    encode_ranges,
    ensure_blob_file,
    read_cached,
    write_blob_range,
)
from realize.storage.unreal import _txn_add, _txn_remove, _txn_replace

from .helpers import result_of, sync_run_in_thread
from .test_unreal_tables import (
    P,
    add,
    arena_db,
    h,
    inode_of,
    make_tree,
    remove,
    replace,
    run,
)

T = TypeVar("T")

quick = settings(max_examples=300, deadline=None, database=None)

pairs = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6)


def as_set(ranges: ByteRanges) -> set[int]:
    return {i for start, end in ranges for i in range(start, end)}


def from_pairs(value: list[tuple[int, int]]) -> ByteRanges:
    return ByteRanges.of(*[(min(a, b), max(a, b)) for a, b in value])


class ByteRangesTests(SynchronousTestCase):
    """
    L{ByteRanges} behaves as a set of offsets.
    """

    @quick
    @given(pairs, pairs)
    def test_algebra(self, a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
        """
        Union, intersection and subtraction match those of sets of offsets,
        and results stay normalized.
        """
        x, y = from_pairs(a), from_pairs(b)
        self.assertEqual(as_set(x | y), as_set(x) | as_set(y))
        self.assertEqual(as_set(x & y), as_set(x) & as_set(y))
        self.assertEqual(as_set(x - y), as_set(x) - as_set(y))
        for value in (x | y, x & y, x - y):
            ByteRanges(value.ranges)
        self.assertEqual((x | y).total(), len(as_set(x) | as_set(y)))

    @quick
    @given(pairs, st.integers(0, 60), st.integers(0, 60))
    def test_contains(self, a: list[tuple[int, int]], start: int, end: int) -> None:
        """
        C{contains} is set inclusion; C{in} tests one offset.
        """
        x = from_pairs(a)
        self.assertEqual(x.contains(start, end), set(range(start, end)) <= as_set(x))
        self.assertEqual(start in x, start in as_set(x))

    def test_normalized(self) -> None:
        """
        L{ByteRanges.of} merges touching and overlapping ranges and drops
        empty ones; the constructor refuses what is not normalized.
        """
        self.assertEqual(
            ByteRanges.of((5, 10), (0, 5), (7, 8), (20, 20)).ranges, ((0, 10),)
        )
        for bad in [
            ((5, 3),),
            ((0, 5), (5, 6)),
            ((4, 6), (0, 2)),
            ((-1, 2),),
            ((1, 1),),
        ]:
            self.assertRaises(ValueError, ByteRanges, bad)
        self.assertRaises(ValueError, ByteRanges.of, (-1, 3))
        self.assertFalse(ByteRanges())
        self.assertTrue(ByteRanges.of((0, 1)))

    @quick
    @given(pairs)
    def test_encoding(self, a: list[tuple[int, int]]) -> None:
        """
        Ranges survive the db encoding.
        """
        x = from_pairs(a)
        self.assertEqual(decode_ranges(encode_ranges(x)), x)

    def test_bad_encoding(self) -> None:
        """
        A malformed column value is an L{IOFailure}.
        """
        self.assertRaises(IOFailure, decode_ranges, b"123")
        self.assertRaises(
            IOFailure, decode_ranges, encode_ranges(ByteRanges.of((5, 9))) * 2
        )


def sync_interaction(
    connection: sqlite3.Connection, log: list[str] | None = None
) -> Callable[..., Deferred[Any]]:
    """
    A synchronous C{runInteraction} on a bare connection.
    """

    def run_interaction(
        f: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Deferred[T]:
        if log is not None:
            log.append(f.__name__)
        try:
            result = f(connection.cursor(), *args, **kwargs)
        except BaseException as e:
            connection.rollback()
            return fail(e)
        connection.commit()
        return succeed(result)

    return run_interaction


class BlobStoreTests(SynchronousTestCase):
    """
    L{BlobStore} with synchronous threads and transactions.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.tree = make_tree()
        self.directory = os.path.join(self.mktemp(), "blobs")
        self.log: list[str] = []

        def in_thread(f: Callable[..., T], /, *args: Any, **kwargs: Any) -> Deferred[T]:
            self.log.append(f.__name__)
            return sync_run_in_thread(f, *args, **kwargs)

        self.store = BlobStore(
            self.directory, in_thread, sync_interaction(self.db, self.log), lambda: 7
        )
        run(self.db, _txn_add, self.tree, P, add("f", 3 << 20, 10, h(1)))
        self.inode = inode_of(self.db, "f")

    def test_open_makes_sparse_file(self) -> None:
        """
        Opening the default version's blob makes its row first, then a
        sparse file of the version's size; opening again gives the same
        blob.
        """
        blob = result_of(self, self.store.open(self.inode, h(1)))
        self.assertEqual(self.log, ["_txn_open_blob", "ensure_blob_file"])
        path = blob_path(self.directory, blob.id)
        stat = os.stat(path)
        self.assertEqual(stat.st_size, 3 << 20)
        self.assertLess(stat.st_blocks * 512, 1 << 20)
        self.assertEqual(
            (blob.inode, blob.hash, blob.size, blob.ranges),
            (self.inode, h(1), 3 << 20, ByteRanges()),
        )
        self.assertEqual(result_of(self, self.store.open(self.inode, h(1))), blob)

    def test_open_not_default(self) -> None:
        """
        Only the default version gets a blob.
        """
        self.assertIsInstance(
            self.failureResultOf(
                Deferred.fromCoroutine(self.store.open(self.inode, h(2)))
            ).value,
            NotFound,
        )
        self.assertEqual(
            os.listdir(self.directory) if os.path.exists(self.directory) else [], []
        )

    def test_write_then_record(self) -> None:
        """
        A write puts the data in the file and syncs it before the range is
        recorded, with the disk usage; reads give it back.
        """
        blob = result_of(self, self.store.open(self.inode, h(1)))
        del self.log[:]
        ranges = result_of(self, self.store.write(blob, 1 << 20, b"x" * 100))
        self.assertEqual(self.log, ["write_blob_range", "_txn_add_ranges"])
        self.assertEqual(ranges, ByteRanges.of((1 << 20, (1 << 20) + 100)))
        stored = result_of(self, self.store.ranges(blob))
        self.assertEqual(stored, ranges)
        usage = self.db.execute("SELECT disk_usage FROM blob").fetchone()[0]
        self.assertGreater(usage, 0)
        self.assertEqual(
            result_of(self, self.store.read(blob, 1 << 20, (1 << 20) + 100)), b"x" * 100
        )

    def test_failed_write_records_nothing(self) -> None:
        """
        A write that fails records no range.
        """
        blob = result_of(self, self.store.open(self.inode, h(1)))
        # A directory where the file should be: open(O_WRONLY) fails with
        # EISDIR, also for root.
        path = blob_path(self.directory, blob.id)
        os.unlink(path)
        os.mkdir(path)
        self.addCleanup(os.rmdir, path)
        self.failureResultOf(
            Deferred.fromCoroutine(self.store.write(blob, 0, b"x")), IOFailure
        )
        self.assertEqual(result_of(self, self.store.ranges(blob)), ByteRanges())

    def test_write_after_delete(self) -> None:
        """
        A write into a blob deleted meanwhile records nothing and makes no
        file.
        """
        blob = result_of(self, self.store.open(self.inode, h(1)))
        run(self.db, _txn_replace, self.tree, P, replace("f", 5, 20, h(2), h(1)))
        self.assertEqual(result_of(self, self.store.delete_outdated()), 1)
        self.assertIsNone(result_of(self, self.store.write(blob, 0, b"x")))
        self.assertEqual(os.listdir(self.directory), [])
        self.assertIsNone(result_of(self, self.store.ranges(blob)))

    def test_delete_outdated_order(self) -> None:
        """
        A replaced version's blob waits in the pending removal queue (still
        readable for its version, by files opened on it); deleting it marks
        it, removes the file, then the row; the new version gets a new blob
        id.
        """
        old = result_of(self, self.store.open(self.inode, h(1)))
        result_of(self, self.store.write(old, 0, b"abc"))
        run(self.db, _txn_replace, self.tree, P, replace("f", 5, 20, h(2), h(1)))
        self.assertEqual(
            self.db.execute("SELECT queue FROM blob").fetchone()[0],
            QUEUE_PENDING_REMOVAL,
        )
        self.assertEqual(
            read_cached(self.db, self.directory, self.inode, h(1), 0, 3), b"abc"
        )
        del self.log[:]
        self.assertEqual(result_of(self, self.store.delete_outdated()), 1)
        self.assertEqual(
            self.log, ["_txn_deleting", "delete_blob_files", "_txn_forget"]
        )
        self.assertEqual(os.listdir(self.directory), [])
        self.assertEqual(self.db.execute("SELECT count(*) FROM blob").fetchone()[0], 0)
        new = result_of(self, self.store.open(self.inode, h(2)))
        self.assertGreater(new.id, old.id)
        self.assertEqual(result_of(self, self.store.delete_outdated()), 0)

    def test_delete_failure_keeps_row(self) -> None:
        """
        If a file cannot be removed its row stays (marked), to be retried.
        """
        blob = result_of(self, self.store.open(self.inode, h(1)))
        path = blob_path(self.directory, blob.id)
        os.unlink(path)
        os.mkdir(path)
        self.addCleanup(os.rmdir, path)
        run(self.db, _txn_remove, self.tree, P, remove("f", 20, h(1)))
        self.failureResultOf(
            Deferred.fromCoroutine(self.store.delete_outdated()), IOFailure
        )
        self.assertEqual(
            self.db.execute("SELECT queue FROM blob").fetchone()[0], QUEUE_DELETING
        )

    def test_missing_file_loses_ranges(self) -> None:
        """
        A blob whose file vanished (crash, hand) is made again with no
        range: nothing is served from a file that is not there.
        """
        blob = result_of(self, self.store.open(self.inode, h(1)))
        result_of(self, self.store.write(blob, 0, b"abc"))
        os.unlink(blob_path(self.directory, blob.id))
        again = result_of(self, self.store.open(self.inode, h(1)))
        self.assertEqual((again.id, again.ranges), (blob.id, ByteRanges()))
        self.assertEqual(result_of(self, self.store.ranges(blob)), ByteRanges())

    def test_read_cached(self) -> None:
        """
        L{read_cached} serves a range only if all of it is present, clips
        at the version's size, and says C{None} otherwise.
        """
        run(self.db, _txn_add, self.tree, P, add("small", 10, 10, h(3)))
        small = inode_of(self.db, "small")
        blob = result_of(self, self.store.open(small, h(3)))
        result_of(self, self.store.write(blob, 0, b"0123456"))
        self.assertEqual(
            read_cached(self.db, self.directory, small, h(3), 2, 5), b"234"
        )
        self.assertIsNone(read_cached(self.db, self.directory, small, h(3), 5, 9))
        result_of(self, self.store.write(blob, 7, b"789"))
        self.assertEqual(
            read_cached(self.db, self.directory, small, h(3), 5, 1000), b"56789"
        )
        self.assertEqual(read_cached(self.db, self.directory, small, h(3), 10, 20), b"")
        self.assertIsNone(read_cached(self.db, self.directory, small, h(4), 0, 1))
        self.assertIsNone(read_cached(self.db, self.directory, self.inode, h(1), 0, 1))
        os.unlink(blob_path(self.directory, blob.id))
        self.assertIsNone(read_cached(self.db, self.directory, small, h(3), 0, 3))


class ReleaseTests(SynchronousTestCase):
    """
    Releasing ranges of a blob (#largedl), and the fast path meanwhile.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.tree = make_tree()
        self.directory = os.path.join(self.mktemp(), "blobs")
        self.store = BlobStore(
            self.directory, sync_run_in_thread, sync_interaction(self.db), lambda: 7
        )
        run(self.db, _txn_add, self.tree, P, add("f", 3 << 20, 10, h(1)))
        self.inode = inode_of(self.db, "f")
        self.blob = result_of(self, self.store.open(self.inode, h(1)))
        result_of(self, self.store.write(self.blob, 0, b"z" * (3 << 20)))

    def test_release(self) -> None:
        """
        A release takes the ranges out of the row, then gives their blocks
        back, and records the usage; a blob gone is C{None}.
        """
        before = os.stat(blob_path(self.directory, self.blob.id)).st_blocks * 512
        left = result_of(
            self, self.store.release(self.blob, ByteRanges.of((0, 1 << 20)))
        )
        self.assertEqual(left, ByteRanges.of((1 << 20, 3 << 20)))
        usage = self.db.execute("SELECT disk_usage FROM blob").fetchone()[0]
        self.assertLessEqual(usage, before - (1 << 20))
        self.assertIsNone(read_cached(self.db, self.directory, self.inode, h(1), 0, 10))
        result_of(self, self.store.delete([]))
        os.unlink(blob_path(self.directory, self.blob.id))
        self.assertIsNone(
            result_of(self, self.store.release(self.blob, ByteRanges.of((0, 1))))
        )

    def test_read_cached_during_release(self) -> None:
        """
        A release that commits while the fast path reads those bytes (after
        it checked the ranges, before its read ended): the read answers
        C{None} rather than bytes that may have been zeroed.
        """
        db = self.db
        store = self.store
        blob = self.blob
        case = self

        class Racing:
            calls = 0

            def execute(self, *args: Any) -> Any:
                Racing.calls += 1
                if Racing.calls == 2:
                    result_of(case, store.release(blob, ByteRanges.of((0, 1 << 20))))
                return db.execute(*args)

        racing: Any = Racing()
        self.assertIsNone(
            read_cached(racing, self.directory, self.inode, h(1), 0, 4096)
        )
        self.assertEqual(
            read_cached(db, self.directory, self.inode, h(1), 2 << 20, (2 << 20) + 3),
            b"zzz",
        )


class FileFunctionTests(SynchronousTestCase):
    """
    The blocking file functions.
    """

    def test_ensure_existing(self) -> None:
        """
        L{ensure_blob_file} keeps an existing file as it is.
        """
        directory = self.mktemp()
        self.assertFalse(ensure_blob_file(directory, 1, 10))
        write_blob_range(directory, 1, 0, b"abc")
        self.assertTrue(ensure_blob_file(directory, 1, 10))
        with open(blob_path(directory, 1), "rb") as f:
            self.assertEqual(f.read(), b"abc" + b"\0" * 7)

    def test_write_missing(self) -> None:
        """
        Writing into a missing blob file is L{NotFound} and makes no file.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        self.assertRaises(NotFound, write_blob_range, directory, 5, 0, b"x")
        self.assertEqual(os.listdir(directory), [])
