"""
Tests for the connection stack of L{realize.net.factory}, the registry of
L{realize.net.registry}, composite locators and the per-connection budgets
of L{realize.net.framing} (issue 8 items 1-3, issue 14 items 3-5, 7, 12).

In memory, over real TLS (L{tests.test_net.link}), on a L{Clock}; one
integration test dials a real loopback port with a C{ClientService}.
"""

from __future__ import annotations

import gc
import struct
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase, TestCase

from realize.errors import BadRequest, NetworkError
from realize.model import ArenaName, FileState, PeerId
from realize.net import commands
from realize.net.client import RemoteStore, authenticate
from realize.net.codec import MAX_PEER_COMPRESSION_LEVEL
from realize.net.factory import (
    HANDSHAKE_TIMEOUT,
    MAX_UNAUTHENTICATED_PER_ADDRESS,
    ConnectionFactory,
    client_factory,
    connection_factory,
    connection_of,
    server_factory,
)
from realize.net.framing import BOX, WRITE_DATA, Connection, ConnectionLimits
from realize.net.locator import CompositeLocator, Responders, combine
from realize.net.registry import ConnectionRegistry
from realize.net.server import MAX_OPEN_READS, store_responders
from realize.net.tls import ClientTLS, ServerTLS
from realize.storage.memory import MemoryStore
from tests.test_net import NetTestCase, link

_HEADER = struct.Struct("!BII")


def frame(kind: int, stream: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, stream, len(payload)) + payload


class Ping(amp.Command):
    """
    A command of a second responder set.
    """

    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class BareHash(amp.Command):
    """
    A Hash with none of its arguments: malformed for the responder.
    """

    commandName = b"Hash"
    arguments: list[tuple[bytes, amp.Argument]] = []
    response: list[tuple[bytes, amp.Argument]] = []
    errors = {BadRequest: b"BAD_REQUEST"}


class PingResponders(Responders):
    """
    Answers L{Ping} with the text and the caller's id.
    """

    @Ping.responder
    def ping(self, text: str) -> dict[str, Any]:
        return {"text": f"{text} from {self.peer}"}


class Recorder:
    """
    A registry observer that records what it is told.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, PeerId | None]] = []

    def connected(self, connection: Connection) -> None:
        self.events.append(("connected", connection.peer))

    def disconnected(self, connection: Connection) -> None:
        self.events.append(("disconnected", connection.peer))


class StackTests(NetTestCase):
    """
    Both sides of a connection built by the real factories.
    """

    def setUp(self) -> None:
        super().setUp()
        self.store = MemoryStore.with_files("docs", {"note": b"hello"})

    def view(self, peer: PeerId) -> MemoryStore:
        return self.store

    def test_registry_both_sides(self) -> None:
        """
        Each side registers its authenticated connection under the other
        peer's id, observers hear of it, and it leaves the registry (with a
        disconnected event) when it is lost.
        """
        server_registry = ConnectionRegistry()
        client_registry = ConnectionRegistry()
        recorder = Recorder()
        server_registry.observe(recorder)
        link_ = link(
            self.clock,
            self.b,
            self.a,
            self.view,
            server_registry=server_registry,
            client_registry=client_registry,
        )
        self.assertIs(server_registry.connection(PeerId("a")), link_.server)
        self.assertIs(client_registry.connection(PeerId("b")), link_.client)
        self.assertTrue(link_.client.outbound)
        self.assertFalse(link_.server.outbound)
        self.assertEqual(server_registry.peers(), ["a"])
        link_.close()
        self.assertIsNone(server_registry.connection(PeerId("a")))
        self.assertEqual(client_registry.connections(), [])
        self.assertEqual(recorder.events, [("connected", "a"), ("disconnected", "a")])

    def test_server_calls_client(self) -> None:
        """
        A client that answers commands (here the store's) can be called by
        the server on the connection the client dialled: what a listening
        daemon does with a deaf peer.
        """
        client_store = MemoryStore.with_files("laptop", {"x": b"1"})
        link_ = link(
            self.clock,
            self.b,
            self.a,
            self.view,
            client_responders=store_responders(lambda peer: client_store),
        )
        remote = RemoteStore(link_.server, "a (as called by b)")
        d = Deferred.fromCoroutine(remote.arenas())
        link_.flush()
        self.assertEqual(self.successResultOf(d), ["laptop"])
        self.assertEqual(client_store.calls, ["arenas"])
        link_.close()

    def test_composite_locator(self) -> None:
        """
        Two responder sets on one connection: each command reaches the set
        that has it, and its responders know the calling peer.
        """
        both = combine(
            store_responders(lambda peer: self.store),
            PingResponders,
        )
        link_ = link(self.clock, self.a, self.b, self.view, client_responders=both)
        ping = link_.server.amp.callRemote(Ping, text="hi")
        arenas = link_.server.amp.callRemote(commands.Arenas)
        link_.flush()
        self.assertEqual(self.successResultOf(ping), {"text": "hi from a"})
        self.assertEqual(self.successResultOf(arenas)["arenas"], ["docs"])
        self.assertIsInstance(link_.client.amp.locator, CompositeLocator)
        link_.close()

    def test_authenticate(self) -> None:
        """
        L{authenticate} takes the protocol an endpoint gives (the throttle
        over TLS over the connection) and answers the connection once the
        peer proved its key.
        """
        link_ = link(self.clock, self.b, self.a, self.view)
        outer = link_.client_wire.protocol
        self.assertIs(connection_of(outer), link_.client)
        d = Deferred.fromCoroutine(authenticate(outer))
        link_.flush()
        self.assertIs(self.successResultOf(d), link_.client)
        link_.close()

    def test_connection_factory(self) -> None:
        """
        L{connection_factory} finds the L{ConnectionFactory} under the
        throttle and TLS of a factory made by L{server_factory}.
        """
        tls = ServerTLS(self.b.key, {}.get)
        factory = server_factory(tls, store_responders(self.view), self.clock)
        self.assertIsInstance(connection_factory(factory), ConnectionFactory)


class BudgetTests(NetTestCase):
    """
    What one connection may make the other side hold or do.
    """

    def setUp(self) -> None:
        super().setUp()
        self.store = MemoryStore.with_files("docs", {"note": b"hello"})
        self.warnings: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") is not None and event["log_level"].name in (
                "warn",
                "error",
                "critical",
            ):
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def view(self, peer: PeerId) -> MemoryStore:
        return self.store

    def test_too_many_commands(self) -> None:
        """
        Commands beyond the connection's budget are refused with
        L{BadRequest}; the connection stays and serves later commands.
        """
        held: list[Deferred[None]] = []

        class Slow(MemoryStore):
            async def arenas(self) -> list[ArenaName]:
                d: Deferred[None] = Deferred()
                held.append(d)
                await d
                return [ArenaName("docs")]

        slow = Slow.with_files("docs", {})
        link_ = link(
            self.clock,
            self.b,
            self.a,
            lambda peer: slow,
            server_limits=ConnectionLimits(max_commands=2),
        )
        remote = link_.remote()
        calls = [Deferred.fromCoroutine(remote.arenas()) for _ in range(3)]
        link_.flush()
        self.assertEqual(len(held), 2)
        error = self.failureResultOf(calls[2], BadRequest).value
        self.assertIn("2 commands are already in flight", str(error))
        for d in held:
            d.callback(None)
        link_.flush()
        for d in calls[:2]:
            self.assertEqual(self.successResultOf(d), ["docs"])
        again = Deferred.fromCoroutine(remote.arenas())
        link_.flush()
        self.assertEqual(len(held), 3)
        held[2].callback(None)
        link_.flush()
        self.successResultOf(again)
        link_.close()

    def test_box_over_many_frames(self) -> None:
        """
        One AMP box spread over many box frames may not exceed the box
        limit in total: the connection is dropped with a warning.
        """
        link_ = link(
            self.clock,
            self.b,
            self.a,
            self.view,
            server_limits=ConnectionLimits(max_box=1 << 16),
        )
        # A box that never ends: a key, then a value longer than allowed,
        # sent in frames of 4 KiB.
        link_.client.send_frame(BOX, 0, b"\x00\x04_ask\x00\x011")
        for _ in range(20):
            link_.client.send_frame(BOX, 0, b"\x00\x03abc\xff\xff" + b"x" * 4096)
        link_.flush()
        self.assertIsNone(self.successResultOf(link_.server.lost))
        self.assertTrue(
            [w for w in self.warnings if "AMP box of more than" in str(w.get("why"))]
        )

    def test_held_bytes_pause_reading(self) -> None:
        """
        Data received for streams nobody consumes counts against the
        connection's budget of held bytes: over it, the connection stops
        reading from its transport; once released, it reads again.
        """
        link_ = link(
            self.clock,
            self.b,
            self.a,
            self.view,
            server_limits=ConnectionLimits(max_held=64 << 10),
        )
        server = link_.server
        inboxes = [server.open_incoming(stream) for stream in range(1, 5)]
        for stream in range(1, 5):
            link_.client.send_frame(WRITE_DATA, stream, b"x" * (20 << 10))
        link_.flush()
        self.assertEqual(server.held, 80 << 10)
        self.assertTrue(link_.server_wire.paused)
        for inbox in inboxes:
            inbox.discard()
        self.assertEqual(server.held, 0)
        self.assertFalse(link_.server_wire.paused)
        link_.close()

    def test_malformed_arguments(self) -> None:
        """
        A command whose arguments do not parse is answered BAD_REQUEST, the
        connection stays, and one warning line names the peer, command and
        reason, without a traceback; past ten a minute, warnings stop, and
        the next one let through says how many were left out.
        """
        link_ = link(self.clock, self.b, self.a, self.view)
        answers: list[Any] = []
        for _ in range(12):
            link_.client.amp.callRemote(BareHash).addErrback(answers.append)
        link_.flush()
        self.assertEqual(len(answers), 12)
        for failure in answers:
            failure.trap(BadRequest)
            self.assertIn("malformed arguments", failure.getErrorMessage())
        bad = [w for w in self.warnings if w.get("command") == "Hash"]
        self.assertEqual(len(bad), 10)
        self.assertEqual(bad[0]["peer"], "a")
        self.assertFalse([w for w in self.warnings if "log_failure" in w])
        self.assertFalse(link_.server.lost.called)
        self.clock.advance(61)
        link_.client.amp.callRemote(BareHash).addErrback(answers.append)
        link_.flush()
        late = [w for w in self.warnings if w.get("command") == "Hash"][-1]
        self.assertEqual(late["suppressed"], 2)
        link_.close()

    def test_rate_limit_out_of_range(self) -> None:
        """
        SetRateLimit with a rate beyond 64 bits is a bad request, not an
        overflow in the throttle: the connection stays.
        """
        link_ = link(self.clock, self.b, self.a, self.view)
        remote = link_.remote()
        d = Deferred.fromCoroutine(remote.set_rate_limit(10**400))
        link_.flush()
        self.assertIn("out of range", str(self.failureResultOf(d, BadRequest).value))
        ok = Deferred.fromCoroutine(remote.set_rate_limit(1 << 20))
        link_.flush()
        self.assertEqual(self.successResultOf(ok), 1 << 20)
        self.assertFalse([w for w in self.warnings if "log_failure" in w])
        link_.close()

    def test_compression_level_capped(self) -> None:
        """
        A peer asking for zstd level 19 gets at most the level we allow.
        """
        link_ = link(self.clock, self.b, self.a, self.view)
        d = link_.client.amp.callRemote(
            commands.SetCompression, algorithm="zstd", level=19
        )
        link_.flush()
        self.successResultOf(d)
        self.assertEqual(link_.server.compression_level, MAX_PEER_COMPRESSION_LEVEL)
        link_.close()

    def test_open_reads_bounded(self) -> None:
        """
        At most L{MAX_OPEN_READS} reads of one connection are open in the
        store at once; the others wait, and all complete.
        """
        open_now = []
        gates: list[Deferred[None]] = []

        class Stream:
            def __init__(self) -> None:
                self.sent = False
                open_now.append(self)

            def __aiter__(self) -> AsyncIterator[bytes]:
                return self

            async def __anext__(self) -> bytes:
                if self.sent:
                    open_now.remove(self)
                    raise StopAsyncIteration
                gate: Deferred[None] = Deferred()
                gates.append(gate)
                await gate
                self.sent = True
                return b"data"

            async def result(self) -> FileState:
                return FileState((), 4, 0)

            def cancel(self) -> None:
                pass

        class Gated(MemoryStore):
            def read(self, *args: Any, **kwargs: Any) -> Any:
                return Stream()

        gated = Gated.with_files("docs", {})
        link_ = link(self.clock, self.b, self.a, lambda peer: gated)
        remote = link_.remote()

        async def read_one() -> bytes:
            stream = remote.read(ArenaName("docs"), "f", 0, 4)
            data = b"".join([chunk async for chunk in stream])
            await stream.result()
            return data

        reads = [Deferred.fromCoroutine(read_one()) for _ in range(MAX_OPEN_READS + 8)]
        link_.flush()
        self.assertEqual(len(open_now), MAX_OPEN_READS)
        while gates:
            gates.pop(0).callback(None)
            link_.flush()
            self.assertLessEqual(len(open_now), MAX_OPEN_READS)
        for d in reads:
            self.assertEqual(self.successResultOf(d), b"data")
        link_.close()

    def test_lost_connection_frees_buffers(self) -> None:
        """
        What the pending WriteFiles of a connection that is lost had
        gathered is freed at once, not when a full garbage collection runs
        (issue 14 item 4: one shared exception raised into every pending
        command kept their buffers alive on its traceback, in a reference
        cycle).
        """
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        link_ = link(self.clock, self.b, self.a, self.view)
        before, _ = tracemalloc.get_traced_memory()
        answers = []
        for stream in range(1, 11):
            d = link_.client.amp.callRemote(
                commands.WriteFiles,
                arena="docs",
                stream=stream,
                files=[
                    {"path": f"f{stream}", "size": 2 << 20, "mtime_ns": 1, "root": b"r"}
                ],
            )
            answers.append(d.addErrback(lambda f: None))
            for _ in range(4):
                link_.client.send_frame(WRITE_DATA, stream, b"x" * (256 << 10))
            link_.flush()
        during, _ = tracemalloc.get_traced_memory()
        self.assertGreater(during - before, 9 << 20)
        link_.server_wire.loseConnection()
        link_.flush()
        after, _ = tracemalloc.get_traced_memory()
        self.assertLess(after - before, 2 << 20)

    def test_lost_connection_fresh_errors(self) -> None:
        """
        Each inbox of a lost connection fails with an error of its own.
        """
        link_ = link(self.clock, self.b, self.a, self.view)
        errors = []

        async def consume(stream: int) -> None:
            inbox = link_.server.open_incoming(stream)
            try:
                async for _ in inbox:
                    pass
            except NetworkError as e:
                errors.append(e)

        for stream in range(1, 4):
            Deferred.fromCoroutine(consume(stream))
        link_.server_wire.loseConnection()
        link_.flush()
        self.assertEqual(len(errors), 3)
        self.assertEqual(len({id(e) for e in errors}), 3)


class UnauthenticatedTests(SynchronousTestCase):
    """
    The listening side bounds connections that have not proved a key.
    """

    def setUp(self) -> None:
        from tests.test_net import identity

        self.clock = Clock()
        self.b = identity("b")
        tls = ServerTLS(self.b.key, {}.get)
        self.factory = server_factory(
            tls, store_responders(lambda peer: MemoryStore()), self.clock
        )

    def accept(self, host: str) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 5000))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_handshake_deadline(self) -> None:
        """
        A connection that sends nothing is aborted after
        L{HANDSHAKE_TIMEOUT} seconds.
        """
        protocol, transport = self.accept("192.0.2.9")
        self.clock.advance(HANDSHAKE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cap_per_address(self) -> None:
        """
        Beyond L{MAX_UNAUTHENTICATED_PER_ADDRESS} connections from one
        address that are not authenticated yet, new ones are dropped at
        once; another address is still served.
        """
        held = [
            self.accept("192.0.2.9") for _ in range(MAX_UNAUTHENTICATED_PER_ADDRESS)
        ]
        for _, transport in held:
            self.assertFalse(transport.disconnecting)
        _, refused = self.accept("192.0.2.9")
        self.assertTrue(refused.disconnecting or refused.disconnected)
        _, other = self.accept("192.0.2.10")
        self.assertFalse(other.disconnecting)
        self.clock.advance(HANDSHAKE_TIMEOUT)


class IdleTests(NetTestCase):
    """
    An authenticated connection that carries nothing is closed.
    """

    def test_idle_closed(self) -> None:
        """
        With an idle timeout, a connection with no command, stream or
        subscription is closed after it; activity restarts the count, and a
        long-lived activity (L{Connection.busy}) keeps it.
        """
        store = MemoryStore.with_files("docs", {})
        link_ = link(
            self.clock,
            self.b,
            self.a,
            lambda peer: store,
            server_limits=ConnectionLimits(idle_timeout=60),
        )
        self.clock.advance(50)
        d = link_.client.amp.callRemote(commands.Arenas)
        link_.flush()
        self.successResultOf(d)
        self.clock.advance(50)
        link_.flush()
        self.assertFalse(link_.server.lost.called)
        link_.server.busy(+1)
        self.clock.advance(120)
        link_.flush()
        self.assertFalse(link_.server.lost.called)
        link_.server.busy(-1)
        self.clock.advance(60)
        link_.flush()
        self.assertTrue(link_.server.lost.called)
        self.assertTrue(link_.client.lost.called)


class ClientServiceIntegrationTests(TestCase):
    """
    A C{ClientService} dialling with L{client_factory} and
    L{authenticate}, against a real listening port on 127.0.0.1.
    """

    timeout = 20

    async def run_service(self) -> None:
        from tests.test_net import identity

        a, b = identity("a"), identity("b")
        store = MemoryStore.with_files("docs", {"f": b"x"})
        registry = ConnectionRegistry()
        factory = server_factory(
            ServerTLS(b.key, {a.spki: a.id}.get),
            store_responders(lambda peer: store),
            reactor,
            registry=registry,
        )
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            factory
        )
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        service = ClientService(
            endpoint,
            client_factory(ClientTLS(a.key, b.spki, b.id), reactor),
            prepareConnection=authenticate,
        )
        service.startService()
        protocol = await service.whenConnected()
        connection = connection_of(protocol)
        self.assertEqual(connection.peer, "b")
        remote = RemoteStore(connection, "b")
        self.assertEqual(await remote.arenas(), ["docs"])
        self.assertEqual(registry.peers(), ["a"])
        await service.stopService()
        self.assertTrue(connection.lost.called)

    def test_client_service(self) -> None:
        """
        The connection a C{ClientService} prepares with L{authenticate} is
        authenticated and serves store commands, as realize-move's does.
        """
        return Deferred.fromCoroutine(self.run_service())
