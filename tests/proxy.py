"""
A loopback TCP proxy for tests: listens on 127.0.0.1, relays each
connection to a target endpoint, counts the bytes in each direction, and
can cut every connection after a number of bytes, the way a flaky network
does.

    proxy = CuttingProxy(reactor, "127.0.0.1", daemon_port, cut_after=3 << 20)
    port = await proxy.start()
    ...  # point the client at port
    await proxy.stop()

A cut aborts both sides of the connection (the kernel then resets them):
the bytes up to the limit are relayed, the rest is lost.  Back-pressure is
kept end to end: each side's transport produces for the other one, so the
proxy buffers no more than a socket's worth.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

__all__ = ["BOTH", "DOWN", "UP", "CuttingProxy"]

#: Directions: from the client to the target, from the target to the
#: client, or the two added.
UP = "up"
DOWN = "down"
BOTH = "both"


class _Side(Protocol):
    """
    One side of a relayed connection: what it receives goes to the other
    side.
    """

    def __init__(self, relay: _Relay, direction: str) -> None:
        self.relay = relay
        #: The direction of what this side receives.
        self.direction = direction
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.relay.forward(self, data)

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self.relay.side_lost(self)
        self.lost.callback(None)


class _Relay:
    """
    A client connection and its connection to the target.
    """

    def __init__(self, proxy: CuttingProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, UP)
        self.target: _Side | None = None
        self.pending: list[bytes] = []
        self.up = 0
        self.down = 0
        self.cut = False
        self.closing = False
        #: Whether this connection may be cut (see C{cut_connections}).
        self.cuttable = (
            proxy.cut_connections is None or proxy.connections < proxy.cut_connections
        )

    def connect(self) -> None:
        """
        The client connected: hold its data until the target answers.
        """
        transport = self.client.transport
        assert transport is not None
        transport.pauseProducing()
        target = _Side(self, DOWN)
        d = self.proxy.target_endpoint().connect(Factory.forProtocol(lambda: target))
        self.proxy._connecting.add(d)

        def connected(_: Any) -> None:
            self.proxy._connecting.discard(d)
            if self.closing:
                assert target.transport is not None
                target.transport.abortConnection()
                return
            self.target = target
            client, server = self.client.transport, target.transport
            assert client is not None and server is not None
            client.registerProducer(server, True)
            server.registerProducer(client, True)
            pending, self.pending = self.pending, []
            for data in pending:
                self.forward(self.client, data)
            if not self.closing:
                client.resumeProducing()

        def failed(failure: Failure) -> None:
            self.proxy._connecting.discard(d)
            self.proxy.refused += 1
            self.abort()

        d.addCallbacks(connected, failed)

    def forward(self, side: _Side, data: bytes) -> None:
        if self.closing:
            return
        if side is self.client and self.target is None:
            self.pending.append(data)
            return
        other = self.target if side is self.client else self.client
        assert other is not None and other.transport is not None
        limit = self.proxy.cut_after
        if limit is not None and self.cuttable:
            room = limit - self._counted(side.direction)
            if room <= len(data):
                data = data[: max(room, 0)]
                self._count(side.direction, data)
                if data:
                    other.transport.write(data)
                self.cut = True
                self.proxy.cuts += 1
                self.abort()
                return
        self._count(side.direction, data)
        other.transport.write(data)

    def _counted(self, direction: str) -> int:
        watched = self.proxy.cut_direction
        if watched == BOTH:
            return self.up + self.down
        if watched != direction:
            return -(1 << 62)  # never reached: only the other way is cut
        return self.up if direction == UP else self.down

    def _count(self, direction: str, data: bytes) -> None:
        if direction == UP:
            self.up += len(data)
            self.proxy.bytes_up += len(data)
        else:
            self.down += len(data)
            self.proxy.bytes_down += len(data)

    def abort(self) -> None:
        """
        Cut both sides at once.
        """
        self.closing = True
        for side in (self.client, self.target):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()

    def side_lost(self, side: _Side) -> None:
        # When one side goes, the other goes too (with what it buffered
        # delivered, for a clean close).
        other = self.target if side is self.client else self.client
        if other is not None and other.transport is not None and not self.closing:
            self.closing = True
            other.transport.loseConnection()
        if side is self.client:
            self.closing = True


class _ListenFactory(Factory):
    def __init__(self, proxy: CuttingProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> Protocol:
        relay = _Relay(self.proxy)
        self.proxy.connections += 1
        self.proxy.relays.append(relay)
        client = relay.client
        original = client.connectionMade

        def made() -> None:
            original()
            relay.connect()

        client.connectionMade = made  # type: ignore[method-assign]
        return client


class CuttingProxy:
    """
    A TCP proxy from a port on 127.0.0.1 to a target.

    @ivar cut_after: cut each connection once this many bytes went through
        it in C{cut_direction}; C{None} (the default) never cuts.  May be
        changed at any time; applies to the bytes still to come.
    @ivar cut_direction: L{UP} (client to target), L{DOWN} or L{BOTH}.
    @ivar cut_connections: cut only the first this many connections
        (C{None}: every one), e.g. to let a retrying client through in the
        end.
    @ivar bytes_up: bytes relayed from clients to the target, in total.
    @ivar bytes_down: bytes relayed from the target to clients.
    @ivar connections: connections accepted.
    @ivar cuts: connections cut.
    @ivar refused: connections whose target could not be reached.
    @ivar relays: every relayed connection (with its own C{up}, C{down}
        and C{cut}).
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        cut_after: int | None = None,
        cut_direction: str = BOTH,
        cut_connections: int | None = None,
    ) -> None:
        if cut_direction not in (UP, DOWN, BOTH):
            raise ValueError(f"cut_direction {cut_direction!r}: use up, down or both")
        self.reactor = reactor
        self.host = host
        self.port = port
        self.cut_after = cut_after
        self.cut_direction = cut_direction
        self.cut_connections = cut_connections
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.cuts = 0
        self.refused = 0
        self.relays: list[_Relay] = []
        self._listening: IListeningPort | None = None
        self._connecting: set[Deferred[Any]] = set()

    def target_endpoint(self) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=10)

    async def start(self) -> int:
        """
        Listen on a free port of 127.0.0.1.

        @return: the port.
        """
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._listening = await endpoint.listen(_ListenFactory(self))
        return self.listening_port

    @property
    def listening_port(self) -> int:
        assert self._listening is not None
        return self._listening.getHost().port  # type: ignore[no-any-return]

    def stop(self) -> Deferred[Any]:
        """
        Stop listening, abort every connection and pending connection
        attempt.

        @return: a Deferred that fires when everything is closed.
        """
        waits: list[Deferred[Any]] = []
        if self._listening is not None:
            listening, self._listening = self._listening, None
            waits.append(Deferred.fromCoroutine(_stop_listening(listening)))
        for d in list(self._connecting):
            d.cancel()
        for relay in self.relays:
            relay.abort()
            for side in (relay.client, relay.target):
                if side is not None and side.transport is not None:
                    waits.append(side.lost)
        if not waits:
            return succeed(None)
        return DeferredList(waits, consumeErrors=True)


async def _stop_listening(port: IListeningPort) -> None:
    await port.stopListening()
