"""
A synchronous world for the consensus and marks tests: one arena with a
real datadir, its arena db (all the upgrades) through a synchronous pool,
the global db, blobs, an index whose recordings are fed back into the
Unreal as this peer (as the household does), a fake downloader serving
the peers' contents, a watcher stand-in, and a L{ConsensusService} on a
L{Clock}.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from realize.hashing import LEAF_SIZE, leaf_hash, merkle_root
from realize.metrics import ConsensusMetrics
from realize.model import ArenaName, Notification, PeerId
from realize.services.audit import Audit
from realize.services.consensus import ArenaConsensus, ConsensusService
from realize.storage.arena import ArenaDir
from realize.storage.blobs import BlobStore
from realize.storage.consensus import _txn_apply_tracked, resolve
from realize.storage.globaldb import GlobalDb
from realize.storage.index import ArenaIndex, Version, _txn_store_uuid
from realize.storage.unreal import ArenaTree
from realize.storage.unrealview import ArenaFiles, SqliteUnrealView
from tests.helpers import sync_run_in_thread
from tests.sqlite_helpers import SyncPool

T = TypeVar("T")

ARENA = ArenaName("docs")
ME = PeerId("me")
P = PeerId("p")
Q = PeerId("q")


def root_of(data: bytes) -> bytes:
    """
    @return: the Merkle root of some bytes.
    """
    return merkle_root(
        [leaf_hash(data[i : i + LEAF_SIZE]) for i in range(0, len(data), LEAF_SIZE)]
    )


class FakeDownloader:
    """
    Serves the contents of versions, writing them into their blobs as the
    real downloader does; can be made to fail, or to block.

    @ivar contents: bytes by version hash.
    @ivar fail: an error to raise, or C{None}.
    @ivar block: if set, reads wait on new Deferreds (in C{waiting}).
    """

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.contents: dict[bytes, bytes] = {}
        self.fail: Exception | None = None
        self.block = False
        self.waiting: list[Deferred[None]] = []
        self.reads: list[tuple[int, int, int]] = []
        self.forgotten: list[int] = []

    def forget(self, inode: int) -> None:
        self.forgotten.append(inode)

    async def written(self, inode: int, digest: bytes) -> None:
        pass

    async def read(
        self, inode: int, offset: int, size: int, digest: bytes | None = None
    ) -> bytes:
        self.reads.append((inode, offset, size))
        if self.block:
            d: Deferred[None] = Deferred()
            self.waiting.append(d)
            await d
        if self.fail is not None:
            raise self.fail
        assert digest is not None
        data = self.contents[digest][offset : offset + size]
        blob = await self.blobs.open(inode, digest)
        await self.blobs.write(blob, offset, data)
        return data


class Watcher:
    """
    A watcher stand-in (a L{realize.interfaces.StoreListener}): a file the
    job finished is recorded with its known hash, a file deleted is looked
    at (a Remove if it is gone).
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.finished: list[tuple[str, int, int, bytes]] = []
        self.deleted: list[str] = []

    def file_finished(
        self, arena: ArenaName, path: str, size: int, mtime_ns: int, root: bytes
    ) -> None:
        self.finished.append((path, size, mtime_ns, root))
        Deferred.fromCoroutine(
            self.world.index.record_versions([Version(path, size, mtime_ns, root)])
        )

    def file_deleted(self, arena: ArenaName, path: str) -> None:
        self.deleted.append(path)
        if not os.path.exists(self.world.real(path)):
            removal = (path, self.world.now_ns())
            Deferred.fromCoroutine(self.world.index.record_removals([removal]))


class World:
    """
    See the module docstring.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        default_mark: str = "watch",
        copies: int = 1,
        base: str | None = None,
    ) -> None:
        self.case = case
        self.base = base or os.path.abspath(case.mktemp())
        self.datadir = os.path.join(self.base, "data")
        self.workdir = os.path.join(self.base, "work")
        self.blobs_dir = os.path.join(self.workdir, "blobs")
        for directory in (self.datadir, self.blobs_dir):
            os.makedirs(directory, exist_ok=True)
        self.global_db = GlobalDb.open(os.path.join(self.base, "realize.db"))
        case.addCleanup(self.global_db.close)
        self.root = self.global_db.set_arenas([ARENA], now_ns=1)[ARENA]
        self.db = os.path.join(self.workdir, "arena.db")
        self.pool = SyncPool(self.db)
        case.addCleanup(self.pool.close)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.tree = ArenaTree(
            ARENA,
            self.root,
            lambda end: self.global_db.alloc_range(ARENA, end),
            lambda: int(self.clock.seconds() * 1e9),
        )
        self.default_mark = default_mark
        self.blobs = BlobStore(
            self.blobs_dir,
            sync_run_in_thread,
            self.pool.runInteraction,
            lambda: int(self.clock.seconds() * 1e9),
        )
        self.downloader = FakeDownloader(self.blobs)
        uuid = self.run(_txn_store_uuid)
        self.index = ArenaIndex(ARENA, self.db, self.pool, self.clock, uuid)
        self.index.listeners.append(lambda index, notes: self.apply(ME, notes))
        self.connected: set[PeerId] = {P, Q}
        self.watcher = Watcher(self)
        self.protected: list[tuple[ArenaName, int]] = []
        self.registry = CollectorRegistry()
        self.metrics = ConsensusMetrics(self.registry)
        self.service = ConsensusService(
            ME,
            self.clock,
            sync_run_in_thread,
            sync_run_in_thread,
            self.connected.__contains__,
            audit=Audit(self.metrics),
            listener=self.watcher,
            protect=self.protect,
            jitter=lambda: 0.0,
        )
        self.arena = ArenaConsensus(
            ARENA,
            self.root,
            self.pool.runInteraction,
            self.blobs,
            self.downloader,  # type: ignore[arg-type]
            default_mark,
            copies,
            ArenaDir(ARENA, self.datadir),
            index=lambda: self.index,
        )
        self.service.arenas[ARENA] = self.arena
        self.position = 0
        self.view = SqliteUnrealView(
            os.path.join(self.base, "realize.db"),
            {ARENA: ArenaFiles(self.db, self.blobs_dir)},
        )
        case.addCleanup(self.view.close)

    def protect(self, arena: ArenaName, inode: int) -> None:
        """
        The cache's protected queue, as issue 11 may make it.
        """
        self.protected.append((arena, inode))
        self.pool.connection.execute(
            "UPDATE blob SET queue = 'protected' WHERE inode = ?"
            " AND queue != 'deleting'",
            (inode,),
        )
        self.pool.connection.commit()

    def now_ns(self) -> int:
        return int(self.clock.seconds() * 1e9)

    def run(self, f: Callable[..., T], *args: Any) -> T:
        """
        Run a C{_txn_*} function on the arena db.
        """
        return self.case.successResultOf(self.pool.runInteraction(f, *args))

    def start(self) -> None:
        self.service.startService()
        self.case.addCleanup(self.stop)

    def stop(self) -> None:
        if self.service.running:
            self.case.successResultOf(self.service.stopService())

    # -- what peers and the disk do -----------------------------------------------

    def apply(self, peer: PeerId, notes: list[Notification]) -> None:
        """
        Apply notifications as the household does, then poke the jobs.
        """
        if notes:
            self.run(_txn_apply_tracked, self.tree, ME, self.default_mark, peer, notes)
            self.service.poke()

    def note(self, kind: str, path: str, **fields: Any) -> Notification:
        self.position += 1
        return Notification(kind, ARENA, self.position, path=path, **fields)

    def peer_adds(
        self, peer: PeerId, path: str, data: bytes, mtime_ns: int = 5_000
    ) -> bytes:
        """
        A peer reports a file it has.

        @return: the version's hash.
        """
        digest = root_of(data)
        self.downloader.contents[digest] = data
        self.apply(
            peer,
            [self.note("add", path, size=len(data), mtime_ns=mtime_ns, hash=digest)],
        )
        return digest

    def peer_replaces(
        self, peer: PeerId, path: str, data: bytes, old: bytes, mtime_ns: int = 6_000
    ) -> bytes:
        digest = root_of(data)
        self.downloader.contents[digest] = data
        self.apply(
            peer,
            [
                self.note(
                    "replace",
                    path,
                    size=len(data),
                    mtime_ns=mtime_ns,
                    hash=digest,
                    old_hash=old,
                )
            ],
        )
        return digest

    def peer_removes(
        self, peer: PeerId, path: str, old: bytes, mtime_ns: int = 10**18
    ) -> None:
        self.apply(peer, [self.note("remove", path, mtime_ns=mtime_ns, old_hash=old)])

    def peer_drops(self, peer: PeerId, path: str, old: bytes) -> None:
        self.apply(peer, [self.note("drop", path, old_hash=old)])

    def inode(self, path: str) -> int:
        """
        @return: a file's inode in the Unreal.
        """
        found = resolve(self.pool.connection, self.root, path)
        assert found is not None
        return found[0]

    def real(self, path: str) -> str:
        return os.path.join(self.datadir, path)

    def local_file(self, path: str, data: bytes, mtime_ns: int = 5_000) -> bytes:
        """
        A real file, recorded by the watcher (and fed as C{me}).

        @return: its hash.
        """
        full = self.real(path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        os.utime(full, ns=(mtime_ns, mtime_ns))
        digest = root_of(data)
        self.case.successResultOf(
            Deferred.fromCoroutine(
                self.index.record_versions([Version(path, len(data), mtime_ns, digest)])
            )
        )
        return digest

    def read_real(self, path: str) -> bytes:
        with open(self.real(path), "rb") as f:
            return f.read()

    def queue(self) -> list[tuple[Any, ...]]:
        return self.pool.connection.execute(
            "SELECT path, attempts, not_before, action, step, error"
            " FROM consensus_queue ORDER BY path"
        ).fetchall()

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value
