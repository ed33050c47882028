"""
The store as a peer sees it: the daemon's local arenas, filtered by each
arena's ACL (DESIGN.md section 4, "Authorization").

L{StoreService} holds the current config and the L{LocalStore} of its
arenas; L{StoreService.view} gives the L{PeerView} that one connection's
commands go through.  A config reload (SIGHUP) swaps both at once; views
look them up on every command, so new commands see the new config without
dropping connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence

from attrs import define, field
from twisted.application.service import Service
from twisted.logger import Logger

from realize.config import Config
from realize.errors import NotFound, RealizeError, Unauthorized
from realize.interfaces import ReadStream, RunInThread
from realize.model import (
    ArenaName,
    FileInfo,
    FileState,
    PeerId,
    SmallFile,
    SmallRead,
    WriteResult,
)
from realize.storage.real import ArenaRoot, LocalStore

__all__ = ["PeerView", "StoreService"]


@define(eq=False)
class StoreService(Service):
    """
    The daemon's arenas, served to authorized peers.

    @ivar config: the config in force.
    @ivar store: the local store of the arenas that have a datadir.
    """

    log = Logger()

    config: Config
    run_in_thread: RunInThread
    store: LocalStore = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.store = LocalStore.from_config(self.config, self.run_in_thread, "daemon")

    def reconfigure(self, config: Config) -> None:
        """
        Apply a new config to new commands.

        @param config: the new config.
        """
        new = LocalStore.from_config(config, self.run_in_thread, "daemon")
        new.committer = self.store.committer
        self.config, self.store = config, new

    def view(self, peer: PeerId) -> PeerView:
        """
        @param peer: an authenticated peer.
        @return: the store as that peer may use it.
        """
        return PeerView(self, peer)


@define(eq=False)
class PeerView:
    """
    The L{realize.interfaces.Store} of one authenticated peer: every
    command checks that the arena exists here, has a datadir, and admits
    the peer.
    """

    service: StoreService
    peer: PeerId

    def describe(self) -> str:
        return f"daemon (as seen by {self.peer})"

    def _root(self, arena: ArenaName) -> tuple[LocalStore, ArenaRoot]:
        if self.peer not in self.service.config.peers:
            # Removed by a reload while connected: the daemon closes such
            # connections, and refuses their commands until it has.
            raise Unauthorized(f"peer {self.peer!r} is no longer in the config")
        config = self.service.config.arenas.get(arena)
        if config is None:
            raise NotFound(f"no arena {arena!r} on this peer")
        if not config.allows(self.peer):
            raise Unauthorized(f"peer {self.peer!r} may not use arena {arena!r}")
        store = self.service.store
        if arena not in store.roots:
            raise NotFound(f"arena {arena!r} has no datadir on this peer")
        return store, store.roots[arena]

    def _store(self, arena: ArenaName) -> LocalStore:
        return self._root(arena)[0]

    async def arenas(self) -> list[ArenaName]:
        config = self.service.config
        if self.peer not in config.peers:
            raise Unauthorized(f"peer {self.peer!r} is no longer in the config")
        return sorted(
            name
            for name, arena in config.arenas.items()
            if arena.allows(self.peer) and name in self.service.store.roots
        )

    async def list_files(self, arena: ArenaName) -> list[FileInfo]:
        return await self._store(arena).list_files(arena)

    def read(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> ReadStream:
        return self._store(arena).read(arena, path, start, end, hash_from=hash_from)

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
        return await self._store(arena).write(
            arena,
            path,
            start,
            end,
            file_size,
            data,
            hash=hash,
            finish_root=finish_root,
            mtime_ns=mtime_ns,
        )

    async def truncate(self, arena: ArenaName, path: str, size: int) -> None:
        await self._store(arena).truncate(arena, path, size)

    async def finish(
        self, arena: ArenaName, path: str, mtime_ns: int | None = None
    ) -> None:
        await self._store(arena).finish(arena, path, mtime_ns)

    async def delete(
        self,
        arena: ArenaName,
        path: str,
        *,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        await self._store(arena).delete(arena, path, size=size, mtime_ns=mtime_ns)

    async def hash(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> FileState:
        return await self._store(arena).hash(arena, path, start, end)

    async def signature(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> bytes | None:
        return await self._store(arena).signature(arena, path, start, end)

    async def diff(
        self, arena: ArenaName, path: str, start: int, end: int, signature: bytes
    ) -> bytes:
        return await self._store(arena).diff(arena, path, start, end, signature)

    async def apply_delta(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        change: bytes,
    ) -> tuple[bytes, ...]:
        return await self._store(arena).apply_delta(
            arena, path, start, end, file_size, change
        )

    async def read_files(
        self, arena: ArenaName, files: Sequence[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        return await self._store(arena).read_files(arena, files)

    async def write_files(
        self, arena: ArenaName, files: Sequence[SmallFile], data: Sequence[bytes]
    ) -> list[RealizeError | None]:
        return await self._store(arena).write_files(arena, files, data)

    async def delete_files(
        self, arena: ArenaName, files: Sequence[FileInfo]
    ) -> list[RealizeError | None]:
        return await self._store(arena).delete_files(arena, files)

    async def close(self, abort: bool = False) -> None:
        pass
