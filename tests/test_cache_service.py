"""
Tests for L{realize.services.cache.BlobCache}: a real blob store on a
temporary directory and a bare sqlite3 db, run synchronously, with a
L{Clock}, a fake filesystem size, and the downloader reading through the
cache from a fake peer.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from realize.config import CacheConfig
from realize.errors import IOFailure
from realize.hashing import LEAF_SIZE, leaf_hash, merkle_root
from realize.metrics import CacheMetrics, make_registry
from realize.model import ByteRanges, FileState
from realize.services.cache import (
    CONSISTENCY_INTERVAL,
    PENDING_BATCH,
    PENDING_RETENTION,
    SWEEP_INTERVAL,
    TICK_INTERVAL,
    BlobCache,
)
from realize.services.downloader import STREAM_WINDOW, Downloader
from realize.storage.blobs import (
    QUEUE_DELETING,
    QUEUE_PENDING_REMOVAL,
    QUEUE_PROTECTED,
    QUEUE_WORKING,
    Blob,
    BlobStore,
    blob_path,
    decode_ranges,
    encode_ranges,
    ensure_blob_file,
    read_cached,
    write_blob_range,
)
from realize.storage.cache import (
    ACCESS_COOLDOWN,
    FILE_OVERHEAD,
    _txn_apply_plan,
    tolerance,
)
from realize.storage.unreal import _txn_add, _txn_replace
from realize.storage.unrealview import FileVersion, file_version

from .helpers import result_of, sync_run_in_thread
from .test_blobs import sync_interaction
from .test_unreal_tables import (
    ARENA,
    ROOT,
    P,
    add,
    arena_db,
    h,
    inode_of,
    make_tree,
    replace,
    run,
)

MIB = 1 << 20
GIB = 1 << 30


def du(directory: str) -> int:
    """
    @return: the disk usage of a directory's files, C{st_blocks * 512}.
    """
    if not os.path.isdir(directory):
        return 0
    return sum(
        os.stat(os.path.join(directory, name)).st_blocks * 512
        for name in os.listdir(directory)
    )


def data_of(path: str, size: int) -> bytes:
    """
    Bytes of a file that differ from file to file and piece to piece.
    """
    seed = sum(path.encode()) % 251
    block = bytes((i * 7 + seed) % 251 for i in range(4096))
    return (block * (size // 4096 + 1))[:size]


def root_of(data: bytes) -> bytes:
    return merkle_root(
        tuple(
            leaf_hash(data[i : i + LEAF_SIZE]) for i in range(0, len(data), LEAF_SIZE)
        )
    )


class _Stream:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        yield self.data

    async def result(self) -> FileState:
        return FileState((), len(self.data), 0)

    def cancel(self) -> None:
        pass


class Files:
    """
    A peer's store holding files by path (a
    L{realize.services.downloader.RemoteData}).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.read_bytes = 0

    def describe(self) -> str:
        return "a"

    def read(self, arena: str, path: str, start: int, end: int) -> _Stream:
        data = self.files[path][start:end]
        self.read_bytes += len(data)
        return _Stream(data)

    async def hash(self, arena: str, path: str, start: int, end: int) -> FileState:
        data = self.files[path]
        leaves = tuple(
            leaf_hash(data[i : i + LEAF_SIZE]) for i in range(0, len(data), LEAF_SIZE)
        )
        return FileState(leaves, len(data), 0)


class CacheTestCase(SynchronousTestCase):
    """
    A blob cache of one arena, its downloader, and files of a peer.
    """

    quota = 8 * MIB

    def setUp(self) -> None:
        self.clock = Clock()
        self.db = arena_db(self)
        self.tree = make_tree()
        self.directory = os.path.join(self.mktemp(), "blobs")
        os.makedirs(self.directory)
        self.filesystem = 100 * GIB
        self.free = 50 * GIB
        self.marks: dict[int, str] = {}
        self.metrics = CacheMetrics(make_registry())
        self.peer = Files()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(self.no_delayed_calls)
        self.cache = self.make_cache()

    def make_cache(self, config: CacheConfig | None = None) -> BlobCache:
        store = BlobStore(
            self.directory,
            sync_run_in_thread,
            sync_interaction(self.db),
            lambda: int(self.clock.seconds() * 1e9),
        )
        cache = BlobCache(
            ARENA,
            store,
            config or CacheConfig(size_bytes=self.quota),
            self.clock,
            sync_run_in_thread,
            sync_interaction(self.db),
            self.metrics,
            self.marks.get,
            self.space,
        )
        self.addCleanup(cache.stop)
        return cache

    def space(self, path: str) -> tuple[int, int]:
        assert path == self.directory
        return self.filesystem, self.free

    def no_delayed_calls(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def start(self) -> None:
        result_of(self, self.cache.start())

    def add_file(self, path: str, size: int) -> tuple[int, bytes]:
        """
        A file of the peer's, known to the tables.

        @return: its inode and version.
        """
        data = data_of(path, size)
        self.peer.files[path] = data
        digest = root_of(data)
        run(self.db, _txn_add, self.tree, P, add(path, size, 10, digest))
        return inode_of(self.db, path), digest

    def fill(self, path: str, size: int = MIB) -> Blob:
        """
        A file, all of it written into its blob through the cache.
        """
        inode, digest = self.add_file(path, size)
        blob = result_of(self, self.cache.open(inode, digest))
        data = self.peer.files[path]
        for offset in range(0, size, LEAF_SIZE):
            result_of(
                self, self.cache.write(blob, offset, data[offset : offset + LEAF_SIZE])
            )
        self.clock.advance(1)
        return blob

    def version(self, path: str) -> tuple[int, bytes]:
        """
        @return: a file's inode and version.
        """
        return inode_of(self.db, path), root_of(self.peer.files[path])

    def rows(self) -> dict[int, str]:
        """
        @return: the queue of every blob row, by inode.
        """
        return {
            int(inode): str(queue)
            for inode, queue in self.db.execute("SELECT inode, queue FROM blob")
        }

    def cached_paths(self) -> set[str]:
        paths = set()
        for path in self.peer.files:
            inode = inode_of(self.db, path)
            if inode in self.rows():
                paths.add(path)
        return paths

    def logged(self, level: LogLevel) -> list[str]:
        return [
            e["log_format"].format(**e)
            for e in self.events
            if e.get("log_level") == level and e.get("log_namespace") == "realize.cache"
        ]

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class QuotaTests(CacheTestCase):
    """
    Writes within the quota, eviction, and the free-space reserve.
    """

    def test_within_quota(self) -> None:
        """
        Writing more than the quota evicts the least recently used blobs
        first (files, then rows); the disk usage never passes the quota
        plus the tolerance.
        """
        self.start()
        for i in range(20):
            self.fill(f"f{i}")
            self.assertLessEqual(du(self.directory), self.quota + tolerance(self.quota))
            self.assertLessEqual(self.cache.policy.usage(), self.quota)
        self.assertEqual(self.cached_paths(), {f"f{i}" for i in range(13, 20)})
        self.assertEqual(
            sorted(os.listdir(self.directory)),
            sorted(str(row[0]) for row in self.db.execute("SELECT id FROM blob")),
        )
        self.assertEqual(
            self.sample(
                "realize_cache_evictions_total",
                arena=ARENA,
                queue=QUEUE_WORKING,
                reason="quota",
            ),
            13,
        )
        self.assertEqual(
            self.sample("realize_cache_quota_bytes", arena=ARENA), self.quota
        )

    def test_access_order(self) -> None:
        """
        Reads of cached data (from FUSE threads, applied before the next
        decision) keep a blob from being the next to go.
        """
        self.start()
        first = self.fill("f0")
        for i in range(1, 7):
            self.fill(f"f{i}")
        self.cache.read_hit(first.inode, first.hash, 4096)
        self.fill("f7")
        self.fill("f8")
        self.assertIn("f0", self.cached_paths())
        self.assertNotIn("f1", self.cached_paths())
        self.assertEqual(
            self.sample("realize_cache_reads_total", arena=ARENA, result="hit"), 1
        )

    def test_access_order_within_a_batch(self) -> None:
        """
        Several files read between two decisions (small files served from
        memory in one batch) keep the order they were read in: the one
        read least recently goes first.
        """
        self.start()
        blobs = [self.fill(f"f{i}") for i in range(7)]
        for i in (6, 5, 4, 3, 2, 0, 1):
            self.cache.read_hit(blobs[i].inode, blobs[i].hash, 4096)
        self.cache.opened(blobs[6].inode, blobs[6].hash)
        self.cache.closed(blobs[6].inode)
        self.clock.advance(TICK_INTERVAL)  # applied together
        self.fill("f7")
        self.fill("f8")
        cached = self.cached_paths()
        self.assertNotIn("f5", cached)
        self.assertNotIn("f4", cached)
        self.assertLessEqual({"f0", "f1", "f2", "f3", "f6", "f7", "f8"}, cached)

    def test_access_order_on_reconfigure(self) -> None:
        """
        A smaller quota (SIGHUP) evicts by the reads recorded up to then,
        even those not applied yet.
        """
        self.start()
        blobs = [self.fill(f"f{i}") for i in range(6)]
        self.cache.read_hit(blobs[0].inode, blobs[0].hash, 4096)
        self.successResultOf(
            self.cache.reconfigure(CacheConfig(size_bytes=2 * MIB + MIB // 2))
        )
        self.assertEqual(self.cached_paths(), {"f0", "f5"})

    def test_open_files_not_evicted(self) -> None:
        """
        A file open through FUSE keeps its blob however old it is; when
        every blob is open, new data is served but not kept, with one
        warning.
        """
        self.start()
        blobs = [self.fill(f"f{i}") for i in range(7)]
        self.cache.opened(blobs[0].inode, blobs[0].hash)
        self.fill("f7")
        self.assertIn("f0", self.cached_paths())
        self.assertNotIn("f1", self.cached_paths())
        for blob in [*blobs[1:], self.cache.policy.find(*self.version("f7"))]:
            assert blob is not None
            self.cache.opened(blob.inode, blob.hash)
        inode, digest = self.add_file("g", 2 * MIB)
        self.cache.opened(inode, digest)
        blob = result_of(self, self.cache.open(inode, digest))
        for i in range(2):
            ranges = result_of(
                self, self.cache.write(blob, i * MIB, self.peer.files["g"][:MIB])
            )
            self.assertEqual(ranges, ByteRanges())
        self.assertEqual(len(self.logged(LogLevel.warn)), 1)
        self.assertIn("read through", self.logged(LogLevel.warn)[0])
        self.assertEqual(
            self.sample("realize_cache_not_kept_bytes_total", arena=ARENA), 2 * MIB
        )
        self.cache.closed(blobs[2].inode)
        self.assertEqual(
            result_of(self, self.cache.write(blob, 0, self.peer.files["g"][:MIB])),
            ByteRanges.of((0, MIB)),
        )
        self.assertNotIn("f2", self.cached_paths())

    def test_low_free_space(self) -> None:
        """
        When the filesystem's free space drops below the reserve, the next
        tick shrinks the cache by the difference (reason C{free_space}),
        with a warning; data is then read through, not kept.
        """
        self.start()
        for i in range(6):
            self.fill(f"f{i}")
        usage = self.cache.policy.usage()
        unit = MIB + FILE_OVERHEAD
        # The limit falls to three blobs and a bit.
        self.free = 5 * MIB - (usage - 3 * unit) + (100 << 10)
        self.cache.config = CacheConfig(size_bytes=self.quota, min_free_bytes=5 * MIB)
        self.clock.advance(TICK_INTERVAL)
        self.assertLessEqual(self.cache.policy.usage(), 3 * MIB + 4 * FILE_OVERHEAD)
        self.assertEqual(self.cached_paths(), {"f3", "f4", "f5"})
        self.assertTrue(
            any("below the reserve" in text for text in self.logged(LogLevel.warn))
        )
        self.assertEqual(
            self.sample(
                "realize_cache_evictions_total",
                arena=ARENA,
                queue=QUEUE_WORKING,
                reason="free_space",
            ),
            3,
        )
        # The space freed counts as free until the next measure: new data
        # takes the room of one blob, not of all of them.
        self.fill("g")
        self.assertEqual(self.cached_paths(), {"f4", "f5", "g"})
        self.free = 0
        self.clock.advance(TICK_INTERVAL)
        self.assertEqual(self.cached_paths(), set())
        inode, digest = self.add_file("h", MIB)
        blob = result_of(self, self.cache.open(inode, digest))
        self.assertEqual(
            result_of(self, self.cache.write(blob, 0, self.peer.files["h"])),
            ByteRanges(),
        )
        self.assertEqual(du(self.directory), 0)

    def test_percent_quota(self) -> None:
        """
        A quota in percent is of the filesystem holding the blobs.
        """
        self.filesystem = 100 * MIB
        self.cache = self.make_cache(CacheConfig(size_percent=5.0))
        self.start()
        self.assertEqual(self.cache.quota, 5 * MIB)
        for i in range(8):
            self.fill(f"f{i}")
        self.assertLessEqual(self.cache.policy.usage(), 5 * MIB)

    def test_reconfigure(self) -> None:
        """
        A smaller quota (SIGHUP) takes effect at once, evicting down to it.
        """
        self.start()
        for i in range(7):
            self.fill(f"f{i}")
        self.successResultOf(self.cache.reconfigure(CacheConfig(size_bytes=3 * MIB)))
        self.assertLessEqual(self.cache.policy.usage(), 3 * MIB)
        self.assertEqual(self.cached_paths(), {"f5", "f6"})

    def test_no_quota(self) -> None:
        """
        Without a quota the cache keeps everything the reserve leaves.
        """
        self.free = 6 * MIB
        self.cache = self.make_cache(CacheConfig(min_free_bytes=0))
        self.start()
        for i in range(4):
            self.fill(f"f{i}")
        self.assertEqual(len(self.cached_paths()), 4)
        self.assertIsNone(self.cache.quota)


class QueueTests(CacheTestCase):
    """
    The protected and pending removal queues through the cache.
    """

    def test_protect(self) -> None:
        """
        L{BlobCache.protect} (for the marks) moves a file's blob to the
        protected queue in the db; it outlives newer working blobs.
        """
        self.start()
        blob = self.fill("keep")
        self.assertFalse(result_of(self, self.cache.protect(blob.inode, h(9))))
        self.assertTrue(result_of(self, self.cache.protect(blob.inode, blob.hash)))
        self.assertFalse(result_of(self, self.cache.protect(blob.inode)))
        self.assertEqual(self.rows()[blob.inode], QUEUE_PROTECTED)
        for i in range(12):
            self.fill(f"f{i}")
        self.assertIn("keep", self.cached_paths())
        self.assertEqual(
            self.sample("realize_cache_admissions_total", arena=ARENA, reason="mark"),
            1,
        )

    def test_mark_of(self) -> None:
        """
        A blob whose file is marked keep (C{mark_of}) enters protected when
        it leaves working.
        """
        self.start()
        blob = self.fill("keep")
        self.marks[blob.inode] = "keep"
        for i in range(12):
            self.fill(f"f{i}")
        self.assertEqual(self.rows()[blob.inode], QUEUE_PROTECTED)

    def test_frequent_survives_scan(self) -> None:
        """
        A file opened again and again (FUSE opens, counted) survives a scan
        of files opened once.
        """
        self.start()
        hot = self.fill("hot")
        for _ in range(3):
            self.cache.opened(hot.inode, hot.hash)
            self.cache.closed(hot.inode)
        for i in range(60):
            # More files than the cache holds between two opens of the hot
            # file: a plain LRU would lose it.
            if i % 10 == 0:
                self.cache.opened(hot.inode, hot.hash)
                self.cache.closed(hot.inode)
                self.assertIn("hot", self.cached_paths())
            inode, digest = self.add_file(f"scan{i}", MIB)
            self.cache.opened(inode, digest)
            self.cache.closed(inode)
            self.fill(f"scan{i}")
        self.assertEqual(self.rows()[hot.inode], QUEUE_PROTECTED)
        self.assertEqual(
            self.sample(
                "realize_cache_admissions_total", arena=ARENA, reason="frequency"
            ),
            1,
        )

    def test_pending_removal(self) -> None:
        """
        A replaced version waits in the pending removal queue (readable for
        its version); the batch job deletes it once kept
        L{PENDING_RETENTION} seconds.
        """
        self.start()
        blob = self.fill("f")
        run(self.db, _txn_replace, self.tree, P, replace("f", MIB, 20, h(2), blob.hash))
        result_of(self, self.cache.outdated())
        self.assertEqual(self.rows(), {blob.inode: QUEUE_PENDING_REMOVAL})
        self.assertIsNotNone(
            read_cached(self.db, self.directory, blob.inode, blob.hash, 0, 10)
        )
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual(self.rows(), {blob.inode: QUEUE_PENDING_REMOVAL})
        self.clock.advance(PENDING_RETENTION)
        self.assertEqual(self.rows(), {})
        self.assertEqual(os.listdir(self.directory), [])
        self.assertEqual(
            self.sample("realize_cache_pending_deleted_total", arena=ARENA), 1
        )

    def test_pending_batches(self) -> None:
        """
        The batch job deletes at most L{PENDING_BATCH} blobs per batch and
        goes on until none is due.
        """
        count = PENDING_BATCH + 3
        for i in range(count):
            cursor = self.db.execute(
                "INSERT INTO blob (inode, hash, size, queue) VALUES (?, ?, 1, ?)",
                (1000 + i, h(1), QUEUE_PENDING_REMOVAL),
            )
            assert cursor.lastrowid is not None
            ensure_blob_file(self.directory, cursor.lastrowid, 1)
        self.db.commit()
        self.start()
        log: list[str] = []
        self.cache.run_interaction = sync_interaction(self.db, log)
        self.clock.advance(PENDING_RETENTION)
        self.assertEqual(log.count("_txn_apply_plan"), 2)
        self.assertEqual(self.rows(), {})
        self.assertEqual(os.listdir(self.directory), [])
        self.assertEqual(
            self.sample("realize_cache_pending_deleted_total", arena=ARENA), count
        )

    def test_pending_first(self) -> None:
        """
        Under pressure, pending removal blobs go before working ones.
        """
        self.start()
        old = self.fill("old")
        for i in range(6):
            self.fill(f"f{i}")
        inode, digest = self.version("f5")
        run(self.db, _txn_replace, self.tree, P, replace("f5", MIB, 30, h(3), digest))
        result_of(self, self.cache.outdated())
        self.fill("g")
        self.assertIn(old.inode, self.rows())
        self.assertNotIn(inode, self.rows())


class ConsistencyTests(CacheTestCase):
    """
    The consistency job, at start (after a crash) and periodically.
    """

    def insert(self, inode: int, queue: str = QUEUE_WORKING, size: int = MIB) -> int:
        cursor = self.db.execute(
            "INSERT INTO blob (inode, hash, size, ranges, queue)"
            " VALUES (?, ?, ?, ?, ?)",
            (inode, h(inode), size, encode_ranges(ByteRanges.of((0, size))), queue),
        )
        self.db.commit()
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def test_start_fixes(self) -> None:
        """
        At start, a row whose file is missing is dropped, a file without a
        row deleted, ranges the file does not hold trimmed, deletions cut
        short by a crash finished, usages measured; it is logged and
        counted.
        """
        missing = self.insert(1)
        half = self.insert(2)
        ensure_blob_file(self.directory, half, MIB)
        write_blob_range(self.directory, half, 0, b"x" * (MIB // 2))
        orphan = 99
        ensure_blob_file(self.directory, orphan, 10)
        deleting = self.insert(3, QUEUE_DELETING)
        ensure_blob_file(self.directory, deleting, MIB)
        self.start()
        self.assertEqual(sorted(os.listdir(self.directory)), [str(half)])
        row = self.db.execute(
            "SELECT ranges, disk_usage FROM blob WHERE id = ?", (half,)
        ).fetchone()
        self.assertEqual(decode_ranges(row[0]), ByteRanges.of((0, MIB // 2)))
        self.assertEqual(row[1], du(self.directory))
        self.assertEqual(
            [int(r[0]) for r in self.db.execute("SELECT id FROM blob")], [half]
        )
        self.assertEqual(self.cache.policy.usage(), du(self.directory) + FILE_OVERHEAD)
        [warning] = self.logged(LogLevel.warn)
        self.assertIn("dropped 1 rows", warning)
        self.assertIn("deleted 1 files", warning)
        self.assertIn("trimmed the ranges of 1 blobs", warning)
        self.assertIn("finished 1 deletions", warning)
        for kind in ("missing", "orphan", "trimmed"):
            self.assertEqual(
                self.sample(
                    "realize_cache_consistency_fixes_total", arena=ARENA, kind=kind
                ),
                1,
            )
        del missing

    def test_kill_during_eviction(self) -> None:
        """
        A daemon killed after marking evicted rows, before removing their
        files: after a restart, rows and files agree again.
        """
        self.start()
        blobs = [self.fill(f"f{i}") for i in range(4)]
        run(self.db, _txn_apply_plan, [], [blobs[0].id, blobs[1].id])
        os.unlink(blob_path(self.directory, blobs[0].id))
        self.cache.stop()
        self.cache = self.make_cache()
        self.start()
        self.assertEqual(
            sorted(os.listdir(self.directory)),
            sorted(str(b.id) for b in blobs[2:]),
        )
        self.assertEqual(
            sorted(int(r[0]) for r in self.db.execute("SELECT id FROM blob")),
            sorted(b.id for b in blobs[2:]),
        )

    def test_periodic(self) -> None:
        """
        The job runs every L{CONSISTENCY_INTERVAL}; rows the cache does not
        track yet (being made) are left alone then.
        """
        self.start()
        blob = self.fill("f")
        os.unlink(blob_path(self.directory, blob.id))
        made = self.insert(7)
        self.clock.advance(CONSISTENCY_INTERVAL)
        self.assertEqual(
            [int(r[0]) for r in self.db.execute("SELECT id FROM blob")], [made]
        )
        self.assertIsNone(self.cache.policy.get(blob.id))

    def test_job_failure_logged(self) -> None:
        """
        A job that fails is logged and runs again next time.
        """
        self.start()

        def broken(path: str) -> tuple[int, int]:
            raise IOFailure(f"statfs of {path}: gone")

        self.cache.space = broken
        self.clock.advance(TICK_INTERVAL)
        self.clock.advance(TICK_INTERVAL)
        errors = self.logged(LogLevel.error)
        self.assertEqual(len(errors), 2)
        self.assertIn("gone", errors[0])


class AccessTests(CacheTestCase):
    """
    Last accesses in the db.
    """

    def test_flush_after_cooldown(self) -> None:
        """
        The tick writes a blob's last access only once per
        L{ACCESS_COOLDOWN}.
        """
        self.start()
        blob = self.fill("f")

        def stored() -> int:
            return int(
                self.db.execute(
                    "SELECT last_access_ns FROM blob WHERE id = ?", (blob.id,)
                ).fetchone()[0]
            )

        first = stored()
        self.cache.read_hit(blob.inode, blob.hash, 1)
        self.clock.advance(TICK_INTERVAL)
        self.assertEqual(stored(), first)
        self.clock.advance(ACCESS_COOLDOWN)
        self.cache.read_hit(blob.inode, blob.hash, 1)
        self.clock.advance(TICK_INTERVAL)
        self.assertEqual(stored(), int(self.clock.seconds() * 1e9))


class DownloadTests(CacheTestCase):
    """
    The downloader reading through the cache: large files (#largedl),
    blobs evicted under a reader.
    """

    quota = 16 * MIB

    def setUp(self) -> None:
        super().setUp()
        self.start()
        self.downloader = Downloader(
            ARENA,
            self.cache,
            self.versions,
            {P: self.peer}.get,
            self.clock,
            self.cache.pins,
            lambda size: self.metrics.fetched(ARENA, size),
        )
        self.addCleanup(self.downloader.close)

    async def versions(self, inode: int) -> FileVersion | None:
        return file_version(self.db, ARENA, ROOT, inode)

    def read(self, path: str, offset: int, size: int) -> bytes:
        return self.successResultOf(
            Deferred.fromCoroutine(
                self.downloader.read(inode_of(self.db, path), offset, size)
            )
        )

    def read_all(self, path: str, step: int = 128 << 10) -> bytes:
        size = len(self.peer.files[path])
        parts = []
        for offset in range(0, size, step):
            parts.append(self.read(path, offset, step))
            self.assertLessEqual(du(self.directory), self.quota + tolerance(self.quota))
        return b"".join(parts)

    def blob_bytes(self, path: str) -> int:
        row = self.db.execute(
            "SELECT ranges FROM blob WHERE inode = ?", (inode_of(self.db, path),)
        ).fetchone()
        return 0 if row is None else decode_ranges(row[0]).total()

    def test_large_sequential(self) -> None:
        """
        A file larger than the working area read sequentially streams
        through a bounded window: the bytes read are right, the blob never
        holds more than the window, and the small cached files survive.
        """
        for i in range(4):
            self.add_file(f"small{i}", MIB)
            self.read_all(f"small{i}")
        self.add_file("big", 3 * self.quota)
        window = min(STREAM_WINDOW, self.quota // 2)
        size = len(self.peer.files["big"])
        step = 128 << 10
        for offset in range(0, size, step):
            self.assertEqual(
                self.read("big", offset, step),
                self.peer.files["big"][offset : offset + step],
            )
            self.assertLessEqual(self.blob_bytes("big"), window + LEAF_SIZE)
        self.assertEqual(
            self.cached_paths() & {f"small{i}" for i in range(4)},
            {f"small{i}" for i in range(4)},
        )
        self.assertGreater(
            self.sample("realize_cache_released_bytes_total", arena=ARENA), 0
        )

    def test_large_random(self) -> None:
        """
        Random reads of a file larger than the working area keep only what
        was read, at most half the working area; the small files survive.
        """
        for i in range(4):
            self.add_file(f"small{i}", MIB)
            self.read_all(f"small{i}")
        self.add_file("big", 3 * self.quota)
        data = self.peer.files["big"]
        pieces = len(data) // LEAF_SIZE
        order = [(5 + i * 17) % pieces for i in range(pieces)]
        for piece in order:
            offset = piece * LEAF_SIZE + 100
            self.assertEqual(
                self.read("big", offset, 4096), data[offset : offset + 4096]
            )
            self.assertLessEqual(self.blob_bytes("big"), self.quota // 2)
        self.assertEqual(self.peer.read_bytes, 4 * MIB + pieces * LEAF_SIZE)
        self.assertEqual(len(self.cached_paths()), 5)

    def test_evicted_under_reader(self) -> None:
        """
        A blob evicted while the downloader counts on its bytes: the read
        opens a new blob and fetches again, with the right bytes.
        """
        self.add_file("f", 2 * MIB)
        self.read_all("f")
        blob = self.cache.policy.find(
            inode_of(self.db, "f"), root_of(data_of("f", 2 * MIB))
        )
        assert blob is not None
        self.successResultOf(self.cache.reconfigure(CacheConfig(size_bytes=0)))
        self.assertEqual(self.rows(), {})
        self.successResultOf(self.cache.reconfigure(CacheConfig(size_bytes=self.quota)))
        self.assertEqual(self.read("f", 10, 100), self.peer.files["f"][10:110])
        self.assertGreaterEqual(self.blob_bytes("f"), MIB)

    def test_fetched_metric(self) -> None:
        """
        Bytes downloaded are counted.
        """
        self.add_file("f", 2 * MIB)
        self.read_all("f")
        self.assertEqual(
            self.sample("realize_cache_fetched_bytes_total", arena=ARENA), 2 * MIB
        )
