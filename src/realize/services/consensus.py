"""
Consensus jobs (DESIGN.md section 11): marks decide what this peer keeps
where, and jobs make it so.

A path whose mark, default version or local copy changes is queued (in the
arena db, L{realize.storage.consensus}, in the same transaction as the
change).  L{ConsensusService} works through the queue, at most
L{MAX_JOBS} jobs at once over all arenas; each job reads the path's
situation, decides (the table of L{realize.services.decisions}), and
acts:

    - B{realize} (C{own}, no local copy) and B{update} (C{own}, a local
      copy that a peer replaced, or that this peer realized, now
      outdated): the default version is downloaded into its blob (the
      downloader verifies every piece), the whole blob is verified against
      the version's hash, then renamed into the datadir (synced), and the
      watcher is given its hash (L{StoreListener.file_finished}): it is
      recorded without being hashed again.
    - B{remove} (C{own}, a local copy a peer removed, with a newer mtime):
      the real file is removed (the watcher records the Remove).
    - B{unrealize} (C{watch} or C{keep}, a local copy that at least
      C{copies} other I{connected} peers hold with the same hash): a Drop
      is recorded first (the index entry goes, peers do not mirror it as a
      deletion); after L{SETTLE_DELAY} seconds (time for a Drop of the
      same version from another peer to arrive) the holders are counted
      again, and only then is the file renamed into its blob, checked
      before and after (size, mtime, not open for writing).  Any failure
      puts the index entry back (with its known hash) or leaves the file
      where it was: never fewer than C{copies} other copies, never a lost
      file.
    - B{keep} (C{keep}, no local copy): every version is downloaded into
      the cache, and handed to L{ConsensusService.protect} (the protected
      queue of the block cache).

A job that fails is retried after
L{realize.services.decisions.backoff} (15 s, doubling, at most an hour);
a change of the path makes it due at once.  The queue is
in the db: after a restart the jobs go on where they were (an unrealize
interrupted after its rename is finished from its journal, the C{blob} of
its queue row).

Every step is an audit event (L{realize.services.audit}).  Marks are
set through L{ConsensusService.marks} (L{realize.services.marks}).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from typing import Any, Final

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from realize.errors import BadRequest, Conflict, IOFailure, NotFound, RealizeError
from realize.errors import describe as describe_error
from realize.hashing import format_hash
from realize.interfaces import RunInThread, StoreListener
from realize.model import ArenaName, ByteRanges, PeerId
from realize.overlay import mounted
from realize.services import audit as events
from realize.services.audit import Audit
from realize.services.decisions import (
    KEEP,
    NOTHING,
    REALIZE,
    REMOVE,
    UNREALIZE,
    UPDATE,
    WAIT,
    backoff,
    decide,
)
from realize.services.downloader import PIECE_SIZE, Downloader
from realize.services.marks import MarkKeeper
from realize.storage import blobs as blob_storage
from realize.storage.arena import ArenaDir
from realize.storage.blobs import Blob, BlobStore, blob_path
from realize.storage.consensus import (
    EVENT_REALIZED,
    EVENT_REMOVED_REMOTE,
    QueueRow,
    Situation,
    _txn_clear_events,
    _txn_done,
    _txn_due,
    _txn_failed,
    _txn_next_due,
    _txn_queue_counts,
    _txn_set_event,
    _txn_situation,
    _txn_step,
    _txn_sweep,
)
from realize.storage.index import ArenaIndex, Version
from realize.storage.marks import (
    MARK_KEEP,
    ORIGIN_SET,
    ancestors,
    marks_of,
)
from realize.storage.realfiles import (
    DROP_CACHES,
    LiveOverlay,
    realize_blob,
    remove_file,
    unrealize_file,
    verify_file,
    write_real_mark,
)

__all__ = [
    "DOWNLOAD_CHUNK",
    "MAX_JOBS",
    "SETTLE_DELAY",
    "ArenaConsensus",
    "ConsensusService",
    "Protect",
]

log = Logger(namespace="realize.consensus")

#: Jobs running at once, at most, over all arenas.
MAX_JOBS: Final = 4

#: Seconds between an unrealize's Drop and its move into the cache: a Drop
#: of the same version by another peer arrives meanwhile, and the holders
#: are counted again.
SETTLE_DELAY: Final = 5.0

#: Bytes asked of the downloader at once by a job (16 MiB: measured on
#: loopback, a 256 MiB realize ran at 82-102 MB/s with it, 59-73 MB/s with
#: 4 MiB).
DOWNLOAD_CHUNK: Final = 16 * PIECE_SIZE

#: Hands a file's kept version to the protected queue of the block cache
#: (issue 11): C{protect(arena, inode)}; may return a Deferred.
Protect = Callable[[ArenaName, int], Any]


@define(eq=False)
class ArenaConsensus:
    """
    What the jobs need of one arena.

    @ivar name: the arena.
    @ivar root: its root's inode in the Unreal.
    @ivar run_interaction: its db's writer.
    @ivar blobs: its blob store.
    @ivar downloader: its downloader.
    @ivar default_mark: its default mark (C{[[arena]] mark}).
    @ivar copies: C{[[arena]] copies}.
    @ivar datadir: its datadir (the Real), or C{None}.
    @ivar index: its index, once open (C{None} before, or without datadir).
    @ivar mountpoint: its overlay's mountpoint (C{[[arena]] mountpoint}),
        or C{None}: while an overlay is mounted there, the jobs change the
        datadir under it the safe way (L{realize.storage.realfiles},
        docs/real.md).
    """

    name: ArenaName
    root: int
    run_interaction: Callable[..., Deferred[Any]]
    blobs: BlobStore
    downloader: Downloader | None
    default_mark: str
    copies: int
    datadir: ArenaDir | None = None
    index: Callable[[], ArenaIndex | None] = lambda: None
    mountpoint: str | None = None

    def blob_file(self, blob: Blob | int) -> str:
        return blob_path(
            self.blobs.directory, blob if isinstance(blob, int) else blob.id
        )


@define(eq=False)
class ConsensusService(Service):
    """
    Works through the queues of dirty paths (module docstring), and sets
    marks (from the FUSE view and from real files).

    @ivar me: this peer's id, or C{None} (then no local copy is touched).
    @ivar clock: for backoff, settling and scheduling.
    @ivar run_io: file I/O threads.
    @ivar run_cpu: hashing threads.
    @ivar connected: whether a peer is connected now.
    @ivar audit: the audit log.
    @ivar listener: told of files realized and removed (the watcher).
    @ivar protect: hands a kept version to the protected cache queue.
    @ivar max_jobs: jobs at once.
    @ivar settle: see L{SETTLE_DELAY}.
    @ivar jitter: a random number in C{[0, 1)} per retry.
    @ivar arenas: the arenas.
    """

    me: PeerId | None
    clock: IReactorTime
    run_io: RunInThread
    run_cpu: RunInThread
    connected: Callable[[PeerId], bool]
    audit: Audit = field(factory=Audit)
    listener: StoreListener | None = None
    protect: Protect | None = None
    max_jobs: int = MAX_JOBS
    settle: float = SETTLE_DELAY
    jitter: Callable[[], float] = random.random
    arenas: dict[ArenaName, ArenaConsensus] = field(factory=dict)
    started: Deferred[None] = field(factory=Deferred, init=False)
    _jobs: dict[tuple[ArenaName, str], Deferred[None]] = field(factory=dict, init=False)
    _filling: bool = field(default=False, init=False)
    _again: bool = field(default=False, init=False)
    _timer: IDelayedCall | None = field(default=None, init=False)
    _counted: float = field(default=float("-inf"), init=False)
    _count_timer: IDelayedCall | None = field(default=None, init=False)
    marks: MarkKeeper = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.marks = MarkKeeper(self.arenas, self.run_io, self.poke)

    # -- life --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        Deferred.fromCoroutine(self._start()).chainDeferred(self.started)

    async def _start(self) -> None:
        for arena in list(self.arenas.values()):
            await self._sweep(arena)
            if arena.datadir is not None:
                await self.marks.catch_up(arena.name)
        self.poke()

    async def _sweep(self, arena: ArenaConsensus) -> None:
        try:
            queued = await arena.run_interaction(
                _txn_sweep, arena.root, arena.default_mark, arena.copies
            )
        except Exception:
            log.failure(
                "arena {arena}: cannot fill the consensus queue", arena=arena.name
            )
            return
        if queued:
            log.info(
                "arena {arena}: {queued} paths to look at (mark {mark}, copies "
                "{copies})",
                arena=arena.name,
                queued=queued,
                mark=arena.default_mark,
                copies=arena.copies,
            )

    def reconfigure(self, name: ArenaName, default_mark: str, copies: int) -> None:
        """
        An arena's default mark or copy count changed (SIGHUP): every path
        it may concern is looked at again.
        """
        arena = self.arenas.get(name)
        if arena is None or (arena.default_mark, arena.copies) == (
            default_mark,
            copies,
        ):
            return
        arena.default_mark, arena.copies = default_mark, copies
        Deferred.fromCoroutine(self._sweep(arena)).addCallback(lambda _: self.poke())

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._count_timer is not None and self._count_timer.active():
            self._count_timer.cancel()
        self._count_timer = None
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        return DeferredList(jobs, consumeErrors=True).addCallback(lambda _: None)

    # -- the queue -----------------------------------------------------------

    def poke(self) -> None:
        """
        Look at the queues again (something became dirty, a job ended, a
        retry is due).
        """
        if not self.running:
            return
        if self._filling:
            self._again = True
            return
        self._filling = True
        Deferred.fromCoroutine(self._fill()).addErrback(
            lambda f: log.failure("the consensus queue failed", f)
        )

    async def _fill(self) -> None:
        try:
            while self.running:
                self._again = False
                await self._take()
                if not self._again:
                    break
        finally:
            self._filling = False

    async def _take(self) -> None:
        now = self.clock.seconds()
        earliest: float | None = None
        # The queue gauges: at most once a second (counting is a scan of
        # the queue, which a move of many files fills: counted at every
        # look, it was a tenth of the daemon's work during one), and a
        # second after the last look, so they end right.
        counted = now - self._counted >= 1.0
        if counted:
            self._counted = now
        elif self.audit.metrics is not None and self._count_timer is None:
            self._count_timer = self.clock.callLater(
                self._counted + 1.0 - now, self._count_due
            )
        for name in sorted(self.arenas):
            arena = self.arenas[name]
            busy = [path for (a, path) in self._jobs if a == name]
            free = self.max_jobs - len(self._jobs)
            if free > 0:
                rows = await arena.run_interaction(_txn_due, now, free, busy)
                for row in rows:
                    if not self.running:
                        return
                    self._start_job(arena, row)
                    busy.append(row.path)
            nxt = await arena.run_interaction(_txn_next_due, busy)
            if nxt is not None:
                earliest = nxt if earliest is None else min(earliest, nxt)
            if self.audit.metrics is not None and counted:
                queued, waiting = await arena.run_interaction(
                    _txn_queue_counts, self.clock.seconds()
                )
                self.audit.metrics.queue_state(name, queued, waiting)
        if self.audit.metrics is not None:
            self.audit.metrics.jobs_running(len(self._jobs))
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if earliest is not None and len(self._jobs) < self.max_jobs:
            delay = max(0.0, earliest - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self.poke()

    def _count_due(self) -> None:
        self._count_timer = None
        self.poke()

    def _start_job(self, arena: ArenaConsensus, row: QueueRow) -> None:
        key = (arena.name, row.path)
        d = Deferred.fromCoroutine(self._job(arena, row))
        self._jobs[key] = d

        def ended(result: object) -> None:
            self._jobs.pop(key, None)
            self.poke()

        d.addBoth(ended)

    def _delay(self, attempts: int) -> float:
        return backoff(attempts, self.jitter())

    # -- one job ---------------------------------------------------------------

    async def _job(self, arena: ArenaConsensus, row: QueueRow) -> None:
        path = row.path
        action = "decide"
        try:
            if row.action == UNREALIZE and row.blob is not None:
                await self._finish_unrealize(arena, row.blob, path)
            s = await self._situation(arena, path)
            decision = decide(
                s, arena.copies, self.connected, arena.datadir is not None
            )
            if decision.action in (NOTHING, WAIT):
                log.debug(
                    "arena {arena}: {path}: {reason}",
                    arena=arena.name,
                    path=path,
                    reason=decision.reason,
                )
            else:
                action = decision.action
                self.audit.step(
                    events.QUEUED, arena.name, path, action, reason=decision.reason
                )
                await self._step(arena, path, action, events.QUEUED)
                await self._act(arena, s, action)
                self.audit.done(arena.name, action)
            await arena.run_interaction(_txn_done, path, row.generation)
        except CancelledError:
            return
        except Exception as e:
            if not self.running:
                return
            if isinstance(e, RealizeError | OSError):
                reason = describe_error(e)
            else:
                reason = f"{type(e).__name__}: {e}"
                log.failure(
                    "arena {arena}: consensus job of {path} failed",
                    arena=arena.name,
                    path=path,
                )
            now = self.clock.seconds()
            try:
                when = await arena.run_interaction(
                    _txn_failed, path, row.generation, action, reason, now, self._delay
                )
            except Exception:
                log.failure(
                    "arena {arena}: cannot record a failed job", arena=arena.name
                )
                return
            self.audit.failed(arena.name, path, action, reason, when - now)

    async def _situation(self, arena: ArenaConsensus, path: str) -> Situation:
        situation: Situation = await arena.run_interaction(
            _txn_situation, arena.root, self.me, arena.default_mark, path
        )
        return situation

    async def _step(
        self,
        arena: ArenaConsensus,
        path: str,
        action: str,
        step: str,
        blob: int | None = None,
    ) -> None:
        await arena.run_interaction(_txn_step, path, action, step, blob)

    async def _act(self, arena: ArenaConsensus, s: Situation, action: str) -> None:
        overlay = None
        if action in (REALIZE, UPDATE, REMOVE, UNREALIZE):
            overlay = await self.run_io(live_overlay, arena.mountpoint)
        if action in (REALIZE, UPDATE):
            await self._realize(arena, s, action, overlay)
        elif action == REMOVE:
            await self._remove(arena, s, overlay)
        elif action == UNREALIZE:
            await self._unrealize(arena, s, overlay)
        elif action == KEEP:
            await self._keep(arena, s)
        else:
            raise BadRequest(f"unknown consensus action {action!r}")

    async def _download(self, arena: ArenaConsensus, s: Situation, action: str) -> Blob:
        """
        Fill the default version's blob from the peers (verified piece by
        piece by the downloader).

        @return: the blob, complete.
        @raise IOFailure: if the bytes cannot be fetched or kept.
        """
        version = s.default
        assert version is not None and version.hash is not None
        if arena.downloader is None:
            raise IOFailure(f"{arena.name}/{s.path}: no downloader")
        blob = await arena.blobs.open(version.inode, version.hash)
        missing = (
            ByteRanges.of((0, version.size)) - blob.ranges
            if version.size
            else ByteRanges()
        )
        if missing:
            await self._step(arena, s.path, action, events.DOWNLOAD)
            self.audit.step(
                events.DOWNLOAD,
                arena.name,
                s.path,
                action,
                size=missing.total(),
                hash=format_hash(version.hash),
                peers=list(s.holders),
            )
        fetched = 0
        for start, end in missing:
            offset = start
            while offset < end:
                size = min(DOWNLOAD_CHUNK, end - offset)
                data = await arena.downloader.read(
                    version.inode, offset, size, version.hash
                )
                if len(data) != size:
                    raise IOFailure(
                        f"{arena.name}/{s.path}: {len(data)} bytes at {offset}, "
                        f"not {size}"
                    )
                offset += size
                fetched += size
        # The downloader returns verified bytes before they are written.
        await arena.downloader.written(version.inode, version.hash)
        if fetched and self.audit.metrics is not None:
            self.audit.metrics.downloaded(arena.name, fetched)
        ranges = await arena.blobs.ranges(blob)
        if ranges is None or (version.size and not ranges.contains(0, version.size)):
            raise IOFailure(
                f"{arena.name}/{s.path}: the version could not be kept whole in "
                "the cache (disk full, or it changed)"
            )
        return blob

    async def _realize(
        self,
        arena: ArenaConsensus,
        s: Situation,
        action: str,
        overlay: LiveOverlay | None = None,
    ) -> None:
        version = s.default
        assert version is not None and version.hash is not None
        assert arena.datadir is not None
        blob = await self._download(arena, s, action)
        await self._step(arena, s.path, action, events.VERIFY)
        self.audit.step(
            events.VERIFY, arena.name, s.path, action, hash=format_hash(version.hash)
        )
        root = await self.run_cpu(verify_file, arena.blob_file(blob), version.size)
        if root != version.hash:
            await arena.run_interaction(blob_storage._txn_reset_ranges, blob.id)
            raise IOFailure(
                f"{arena.name}/{s.path}: the cached bytes make {format_hash(root)}, "
                f"not {format_hash(version.hash)}; fetched again next time"
            )
        await self._step(arena, s.path, action, events.REALIZE)
        replacing = None
        if action == UPDATE:
            assert s.local is not None
            replacing = (s.local.size, s.local.mtime_ns)
        own = s.mark.mark if s.mark.origin == ORIGIN_SET else None
        size, mtime_ns = await self.run_io(
            realize_blob,
            arena.datadir,
            s.path,
            arena.blob_file(blob),
            version.size,
            version.mtime_ns,
            replacing,
            own,
            overlay,
        )
        if self.listener is not None:
            self.listener.file_finished(
                arena.name, s.path, size, mtime_ns, version.hash
            )
        await arena.run_interaction(_txn_realized, blob.id, s.path, version.hash)
        if arena.downloader is not None:
            arena.downloader.forget(version.inode)
        self.audit.step(
            events.REALIZE,
            arena.name,
            s.path,
            action,
            size=size,
            hash=format_hash(version.hash),
        )
        if self.audit.metrics is not None:
            self.audit.metrics.moved(arena.name, realized=size)
        await self._mark_directories(arena, s.path)

    async def _mark_directories(self, arena: ArenaConsensus, path: str) -> None:
        """
        Write the marks set on the directories above a realized file onto
        the real directories (which the realize may have just made).
        """
        assert arena.datadir is not None
        directories = ancestors(path)[1:]
        marks = await arena.run_interaction(marks_of, directories)
        for directory, mark in sorted(marks.items()):
            try:
                await self.run_io(
                    write_real_mark, arena.datadir.directory, directory, mark
                )
            except RealizeError as e:
                log.warn(
                    "arena {arena}: cannot write the mark of {path}: {error}",
                    arena=arena.name,
                    path=directory,
                    error=describe_error(e),
                )

    async def _remove(
        self, arena: ArenaConsensus, s: Situation, overlay: LiveOverlay | None = None
    ) -> None:
        local = s.local
        assert local is not None and arena.datadir is not None
        await self._step(arena, s.path, REMOVE, events.REMOVE)
        aside = os.path.join(arena.blobs.directory, f"removing-{time.time_ns()}")
        with contextlib.suppress(NotFound):
            await self.run_io(
                remove_file,
                arena.datadir,
                s.path,
                local.size,
                local.mtime_ns,
                aside,
                overlay,
            )
        if self.listener is not None:
            self.listener.file_deleted(arena.name, s.path)
        await arena.run_interaction(_txn_clear_events, s.path, [EVENT_REMOVED_REMOTE])
        self.audit.step(
            events.REMOVE,
            arena.name,
            s.path,
            REMOVE,
            reason="a peer removed it",
            hash=None if local.hash is None else format_hash(local.hash),
        )

    async def _keep(self, arena: ArenaConsensus, s: Situation) -> None:
        version = s.default
        assert version is not None
        await self._download(arena, s, KEEP)
        if self.protect is not None:
            await _maybe_deferred(self.protect(arena.name, version.inode))

    async def _unrealize(
        self, arena: ArenaConsensus, s: Situation, overlay: LiveOverlay | None = None
    ) -> None:
        local, version = s.local, s.default
        assert local is not None and local.hash is not None and version is not None
        assert arena.datadir is not None
        index = arena.index()
        if index is None:
            raise IOFailure(f"{arena.name}: the index is not open")
        await self._step(arena, s.path, UNREALIZE, "drop")
        dropped = await index.record_drops([s.path])
        if not dropped:
            raise Conflict(f"{arena.name}/{s.path}: left the index meanwhile")
        try:
            await self._step(arena, s.path, UNREALIZE, "settle")
            await self._sleep(self.settle)
            again = await self._situation(arena, s.path)
            holders = [p for p in again.holders if self.connected(p)]
            if (
                again.local is not None
                or again.default is None
                or again.default.hash != local.hash
            ):
                raise Conflict(f"{arena.name}/{s.path}: changed while settling")
            if len(holders) < arena.copies:
                raise Conflict(
                    f"{arena.name}/{s.path}: only {len(holders)} of {arena.copies} "
                    "other connected peers still hold this version"
                )
            blob = await arena.blobs.open(version.inode, local.hash)
            await self._step(arena, s.path, UNREALIZE, events.UNREALIZE, blob.id)
            usage = await self.run_io(
                unrealize_file,
                arena.datadir,
                s.path,
                arena.blob_file(blob),
                local.size,
                local.mtime_ns,
                overlay,
            )
        except BaseException:
            await self._undrop(arena, index, s)
            raise
        await arena.run_interaction(
            blob_storage._txn_add_ranges,
            blob.id,
            ByteRanges.of((0, local.size)) if local.size else ByteRanges(),
            usage,
        )
        self.audit.step(
            events.UNREALIZE,
            arena.name,
            s.path,
            UNREALIZE,
            size=local.size,
            hash=format_hash(local.hash),
            peers=holders,
        )
        if self.audit.metrics is not None:
            self.audit.metrics.moved(arena.name, unrealized=local.size)
        if s.mark.mark == MARK_KEEP and self.protect is not None:
            await _maybe_deferred(self.protect(arena.name, version.inode))

    async def _undrop(
        self, arena: ArenaConsensus, index: ArenaIndex, s: Situation
    ) -> None:
        """
        An unrealize stopped after its Drop: the file is recorded again
        with its known hash if it is where it was, unchanged; else the
        watcher looks at it.
        """
        local = s.local
        assert local is not None and local.hash is not None
        try:
            entries = await index.lookup([s.path])
            if s.path not in entries:
                await index.record_versions(
                    [Version(s.path, local.size, local.mtime_ns, local.hash)]
                )
            if self.listener is not None:
                # The watcher checks it: a file changed meanwhile is hashed.
                self.listener.file_deleted(arena.name, s.path)
        except Exception:
            log.failure(
                "arena {arena}: cannot record {path} again after a stopped unrealize",
                arena=arena.name,
                path=s.path,
            )

    async def _finish_unrealize(
        self, arena: ArenaConsensus, blob_id: int, path: str
    ) -> None:
        """
        After a crash during an unrealize: if the file was moved into its
        blob but the blob's ranges were not recorded, verify and record
        them.
        """
        blob = await arena.run_interaction(blob_storage._txn_blob, blob_id)
        if blob is None or blob.queue == blob_storage.QUEUE_DELETING:
            return
        if blob.size == 0 or blob.ranges.contains(0, blob.size):
            return
        try:
            root = await self.run_cpu(verify_file, arena.blob_file(blob), blob.size)
        except RealizeError:
            return
        if root != blob.hash:
            return
        usage = await self.run_io(_disk_usage, arena.blob_file(blob))
        await arena.run_interaction(
            blob_storage._txn_add_ranges, blob.id, ByteRanges.of((0, blob.size)), usage
        )
        log.info(
            "arena {arena}: finished the interrupted unrealize of {path}",
            arena=arena.name,
            path=path,
        )

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda d: call.cancel() if call.active() else None)
        call = self.clock.callLater(seconds, d.callback, None)
        return d


def live_overlay(mountpoint: str | None) -> LiveOverlay | None:
    """
    The overlay mounted over an arena's datadir now, if any (blocking: it
    reads C{/proc/self/mounts}).

    @param mountpoint: the arena's C{mountpoint}, or C{None}.
    """
    if mountpoint is None or mounted(mountpoint) != "overlay":
        return None
    return LiveOverlay(mountpoint, os.access(DROP_CACHES, os.W_OK))


def _txn_realized(cursor: Any, blob_id: int, path: str, digest: bytes) -> None:
    """
    A blob became a real file: its row goes (its file is gone), and the
    version realized is remembered (the real file follows the default).
    """
    blob_storage._txn_forget_blob(cursor, blob_id)
    _txn_set_event(cursor, path, EVENT_REALIZED, digest, None)


def _disk_usage(path: str) -> int:
    return int(os.stat(path).st_blocks) * 512


async def _maybe_deferred(result: Any) -> None:
    if isinstance(result, Deferred):
        await result
