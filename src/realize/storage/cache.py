"""
The block cache's policy (issue 11; DESIGN.md section 10, Blobstore): the
pure logic that keeps an arena's blobs within a quota, over an in-memory
copy of the C{blob} table (L{CachePolicy}), the C{_txn_*} functions that
keep the table in step, and the blocking file functions of the
consistency job and of the large-file window.

Three queues (the C{blob.queue} column):

    - I{working}: every new blob; least recently used first.
    - I{protected}: entered only on eviction from working, by a blob whose
      effective mark is C{keep} or C{own}, or whose TinyLFU frequency
      estimate (L{FrequencySketch}) beats the protected queue's victim;
      frequency-admitted blobs hold at most L{PROTECTED_SHARE} of the
      limit.
    - I{pending removal}: versions that stopped being the default, kept
      for delta repair and offline reads, evicted first, deleted in
      batches (L{CachePolicy.due_pending}).

Accounting: a blob uses C{st_blocks * 512} of its file plus
L{FILE_OVERHEAD}; a write reserves its bytes before it happens
(L{CachePolicy.reserve}), so the usage never passes the limit: the
C{du} of C{blobs/} stays within L{tolerance} of it.  The limit is the
quota, shrunk when the filesystem's free space drops below the reserve
(L{effective_limit}).  Pinned blobs (open files, writes in flight) are
never evicted.

Deleting a blob, in this order (a crash at any step is reconciled by the
consistency job, L{inspect_blob_files} and L{_txn_fix}): its row is marked
C{deleting} (L{_txn_apply_plan}), its file removed, then its row
(L{realize.storage.blobs._txn_forget}).

Times are in seconds (the reactor's clock); C{last_access_ns} in the db
is written at most once per L{ACCESS_COOLDOWN} per blob.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from attrs import define, field, frozen

from realize.errors import IOFailure
from realize.model import ByteRanges
from realize.storage import fs
from realize.storage.blobs import (
    QUEUE_DELETING,
    QUEUE_PENDING_REMOVAL,
    QUEUE_PROTECTED,
    QUEUE_WORKING,
    blob_path,
    decode_ranges,
    encode_ranges,
)

__all__ = [
    "ACCESS_COOLDOWN",
    "ADMIT_MIN_FREQUENCY",
    "BLOCK_SIZE",
    "FILE_OVERHEAD",
    "HALVING_PERIOD",
    "PROTECTED_SHARE",
    "PROTECTING_MARKS",
    "QUEUES",
    "REASON_ADMISSION",
    "REASON_FREE_SPACE",
    "REASON_QUOTA",
    "CacheEntry",
    "CachePolicy",
    "Eviction",
    "FrequencySketch",
    "Inspection",
    "Pins",
    "effective_limit",
    "estimate_growth",
    "inspect_blob_files",
    "list_blob_files",
    "tolerance",
]

Cursor = sqlite3.Cursor

#: Share of the limit that blobs admitted by frequency may hold in the
#: protected queue (blobs marked keep/own may hold more).
PROTECTED_SHARE: Final = 0.8

#: Seconds within which a blob's accesses are not written to the db
#: again: hot reads do not rewrite it (the LRU order in memory is exact).
ACCESS_COOLDOWN: Final = 60.0

#: Bytes counted per blob beyond its file's blocks (inode, db row).
FILE_OVERHEAD: Final = 4096

#: Allocation unit assumed for a write's estimate, in bytes.
BLOCK_SIZE: Final = 4096

#: Frequency estimate a blob needs to enter the protected queue while the
#: queue has room (seen more than once).
ADMIT_MIN_FREQUENCY: Final = 2

#: Seconds after which the frequency counters are halved even if few
#: accesses came (they are also halved every L{FrequencySketch} sample).
HALVING_PERIOD: Final = 3600.0

#: Share of the limit evicted beyond what a write needs, so that a full
#: cache does not evict on every write.
EVICTION_SLACK: Final = 1 / 128

#: Marks whose blobs go to the protected queue (DESIGN.md section 11).
PROTECTING_MARKS: Final = frozenset({"keep", "own"})

#: The queues, in eviction order.
QUEUES: Final = (QUEUE_PENDING_REMOVAL, QUEUE_WORKING, QUEUE_PROTECTED)

#: Why a blob was evicted: room for new data within the quota; the
#: filesystem's free space fell below the reserve; beaten for a place in
#: the protected queue by a more frequent blob.
REASON_QUOTA: Final = "quota"
REASON_FREE_SPACE: Final = "free_space"
REASON_ADMISSION: Final = "admission"


def tolerance(limit: int) -> int:
    """
    How far the disk usage of C{blobs/} (C{du}) may pass the limit: the
    estimates of writes in flight against the blocks the filesystem
    gives them, and its metadata.

    @param limit: the limit in bytes.
    @return: bytes: 2% of the limit, at least 1 MiB.
    """
    return max(limit // 50, 1 << 20)


def effective_limit(quota: int | None, usage: int, free: int, min_free: int) -> int:
    """
    The bytes the cache may use now: the quota, shrunk when the free space
    of the filesystem is below the reserve.

    @param quota: the quota in bytes, or C{None} for none.
    @param usage: bytes the cache uses now.
    @param free: bytes free on the filesystem now.
    @param min_free: the reserve in bytes.
    @return: the limit in bytes, at least 0.
    """
    room = usage + free - min_free
    return max(0, room if quota is None else min(quota, room))


def estimate_growth(nbytes: int) -> int:
    """
    @param nbytes: bytes about to be written into a blob's hole.
    @return: the disk usage they will add, in whole blocks.
    """
    return -(-nbytes // BLOCK_SIZE) * BLOCK_SIZE


_MASK64 = (1 << 64) - 1
_SEEDS = (
    0x9E3779B97F4A7C15,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0xD6E8FEB86659FD93,
)
_HALF = bytes(i >> 1 for i in range(256))


@define(eq=False)
class FrequencySketch:
    """
    TinyLFU's frequency estimate: a count-min sketch of small counters
    (at most L{max_count}), halved every C{sample_size} additions and
    every L{HALVING_PERIOD} seconds, so old popularity fades.

    @ivar width: counters per row, a power of 2.
    @ivar depth: rows (hash functions), at most 4.
    @ivar max_count: the counters' ceiling.
    @ivar sample_size: additions between two halvings.
    """

    width: int = 1 << 16
    depth: int = 4
    max_count: int = 15
    sample_size: int = 640
    _table: bytearray = field(init=False, repr=False)
    _additions: int = field(default=0, init=False)
    _halved_at: float | None = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.width & (self.width - 1) or not 0 < self.depth <= len(_SEEDS):
            raise ValueError("the width must be a power of 2, the depth 1 to 4")
        self._table = bytearray(self.width * self.depth)

    def _slots(self, key: int) -> Iterator[int]:
        shift = 65 - self.width.bit_length()
        mixed = ((key ^ (key >> 31)) + 1) & _MASK64
        for row in range(self.depth):
            h = (mixed * _SEEDS[row]) & _MASK64
            yield row * self.width + (h >> shift if shift < 64 else 0)

    def increment(self, key: int) -> None:
        """
        Count one access of C{key}; halve every counter once the sample is
        full.
        """
        table = self._table
        for slot in self._slots(key):
            if table[slot] < self.max_count:
                table[slot] += 1
        self._additions += 1
        if self._additions >= self.sample_size:
            self.halve()

    def estimate(self, key: int) -> int:
        """
        @return: the estimated recent accesses of C{key}.
        """
        return min(self._table[slot] for slot in self._slots(key))

    def halve(self) -> None:
        """
        Halve every counter (TinyLFU's reset).
        """
        self._table = bytearray(self._table.translate(_HALF))
        self._additions //= 2

    def age(self, now: float) -> bool:
        """
        Halve the counters if L{HALVING_PERIOD} passed since the last time
        this was asked to.

        @return: whether they were halved.
        """
        if self._halved_at is None:
            self._halved_at = now
            return False
        if now - self._halved_at < HALVING_PERIOD:
            return False
        self._halved_at = now
        self.halve()
        return True


@define(eq=False)
class CacheEntry:
    """
    One blob as the policy sees it.

    @ivar id: the blob id.
    @ivar inode: the file.
    @ivar hash: the version.
    @ivar size: the version's size in bytes.
    @ivar disk_usage: C{st_blocks * 512} of its file, as last measured.
    @ivar queue: one of L{QUEUES}, or C{deleting} once evicted.
    @ivar last_access: seconds; the LRU order.
    @ivar stored_access: the last access written to the db, seconds.
    @ivar since: when it entered its queue, seconds.
    @ivar reserved: bytes reserved by writes in flight.
    """

    id: int
    inode: int
    hash: bytes
    size: int
    disk_usage: int
    queue: str
    last_access: float
    stored_access: float = 0.0
    since: float = 0.0
    reserved: int = 0

    @property
    def usage(self) -> int:
        """
        @return: the bytes it counts for: its blocks, the overhead and its
            reservations.
        """
        return self.disk_usage + FILE_OVERHEAD + self.reserved


@frozen
class Eviction:
    """
    A blob the policy took out of the cache: its row is to be marked
    deleting, its file removed, then its row.

    @ivar id: the blob.
    @ivar inode: its file.
    @ivar queue: the queue it left.
    @ivar reason: L{REASON_QUOTA}, L{REASON_FREE_SPACE} or
        L{REASON_ADMISSION}; C{pending} for the pending-removal batches.
    @ivar usage: bytes it counted for.
    """

    id: int
    inode: int
    queue: str
    reason: str
    usage: int


@define(eq=False)
class Pins:
    """
    Files whose blobs may not be evicted now (open through FUSE, being
    downloaded), counted per inode; thread-safe (FUSE threads open and
    release, the reactor asks).
    """

    _counts: dict[int, int] = field(factory=dict)
    _lock: threading.Lock = field(factory=threading.Lock)

    def hold(self, inode: int) -> None:
        """
        Pin a file's blobs once more.
        """
        with self._lock:
            self._counts[inode] = self._counts.get(inode, 0) + 1

    def drop(self, inode: int) -> None:
        """
        Undo one L{hold}.
        """
        with self._lock:
            count = self._counts.get(inode, 0) - 1
            if count > 0:
                self._counts[inode] = count
            else:
                self._counts.pop(inode, None)

    def held(self, inode: int) -> bool:
        """
        @return: whether a file's blobs are pinned.
        """
        return inode in self._counts


def _no_mark(inode: int) -> str | None:
    return None


def _not_pinned(inode: int) -> bool:
    return False


@define(eq=False)
class CachePolicy:
    """
    The queues of one arena's blobs and the decisions over them, in
    memory (reactor thread only).  Decisions change this state at once;
    the caller writes them to the db (L{take_moves}, L{Eviction}s) and
    reports deletions done (L{forgotten}).

    @ivar mark_of: the effective mark of a file (C{"keep"}, C{"own"},
        C{"watch"} or C{None}); must answer from memory.
    @ivar pinned: whether a file's blob may not be evicted now (open, or
        being written).
    @ivar sketch: the frequency estimate, by inode.
    """

    mark_of: Callable[[int], str | None] = _no_mark
    pinned: Callable[[int], bool] = _not_pinned
    sketch: FrequencySketch = field(factory=FrequencySketch)
    _queues: dict[str, OrderedDict[int, CacheEntry]] = field(
        factory=lambda: {queue: OrderedDict() for queue in QUEUES}
    )
    _usage: dict[str, int] = field(factory=lambda: dict.fromkeys(QUEUES, 0))
    _versions: dict[tuple[int, bytes], int] = field(factory=dict)
    _deleting: dict[int, CacheEntry] = field(factory=dict)
    _deleting_usage: int = 0
    _moves: dict[int, str] = field(factory=dict)
    _dirty: set[int] = field(factory=set)
    admissions: dict[str, int] = field(factory=dict)

    # Reading.

    def get(self, blob_id: int) -> CacheEntry | None:
        """
        @return: a live (not deleting) blob's entry, or C{None}.
        """
        for queue in self._queues.values():
            entry = queue.get(blob_id)
            if entry is not None:
                return entry
        return None

    def find(self, inode: int, digest: bytes) -> CacheEntry | None:
        """
        @return: the live blob of a version, or C{None}.
        """
        blob_id = self._versions.get((inode, digest))
        return None if blob_id is None else self.get(blob_id)

    def entries(self, queue: str) -> list[CacheEntry]:
        """
        @return: a queue's blobs, least recently used first.
        """
        return list(self._queues[queue].values())

    def count(self, queue: str) -> int:
        """
        @return: the number of blobs in a queue.
        """
        return len(self._queues[queue])

    def usage(self, queue: str | None = None) -> int:
        """
        @param queue: one queue, or C{None} for all (blobs being deleted
            included: their files are still there).
        @return: bytes.
        """
        if queue is None:
            return sum(self._usage.values()) + self._deleting_usage
        return self._usage[queue]

    @property
    def planned(self) -> int:
        """
        @return: the bytes of the live blobs (deletions under way do not
            count): what eviction decisions are made on.
        """
        return sum(self._usage.values())

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def working_area(self, limit: int) -> int:
        """
        @param limit: the limit in bytes.
        @return: the bytes left to the working queue beside the protected
            one: a file larger than this is streamed through a window
            (#largedl).
        """
        return max(0, limit - self._usage[QUEUE_PROTECTED])

    # Changes from outside.

    def add(self, entry: CacheEntry) -> None:
        """
        Track a blob (loaded from the db, or just made), as the most
        recently used of its queue.
        """
        if entry.queue not in self._queues:
            raise ValueError(f"blob {entry.id}: unknown queue {entry.queue!r}")
        self.discard(entry.id)
        self._queues[entry.queue][entry.id] = entry
        self._usage[entry.queue] += entry.usage
        self._versions[(entry.inode, entry.hash)] = entry.id

    def discard(self, blob_id: int) -> CacheEntry | None:
        """
        Forget a blob without evicting it (its row went: the consistency
        job dropped it, or the blob was deleted elsewhere).

        @return: its entry, if it was tracked.
        """
        entry = self.get(blob_id)
        if entry is None:
            gone = self._deleting.pop(blob_id, None)
            if gone is not None:
                self._deleting_usage -= gone.usage
            return gone
        del self._queues[entry.queue][blob_id]
        self._usage[entry.queue] -= entry.usage
        if self._versions.get((entry.inode, entry.hash)) == blob_id:
            del self._versions[(entry.inode, entry.hash)]
        self._moves.pop(blob_id, None)
        self._dirty.discard(blob_id)
        return entry

    def accessed(self, blob_id: int, now: float) -> None:
        """
        A blob was read: it becomes the most recently used of its queue;
        its access is to be written to the db if the last one written is
        older than L{ACCESS_COOLDOWN}.
        """
        entry = self.get(blob_id)
        if entry is None:
            return
        entry.last_access = max(entry.last_access, now)
        self._queues[entry.queue].move_to_end(blob_id)
        if entry.last_access - entry.stored_access >= ACCESS_COOLDOWN:
            self._dirty.add(blob_id)

    def counted(self, inode: int, now: float) -> None:
        """
        A file was opened: one more access in its frequency estimate
        (counted whether it is cached or not, as TinyLFU does).
        """
        self.sketch.age(now)
        self.sketch.sample_size = 10 * max(64, len(self))
        self.sketch.increment(inode)

    def to_pending(self, blob_id: int, now: float) -> None:
        """
        A blob's version stopped being the default: it joins the pending
        removal queue (the db already says so).
        """
        entry = self.get(blob_id)
        if entry is None or entry.queue == QUEUE_PENDING_REMOVAL:
            return
        self._move(entry, QUEUE_PENDING_REMOVAL, now, write=False)

    def revive(self, blob_id: int, now: float) -> None:
        """
        A pending blob's version is the default again: back to working (the
        db already says so).
        """
        entry = self.get(blob_id)
        if entry is not None and entry.queue == QUEUE_PENDING_REMOVAL:
            self._move(entry, QUEUE_WORKING, now, write=False)

    def protect(self, blob_id: int, now: float) -> bool:
        """
        Put a blob in the protected queue now (the marks' consensus jobs
        do it for a file downloaded because it is marked keep).

        @return: whether it was moved (it was live and not protected).
        """
        entry = self.get(blob_id)
        if entry is None or entry.queue == QUEUE_PROTECTED:
            return False
        self._move(entry, QUEUE_PROTECTED, now)
        self.admissions["mark"] = self.admissions.get("mark", 0) + 1
        return True

    def set_disk_usage(self, blob_id: int, disk_usage: int) -> None:
        """
        A blob's file was measured (after a write, a release or by the
        consistency job).
        """
        entry = self.get(blob_id)
        if entry is None:
            return
        self._usage[entry.queue] += disk_usage - entry.disk_usage
        entry.disk_usage = disk_usage

    # Writes.

    def reserve(
        self,
        blob_id: int,
        nbytes: int,
        limit: int,
        now: float,
        reason: str = REASON_QUOTA,
    ) -> list[Eviction] | None:
        """
        Make room for C{nbytes} more in a blob before they are written,
        evicting what must go (all or nothing), and reserve them.

        @param nbytes: the estimated growth (L{estimate_growth}).
        @param limit: the limit in bytes (L{effective_limit}).
        @param now: seconds.
        @param reason: why evictions happen, for the metrics.
        @return: the evictions to carry out before writing, or C{None} if
            the bytes cannot be kept (the blob is gone, or what may be
            evicted is not enough): nothing changed, nothing reserved.
        """
        entry = self.get(blob_id)
        if entry is None:
            return None
        evictions: list[Eviction] = []
        if self.planned + nbytes > limit:
            evictable = sum(
                e.usage
                for queue in self._queues.values()
                for e in queue.values()
                if e.id != blob_id and not self.pinned(e.inode)
            )
            if self.planned - evictable + nbytes > limit:
                return None
            goal = max(limit - nbytes - int(limit * EVICTION_SLACK), 0)
            evictions = self._free(goal, limit, now, reason, blob_id)
        entry.reserved += nbytes
        self._usage[entry.queue] += nbytes
        return evictions

    def unreserve(self, blob_id: int, nbytes: int) -> None:
        """
        A reserved write did not happen.
        """
        self.written(blob_id, nbytes, None)

    def written(self, blob_id: int, reserved: int, disk_usage: int | None) -> None:
        """
        A reserved write is done: its reservation is replaced by the file's
        measured usage.

        @param disk_usage: C{st_blocks * 512} after the write, or C{None}
            if unknown (the write failed).
        """
        entry = self.get(blob_id)
        if entry is None:
            return
        taken = min(reserved, entry.reserved)
        entry.reserved -= taken
        self._usage[entry.queue] -= taken
        if disk_usage is not None:
            self.set_disk_usage(blob_id, disk_usage)

    # Eviction.

    def enforce(
        self, limit: int, now: float, reason: str = REASON_QUOTA
    ) -> list[Eviction]:
        """
        Evict down to the limit (after it shrank: a new quota, less free
        space), as far as unpinned blobs allow.

        @return: the evictions to carry out.
        """
        if self.planned <= limit:
            return []
        goal = max(limit - int(limit * EVICTION_SLACK), 0)
        return self._free(goal, limit, now, reason, None)

    def due_pending(self, now: float, retention: float, batch: int) -> list[Eviction]:
        """
        The pending-removal blobs kept longer than C{retention} seconds,
        oldest first, at most C{batch}; they are evicted (reason
        C{pending}).
        """
        out: list[Eviction] = []
        for entry in list(self._queues[QUEUE_PENDING_REMOVAL].values()):
            if len(out) >= batch:
                break
            if now - entry.since >= retention and not self.pinned(entry.inode):
                out.append(self._evict(entry, "pending"))
        return out

    def forgotten(self, ids: Iterable[int]) -> None:
        """
        Evicted blobs are gone from the disk and the db.
        """
        for blob_id in ids:
            entry = self._deleting.pop(blob_id, None)
            if entry is not None:
                self._deleting_usage -= entry.usage

    def take_moves(self) -> list[tuple[int, str]]:
        """
        @return: the queue changes to write to the db (blob id, queue),
            forgotten here.
        """
        moves, self._moves = list(self._moves.items()), {}
        return moves

    def take_accesses(self) -> list[tuple[int, int]]:
        """
        @return: the accesses to write to the db (blob id, last access in
            ns), at most one per blob per L{ACCESS_COOLDOWN}; forgotten
            here.
        """
        out = []
        for blob_id in sorted(self._dirty):
            entry = self.get(blob_id)
            if entry is not None:
                entry.stored_access = entry.last_access
                out.append((blob_id, int(entry.last_access * 1e9)))
        self._dirty = set()
        return out

    def _move(
        self, entry: CacheEntry, queue: str, now: float, write: bool = True
    ) -> None:
        del self._queues[entry.queue][entry.id]
        self._usage[entry.queue] -= entry.usage
        entry.queue = queue
        entry.since = now
        self._queues[queue][entry.id] = entry
        self._usage[queue] += entry.usage
        if write:
            self._moves[entry.id] = queue
        else:
            self._moves.pop(entry.id, None)

    def _evict(self, entry: CacheEntry, reason: str) -> Eviction:
        queue = entry.queue
        self.discard(entry.id)
        entry.queue = QUEUE_DELETING
        self._deleting[entry.id] = entry
        self._deleting_usage += entry.usage
        return Eviction(entry.id, entry.inode, queue, reason, entry.usage)

    def _marked(self, entry: CacheEntry) -> bool:
        return self.mark_of(entry.inode) in PROTECTING_MARKS

    def _candidates(
        self, queue: str, exclude: int | None, marked: bool | None = None
    ) -> Iterator[CacheEntry]:
        """
        A queue's evictable blobs, least recently used first.
        """
        for entry in list(self._queues[queue].values()):
            if entry.id == exclude or self.pinned(entry.inode):
                continue
            if marked is not None and self._marked(entry) != marked:
                continue
            yield entry

    def _first(
        self, queue: str, exclude: int | None, marked: bool | None = None
    ) -> CacheEntry | None:
        return next(self._candidates(queue, exclude, marked), None)

    def _free(
        self, goal: int, limit: int, now: float, reason: str, exclude: int | None
    ) -> list[Eviction]:
        """
        Evict until the live blobs use at most C{goal} bytes: pending
        removal first, then working (through the protected queue's
        admission), then protected (unmarked, then marked).
        """
        out: list[Eviction] = []
        while self.planned > goal:
            entry = self._first(QUEUE_PENDING_REMOVAL, exclude)
            if entry is not None:
                out.append(self._evict(entry, reason))
                continue
            entry = self._first(QUEUE_WORKING, exclude)
            if entry is not None:
                out.extend(self._leave_working(entry, limit, reason, exclude, now))
                continue
            entry = self._first(QUEUE_PROTECTED, exclude, marked=False)
            if entry is None:
                entry = self._first(QUEUE_PROTECTED, exclude)
            if entry is None:
                break
            out.append(self._evict(entry, reason))
        return out

    def _leave_working(
        self,
        entry: CacheEntry,
        limit: int,
        reason: str,
        exclude: int | None,
        now: float,
    ) -> list[Eviction]:
        """
        A blob evicted from working: protected if marked keep/own, or if
        its frequency beats the protected victims it must displace; else
        deleted.
        """
        cap = int(limit * PROTECTED_SHARE)
        out: list[Eviction] = []
        if self._marked(entry):
            for victim in self._candidates(QUEUE_PROTECTED, exclude, marked=False):
                if self._usage[QUEUE_PROTECTED] + entry.usage <= cap:
                    break
                out.append(self._evict(victim, REASON_ADMISSION))
            self._admit(entry, "mark", now)
            return out
        frequency = self.sketch.estimate(entry.inode)
        if frequency < ADMIT_MIN_FREQUENCY or entry.usage > cap:
            return [self._evict(entry, reason)]
        need = self._usage[QUEUE_PROTECTED] + entry.usage - cap
        victims: list[CacheEntry] = []
        for victim in self._candidates(QUEUE_PROTECTED, exclude, marked=False):
            if need <= 0:
                break
            if self.sketch.estimate(victim.inode) >= frequency:
                break
            victims.append(victim)
            need -= victim.usage
        if need > 0:
            return [self._evict(entry, reason)]
        out = [self._evict(victim, REASON_ADMISSION) for victim in victims]
        self._admit(entry, "frequency", now)
        return out

    def _admit(self, entry: CacheEntry, why: str, now: float) -> None:
        self._move(entry, QUEUE_PROTECTED, now)
        self.admissions[why] = self.admissions.get(why, 0) + 1


# The db side.


def _txn_load(cursor: Cursor) -> list[CacheEntry]:
    """
    @return: every live blob, least recently used first (C{since} and
        C{stored_access} from the db's last access).
    """
    rows = cursor.execute(
        "SELECT id, inode, hash, size, disk_usage, queue, last_access_ns FROM blob"
        " WHERE queue != ? ORDER BY last_access_ns, id",
        (QUEUE_DELETING,),
    ).fetchall()
    out = []
    for row in rows:
        seconds = int(row[6]) / 1e9
        queue = str(row[5]) if str(row[5]) in QUEUES else QUEUE_WORKING
        out.append(
            CacheEntry(
                int(row[0]),
                int(row[1]),
                bytes(row[2]),
                int(row[3]),
                int(row[4]),
                queue,
                seconds,
                seconds,
                seconds,
            )
        )
    return out


def _txn_pending(cursor: Cursor) -> list[int]:
    """
    @return: the ids of the blobs pending removal.
    """
    return [
        int(row[0])
        for row in cursor.execute(
            "SELECT id FROM blob WHERE queue = ? ORDER BY id", (QUEUE_PENDING_REMOVAL,)
        )
    ]


def _txn_apply_plan(
    cursor: Cursor, moves: list[tuple[int, str]], deleting: list[int]
) -> list[int]:
    """
    Write the policy's decisions: queue changes, and the rows of evicted
    blobs marked C{deleting} (their files go after this commits).

    @param moves: C{(blob id, queue)} pairs; rows being deleted are left.
    @param deleting: the ids of the evicted blobs.
    @return: the ids among C{deleting} that have a row (marked now or
        before).
    """
    cursor.executemany(
        "UPDATE blob SET queue = ? WHERE id = ? AND queue != ?",
        [(queue, blob_id, QUEUE_DELETING) for blob_id, queue in moves],
    )
    cursor.executemany(
        "UPDATE blob SET queue = ? WHERE id = ?",
        [(QUEUE_DELETING, blob_id) for blob_id in deleting],
    )
    found = []
    for blob_id in deleting:
        if cursor.execute("SELECT 1 FROM blob WHERE id = ?", (blob_id,)).fetchone():
            found.append(blob_id)
    return found


def _txn_touch(cursor: Cursor, accesses: list[tuple[int, int]]) -> None:
    """
    Record last accesses: C{(blob id, ns)} pairs.
    """
    cursor.executemany(
        "UPDATE blob SET last_access_ns = max(last_access_ns, ?) WHERE id = ?",
        [(ns, blob_id) for blob_id, ns in accesses],
    )


def _txn_set_usage(cursor: Cursor, usages: list[tuple[int, int]]) -> None:
    """
    Record measured disk usages: C{(blob id, bytes)} pairs.
    """
    cursor.executemany(
        "UPDATE blob SET disk_usage = ? WHERE id = ?",
        [(usage, blob_id) for blob_id, usage in usages],
    )


def _txn_set_queue(cursor: Cursor, blob_id: int, queue: str) -> bool:
    """
    Move a live blob to a queue.

    @return: whether it was live.
    """
    cursor.execute(
        "UPDATE blob SET queue = ? WHERE id = ? AND queue != ?",
        (queue, blob_id, QUEUE_DELETING),
    )
    return cursor.rowcount > 0


@frozen
class BlobFileRow:
    """
    What the consistency job reads of a row.

    @ivar id: the blob.
    @ivar size: its version's size.
    @ivar ranges: the bytes it claims.
    @ivar queue: its queue.
    """

    id: int
    size: int
    ranges: ByteRanges
    queue: str


def _txn_rows(cursor: Cursor) -> list[BlobFileRow]:
    """
    @return: every row, for the consistency job.
    """
    return [
        BlobFileRow(int(row[0]), int(row[1]), decode_ranges(bytes(row[2])), str(row[3]))
        for row in cursor.execute(
            "SELECT id, size, ranges, queue FROM blob ORDER BY id"
        )
    ]


@frozen
class Inspection:
    """
    What the consistency job found comparing blob files and rows.

    @ivar missing: rows whose file is missing (to drop).
    @ivar orphans: files without a row, deleted already.
    @ivar trimmed: C{(blob id, ranges claimed but not in the file)}.
    @ivar usages: C{(blob id, st_blocks * 512)} of every file with a row.
    @ivar deleted: rows marked C{deleting} whose file is now gone (to
        forget).
    """

    missing: tuple[int, ...] = ()
    orphans: tuple[int, ...] = ()
    trimmed: tuple[tuple[int, ByteRanges], ...] = ()
    usages: tuple[tuple[int, int], ...] = ()
    deleted: tuple[int, ...] = ()

    @property
    def fixes(self) -> int:
        """
        @return: how many things were wrong.
        """
        return len(self.missing) + len(self.orphans) + len(self.trimmed)


def list_blob_files(directory: str) -> set[int]:
    """
    @return: the ids of the blob files in C{directory} (names that are
        decimal numbers; anything else is not ours and is left alone).
    @raise IOFailure: if the directory cannot be read.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    except OSError as e:
        raise IOFailure(f"{directory}: {e.strerror}") from e
    return {int(name) for name in names if name.isdigit() and name == str(int(name))}


def inspect_blob_files(
    directory: str,
    rows: list[BlobFileRow],
    files: set[int],
    skip: Callable[[int], bool],
) -> Inspection:
    """
    Compare blob files with rows and fix the files (blocking): files
    without a row are deleted, files of rows marked C{deleting} too.

    The files must be listed before the rows are read: a row is made
    before its file and removed after it, so a file listed without a row
    read later has none (or its row went with it, and removing it again
    is harmless).  A row whose file is missing may be one being made (the
    row commits first): C{skip} those.

    @param rows: the rows, read after C{files} was listed.
    @param files: the blob files listed (L{list_blob_files}).
    @param skip: blob ids to leave alone (rows being made).
    @return: what was found; the rows are fixed by L{_txn_fix}.
    @raise IOFailure: on an I/O error other than a vanished file.
    """
    by_id = {row.id: row for row in rows}
    orphans = []
    for blob_id in sorted(files - by_id.keys()):
        if skip(blob_id):
            continue
        _unlink(blob_path(directory, blob_id))
        orphans.append(blob_id)
    missing = []
    trimmed = []
    usages = []
    deleted = []
    for row in rows:
        if skip(row.id):
            continue
        path = blob_path(directory, row.id)
        if row.queue == QUEUE_DELETING:
            _unlink(path)
            deleted.append(row.id)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            missing.append(row.id)
            continue
        except OSError as e:
            raise IOFailure(f"blob {path}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            held = ByteRanges.of(*fs.data_ranges(fd, 0, min(st.st_size, row.size)))
        except OSError as e:
            raise IOFailure(f"blob {path}: {e.strerror}") from e
        finally:
            os.close(fd)
        lost = row.ranges - held
        if lost:
            trimmed.append((row.id, lost))
        usages.append((row.id, st.st_blocks * 512))
    return Inspection(
        tuple(missing), tuple(orphans), tuple(trimmed), tuple(usages), tuple(deleted)
    )


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise IOFailure(f"blob {path}: {e.strerror}") from e


def _txn_fix(cursor: Cursor, inspection: Inspection) -> None:
    """
    Fix the rows as the consistency job found (L{inspect_blob_files}):
    rows of missing files dropped, claimed ranges the file does not hold
    trimmed, usages recorded, deleted rows forgotten.
    """
    cursor.executemany(
        "DELETE FROM blob WHERE id = ?", [(blob_id,) for blob_id in inspection.missing]
    )
    cursor.executemany(
        "DELETE FROM blob WHERE id = ? AND queue = ?",
        [(blob_id, QUEUE_DELETING) for blob_id in inspection.deleted],
    )
    for blob_id, lost in inspection.trimmed:
        row = cursor.execute(
            "SELECT ranges FROM blob WHERE id = ?", (blob_id,)
        ).fetchone()
        if row is not None:
            ranges = decode_ranges(bytes(row[0])) - lost
            cursor.execute(
                "UPDATE blob SET ranges = ? WHERE id = ?",
                (encode_ranges(ranges), blob_id),
            )
    _txn_set_usage(cursor, list(inspection.usages))
