"""
Tests for L{realize.net.framing} (the framing layer under AMP, inboxes and
back-pressure) and L{realize.net.commands.BigBytes}.

A L{Connection} here runs on a L{StringTransport} that can present a peer
certificate, so bytes in and out are checked frame by frame without TLS.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given, settings
from hypothesis import strategies as st
from OpenSSL import crypto
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import BadRequest, Conflict, NetworkError
from realize.model import FileInfo, PeerId
from realize.net.codec import (
    MAX_DATA_FRAME,
    decode_entries,
    decode_flags,
    encode_entries,
    encode_flags,
)
from realize.net.commands import BigBytes
from realize.net.framing import (
    BOX,
    MAX_BOX_FRAME,
    READ_CANCEL,
    READ_DATA,
    READ_DATA_Z,
    WRITE_DATA,
    WRITE_END,
    Connection,
)
from realize.net.streams import Inbox
from realize.net.tls import make_certificate, pinned_identity
from tests.helpers import make_key, result_of

MiB = 1 << 20

_HEADER = struct.Struct("!BII")

PEER_ADDRESS = IPv4Address("TCP", "192.0.2.1", 40001)


def frame(kind: int, stream: int, payload: bytes = b"") -> bytes:
    """
    @return: one frame as it goes on the wire.
    """
    return _HEADER.pack(kind, stream, len(payload)) + payload


def frames_of(data: bytes) -> list[tuple[int, int, bytes]]:
    """
    Split bytes written by a connection into frames.

    @return: C{(kind, stream, payload)} of each frame.
    @raise AssertionError: if the bytes do not end with a whole frame.
    """
    frames = []
    offset = 0
    while offset < len(data):
        kind, stream, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        payload = data[offset : offset + length]
        assert len(payload) == length, "truncated frame"
        offset += length
        frames.append((kind, stream, payload))
    return frames


class Echo(amp.Command):
    """
    A test command: answers its argument.
    """

    arguments = [(b"value", amp.Unicode())]
    response = [(b"value", amp.Unicode())]


class EchoLocator(amp.CommandLocator):
    """
    Answers L{Echo} and records what it served.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []

    @Echo.responder
    def echo(self, value: str) -> dict[str, str]:
        self.seen.append(value)
        return {"value": value}


def echo_box(value: str, ask: int = 1) -> bytes:
    """
    @return: the AMP bytes of an L{Echo} command.
    """
    return amp.Box(
        {b"_command": b"Echo", b"_ask": b"%d" % ask, b"value": value.encode()}
    ).serialize()


def boxes_of(frames: Iterable[tuple[int, int, bytes]]) -> list[dict[bytes, bytes]]:
    """
    @return: the AMP boxes carried by the box frames among C{frames}.
    """
    payload = b"".join(p for kind, stream, p in frames if kind == BOX)
    return [dict(box) for box in amp.parseString(payload)]


class PeerTransport(StringTransport):
    """
    A L{StringTransport} standing in for TLS: it presents the certificate of
    a peer key, as L{TLSMemoryBIOProtocol.getPeerCertificate} does, and
    records whether it was aborted.
    """

    def __init__(self, key: Ed25519PrivateKey | None) -> None:
        super().__init__(peerAddress=PEER_ADDRESS)
        self.certificate = (
            None
            if key is None
            else crypto.X509.from_cryptography(make_certificate(key))
        )

    aborted = False
    nodelay: bool | None = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def getPeerCertificate(self) -> crypto.X509 | None:
        return self.certificate

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class ConnectionTestCase(SynchronousTestCase):
    """
    Builds connections on L{PeerTransport}s; peer a is known.
    """

    def setUp(self) -> None:
        self.key, _, self.spki = make_key()
        self.lookup = {self.spki: PeerId("a")}.get

    def connection(
        self,
        locator: amp.CommandLocator | None = None,
        handshake: bool = True,
        key: Ed25519PrivateKey | None = None,
    ) -> tuple[Connection, PeerTransport]:
        """
        @param handshake: whether to complete the TLS handshake.
        @param key: the key the peer presents, by default peer a's.
        @return: a connected connection and its transport.
        """
        connection = Connection(
            pinned_identity(self.lookup), locator=locator or EchoLocator()
        )
        transport = PeerTransport(key or self.key)
        connection.makeConnection(transport)
        if handshake:
            connection.handshakeCompleted()
        return connection, transport

    def take(self, inbox: Inbox) -> bytes:
        """
        @return: the next chunk an inbox holds.
        """
        return result_of(self, inbox.__anext__())

    def rest(self, inbox: Inbox) -> list[bytes]:
        """
        @return: the chunks of a closed inbox, to its end.
        """

        async def go() -> list[bytes]:
            return [chunk async for chunk in inbox]

        return result_of(self, go())


class FramingTests(ConnectionTestCase):
    """
    Frames in and out of a connection.
    """

    def test_no_delay(self) -> None:
        """
        A connection turns Nagle's algorithm off on its transport: a small
        box is not held back until the peer's delayed ACK (40 ms on Linux;
        random reads of the FUSE view waited that long for each piece).
        A transport without the option is fine.
        """
        _, transport = self.connection()
        self.assertIs(transport.nodelay, True)
        connection = Connection(pinned_identity(self.lookup), locator=EchoLocator())
        connection.makeConnection(StringTransport(peerAddress=PEER_ADDRESS))

    def test_box_frame_served(self) -> None:
        """
        An AMP command in a box frame reaches the locator, and the answer
        goes out as a box frame on stream 0.
        """
        locator = EchoLocator()
        connection, transport = self.connection(locator)
        connection.dataReceived(frame(BOX, 0, echo_box("hi")))
        self.assertEqual(locator.seen, ["hi"])
        frames = frames_of(transport.value())
        self.assertEqual([(k, s) for k, s, _ in frames], [(BOX, 0)])
        self.assertEqual(boxes_of(frames), [{b"_answer": b"1", b"value": b"hi"}])

    def test_call_sends_box_frame(self) -> None:
        """
        A command this side calls goes out as box frames, and its answer
        coming back in a box frame fires the call's Deferred.
        """
        connection, transport = self.connection()
        d = connection.amp.callRemote(Echo, value="ping")
        frames = frames_of(transport.value())
        self.assertTrue(all(kind == BOX and stream == 0 for kind, stream, _ in frames))
        (box,) = boxes_of(frames)
        self.assertEqual(box[b"_command"], b"Echo")
        self.assertEqual(box[b"value"], b"ping")
        self.assertNoResult(d)
        answer = amp.Box({b"_answer": box[b"_ask"], b"value": b"pong"}).serialize()
        connection.dataReceived(frame(BOX, 0, answer))
        self.assertEqual(self.successResultOf(d), {"value": "pong"})

    def test_data_frames_routed(self) -> None:
        """
        Read data goes to the reading inbox of its stream, write data to the
        incoming inbox of its stream; the two kinds have separate stream
        ids; every data byte counts in C{bytes_received}.
        """
        connection, _ = self.connection()
        five = connection.open_reading(5)
        six = connection.open_reading(6)
        incoming = connection.open_incoming(5)
        connection.dataReceived(
            frame(READ_DATA, 6, b"six")
            + frame(WRITE_DATA, 5, b"written")
            + frame(READ_DATA, 5, b"five")
            + frame(READ_DATA, 5, b"more")
        )
        self.assertEqual(self.take(five), b"five")
        self.assertEqual(self.take(five), b"more")
        self.assertEqual(self.take(six), b"six")
        self.assertEqual(self.take(incoming), b"written")
        self.assertEqual(connection.bytes_received, 18)
        self.assertFalse(connection.transport.disconnecting)

    def test_write_end(self) -> None:
        """
        A complete end frame ends an incoming stream after its data; an
        aborted one makes the consumer raise L{Conflict} after its data;
        either way the stream is forgotten, so later data for it is dropped.
        """
        connection, _ = self.connection()
        ok = connection.open_incoming(1)
        aborted = connection.open_incoming(2)
        connection.dataReceived(
            frame(WRITE_DATA, 1, b"a")
            + frame(WRITE_DATA, 2, b"b")
            + frame(WRITE_END, 1, b"\x00")
            + frame(WRITE_END, 2, b"\x01")
            + frame(WRITE_DATA, 1, b"late")
        )
        self.assertEqual(self.rest(ok), [b"a"])
        self.assertEqual(self.take(aborted), b"b")
        error = self.failureResultOf(
            Deferred.fromCoroutine(aborted.__anext__()), Conflict
        )
        self.assertIn("aborted", str(error.value))
        # The stream id is free again.
        connection.open_incoming(1)

    def test_unknown_stream_discarded(self) -> None:
        """
        Data for a stream id nobody registered (or one already closed) is
        dropped without harm: the connection goes on serving.
        """
        locator = EchoLocator()
        connection, transport = self.connection(locator)
        known = connection.open_reading(3)
        connection.close_reading(3)
        connection.dataReceived(
            frame(READ_DATA, 3, b"late")
            + frame(READ_DATA, 99, b"x" * 100)
            + frame(WRITE_DATA, 42, b"y")
            + frame(WRITE_END, 42, b"\x00")
            + frame(BOX, 0, echo_box("still here"))
        )
        self.assertEqual(self.rest(known), [])
        self.assertEqual(locator.seen, ["still here"])
        self.assertFalse(transport.disconnecting)

    def test_read_cancel_frame(self) -> None:
        """
        A cancel frame marks its stream as cancelled for the responder, who
        sees it once.
        """
        connection, _ = self.connection()
        connection.open_outgoing(7)
        connection.open_outgoing(8)
        self.assertFalse(connection.is_cancelled(7))
        connection.dataReceived(frame(READ_CANCEL, 7))
        self.assertFalse(connection.is_cancelled(8))
        self.assertTrue(connection.is_cancelled(7))
        self.assertFalse(connection.is_cancelled(7))

    def test_read_cancel_unknown_stream(self) -> None:
        """
        Cancels of streams this side is not sending (finished, or never
        opened) are ignored: a peer cannot make the connection remember
        them without bound.
        """
        connection, _ = self.connection()
        connection.open_outgoing(7)
        connection.forget_stream(READ_DATA, 7)
        connection.dataReceived(
            b"".join(frame(READ_CANCEL, stream) for stream in range(10_000))
        )
        self.assertFalse(connection.is_cancelled(7))
        self.assertEqual(connection._cancelled, set())
        # A cancel that came before the stream ended is forgotten with it.
        connection.open_outgoing(9)
        connection.dataReceived(frame(READ_CANCEL, 9))
        connection.forget_stream(READ_DATA, 9)
        self.assertEqual(connection._cancelled, set())

    def assert_dropped(
        self,
        connection: Connection,
        transport: PeerTransport,
        locator: EchoLocator,
    ) -> None:
        """
        The connection aborted, served nothing, and ignores whatever else
        the peer sends.
        """
        self.assertTrue(transport.aborted)
        self.assertEqual(locator.seen, [])
        connection.dataReceived(frame(BOX, 0, echo_box("after")))
        connection.dataReceived(frame(BOX, 0, echo_box("after again")))
        self.assertEqual(locator.seen, [])
        self.assertEqual(transport.value(), b"")

    def test_unknown_kind_aborts(self) -> None:
        """
        A frame of an unknown kind aborts the connection; the frames after
        it, in the same read or later ones, are ignored.
        """
        locator = EchoLocator()
        connection, transport = self.connection(locator)
        connection.dataReceived(
            frame(READ_DATA_Z + 1, 0, b"") + frame(BOX, 0, echo_box("in the same read"))
        )
        self.assert_dropped(connection, transport, locator)

    def test_oversized_data_frame_aborts(self) -> None:
        """
        A data frame announcing more than L{MAX_DATA_FRAME} bytes aborts the
        connection as soon as its header is in, and its data is never
        delivered.
        """
        locator = EchoLocator()
        connection, transport = self.connection(locator)
        inbox = connection.open_reading(1)
        connection.dataReceived(_HEADER.pack(READ_DATA, 1, MAX_DATA_FRAME + 1))
        connection.dataReceived(b"x" * 100)
        self.assert_dropped(connection, transport, locator)
        self.assertEqual(inbox.received, 0)
        self.assertEqual(connection.bytes_received, 0)

    def test_oversized_box_frame_aborts(self) -> None:
        """
        A box frame announcing more than L{MAX_BOX_FRAME} bytes aborts the
        connection.
        """
        locator = EchoLocator()
        connection, transport = self.connection(locator)
        connection.dataReceived(_HEADER.pack(BOX, 0, MAX_BOX_FRAME + 1))
        self.assert_dropped(connection, transport, locator)

    def test_largest_frames_accepted(self) -> None:
        """
        A data frame of exactly L{MAX_DATA_FRAME} bytes is delivered, and a
        box frame may be larger than that (several AMP boxes in one).
        """
        locator = EchoLocator()
        connection, transport = self.connection(locator)
        inbox = connection.open_reading(1)
        connection.dataReceived(frame(READ_DATA, 1, b"d" * MAX_DATA_FRAME))
        self.assertEqual(self.take(inbox), b"d" * MAX_DATA_FRAME)
        value = "v" * 60_000
        boxes = b"".join(echo_box(value, ask) for ask in range(1, 20))
        self.assertGreater(len(boxes), MAX_DATA_FRAME)
        connection.dataReceived(frame(BOX, 0, boxes))
        self.assertEqual(locator.seen, [value] * 19)
        self.assertFalse(transport.disconnecting)

    def test_box_before_handshake_aborts(self) -> None:
        """
        Box data before the TLS handshake completed (no authenticated peer)
        aborts the connection instead of reaching AMP, and nothing after it
        is served.
        """
        locator = EchoLocator()
        connection, transport = self.connection(locator, handshake=False)
        self.assertIsNone(connection.peer)
        connection.dataReceived(
            frame(BOX, 0, echo_box("early")) + frame(BOX, 0, echo_box("early too"))
        )
        self.assert_dropped(connection, transport, locator)

    def test_handshake_with_unknown_key_aborts(self) -> None:
        """
        If a handshake completes with a key the lookup does not know (the
        TLS verify callbacks should prevent it), the connection aborts,
        has no peer, and logs an error in C{realize.auth} with
        C{accepted=False}.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        stranger, _, _ = make_key()
        connection, transport = self.connection(key=stranger)
        self.assertTrue(transport.aborted)
        self.assertIsNone(connection.peer)
        self.assertNoResult(connection.handshake)
        auth = [e for e in events if e.get("log_namespace") == "realize.auth"]
        self.assertEqual([e["accepted"] for e in auth], [False])
        self.assertEqual(auth[0]["address"], "192.0.2.1:40001")

    def test_handshake_sets_peer(self) -> None:
        """
        A completed handshake with a known key sets the peer and fires
        C{handshake} with it.
        """
        connection, transport = self.connection()
        self.assertEqual(connection.peer, "a")
        self.assertEqual(self.successResultOf(connection.handshake), "a")
        self.assertEqual(connection.address, "192.0.2.1:40001")
        self.assertFalse(transport.disconnecting)

    def test_send_data_splits(self) -> None:
        """
        A chunk larger than L{MAX_DATA_FRAME} goes out as several frames of
        at most that size, in order; C{bytes_sent} counts the data bytes.
        """
        connection, transport = self.connection()
        data = bytes(range(256)) * (10 * MiB // 256 // 4)
        connection.send_data(WRITE_DATA, 9, data)
        frames = frames_of(transport.value())
        self.assertEqual([(k, s) for k, s, _ in frames], [(WRITE_DATA, 9)] * 3)
        self.assertTrue(all(len(p) <= MAX_DATA_FRAME for _, _, p in frames))
        self.assertEqual(b"".join(p for _, _, p in frames), data)
        self.assertEqual(connection.bytes_sent, len(data))

    def test_end_write_and_cancel_frames(self) -> None:
        """
        Ending a write stream sends a one-byte end frame (0 complete, 1
        aborted); cancelling a read sends a cancel frame and ends the
        reading inbox with L{Conflict}.
        """
        connection, transport = self.connection()
        inbox = connection.open_reading(4)
        connection.end_write(2, True)
        connection.end_write(3, False)
        connection.cancel_reading(4)
        connection.cancel_reading(5)
        self.assertEqual(
            frames_of(transport.value()),
            [(WRITE_END, 2, b"\x00"), (WRITE_END, 3, b"\x01"), (READ_CANCEL, 4, b"")],
        )
        self.failureResultOf(Deferred.fromCoroutine(inbox.__anext__()), Conflict)

    def test_new_stream_ids(self) -> None:
        """
        Stream ids of calls are distinct and never 0 (the box stream).
        """
        connection, _ = self.connection()
        ids = [connection.new_stream() for _ in range(100)]
        self.assertEqual(len(set(ids)), 100)
        self.assertNotIn(0, ids)

    def test_open_incoming_twice(self) -> None:
        """
        A write stream id already in use is refused with L{BadRequest}.
        """
        connection, _ = self.connection()
        connection.open_incoming(3)
        self.assertRaises(BadRequest, connection.open_incoming, 3)


#: Frames of every kind, to be cut anywhere.
MIXED = (
    frame(BOX, 0, echo_box("one"))
    + frame(READ_DATA, 1, b"r" * 40)
    + frame(WRITE_DATA, 2, b"")
    + frame(WRITE_DATA, 2, b"w" * 25)
    + frame(READ_CANCEL, 3)
    + frame(BOX, 0, echo_box("two", 2) + echo_box("three", 3))
    + frame(READ_DATA, 1, b"s" * 7)
    + frame(WRITE_END, 2, b"\x00")
)


class SplitTests(ConnectionTestCase):
    """
    Frames parse the same however the bytes are cut into reads.
    """

    def outcome(self, reads: Iterable[bytes]) -> tuple[Any, ...]:
        """
        Feed L{MIXED} in the given reads to a new connection.

        @return: everything observable of what it received.
        """
        locator = EchoLocator()
        connection, transport = self.connection(locator)
        reading = connection.open_reading(1)
        incoming = connection.open_incoming(2)
        connection.open_outgoing(3)
        for data in reads:
            connection.dataReceived(data)
        connection.close_reading(1)
        return (
            locator.seen,
            boxes_of(frames_of(transport.value())),
            self.rest(reading),
            self.rest(incoming),
            connection.is_cancelled(3),
            connection.bytes_received,
            transport.disconnecting,
        )

    def expected(self) -> tuple[Any, ...]:
        return (
            ["one", "two", "three"],
            [
                {b"_answer": b"%d" % ask, b"value": value}
                for ask, value in [(1, b"one"), (2, b"two"), (3, b"three")]
            ],
            [b"r" * 40, b"s" * 7],
            [b"", b"w" * 25],
            True,
            72,
            False,
        )

    def test_one_read(self) -> None:
        """
        All the frames in one read.
        """
        self.assertEqual(self.outcome([MIXED]), self.expected())

    def test_byte_at_a_time(self) -> None:
        """
        One byte per read.
        """
        reads = [MIXED[i : i + 1] for i in range(len(MIXED))]
        self.assertEqual(self.outcome(reads), self.expected())

    def test_every_single_cut(self) -> None:
        """
        Two reads, cut at every byte boundary.
        """
        for cut in range(1, len(MIXED)):
            self.assertEqual(
                self.outcome([MIXED[:cut], MIXED[cut:]]), self.expected(), cut
            )

    @settings(max_examples=100, deadline=None, database=None)
    @given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=12))
    def test_random_cuts(self, cuts: list[int]) -> None:
        """
        Reads cut at any set of places, including empty reads.
        """
        points = [0, *sorted(cuts), len(MIXED)]
        reads = [MIXED[a:b] for a, b in itertools.pairwise(points)]
        self.assertEqual(self.outcome(reads), self.expected())


class InboxTests(ConnectionTestCase):
    """
    Inboxes, back-pressure on the transport and writable waiters.
    """

    def fill(self, connection: Connection, stream: int, chunks: int) -> None:
        for _ in range(chunks):
            connection.dataReceived(frame(READ_DATA, stream, b"x" * MiB))

    def test_high_and_low_water(self) -> None:
        """
        The transport is paused once an inbox holds more than
        L{Inbox.HIGH} bytes, and resumed once its consumer brings it below
        L{Inbox.LOW}.
        """
        self.assertEqual((Inbox.HIGH, Inbox.LOW), (4 * MiB, 2 * MiB))
        connection, transport = self.connection()
        inbox = connection.open_reading(1)
        self.fill(connection, 1, 4)
        self.assertEqual(transport.producerState, "producing")
        connection.dataReceived(frame(READ_DATA, 1, b"y"))
        self.assertEqual(transport.producerState, "paused")
        self.fill(connection, 1, 1)
        states = []
        for _ in range(4):
            self.take(inbox)
            states.append(transport.producerState)
        # 5 MiB + 1, 4 MiB + 1, 3 MiB + 1, 2 MiB + 1, then 1 MiB + 1.
        self.assertEqual(states, ["paused", "paused", "paused", "producing"])

    def test_two_full_inboxes(self) -> None:
        """
        While any inbox is over its high water mark the transport stays
        paused; it resumes when the last one drains.
        """
        connection, transport = self.connection()
        one = connection.open_reading(1)
        two = connection.open_reading(2)
        self.fill(connection, 1, 5)
        self.fill(connection, 2, 5)
        self.assertEqual(transport.producerState, "paused")
        for _ in range(4):
            self.take(one)
        self.assertEqual(transport.producerState, "paused")
        for _ in range(4):
            self.take(two)
        self.assertEqual(transport.producerState, "producing")

    def test_discard_releases(self) -> None:
        """
        Discarding a full inbox (a cancelled read) resumes the transport and
        drops what it held and what comes after.
        """
        connection, transport = self.connection()
        inbox = connection.open_reading(1)
        self.fill(connection, 1, 5)
        inbox.discard()
        self.assertEqual(transport.producerState, "producing")
        self.fill(connection, 1, 5)
        self.assertEqual(transport.producerState, "producing")
        self.failureResultOf(Deferred.fromCoroutine(inbox.__anext__()), Conflict)

    def test_closed_inbox_drains(self) -> None:
        """
        A full inbox whose stream ended still hands out its chunks, and
        resumes the transport as they are consumed.
        """
        connection, transport = self.connection()
        inbox = connection.open_reading(1)
        self.fill(connection, 1, 5)
        connection.close_reading(1)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(self.rest(inbox)), 5)
        self.assertEqual(transport.producerState, "producing")

    def test_consumer_waits(self) -> None:
        """
        A consumer waiting on an empty inbox gets the next chunk when it
        arrives, and the end of the stream when it ends.
        """
        connection, _ = self.connection()
        inbox = connection.open_reading(1)
        d = Deferred.fromCoroutine(inbox.__anext__())
        self.assertNoResult(d)
        connection.dataReceived(frame(READ_DATA, 1, b"chunk"))
        self.assertEqual(self.successResultOf(d), b"chunk")
        d = Deferred.fromCoroutine(inbox.__anext__())
        connection.close_reading(1)
        self.failureResultOf(d, StopAsyncIteration)

    def test_writable(self) -> None:
        """
        L{Connection.writable} is C{None} while the transport takes data;
        once the transport pauses the connection it is a Deferred for each
        writer, all fired by L{Connection.resumeProducing}.
        """
        connection, transport = self.connection()
        self.assertIs(transport.producer, connection)
        self.assertIsNone(connection.writable())
        connection.pauseProducing()
        first, second = connection.writable(), connection.writable()
        assert first is not None and second is not None
        self.assertNoResult(first)
        self.assertNoResult(second)
        connection.resumeProducing()
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        self.assertIsNone(connection.writable())

    def test_connection_lost(self) -> None:
        """
        When the connection is lost, each open inbox hands out what it held
        and then raises L{NetworkError} naming the peer and the reason;
        pending writable waiters fail with L{NetworkError} instead of
        letting writers send into the void; later waits fail at once;
        C{lost} fires.
        """
        connection, transport = self.connection()
        reading = connection.open_reading(1)
        incoming = connection.open_incoming(1)
        connection.dataReceived(frame(READ_DATA, 1, b"held"))
        connection.pauseProducing()
        waiter = connection.writable()
        assert waiter is not None
        connection.connectionLost(Failure(ConnectionLost("reset by peer")))
        self.assertEqual(self.take(reading), b"held")
        for inbox in (reading, incoming):
            error = self.failureResultOf(
                Deferred.fromCoroutine(inbox.__anext__()), NetworkError
            ).value
            self.assertIn("connection to a lost", str(error))
            self.assertIn("reset by peer", str(error))
        self.failureResultOf(waiter, NetworkError)
        later = connection.writable()
        assert later is not None
        self.failureResultOf(later, NetworkError)
        self.assertIsNone(self.successResultOf(connection.lost))
        after = connection.open_reading(2)
        self.failureResultOf(Deferred.fromCoroutine(after.__anext__()), NetworkError)
        connection.send_data(READ_DATA, 1, b"into the void")
        connection.send_frame(BOX, 0, b"nor this")
        self.assertEqual(transport.value(), b"")

    def test_lost_before_handshake(self) -> None:
        """
        A connection lost before its handshake completed fails its
        C{handshake} Deferred with the reason.
        """
        connection, _ = self.connection(handshake=False)
        connection.connectionLost(Failure(ConnectionLost("gone")))
        self.failureResultOf(connection.handshake, ConnectionLost)
        self.assertIsNone(self.successResultOf(connection.lost))

    def test_close(self) -> None:
        """
        L{Connection.close} unregisters the connection as the transport's
        producer (TLS would not shut down otherwise) and closes the
        transport.
        """
        connection, transport = self.connection()
        connection.close()
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)


paths = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300)
entries = st.builds(
    FileInfo,
    paths,
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
)


class EntriesTests(SynchronousTestCase):
    """
    L{encode_entries} and L{decode_entries}, the listing on the wire.
    """

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.lists(entries, max_size=40), st.integers(min_value=1, max_value=2000))
    @example(
        [
            FileInfo("dir/été:2024.txt", 3, -1, False),
            FileInfo("a:b/c::d", 2**64 - 1, 2**63 - 1, True),
            FileInfo("日本/\U0001f600", 0, 0, False),
        ],
        20,
    )
    def test_round_trip(self, infos: list[FileInfo], limit: int) -> None:
        """
        Entries come back equal and in order; each chunk holds whole entries
        and stays within the limit unless it is one entry larger than it.
        """
        chunks = list(encode_entries(infos, limit))
        decoded = [decode_entries(chunk) for chunk in chunks]
        self.assertEqual([e for part in decoded for e in part], infos)
        for chunk, part in zip(chunks, decoded, strict=True):
            self.assertTrue(part)
            self.assertTrue(len(chunk) <= limit or len(part) == 1)

    def test_default_limit(self) -> None:
        """
        By default chunks fit in one data frame.
        """
        infos = [FileInfo("p" * 200 + str(i), i, i, False) for i in range(12_000)]
        chunks = list(encode_entries(infos))
        self.assertGreater(len(chunks), 1)
        self.assertTrue(all(len(c) <= MAX_DATA_FRAME for c in chunks))

    def test_truncated_header(self) -> None:
        """
        A chunk that ends inside an entry's header is malformed.
        """
        (chunk,) = encode_entries([FileInfo("name", 1, 2, False)])
        self.assertRaises(BadRequest, decode_entries, chunk[:5])
        self.assertRaises(BadRequest, decode_entries, chunk + chunk[:18])

    def test_truncated_path(self) -> None:
        """
        A chunk that ends inside an entry's path is malformed.
        """
        (chunk,) = encode_entries([FileInfo("name", 1, 2, False)])
        error = self.assertRaises(BadRequest, decode_entries, chunk[:-1])
        self.assertIn("truncated", str(error))

    def test_bad_utf8(self) -> None:
        """
        A path that is not UTF-8 is malformed.
        """
        chunk = struct.pack("!HQqB", 2, 1, 2, 0) + b"\xff\xfe"
        self.assertRaises(BadRequest, decode_entries, chunk)

    def test_empty(self) -> None:
        """
        No entries, no chunks; an empty chunk decodes to no entries.
        """
        self.assertEqual(list(encode_entries([])), [])
        self.assertEqual(decode_entries(b""), [])


class FlagsTests(SynchronousTestCase):
    """
    L{encode_flags} and L{decode_flags}, one bit per file of a batch.
    """

    @settings(max_examples=100, deadline=None, database=None)
    @given(st.lists(st.booleans(), max_size=100))
    def test_round_trip(self, flags: list[bool]) -> None:
        """
        Flags come back equal, in one bit each.
        """
        packed = encode_flags(flags)
        self.assertEqual(len(packed), -(-len(flags) // 8))
        self.assertEqual(decode_flags(packed, len(flags)), flags)

    def test_bit_order(self) -> None:
        """
        Item C{i} is bit C{i % 8} of byte C{i // 8}.
        """
        self.assertEqual(
            encode_flags([True, False, False, True] + [False] * 5 + [True]), b"\x09\x02"
        )

    def test_wrong_length(self) -> None:
        """
        Flags too short or too long for the batch are a bad request.
        """
        self.assertRaises(BadRequest, decode_flags, b"\x01", 9)
        self.assertRaises(BadRequest, decode_flags, b"\x01\x00", 8)


class Blob(amp.Command):
    """
    A test command with a L{BigBytes} argument.
    """

    arguments = [(b"blob", BigBytes()), (b"after", amp.Integer())]
    response: list[tuple[bytes, amp.Argument]] = []


class BigBytesTests(SynchronousTestCase):
    """
    L{BigBytes} values of any length through AMP box serialization.
    """

    def round_trip(self, value: bytes) -> tuple[dict[str, Any], dict[bytes, bytes]]:
        """
        Serialize a L{Blob} command as AMP sends it and parse it back.

        @return: the parsed arguments and the box as it went on the wire.
        """
        proto = amp.AMP()
        box = Blob.makeArguments({"blob": value, "after": 7}, proto)
        box[b"_command"] = b"Blob"
        wire = box.serialize()
        (parsed,) = amp.parseString(wire)
        return Blob.parseArguments(parsed, proto), dict(parsed)

    def test_sizes(self) -> None:
        """
        Values of 0, 65,535, 65,536 and 200,000 bytes come back equal, in
        as many AMP values of at most 65,535 bytes as they need.
        """
        for size, keys in [(0, 1), (65_535, 1), (65_536, 2), (200_000, 4)]:
            value = bytes(i * 7 % 251 for i in range(size))
            arguments, box = self.round_trip(value)
            self.assertEqual(arguments, {"blob": value, "after": 7}, size)
            blob_keys = [k for k in box if k.startswith(b"blob")]
            self.assertEqual(len(blob_keys), keys, size)
            self.assertTrue(all(len(box[k]) <= 65_535 for k in blob_keys))

    def test_missing(self) -> None:
        """
        A box without the key parses as an empty value.
        """
        self.assertEqual(
            Blob.parseArguments(amp.Box({b"after": b"1"}), amp.AMP()),
            {"blob": b"", "after": 1},
        )
