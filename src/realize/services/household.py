"""
The household (DESIGN.md §10 and §12): this daemon's connections to the
other peers, and the subscriptions that keep its Unreal up to date.

One C{ClientService} per listening peer (reconnecting forever with
Twisted's C{backoffPolicy} on an injected clock) and the inbound
connections of the others all land in one
L{realize.net.registry.ConnectionRegistry}.  On each connection that is
the one to use for a peer (L{feeds_on}), this side subscribes to each
arena both share, applies the notifications in order, in batches, to the
arena's cache tables (L{UnrealCache}), and tells the publisher what it
applied (so it may trim).  A peer that goes away leaves its files visible;
when it comes back the subscription resumes from the stored progress (a
replay), or gets a catch-up when its history no longer reaches back.

A peer's notifications are input: a batch that does not validate
(L{realize.model.check_notification}) is refused whole, logged under
C{realize.household} and the subscription dropped (until the next
connection), never applied in part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from attrs import define, field
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols import amp

from realize.config import ArenaConfig, Config, PeerConfig
from realize.errors import (
    BadRequest,
    InvalidPath,
    NetworkError,
    NotFound,
    RealizeError,
    SubscriptionClosed,
    Unauthorized,
)
from realize.interfaces import History
from realize.model import ArenaName, Notification, PeerId

if TYPE_CHECKING:
    from realize.net.framing import Connection
    from realize.net.registry import ConnectionRegistry

__all__ = ["HouseholdService", "UnrealCache", "feeds_on", "shared_arenas"]

log = Logger(namespace="realize.household")
audit = Logger(namespace="realize.audit")


class Feedable(Protocol):
    """
    A subscription the household pulls (L{realize.interfaces.Subscription}
    with a way to say what was applied).
    """

    def next_batch(self, max_count: int = ...) -> Deferred[list[Notification]]: ...

    def acknowledge(self, position: int) -> None: ...

    def close(self) -> None: ...


class PeerHistory(Protocol):
    """
    A peer's histories over one connection
    (L{realize.net.history.RemoteHistory}).
    """

    async def subscribe(
        self, arena: ArenaName, progress: tuple[str, int] | None
    ) -> Feedable: ...


class UnrealCache(Protocol):
    """
    The cache tables of one arena, as the household feeds them.
    """

    async def progress(self, peer: PeerId) -> tuple[str, int] | None:
        """
        @return: the C{(uuid, position)} stored for C{peer}, or C{None}.
        """

    async def apply(self, peer: PeerId, notifications: Sequence[Notification]) -> Any:
        """
        Apply a batch of C{peer}'s notifications in one transaction (and
        store its progress there).

        @raise BadRequest: if one of them does not validate (nothing is
            applied).
        @raise InvalidPath: likewise, for a path.
        """


def shared_arenas(config: Config, peer: PeerId) -> list[ArenaConfig]:
    """
    @return: the arenas of this config whose ACL admits C{peer}, by name.
    """
    return [a for _, a in sorted(config.arenas.items()) if a.allows(peer)]


def feeds_on(connection: Connection, config: Config) -> bool:
    """
    Whether this side subscribes to its peer on this connection: on the
    one it dialled for a listening peer, on the inbound one for a deaf
    peer (so that two peers that dial each other are each fed once).
    """
    peer = connection.peer
    if peer is None or peer not in config.peers:
        return False
    listening = config.peers[peer].address is not None
    return connection.outbound if listening else not connection.outbound


@define(eq=False)
class _Feed:
    """
    One subscription to one arena of one peer over one connection (or of
    this peer's own history, C{connection} C{None}).
    """

    connection: Connection | None
    arena: ArenaName
    subscription: Feedable | None = None
    done: Deferred[None] | None = None
    stopped: bool = False

    def stop(self) -> None:
        self.stopped = True
        if self.subscription is not None:
            self.subscription.close()


@define(eq=False)
class HouseholdService(Service):
    """
    Keeps connections to the household and the Unreal fed.

    @ivar config: the config in force.
    @ivar me: this peer's id (the peer whose key is ours), or C{None}.
    @ivar registry: the live connections, inbound and outbound.
    @ivar caches: the cache tables of each arena this daemon shows.
    @ivar history_of: the peer's histories over a connection
        (L{realize.net.history.RemoteHistory}).
    @ivar dial: builds the reconnecting client service of a listening
        peer (a C{ClientService} over
        L{realize.net.factory.client_factory}), or C{None} to only take
        inbound connections.
    @ivar local: this peer's own histories, fed into the Unreal as peer
        C{me} (so that its own files show too, as C{local}), or C{None}.
    @ivar applied: told of what each batch applied (the FUSE layer
        invalidates, the blob store drops outdated blobs).
    @ivar batch: notifications asked for per pull.
    """

    config: Config
    me: PeerId | None
    registry: ConnectionRegistry
    caches: Mapping[ArenaName, UnrealCache]
    history_of: Callable[[Connection], PeerHistory]
    dial: Callable[[PeerConfig], IService] | None = None
    local: History | None = None
    applied: Callable[[ArenaName, PeerId, Any], None] | None = None
    batch: int = 1000
    _dialling: dict[PeerId, IService] = field(factory=dict, init=False)
    _feeds: dict[tuple[Connection | None, ArenaName], _Feed] = field(
        factory=dict, init=False
    )
    _unobserve: Callable[[], None] | None = field(default=None, init=False)

    # -- life ----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._unobserve = self.registry.observe(self)
        for connection in self.registry.connections():
            self.connected(connection)
        self._feed_local()
        self._dial_all()

    def _feed_local(self) -> None:
        if self.local is None or self.me is None:
            return
        for arena in self.config.arenas.values():
            cache = self.caches.get(arena.name)
            key = (None, arena.name)
            if arena.datadir is None or cache is None or key in self._feeds:
                continue
            feed = _Feed(None, arena.name)
            self._feeds[key] = feed
            feed.done = Deferred.fromCoroutine(self._run(feed, self.me, cache))

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        for feed in list(self._feeds.values()):
            feed.stop()
        services, self._dialling = list(self._dialling.values()), {}

        async def stop_all() -> None:
            for service in services:
                await service.stopService()
            for feed in list(self._feeds.values()):
                if feed.done is not None:
                    await feed.done

        return Deferred.fromCoroutine(stop_all())

    def _dial_all(self) -> None:
        if self.dial is None or not self.running:
            return
        for peer in self.config.peers.values():
            if peer.id == self.me or peer.address is None:
                continue
            if peer.id in self._dialling:
                continue
            service = self.dial(peer)
            self._dialling[peer.id] = service
            service.startService()

    def reconfigure(self, config: Config) -> None:
        """
        Apply a new config: peers removed or whose address or key changed
        are no longer dialled (their connections are closed by the
        listening side's reload), new listening peers are dialled; feeds of
        arenas no longer shared stop, newly shared arenas are fed on the
        live connections.
        """
        old, self.config = self.config, config
        for peer_id, service in list(self._dialling.items()):
            before = old.peers.get(peer_id)
            after = config.peers.get(peer_id)
            if after is None or before is None or before != after:
                del self._dialling[peer_id]
                service.stopService()
        for (connection, arena), feed in list(self._feeds.items()):
            arena_config = config.arenas.get(arena)
            if connection is None:
                if arena_config is None or arena_config.datadir is None:
                    feed.stop()
                continue
            peer = connection.peer
            if arena_config is None or peer is None or not arena_config.allows(peer):
                feed.stop()
        self._feed_local()
        self._dial_all()
        for connection in self.registry.connections():
            self.connected(connection)

    # -- connections -----------------------------------------------------------

    def connected(self, connection: Connection) -> None:
        if not self.running or not feeds_on(connection, self.config):
            return
        peer = connection.peer
        assert peer is not None
        audit.info(
            "connected to {peer} at {address}", peer=peer, address=connection.address
        )
        for arena in shared_arenas(self.config, peer):
            cache = self.caches.get(arena.name)
            key = (connection, arena.name)
            if cache is None or key in self._feeds:
                continue
            feed = _Feed(connection, arena.name)
            self._feeds[key] = feed
            feed.done = Deferred.fromCoroutine(self._run(feed, peer, cache))

    def disconnected(self, connection: Connection) -> None:
        if connection.peer is not None and feeds_on(connection, self.config):
            audit.info(
                "disconnected from {peer} at {address}",
                peer=connection.peer,
                address=connection.address,
            )
        for (known, _), feed in list(self._feeds.items()):
            if known is connection:
                feed.stop()

    async def _run(self, feed: _Feed, peer: PeerId, cache: UnrealCache) -> None:
        arena = feed.arena
        try:
            await self._feed(feed, peer, cache)
        except (NetworkError, SubscriptionClosed):
            pass
        except amp.UnhandledCommand:
            # realize-move is a peer that moves files and serves no
            # history; it dials in like a deaf peer's daemon.
            log.info(
                "{peer} serves no history on this connection (a realize-move, or a "
                "realized older than history): "
                "no feed of arena {arena}",
                peer=peer,
                arena=arena,
            )
        except (NotFound, Unauthorized) as e:
            log.info(
                "{peer} does not publish arena {arena} to us: {error}",
                peer=peer,
                arena=arena,
                error=str(e),
            )
        except (BadRequest, InvalidPath) as e:
            log.warn(
                "refused notifications of {peer} for arena {arena}: {error}; "
                "subscription dropped",
                peer=peer,
                arena=arena,
                error=str(e),
            )
        except RealizeError as e:
            log.error(
                "feed of arena {arena} from {peer} failed: {error}",
                peer=peer,
                arena=arena,
                error=str(e),
            )
        except Exception:
            log.failure(
                "feed of arena {arena} from {peer} failed", peer=peer, arena=arena
            )
        finally:
            feed.stop()
            self._feeds.pop((feed.connection, arena), None)

    async def _subscribe(
        self, feed: _Feed, peer: PeerId, progress: tuple[str, int] | None
    ) -> Feedable:
        if feed.connection is not None:
            return await self.history_of(feed.connection).subscribe(
                feed.arena, progress
            )
        assert self.local is not None
        return _LocalFeed(
            self.local, self.local.subscribe(feed.arena, None, progress), feed.arena
        )

    async def _feed(self, feed: _Feed, peer: PeerId, cache: UnrealCache) -> None:
        progress = await cache.progress(peer)
        if feed.stopped:
            return
        feed.subscription = await self._subscribe(feed, peer, progress)
        log.info(
            "subscribed to arena {arena} of {peer} from {progress}",
            arena=feed.arena,
            peer=peer,
            progress=progress,
        )
        if feed.stopped:
            feed.subscription.close()
            return
        while not feed.stopped:
            batch = await feed.subscription.next_batch(self.batch)
            result = await cache.apply(peer, batch)
            if self.applied is not None:
                self.applied(feed.arena, peer, result)
            stored = await cache.progress(peer)
            if stored is not None:
                feed.subscription.acknowledge(stored[1])

    def feeding(self) -> list[tuple[PeerId, ArenaName]]:
        """
        @return: the C{(peer, arena)} subscriptions running now.
        """
        feeding = []
        for connection, arena in self._feeds:
            peer = self.me if connection is None else connection.peer
            if peer is not None:
                feeding.append((peer, arena))
        return sorted(feeding)


@define(eq=False)
class _LocalFeed:
    """
    A subscription to this peer's own history, fed in-process.
    """

    history: History
    subscription: Any
    arena: ArenaName

    def next_batch(self, max_count: int = 1000) -> Deferred[list[Notification]]:
        d: Deferred[list[Notification]] = self.subscription.next_batch(max_count)
        return d

    def acknowledge(self, position: int) -> None:
        pass

    def close(self) -> None:
        self.subscription.close()
