"""
Tests for the pure policy of the block cache, L{realize.storage.cache}:
L{CachePolicy} over an in-memory blob table, with a L{Clock} for time.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from realize.storage.blobs import (
    QUEUE_DELETING,
    QUEUE_PENDING_REMOVAL,
    QUEUE_PROTECTED,
    QUEUE_WORKING,
)
from realize.storage.cache import (
    ACCESS_COOLDOWN,
    ADMIT_MIN_FREQUENCY,
    EVICTION_SLACK,
    FILE_OVERHEAD,
    HALVING_PERIOD,
    PROTECTED_SHARE,
    REASON_ADMISSION,
    REASON_FREE_SPACE,
    REASON_QUOTA,
    CacheEntry,
    CachePolicy,
    FrequencySketch,
    Pins,
    effective_limit,
    estimate_growth,
    tolerance,
)

MIB = 1 << 20

#: What one 1 MiB blob counts for.
UNIT = MIB + FILE_OVERHEAD


class Table:
    """
    An in-memory blob table: a policy, a clock, marks and pins.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.marks: dict[int, str] = {}
        self.pins = Pins()
        self.policy = CachePolicy(self.marks.get, self.pins.held)
        self.next_id = 1

    def add(
        self, inode: int, size: int = MIB, queue: str = QUEUE_WORKING
    ) -> CacheEntry:
        """
        A blob of C{size} bytes, all on disk, the most recently used.
        """
        now = self.clock.seconds()
        entry = CacheEntry(
            self.next_id, inode, b"h%d" % inode, size, size, queue, now, now, now
        )
        self.next_id += 1
        self.policy.add(entry)
        self.clock.advance(1)
        return entry

    def open(self, inode: int, times: int = 1) -> None:
        """
        Open a file C{times} times (frequency and recency).
        """
        for _ in range(times):
            self.policy.counted(inode, self.clock.seconds())
            entry = self.policy.find(inode, b"h%d" % inode)
            if entry is not None:
                self.policy.accessed(entry.id, self.clock.seconds())
        self.clock.advance(1)

    def inodes(self, queue: str) -> list[int]:
        return [entry.inode for entry in self.policy.entries(queue)]

    def reserve(self, inode: int, nbytes: int, limit: int) -> list[int] | None:
        entry = self.policy.find(inode, b"h%d" % inode)
        assert entry is not None
        evictions = self.policy.reserve(entry.id, nbytes, limit, self.clock.seconds())
        if evictions is None:
            return None
        self.policy.forgotten([e.id for e in evictions])
        return [e.inode for e in evictions]


class FunctionTests(SynchronousTestCase):
    """
    The accounting helpers.
    """

    def test_effective_limit(self) -> None:
        """
        The limit is the quota while the free space stays above the
        reserve; below it, the cache shrinks by the difference, to nothing
        at worst; without a quota it is what the reserve leaves.
        """
        self.assertEqual(effective_limit(100, 50, 1000, 10), 100)
        self.assertEqual(effective_limit(100, 50, 30, 40), 40)
        self.assertEqual(effective_limit(100, 50, 0, 100), 0)
        self.assertEqual(effective_limit(None, 50, 200, 100), 150)

    def test_tolerance_and_growth(self) -> None:
        """
        The tolerance is 2% of the limit, at least 1 MiB; a write's growth
        is counted in whole blocks.
        """
        self.assertEqual(tolerance(10 * MIB), MIB)
        self.assertEqual(tolerance(1000 * MIB), 20 * MIB)
        self.assertEqual(estimate_growth(1), 4096)
        self.assertEqual(estimate_growth(8192), 8192)
        self.assertEqual(estimate_growth(0), 0)


class SketchTests(SynchronousTestCase):
    """
    L{FrequencySketch}.
    """

    def test_counts(self) -> None:
        """
        The estimate never undercounts (a count-min sketch), up to the
        ceiling; keys not seen are near 0.
        """
        sketch = FrequencySketch(sample_size=10**9)
        for key in range(200):
            for _ in range(key % 7):
                sketch.increment(key)
        for key in range(200):
            self.assertGreaterEqual(sketch.estimate(key), key % 7)
        self.assertLessEqual(sum(sketch.estimate(k) for k in range(1000, 1200)), 20)
        for _ in range(40):
            sketch.increment(5)
        self.assertEqual(sketch.estimate(5), sketch.max_count)

    def test_halving_by_sample(self) -> None:
        """
        The counters are halved once the sample is full.
        """
        sketch = FrequencySketch(sample_size=12)
        for _ in range(8):
            sketch.increment(1)
        for _ in range(3):
            sketch.increment(2)
        self.assertEqual((sketch.estimate(1), sketch.estimate(2)), (8, 3))
        sketch.increment(3)
        self.assertEqual((sketch.estimate(1), sketch.estimate(2)), (4, 1))

    def test_halving_by_time(self) -> None:
        """
        L{FrequencySketch.age} halves the counters once per
        L{HALVING_PERIOD}.
        """
        sketch = FrequencySketch()
        for _ in range(6):
            sketch.increment(9)
        self.assertFalse(sketch.age(0.0))
        self.assertFalse(sketch.age(HALVING_PERIOD - 1))
        self.assertEqual(sketch.estimate(9), 6)
        self.assertTrue(sketch.age(HALVING_PERIOD))
        self.assertEqual(sketch.estimate(9), 3)

    def test_bad_shape(self) -> None:
        """
        The width is a power of 2 and the depth 1 to 4.
        """
        self.assertRaises(ValueError, FrequencySketch, width=1000)
        self.assertRaises(ValueError, FrequencySketch, depth=5)


class PolicyTests(SynchronousTestCase):
    """
    L{CachePolicy}: queues, admission and eviction.
    """

    def setUp(self) -> None:
        self.table = Table()
        self.policy = self.table.policy

    def test_lru_order(self) -> None:
        """
        Room is made by evicting the least recently used blob of the
        working queue; an access makes a blob the most recent.
        """
        t = self.table
        for inode in (1, 2, 3, 4):
            t.add(inode)
        t.policy.accessed(t.policy.find(1, b"h1").id, t.clock.seconds())  # type: ignore[union-attr]
        self.assertEqual(t.inodes(QUEUE_WORKING), [2, 3, 4, 1])
        self.assertEqual(t.reserve(1, MIB, 4 * UNIT + MIB // 2), [2])
        self.assertEqual(t.inodes(QUEUE_WORKING), [3, 4, 1])

    def test_reserve_within_limit(self) -> None:
        """
        A reservation that fits evicts nothing and counts at once; one that
        does not fit evicts down to the limit less the slack, and the
        usage never passes the limit.
        """
        t = self.table
        for inode in range(1, 11):
            t.add(inode)
        limit = 12 * UNIT
        self.assertEqual(t.reserve(10, MIB, limit), [])
        self.assertEqual(self.policy.usage(), 10 * UNIT + MIB)
        # Over by about one blob: two go, for the slack.
        evicted = t.reserve(9, 2 * MIB, limit)
        self.assertEqual(evicted, [1, 2])
        self.assertLessEqual(self.policy.usage(), limit)
        self.assertLessEqual(
            self.policy.usage(), limit - int(limit * EVICTION_SLACK) + 2 * MIB
        )

    def test_written_replaces_reservation(self) -> None:
        """
        Once written, a reservation gives way to the file's measured usage;
        an undone one is given back.
        """
        t = self.table
        entry = t.add(1, size=10 * MIB)
        base = self.policy.usage()
        t.reserve(1, MIB, 100 * MIB)
        self.policy.written(entry.id, MIB, entry.disk_usage + MIB + 4096)
        self.assertEqual(self.policy.usage(), base + MIB + 4096)
        t.reserve(1, MIB, 100 * MIB)
        self.policy.unreserve(entry.id, MIB)
        self.assertEqual(self.policy.usage(), base + MIB + 4096)

    def test_cooldown(self) -> None:
        """
        Accesses reach the db at most once per L{ACCESS_COOLDOWN} per blob;
        the LRU order in memory follows every access.
        """
        t = self.table
        a = t.add(1)
        b = t.add(2)
        self.assertEqual(self.policy.take_accesses(), [])
        t.clock.advance(ACCESS_COOLDOWN)
        self.policy.accessed(a.id, t.clock.seconds())
        self.assertEqual(
            self.policy.take_accesses(), [(a.id, int(t.clock.seconds() * 1e9))]
        )
        for _ in range(10):
            t.clock.advance(1)
            self.policy.accessed(a.id, t.clock.seconds())
            self.policy.accessed(b.id, t.clock.seconds())
        # b's first access since it was made is written, once.
        self.assertEqual([i for i, _ in self.policy.take_accesses()], [b.id])
        self.assertEqual(self.policy.take_accesses(), [])
        self.assertEqual(t.inodes(QUEUE_WORKING), [1, 2])
        self.policy.accessed(a.id, t.clock.seconds())
        self.assertEqual(t.inodes(QUEUE_WORKING), [2, 1])
        t.clock.advance(ACCESS_COOLDOWN)
        self.policy.accessed(a.id, t.clock.seconds())
        self.assertEqual([i for i, _ in self.policy.take_accesses()], [a.id])

    def test_admission_by_frequency(self) -> None:
        """
        A blob leaving working enters protected if it was used at least
        L{ADMIT_MIN_FREQUENCY} times while protected has room; a blob used
        once is deleted.
        """
        t = self.table
        t.add(1)
        t.add(2)
        t.add(3)
        t.open(1, ADMIT_MIN_FREQUENCY)
        t.open(2, ADMIT_MIN_FREQUENCY - 1)
        t.policy.accessed(t.policy.find(3, b"h3").id, t.clock.seconds())  # type: ignore[union-attr]
        # 1 and 2 are the least recent; 1 is kept, 2 goes.
        evicted = t.reserve(3, MIB, 3 * UNIT + MIB // 2)
        self.assertEqual(evicted, [2])
        self.assertEqual(t.inodes(QUEUE_PROTECTED), [1])
        self.assertEqual(self.policy.admissions, {"frequency": 1})

    def test_tinylfu_against_victim(self) -> None:
        """
        With protected full, a candidate enters only if it is used more
        often than the protected victims it displaces (they are evicted,
        reason C{admission}); otherwise it is evicted itself.
        """
        t = self.table
        limit = 10 * UNIT
        cap = int(limit * PROTECTED_SHARE)
        protected = [t.add(100 + i, queue=QUEUE_PROTECTED) for i in range(8)]
        self.assertLessEqual(self.policy.usage(QUEUE_PROTECTED), cap)
        for entry in protected:
            t.open(entry.inode, 3)
        t.add(1)
        t.add(2)
        t.open(1, 5)  # beats 3
        t.open(2, 2)  # does not
        new = t.add(3)
        evictions = self.policy.reserve(new.id, 2 * MIB, limit, t.clock.seconds())
        assert evictions is not None
        got = [(e.inode, e.queue, e.reason) for e in evictions]
        self.assertIn((100, QUEUE_PROTECTED, REASON_ADMISSION), got)
        self.assertIn((2, QUEUE_WORKING, REASON_QUOTA), got)
        self.assertIn(1, t.inodes(QUEUE_PROTECTED))
        self.assertLessEqual(self.policy.usage(QUEUE_PROTECTED), cap)

    def test_protected_by_mark(self) -> None:
        """
        A blob marked keep or own enters protected whatever its frequency,
        and is not displaced by a frequent blob; moving to protected frees
        nothing, so unmarked working blobs go.
        """
        t = self.table
        for inode in (1, 2, 3, 4):
            t.add(inode)
        t.marks[1] = "keep"
        t.marks[2] = "own"
        evicted = t.reserve(4, MIB, 4 * UNIT + MIB // 2)
        self.assertEqual(evicted, [3])
        self.assertEqual(t.inodes(QUEUE_PROTECTED), [1, 2])
        self.assertEqual(self.policy.admissions, {"mark": 2})

    def test_marked_not_displaced(self) -> None:
        """
        A frequent blob cannot displace marked blobs from a full protected
        queue: it goes instead.
        """
        t = self.table
        t.add(1, queue=QUEUE_PROTECTED)
        t.add(2, queue=QUEUE_PROTECTED)
        t.marks[1] = t.marks[2] = "keep"
        t.add(5, size=2 * MIB)
        t.open(5, 10)
        t.add(6)
        evicted = t.reserve(6, MIB, 3 * UNIT + 3 * MIB // 2)
        self.assertEqual(evicted, [5])
        self.assertEqual(t.inodes(QUEUE_PROTECTED), [1, 2])

    def test_marked_last_resort(self) -> None:
        """
        Under pressure the protected queue gives its unmarked blobs first,
        marked ones only when nothing else is left.
        """
        t = self.table
        keep = t.add(1, queue=QUEUE_PROTECTED)
        t.marks[1] = "keep"
        t.add(2, queue=QUEUE_PROTECTED)
        t.add(3)
        self.assertEqual(t.reserve(3, MIB, 3 * UNIT + MIB // 2), [2])
        self.assertEqual(t.reserve(3, MIB, 3 * UNIT + MIB // 2), [1])
        self.assertIsNone(self.policy.get(keep.id))

    def test_pending_first(self) -> None:
        """
        Blobs pending removal are evicted before anything else, even more
        recent ones.
        """
        t = self.table
        t.add(1)
        t.add(2, queue=QUEUE_PROTECTED)
        old = t.add(3)
        t.add(4)
        self.policy.to_pending(old.id, t.clock.seconds())
        self.assertEqual(t.inodes(QUEUE_PENDING_REMOVAL), [3])
        self.assertEqual(t.reserve(4, MIB, 4 * UNIT + MIB // 2), [3])
        self.assertEqual(t.inodes(QUEUE_WORKING), [1, 4])

    def test_due_pending(self) -> None:
        """
        The pending removal batches take the blobs kept longer than the
        retention, oldest first, at most a batch, never pinned ones.
        """
        t = self.table
        entries = [t.add(i) for i in range(1, 6)]
        for entry in entries:
            self.policy.to_pending(entry.id, t.clock.seconds())
            t.clock.advance(10)
        t.pins.hold(2)
        now = t.clock.seconds()
        self.assertEqual(self.policy.due_pending(now, 1000, 10), [])
        due = self.policy.due_pending(now, 25, 2)
        self.assertEqual(
            [(e.inode, e.reason) for e in due], [(1, "pending"), (3, "pending")]
        )
        self.assertEqual(t.inodes(QUEUE_PENDING_REMOVAL), [2, 4, 5])

    def test_revive(self) -> None:
        """
        A pending blob whose version is the default again goes back to
        working.
        """
        t = self.table
        entry = t.add(1)
        self.policy.to_pending(entry.id, 0)
        self.policy.revive(entry.id, 0)
        self.assertEqual(t.inodes(QUEUE_WORKING), [1])
        self.assertEqual(self.policy.take_moves(), [])

    def test_open_never_evicted(self) -> None:
        """
        Pinned blobs (open, being written) are never evicted: room comes
        from the others, and when they are not enough nothing is evicted
        and nothing reserved.
        """
        t = self.table
        t.add(1)
        t.add(2)
        t.add(3)
        t.pins.hold(1)
        self.assertEqual(t.reserve(3, MIB, 3 * UNIT + MIB // 2), [2])
        before = self.policy.usage()
        self.assertIsNone(t.reserve(3, 2 * MIB, 3 * UNIT))
        self.assertEqual(self.policy.usage(), before)
        self.assertEqual(t.inodes(QUEUE_WORKING), [1, 3])
        t.pins.drop(1)
        self.assertEqual(t.reserve(3, MIB, 2 * UNIT + 3 * MIB // 2), [1])

    def test_quota_shrink(self) -> None:
        """
        When the limit shrinks (less free space than the reserve, or a new
        quota), L{CachePolicy.enforce} evicts down to it, skipping pinned
        blobs.
        """
        t = self.table
        for inode in range(1, 9):
            t.add(inode)
        t.pins.hold(1)
        limit = effective_limit(100 * MIB, self.policy.usage(), 2 * MIB, 5 * MIB)
        self.assertLess(limit, self.policy.usage())
        evictions = self.policy.enforce(limit, t.clock.seconds(), REASON_FREE_SPACE)
        # Three blobs and the slack: four go, the least recent unpinned.
        self.assertEqual([e.inode for e in evictions], [2, 3, 4, 5])
        self.assertEqual({e.reason for e in evictions}, {REASON_FREE_SPACE})
        self.assertLessEqual(self.policy.planned, limit)
        self.assertEqual(self.policy.enforce(limit, t.clock.seconds()), [])

    def test_deleting_counts_until_forgotten(self) -> None:
        """
        An evicted blob's bytes count in the usage until its file is gone,
        but not for decisions.
        """
        t = self.table
        t.add(1)
        t.add(2)
        entry = self.policy.find(2, b"h2")
        assert entry is not None
        evictions = self.policy.reserve(entry.id, MIB, 2 * UNIT + MIB // 2, 0)
        assert evictions is not None
        self.assertEqual([e.inode for e in evictions], [1])
        self.assertEqual(self.policy.usage(), 2 * UNIT + MIB)
        self.assertEqual(self.policy.planned, UNIT + MIB)
        self.policy.forgotten([evictions[0].id])
        self.assertEqual(self.policy.usage(), UNIT + MIB)

    def test_protect_and_discard(self) -> None:
        """
        L{CachePolicy.protect} moves a blob to protected (written to the db
        by the caller: L{CachePolicy.take_moves}); L{CachePolicy.discard}
        forgets one without evicting it.
        """
        t = self.table
        entry = t.add(1)
        self.assertTrue(self.policy.protect(entry.id, 0))
        self.assertFalse(self.policy.protect(entry.id, 0))
        self.assertEqual(self.policy.take_moves(), [(entry.id, QUEUE_PROTECTED)])
        self.assertEqual(self.policy.working_area(10 * UNIT), 9 * UNIT)
        self.policy.discard(entry.id)
        self.assertEqual((len(self.policy), self.policy.usage()), (0, 0))
        self.assertIsNone(self.policy.find(1, b"h1"))

    def test_unknown_queue(self) -> None:
        """
        Only the three queues are accepted.
        """
        self.assertRaises(
            ValueError,
            self.policy.add,
            CacheEntry(1, 1, b"h", 1, 1, QUEUE_DELETING, 0.0),
        )

    def test_scan_resistance(self) -> None:
        """
        A hot set read again and again survives a scan of many files read
        once, through a cache smaller than the scan: the scan goes through
        working, the hot set lives in protected.
        """
        t = self.table
        limit = 20 * UNIT
        hot = list(range(1, 5))
        scan = iter(range(1000, 1600))

        def read(inode: int) -> None:
            t.open(inode)
            if t.policy.find(inode, b"h%d" % inode) is None:
                t.add(inode, size=0)
                entry = t.policy.find(inode, b"h%d" % inode)
                assert entry is not None
                evictions = self.policy.reserve(entry.id, MIB, limit, t.clock.seconds())
                assert evictions is not None
                self.policy.forgotten([e.id for e in evictions])
                self.policy.written(entry.id, MIB, MIB)

        for _ in range(3):
            for inode in hot:
                read(inode)
        hits = 0
        # Between two reads of the hot set, more files than the cache holds:
        # a plain LRU would lose the hot set every time.
        for step in range(600):
            read(next(scan))
            if step % 30 == 29:
                for inode in hot:
                    hits += t.policy.find(inode, b"h%d" % inode) is not None
                    read(inode)
        self.assertEqual(hits, 20 * len(hot))
        self.assertLessEqual(self.policy.usage(), limit)
