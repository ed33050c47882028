"""
One connection stack for every peer, dialled or accepted: the throttle on
the TCP connection, TLS with pinned keys, then the framing layer
(L{realize.net.framing.Connection}) with the responders its locator
factory gives it.

L{server_factory} is what C{realized} listens with; L{client_factory} is
the mirror a process dials with (C{realize-move}, the household's
C{ClientService}).  Both build their connections with a
L{ConnectionFactory}, which registers authenticated connections in a
L{ConnectionRegistry} and enforces the budgets of connections that are not
authenticated yet (issue 14): a TLS handshake deadline, and on the
listening side a cap on such connections in total and per source address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from realize.interfaces import RunInThread
from realize.model import PeerId
from realize.net.framing import Connection, ConnectionLimits
from realize.net.locator import LocatorFactory
from realize.net.registry import ConnectionRegistry
from realize.net.throttle import ThrottlingFactory, find_throttle
from realize.net.tls import ClientTLS, ServerTLS, auth_log, pinned_identity

if TYPE_CHECKING:
    # Only named: a client (realize-move) need not import prometheus_client.
    from realize.metrics import DaemonMetrics

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_UNAUTHENTICATED",
    "MAX_UNAUTHENTICATED_PER_ADDRESS",
    "ConnectionFactory",
    "client_factory",
    "connection_of",
    "server_factory",
]

log = Logger(namespace="realize.net")

#: Seconds a connection has to complete its TLS handshake and prove its
#: key before it is dropped.
HANDSHAKE_TIMEOUT = 10.0

#: Connections accepted but not yet authenticated, in total and from one
#: source address; more are dropped at once (a stranger without a key can
#: open sockets, but not exhaust our file descriptors).
MAX_UNAUTHENTICATED = 64
MAX_UNAUTHENTICATED_PER_ADDRESS = 8

#: Seconds an authenticated connection may carry no command, stream or
#: subscription before the listening side closes it.
IDLE_TIMEOUT = 600.0


@define(eq=False, repr=False)
class ConnectionFactory(Factory):
    """
    Builds the protocol over TLS of each connection: the framing layer
    with the responders of its locator factory.

    @ivar identify_lookup: maps a public key (DER SubjectPublicKeyInfo) to
        a peer.
    @ivar responders: builds the locator of each connection, or C{None}
        for a connection that answers no command.
    @ivar registry: where authenticated connections are registered.
    @ivar clock: for the handshake deadline and the idle timeout.
    @ivar metrics: counts connections and rejections, or C{None}.
    @ivar run_in_thread: runs compression of data chunks off the reactor.
    @ivar limits: the budgets of each connection.
    @ivar outbound: whether this side dialled (client side).
    @ivar client_tls: the client's TLS settings (for L{authenticate}'s
        messages), on the client side.
    @ivar max_unauthenticated: cap on connections not authenticated yet,
        or C{None} for none (a client dials one at a time).
    @ivar max_unauthenticated_per_address: the same, per source address.
    """

    identify_lookup: Any
    responders: LocatorFactory | None = None
    registry: ConnectionRegistry = field(factory=ConnectionRegistry)
    clock: IReactorTime | None = None
    metrics: DaemonMetrics | None = None
    run_in_thread: RunInThread | None = None
    limits: ConnectionLimits = field(factory=ConnectionLimits)
    outbound: bool = False
    client_tls: ClientTLS | None = None
    max_unauthenticated: int | None = None
    max_unauthenticated_per_address: int | None = None
    handshake_timeout: float | None = HANDSHAKE_TIMEOUT
    _pending: dict[str, int] = field(factory=dict, init=False)
    noisy = False

    @property
    def unauthenticated(self) -> int:
        """
        Connections accepted whose handshake has not completed.
        """
        return sum(self._pending.values())

    def buildProtocol(self, addr: Any) -> Protocol:
        connection = Connection(
            pinned_identity(self.identify_lookup),
            self.run_in_thread,
            limits=self.limits,
            clock=self.clock,
            outbound=self.outbound,
        )
        connection.client_tls = self.client_tls
        if self.responders is not None:
            connection.set_locator(self.responders(connection))
        if self.metrics is not None:
            # Before the errbacks below, which consume the failure.
            self.metrics.watch_connection(
                cast("Deferred[str]", connection.handshake), connection.lost
            )
        host = str(getattr(addr, "host", "?"))
        if self._over_cap(host):
            auth_log.warn(
                "refused a connection from {host}: too many connections are "
                "not authenticated yet",
                host=host,
                reason="too many unauthenticated",
                accepted=False,
            )
            connection.refuse = True
        self._pending[host] = self._pending.get(host, 0) + 1
        deadline = self._deadline(connection)

        def settled(result: object) -> object:
            count = self._pending.get(host, 1) - 1
            if count:
                self._pending[host] = count
            else:
                self._pending.pop(host, None)
            if deadline is not None and deadline.active():
                deadline.cancel()
            return result

        connection.handshake.addBoth(settled)
        connection.handshake.addCallback(self._authenticated, connection)
        connection.handshake.addErrback(self._rejected, connection)
        return connection

    def _over_cap(self, host: str) -> bool:
        total = self.max_unauthenticated
        each = self.max_unauthenticated_per_address
        return (total is not None and self.unauthenticated >= total) or (
            each is not None and self._pending.get(host, 0) >= each
        )

    def _deadline(self, connection: Connection) -> IDelayedCall | None:
        if self.clock is None or self.handshake_timeout is None:
            return None

        def expired() -> None:
            if connection.peer is None and connection.transport is not None:
                auth_log.info(
                    "dropping {address}: no TLS handshake within {seconds} s",
                    address=connection.address,
                    seconds=self.handshake_timeout,
                    reason="handshake timeout",
                    accepted=False,
                )
                connection.transport.abortConnection()

        return self.clock.callLater(self.handshake_timeout, expired)

    def _authenticated(self, peer: PeerId, connection: Connection) -> PeerId:
        self.registry.add(connection)
        throttle = find_throttle(connection.transport)

        def lost(_: object) -> None:
            if throttle is not None and self.metrics is not None:
                self.metrics.throttled(
                    throttle.producer_pauses, throttle.throttled_seconds
                )

        connection.lost.addBoth(lost)
        return peer

    def _rejected(self, failure: Failure, connection: Connection) -> Failure | None:
        if self.outbound:
            # The dialler reports its own failure (authenticate() awaits
            # the handshake).
            return failure
        auth_log.info(
            "connection from {address} closed before authentication: {reason}",
            address=connection.address,
            reason=failure.getErrorMessage(),
            accepted=False,
        )
        return None


def server_factory(
    tls: ServerTLS,
    responders: LocatorFactory,
    clock: IReactorTime,
    rate_up: int = 0,
    rate_down: int = 0,
    metrics: DaemonMetrics | None = None,
    run_in_thread: RunInThread | None = None,
    registry: ConnectionRegistry | None = None,
    limits: ConnectionLimits | None = None,
) -> ThrottlingFactory:
    """
    The factory to listen with: a send/receive throttle on the TCP
    connection, TLS with pinned keys, then the framing layer and the
    responders.

    @param tls: the server TLS settings (key, peer lookup).
    @param responders: builds the locator of each connection.
    @param clock: for the throttle, TLS and the connection deadlines.
    @param rate_up: bytes per second each connection may send (the cap a
        peer's SetRateLimit cannot raise), 0 for unlimited.
    @param rate_down: bytes per second each connection reads, 0 for
        unlimited.
    @param metrics: counts connections, commands, bytes and files.
    @param registry: where authenticated connections are registered.
    @param limits: the budgets of each connection (default: those of
        L{ConnectionLimits}, without idle timeout; the daemon sets
        L{IDLE_TIMEOUT}).
    @return: a factory for any stream endpoint.
    """
    connections = ConnectionFactory(
        tls.lookup,
        responders,
        registry if registry is not None else ConnectionRegistry(),
        clock,
        metrics,
        run_in_thread,
        limits or ConnectionLimits(),
        max_unauthenticated=MAX_UNAUTHENTICATED,
        max_unauthenticated_per_address=MAX_UNAUTHENTICATED_PER_ADDRESS,
    )
    return ThrottlingFactory(
        TLSMemoryBIOFactory(tls, False, connections, clock),
        clock,
        rate_up,
        rate_down,
    )


def client_factory(
    tls: ClientTLS,
    clock: IReactorTime,
    responders: LocatorFactory | None = None,
    rate_up: int = 0,
    run_in_thread: RunInThread | None = None,
    registry: ConnectionRegistry | None = None,
    limits: ConnectionLimits | None = None,
    *,
    creator: IOpenSSLClientConnectionCreator | None = None,
) -> ThrottlingFactory:
    """
    The factory to dial one peer with, the mirror of L{server_factory}:
    what C{ClientService(endpoint, client_factory(...),
    prepareConnection=authenticate)} and L{realize.net.client.connect}
    both use.

    @param tls: client TLS settings expecting the peer's key.
    @param clock: for the throttle, TLS and the handshake deadline.
    @param responders: the commands this side answers on the connection
        (the peer may call us too), or C{None}.
    @param rate_up: bytes per second this side may send, 0 for unlimited
        (a throttle under TLS, so wire bytes are counted).
    @param run_in_thread: runs compression of data chunks off the reactor.
    @param registry: where the connection is registered once
        authenticated.
    @param limits: the budgets of the connection.
    @param creator: other TLS settings to connect with than C{tls}'s (a
        test's foreign client); C{tls} still names the peer expected.
    """
    connections = ConnectionFactory(
        {tls.expected: tls.peer}.get,
        responders,
        registry if registry is not None else ConnectionRegistry(),
        clock,
        None,
        run_in_thread,
        limits or ConnectionLimits(),
        outbound=True,
        client_tls=tls,
    )
    return ThrottlingFactory(
        TLSMemoryBIOFactory(creator or tls, True, connections, clock), clock, rate_up
    )


def connection_factory(factory: ThrottlingFactory) -> ConnectionFactory:
    """
    @param factory: what L{server_factory} or L{client_factory} made.
    @return: its L{ConnectionFactory}.
    """
    tls = cast(TLSMemoryBIOFactory, factory.wrappedFactory)
    return cast(ConnectionFactory, tls.wrappedFactory)


def connection_of(protocol: object) -> Connection:
    """
    The framing connection of a protocol that an endpoint built with one of
    the factories above (the throttle and TLS wrap it).

    @raise TypeError: if there is none.
    """
    current = protocol
    while not isinstance(current, Connection):
        current = getattr(current, "wrappedProtocol", None)
        if current is None:
            raise TypeError(f"{protocol!r} carries no realize connection")
    return current
