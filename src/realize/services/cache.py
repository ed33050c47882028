"""
The block cache of the Unreal (issue 11; DESIGN.md section 10, Blobstore):
one L{BlobCache} per arena keeps its blobs within the quota with the
policy of L{realize.storage.cache}, and runs its jobs.

    - Writes: the downloader writes verified bytes through the cache
      (L{BlobCache.write}); room is made first (evicting pending removal,
      then working through the protected queue's admission, then
      protected), so the usage never passes the limit.  When nothing can
      be evicted (everything open, or the filesystem full) the bytes are
      served all the same, not kept, and a warning is logged.
    - The limit: the quota (C{[cache] size}), shrunk when the free space
      of the workdir's filesystem drops below the reserve (C{[cache]
      min_free}); measured every L{TICK_INTERVAL} seconds, when the cache
      evicts down to it.  L{BlobCache.reconfigure} (SIGHUP) takes a new
      quota at once.
    - Accesses: FUSE threads record opens and reads of cached data
      (L{BlobCache.opened}, L{BlobCache.read_hit}); the reactor applies
      them to the LRU order and the frequency estimate before each
      decision and every tick, and writes last accesses to the db at most
      once per L{realize.storage.cache.ACCESS_COOLDOWN} per blob.
    - Pending removal: outdated versions (L{BlobCache.outdated}, after
      each batch of notifications) are deleted in batches of
      L{PENDING_BATCH} once kept L{PENDING_RETENTION} seconds (every
      L{SWEEP_INTERVAL} seconds), or first when room is needed.
    - Consistency: at start, then every L{CONSISTENCY_INTERVAL} seconds,
      blob files and rows are compared and fixed, and what was fixed is
      logged (L{BlobCache.check}).

Everything runs in the reactor thread but the few methods that say they
are thread-safe (FUSE threads call them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from realize.config import CacheConfig
from realize.errors import IOFailure, NoSpace, RealizeError, describe
from realize.interfaces import RunInThread
from realize.metrics import CacheMetrics
from realize.model import ArenaName, ByteRanges
from realize.storage.blobs import (
    QUEUE_DELETING,
    QUEUE_PENDING_REMOVAL,
    QUEUE_PROTECTED,
    QUEUE_WORKING,
    Blob,
    BlobStore,
    RunInteraction,
)
from realize.storage.cache import (
    FILE_OVERHEAD,
    QUEUES,
    REASON_FREE_SPACE,
    REASON_QUOTA,
    CacheEntry,
    CachePolicy,
    Eviction,
    Inspection,
    Pins,
    _txn_apply_plan,
    _txn_fix,
    _txn_load,
    _txn_pending,
    _txn_rows,
    _txn_set_queue,
    _txn_touch,
    effective_limit,
    estimate_growth,
    inspect_blob_files,
    list_blob_files,
)

__all__ = [
    "CONSISTENCY_INTERVAL",
    "MARKS_DELAY",
    "PENDING_BATCH",
    "PENDING_RETENTION",
    "SWEEP_INTERVAL",
    "TICK_INTERVAL",
    "AccessLog",
    "BlobCache",
    "MarkedFiles",
    "measure_space",
]

log = Logger(namespace="realize.cache")

#: Seconds between two looks at the free space (and the accesses applied,
#: the limit enforced, last accesses written).
TICK_INTERVAL: Final = 2.0

#: Seconds an outdated version stays in the pending removal queue, unless
#: room is needed first.
PENDING_RETENTION: Final = 3600.0

#: Blobs deleted per batch of the pending removal job.
PENDING_BATCH: Final = 256

#: Seconds between two runs of the pending removal job.
SWEEP_INTERVAL: Final = 60.0

#: Seconds between two consistency checks (one runs at start).
CONSISTENCY_INTERVAL: Final = 3600.0

#: Seconds between two warnings that data could not be kept.
WARN_INTERVAL: Final = 60.0


def measure_space(path: str) -> tuple[int, int]:
    """
    @param path: a directory.
    @return: C{(size, free bytes)} of its filesystem, as an unprivileged
        user may write (blocking).
    @raise IOFailure: if it cannot be measured.
    """
    try:
        st = os.statvfs(path)
    except OSError as e:
        raise IOFailure(f"statfs of {path}: {e.strerror}") from e
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


@define(eq=False)
class AccessLog:
    """
    Accesses recorded by FUSE threads, applied by the reactor
    (thread-safe), in the order they came: several files read between two
    applications (a batch of small files served from memory) keep their
    order of recency.
    """

    #: Every file opened or read, the most recent last.
    _recent: dict[tuple[int, bytes], None] = field(factory=dict)
    _opens: list[tuple[int, bytes]] = field(factory=list)
    _lock: threading.Lock = field(factory=threading.Lock)

    def opened(self, inode: int, digest: bytes | None) -> None:
        """
        A file was opened: one access for its frequency and recency.
        """
        key = (inode, digest or b"")
        with self._lock:
            self._opens.append(key)
            self._recent.pop(key, None)
            self._recent[key] = None

    def read(self, inode: int, digest: bytes) -> None:
        """
        Cached bytes of a version were read: recency only.
        """
        key = (inode, digest)
        with self._lock:
            self._recent.pop(key, None)
            self._recent[key] = None

    def take(self) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """
        @return: the files opened or read since the last call, the most
            recent last, and the opens.
        """
        with self._lock:
            recent, self._recent = self._recent, {}
            opens, self._opens = self._opens, []
        return list(recent), opens


@define(eq=False)
class BlobCache:
    """
    One arena's block cache: the blob access of its downloader
    (L{realize.services.downloader.BlobAccess}) within a quota, and its
    jobs.

    @ivar arena: the arena.
    @ivar store: its blob store.
    @ivar config: the C{[cache]} config.
    @ivar clock: for the jobs, and the times of accesses.
    @ivar run_in_thread: for file I/O.
    @ivar run_interaction: the arena db's writer.
    @ivar metrics: where to count, or C{None}.
    @ivar mark_of: a file's effective mark by inode, from memory
        (C{"keep"} and C{"own"} protect); none by default.
    @ivar space: measures C{(size, free)} of a directory's filesystem
        (blocking; L{measure_space}).
    @ivar pins: files whose blobs may not be evicted (open files, pieces
        being downloaded).
    @ivar accesses: accesses recorded by FUSE threads.
    @ivar policy: the queues.
    """

    arena: ArenaName
    store: BlobStore
    config: CacheConfig
    clock: IReactorTime
    run_in_thread: RunInThread
    run_interaction: RunInteraction
    metrics: CacheMetrics | None = None
    mark_of: Callable[[int], str | None] | None = None
    space: Callable[[str], tuple[int, int]] = measure_space
    pins: Pins = field(factory=Pins)
    accesses: AccessLog = field(factory=AccessLog)
    policy: CachePolicy = field(init=False)
    _writing: Pins = field(factory=Pins, init=False)
    _filesystem: int = field(default=0, init=False)
    _free: int = field(default=0, init=False)
    _measured: bool = field(default=False, init=False)
    _evicting: set[Deferred[None]] = field(factory=set, init=False)
    _loops: list[LoopingCall] = field(factory=list, init=False)
    _low_space: bool = field(default=False, init=False)
    _warned_at: float | None = field(default=None, init=False)
    _started: bool = field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.policy = CachePolicy(self._mark, self._pinned)

    def _mark(self, inode: int) -> str | None:
        if self.mark_of is None:
            return None
        try:
            return self.mark_of(inode)
        except Exception as e:
            log.error(
                "{arena}: the mark of inode {inode} is unknown ({error}): "
                "taken as none",
                arena=self.arena,
                inode=inode,
                error=repr(e),
            )
            return None

    def _pinned(self, inode: int) -> bool:
        return self.pins.held(inode) or self._writing.held(inode)

    # Lifecycle.

    async def start(self) -> None:
        """
        Measure the filesystem, check the blobs against their rows (fixing
        what a crash left), load the queues, evict down to the limit, then
        start the jobs.

        @raise IOFailure: if the blob directory cannot be read.
        """
        await self._measure()
        await self.check(startup=True)
        entries = await self.run_interaction(_txn_load)
        now = self.clock.seconds()
        for entry in entries:
            if entry.queue == QUEUE_PENDING_REMOVAL:
                entry.since = now
            self.policy.add(entry)
        self._started = True
        await self._enforce()
        self._gauges()
        for interval, job in [
            (TICK_INTERVAL, self.tick),
            (SWEEP_INTERVAL, self.sweep),
            (CONSISTENCY_INTERVAL, self.check),
        ]:
            loop = LoopingCall(self._logged, job)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    async def _logged(self, job: Callable[[], Any]) -> None:
        try:
            await job()
        except Exception as e:
            log.error(
                "{arena}: cache job {job} failed: {error}",
                arena=self.arena,
                job=getattr(job, "__name__", job),
                error=describe(e) if isinstance(e, RealizeError) else repr(e),
            )

    def stop(self) -> None:
        """
        Stop the jobs (a job under way finishes on its own).
        """
        loops, self._loops = self._loops, []
        for loop in loops:
            if loop.running:
                loop.stop()

    def reconfigure(self, config: CacheConfig) -> Deferred[None]:
        """
        Take a new C{[cache]} config (SIGHUP): the new quota applies at
        once, evicting down to it.

        @return: fires when done.
        """
        self.config = config
        return Deferred.fromCoroutine(self._logged(self._enforce))

    # The limit.

    @property
    def quota(self) -> int | None:
        """
        @return: the configured quota in bytes, or C{None}.
        """
        return self.config.quota(self._filesystem)

    def limit(self) -> tuple[int, str]:
        """
        @return: the bytes the cache may use now, and why it is what it is
            (L{REASON_QUOTA}, or L{REASON_FREE_SPACE} when the free space
            made it smaller than the quota).
        """
        quota = self.quota
        usage = self.policy.usage()
        limit = effective_limit(
            quota, usage, self._free, self.config.min_free(self._filesystem)
        )
        if quota is not None and limit >= quota:
            return limit, REASON_QUOTA
        return limit, REASON_FREE_SPACE

    async def _measure(self) -> None:
        size, free = await self.run_in_thread(self.space, self.store.directory)
        self._filesystem, self._free, self._measured = size, free, True
        min_free = self.config.min_free(size)
        low = free < min_free
        if low and not self._low_space:
            log.warn(
                "{arena}: {free} bytes free on the filesystem of {directory}, "
                "below the reserve of {min_free}: the cache shrinks",
                arena=self.arena,
                free=free,
                directory=self.store.directory,
                min_free=min_free,
            )
        elif self._low_space and not low:
            log.info(
                "{arena}: free space on {directory} is above the reserve again",
                arena=self.arena,
                directory=self.store.directory,
            )
        self._low_space = low

    def working_area(self) -> int | None:
        """
        @return: the bytes the working queue may hold beside the protected
            one: a file larger than this is read through a window
            (#largedl).
        """
        return self.policy.working_area(self.limit()[0])

    # Thread-safe: FUSE threads.

    def opened(self, inode: int, digest: bytes | None) -> None:
        """
        A file was opened through FUSE: its blobs are pinned until
        L{closed}, and the access counts (thread-safe).
        """
        self.pins.hold(inode)
        self.accesses.opened(inode, digest)

    def closed(self, inode: int) -> None:
        """
        A file opened through FUSE was released (thread-safe).
        """
        self.pins.drop(inode)

    def read_hit(self, inode: int, digest: bytes, size: int) -> None:
        """
        A FUSE read was served from the blob (thread-safe).
        """
        self.accesses.read(inode, digest)
        if self.metrics is not None:
            self.metrics.read(self.arena, True, size)

    def read_miss(self, size: int) -> None:
        """
        A FUSE read needed the downloader (thread-safe).
        """
        if self.metrics is not None:
            self.metrics.read(self.arena, False, size)

    # The downloader's blob access.

    async def open(self, inode: int, digest: bytes) -> Blob:
        """
        See L{realize.services.downloader.BlobAccess.open}.
        """
        blob = await self.store.open(inode, digest)
        now = self.clock.seconds()
        entry = self.policy.get(blob.id)
        if entry is None:
            queue = blob.queue if blob.queue in QUEUES else QUEUE_WORKING
            self.policy.add(
                CacheEntry(
                    blob.id,
                    inode,
                    digest,
                    blob.size,
                    blob.disk_usage,
                    queue,
                    now,
                    now,
                    now,
                )
            )
        elif entry.queue == QUEUE_PENDING_REMOVAL:
            self.policy.revive(blob.id, now)
        self.policy.accessed(blob.id, now)
        return blob

    async def write(self, blob: Blob, offset: int, data: bytes) -> ByteRanges | None:
        """
        Keep verified bytes if there is room (made by evicting): see
        L{realize.services.downloader.BlobAccess.write}.

        @return: the ranges now present (without these bytes if they could
            not be kept), or C{None} if the blob is gone.
        @raise NoSpace: if the disk is full after all.
        @raise IOFailure: on another error.
        """
        self._apply_accesses()
        if self.policy.get(blob.id) is None:
            return None
        nbytes = estimate_growth(len(data))
        limit, reason = self.limit()
        evictions = self.policy.reserve(
            blob.id, nbytes, limit, self.clock.seconds(), reason
        )
        if evictions is None:
            self._not_kept(blob, len(data), limit)
            return await self.store.ranges(blob)
        self._writing.hold(blob.inode)
        try:
            try:
                await self._carry_out(evictions)
                written = await self.store.write_measured(blob, offset, data)
            except NoSpace:
                self.policy.unreserve(blob.id, nbytes)
                self._free = 0
                raise
            except BaseException:
                self.policy.unreserve(blob.id, nbytes)
                raise
            if written is None:
                self.policy.unreserve(blob.id, nbytes)
                self.policy.discard(blob.id)
                return None
            ranges, usage = written
            entry = self.policy.get(blob.id)
            before = 0 if entry is None else entry.disk_usage
            self._free -= max(0, usage - before)
            self.policy.written(blob.id, nbytes, usage)
            return ranges
        finally:
            self._writing.drop(blob.inode)
            self._gauges()

    async def read(self, blob: Blob, start: int, end: int) -> bytes:
        """
        See L{realize.services.downloader.BlobAccess.read}.
        """
        data = await self.store.read(blob, start, end)
        self.policy.accessed(blob.id, self.clock.seconds())
        return data

    async def release(self, blob: Blob, ranges: ByteRanges) -> ByteRanges | None:
        """
        Give back the space of ranges of a blob read through a window
        (#largedl): see L{realize.storage.blobs.BlobStore.release}.

        @return: the ranges left, or C{None} if the blob is gone.
        """
        released = await self.store.release_measured(blob, ranges)
        if released is None:
            return None
        left, usage = released
        entry = self.policy.get(blob.id)
        if entry is not None:
            self._free += max(0, entry.disk_usage - usage)
        self.policy.set_disk_usage(blob.id, usage)
        if self.metrics is not None:
            self.metrics.released(self.arena, ranges.total())
        self._gauges()
        return left

    # For the marks (issue 12).

    async def protect(self, inode: int, digest: bytes | None = None) -> bool:
        """
        Put the blob of a file's version in the protected queue now (a
        file marked keep, downloaded by the consensus jobs); the queue is
        written to the db.

        @param digest: the version (found at once), or C{None} for any
            live blob of the file outside pending removal (looked for).
        @return: whether a blob was moved.
        """
        moved = False
        now = self.clock.seconds()
        if digest is not None:
            found = self.policy.find(inode, digest)
            entries = [] if found is None else [found]
        else:
            entries = [
                entry
                for queue in (QUEUE_WORKING, QUEUE_PROTECTED)
                for entry in self.policy.entries(queue)
                if entry.inode == inode
            ]
        for entry in entries:
            if entry.queue != QUEUE_PENDING_REMOVAL and self.policy.protect(
                entry.id, now
            ):
                await self.run_interaction(_txn_set_queue, entry.id, QUEUE_PROTECTED)
                self.policy.take_moves()
                moved = True
        if moved and self.metrics is not None:
            self._count_admissions()
            self._gauges()
        return moved

    # Jobs.

    async def outdated(self) -> None:
        """
        After a batch of notifications: the blobs of versions that stopped
        being the default join the pending removal queue.
        """
        if not self._started:
            return
        ids = await self.run_interaction(_txn_pending)
        now = self.clock.seconds()
        for blob_id in ids:
            self.policy.to_pending(blob_id, now)
        self._gauges()

    async def tick(self) -> None:
        """
        Apply the accesses recorded, measure the free space, evict down to
        the limit, write the last accesses and queue changes.
        """
        self._apply_accesses()
        await self._measure()
        await self._enforce()
        accesses = self.policy.take_accesses()
        moves = self.policy.take_moves()
        if accesses or moves:
            await self.run_interaction(_txn_flush, accesses, moves)
        self._gauges()

    async def _enforce(self) -> None:
        if not self._started:
            return
        # The reads recorded since the last decision count in this one.
        self._apply_accesses()
        limit, reason = self.limit()
        evictions = self.policy.enforce(limit, self.clock.seconds(), reason)
        await self._carry_out(evictions)
        self._gauges()

    async def sweep(self) -> int:
        """
        Delete the blobs kept in the pending removal queue longer than
        L{PENDING_RETENTION}, in batches of L{PENDING_BATCH}.

        @return: how many were deleted.
        """
        done = 0
        while True:
            evictions = self.policy.due_pending(
                self.clock.seconds(), PENDING_RETENTION, PENDING_BATCH
            )
            if not evictions:
                break
            await self._carry_out(evictions)
            done += len(evictions)
            if len(evictions) < PENDING_BATCH:
                break
        if done:
            log.info(
                "{arena}: deleted {count} outdated blobs",
                arena=self.arena,
                count=done,
            )
        return done

    async def check(self, startup: bool = False) -> Inspection:
        """
        The consistency job: blob files against rows (files listed first,
        then rows read: L{realize.storage.cache.inspect_blob_files});
        a row whose file is missing is dropped, a file without a row
        deleted, ranges claimed beyond what the file holds trimmed, the
        usage of every blob measured again; what was fixed is logged and
        counted.

        @param startup: whether nothing else runs yet (at start): every
            row is checked; later, rows the cache does not track yet (being
            made) are left for the next run.
        @return: what was found.
        """
        directory = self.store.directory
        files = await self.run_in_thread(list_blob_files, directory)
        rows = await self.run_interaction(_txn_rows)
        known = {row.id for row in rows if self.policy.get(row.id) is not None}
        deleting = {row.id for row in rows if row.queue == QUEUE_DELETING}

        def skip(blob_id: int) -> bool:
            return not startup and blob_id not in known and blob_id not in deleting

        inspection = await self.run_in_thread(
            inspect_blob_files, directory, rows, files, skip
        )
        await self.run_interaction(_txn_fix, inspection)
        for blob_id in inspection.missing:
            self.policy.discard(blob_id)
        for blob_id, usage in inspection.usages:
            entry = self.policy.get(blob_id)
            if entry is not None and entry.reserved == 0:
                self.policy.set_disk_usage(blob_id, usage)
        self.policy.forgotten(inspection.deleted)
        if inspection.fixes or inspection.deleted:
            log.warn(
                "{arena}: cache consistency: dropped {missing} rows whose file "
                "was missing, deleted {orphans} files without a row, trimmed the "
                "ranges of {trimmed} blobs, finished {deleted} deletions",
                arena=self.arena,
                missing=len(inspection.missing),
                orphans=len(inspection.orphans),
                trimmed=len(inspection.trimmed),
                deleted=len(inspection.deleted),
            )
        if self.metrics is not None:
            self.metrics.fixed(
                self.arena,
                missing=len(inspection.missing),
                orphan=len(inspection.orphans),
                trimmed=len(inspection.trimmed),
            )
        self._gauges()
        return inspection

    # Helpers.

    def _apply_accesses(self) -> None:
        recent, opens = self.accesses.take()
        if not recent and not opens:
            return
        now = self.clock.seconds()
        for inode, digest in recent:
            entry = self.policy.find(inode, digest)
            if entry is not None:
                self.policy.accessed(entry.id, now)
        for inode, _ in opens:
            self.policy.counted(inode, now)

    async def _carry_out(self, evictions: list[Eviction]) -> None:
        """
        Delete evicted blobs (rows marked with the queue changes, files,
        rows), then wait for every deletion under way: the bytes a
        decision counted as freed are freed before anything is written.
        """
        if evictions:
            d = Deferred.fromCoroutine(self._delete(evictions))
            if not d.called:
                self._evicting.add(d)

                def done(result: object) -> object:
                    self._evicting.discard(d)
                    return result

                d.addBoth(done)
        if self._evicting:
            await DeferredList(list(self._evicting), consumeErrors=True)

    async def _delete(self, evictions: list[Eviction]) -> None:
        ids = [eviction.id for eviction in evictions]
        try:
            found = await self.run_interaction(
                _txn_apply_plan, self.policy.take_moves(), ids
            )
            await self.store.delete(found)
            # The filesystem has that much more free space (until the next
            # measure): the limit does not shrink again for it.
            self._free += sum(
                max(0, eviction.usage - FILE_OVERHEAD) for eviction in evictions
            )
        except Exception as e:
            log.error(
                "{arena}: could not delete {count} evicted blobs ({error}); "
                "the consistency job will",
                arena=self.arena,
                count=len(ids),
                error=describe(e) if isinstance(e, RealizeError) else repr(e),
            )
        finally:
            self.policy.forgotten(ids)
        for eviction in evictions:
            log.debug(
                "{arena}: evicted blob {blob} of inode {inode} from {queue} "
                "({reason}, {usage} bytes)",
                arena=self.arena,
                blob=eviction.id,
                inode=eviction.inode,
                queue=eviction.queue,
                reason=eviction.reason,
                usage=eviction.usage,
            )
            if self.metrics is not None:
                self.metrics.evicted(self.arena, eviction.queue, eviction.reason)
        self._count_admissions()

    def _count_admissions(self) -> None:
        admissions, self.policy.admissions = self.policy.admissions, {}
        if self.metrics is not None:
            for reason, count in admissions.items():
                self.metrics.admitted(self.arena, reason, count)

    def _not_kept(self, blob: Blob, size: int, limit: int) -> None:
        if self.metrics is not None:
            self.metrics.not_kept(self.arena, size)
        now = self.clock.seconds()
        if self._warned_at is not None and now - self._warned_at < WARN_INTERVAL:
            return
        self._warned_at = now
        log.warn(
            "{arena}: no room to keep downloaded data (limit {limit} bytes, "
            "{pinned} in use by open files or downloads): it is read through "
            "without being kept",
            arena=self.arena,
            limit=limit,
            pinned=self.policy.usage() - self._evictable(),
        )

    def _evictable(self) -> int:
        return sum(
            entry.usage
            for queue in QUEUES
            for entry in self.policy.entries(queue)
            if not self._pinned(entry.inode)
        )

    def _gauges(self) -> None:
        if self.metrics is None or not self._measured:
            return
        self.metrics.state(
            self.arena,
            {queue: self.policy.usage(queue) for queue in QUEUES}
            | {QUEUE_DELETING: self.policy.usage() - self.policy.planned},
            {queue: self.policy.count(queue) for queue in QUEUES},
            self.quota,
            self.limit()[0],
        )


def _txn_flush(
    cursor: Any, accesses: list[tuple[int, int]], moves: list[tuple[int, str]]
) -> None:
    """
    Write last accesses and queue changes.
    """
    _txn_touch(cursor, accesses)
    _txn_apply_plan(cursor, moves, [])


def stop_all(caches: Iterable[BlobCache]) -> None:
    """
    Stop the jobs of caches.
    """
    for cache in caches:
        cache.stop()


#: Seconds between a change of marks or of the files of an arena and the
#: walk that finds its marked files again (the changes of a burst of
#: notification batches, one walk).
MARKS_DELAY: Final = 5.0


@define(eq=False)
class MarkedFiles:
    """
    The files whose effective mark protects their blobs (C{keep}, C{own}:
    L{realize.storage.cache.PROTECTING_MARKS}), by arena and inode, held
    in memory so the cache policy can ask in the reactor without a query
    (L{mark_of}, the C{mark_of} of L{BlobCache}).  Found again off the
    reactor (C{find}, a walk of the arena's tree:
    L{realize.storage.marks.protected_files}) at start
    (L{refresh}), and L{MARKS_DELAY} seconds after a change
    (L{changed}: a mark set, a batch of notifications, a new default);
    until then a new file under a kept directory reads as unmarked.

    @ivar clock: for the delay.
    @ivar find: C{find(arena)} fires with the marks of its protected
        files, by inode.
    """

    clock: IReactorTime
    find: Callable[[ArenaName], Deferred[dict[int, str]]]
    _marks: dict[ArenaName, dict[int, str]] = field(factory=dict, init=False)
    _later: dict[ArenaName, IDelayedCall] = field(factory=dict, init=False)
    _running: dict[ArenaName, Deferred[None]] = field(factory=dict, init=False)
    _again: set[ArenaName] = field(factory=set, init=False)

    def mark_of(self, arena: ArenaName, inode: int) -> str | None:
        """
        @return: C{keep} or C{own} for a file whose blob is protected by
            its mark, else C{None} (as last found).
        """
        found = self._marks.get(arena)
        return None if found is None else found.get(inode)

    async def refresh(self, arena: ArenaName) -> None:
        """
        Find an arena's marked files now (and wait for it).  A failure is
        logged; the files found before stay.
        """
        try:
            self._marks[arena] = await self.find(arena)
        except Exception as e:
            log.error(
                "{arena}: the files marked keep or own could not be found "
                "({error}): their blobs are protected as before",
                arena=arena,
                error=describe(e) if isinstance(e, RealizeError) else repr(e),
            )

    def changed(self, arena: ArenaName) -> None:
        """
        The marks or the files of an arena changed: find them again in
        L{MARKS_DELAY} seconds (once for any number of changes meanwhile).
        """
        if arena in self._later:
            return
        if arena in self._running:
            self._again.add(arena)
            return
        self._later[arena] = self.clock.callLater(MARKS_DELAY, self._run, arena)

    def _run(self, arena: ArenaName) -> None:
        del self._later[arena]
        running = Deferred.fromCoroutine(self.refresh(arena))
        self._running[arena] = running

        def done(_: object) -> None:
            del self._running[arena]
            if arena in self._again:
                self._again.discard(arena)
                self.changed(arena)

        running.addBoth(done)

    def stop(self) -> None:
        """
        Cancel the walks scheduled (one running ends on its own).
        """
        for call in self._later.values():
            call.cancel()
        self._later.clear()
        self._again.clear()
