"""
Tests for L{realize.net.tls}: pinned-key TLS 1.3 between peers.

Every connection here is real pyOpenSSL TLS, run in memory by
L{twisted.test.iosim} through L{TLSMemoryBIOFactory} on a L{Clock}: no
reactor, no sockets.  This module also holds the harness that the other
C{tests.test_net_*} modules share (L{Identity}, L{link}, and the base class
L{NetTestCase}, which has no tests of its own).

Run the whole network layer with::

    trial tests.test_net tests.test_net_framing tests.test_net_store \\
        tests.test_net_connect
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, frozen
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from OpenSSL import SSL, crypto
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.test.iosim import FakeTransport, IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from realize.interfaces import Store
from realize.model import PeerId
from realize.net.client import RemoteStore
from realize.net.commands import Arenas
from realize.net.factory import client_factory, connection_of, server_factory
from realize.net.framing import Connection, ConnectionLimits
from realize.net.locator import LocatorFactory
from realize.net.registry import ConnectionRegistry
from realize.net.server import store_responders
from realize.net.tls import ClientTLS, ServerTLS, fingerprint, make_certificate
from realize.storage.memory import MemoryStore
from tests.helpers import make_key

#: Where the client (peer a) connects from, as the server sees it.
CLIENT_ADDRESS = IPv4Address("TCP", "192.0.2.1", 40001)

#: Where the server (peer b) listens, as the client sees it.
SERVER_ADDRESS = IPv4Address("TCP", "192.0.2.2", 9771)


@frozen
class Identity:
    """
    A peer's id and keys.
    """

    id: PeerId
    key: Ed25519PrivateKey
    pem: str
    spki: bytes


def identity(name: str) -> Identity:
    """
    @param name: the peer id.
    @return: a peer with a fresh ed25519 key.
    """
    key, pem, spki = make_key()
    return Identity(PeerId(name), key, pem, spki)


class WireTransport(FakeTransport):
    """
    An iosim transport that records whether its protocol asked it to stop
    reading (L{pauseProducing}) and to read again (L{resumeProducing}).

    iosim delivers data regardless; the record shows what a TCP transport
    would have done.
    """

    paused = False
    pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False


@define(eq=False)
class Link:
    """
    An in-memory TLS connection from a client peer to a server peer.

    @ivar client: the client's connection (its AMP has no responders).
    @ivar server: the server's connection, serving the store responders.
    @ivar client_tls: the client's TLS settings (see C{mismatch}).
    @ivar client_wire: the client's iosim transport (below TLS).
    @ivar server_wire: the server's iosim transport (below TLS).
    @ivar pump: moves bytes between the two.
    """

    client: Connection
    server: Connection
    client_tls: Any
    client_wire: WireTransport
    server_wire: WireTransport
    pump: IOPump

    def flush(self) -> None:
        """
        Move bytes until both sides are idle.
        """
        self.pump.flush()

    def remote(self) -> RemoteStore:
        """
        @return: the server's store, as the client calls it.
        """
        return RemoteStore(self.client, "b (192.0.2.2:9771)")

    def close(self) -> None:
        """
        Close the client's connection cleanly and let both sides see it.
        """
        self.client.close()
        self.flush()


def link(
    clock: Clock,
    server: Identity,
    client: Identity,
    view: Callable[[PeerId], Store],
    *,
    server_lookup: Callable[[bytes], PeerId | None] | None = None,
    expected: Identity | None = None,
    client_creator: Any = None,
    server_registry: ConnectionRegistry | None = None,
    server_limits: ConnectionLimits | None = None,
    client_responders: LocatorFactory | None = None,
    client_registry: ConnectionRegistry | None = None,
) -> Link:
    """
    Connect a client peer to a server peer over real TLS in memory, with the
    real stacks of L{realize.net.factory.server_factory} and
    L{realize.net.factory.client_factory} (throttle, TLS, framing), and run
    the handshake.

    @param clock: the clock of both TLS layers and of the pump.
    @param server: the listening peer.
    @param client: the calling peer.
    @param view: the server's store for an authenticated peer.
    @param server_lookup: the server's key lookup; by default it knows the
        client.
    @param expected: the peer whose key the client expects; by default the
        server.
    @param client_creator: TLS settings of the client instead of the
        default L{ClientTLS}.
    @param server_registry: where the server registers its connection.
    @param server_limits: the server connection's budgets.
    @param client_responders: the commands the client answers.
    @param client_registry: where the client registers its connection.
    @return: the link, after the handshake (successful or not).
    """
    if server_lookup is None:
        server_lookup = {client.spki: client.id}.get
    server_tls = ServerTLS(server.key, server_lookup)
    server_side = server_factory(
        server_tls,
        store_responders(view),
        clock,
        registry=server_registry,
        limits=server_limits,
    )
    expected = expected or server
    tls = ClientTLS(client.key, expected.spki, expected.id)
    client_side = client_factory(
        tls,
        clock,
        client_responders,
        registry=client_registry,
        creator=client_creator,
    )
    client_tls = client_creator or tls
    made: dict[str, Any] = {}

    def build_server() -> Protocol:
        protocol = server_side.buildProtocol(CLIENT_ADDRESS)
        made["server"] = connection_of(protocol)
        return protocol

    def build_client() -> Protocol:
        protocol = client_side.buildProtocol(SERVER_ADDRESS)
        made["client"] = connection_of(protocol)
        return protocol

    def server_wire(protocol: Protocol) -> WireTransport:
        made["server_wire"] = WireTransport(
            protocol, True, hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS
        )
        return made["server_wire"]

    def client_wire(protocol: Protocol) -> WireTransport:
        made["client_wire"] = WireTransport(
            protocol, False, hostAddress=CLIENT_ADDRESS, peerAddress=SERVER_ADDRESS
        )
        return made["client_wire"]

    _, _, pump = connectedServerAndClient(
        build_server,
        build_client,
        clientTransportFactory=client_wire,
        serverTransportFactory=server_wire,
        clock=clock,
    )
    return Link(
        made["client"],
        made["server"],
        client_tls,
        made["client_wire"],
        made["server_wire"],
        pump,
    )


def capture_auth(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    Collect the events of the C{realize.auth} log namespace until the end
    of a test.

    @return: the list the events are appended to.
    """
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "realize.auth":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


class NetTestCase(SynchronousTestCase):
    """
    A test with a L{Clock} that must have no delayed call left at the end,
    and peers a (the client), b (the server) and c (a stranger to both).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.addCleanup(self.assert_no_delayed_calls)
        self.a = identity("a")
        self.b = identity("b")
        self.c = identity("c")

    def assert_no_delayed_calls(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])


@implementer(IOpenSSLClientConnectionCreator)
class VersionedClient:
    """
    A client that presents a key and accepts any server, limited to one TLS
    version: a stand-in for an old or foreign client.
    """

    def __init__(self, key: Ed25519PrivateKey, version: int) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(version)
        context.set_max_proto_version(version)
        context.use_privatekey(crypto.PKey.from_cryptography_key(key))
        context.use_certificate(crypto.X509.from_cryptography(make_certificate(key)))
        context.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        self.context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        return connection


class TLSPinningTests(NetTestCase):
    """
    Both sides of a connection accept the other only by its pinned key,
    over TLS 1.3 only, and log their decisions in C{realize.auth}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.store = MemoryStore.with_files("docs", {"note": b"hello"})
        self.events = capture_auth(self)

    def view(self, peer: PeerId) -> Store:
        return self.store

    def test_known_keys(self) -> None:
        """
        When each side has the other's key, the handshake completes, each
        connection knows the other peer's id, the server logs an accepted
        authentication with the client's address and a store command works
        through L{RemoteStore}.
        """
        link_ = link(self.clock, self.b, self.a, self.view)
        self.assertEqual(link_.client.peer, "b")
        self.assertEqual(link_.server.peer, "a")
        self.assertEqual(self.successResultOf(link_.client.handshake), "b")
        self.assertEqual(self.successResultOf(link_.server.handshake), "a")
        self.assertIsNone(link_.client_tls.mismatch)
        d = Deferred.fromCoroutine(link_.remote().arenas())
        link_.flush()
        self.assertEqual(self.successResultOf(d), ["docs"])
        self.assertEqual(self.store.calls, ["arenas"])
        accepted = [
            e for e in self.events if e.get("accepted") and e.get("peer") == "a"
        ]
        self.assertEqual(len(accepted), 1)
        self.assertEqual(accepted[0]["address"], "192.0.2.1:40001")
        self.assertEqual(accepted[0]["fingerprint"], fingerprint(self.a.spki))
        link_.close()
        self.assertIsNone(self.successResultOf(link_.server.lost))
        self.assertIsNone(self.successResultOf(link_.client.lost))

    def test_unknown_client_key(self) -> None:
        """
        The server refuses a client whose key is not configured: the
        connection is lost before any command is served, the client's
        pending command fails, and the server logs the refusal in
        C{realize.auth} with the address, the reason, the key's fingerprint
        and C{accepted=False}.
        """
        link_ = link(
            self.clock,
            self.b,
            self.c,
            self.view,
            server_lookup={self.a.spki: self.a.id}.get,
        )
        # TLS 1.3: the client is done with its half of the handshake before
        # the server has checked its key, so it may already send a command.
        self.assertEqual(link_.client.peer, "b")
        d = link_.client.amp.callRemote(Arenas)
        link_.flush()
        self.failureResultOf(d, SSL.Error)
        self.assertIsNone(link_.server.peer)
        self.assertIsNone(self.successResultOf(link_.server.lost))
        self.assertIsNone(self.successResultOf(link_.client.lost))
        self.assertEqual(self.store.calls, [])
        refusals = [e for e in self.events if e.get("reason") == "unknown key"]
        self.assertEqual(len(refusals), 1)
        self.assertEqual(refusals[0]["address"], "192.0.2.1:40001")
        self.assertIs(refusals[0]["accepted"], False)
        self.assertEqual(refusals[0]["fingerprint"], fingerprint(self.c.spki))
        self.assertFalse(
            [e for e in self.events if e.get("accepted") and e.get("peer") == "c"]
        )

    def test_wrong_server_key(self) -> None:
        """
        A client that expects another key than the one the server presents
        refuses the server: L{ClientTLS.mismatch} names the fingerprint of
        the presented key, both sides lose the connection, the client's
        handshake fails and nothing is served.
        """
        link_ = link(self.clock, self.b, self.a, self.view, expected=self.c)
        self.assertEqual(link_.client_tls.mismatch, fingerprint(self.b.spki))
        self.failureResultOf(link_.client.handshake, SSL.Error)
        self.assertIsNone(link_.client.peer)
        self.assertIsNone(link_.server.peer)
        self.assertIsNone(self.successResultOf(link_.client.lost))
        self.assertIsNone(self.successResultOf(link_.server.lost))
        self.assertEqual(self.store.calls, [])
        refusals = [e for e in self.events if e.get("reason") == "wrong server key"]
        self.assertEqual(len(refusals), 1)
        self.assertIs(refusals[0]["accepted"], False)
        self.assertEqual(refusals[0]["fingerprint"], fingerprint(self.b.spki))
        self.assertEqual(refusals[0]["address"], "192.0.2.2:9771")

    def test_matching_server_key_leaves_no_mismatch(self) -> None:
        """
        L{ClientTLS.mismatch} stays C{None} when the server presents the
        expected key (so that the mismatch above is not set by any
        handshake).
        """
        link_ = link(self.clock, self.b, self.a, self.view)
        self.assertIsNone(link_.client_tls.mismatch)
        self.assertFalse([e for e in self.events if e.get("accepted") is False])
        link_.close()

    def test_tls12_refused(self) -> None:
        """
        A client limited to TLS 1.2 cannot connect, even with a configured
        key: the handshake fails on both sides and the server logs a
        refusal.
        """
        client = VersionedClient(self.a.key, SSL.TLS1_2_VERSION)
        link_ = link(self.clock, self.b, self.a, self.view, client_creator=client)
        self.assertIsNone(link_.server.peer)
        self.failureResultOf(link_.client.handshake, SSL.Error)
        self.assertIsNone(self.successResultOf(link_.server.lost))
        self.assertIsNone(self.successResultOf(link_.client.lost))
        refusals = [e for e in self.events if e.get("accepted") is False]
        self.assertEqual(len(refusals), 1)
        self.assertEqual(refusals[0]["address"], "192.0.2.1:40001")

    def test_tls13_same_client_accepted(self) -> None:
        """
        The same client, allowed TLS 1.3, connects: what failed above was
        the version, not the key.
        """
        client = VersionedClient(self.a.key, SSL.TLS1_3_VERSION)
        link_ = link(self.clock, self.b, self.a, self.view, client_creator=client)
        self.assertEqual(link_.server.peer, "a")
        self.assertEqual(link_.client.peer, "b")
        link_.close()

    def test_lookup_at_each_handshake(self) -> None:
        """
        The server consults its key lookup at each handshake: a key added to
        it after the server was set up is accepted by the next connection,
        and a key removed from it is refused.
        """
        known: dict[bytes, PeerId] = {}
        first = link(self.clock, self.b, self.a, self.view, server_lookup=known.get)
        self.assertIsNone(first.server.peer)
        # The client's half of the handshake completed (TLS 1.3).
        first.client.handshake.addErrback(lambda _: None)
        known[self.a.spki] = self.a.id
        second = link(self.clock, self.b, self.a, self.view, server_lookup=known.get)
        self.assertEqual(second.server.peer, "a")
        second.close()
        del known[self.a.spki]
        third = link(self.clock, self.b, self.a, self.view, server_lookup=known.get)
        self.assertIsNone(third.server.peer)
