"""
The store as a peer sees it: the daemon's local arenas, filtered by each
arena's ACL (DESIGN.md section 4, "Authorization").

L{StoreService} holds the current config and the L{LocalStore} of its
arenas; L{StoreService.view} gives the L{PeerView} that one connection's
commands go through: the same local store, whose one arena resolver
checks the peer and the arena's ACL first.  A config reload (SIGHUP)
swaps the config and the arenas at once; views look them up on every
command, so new commands see the new config without dropping
connections.
"""

from __future__ import annotations

import attrs
from attrs import define, field
from twisted.application.service import Service
from twisted.logger import Logger

from realize.config import Config
from realize.errors import ArenaUnavailable, Unauthorized
from realize.interfaces import RunInThread, StoreListener
from realize.model import ArenaName, PeerId
from realize.storage.arena import ArenaDir
from realize.storage.local import LocalStore, arena_dirs_from_config

__all__ = ["PeerView", "StoreService"]


@define(eq=False)
class StoreService(Service):
    """
    The daemon's arenas, served to authorized peers.

    @ivar config: the config in force.
    @ivar run_in_thread: runs the store's file I/O.
    @ivar run_cpu: runs its hashing and delta work (default:
        C{run_in_thread}).
    @ivar listener: told of every file finished or deleted.
    @ivar run_batch: runs the batches of small files (their reads,
        writes and deletions) in a worker process, or C{None} for
        C{run_in_thread}.
    @ivar store: the local store of the arenas that have a datadir.
    """

    log = Logger()

    config: Config
    run_in_thread: RunInThread
    run_cpu: RunInThread | None = None
    listener: StoreListener | None = None
    run_batch: RunInThread | None = None
    store: LocalStore = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.store = LocalStore.from_config(
            self.config,
            self.run_in_thread,
            "daemon",
            run_cpu=self.run_cpu,
            listener=self.listener,
            run_batch=self.run_batch,
        )

    def reconfigure(self, config: Config) -> None:
        """
        Apply a new config to new commands; commands running finish with
        the old one, and the store's group commit, writers and listener
        carry on.

        @param config: the new config.
        """
        self.config, self.store = (
            config,
            self.store.with_arena_dirs(arena_dirs_from_config(config)),
        )

    def view(
        self,
        peer: PeerId,
        run_io: RunInThread | None = None,
        run_cpu: RunInThread | None = None,
        run_batch: RunInThread | None = None,
    ) -> PeerView:
        """
        @param peer: an authenticated peer.
        @param run_io: the file I/O runner of this peer's connection, or
            C{None} for the daemon's.  A view with its own runners is its
            own writer: a file it writes cannot be written by another
            connection meanwhile (views without runners all count as one).
        @param run_cpu: the CPU runner of this peer's connection (default
            C{run_io}, or the daemon's).
        @param run_batch: the small-file batch runner of this peer's
            connection (default the daemon's).
        @return: the store as that peer may use it.
        """
        return PeerView.of(self, peer, run_io, run_cpu, run_batch)


@define(eq=False)
class PeerView(LocalStore):
    """
    The L{realize.interfaces.Store} of one authenticated peer: the daemon's
    local store whose arena resolver (L{arena_dir}) checks that the peer is
    still in the config, that the arena exists here, admits the peer and
    has a datadir.

    @ivar service: the daemon's store.
    @ivar peer: the peer.
    """

    service: StoreService = field(default=None, kw_only=True)
    peer: PeerId = field(default=PeerId(""), kw_only=True)

    @classmethod
    def of(
        cls,
        service: StoreService,
        peer: PeerId,
        run_io: RunInThread | None = None,
        run_cpu: RunInThread | None = None,
        run_batch: RunInThread | None = None,
    ) -> PeerView:
        """
        @return: the view of a peer (see L{StoreService.view}).
        """
        store = service.store
        if run_io is not None:
            store = store.with_runners(run_io, run_cpu, run_batch=run_batch)
        else:
            if run_cpu is not None:
                store = attrs.evolve(store, run_cpu=run_cpu)
            if run_batch is not None:
                store = attrs.evolve(store, run_batch=run_batch)
        shared = attrs.asdict(store, recurse=False)
        return cls(**shared, service=service, peer=peer)

    def describe(self) -> str:
        return f"daemon (as seen by {self.peer})"

    def _check_peer(self) -> Config:
        config = self.service.config
        if self.peer not in config.peers:
            # Removed by a reload while connected: the daemon closes such
            # connections, and refuses their commands until it has.
            raise Unauthorized(f"peer {self.peer!r} is no longer in the config")
        return config

    def arena_dir(self, arena: ArenaName) -> ArenaDir:
        """
        @return: the directory of an arena the peer may use.
        @raise Unauthorized: if the peer is no longer in the config or the
            arena's ACL does not admit it.
        @raise NotFound: if there is no such arena here, or it has no
            datadir.
        """
        config = self._check_peer().arenas.get(arena)
        arena_dir = self.service.store.arena_dirs.get(arena)
        if config is None or not config.allows(self.peer) or arena_dir is None:
            # One answer whether the arena is absent, has no datadir or
            # is outside the ACL: a peer cannot probe for arena names.
            raise ArenaUnavailable(
                f"arena {arena!r} is not available to peer {self.peer!r} here"
            )
        return arena_dir

    async def arenas(self) -> list[ArenaName]:
        config = self._check_peer()
        arena_dirs = self.service.store.arena_dirs
        return sorted(
            name
            for name, arena in config.arenas.items()
            if arena.allows(self.peer) and name in arena_dirs
        )
