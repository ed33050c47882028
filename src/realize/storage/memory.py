"""
An in-memory L{realize.interfaces.Store}, for tests.

Same semantics as L{realize.storage.local.LocalStore} (final and partial
files, which one each command acts on, a final file never changed before
its replacement is finished, conditional delete, errors), with
no threads and no I/O: every call completes synchronously unless the data
given to a write waits, so the mover can be tested with
C{SynchronousTestCase}.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Collection,
    Iterable,
    Sequence,
)

from attrs import define, field

from realize import delta
from realize.errors import BadDelta, BadRequest, Conflict, NotFound, RealizeError
from realize.hashing import LEAF_SIZE, LeafHasher, align_down, merkle_root
from realize.model import (
    CHUNK_SIZE,
    ArenaName,
    FileInfo,
    FileState,
    SmallFile,
    SmallRead,
    WriteResult,
    check_path,
    check_range,
)

__all__ = ["MemoryFile", "MemoryStore"]


@define
class MemoryFile:
    """
    A file in memory.
    """

    data: bytearray
    mtime_ns: int


def _leaves(
    data: bytes | bytearray | memoryview, start: int, end: int
) -> tuple[bytes, ...]:
    hasher = LeafHasher()
    hasher.update(memoryview(data)[start:end])
    return tuple(hasher.finish())


class _MemoryReadStream:
    def __init__(
        self,
        file: MemoryFile,
        data: bytes,
        leaves: tuple[bytes, ...],
        chunk_size: int,
    ) -> None:
        self._chunks = [
            data[i : i + chunk_size] for i in range(0, len(data), chunk_size)
        ]
        self._file = file
        self._leaves = leaves
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self.cancelled or not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)

    async def result(self) -> FileState:
        # Size and mtime as the read ends, as LocalStore reports them.
        return FileState(self._leaves, len(self._file.data), self._file.mtime_ns)

    def cancel(self) -> None:
        self.cancelled = True


@define(eq=False)
class MemoryStore:
    """
    Arenas of files in memory.

    @ivar label: name in messages.
    @ivar finals: final files by arena and path.
    @ivar partials: partial files by arena and path.
    @ivar chunk_size: bytes per chunk of a read stream.
    @ivar calls: names of the commands called, in order, for tests.
    """

    label: str = "memory"
    finals: dict[ArenaName, dict[str, MemoryFile]] = field(factory=dict)
    partials: dict[ArenaName, dict[str, MemoryFile]] = field(factory=dict)
    chunk_size: int = CHUNK_SIZE
    calls: list[str] = field(factory=list)
    _clock: int = 1_000_000_000

    @classmethod
    def with_files(
        cls,
        arena: str,
        files: dict[str, bytes] | None = None,
        partials: dict[str, bytes] | None = None,
        label: str = "memory",
    ) -> MemoryStore:
        """
        @param arena: the one arena.
        @param files: final files, path to content.
        @param partials: partial files, path to content.
        @return: a store holding them.
        """
        store = cls(label=label)
        store.add_arena(ArenaName(arena))
        for path, data in (files or {}).items():
            store.finals[ArenaName(arena)][path] = MemoryFile(
                bytearray(data), store.tick()
            )
        for path, data in (partials or {}).items():
            store.partials[ArenaName(arena)][path] = MemoryFile(
                bytearray(data), store.tick()
            )
        return store

    def add_arena(self, arena: ArenaName) -> None:
        self.finals.setdefault(arena, {})
        self.partials.setdefault(arena, {})

    def tick(self) -> int:
        """
        @return: a new, later mtime in ns.
        """
        self._clock += 1_000
        return self._clock

    def content(self, arena: str, path: str, partial: bool = False) -> bytes | None:
        """
        @return: the content of a final (or partial) file, or C{None}.
        """
        files = (self.partials if partial else self.finals)[ArenaName(arena)]
        file = files.get(path)
        return None if file is None else bytes(file.data)

    def _arena(
        self, arena: ArenaName
    ) -> tuple[dict[str, MemoryFile], dict[str, MemoryFile]]:
        if arena not in self.finals:
            raise NotFound(f"{self.label} has no arena {arena!r}")
        return self.finals[arena], self.partials[arena]

    def _prefer(self, arena: ArenaName, path: str, partial_first: bool) -> MemoryFile:
        check_path(path)
        finals, partials = self._arena(arena)
        order: Iterable[dict[str, MemoryFile]] = (
            (partials, finals) if partial_first else (finals, partials)
        )
        for files in order:
            if path in files:
                return files[path]
        raise NotFound(f"arena {arena!r}: no file {path!r}")

    def _partial(self, arena: ArenaName, path: str, create: bool) -> MemoryFile:
        check_path(path)
        finals, partials = self._arena(arena)
        if path in partials:
            return partials[path]
        if path in finals:
            # The new version starts as a copy; the final stays as it is.
            final = finals[path]
            partials[path] = MemoryFile(bytearray(final.data), final.mtime_ns)
        elif create:
            partials[path] = MemoryFile(bytearray(), self.tick())
        else:
            raise NotFound(f"arena {arena!r}: no file {path!r}")
        return partials[path]

    def describe(self) -> str:
        return self.label

    async def arenas(self) -> list[ArenaName]:
        self.calls.append("arenas")
        return sorted(self.finals)

    async def list_files(self, arena: ArenaName) -> list[FileInfo]:
        self.calls.append("list")
        finals, partials = self._arena(arena)
        return [
            FileInfo(path, len(f.data), f.mtime_ns, False) for path, f in finals.items()
        ] + [
            FileInfo(path, len(f.data), f.mtime_ns, True)
            for path, f in partials.items()
        ]

    def read(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> _MemoryReadStream:
        self.calls.append("read")
        check_range(start, end)
        file = self._prefer(arena, path, partial_first=False)
        data = bytes(file.data[start:end])
        leaves: tuple[bytes, ...] = ()
        if hash_from is not None:
            if hash_from % LEAF_SIZE or hash_from > start:
                raise BadRequest(f"hash start {hash_from} is not a leaf boundary")
            leaves = _leaves(file.data, hash_from, end)
        return _MemoryReadStream(file, data, leaves, self.chunk_size)

    async def write(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes],
        *,
        hash: bool = False,
        finish_root: bytes | None = None,
        mtime_ns: int | None = None,
    ) -> WriteResult:
        self.calls.append("write")
        check_range(start, end, file_size)
        file = self._partial(arena, path, create=True)
        offset = start
        async for chunk in data:
            if offset + len(chunk) > end:
                raise Conflict(
                    f"arena {arena!r}, path {path!r}: more data than announced"
                )
            if len(file.data) < offset:
                file.data.extend(bytes(offset - len(file.data)))
            file.data[offset : offset + len(chunk)] = chunk
            offset += len(chunk)
        if offset != end:
            raise Conflict(
                f"arena {arena!r}, path {path!r}: write stream ended at {offset}, "
                f"expected {end}"
            )
        if len(file.data) < end:
            file.data.extend(bytes(end - len(file.data)))
        if end == file_size:
            del file.data[file_size:]
        file.mtime_ns = self.tick()
        leaves = _leaves(file.data, align_down(start), end) if hash else ()
        finished = False
        if finish_root is not None and end == file_size:
            if merkle_root(_leaves(file.data, 0, file_size)) == finish_root:
                await self.finish(arena, path, mtime_ns)
                finished = True
        return WriteResult(leaves, finished)

    async def truncate(self, arena: ArenaName, path: str, size: int) -> None:
        self.calls.append("truncate")
        check_range(0, size)
        file = self._partial(arena, path, create=False)
        if len(file.data) < size:
            file.data.extend(bytes(size - len(file.data)))
        del file.data[size:]
        file.mtime_ns = self.tick()

    async def finish(
        self, arena: ArenaName, path: str, mtime_ns: int | None = None
    ) -> None:
        self.calls.append("finish")
        check_path(path)
        finals, partials = self._arena(arena)
        if path in partials:
            finals[path] = partials.pop(path)
        elif path not in finals:
            raise NotFound(f"arena {arena!r}: no file {path!r}")
        if mtime_ns is not None:
            finals[path].mtime_ns = mtime_ns

    async def delete(
        self,
        arena: ArenaName,
        path: str,
        *,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        self.calls.append("delete")
        check_path(path)
        finals, partials = self._arena(arena)
        file = finals.get(path)
        if file is not None and size is not None:
            if len(file.data) != size or (
                mtime_ns is not None and file.mtime_ns != mtime_ns
            ):
                raise Conflict(
                    f"arena {arena!r}, path {path!r}: changed since it was listed, "
                    "not deleted"
                )
        finals.pop(path, None)
        partials.pop(path, None)

    async def hash(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> FileState:
        self.calls.append("hash")
        check_range(start, end)
        if start % LEAF_SIZE:
            raise BadRequest(f"hash start {start} is not a leaf boundary")
        file = self._prefer(arena, path, partial_first=True)
        end = min(end, len(file.data))
        leaves = _leaves(file.data, start, end) if end > start else ()
        return FileState(leaves, len(file.data), file.mtime_ns)

    async def signature(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> bytes | None:
        self.calls.append("signature")
        check_range(start, end)
        file = self._prefer(arena, path, partial_first=True)
        if len(file.data) <= start:
            return None
        return delta.signature(bytes(file.data[start:end]))

    async def diff(
        self, arena: ArenaName, path: str, start: int, end: int, signature: bytes
    ) -> bytes:
        self.calls.append("diff")
        check_range(start, end)
        try:
            parsed = delta.parse_signature(signature, max_basis_length=end - start)
        except delta.DeltaFormatError as e:
            raise BadDelta(str(e)) from None
        file = self._prefer(arena, path, partial_first=False)
        if len(file.data) < end:
            raise Conflict(f"arena {arena!r}, path {path!r}: shorter than {end}")
        return delta.diff(bytes(file.data[start:end]), parsed)

    async def apply_delta(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        change: bytes,
    ) -> tuple[bytes, ...]:
        self.calls.append("apply_delta")
        check_range(start, end, file_size)
        basis = bytes(self._prefer(arena, path, partial_first=True).data[start:end])
        try:
            output = delta.apply(basis, change, expected_length=end - start)
        except delta.DeltaFormatError as e:
            raise BadDelta(str(e)) from None
        file = self._partial(arena, path, create=False)
        if len(file.data) < start:
            file.data.extend(bytes(start - len(file.data)))
        file.data[start : start + len(output)] = output
        if end == file_size:
            del file.data[file_size:]
        file.mtime_ns = self.tick()
        return _leaves(output, 0, len(output))

    async def read_files(
        self, arena: ArenaName, files: Sequence[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        self.calls.append("read_files")
        self._arena(arena)
        results: list[SmallRead | RealizeError] = []
        for path, limit in files:
            try:
                file = self._prefer(arena, path, partial_first=False)
            except RealizeError as e:
                results.append(e)
                continue
            data = bytes(file.data) if len(file.data) <= limit else b""
            results.append(
                SmallRead(
                    data,
                    len(file.data),
                    file.mtime_ns,
                    merkle_root(_leaves(data, 0, len(data))),
                )
            )
        return results

    async def write_files(
        self,
        arena: ArenaName,
        files: Sequence[SmallFile],
        data: Sequence[bytes | memoryview],
    ) -> list[RealizeError | None]:
        self.calls.append("write_files")
        self._arena(arena)
        results: list[RealizeError | None] = []
        for file, content in zip(files, data, strict=True):
            try:
                if len(content) != file.size:
                    raise Conflict(f"arena {arena!r}, path {file.path!r}: wrong size")
                partial = self._partial(arena, file.path, create=True)
                partial.data[:] = content
                partial.mtime_ns = self.tick()
                if merkle_root(_leaves(content, 0, len(content))) != file.root:
                    raise Conflict(
                        f"arena {arena!r}, path {file.path!r}: hash differs from "
                        "the source's"
                    )
                finals, partials = self._arena(arena)
                finals[file.path] = partials.pop(file.path)
                finals[file.path].mtime_ns = file.mtime_ns
                results.append(None)
            except RealizeError as e:
                results.append(e)
        return results

    async def delete_files(
        self,
        arena: ArenaName,
        files: Sequence[FileInfo],
        partials: Collection[str] | None = None,
    ) -> list[RealizeError | None]:
        self.calls.append("delete_files")
        self._arena(arena)
        results: list[RealizeError | None] = []
        for info in files:
            # A partial the caller did not list stays.
            kept = None
            if partials is not None and info.path not in partials:
                kept = self.partials[arena].pop(info.path, None)
            try:
                await self.delete(
                    arena, info.path, size=info.size, mtime_ns=info.mtime_ns
                )
                self.calls.pop()
                results.append(None)
            except RealizeError as e:
                results.append(e)
            finally:
                if kept is not None:
                    self.partials[arena][info.path] = kept
        return results

    async def close(self, abort: bool = False) -> None:
        pass
