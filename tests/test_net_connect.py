"""
Tests for L{realize.net.client.connect} over loopback TCP with the real
reactor: the errors a user sees when a peer cannot be reached or its keys
do not match.

These are integration tests (sockets on 127.0.0.1, real time); each cleans
up its listening port and waits for both ends of its connections to close.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from realize.config import PeerConfig
from realize.errors import AuthenticationError, NetworkError
from realize.model import PeerId
from realize.net.client import connect
from realize.net.factory import ConnectionFactory
from realize.net.framing import Connection
from realize.net.server import store_responders
from realize.net.tls import ClientTLS, ServerTLS, fingerprint
from realize.storage.memory import MemoryStore
from tests.test_net import Identity, identity


class Recording(Factory):
    """
    A factory that remembers the protocols another one builds.
    """

    def __init__(self, wrapped: Factory) -> None:
        self.wrapped = wrapped
        self.built: list[Connection] = []

    def buildProtocol(self, addr: Any) -> Protocol | None:
        protocol = self.wrapped.buildProtocol(addr)
        assert isinstance(protocol, Connection)
        self.built.append(protocol)
        return protocol


def coroutine_test(
    f: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], Deferred[None]]:
    """
    Run an C{async def} test method as a Deferred.
    """

    def test(self: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(f(self))

    test.__name__ = f.__name__
    test.__doc__ = f.__doc__
    return test


class ConnectIntegrationTests(TestCase):
    """
    Peer a connects to peer b listening on 127.0.0.1.
    """

    timeout = 20

    def setUp(self) -> None:
        self.a = identity("a")
        self.b = identity("b")
        self.c = identity("c")
        self.store = MemoryStore.with_files("docs", {"f": b"x"})

    async def listen(self, knows: Identity) -> tuple[IListeningPort, Recording]:
        """
        Listen as peer b, knowing one client key.

        @return: the port and the record of the server's connections, both
            cleaned up at the end of the test.
        """
        tls = ServerTLS(self.b.key, {knows.spki: knows.id}.get)
        recording = Recording(
            ConnectionFactory(tls.lookup, store_responders(lambda peer: self.store))
        )
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(TLSMemoryBIOFactory(tls, False, recording))
        self.addCleanup(self.closed, recording)
        self.addCleanup(port.stopListening)
        return port, recording

    def closed(self, recording: Recording) -> Deferred[Any]:
        """
        @return: a Deferred that fires when every server connection closed.
        """
        for connection in recording.built:
            connection.close()
        return gatherResults([c.lost for c in recording.built])

    def peer(self, port: int, key: Identity) -> PeerConfig:
        """
        @return: peer b's config at a port, with the key the client expects.
        """
        return PeerConfig(PeerId("b"), ("127.0.0.1", port), key.spki)

    @coroutine_test
    async def test_connect(self) -> None:
        """
        With the keys configured on both sides, connect gives a store that
        serves commands, named by the peer and its address.
        """
        port, recording = await self.listen(self.a)
        number = port.getHost().port
        store = await connect(
            reactor,
            self.peer(number, self.b),
            ClientTLS(self.a.key, self.b.spki, PeerId("b")),
        )
        self.assertEqual(store.describe(), f"b (127.0.0.1:{number})")
        self.assertEqual(await store.arenas(), ["docs"])
        self.assertEqual([c.peer for c in recording.built], ["a"])
        await store.close()

    @coroutine_test
    async def test_refused(self) -> None:
        """
        Nobody listening: L{NetworkError} saying the connection was refused.
        """
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(Factory.forProtocol(Protocol))
        number = port.getHost().port
        await port.stopListening()
        try:
            await connect(
                reactor,
                self.peer(number, self.b),
                ClientTLS(self.a.key, self.b.spki, PeerId("b")),
            )
        except NetworkError as e:
            self.assertIn("refused", str(e))
        else:
            self.fail("connected to a closed port")

    @coroutine_test
    async def test_wrong_server_key(self) -> None:
        """
        A server presenting another key than the configured one:
        L{AuthenticationError} naming the fingerprint of the key presented.
        """
        port, _ = await self.listen(self.a)
        tls = ClientTLS(self.a.key, self.c.spki, PeerId("b"))
        try:
            await connect(reactor, self.peer(port.getHost().port, self.c), tls)
        except AuthenticationError as e:
            self.assertIn(fingerprint(self.b.spki), str(e))
            self.assertIn("peer b", str(e))
        else:
            self.fail("accepted the wrong server key")
        self.assertEqual(self.store.calls, [])

    @coroutine_test
    async def test_unknown_client_key(self) -> None:
        """
        A server that does not know our key: L{AuthenticationError} saying
        the peer refused our key, and no command served.
        """
        port, _ = await self.listen(self.c)
        tls = ClientTLS(self.a.key, self.b.spki, PeerId("b"))
        try:
            await connect(reactor, self.peer(port.getHost().port, self.b), tls)
        except AuthenticationError as e:
            self.assertIn("refused our key", str(e))
        else:
            self.fail("the server accepted an unknown key")
        self.assertEqual(self.store.calls, [])
