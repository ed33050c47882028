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
       L{Repairer} (a plain copy of the range; the delta repairer of
       #rsync plugs in here) and compared again; a file still differing
       is reported failed and its source kept.
    5. Finish on the destination (durable), then Delete on the source,
       only if the source still has the size and mtime it was listed
       with: a source file that changed during the move is kept.

Small files that the destination does not have go in one Write that
verifies the root and finishes in the same call.

Nothing is deleted at the source unless the destination holds a finished,
verified copy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Protocol, cast

import attrs
from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from realize.errors import (
    BadDelta,
    Conflict,
    NetworkError,
    RealizeError,
    SideError,
    describe,
    is_retryable,
)
from realize.hashing import LEAF_SIZE, align_down, format_hash, merkle_root
from realize.interfaces import ChunkList, ReadStream, Store
from realize.model import (
    CHUNK_SIZE,
    MAX_DELTA_RANGE,
    ArenaName,
    FileInfo,
    FileState,
    SmallFile,
    SmallRead,
)

__all__ = [
    "BYTE_BUDGET",
    "MAX_FILES_IN_FLIGHT",
    "ByteBudget",
    "CopyRepairer",
    "DeltaRepairer",
    "FileResult",
    "MoveObserver",
    "MoveReport",
    "MoveStats",
    "Mover",
    "NullObserver",
    "Repairer",
    "differing_ranges",
]

log = Logger(namespace="realize.move")

#: Bytes of files in flight at once: many small files move together, large
#: ones one or two at a time (#sizegate).
BYTE_BUDGET = 32 << 20

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

#: Most bytes of data in one batch.
BATCH_BYTES = 4 << 20

#: Batches in flight at once: enough to keep both sides busy (one being
#: read, one on the wire, one being written), few enough to bound memory.
BATCHES_IN_FLIGHT = 4

MOVED = "moved"
FAILED = "failed"


@frozen
class FileResult:
    """
    The outcome of one file.

    @ivar arena: its arena.
    @ivar path: its path.
    @ivar size: its size in bytes.
    @ivar status: C{"moved"} or C{"failed"}.
    @ivar copied: bytes sent to the destination for it.
    @ivar root: its Merkle root when moved.
    @ivar error: why it failed.
    """

    arena: ArenaName
    path: str
    size: int
    status: str
    copied: int = 0
    root: bytes | None = None
    error: BaseException | None = None


@define
class MoveReport:
    """
    The outcome of a move.

    @ivar results: one per file attempted.
    @ivar errors: errors that stopped a whole arena (listing failed, the
        connection was lost).
    """

    results: list[FileResult] = field(factory=list)
    errors: list[BaseException] = field(factory=list)

    @property
    def moved(self) -> list[FileResult]:
        return [r for r in self.results if r.status == MOVED]

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def ok(self) -> bool:
        """
        @return: whether every file moved and no arena failed.
        """
        return not self.errors and not self.failed

    @property
    def retryable(self) -> bool:
        """
        @return: whether everything that went wrong was a network error.
        """
        failures = [*self.errors, *(r.error for r in self.failed)]
        return bool(failures) and all(
            e is not None and is_retryable(e) for e in failures
        )


class MoveObserver(Protocol):
    """
    Receives the progress of a move (for progress bars, logs, metrics).
    """

    def listed(self, arena: ArenaName, files: int, size: int) -> None:
        """
        The files to move of an arena are known.

        @param files: number of files.
        @param size: their total size in bytes.
        """

    def file_started(self, arena: ArenaName, path: str, size: int) -> None: ...

    def transferred(self, arena: ArenaName, path: str, size: int) -> None:
        """
        @param size: bytes just sent to the destination for this file.
        """

    def file_done(self, result: FileResult) -> None: ...


class NullObserver:
    """
    An observer that ignores everything.
    """

    def listed(self, arena: ArenaName, files: int, size: int) -> None:
        pass

    def file_started(self, arena: ArenaName, path: str, size: int) -> None:
        pass

    def transferred(self, arena: ArenaName, path: str, size: int) -> None:
        pass

    def file_done(self, result: FileResult) -> None:
        pass


class ByteBudget:
    """
    A counting semaphore of bytes and files, first come first served.

    @ivar capacity: bytes available in all.
    @ivar max_files: holders at once.
    """

    def __init__(self, capacity: int, max_files: int) -> None:
        self.capacity = capacity
        self.max_files = max_files
        self._free = capacity
        self._files = 0
        self._waiting: deque[tuple[int, Deferred[None]]] = deque()

    def weight(self, size: int) -> int:
        """
        @return: what a file of C{size} bytes takes, at least 1, at most
            the capacity.
        """
        return max(1, min(size, self.capacity))

    def acquire(self, weight: int) -> Deferred[None]:
        """
        @return: a Deferred that fires once C{weight} bytes are held.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((weight, d))
        self._pump()
        return d

    def release(self, weight: int) -> None:
        self._free += weight
        self._files -= 1
        self._pump()

    def _pump(self) -> None:
        while self._waiting:
            weight, d = self._waiting[0]
            if weight > self._free or self._files >= self.max_files:
                return
            self._waiting.popleft()
            self._free -= weight
            self._files += 1
            d.callback(None)


class _Counted:
    """
    Wraps a source read stream: reports the bytes it yields, and turns its
    errors into source-side errors.
    """

    def __init__(
        self,
        stream: ReadStream,
        side: Callable[[BaseException], SideError],
        on_chunk: Callable[[int], None],
    ) -> None:
        self._iterator = aiter(stream)
        self._side = side
        self._on_chunk = on_chunk
        self.count = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            raise
        except SideError:
            raise
        except Exception as e:
            raise self._side(e) from e
        self.count += len(chunk)
        self._on_chunk(len(chunk))
        return chunk


def _value(failure: object) -> BaseException:
    """
    @return: the exception of a L{Failure} from a C{DeferredList}.
    """
    value = cast(Failure, failure).value
    assert value is not None
    return value


def _changed(info: FileInfo, size: int) -> Conflict:
    return Conflict(
        f"{info.path!r} changed during the move (size {info.size} -> {size}); "
        "kept, it will move on the next run"
    )


def differing_ranges(
    source: Sequence[bytes], destination: Sequence[bytes], size: int
) -> list[tuple[int, int]]:
    """
    Byte ranges whose Merkle leaves differ, adjacent ones merged.

    @param source: the source's leaves of the whole file.
    @param destination: the destination's leaves (possibly fewer).
    @param size: the file's size in bytes.
    @return: C{[(start, end), ...]} in bytes, sorted.
    """
    ranges: list[tuple[int, int]] = []
    for index, leaf in enumerate(source):
        if index < len(destination) and destination[index] == leaf:
            continue
        start = index * LEAF_SIZE
        end = min(start + LEAF_SIZE, size)
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


@define
class MoveStats:
    """
    What a move sent, for reports and metrics (#rsync).

    @ivar copied_bytes: file bytes sent as plain copies.
    @ivar delta_bytes: bytes of signatures and deltas exchanged.
    @ivar saved_bytes: bytes of ranges repaired by delta, less the
        signature and delta bytes it took.
    @ivar files_repaired: files whose destination had ranges that differed
        and were repaired.
    @ivar fallbacks: ranges a delta did not repair, copied instead.
    """

    copied_bytes: int = 0
    #: Bytes read from the source and handed to the destination, even if
    #: the write then failed (the destination keeps what it received).
    streamed_bytes: int = 0
    delta_bytes: int = 0
    saved_bytes: int = 0
    files_repaired: int = 0
    fallbacks: int = 0


class Repairer(Protocol):
    """
    Makes byte ranges of the destination file equal to the source's.
    """

    async def repair(
        self,
        mover: Mover,
        arena: ArenaName,
        info: FileInfo,
        ranges: Sequence[tuple[int, int]],
        expected: Sequence[bytes],
    ) -> list[tuple[bytes, ...]]:
        """
        @param ranges: C{(start, end)} byte ranges, C{start} on a leaf
            boundary.
        @param expected: the source's leaves of the whole file.
        @return: for each range, the destination's leaves of it afterwards.
        """


def _leaves_of(expected: Sequence[bytes], start: int, end: int) -> Sequence[bytes]:
    """
    @return: the leaves of C{[start, end)} among a whole file's leaves.
    """
    first = start // LEAF_SIZE
    return expected[first : first + -(-(end - start) // LEAF_SIZE)]


class CopyRepairer:
    """
    Repairs ranges by copying them again.
    """

    async def repair(
        self,
        mover: Mover,
        arena: ArenaName,
        info: FileInfo,
        ranges: Sequence[tuple[int, int]],
        expected: Sequence[bytes],
    ) -> list[tuple[bytes, ...]]:
        return [
            await mover.copy_range(arena, info, start, end) for start, end in ranges
        ]


class DeltaRepairer:
    """
    Repairs ranges with rsync deltas (Tridgell and Mackerras 1996): the
    destination sends the signature of what it has, the source answers a
    delta, the destination applies it.  Ranges are cut in pieces of at
    most L{MAX_DELTA_RANGE} bytes, and L{CONCURRENCY} pieces are in flight
    at once so that the source's and the destination's work overlap.  A
    piece whose delta only copies the basis needs no ApplyDelta
    (#emptydelta); one whose delta cannot be applied, or whose leaves still
    differ afterwards, is copied instead.
    """

    #: Pieces in flight at once.
    CONCURRENCY = 3

    async def repair(
        self,
        mover: Mover,
        arena: ArenaName,
        info: FileInfo,
        ranges: Sequence[tuple[int, int]],
        expected: Sequence[bytes],
    ) -> list[tuple[bytes, ...]]:
        slots = ByteBudget(self.CONCURRENCY, self.CONCURRENCY)
        errors: list[BaseException] = []

        async def one(first: int, last: int) -> tuple[bytes, ...]:
            try:
                return await self._piece(
                    mover, arena, info, first, last, _leaves_of(expected, first, last)
                )
            except BaseException as e:
                errors.append(e)
                raise
            finally:
                slots.release(1)

        pieces: list[tuple[int, Deferred[tuple[bytes, ...]]]] = []
        for index, (start, end) in enumerate(ranges):
            for first in range(start, end, MAX_DELTA_RANGE):
                await slots.acquire(1)
                if errors:
                    slots.release(1)
                    break
                last = min(first + MAX_DELTA_RANGE, end)
                pieces.append((index, Deferred.fromCoroutine(one(first, last))))
        await DeferredList([d for _, d in pieces], consumeErrors=True)
        if errors:
            raise errors[0]
        results: list[list[bytes]] = [[] for _ in ranges]
        for index, d in pieces:
            results[index].extend(cast(tuple[bytes, ...], d.result))
        return [tuple(leaves) for leaves in results]

    async def _piece(
        self,
        mover: Mover,
        arena: ArenaName,
        info: FileInfo,
        start: int,
        end: int,
        expected: Sequence[bytes],
    ) -> tuple[bytes, ...]:
        # Here, not at the top: numpy costs every start-up ~60 ms.
        from realize import delta

        stats = mover.stats
        try:
            signature = await mover.destination.signature(arena, info.path, start, end)
        except Exception as e:
            raise mover._destination_error(e) from e
        if signature is not None:
            try:
                change = await mover.source.diff(
                    arena, info.path, start, end, signature
                )
            except Exception as e:
                raise mover._source_error(e) from e
            spent = len(signature) + len(change)
            stats.delta_bytes += spent
            mover.sent(arena, info, spent)
            if not delta.is_identity(change, delta.signature_basis_length(signature)):
                try:
                    leaves = await mover.destination.apply_delta(
                        arena, info.path, start, end, info.size, change
                    )
                except (BadDelta, Conflict) as e:
                    log.warn(
                        "{arena}/{path}: delta for [{start}, {end}) not applied "
                        "({error}), copying the range",
                        arena=arena,
                        path=info.path,
                        start=start,
                        end=end,
                        error=str(e),
                    )
                except Exception as e:
                    raise mover._destination_error(e) from e
                else:
                    if tuple(leaves) == tuple(expected):
                        stats.saved_bytes += max(0, end - start - spent)
                        return tuple(leaves)
        stats.fallbacks += 1
        return await mover.copy_range(arena, info, start, end)


@define(eq=False)
class Mover:
    """
    Moves files from one store to another.

    @ivar source: where files come from.
    @ivar destination: where they go.
    @ivar observer: told about progress.
    @ivar repairer: fixes differing ranges.
    @ivar budget: bytes and files in flight.
    """

    source: Store
    destination: Store
    observer: MoveObserver = field(factory=NullObserver)
    repairer: Repairer = field(factory=DeltaRepairer)
    stats: MoveStats = field(factory=MoveStats)
    _sent: dict[tuple[ArenaName, str], int] = field(factory=dict, init=False)
    #: The report of the move in progress (or done).
    report: MoveReport = field(factory=MoveReport, init=False)
    budget: ByteBudget = field(
        factory=lambda: ByteBudget(BYTE_BUDGET, MAX_FILES_IN_FLIGHT)
    )
    batches: ByteBudget = field(
        factory=lambda: ByteBudget(BATCHES_IN_FLIGHT, BATCHES_IN_FLIGHT)
    )
    _broken: BaseException | None = field(default=None, init=False)

    def _source_error(self, error: BaseException) -> SideError:
        if isinstance(error, CancelledError):
            # The move is being stopped: not a failure of this file.
            raise error
        if isinstance(error, SideError):
            return error
        return SideError("source", self.source.describe(), error)

    def _destination_error(self, error: BaseException) -> SideError:
        if isinstance(error, CancelledError):
            raise error
        if isinstance(error, SideError):
            return error
        return SideError("destination", self.destination.describe(), error)

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
            raise self._source_error(_value(source))
        if not ok_destination:
            raise self._destination_error(_value(destination))
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
        files = sorted((f for f in source_files if not f.partial), key=lambda f: f.path)
        self.observer.listed(arena, len(files), sum(f.size for f in files))
        running: list[Deferred[None]] = []
        batch: list[FileInfo] = []
        batch_bytes = 0
        for info in files:
            if self._broken is not None:
                break
            if info.size <= BATCH_FILE:
                batch.append(info)
                batch_bytes += info.size
                if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                    await self._start_batch(running, arena, batch, report)
                    batch, batch_bytes = [], 0
                continue
            target = partials.get(info.path) or finals.get(info.path)
            await self._start(
                running, info.size, self._run_file(arena, info, target, report)
            )
        if batch and self._broken is None:
            await self._start_batch(running, arena, batch, report)
        for ok, result in await DeferredList(running, consumeErrors=True):
            if not ok:
                # Files report their own errors: what gets here is the move
                # being cancelled (a DeferredList that is cancelled fires
                # with its children's failures, it does not fail).
                cast(Failure, result).raiseException()

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
    ) -> None:
        """
        Start a batch once one of the L{BATCHES_IN_FLIGHT} slots is free.
        """
        await self.batches.acquire(1)
        size = sum(info.size for info in batch)
        if not await self._start(running, size, self._run_batch(arena, batch, report)):
            self.batches.release(1)

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
        side = error if isinstance(error, SideError) else self._destination_error(error)
        return FileResult(arena, info.path, info.size, FAILED, error=side)

    def _report(self, result: FileResult, report: MoveReport) -> None:
        """
        Log, record and show the result of one file.
        """
        if result.status == MOVED:
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

    async def _run_batch(
        self, arena: ArenaName, infos: list[FileInfo], report: MoveReport
    ) -> None:
        try:
            for info in infos:
                self.observer.file_started(arena, info.path, info.size)
            for result in await self._move_batch(arena, infos):
                self._report(result, report)
        finally:
            self.batches.release(1)

    async def _move_batch(
        self, arena: ArenaName, infos: list[FileInfo]
    ) -> list[FileResult]:
        """
        Move small files as a batch: one read at the source (each file read
        and hashed whole), one write at the destination (each written,
        verified and finished durably), one conditional delete at the
        source.  A file whose destination hash differs is copied once more
        on its own.
        """
        results: dict[str, FileResult] = {}
        try:
            reads = await self.source.read_files(
                arena, [(info.path, info.size) for info in infos]
            )
        except Exception as e:
            error = self._source_error(e)
            return [self._failed(arena, info, error) for info in infos]
        sending: list[tuple[FileInfo, SmallRead]] = []
        for info, read in zip(infos, reads, strict=True):
            if isinstance(read, BaseException):
                results[info.path] = self._failed(arena, info, self._source_error(read))
            elif read.size != info.size or read.mtime_ns != info.mtime_ns:
                results[info.path] = self._failed(
                    arena, info, self._source_error(_changed(info, read.size))
                )
            else:
                sending.append((info, read))
                self.observer.transferred(arena, info.path, info.size)
                self.stats.copied_bytes += info.size
        outcomes: list[RealizeError | None] = []
        if sending:
            try:
                outcomes = await self.destination.write_files(
                    arena,
                    [
                        SmallFile(info.path, info.size, info.mtime_ns, read.root)
                        for info, read in sending
                    ],
                    [read.data for _, read in sending],
                )
            except Exception as e:
                error = self._destination_error(e)
                for info, _ in sending:
                    results[info.path] = self._failed(arena, info, error)
                sending = []
        finished: list[tuple[FileInfo, SmallRead]] = []
        again: list[FileInfo] = []
        for (info, read), outcome in zip(sending, outcomes, strict=True):
            if outcome is None:
                finished.append((info, read))
            elif isinstance(outcome, Conflict):
                again.append(info)
            else:
                results[info.path] = self._failed(
                    arena, info, self._destination_error(outcome)
                )
        if finished:
            try:
                deleted: Sequence[
                    BaseException | None
                ] = await self.source.delete_files(
                    arena, [info for info, _ in finished]
                )
            except Exception as e:
                deleted = [e] * len(finished)
            for (info, read), deletion in zip(finished, deleted, strict=True):
                if deletion is None:
                    results[info.path] = FileResult(
                        arena, info.path, info.size, MOVED, info.size, read.root
                    )
                else:
                    results[info.path] = self._failed(
                        arena, info, self._source_error(deletion)
                    )
        for info in again:
            log.warn(
                "{arena}/{path}: destination hash differs, copying again",
                arena=arena,
                path=info.path,
            )
            try:
                result = await self._move_small(arena, info, attempts=1)
                results[info.path] = attrs.evolve(
                    result, copied=result.copied + info.size
                )
            except Exception as e:
                results[info.path] = self._failed(arena, info, e)
        return [results[info.path] for info in infos]

    def _source_read(
        self,
        arena: ArenaName,
        info: FileInfo,
        start: int,
        end: int,
        hash_from: int | None,
    ) -> tuple[ReadStream, _Counted]:
        try:
            stream = self.source.read(arena, info.path, start, end, hash_from=hash_from)
        except Exception as e:
            raise self._source_error(e) from e

        def transferred(size: int) -> None:
            self.stats.streamed_bytes += size
            self.observer.transferred(arena, info.path, size)

        return stream, _Counted(stream, self._source_error, transferred)

    async def _source_state(self, stream: ReadStream, info: FileInfo) -> FileState:
        try:
            state = await stream.result()
        except Exception as e:
            raise self._source_error(e) from e
        if state.size != info.size or state.mtime_ns != info.mtime_ns:
            raise self._source_error(_changed(info, state.size))
        return state

    async def copy_range(
        self, arena: ArenaName, info: FileInfo, start: int, end: int
    ) -> tuple[bytes, ...]:
        """
        Copy a byte range of a file from the source to the destination's
        partial file.

        @param start: a leaf boundary.
        @return: the destination's leaves of C{[start, end)}.
        """
        stream, counted = self._source_read(arena, info, start, end, None)
        try:
            result = await self.destination.write(
                arena, info.path, start, end, info.size, counted, hash=True
            )
        except Exception as e:
            stream.cancel()
            raise self._destination_error(e) from e
        await self._source_state(stream, info)
        self.stats.copied_bytes += counted.count
        self.sent(arena, info, counted.count)
        return result.leaves

    def sent(self, arena: ArenaName, info: FileInfo, size: int) -> None:
        """
        Count bytes sent for a file's repair (copies, signatures, deltas).
        """
        key = (arena, info.path)
        self._sent[key] = self._sent.get(key, 0) + size

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
            raise self._destination_error(e) from e
        held = align_down(have)
        prefix: Deferred[FileState] | None = None
        if held:
            prefix = Deferred.fromCoroutine(destination.hash(arena, info.path, 0, held))
        stream, counted = self._source_read(arena, info, have, size, 0)
        try:
            written = await destination.write(
                arena, info.path, have, size, size, counted, hash=True
            )
        except Exception as e:
            stream.cancel()
            if prefix is not None:
                prefix.addErrback(lambda _: None)
            raise self._destination_error(e) from e
        source_state = await self._source_state(stream, info)
        try:
            prefix_leaves = (await prefix).leaves if prefix is not None else ()
        except Exception as e:
            raise self._destination_error(e) from e
        copied = counted.count
        self.stats.copied_bytes += copied
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
            fixed = await self.repairer.repair(self, arena, info, ranges, source_leaves)
            for (start, _), leaves in zip(ranges, fixed, strict=True):
                first = start // LEAF_SIZE
                repaired[first : first + len(leaves)] = leaves
            if differing_ranges(source_leaves, repaired, size):
                raise self._destination_error(
                    Conflict(
                        f"arena {arena!r}, path {info.path!r}: still differs "
                        "from the source after repair; source kept"
                    )
                )
            self.stats.files_repaired += 1
            copied += self._sent.pop((arena, info.path), 0)
        root = merkle_root(source_leaves)
        try:
            await destination.finish(arena, info.path, info.mtime_ns)
        except Exception as e:
            raise self._destination_error(e) from e
        await self._delete_source(arena, info)
        return FileResult(arena, info.path, size, MOVED, copied, root)

    async def _move_small(
        self, arena: ArenaName, info: FileInfo, attempts: int = 2
    ) -> FileResult:
        for attempt in range(attempts):
            stream, counted = self._source_read(arena, info, 0, info.size, 0)
            chunks = [chunk async for chunk in counted]
            state = await self._source_state(stream, info)
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
                raise self._destination_error(e) from e
            self.stats.copied_bytes += info.size
            if result.finished:
                await self._delete_source(arena, info)
                return FileResult(
                    arena, info.path, info.size, MOVED, info.size * (attempt + 1), root
                )
            log.warn(
                "{arena}/{path}: destination hash differs, copying again",
                arena=arena,
                path=info.path,
            )
        raise self._destination_error(
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
            raise self._source_error(e) from e
