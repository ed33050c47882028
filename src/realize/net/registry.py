"""
The live connections of a process by peer, inbound and outbound alike
(DESIGN.md §10 Household): a service asks "a live connection to peer P"
without knowing who dialled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from realize.model import PeerId
from realize.net.framing import Connection
from realize.net.tls import auth_log, peer_spki

__all__ = ["ConnectionRegistry", "RegistryObserver"]

log = Logger(namespace="realize.net")


class RegistryObserver(Protocol):
    """
    Told when peers connect and disconnect.
    """

    def connected(self, connection: Connection) -> None:
        """
        A connection was authenticated (its C{peer} is set).
        """

    def disconnected(self, connection: Connection) -> None:
        """
        An authenticated connection was lost.
        """


@define(eq=False)
class ConnectionRegistry:
    """
    Authenticated connections alive now, by peer.
    """

    _by_peer: dict[PeerId, list[Connection]] = field(factory=dict)
    _observers: list[RegistryObserver] = field(factory=list)

    def add(self, connection: Connection) -> None:
        """
        Register an authenticated connection until it is lost.

        @param connection: a connection whose C{peer} is set.
        """
        peer = connection.peer
        assert peer is not None
        self._by_peer.setdefault(peer, []).append(connection)
        connection.lost.addBoth(self._remove, connection)
        for observer in list(self._observers):
            observer.connected(connection)

    def _remove(self, result: object, connection: Connection) -> object:
        peer = connection.peer
        assert peer is not None
        live = self._by_peer.get(peer, [])
        if connection in live:
            live.remove(connection)
            if not live:
                del self._by_peer[peer]
            for observer in list(self._observers):
                observer.disconnected(connection)
        return result

    def observe(self, observer: RegistryObserver) -> Callable[[], None]:
        """
        Tell an observer about connections from now on.

        @return: a function that stops telling it.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def connection(self, peer: PeerId) -> Connection | None:
        """
        @return: a live connection to C{peer} (the most recent), or
            C{None}.
        """
        live = self._by_peer.get(peer)
        return live[-1] if live else None

    def connections(self, peer: PeerId | None = None) -> list[Connection]:
        """
        @param peer: only this peer's, or every peer's if C{None}.
        @return: the live connections.
        """
        if peer is not None:
            return list(self._by_peer.get(peer, []))
        return [c for live in self._by_peer.values() for c in live]

    def peers(self) -> list[PeerId]:
        """
        @return: the peers with a live connection.
        """
        return sorted(self._by_peer)

    def close_peers(self, still_allowed: Callable[[PeerId, bytes | None], bool]) -> int:
        """
        Close the connections of peers that may no longer connect (after a
        config reload removed them or changed their key).

        @param still_allowed: tells whether a peer with a key may stay.
        @return: how many connections were closed.
        """
        closed = 0
        for connection in self.connections():
            peer = connection.peer
            assert peer is not None
            if not still_allowed(peer, peer_spki(connection.transport)):
                auth_log.warn(
                    "closing the connection of {peer} at {address}: no longer "
                    "allowed by the config",
                    peer=peer,
                    address=connection.address,
                    accepted=False,
                )
                connection.close()
                closed += 1
        return closed

    def close_all(self, abort: bool = False) -> Deferred[Any]:
        """
        Close every connection.

        @param abort: drop them at once instead of flushing what is queued.
        @return: a Deferred that fires once all are lost.
        """
        connections = self.connections()
        for connection in connections:
            connection.close(abort)
        return DeferredList([c.lost for c in connections], consumeErrors=True)
