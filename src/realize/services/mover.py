"""
The move algorithm of C{realize-move} (DESIGN.md section 6).

L{Mover.move} moves every final file of some arenas from a source store to
a destination store (each local or remote: the mover only sees
L{realize.interfaces.Store}).  For each file, concurrently with others
within a byte budget (#sizegate):

    1. Pair the source file with the destination's partial (or final) file
       of the same path; a destination file longer than the source is
       truncated.
    2. Copy the bytes the destination lacks (from its size to the source's
       size) as a stream, while the source reads and hashes the whole file
       once, sequentially (#hasverification, #readopt).
    3. Meanwhile ask the destination for the Merkle leaves of the whole
       leaves it already held (#sizebeforehash); the write returns the
       leaves of what it wrote.
    4. Compare the leaves.  Differing leaves are repaired by a
       L{realize.services.repair.Repairer} (rsync deltas by default, a
       plain copy of the range where a delta does not do) and compared
       again; a file still differing is reported failed and its source
       kept.
    5. Finish on the destination (durable), then Delete on the source,
       only if the source still has the size and mtime it was listed
       with: a source file that changed during the move is kept.

Small files that the destination does not have go in one Write that
verifies the root and finishes in the same call.

Nothing is deleted at the source unless the destination holds a finished,
verified copy.

Around the mover: L{realize.services.budget} (the byte budget),
L{realize.services.report} (results, report, totals and the L{Ledger
<realize.services.report.Ledger>} that counts them),
L{realize.services.sides} (the stores, error attribution, counted
copying) and L{realize.services.repair} (the repairers).
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, cast

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from realize.errors import (
    Conflict,
    NetworkError,
    RealizeError,
    SideError,
    describe,
    is_retryable,
)
from realize.hashing import LEAF_SIZE, align_down, format_hash, merkle_root
from realize.interfaces import (
    ChunkList,
    ReadStream,
    SparseReadStream,
    SparseStore,
    Store,
)
from realize.model import (
    CHUNK_SIZE,
    ArenaName,
    FileInfo,
    FileState,
    Hole,
    SmallFile,
)
from realize.services.budget import ByteBudget
from realize.services.repair import DeltaRepairer, Repairer, differing_ranges
from realize.services.report import (
    FileResult,
    FileStatus,
    Ledger,
    MoveObserver,
    MoveReport,
    MoveStats,
    NullObserver,
)
from realize.services.sides import CountedStream, Sides, changed

__all__ = [
    "BATCHES_IN_FLIGHT",
    "BATCH_BYTES",
    "BATCH_FILE",
    "BATCH_FILES",
    "BYTE_BUDGET",
    "MAX_FILES_IN_FLIGHT",
    "SMALL_FILE",
    "Mover",
]

log = Logger(namespace="realize.move")

#: Bytes of large files (above L{BATCH_FILE}) in flight at once: many move
#: together, the largest one at a time (#sizegate).  Batches of small files
#: are bounded apart, by L{BATCHES_IN_FLIGHT} of at most L{BATCH_BYTES}
#: (16 MiB): 32 MiB in flight in all.
BYTE_BUDGET = 16 << 20

#: Files in flight at once, whatever their size.
MAX_FILES_IN_FLIGHT = 128

#: Files up to this size that the destination lacks go in a single Write
#: that verifies and finishes them.
SMALL_FILE = CHUNK_SIZE

#: Files up to this size move in batches, whatever the destination has:
#: sending them again costs less than comparing them.
BATCH_FILE = 256 << 10

#: Most files in one batch.
BATCH_FILES = 256

#: Most bytes of data in one batch: with L{BATCHES_IN_FLIGHT}, 16 MiB of
#: small files in flight (each held a few times over on the way: read,
#: sent, received, handed to the daemon's worker process).
BATCH_BYTES = 2 << 20

#: Batches in flight at once: enough to keep both sides busy (being read,
#: on the wire, received, written by the daemon's worker process, answered),
#: few enough to bound memory.  8 rather than 4 since the daemon writes
#: batches in a worker process: 100,000 files of 1 KiB moved in a median
#: of 8.96 s instead of 9.67 s (3 interleaved rounds; issue 15).
BATCHES_IN_FLIGHT = 8


def _value(failure: object) -> BaseException:
    """
    @return: the exception of a L{Failure} from a C{DeferredList}.
    """
    value = cast(Failure, failure).value
    assert value is not None
    return value


@define(eq=False)
class Mover:
    """
    Moves files from one store to another.

    @ivar source: where files come from.
    @ivar destination: where they go.
    @ivar observer: told about progress.
    @ivar repairer: fixes differing ranges.
    @ivar stats: the running totals (shared by the attempts of a job).
    @ivar budget: bytes and files in flight.
    @ivar batches: batches in flight.
    @ivar log_moves: whether to log an info event per file moved; without
        it (when nobody would see them: realize-move shows warnings by
        default) a move of many small files spares building them.
    @ivar report: the report of the move in progress (or done).
    @ivar ledger: counts what is sent, into C{stats}.
    @ivar sides: the stores as the copying code and the repairer use them.
    """

    source: Store
    destination: Store
    observer: MoveObserver = field(factory=NullObserver)
    repairer: Repairer = field(factory=DeltaRepairer)
    stats: MoveStats = field(factory=MoveStats)
    budget: ByteBudget = field(
        factory=lambda: ByteBudget(BYTE_BUDGET, MAX_FILES_IN_FLIGHT)
    )
    batches: ByteBudget = field(
        factory=lambda: ByteBudget(BATCHES_IN_FLIGHT, BATCHES_IN_FLIGHT)
    )
    log_moves: bool = True
    report: MoveReport = field(factory=MoveReport, init=False)
    ledger: Ledger = field(init=False)
    sides: Sides = field(init=False)
    _broken: BaseException | None = field(default=None, init=False)
    _sparse: tuple[SparseStore, SparseStore] | None = field(default=None, init=False)
    _sparse_asked: bool = field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.ledger = Ledger(self.stats, self.observer)
        self.sides = Sides(self.source, self.destination, self.ledger)

    async def move(self, arenas: Sequence[ArenaName]) -> MoveReport:
        """
        Move every final file of the arenas.

        @param arenas: arena names, present on both sides.
        @return: the report; errors of single files are in it, not raised.
        """
        report = self.report = MoveReport()
        for arena in arenas:
            if self._broken is not None:
                break
            await self._move_arena(arena, report)
        return report

    async def _list(self, arena: ArenaName) -> tuple[list[FileInfo], list[FileInfo]]:
        sources = Deferred.fromCoroutine(self.source.list_files(arena))
        destinations = Deferred.fromCoroutine(self.destination.list_files(arena))
        results = await DeferredList([sources, destinations], consumeErrors=True)
        (ok_source, source), (ok_destination, destination) = results
        if not ok_source:
            raise self.sides.source_error(_value(source))
        if not ok_destination:
            raise self.sides.destination_error(_value(destination))
        return source, destination

    async def _move_arena(self, arena: ArenaName, report: MoveReport) -> None:
        try:
            source_files, destination_files = await self._list(arena)
        except SideError as e:
            report.errors.append(e)
            if is_retryable(e):
                self._broken = e
            return
        finals: dict[str, FileInfo] = {}
        partials: dict[str, FileInfo] = {}
        for info in destination_files:
            (partials if info.partial else finals)[info.path] = info
        # The source's own partial files do not move; deleting a file
        # deletes its partial too, which a batch looks for only where the
        # listing showed one.
        files = sorted((f for f in source_files if not f.partial), key=lambda f: f.path)
        source_partials = {f.path for f in source_files if f.partial}
        self.observer.listed(arena, len(files), sum(f.size for f in files))
        running: list[Deferred[None]] = []
        # Two queues, each in path order, that do not wait for each other: a
        # large file that holds the whole byte budget does not hold up the
        # batches of small files (#sizegate).
        small = [info for info in files if info.size <= BATCH_FILE]
        large = [info for info in files if info.size > BATCH_FILE]
        scheduling = [
            Deferred.fromCoroutine(
                self._schedule_files(running, arena, large, finals, partials, report)
            ),
            Deferred.fromCoroutine(
                self._schedule_batches(running, arena, small, report, source_partials)
            ),
        ]
        for ok, result in await DeferredList(scheduling, consumeErrors=True):
            if not ok:
                cast(Failure, result).raiseException()
        for ok, result in await DeferredList(running, consumeErrors=True):
            if not ok:
                # Files report their own errors: what gets here is the move
                # being cancelled (a DeferredList that is cancelled fires
                # with its children's failures, it does not fail).
                cast(Failure, result).raiseException()

    async def _schedule_batches(
        self,
        running: list[Deferred[None]],
        arena: ArenaName,
        files: list[FileInfo],
        report: MoveReport,
        partials: set[str],
    ) -> None:
        """
        Start the batches of small files, in order, as batch slots free up.

        @param files: the files of at most L{BATCH_FILE} bytes.
        @param partials: the paths of the source's partial files.
        """
        batch: list[FileInfo] = []
        batch_bytes = 0
        for info in files:
            if self._broken is not None:
                return
            batch.append(info)
            batch_bytes += info.size
            if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                await self._start_batch(running, arena, batch, report, partials)
                batch, batch_bytes = [], 0
        if batch and self._broken is None:
            await self._start_batch(running, arena, batch, report, partials)

    async def _schedule_files(
        self,
        running: list[Deferred[None]],
        arena: ArenaName,
        files: list[FileInfo],
        finals: dict[str, FileInfo],
        partials: dict[str, FileInfo],
        report: MoveReport,
    ) -> None:
        """
        Start the moves of large files, in order, as the byte budget allows.

        @param files: the files of more than L{BATCH_FILE} bytes.
        @param finals: the destination's final files by path.
        @param partials: the destination's partial files by path.
        """
        for info in files:
            if self._broken is not None:
                return
            target = partials.get(info.path) or finals.get(info.path)
            await self._start(
                running, info.size, self._run_file(arena, info, target, report)
            )

    async def _start(
        self,
        running: list[Deferred[None]],
        size: int,
        work: Coroutine[Any, Any, None],
    ) -> bool:
        """
        Start some work once the budget has room for C{size} bytes.

        @return: whether it started (not if the move broke meanwhile).
        """
        weight = self.budget.weight(size)
        await self.budget.acquire(weight)
        if self._broken is not None:
            self.budget.release(weight)
            work.close()
            return False
        d = Deferred.fromCoroutine(work)
        d.addBoth(self._released, weight)
        running.append(d)
        return True

    async def _start_batch(
        self,
        running: list[Deferred[None]],
        arena: ArenaName,
        batch: list[FileInfo],
        report: MoveReport,
        partials: set[str],
    ) -> None:
        """
        Start a batch once one of the L{BATCHES_IN_FLIGHT} slots is free (a
        batch holds at most L{BATCH_BYTES}: the slots bound its memory, not
        the byte budget of the large files).

        @param partials: the paths of the source's partial files.
        """
        await self.batches.acquire(1)
        if self._broken is not None:
            self.batches.release(1)
            return
        running.append(
            Deferred.fromCoroutine(self._run_batch(arena, batch, report, partials))
        )

    def _released(self, result: object, weight: int) -> object:
        self.budget.release(weight)
        return result

    async def _run_file(
        self,
        arena: ArenaName,
        info: FileInfo,
        target: FileInfo | None,
        report: MoveReport,
    ) -> None:
        self.observer.file_started(arena, info.path, info.size)
        try:
            result = await self._move_file(arena, info, target)
        except Exception as e:
            result = self._failed(arena, info, e)
        self._report(result, report)

    def _failed(
        self, arena: ArenaName, info: FileInfo, error: BaseException
    ) -> FileResult:
        """
        @return: the result of a file that failed with C{error} (a
            destination error unless it names its side).
        """
        if isinstance(error, CancelledError):
            raise error
        side = (
            error
            if isinstance(error, SideError)
            else self.sides.destination_error(error)
        )
        self.ledger.settle(arena, info.path)
        return FileResult(arena, info.path, info.size, FileStatus.FAILED, error=side)

    def _report(self, result: FileResult, report: MoveReport) -> None:
        """
        Log, record and show the result of one file.
        """
        if result.status is FileStatus.MOVED:
            if self.log_moves:
                self._log_moved(result)
        else:
            error = result.error
            if (
                isinstance(error, SideError)
                and isinstance(error.cause, NetworkError)
                and self._broken is None
            ):
                self._broken = error
            log.error(
                "failed to move {arena}/{path}: {error}",
                arena=result.arena,
                path=result.path,
                error=describe(error or Exception("unknown error")),
            )
        report.results.append(result)
        self.observer.file_done(result)

    def _log_moved(self, result: FileResult) -> None:
        log.info(
            "moved {arena}/{path} ({size} bytes, {hash}) from {source} "
            "to {destination}",
            arena=result.arena,
            path=result.path,
            size=result.size,
            hash=format_hash(result.root or b""),
            source=self.source.describe(),
            destination=self.destination.describe(),
        )

    async def _run_batch(
        self,
        arena: ArenaName,
        infos: list[FileInfo],
        report: MoveReport,
        partials: set[str],
    ) -> None:
        try:
            started = self.observer.file_started
            for info in infos:
                started(arena, info.path, info.size)
            results = await self._move_batch(arena, infos, partials)
            done = self.observer.file_done
            append = report.results.append
            for result in results:
                if result.status is FileStatus.MOVED and not self.log_moves:
                    # What _report does for a moved file nobody logs.
                    append(result)
                    done(result)
                else:
                    self._report(result, report)
        finally:
            self.batches.release(1)

    async def _move_batch(
        self, arena: ArenaName, infos: list[FileInfo], partials: set[str]
    ) -> list[FileResult]:
        """
        Move small files as a batch: one read at the source (each file read
        and hashed whole), one write at the destination (each written,
        verified and finished durably), one conditional delete at the
        source (of the file, and of its partial where C{partials}, the
        source's listed partial files, has one).  A file whose destination
        hash differs is copied once more on its own.

        Only a file whose read matches its listing (size and mtime) is
        sent; only one the destination answers as finished (its root
        verified, durable) is deleted, and only if it still has the size
        and mtime of its listing.

        @return: the result of each file, in the order of C{infos}.
        """
        results: list[FileResult | None] = [None] * len(infos)
        try:
            reads = await self.source.read_files(
                arena, [(info.path, info.size) for info in infos]
            )
        except Exception as e:
            error = self.sides.source_error(e)
            return [self._failed(arena, info, error) for info in infos]
        # The files sent: their indexes in infos, and what is written.
        sent: list[int] = []
        files: list[SmallFile] = []
        contents: list[bytes] = []
        for index, (info, read) in enumerate(zip(infos, reads, strict=True)):
            if isinstance(read, BaseException):
                results[index] = self._failed(
                    arena, info, self.sides.source_error(read)
                )
            elif read.size != info.size or read.mtime_ns != info.mtime_ns:
                results[index] = self._failed(
                    arena, info, self.sides.source_error(changed(info, read.size))
                )
            else:
                sent.append(index)
                files.append(SmallFile(info.path, info.size, info.mtime_ns, read.root))
                contents.append(read.data)
        del reads
        self.ledger.handed(arena, [infos[index] for index in sent])
        outcomes: list[RealizeError | None] = []
        if sent:
            try:
                outcomes = await self.destination.write_files(arena, files, contents)
            except Exception as e:
                error = self.sides.destination_error(e)
                for index in sent:
                    results[index] = self._failed(arena, infos[index], error)
                sent, files = [], []
        del contents
        # The files finished at the destination: their indexes in infos,
        # and their roots.
        finished: list[int] = []
        roots: list[bytes] = []
        again: list[int] = []
        for index, file, outcome in zip(sent, files, outcomes, strict=True):
            if outcome is None:
                finished.append(index)
                roots.append(file.root)
            elif isinstance(outcome, Conflict):
                again.append(index)
            else:
                results[index] = self._failed(
                    arena, infos[index], self.sides.destination_error(outcome)
                )
        if finished:
            try:
                deleted: Sequence[
                    BaseException | None
                ] = await self.source.delete_files(
                    arena, [infos[index] for index in finished], partials
                )
            except Exception as e:
                deleted = [e] * len(finished)
            settle = self.ledger.settle
            for index, root, deletion in zip(finished, roots, deleted, strict=True):
                info = infos[index]
                if deletion is None:
                    results[index] = FileResult(
                        arena,
                        info.path,
                        info.size,
                        FileStatus.MOVED,
                        settle(arena, info.path),
                        root,
                    )
                else:
                    results[index] = self._failed(
                        arena, info, self.sides.source_error(deletion)
                    )
        for index in again:
            info = infos[index]
            log.warn(
                "{arena}/{path}: destination hash differs, copying again",
                arena=arena,
                path=info.path,
            )
            try:
                # What the batch sent for it is counted in the result.
                results[index] = await self._move_small(arena, info, attempts=1)
            except Exception as e:
                results[index] = self._failed(arena, info, e)
        return cast(list[FileResult], results)

    async def _sparse_sides(self) -> tuple[SparseStore, SparseStore] | None:
        """
        @return: the source and the destination if both move sparse files
            hole by hole (L{SparseStore}), else C{None}; asked once.
        """
        if not self._sparse_asked:
            self._sparse_asked = True
            source, destination = self.source, self.destination
            if isinstance(source, SparseStore) and isinstance(destination, SparseStore):
                try:
                    if await source.sparse() and await destination.sparse():
                        self._sparse = (source, destination)
                except Exception as e:
                    log.warn(
                        "cannot tell whether both sides move sparse files: "
                        "{error}; holes are sent as zeros",
                        error=describe(e),
                    )
        return self._sparse

    def _moved(self, arena: ArenaName, info: FileInfo, root: bytes) -> FileResult:
        """
        @return: the result of a file that moved, with what was sent for it.
        """
        copied = self.ledger.settle(arena, info.path)
        return FileResult(arena, info.path, info.size, FileStatus.MOVED, copied, root)

    async def _move_file(
        self, arena: ArenaName, info: FileInfo, target: FileInfo | None
    ) -> FileResult:
        size = info.size
        have = target.size if target is not None else 0
        if target is None and size <= SMALL_FILE:
            return await self._move_small(arena, info)
        destination = self.destination
        try:
            if have > size:
                await destination.truncate(arena, info.path, size)
                have = size
            elif target is not None and not target.partial and have < size:
                # Turn the final file into the partial one before hashing it
                # and writing to it at the same time.
                await destination.truncate(arena, info.path, have)
        except Exception as e:
            raise self.sides.destination_error(e) from e
        held = align_down(have)
        prefix: Deferred[FileState] | None = None
        if held:
            prefix = Deferred.fromCoroutine(destination.hash(arena, info.path, 0, held))
        stream: ReadStream | SparseReadStream
        sides = await self._sparse_sides()
        if sides is not None:
            # Holes of a sparse file are found at the source, hashed from
            # the digest of zeros, sent as their length and left
            # unallocated at the destination.
            reader, writer = sides
            stream, sparse = self.sides.read_sparse(reader, arena, info, have, size, 0)
            counted: CountedStream[bytes] | CountedStream[bytes | Hole] = sparse
            writing = writer.write_sparse(
                arena, info.path, have, size, size, sparse, hash=True
            )
        else:
            stream, dense = self.sides.read(arena, info, have, size, 0)
            counted = dense
            writing = destination.write(
                arena, info.path, have, size, size, dense, hash=True
            )
        try:
            written = await writing
        except Exception as e:
            stream.cancel()
            if prefix is not None:
                prefix.addErrback(lambda _: None)
            raise self.sides.destination_error(e) from e
        source_state = await self.sides.source_state(stream, info)
        try:
            prefix_leaves = (await prefix).leaves if prefix is not None else ()
        except Exception as e:
            raise self.sides.destination_error(e) from e
        self.ledger.copied(arena, info.path, counted.count)
        source_leaves = source_state.leaves
        destination_leaves = prefix_leaves + written.leaves
        ranges = differing_ranges(source_leaves, destination_leaves, size)
        if ranges:
            log.warn(
                "{arena}/{path}: {count} range(s) differ at the destination, repairing",
                arena=arena,
                path=info.path,
                count=len(ranges),
            )
            repaired = list(destination_leaves)
            fixed = await self.repairer.repair(
                self.sides, arena, info, ranges, source_leaves
            )
            for (start, _), leaves in zip(ranges, fixed, strict=True):
                first = start // LEAF_SIZE
                repaired[first : first + len(leaves)] = leaves
            if differing_ranges(source_leaves, repaired, size):
                raise self.sides.destination_error(
                    Conflict(
                        f"arena {arena!r}, path {info.path!r}: still differs "
                        "from the source after repair; source kept"
                    )
                )
            self.ledger.repaired()
        root = merkle_root(source_leaves)
        try:
            await destination.finish(arena, info.path, info.mtime_ns)
        except Exception as e:
            raise self.sides.destination_error(e) from e
        await self._delete_source(arena, info)
        return self._moved(arena, info, root)

    async def _move_small(
        self, arena: ArenaName, info: FileInfo, attempts: int = 2
    ) -> FileResult:
        for _ in range(attempts):
            stream, counted = self.sides.read(arena, info, 0, info.size, 0)
            chunks = [chunk async for chunk in counted]
            state = await self.sides.source_state(stream, info)
            root = merkle_root(state.leaves)

            try:
                result = await self.destination.write(
                    arena,
                    info.path,
                    0,
                    info.size,
                    info.size,
                    ChunkList(chunks),
                    finish_root=root,
                    mtime_ns=info.mtime_ns,
                )
            except Exception as e:
                raise self.sides.destination_error(e) from e
            self.ledger.copied(arena, info.path, info.size)
            if result.finished:
                await self._delete_source(arena, info)
                return self._moved(arena, info, root)
            log.warn(
                "{arena}/{path}: destination hash differs, copying again",
                arena=arena,
                path=info.path,
            )
        raise self.sides.destination_error(
            Conflict(
                f"arena {arena!r}, path {info.path!r}: still differs from the "
                "source after copying it again; source kept"
            )
        )

    async def _delete_source(self, arena: ArenaName, info: FileInfo) -> None:
        try:
            await self.source.delete(
                arena, info.path, size=info.size, mtime_ns=info.mtime_ns
            )
        except Exception as e:
            raise self.sides.source_error(e) from e
