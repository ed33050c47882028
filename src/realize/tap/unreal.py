"""
The Unreal of C{realized} assembled (DESIGN.md section 10): the global db,
each arena's cache tables and blob store, the downloaders, the household
that feeds the tables, and, with C{--fuse}, the mount that shows them.

L{UnrealService} opens the databases off the reactor thread when it
starts, checks and loads each arena's block cache (L{BlobCache}: its
consistency job runs before anything reads the blobs), then starts its
children in order (household, the consensus jobs, then the mount);
stopping unmounts first (no FUSE thread may wait on storage that is
closing), then stops the consensus jobs, then the
household, then closes the global db.  The arena dbs belong to
L{ArenaDbs}, which the daemon stops last.

The consensus jobs (issue 12, L{realize.services.consensus}) get each
arena's tables, blobs and downloader from here, its index from the
history service, and tell the watchers what they realized (so it is
recorded without hashing); the watchers tell them of attribute changes
(marks on real files).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from realize.config import Config
from realize.errors import RealizeError
from realize.interfaces import History, RunInThread, Store, StoreListener
from realize.metrics import CacheMetrics, ConsensusMetrics
from realize.model import ArenaName, PeerId
from realize.net.client import RemoteStore
from realize.net.framing import Connection
from realize.net.history import RemoteHistory
from realize.net.registry import ConnectionRegistry
from realize.services.audit import Audit
from realize.services.cache import BlobCache, MarkedFiles
from realize.services.consensus import ArenaConsensus, ConsensusService
from realize.services.downloader import Downloader
from realize.services.household import HouseholdService
from realize.services.lifecycle import OrderedServices
from realize.services.unreal import ArenaCache, UnrealBackend
from realize.storage.blobs import BlobStore
from realize.storage.cache import PROTECTING_MARKS
from realize.storage.globaldb import GlobalDb
from realize.storage.index import ArenaIndex
from realize.storage.local import arena_dirs_from_config
from realize.storage.marks import protected_files
from realize.storage.unreal import ArenaTree
from realize.storage.unrealpaths import set_unreal_root
from realize.storage.unrealview import ArenaFiles, SqliteUnrealView

__all__ = ["ArenaDbs", "UnrealService"]

log = Logger(namespace="realize.unreal")

#: Name of the global db in the state directory.
GLOBAL_DB = "realize.db"

#: Name of an arena's db in its workdir, and of its blob directory.
ARENA_DB = "arena.db"
BLOBS = "blobs"


class _SharedPool:
    """
    An arena db pool lent to a user that may close it (the history's
    index): its close does nothing, L{ArenaDbs} closes the pool itself.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def runInteraction(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._pool.runInteraction(*args, **kwargs)
        return d

    def close(self) -> None:
        pass


@define(eq=False)
class ArenaDbs(Service):
    """
    The one writer pool of each arena db, shared by the history and the
    Unreal; closed when the daemon stops (it stops last).

    @ivar open_pool: makes the pool of a db file
        (L{realize.storage.pool.open_pool} with the reactor).
    """

    open_pool: Callable[[str], Any]
    _pools: dict[str, Any] = field(factory=dict, init=False)

    def pool(self, path: str) -> _SharedPool:
        """
        @param path: an arena db file.
        @return: its pool (opened on first use), lent: closing it does
            nothing.
        """
        key = os.path.abspath(path)
        if key not in self._pools:
            self._pools[key] = self.open_pool(key)
        return _SharedPool(self._pools[key])

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


@define(eq=False)
class UnrealService(Service):
    """
    The Unreal: opened at start, fed by the household, shown by FUSE.

    @ivar config: the config.
    @ivar statedir: where C{realize.db} lives.
    @ivar me: this peer's id.
    @ivar registry: the live connections by peer.
    @ivar dbs: the arena dbs.
    @ivar reactor: the reactor.
    @ivar run_io: the file I/O pool (blobs, opening dbs).
    @ivar local_store: this peer's own store (reads of its own files).
    @ivar local_history: this peer's own histories, fed in as C{me}.
    @ivar dial: builds the client service of a listening peer.
    @ivar mountpoint: where to mount the FUSE view, or C{None}.
    @ivar exit_on_error: called with a message if the Unreal cannot open
        (the daemon exits 1).
    @ivar run_cpu: the hashing pool (verifying blobs before they are
        realized); the file I/O pool if C{None}.
    @ivar indexes: the histories' open indexes by arena (unrealize records
        a Drop in them).
    @ivar watchers: told of files realized and removed (a L{StoreListener}
        with an C{attributes} hook: the watcher service), or C{None}.
    @ivar consensus_metrics: where the consensus jobs count, or C{None}.
    @ivar cache_metrics: where the block caches count, or C{None}.
    @ivar mark_of: a file's effective mark, by arena and inode, answered
        from memory: C{keep} and C{own} put its blob in the protected
        queue; C{None} (the default): the marks of the arena dbs, found
        by L{MarkedFiles} (C{marked}).
    """

    config: Config
    statedir: Path
    me: PeerId | None
    registry: ConnectionRegistry
    dbs: ArenaDbs
    reactor: Any
    run_io: RunInThread
    local_store: Callable[[], Store] | None = None
    local_history: History | None = None
    dial: Callable[[Any], Any] | None = None
    mountpoint: str | None = None
    exit_on_error: Callable[[str], None] | None = None
    run_cpu: RunInThread | None = None
    indexes: Mapping[ArenaName, ArenaIndex] | None = None
    watchers: Any = None
    consensus_metrics: ConsensusMetrics | None = None
    cache_metrics: CacheMetrics | None = None
    mark_of: Callable[[ArenaName, int], str | None] | None = None
    blob_caches: dict[ArenaName, BlobCache] = field(factory=dict, init=False)
    children: OrderedServices = field(factory=OrderedServices, init=False)
    household: HouseholdService | None = field(default=None, init=False)
    consensus: ConsensusService | None = field(default=None, init=False)
    caches: dict[ArenaName, ArenaCache] = field(factory=dict, init=False)
    backend: UnrealBackend | None = field(default=None, init=False)
    fuse: Any = field(default=None, init=False)
    view: SqliteUnrealView | None = field(default=None, init=False)
    downloaders: dict[ArenaName, Downloader] = field(factory=dict, init=False)
    ready: Deferred[None] = field(factory=Deferred, init=False)
    _global: GlobalDb | None = field(default=None, init=False)
    _remote_stores: dict[Connection, RemoteStore] = field(factory=dict, init=False)
    _unobserve: Callable[[], None] | None = field(default=None, init=False)
    marked: MarkedFiles | None = field(default=None, init=False)
    _finders: dict[ArenaName, Callable[[], Deferred[dict[int, str]]]] = field(
        factory=dict, init=False
    )

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        d = Deferred.fromCoroutine(self._start())

        def failed(failure: Any) -> None:
            message = f"the Unreal cannot start: {failure.getErrorMessage()}"
            if not failure.check(RealizeError, OSError):
                log.failure("the Unreal cannot start", failure)
            if self.exit_on_error is not None:
                self.exit_on_error(message)
            self.ready.errback(failure)

        d.addCallbacks(lambda _: self.ready.callback(None), failed)

    def _now_ns(self) -> int:
        return time.time_ns()

    async def _start(self) -> None:
        config = self.config
        arenas = sorted(config.arenas)
        global_path = str(self.statedir / GLOBAL_DB)
        global_db = await self.run_io(_open_global, global_path)
        self._global = global_db
        roots = await self.run_io(global_db.set_arenas, arenas, self._now_ns())
        caches: dict[ArenaName, ArenaCache] = {}
        files: dict[ArenaName, ArenaFiles] = {}
        self.marked = MarkedFiles(self.reactor, self._find_marked)
        for name in arenas:
            arena = config.arenas[name]
            workdir = arena.workdir
            blobs_dir = workdir / BLOBS
            await self.run_io(_make_dirs, blobs_dir)
            db = str(workdir / ARENA_DB)
            pool = self.dbs.pool(db)
            blobs = BlobStore(
                str(blobs_dir), self.run_io, pool.runInteraction, self._now_ns
            )
            tree = ArenaTree(
                name,
                roots[name],
                _alloc(global_db, name),
                self._now_ns,
            )
            cache = BlobCache(
                name,
                blobs,
                config.cache,
                self.reactor,
                self.run_io,
                pool.runInteraction,
                self.cache_metrics,
                functools.partial(self._mark_of, name),
            )
            caches[name] = ArenaCache(
                tree,
                pool.runInteraction,
                blobs,
                arena.mark,
                self.me,
                cache,
                self.consensus_metrics,
            )
            # Opens the db (and creates its schema) before FUSE reads it.
            await caches[name].progress(PeerId("-"))
            await caches[name].count_conflicts()
            # The watcher's transactions find the peers' versions by path
            # (edits through the overlay, realize.storage.unrealpaths).
            await pool.runInteraction(set_unreal_root, roots[name])
            self._finders[name] = functools.partial(
                pool.runInteraction,
                self._protected_files,
                roots[name],
                name,
            )
            # The policy knows the kept files before it evicts anything.
            await self.marked.refresh(name)
            await cache.start()
            self.blob_caches[name] = cache
            files[name] = ArenaFiles(db, str(blobs_dir))
        view = SqliteUnrealView(global_path, files)
        self.view = view
        for name in arenas:
            self.downloaders[name] = Downloader(
                name,
                self.blob_caches[name],
                self._versions,
                self._store_of,
                self.reactor,
                self.blob_caches[name].pins,
                functools.partial(self._fetched, name),
            )
        self.caches = caches
        consensus = self._consensus(caches, roots)
        household = HouseholdService(
            config,
            self.me,
            self.registry,
            caches,
            self._history_of,
            self.dial,
            self.local_history,
            applied=self._applied,
        )
        self.household = household
        self.children.add(household)
        self.children.add(consensus)
        if self.mountpoint is not None:
            from realize.fuse.bridge import Bridge
            from realize.fuse.service import FuseService

            bridge = Bridge(self.reactor)
            self.backend = UnrealBackend(
                view,
                bridge,
                self.downloaders,
                self.me,
                str(self.statedir),
                marks=consensus.marks,
                default_mark=self._default_mark,
                caches=self.blob_caches,
            )
            self.fuse = FuseService(
                self.backend, os.path.abspath(self.mountpoint), self.reactor, bridge
            )
            self.children.add(self.fuse)
        if self.running:
            self.children.startService()  # type: ignore[no-untyped-call]
            if self.fuse is not None:
                await self.fuse.when_mounted()
                log.info(
                    "the Unreal is mounted at {mountpoint}", mountpoint=self.mountpoint
                )
                await self._remount_overlays()

    async def _remount_overlays(self) -> None:
        """
        Overlays of C{mountall} left over the previous view (a restart):
        mounted again over this one (L{realize.overlay.remount_stale}).
        A failure is logged; the view stays up.
        """
        from realize.overlay import OverlayError, remount_stale

        assert self.mountpoint is not None
        fuse = os.path.abspath(self.mountpoint)
        try:
            again = await self.run_io(remount_stale, self.config, fuse)
        except (OverlayError, OSError) as e:
            log.error(
                "an overlay over the previous view of {fuse} cannot be mounted "
                "again: {error}; run realized mountall",
                fuse=fuse,
                error=str(e),
            )
            return
        for mountpoint in again:
            log.warn(
                "the overlay at {mountpoint} was over the previous view (a "
                "restart): mounted it again over {fuse}; files open in it "
                "before must be opened again",
                mountpoint=mountpoint,
                fuse=fuse,
            )

    def _consensus(
        self, caches: Mapping[ArenaName, ArenaCache], roots: Mapping[ArenaName, int]
    ) -> ConsensusService:
        listener: StoreListener | None = self.watchers
        consensus = ConsensusService(
            self.me,
            self.reactor,
            self.run_io,
            self.run_cpu or self.run_io,
            lambda peer: self.registry.connection(peer) is not None,
            audit=Audit(self.consensus_metrics, self.config),
            listener=listener,
            protect=self.protect,
        )
        datadirs = arena_dirs_from_config(self.config)
        for name, cache in caches.items():
            arena = self.config.arenas[name]
            assert cache.blobs is not None
            consensus.arenas[name] = ArenaConsensus(
                name,
                roots[name],
                cache.run_interaction,
                cache.blobs,
                self.downloaders.get(name),
                arena.mark,
                arena.copies,
                datadirs.get(name),
                index=functools.partial(self._index, name),
                mountpoint=None if arena.mountpoint is None else str(arena.mountpoint),
            )
        self.consensus = consensus
        if self.watchers is not None:
            self.watchers.attributes = consensus.marks.attributes_changed
        self._unobserve = self.registry.observe(consensus.audit)
        poke = consensus.marks.changed

        def changed() -> None:
            poke()
            self._marks_changed()

        # A mark set: the cache's kept files are found again.
        consensus.marks.changed = changed
        return consensus

    def _index(self, arena: ArenaName) -> ArenaIndex | None:
        return None if self.indexes is None else self.indexes.get(arena)

    def _default_mark(self, arena: ArenaName) -> str:
        found = self.config.arenas.get(arena)
        return "watch" if found is None else found.mark

    def _mark_of(self, arena: ArenaName, inode: int) -> str | None:
        if self.mark_of is not None:
            return self.mark_of(arena, inode)
        return None if self.marked is None else self.marked.mark_of(arena, inode)

    def _find_marked(self, arena: ArenaName) -> Deferred[dict[int, str]]:
        return self._finders[arena]()

    def _protected_files(self, cursor: Any, root: int, arena: ArenaName) -> Any:
        # In the arena db's thread: the default is read there, as it is now.
        return protected_files(
            cursor, root, self._default_mark(arena), PROTECTING_MARKS
        )

    def _marks_changed(self) -> None:
        if self.marked is not None:
            for arena in self.blob_caches:
                self.marked.changed(arena)

    def _fetched(self, arena: ArenaName, size: int) -> None:
        if self.cache_metrics is not None:
            self.cache_metrics.fetched(arena, size)

    def protect(
        self, arena: ArenaName, inode: int, digest: bytes | None = None
    ) -> Deferred[bool]:
        """
        Put the blob of a file's version in its arena's protected queue now
        (for the marks' consensus jobs, issue 12: a file marked keep,
        downloaded).

        @param digest: the version, or C{None} for the file's live blobs.
        @return: whether a blob of that file was moved.
        """
        cache = self.blob_caches.get(arena)
        if cache is None:
            return succeed(False)
        return Deferred.fromCoroutine(cache.protect(inode, digest))

    def _versions(self, inode: int) -> Deferred[Any]:
        assert self.view is not None
        return self.run_io(self.view.version, inode)

    def _store_of(self, peer: PeerId) -> Any:
        if peer == self.me and self.local_store is not None:
            return self.local_store()
        connection = self.registry.connection(peer)
        if connection is None:
            return None
        store = self._remote_stores.get(connection)
        if store is None:
            store = RemoteStore(connection, f"{peer} ({connection.address})")
            self._remote_stores[connection] = store
            connection.lost.addBoth(
                lambda r: self._remote_stores.pop(connection, None) and r
            )
        return store

    def _history_of(self, connection: Connection) -> RemoteHistory:
        return RemoteHistory(connection, f"{connection.peer} ({connection.address})")

    def _applied(self, arena: ArenaName, peer: PeerId, result: Any) -> None:
        downloader = self.downloaders.get(arena)
        if downloader is not None:
            downloader.version_changed(result.inodes)
        if self.consensus is not None:
            self.consensus.poke()
        if self.marked is not None:
            self.marked.changed(arena)
        if self.backend is None or self.fuse is None:
            return
        fuse = self.fuse

        def invalidate(paths: list[str]) -> None:
            for path in paths:
                fuse.invalidate(path).addErrback(lambda _: None)

        self.run_io(self.backend.paths, result).addCallback(invalidate).addErrback(
            lambda f: log.failure("invalidating the FUSE view failed", f)
        )

    def reconfigure(self, config: Config) -> None:
        self.config = config
        if self.household is not None:
            self.household.reconfigure(config)
        if self.consensus is not None:
            self.consensus.audit.config = config
        for name, cache in self.caches.items():
            arena = config.arenas.get(name)
            if arena is None:
                continue
            if cache.default_mark != arena.mark and self.marked is not None:
                self.marked.changed(name)
            cache.default_mark = arena.mark
            if self.consensus is not None:
                self.consensus.reconfigure(name, arena.mark, arena.copies)
        # A new quota applies at once (the caches evict down to it).
        for blob_cache in self.blob_caches.values():
            blob_cache.reconfigure(config.cache)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]

        async def stop() -> None:
            if self._unobserve is not None:
                self._unobserve()
                self._unobserve = None
            if self.children.running:
                await self.children.stopService()
            if self.marked is not None:
                self.marked.stop()
            for blob_cache in self.blob_caches.values():
                blob_cache.stop()
            for downloader in self.downloaders.values():
                downloader.close()
            if self.view is not None:
                self.view.close()
            if self._global is not None:
                await self.run_io(self._global.close)
                self._global = None

        return Deferred.fromCoroutine(stop())


def _open_global(path: str) -> GlobalDb:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return GlobalDb.open(path)


def _make_dirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _alloc(global_db: GlobalDb, arena: ArenaName) -> Callable[[int], Any]:
    return lambda end: global_db.alloc_range(arena, end)
