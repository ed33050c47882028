"""
The two sides of a move as the mover and its repairers use them: the
stores, which side an error belongs to, and counted copying of a range.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Generic, TypeVar

from attrs import frozen
from twisted.internet.defer import CancelledError

from realize.errors import Conflict, SideError
from realize.interfaces import ReadStream, SparseReadStream, SparseStore, Store
from realize.model import ArenaName, FileInfo, FileState, Hole
from realize.services.report import Ledger

#: What a stream yields: C{bytes}, or also L{Hole}s (a sparse stream).
C = TypeVar("C", bound=bytes | Hole)

__all__ = ["CountedStream", "Sides", "changed"]


def changed(info: FileInfo, size: int) -> Conflict:
    """
    @return: the error of a source file that changed since it was listed.
    """
    return Conflict(
        f"{info.path!r} changed during the move (size {info.size} -> {size}); "
        "kept, it will move on the next run"
    )


class CountedStream(Generic[C]):
    """
    Wraps a source read stream: reports the bytes it yields, and turns its
    errors into source-side errors.

    @ivar count: bytes yielded so far (the holes of a sparse stream are
        not sent: not counted).
    """

    def __init__(
        self,
        stream: AsyncIterable[C],
        side: Callable[[BaseException], SideError],
        on_chunk: Callable[[int], None],
        on_hole: Callable[[int], None] | None = None,
    ) -> None:
        self._iterator = aiter(stream)
        self._side = side
        self._on_chunk = on_chunk
        self._on_hole = on_hole
        self.count = 0

    def __aiter__(self) -> AsyncIterator[C]:
        return self

    async def __anext__(self) -> C:
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            raise
        except SideError:
            raise
        except Exception as e:
            raise self._side(e) from e
        if isinstance(chunk, Hole):
            if self._on_hole is not None:
                self._on_hole(chunk.length)
            return chunk
        self.count += len(chunk)
        self._on_chunk(len(chunk))
        return chunk


@frozen(eq=False)
class Sides:
    """
    The source and the destination of a move, and where it counts.

    @ivar source: where files come from.
    @ivar destination: where they go.
    @ivar ledger: counts what is sent.
    """

    source: Store
    destination: Store
    ledger: Ledger

    def source_error(self, error: BaseException) -> SideError:
        """
        @return: C{error} as an error of the source (unchanged if it
            already names a side).
        @raise CancelledError: if C{error} is one: the move is being
            stopped, which is no failure of a file.
        """
        if isinstance(error, CancelledError):
            raise error
        if isinstance(error, SideError):
            return error
        return SideError("source", self.source.describe(), error)

    def destination_error(self, error: BaseException) -> SideError:
        """
        @return: C{error} as an error of the destination (unchanged if it
            already names a side).
        @raise CancelledError: if C{error} is one.
        """
        if isinstance(error, CancelledError):
            raise error
        if isinstance(error, SideError):
            return error
        return SideError("destination", self.destination.describe(), error)

    def read(
        self,
        arena: ArenaName,
        info: FileInfo,
        start: int,
        end: int,
        hash_from: int | None,
    ) -> tuple[ReadStream, CountedStream[bytes]]:
        """
        Start reading C{[start, end)} of a source file.

        @param hash_from: where the source's hash starts (see
            L{Store.read}), or C{None} for no hash.
        @return: the stream (for its result) and the same bytes counted as
            streamed, to give to the destination.
        @raise SideError: a source error.
        """
        try:
            stream = self.source.read(arena, info.path, start, end, hash_from=hash_from)
        except Exception as e:
            raise self.source_error(e) from e
        ledger = self.ledger
        path = info.path

        def streamed(size: int) -> None:
            ledger.streamed(arena, path, size)

        return stream, CountedStream(stream, self.source_error, streamed)

    def read_sparse(
        self,
        source: SparseStore,
        arena: ArenaName,
        info: FileInfo,
        start: int,
        end: int,
        hash_from: int | None,
    ) -> tuple[SparseReadStream, CountedStream[bytes | Hole]]:
        """
        As L{read}, from a source that gives the holes of a sparse file as
        L{Hole}s: those are shown as transferred, not counted as sent.

        @param source: the source, as a L{SparseStore}.
        """
        try:
            stream = source.read_sparse(
                arena, info.path, start, end, hash_from=hash_from
            )
        except Exception as e:
            raise self.source_error(e) from e
        ledger = self.ledger
        path = info.path

        def streamed(size: int) -> None:
            ledger.streamed(arena, path, size)

        def skipped(size: int) -> None:
            ledger.skipped(arena, path, size)

        return stream, CountedStream(stream, self.source_error, streamed, skipped)

    async def source_state(
        self, stream: ReadStream | SparseReadStream, info: FileInfo
    ) -> FileState:
        """
        @return: the state of a source file once C{stream} is read.
        @raise SideError: a source error, or the file changed since it
            was listed (size or mtime).
        """
        try:
            state = await stream.result()
        except Exception as e:
            raise self.source_error(e) from e
        if state.size != info.size or state.mtime_ns != info.mtime_ns:
            raise self.source_error(changed(info, state.size))
        return state

    async def copy_range(
        self, arena: ArenaName, info: FileInfo, start: int, end: int
    ) -> tuple[bytes, ...]:
        """
        Copy a byte range of a file from the source to the destination's
        partial file, counted as copied.

        @param start: a leaf boundary.
        @return: the destination's leaves of C{[start, end)}.
        @raise SideError: naming the side that failed.
        """
        stream, counted = self.read(arena, info, start, end, None)
        try:
            result = await self.destination.write(
                arena, info.path, start, end, info.size, counted, hash=True
            )
        except Exception as e:
            stream.cancel()
            raise self.destination_error(e) from e
        await self.source_state(stream, info)
        self.ledger.copied(arena, info.path, counted.count)
        return result.leaves
