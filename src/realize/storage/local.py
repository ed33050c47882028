"""
The store of the arenas on this machine: L{LocalStore} serves arena
directories (L{realize.storage.arena.ArenaDir}) through the
L{realize.interfaces.Store} interface, running their blocking work in
thread pools; it backs both C{realized} and the C{local}/C{local:/path}
sides of C{realize-move}.

Threads by kind (issue 8, item 10): file I/O (list, read, write, finish,
delete, the batches) runs through C{run_in_thread}, CPU work (hash,
signature, diff, apply of a delta) through C{run_cpu}, so that one does
not queue behind the other.  L{LocalStore.with_runners} gives a view of
the same store with other runners (a connection's own, bounded ones) that
shares everything else: arenas, group commit, listener, the registry of
writers and what is known of the files being written.

Bookkeeping (L{realize.storage.tracking}): one writer per path at a time
(a writing command from another view answers L{Conflict}), and the leaves
that the store's own commands computed, so that when a file is finished
the L{realize.interfaces.StoreListener} learns its root without the file
being read again; when the root is not known (a write without hashing,
concurrent repairs, a file changed by another program), the file is hashed
once more after it is final, and L{StoreCounts.rehashed} counts it.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Collection,
    Iterator,
    Sequence,
)
from contextlib import contextmanager
from typing import ClassVar

import attrs
from attrs import define, field
from twisted.logger import Logger

from realize.config import Config
from realize.errors import BadRequest, Conflict, NotFound, RealizeError
from realize.hashing import LEAF_SIZE
from realize.interfaces import RunInThread, StoreListener
from realize.model import (
    MAX_DELTA_RANGE,
    ArenaName,
    FileInfo,
    FileState,
    Hole,
    SmallFile,
    SmallRead,
    WriteResult,
    check_mtime,
    check_path,
    check_range,
    clamp_mtime,
)
from realize.storage import batch, repair
from realize.storage.arena import ArenaDir, Written
from realize.storage.commit import CommitItem, Committer
from realize.storage.paths import where
from realize.storage.streams import LocalReadStream, LocalSparseStream
from realize.storage.tracking import FileKey, LeafBook, WriterRegistry

__all__ = ["MAX_DELTA_RANGE", "LocalStore", "StoreCounts"]


@define
class StoreCounts:
    """
    What a store did that tests and metrics may want to see.

    @ivar rehashed: files hashed again when finished, because their root
        was not known.
    """

    rehashed: int = 0


def _check_delta_range(start: int, end: int, file_size: int | None = None) -> None:
    """
    @raise BadRequest: if the range of a delta command is malformed, not
        leaf-aligned at its start, or longer than L{MAX_DELTA_RANGE}.
    """
    check_range(start, end, file_size)
    if start % LEAF_SIZE:
        raise BadRequest(f"delta range start {start} is not a leaf boundary")
    if end - start > MAX_DELTA_RANGE:
        raise BadRequest(
            f"delta range of {end - start} bytes exceeds {MAX_DELTA_RANGE}"
        )


async def _next_chunk(iterator: AsyncIterator[bytes | Hole]) -> bytes | Hole | None:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


def arena_dirs_from_config(config: Config) -> dict[ArenaName, ArenaDir]:
    """
    @return: the arena directories of every arena of a config that has a
        datadir (a workdir inside it is excluded).
    """
    arena_dirs = {}
    for arena in config.arenas.values():
        if arena.datadir is None:
            continue
        exclude = None
        try:
            relative = arena.workdir.relative_to(arena.datadir)
        except ValueError:
            pass
        else:
            exclude = relative.parts[0] if relative.parts else None
        arena_dirs[arena.name] = ArenaDir(arena.name, str(arena.datadir), exclude)
    return arena_dirs


@define(eq=False)
class LocalStore:
    """
    The L{realize.interfaces.Store} of arenas on this machine, doing the
    blocking work in threads.

    @ivar arena_dirs: the arenas served.
    @ivar run_in_thread: runs blocking file I/O in a thread pool.
    @ivar label: how this store is named in messages (C{"local"},
        C{"local:/path"}).
    @ivar run_cpu: runs hashing and delta work (default: C{run_in_thread}).
    @ivar listener: told of every file finished or deleted, or C{None}.
    @ivar committer: the group commit, shared by all views.
    @ivar writers: who writes which file, shared by all views.
    @ivar book: leaves known of the files being written, shared.
    @ivar counts: what the store did, shared.
    @ivar owner: the writer this view is (L{WriterRegistry}).
    @ivar run_batch: runs the batches of small files (their reads, writes
        and deletions) in a worker process (L{realize.processes}: its
        arguments are pickled), or C{None} for C{run_in_thread}.
    """

    log: ClassVar[Logger] = Logger()

    arena_dirs: dict[ArenaName, ArenaDir]
    run_in_thread: RunInThread
    label: str = "local"
    run_cpu: RunInThread = field(default=None, kw_only=True)
    listener: StoreListener | None = field(default=None, kw_only=True)
    committer: Committer = field(default=None, kw_only=True)
    writers: WriterRegistry = field(factory=WriterRegistry, kw_only=True)
    book: LeafBook = field(factory=LeafBook, kw_only=True)
    counts: StoreCounts = field(factory=StoreCounts, kw_only=True)
    owner: object = field(factory=object, kw_only=True)
    run_batch: RunInThread | None = field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.run_cpu is None:
            self.run_cpu = self.run_in_thread
        if self.committer is None:
            self.committer = Committer(self.run_in_thread)

    @classmethod
    def from_config(
        cls,
        config: Config,
        run_in_thread: RunInThread,
        label: str = "local",
        *,
        run_cpu: RunInThread | None = None,
        listener: StoreListener | None = None,
        run_batch: RunInThread | None = None,
    ) -> LocalStore:
        """
        Serve every arena of a config that has a datadir.

        @param config: the config.
        @param run_in_thread: the file I/O thread pool runner.
        @param label: name of this store in messages.
        @param run_cpu: the CPU thread pool runner.
        @param listener: told of files finished and deleted.
        @param run_batch: the runner of small-file batches (default
            C{run_in_thread}).
        """
        return cls(
            arena_dirs_from_config(config),
            run_in_thread,
            label,
            run_cpu=run_cpu,  # type: ignore[arg-type]
            listener=listener,
            run_batch=run_batch,
        )

    @classmethod
    def single(
        cls,
        arena: ArenaName,
        path: str,
        run_in_thread: RunInThread,
        *,
        run_cpu: RunInThread | None = None,
        listener: StoreListener | None = None,
    ) -> LocalStore:
        """
        Serve one directory as the given arena (C{local:/path}).

        @param arena: the arena name.
        @param path: the directory.
        """
        return cls(
            {arena: ArenaDir(arena, path)},
            run_in_thread,
            f"local:{path}",
            run_cpu=run_cpu,  # type: ignore[arg-type]
            listener=listener,
        )

    def with_runners(
        self,
        run_in_thread: RunInThread,
        run_cpu: RunInThread | None = None,
        *,
        owner: object | None = None,
        run_batch: RunInThread | None = None,
    ) -> LocalStore:
        """
        A view of this store whose commands run in other threads (e.g. a
        connection's own bounded runners), sharing the arenas, group
        commit, listener, writers and leaves known.

        @param run_cpu: default C{run_in_thread}.
        @param owner: the writer the view is; default a new one, so that
            another view's command cannot write a file it is writing.
        @param run_batch: the runner of small-file batches; default this
            store's (C{None}: C{run_in_thread}).
        """
        return attrs.evolve(
            self,
            run_in_thread=run_in_thread,
            run_cpu=run_cpu or run_in_thread,
            owner=object() if owner is None else owner,
            run_batch=run_batch or self.run_batch,
        )

    def with_arena_dirs(self, arena_dirs: dict[ArenaName, ArenaDir]) -> LocalStore:
        """
        This store serving other arenas (a reloaded config), sharing all
        the rest.
        """
        return attrs.evolve(self, arena_dirs=arena_dirs)

    def describe(self) -> str:
        return self.label

    def arena_dir(self, arena: ArenaName) -> ArenaDir:
        """
        @return: the arena's directory.
        @raise NotFound: if this store has no such arena.
        """
        try:
            return self.arena_dirs[arena]
        except KeyError:
            raise NotFound(f"{self.label} has no arena {arena!r}") from None

    @contextmanager
    def _writing(self, key: FileKey, arena: ArenaName) -> Iterator[None]:
        self.writers.enter(key, self.owner, arena)
        try:
            yield
        finally:
            self.writers.leave(key)

    async def arenas(self) -> list[ArenaName]:
        return sorted(self.arena_dirs)

    async def list_files(self, arena: ArenaName) -> list[FileInfo]:
        return await self.run_in_thread(self.arena_dir(arena).list_files)

    def read(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> LocalReadStream:
        arena_dir = self._reading(arena, path, start, end, hash_from)
        return LocalReadStream(
            self.run_in_thread, arena_dir, path, start, end, hash_from
        )

    def _reading(
        self, arena: ArenaName, path: str, start: int, end: int, hash_from: int | None
    ) -> ArenaDir:
        """
        Check the arguments of a read.

        @return: the arena's directory.
        """
        arena_dir = self.arena_dir(arena)
        check_path(path)
        check_range(start, end)
        if hash_from is not None and (
            hash_from % LEAF_SIZE or not 0 <= hash_from <= start
        ):
            raise BadRequest(
                f"hash start {hash_from} is not a leaf boundary at or before {start}"
            )
        return arena_dir

    async def sparse(self) -> bool:
        return True

    def read_sparse(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> LocalSparseStream:
        arena_dir = self._reading(arena, path, start, end, hash_from)
        return LocalSparseStream(
            self.run_in_thread, arena_dir, path, start, end, hash_from
        )

    async def write_sparse(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes | Hole],
        *,
        hash: bool = False,
    ) -> WriteResult:
        return await self.write(arena, path, start, end, file_size, data, hash=hash)

    async def write(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes | Hole],
        *,
        hash: bool = False,
        finish_root: bytes | None = None,
        mtime_ns: int | None = None,
    ) -> WriteResult:
        arena_dir = self.arena_dir(arena)
        check_path(path)
        check_range(start, end, file_size)
        check_mtime(mtime_ns)
        verify = finish_root is not None and end == file_size
        key = arena_dir.key(path)
        to = None if end == file_size else end
        with self._writing(key, arena):
            with self.book.tracking(key, start, to, modifies=True) as learn:
                written = await self._write(
                    arena_dir, path, start, end, file_size, data, hash or verify, verify
                )
                learn(
                    written.stamp,
                    start,
                    end,
                    written.leaves if hash or verify else None,
                )
            finished = verify and written.root == finish_root
            if finished:
                await self._finish(arena, arena_dir, path, mtime_ns, written.root)
        return WriteResult(written.leaves if hash else (), finished)

    async def _write(
        self,
        arena_dir: ArenaDir,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes | Hole],
        hash: bool,
        verify: bool,
    ) -> Written:
        run = self.run_in_thread
        where_ = where(arena_dir.name, path)
        iterator = aiter(data)
        chunk = await _next_chunk(iterator)
        if chunk is None or (not isinstance(chunk, Hole) and len(chunk) == end - start):
            # The whole range in one chunk (or empty): one thread hop.
            if chunk is None and end > start:
                raise Conflict(
                    f"{where_}: write stream ended at {start}, expected {end}"
                )
            written: Written = await run(
                arena_dir.write_all,
                path,
                start,
                chunk or b"",
                end,
                file_size,
                hash,
                verify,
            )
            if chunk is not None and await _next_chunk(iterator) is not None:
                raise Conflict(
                    f"{where_}: more data than the announced {end - start} bytes"
                )
            return written
        handle = await run(arena_dir.open_write, path, start, end, file_size, hash)
        try:
            offset = start
            while chunk is not None:
                length = chunk.length if isinstance(chunk, Hole) else len(chunk)
                if offset + length > end:
                    raise Conflict(
                        f"{where_}: more data than the announced {end - start} bytes"
                    )
                if isinstance(chunk, Hole):
                    await run(arena_dir.write_hole, handle, offset, length)
                else:
                    await run(arena_dir.write_chunk, handle, chunk, offset)
                offset += length
                chunk = await _next_chunk(iterator)
            if offset != end:
                raise Conflict(
                    f"{where_}: write stream ended at {offset}, expected {end}"
                )
        except BaseException:
            await run(handle.close)
            raise
        return await run(arena_dir.end_write, handle, end, file_size, verify)

    async def truncate(self, arena: ArenaName, path: str, size: int) -> None:
        check_range(0, size)
        arena_dir = self.arena_dir(arena)
        key = arena_dir.key(path)
        with (
            self._writing(key, arena),
            self.book.tracking(key, size, None, modifies=True) as learn,
        ):
            learn(await self.run_in_thread(arena_dir.truncate, path, size))

    async def finish(
        self, arena: ArenaName, path: str, mtime_ns: int | None = None
    ) -> None:
        arena_dir = self.arena_dir(arena)
        check_path(path)
        check_mtime(mtime_ns)
        await self._finish(arena, arena_dir, path, mtime_ns, None)

    async def _finish(
        self,
        arena: ArenaName,
        arena_dir: ArenaDir,
        path: str,
        mtime_ns: int | None,
        known: bytes | None,
    ) -> None:
        """
        Commit a partial file, then tell the listener with its root: the
        one given, else the one the leaves known give, else hashed again.
        """
        item = CommitItem(arena_dir, path, mtime_ns)
        await self.committer.commit(item)
        key = arena_dir.key(path)
        seen = item.seen
        if seen is not None and known is None:
            known = self.book.root(key, seen)
        self.book.forget(key)
        if seen is None or self.listener is None:
            return
        size = seen.size
        mtime = clamp_mtime(seen.mtime_ns) if mtime_ns is None else mtime_ns
        if known is None:
            self.counts.rehashed += 1
            self.log.info(
                "arena {arena}: hashing {path} again: its root was not known",
                arena=arena,
                path=path,
            )
            try:
                known, size, mtime = await self.run_cpu(arena_dir.hash_final, path)
            except RealizeError as e:
                self.log.warn(
                    "arena {arena}: {path} finished, but not hashed: {error}",
                    arena=arena,
                    path=path,
                    error=str(e),
                )
                return
        self._tell(self.listener.file_finished, arena, path, size, mtime, known)

    def _tell(self, call: object, *args: object) -> None:
        try:
            call(*args)  # type: ignore[operator]
        except Exception:
            self.log.failure("the store's listener failed")

    async def delete(
        self,
        arena: ArenaName,
        path: str,
        *,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        [result] = await self._delete(arena, [(path, size, mtime_ns)])
        if result is not None:
            raise result

    async def _delete(
        self,
        arena: ArenaName,
        files: list[tuple[str, int | None, int | None]],
        partials: Collection[str] | None = None,
    ) -> list[RealizeError | None]:
        arena_dir = self.arena_dir(arena)
        durable = self.listener is not None
        run = self.run_batch or self.run_in_thread
        results = await run(batch.delete_files, arena_dir, files, durable, partials)
        outcomes: list[RealizeError | None] = []
        book = self.book
        for (path, _, _), result in zip(files, results, strict=True):
            if isinstance(result, RealizeError):
                outcomes.append(result)
                continue
            outcomes.append(None)
            if len(book):
                book.forget(arena_dir.key(path))
            if result and self.listener is not None:
                self._tell(self.listener.file_deleted, arena, path)
        return outcomes

    async def hash(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> FileState:
        check_range(start, end)
        if start % LEAF_SIZE:
            raise BadRequest(f"hash start {start} is not a leaf boundary")
        arena_dir = self.arena_dir(arena)
        with self.book.tracking(
            arena_dir.key(path), start, end, modifies=False
        ) as learn:
            state, stamp = await self.run_cpu(arena_dir.hash, path, start, end)
            learn(stamp, start, min(end, state.size), state.leaves)
        return state

    async def signature(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> bytes | None:
        _check_delta_range(start, end)
        arena_dir = self.arena_dir(arena)
        return await self.run_cpu(repair.signature, arena_dir, path, start, end)

    async def diff(
        self, arena: ArenaName, path: str, start: int, end: int, signature: bytes
    ) -> bytes:
        _check_delta_range(start, end)
        arena_dir = self.arena_dir(arena)
        return await self.run_cpu(repair.diff, arena_dir, path, start, end, signature)

    async def apply_delta(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        change: bytes,
    ) -> tuple[bytes, ...]:
        _check_delta_range(start, end, file_size)
        arena_dir = self.arena_dir(arena)
        key = arena_dir.key(path)
        to = None if end == file_size else end
        with (
            self._writing(key, arena),
            self.book.tracking(key, start, to, modifies=True) as learn,
        ):
            leaves, stamp = await self.run_cpu(
                repair.apply_delta, arena_dir, path, start, end, file_size, change
            )
            learn(stamp, start, end, leaves)
        return leaves

    async def read_files(
        self, arena: ArenaName, files: Sequence[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        arena_dir = self.arena_dir(arena)
        if self.run_batch is None:
            return await self.run_in_thread(batch.read_files, arena_dir, list(files))
        packed = await self.run_batch(batch.read_packed, arena_dir, list(files))
        return batch.unpack_reads(packed)

    async def write_files(
        self,
        arena: ArenaName,
        files: Sequence[SmallFile],
        data: Sequence[bytes | memoryview],
    ) -> list[RealizeError | None]:
        arena_dir = self.arena_dir(arena)
        results: list[RealizeError | None] = [None] * len(files)
        keys = [arena_dir.key(file.path) for file in files]
        todo: list[int] = []
        try:
            for index, key in enumerate(keys):
                try:
                    self.writers.enter(key, self.owner, arena)
                except Conflict as e:
                    results[index] = e
                else:
                    todo.append(index)
            if self.run_batch is None:
                written = await self.run_in_thread(
                    batch.write_files,
                    arena_dir,
                    [files[i] for i in todo],
                    [data[i] for i in todo],
                )
            else:
                written = await self.run_batch(
                    batch.write_packed,
                    arena_dir,
                    [
                        (f.path, f.size, f.mtime_ns, f.root, len(data[i]))
                        for i, f in zip(todo, (files[i] for i in todo), strict=True)
                    ],
                    b"".join(data[i] for i in todo),
                )
            listener, book = self.listener, self.book
            for index, outcome in zip(todo, written, strict=True):
                results[index] = outcome
                if outcome is not None:
                    continue
                if len(book):
                    book.forget(keys[index])
                if listener is not None:
                    file = files[index]
                    self._tell(
                        listener.file_finished,
                        arena,
                        file.path,
                        file.size,
                        file.mtime_ns,
                        file.root,
                    )
        finally:
            for index in todo:
                self.writers.leave(keys[index])
        return results

    async def delete_files(
        self,
        arena: ArenaName,
        files: Sequence[FileInfo],
        partials: Collection[str] | None = None,
    ) -> list[RealizeError | None]:
        return await self._delete(
            arena, [(info.path, info.size, info.mtime_ns) for info in files], partials
        )

    async def close(self, abort: bool = False) -> None:
        pass
