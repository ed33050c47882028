"""
Fault injection for tests (#testretries): L{FaultyStore} wraps any
L{realize.interfaces.Store} (in memory, local, or remote over AMP) and
makes chosen calls fail or misbehave.

Faults (L{Fault.kind}):

    - C{"error"}: the call raises L{Fault.error} (default: L{IOFailure}).
    - C{"disconnect"}: the call raises L{NetworkError}, as a dropped
      connection does.
    - C{"corrupt"}: the data of a read or a write has one byte flipped
      (at L{Fault.offset} within the stream, default 0).
    - C{"short"}: the data of a read or a write stops after
      L{Fault.offset} bytes, as a truncated stream does.
    - C{"shift"}: the data of an apply/write lands one byte later than it
      should (the bytes go to the wrong place): implemented by dropping
      the first byte of the data and appending a zero.

Each fault applies to a command name (C{"read"}, C{"write"}, ...), to an
optional path, and a number of times (C{times=-1}: forever).
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Sequence,
)
from typing import Any

from attrs import define, field

from realize.errors import IOFailure, NetworkError, RealizeError
from realize.interfaces import ChunkList, ReadStream, Store
from realize.model import (
    ArenaName,
    FileInfo,
    FileState,
    SmallFile,
    SmallRead,
    WriteResult,
)

__all__ = ["Fault", "FaultyStore"]


@define
class Fault:
    """
    One fault to inject.

    @ivar command: the store method it applies to (C{"read"},
        C{"write"}, C{"hash"}, C{"finish"}, ...).
    @ivar kind: C{"error"}, C{"disconnect"}, C{"corrupt"}, C{"short"} or
        C{"shift"}.
    @ivar path: only calls for this path, or any path if C{None}.
    @ivar times: how many calls it affects; -1 for all.
    @ivar offset: byte offset within the data (corrupt, short).
    @ivar error: the exception of an C{"error"} fault.
    @ivar hits: how many calls it affected so far.
    """

    command: str
    kind: str
    path: str | None = None
    times: int = 1
    offset: int = 0
    error: Exception | None = None
    hits: int = 0

    def matches(self, command: str, path: str | None) -> bool:
        return (
            self.command == command
            and (self.path is None or self.path == path)
            and (self.times < 0 or self.hits < self.times)
        )


class _Altered:
    """
    A chunk stream with a fault applied.
    """

    def __init__(self, data: AsyncIterable[bytes], fault: Fault) -> None:
        self._iterator = aiter(data)
        self._fault = fault
        self._position = 0
        self._done = False
        self._carry = b""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            self._done = True
            if self._fault.kind == "shift" and self._position:
                return b"\x00"
            raise
        start = self._position
        self._position += len(chunk)
        kind = self._fault.kind
        if kind == "corrupt" and start <= self._fault.offset < self._position:
            index = self._fault.offset - start
            chunk = chunk[:index] + bytes([chunk[index] ^ 0xFF]) + chunk[index + 1 :]
        elif kind == "short" and self._position > self._fault.offset:
            self._done = True
            chunk = chunk[: max(0, self._fault.offset - start)]
            if not chunk:
                raise StopAsyncIteration
        elif kind == "shift" and start == 0:
            chunk = chunk[1:]
            if not chunk:
                return await self.__anext__()
        return chunk


class _AlteredReadStream:
    def __init__(self, inner: ReadStream, fault: Fault) -> None:
        self._inner = inner
        self._altered = _Altered(inner, fault)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._altered

    async def result(self) -> FileState:
        return await self._inner.result()

    def cancel(self) -> None:
        self._inner.cancel()


@define(eq=False)
class FaultyStore:
    """
    A store that injects faults into the calls of another.

    @ivar inner: the real store.
    @ivar faults: the faults to inject, checked in order.
    """

    inner: Store
    faults: list[Fault] = field(factory=list)

    def add(self, *faults: Fault) -> FaultyStore:
        """
        @return: this store, with more faults.
        """
        self.faults.extend(faults)
        return self

    def _take(self, command: str, path: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.matches(command, path):
                fault.hits += 1
                return fault
        return None

    def _raise(self, fault: Fault | None) -> Fault | None:
        if fault is None:
            return None
        if fault.kind == "error":
            raise fault.error or IOFailure(f"injected {fault.command} failure")
        if fault.kind == "disconnect":
            raise NetworkError("connection lost (injected)")
        return fault

    def describe(self) -> str:
        return self.inner.describe()

    async def arenas(self) -> list[ArenaName]:
        self._raise(self._take("arenas", None))
        return await self.inner.arenas()

    async def list_files(self, arena: ArenaName) -> list[FileInfo]:
        self._raise(self._take("list", None))
        return await self.inner.list_files(arena)

    def read(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> ReadStream:
        fault = self._raise(self._take("read", path))
        stream = self.inner.read(arena, path, start, end, hash_from=hash_from)
        if fault is None:
            return stream
        return _AlteredReadStream(stream, fault)

    async def write(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes],
        **kwargs: Any,
    ) -> WriteResult:
        fault = self._raise(self._take("write", path))
        if fault is not None:
            data = _Altered(data, fault)
        return await self.inner.write(
            arena, path, start, end, file_size, data, **kwargs
        )

    async def truncate(self, arena: ArenaName, path: str, size: int) -> None:
        self._raise(self._take("truncate", path))
        await self.inner.truncate(arena, path, size)

    async def finish(
        self, arena: ArenaName, path: str, mtime_ns: int | None = None
    ) -> None:
        self._raise(self._take("finish", path))
        await self.inner.finish(arena, path, mtime_ns)

    async def delete(self, arena: ArenaName, path: str, **kwargs: Any) -> None:
        self._raise(self._take("delete", path))
        await self.inner.delete(arena, path, **kwargs)

    async def hash(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> FileState:
        self._raise(self._take("hash", path))
        return await self.inner.hash(arena, path, start, end)

    async def signature(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> bytes | None:
        self._raise(self._take("signature", path))
        return await self.inner.signature(arena, path, start, end)

    async def diff(
        self, arena: ArenaName, path: str, start: int, end: int, signature: bytes
    ) -> bytes:
        self._raise(self._take("diff", path))
        return await self.inner.diff(arena, path, start, end, signature)

    async def apply_delta(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        change: bytes,
    ) -> tuple[bytes, ...]:
        """
        C{"corrupt"} makes the delta land on the wrong bytes: it is applied,
        then the first byte of the range is flipped, and the leaves
        returned are those of what the file then holds.
        """
        fault = self._raise(self._take("apply_delta", path))
        leaves = await self.inner.apply_delta(
            arena, path, start, end, file_size, change
        )
        if fault is None or fault.kind != "corrupt" or end == start:
            return leaves
        stream = self.inner.read(arena, path, start, start + 1)
        first = b"".join([chunk async for chunk in stream])
        written = await self.inner.write(
            arena,
            path,
            start,
            start + 1,
            file_size,
            ChunkList([bytes([first[0] ^ 0xFF])]),
            hash=True,
        )
        return written.leaves + leaves[len(written.leaves) :]

    async def read_files(
        self, arena: ArenaName, files: Sequence[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        self._raise(self._take("read_files", None))
        return await self.inner.read_files(arena, files)

    async def write_files(
        self, arena: ArenaName, files: Sequence[SmallFile], data: Sequence[bytes]
    ) -> list[RealizeError | None]:
        """
        C{"corrupt"} flips the first byte of the data of each file the
        fault matches (by path, or all).
        """
        data = list(data)
        for index, file in enumerate(files):
            fault = self._raise(self._take("write_files", file.path))
            if fault is not None and fault.kind == "corrupt" and data[index]:
                content = data[index]
                data[index] = bytes([content[0] ^ 0xFF]) + content[1:]
        return await self.inner.write_files(arena, files, data)

    async def delete_files(
        self,
        arena: ArenaName,
        files: Sequence[FileInfo],
        partials: Collection[str] | None = None,
    ) -> list[RealizeError | None]:
        self._raise(self._take("delete_files", None))
        return await self.inner.delete_files(arena, files, partials)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Commands added later (signature, diff, apply_delta, ...) go
        # through with "error"/"disconnect" faults applied.
        method = getattr(self.inner, name)

        async def call(arena: ArenaName, path: str, *args: Any, **kwargs: Any) -> Any:
            self._raise(self._take(name, path))
            return await method(arena, path, *args, **kwargs)

        return call

    async def close(self, abort: bool = False) -> None:
        await self.inner.close(abort)
