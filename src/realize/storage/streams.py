"""
Read streams of local files (L{realize.interfaces.ReadStream}): a file is
read chunk by chunk in threads, one chunk ahead of the consumer, hashed as
it is read; a small range is read in one thread call.

A sparse stream (L{LocalSparseStream}, L{realize.interfaces.
SparseReadStream}) gives the holes of a sparse file as L{Hole} items: they
are found with C{SEEK_DATA}/C{SEEK_HOLE}, never read, and hashed from the
digest of zeros (issue 15).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from twisted.internet.defer import Deferred

from realize.errors import Conflict
from realize.interfaces import RunInThread
from realize.model import CHUNK_SIZE, FileState, Hole
from realize.storage.arena import ArenaDir, ReadHandle

__all__ = ["LocalReadStream", "LocalSparseStream"]


class _LocalStream:
    """
    What both local read streams share: the file is opened, read and closed
    in threads, one piece ahead of the consumer.

    @cvar sparse: whether holes are given as L{Hole} items.
    """

    sparse = False

    def __init__(
        self,
        run: RunInThread,
        arena_dir: ArenaDir,
        path: str,
        start: int,
        end: int,
        hash_from: int | None,
    ) -> None:
        self._run = run
        self._arena_dir = arena_dir
        self._path = path
        self._offset = start
        self._start = start
        self._end = end
        self._hash_from = hash_from
        self._handle: ReadHandle | None = None
        self._pending: Deferred[bytes | Hole] | None = None
        self._state: FileState | None = None
        self._done = False

    async def _next(self) -> bytes | Hole:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._handle is None:
                if self._end - self._start <= CHUNK_SIZE:
                    data, self._state = await self._run(
                        self._arena_dir.read_all,
                        self._path,
                        self._start,
                        self._end,
                        self._hash_from,
                    )
                    self._done = True
                    if not data:
                        raise StopAsyncIteration
                    return data
                handle = await self._run(
                    self._arena_dir.open_read,
                    self._path,
                    self._start,
                    self._end,
                    self._hash_from,
                )
                if self._done:  # cancelled while opening
                    self._run(handle.close).addErrback(lambda f: None)
                    raise StopAsyncIteration
                self._handle = handle
                self._prefetch()
            # Keep the pending read visible while it runs, so that cancel()
            # closes the file only after it (not under the reading thread).
            pending = self._pending
            assert pending is not None
            piece = await pending
            self._pending = None
            if self._done:  # cancelled while reading; cancel() closes
                raise StopAsyncIteration
            length = piece.length if isinstance(piece, Hole) else len(piece)
            self._offset += length
            if length and self._offset < self._end:
                self._prefetch()
            else:
                handle, self._handle = self._handle, None
                self._done = True
                self._state = await self._run(self._arena_dir.end_read, handle)
            if not length:
                raise StopAsyncIteration
            return piece
        except StopAsyncIteration:
            raise
        except BaseException:
            self.cancel()
            raise

    def _prefetch(self) -> None:
        if self.sparse:
            self._pending = self._run(
                self._arena_dir.read_piece,
                self._handle,
                self._path,
                self._offset,
                self._end,
                CHUNK_SIZE,
            )
            return
        length = min(CHUNK_SIZE, self._end - self._offset)
        self._pending = self._run(
            self._arena_dir.read_chunk, self._handle, self._path, self._offset, length
        )

    async def result(self) -> FileState:
        if self._state is None:
            raise Conflict(f"read of {self._path!r} did not complete")
        return self._state

    def cancel(self) -> None:
        self._done = True
        handle, self._handle = self._handle, None
        pending, self._pending = self._pending, None
        if handle is None:
            return

        def close(_: object) -> None:
            self._run(handle.close).addErrback(lambda f: None)

        if pending is None:
            close(None)
        else:
            pending.addBoth(close)


class LocalReadStream(_LocalStream):
    """
    A read stream of a local file: reads chunk by chunk in threads,
    one chunk ahead of the consumer, hashing as it reads.
    """

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        piece = await self._next()
        assert isinstance(piece, bytes)
        return piece


class LocalSparseStream(_LocalStream):
    """
    A sparse read stream of a local file: as L{LocalReadStream}, but the
    holes of the file (at least L{realize.model.MIN_HOLE} long) come as
    L{Hole} items, neither read nor sent, and are hashed from the digest of
    zeros.
    """

    sparse = True

    def __aiter__(self) -> AsyncIterator[bytes | Hole]:
        return self

    async def __anext__(self) -> bytes | Hole:
        return await self._next()
