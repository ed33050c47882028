"""
Tests for L{realize.net.throttle}.

Everything runs on a L{Clock} and L{StringTransport}s: simulated seconds,
no reactor, no sockets.  Each test ends by losing the connection and checking
that no delayed call is left behind.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from attrs import define, field
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from realize.net.throttle import (
    MAX_HIGH_WATER,
    MIN_BURST,
    ThrottlingFactory,
    ThrottlingProtocol,
    TokenBucket,
    check_rate,
    default_capacity,
    find_throttle,
)

KiB = 1024
MiB = 1024 * KiB
ADDRESS = IPv4Address("TCP", "127.0.0.1", 9771)


class Recorder(Protocol):
    """
    An application protocol that records what happens to it.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


@implementer(IPushProducer)
@define
class RecordingProducer:
    """
    A push producer that records the calls made to it.
    """

    events: list[str] = field(factory=list)

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@define
class Connection:
    """
    A throttled connection over a L{StringTransport}.
    """

    clock: Clock
    factory: ThrottlingFactory
    protocol: ThrottlingProtocol
    transport: StringTransport
    app: Recorder

    @property
    def sent(self) -> int:
        """
        Bytes that reached the transport.
        """
        return self.transport.io.tell()


def connect(rate: int, clock: Clock | None = None) -> Connection:
    """
    Connect a L{Recorder} through a L{ThrottlingFactory} limited to C{rate}.
    """
    clock = Clock() if clock is None else clock
    factory = ThrottlingFactory(Factory.forProtocol(Recorder), clock, rate)
    protocol = factory.buildProtocol(ADDRESS)
    transport = StringTransport()
    protocol.makeConnection(transport)
    app = protocol.wrappedProtocol
    assert isinstance(app, Recorder)
    return Connection(clock, factory, protocol, transport, app)


def run(clock: Clock, seconds: float) -> None:
    """
    Let C{seconds} pass on C{clock} like a punctual reactor: each delayed
    call runs at exactly its time.

    A single C{clock.advance(seconds)} would instead run every call due at
    the end time, like a reactor that was blocked all along, and the bucket
    rightly forgets tokens beyond its capacity (50 ms of the rate).
    """
    end = clock.seconds() + seconds
    while True:
        due = min((call.getTime() for call in clock.getDelayedCalls()), default=end)
        if due >= end:
            clock.rightNow = max(clock.rightNow, end)
            clock.advance(0)
            return
        clock.rightNow = max(clock.rightNow, due)
        clock.advance(0)


class ThrottleTestCase(SynchronousTestCase):
    """
    Helpers shared by the throttle tests.
    """

    def close(self, conn: Connection) -> None:
        """
        Lose the connection as the transport would, then check that the
        application heard of it and that no delayed call is left.
        """
        conn.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(conn.app.lost), 1)
        self.assertEqual(conn.clock.getDelayedCalls(), [])

    def advance_until(
        self, conn: Connection, done: Callable[[], bool], limit: float
    ) -> float:
        """
        Let time pass, 10 ms at a time, until C{done()} is true.

        @return: the simulated seconds it took.
        """
        start = conn.clock.seconds()
        while not done():
            if conn.clock.seconds() - start > limit:
                self.fail(f"not done after {limit} simulated seconds")
            run(conn.clock, 0.01)
        return conn.clock.seconds() - start


class TokenBucketTests(SynchronousTestCase):
    """
    Tests for L{TokenBucket}.
    """

    def test_starts_full(self) -> None:
        """
        A new bucket holds its capacity: that much may be sent at once, and
        no more.
        """
        clock = Clock()
        bucket = TokenBucket(clock, 1000, 5000)
        self.assertEqual(bucket.take(8000), 5000)
        self.assertEqual(bucket.take(1), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_refills_continuously(self) -> None:
        """
        Tokens accrue in proportion to the time elapsed, at any fraction of
        a second (no one-second windows).
        """
        clock = Clock()
        bucket = TokenBucket(clock, 1000, 5000)
        bucket.take(5000)
        clock.advance(0.25)
        self.assertEqual(bucket.take(10_000), 250)
        clock.advance(0.001)
        self.assertEqual(bucket.take(10_000), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_capacity_caps_refill(self) -> None:
        """
        However long the bucket is idle, it holds at most its capacity.
        """
        clock = Clock()
        bucket = TokenBucket(clock, 1000, 5000)
        bucket.take(5000)
        clock.advance(3600)
        self.assertEqual(bucket.tokens, 5000.0)
        self.assertEqual(bucket.take(10_000), 5000)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_delay_for(self) -> None:
        """
        C{delay_for} is the time until that many tokens are there, C{0.0} if
        they are, and the time to fill the bucket for more than it holds.
        """
        clock = Clock()
        bucket = TokenBucket(clock, 1000, 5000)
        self.assertEqual(bucket.delay_for(5000), 0.0)
        bucket.take(5000)
        self.assertAlmostEqual(bucket.delay_for(500), 0.5)
        self.assertAlmostEqual(bucket.delay_for(50_000), 5.0)
        clock.advance(0.5)
        self.assertEqual(bucket.delay_for(500), 0.0)
        self.assertEqual(bucket.take(500), 500)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_unlimited(self) -> None:
        """
        At rate 0 everything may be sent at once and nothing waits.
        """
        clock = Clock()
        bucket = TokenBucket(clock, 0)
        self.assertEqual(bucket.take(10 * MiB), 10 * MiB)
        self.assertEqual(bucket.delay_for(10 * MiB), 0.0)
        self.assertEqual(bucket.tokens, float("inf"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_default_capacity(self) -> None:
        """
        The default capacity is 50 ms of the rate, but at least 16 KiB.
        """
        self.assertEqual(default_capacity(0), MIN_BURST)
        self.assertEqual(default_capacity(64 * KiB), 16 * KiB)
        self.assertEqual(default_capacity(1 * MiB), 52428)
        self.assertEqual(default_capacity(100 * MiB), 5 * MiB)
        clock = Clock()
        self.assertEqual(TokenBucket(clock, 1 * MiB).capacity, 52428)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_set_rate(self) -> None:
        """
        A new rate applies from the moment it is set; tokens accrued before
        are kept up to the new capacity, and leaving unlimited fills the
        bucket.
        """
        clock = Clock()
        bucket = TokenBucket(clock, 1000, 5000)
        bucket.take(5000)
        clock.advance(1)
        bucket.set_rate(10_000)
        clock.advance(0.1)
        self.assertEqual(bucket.take(100_000), 1000 + 1000)
        bucket.set_rate(0)
        bucket.set_rate(10)
        self.assertEqual(bucket.take(100_000), 5000)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_clock_going_back(self) -> None:
        """
        A clock that steps backwards mints no tokens (and takes none).
        """
        clock = Clock()
        clock.advance(100)
        bucket = TokenBucket(clock, 1000, 5000)
        bucket.take(5000)
        clock.rightNow = 50.0
        self.assertEqual(bucket.take(10), 0)
        clock.advance(0.01)
        self.assertEqual(bucket.take(100), 10)
        self.assertEqual(clock.getDelayedCalls(), [])


class InvalidRateTests(ThrottleTestCase):
    """
    Negative and non-integer rates are refused everywhere a rate is given.
    """

    bad = [-1, 1.5, 1024.0, "100", None, True]

    def test_check_rate(self) -> None:
        """
        L{check_rate} raises L{ValueError} naming the bad value, and returns
        good ones.
        """
        for value in self.bad:
            with self.assertRaises(ValueError) as caught:
                check_rate(value)
            self.assertIn(repr(value), str(caught.exception))
        self.assertEqual(check_rate(0), 0)
        self.assertEqual(check_rate(5), 5)
        self.assertEqual(Clock().getDelayedCalls(), [])

    def test_constructors(self) -> None:
        """
        L{TokenBucket} and L{ThrottlingFactory} refuse bad rates (and a bad
        bucket capacity) when built.
        """
        clock = Clock()
        wrapped = Factory.forProtocol(Recorder)
        with self.assertRaises(ValueError) as caught:
            TokenBucket(clock, -5)
        self.assertIn("-5", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            TokenBucket(clock, 100, 0)
        self.assertIn("0", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            ThrottlingFactory(wrapped, clock, 2.5)
        self.assertIn("2.5", str(caught.exception))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_set_rate(self) -> None:
        """
        C{set_rate} on a bucket, a live protocol or a factory refuses bad
        rates and leaves the rate as it was.
        """
        conn = connect(1000)
        with self.assertRaises(ValueError) as caught:
            conn.protocol.set_rate(-3)
        self.assertIn("-3", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            conn.factory.set_rate(0.5)  # type: ignore[arg-type]
        self.assertIn("0.5", str(caught.exception))
        bucket = TokenBucket(conn.clock, 1)
        with self.assertRaises(ValueError):
            bucket.set_rate(-1)
        self.assertEqual(conn.protocol.rate, 1000)
        self.assertEqual(conn.factory.rate_up, 1000)
        self.assertEqual(bucket.rate, 1)
        self.close(conn)


class UnlimitedTests(ThrottleTestCase):
    """
    At rate 0 the throttle passes everything straight through.
    """

    def test_pass_through(self) -> None:
        """
        Writes and write sequences reach the transport at once, in order,
        and are counted; nothing is scheduled.
        """
        conn = connect(0)
        conn.protocol.write(b"x" * (10 * MiB))
        conn.protocol.writeSequence([b"a", b"b", b"c"])
        self.assertEqual(conn.transport.value(), b"x" * (10 * MiB) + b"abc")
        self.assertEqual(conn.protocol.bytes_sent, 10 * MiB + 3)
        self.assertEqual(conn.protocol.queued, 0)
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        self.close(conn)

    def test_reads_pass_through(self) -> None:
        """
        Received bytes reach the application untouched, and pausing the
        throttle as a producer pauses I{reading} on the real transport.
        """
        conn = connect(1000)
        conn.protocol.dataReceived(b"hello")
        self.assertEqual(conn.app.received, [b"hello"])
        conn.protocol.pauseProducing()
        self.assertEqual(conn.transport.producerState, "paused")
        conn.protocol.resumeProducing()
        self.assertEqual(conn.transport.producerState, "producing")
        self.close(conn)

    def test_transport_back_pressure(self) -> None:
        """
        Unlimited, a pause from the real transport is passed on to the
        registered producer at once, and so is the resume.
        """
        conn = connect(0)
        producer = RecordingProducer()
        conn.protocol.registerProducer(producer, True)
        conn.transport.producer.pauseProducing()
        self.assertEqual(producer.events, ["pause"])
        conn.transport.producer.resumeProducing()
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertEqual(conn.protocol.producer_pauses, 0)
        conn.protocol.unregisterProducer()
        self.close(conn)

    def test_lose_connection(self) -> None:
        """
        Unlimited, loseConnection closes the transport at once, after
        unregistering the throttle from it so that it may close.
        """
        conn = connect(0)
        self.assertIsNotNone(conn.transport.producer)
        conn.protocol.write(b"bye")
        conn.protocol.loseConnection()
        self.assertTrue(conn.transport.disconnecting)
        self.assertIsNone(conn.transport.producer)
        self.assertEqual(conn.transport.value(), b"bye")
        self.close(conn)


class RateTests(ThrottleTestCase):
    """
    Limited, the bytes on the transport follow the rate.
    """

    def test_tracks_rate(self) -> None:
        """
        At 1 MiB/s a large write reaches the transport at the rate: at every
        moment of 10 simulated seconds the bytes sent are within one pump
        quantum below C{rate * elapsed} and the bucket's burst above it, and
        the achieved rate is 97-101% of the limit.
        """
        rate = 1 * MiB
        conn = connect(rate)
        capacity = default_capacity(rate)
        quantum = rate // 50
        data = bytes(range(256)) * (12 * MiB // 256)
        conn.protocol.write(data)
        self.assertEqual(conn.sent, capacity)
        for step in range(1, 101):
            run(conn.clock, 0.1)
            ideal = rate * step / 10
            self.assertLessEqual(conn.sent, ideal + capacity)
            self.assertGreaterEqual(conn.sent, ideal - quantum)
        achieved = conn.sent / 10
        self.assertGreaterEqual(achieved, 0.97 * rate)
        self.assertLessEqual(achieved, 1.01 * rate)
        self.assertEqual(conn.protocol.bytes_sent, conn.sent)
        self.assertEqual(conn.transport.value(), data[: conn.sent])
        self.assertLessEqual(abs(conn.protocol.throttled_seconds - 10), 0.05)
        self.assertEqual(len(conn.clock.getDelayedCalls()), 1)
        self.close(conn)

    def test_small_writes_go_at_once(self) -> None:
        """
        While the bucket has tokens, a small write is sent at once, not
        held for a timer.
        """
        conn = connect(64 * KiB)
        conn.protocol.write(b"ping")
        self.assertEqual(conn.transport.value(), b"ping")
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        self.close(conn)

    def test_write_sequence_in_order(self) -> None:
        """
        Limited, pieces of write sequences and writes are queued and sent in
        order, split where the bucket requires.
        """
        conn = connect(1000)
        first = b"a" * 20_000
        conn.protocol.writeSequence([first, b"", b"b" * 3000])
        conn.protocol.write(b"c" * 500)
        self.assertEqual(conn.sent, MIN_BURST)
        self.assertEqual(conn.protocol.queued, 20_000 + 3000 + 500 - MIN_BURST)
        self.advance_until(conn, lambda: conn.protocol.queued == 0, limit=10)
        self.assertEqual(conn.transport.value(), first + b"b" * 3000 + b"c" * 500)
        self.close(conn)

    def test_write_str_refused(self) -> None:
        """
        Limited, writing something that is not bytes raises L{TypeError} at
        once (as a TCP transport does) instead of failing in the pump later,
        and a bad write sequence is refused as a whole.
        """
        conn = connect(1000)
        self.assertRaises(TypeError, conn.protocol.write, "text")
        self.assertRaises(
            TypeError, conn.protocol.writeSequence, [b"x" * MIN_BURST, b"y", "z"]
        )
        self.assertEqual(conn.protocol.queued, 0)
        self.assertEqual(conn.sent, 0)
        self.close(conn)


class ProducerTests(ThrottleTestCase):
    """
    The producer registered by the wrapped protocol is paused while the
    queue is high.
    """

    def test_paused_and_resumed(self) -> None:
        """
        Above the high-water mark (64 KiB at 64 KiB/s) the producer is
        paused, once, and resumed when the queue drains to the low-water
        mark (32 KiB), not before.
        """
        conn = connect(64 * KiB)
        self.assertEqual(conn.protocol.high_water, MAX_HIGH_WATER)
        self.assertEqual(conn.protocol.low_water, 32 * KiB)
        producer = RecordingProducer()
        conn.app.transport.registerProducer(producer, True)
        conn.protocol.write(b"x" * (100 * KiB))
        self.assertEqual(producer.events, ["pause"])
        self.assertEqual(conn.protocol.producer_pauses, 1)
        run(conn.clock, 0.7)
        self.assertGreater(conn.protocol.queued, 32 * KiB)
        self.assertEqual(producer.events, ["pause"])
        took = self.advance_until(
            conn, lambda: producer.events == ["pause", "resume"], limit=1
        )
        self.assertLessEqual(abs(0.7 + took - (100 - 16 - 32) / 64), 0.05)
        self.assertLessEqual(conn.protocol.queued, 32 * KiB)
        self.assertEqual(conn.protocol.producer_pauses, 1)
        conn.app.transport.unregisterProducer()
        self.close(conn)

    def test_high_water_small_rate(self) -> None:
        """
        At rates below 64 KiB/s the high-water mark is one second of the
        rate.
        """
        conn = connect(1000)
        self.assertEqual(conn.protocol.high_water, 1000)
        self.assertEqual(conn.protocol.low_water, 500)
        self.close(conn)

    def test_pause_reasserted(self) -> None:
        """
        A write arriving while the queue is high pauses the producer again,
        in case someone else (TLS unbuffering) resumed it.
        """
        conn = connect(64 * KiB)
        producer = RecordingProducer()
        conn.protocol.registerProducer(producer, True)
        conn.protocol.write(b"x" * (100 * KiB))
        conn.protocol.write(b"y")
        self.assertEqual(producer.events, ["pause", "pause"])
        self.assertEqual(conn.protocol.producer_pauses, 1)
        self.close(conn)

    def test_registered_while_high(self) -> None:
        """
        A producer registered while the queue is high is paused at once.
        """
        conn = connect(64 * KiB)
        conn.protocol.write(b"x" * (100 * KiB))
        producer = RecordingProducer()
        conn.protocol.registerProducer(producer, True)
        self.assertEqual(producer.events, ["pause"])
        self.assertEqual(conn.protocol.producer_pauses, 1)
        self.close(conn)

    def test_unregistered(self) -> None:
        """
        After C{unregisterProducer} the old producer hears nothing more.
        """
        conn = connect(64 * KiB)
        producer = RecordingProducer()
        conn.protocol.registerProducer(producer, True)
        conn.protocol.unregisterProducer()
        conn.protocol.write(b"x" * (100 * KiB))
        self.advance_until(conn, lambda: conn.protocol.queued == 0, limit=2)
        self.assertEqual(producer.events, [])
        self.close(conn)

    def test_register_twice(self) -> None:
        """
        Registering a second producer raises L{RuntimeError}, like a TCP
        transport.
        """
        conn = connect(64 * KiB)
        conn.protocol.registerProducer(RecordingProducer(), True)
        self.assertRaises(
            RuntimeError, conn.protocol.registerProducer, RecordingProducer(), True
        )
        self.close(conn)

    def test_pull_producer_refused(self) -> None:
        """
        Pull producers are refused with L{ValueError}.
        """
        conn = connect(64 * KiB)
        self.assertRaises(
            ValueError, conn.protocol.registerProducer, RecordingProducer(), False
        )
        self.close(conn)

    def test_register_after_lost(self) -> None:
        """
        A producer registered after the connection is lost is stopped.
        """
        conn = connect(64 * KiB)
        self.close(conn)
        producer = RecordingProducer()
        conn.protocol.registerProducer(producer, True)
        self.assertEqual(producer.events, ["stop"])
        self.assertEqual(conn.clock.getDelayedCalls(), [])


class TransportBackPressureTests(ThrottleTestCase):
    """
    The throttle honours the real transport's pause and resume.
    """

    def test_pause_stops_pump(self) -> None:
        """
        The throttle registers as a streaming producer with the transport;
        while the transport pauses it, nothing is sent, no timer runs and
        the registered producer is paused too (not counted as a throttle
        pause).  On resume the pump restarts and the producer resumes.
        """
        conn = connect(64 * KiB)
        self.assertTrue(conn.transport.streaming)
        producer = RecordingProducer()
        conn.protocol.registerProducer(producer, True)
        conn.protocol.write(b"x" * (40 * KiB))
        self.assertEqual(conn.sent, 16 * KiB)
        conn.transport.producer.pauseProducing()
        self.assertEqual(producer.events, ["pause"])
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        conn.clock.advance(5)
        self.assertEqual(conn.sent, 16 * KiB)
        conn.transport.producer.resumeProducing()
        # 5 s of idling filled the bucket: its capacity goes at once.
        self.assertEqual(conn.sent, 32 * KiB)
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertEqual(conn.protocol.producer_pauses, 0)
        self.advance_until(conn, lambda: conn.protocol.queued == 0, limit=1)
        self.assertEqual(conn.sent, 40 * KiB)
        self.close(conn)

    def test_pause_not_counted_as_waiting(self) -> None:
        """
        Time the transport holds sending back is not time waiting for
        tokens.
        """
        conn = connect(1000)
        conn.protocol.write(b"x" * (MIN_BURST + 1000))
        run(conn.clock, 0.5)
        conn.transport.producer.pauseProducing()
        run(conn.clock, 10)
        self.assertAlmostEqual(conn.protocol.throttled_seconds, 0.5)
        self.close(conn)


class RateChangeTests(ThrottleTestCase):
    """
    C{set_rate} applies to a live connection at once.
    """

    def test_lower(self) -> None:
        """
        Lowering the rate mid-stream: the next second carries the new rate.
        """
        conn = connect(1 * MiB)
        conn.protocol.write(b"x" * (4 * MiB))
        run(conn.clock, 1)
        conn.protocol.set_rate(256 * KiB)
        self.assertEqual(conn.protocol.rate, 256 * KiB)
        before = conn.sent
        run(conn.clock, 1)
        moved = conn.sent - before
        self.assertLessEqual(moved, 256 * KiB + MIN_BURST)
        self.assertGreaterEqual(moved, 256 * KiB - 256 * KiB // 50)
        self.close(conn)

    def test_higher(self) -> None:
        """
        Raising the rate mid-stream replaces the slow pump's pending wake-up:
        within 50 ms the new rate shows, where the old one (4 KiB/s, waking
        every 250 ms) would have sent nothing.
        """
        conn = connect(4 * KiB)
        conn.protocol.write(b"x" * (4 * MiB))
        run(conn.clock, 1.01)
        before = conn.sent
        conn.protocol.set_rate(1 * MiB)
        run(conn.clock, 0.05)
        self.assertGreaterEqual(conn.sent - before, 1 * MiB * 0.05 - 1 * MiB // 50)
        before = conn.sent
        run(conn.clock, 1)
        self.assertLessEqual(abs(conn.sent - before - MiB), MiB // 50)
        self.close(conn)

    def test_to_unlimited(self) -> None:
        """
        Switching to unlimited sends everything queued at once, cancels the
        pump, resumes the paused producer, and later writes pass straight
        through.
        """
        conn = connect(64 * KiB)
        producer = RecordingProducer()
        conn.protocol.registerProducer(producer, True)
        conn.protocol.write(b"x" * MiB)
        run(conn.clock, 1)
        conn.protocol.set_rate(0)
        self.assertEqual(conn.sent, MiB)
        self.assertEqual(conn.protocol.queued, 0)
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        self.assertEqual(producer.events, ["pause", "resume"])
        conn.protocol.write(b"y" * MiB)
        self.assertEqual(conn.sent, 2 * MiB)
        conn.protocol.unregisterProducer()
        self.close(conn)

    def test_from_unlimited(self) -> None:
        """
        Limiting an unlimited connection starts with a full bucket and
        queues what goes beyond it.
        """
        conn = connect(0)
        conn.protocol.set_rate(1000)
        conn.protocol.write(b"x" * (MIN_BURST + 1000))
        self.assertEqual(conn.sent, MIN_BURST)
        self.assertEqual(conn.protocol.queued, 1000)
        self.close(conn)

    def test_factory_set_rate(self) -> None:
        """
        The factory's C{set_rate} changes live connections and the rate of
        new ones.
        """
        conn = connect(1000)
        conn.factory.set_rate(5000)
        self.assertEqual(conn.protocol.rate, 5000)
        other = conn.factory.buildProtocol(ADDRESS)
        self.assertEqual(other.rate, 5000)
        self.close(conn)


class CloseTests(ThrottleTestCase):
    """
    Closing and losing the connection.
    """

    def test_lose_connection_flushes(self) -> None:
        """
        C{loseConnection} closes the transport only after the queue has been
        sent, including bytes written after it (a TLS close notification).
        """
        conn = connect(64 * KiB)
        data = b"x" * (200 * KiB)
        conn.protocol.write(data)
        conn.protocol.loseConnection()
        conn.protocol.write(b"bye")
        run(conn.clock, 1)
        self.assertFalse(conn.transport.disconnecting)
        self.advance_until(conn, lambda: conn.transport.disconnecting, limit=3)
        self.assertEqual(conn.transport.value(), data + b"bye")
        self.assertIsNone(conn.transport.producer)
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        self.close(conn)

    def test_abort(self) -> None:
        """
        C{abortConnection} drops the queue, cancels the pump and aborts the
        transport at once; later writes are ignored.
        """
        conn = connect(64 * KiB)
        conn.protocol.write(b"x" * (200 * KiB))
        conn.protocol.abortConnection()
        self.assertTrue(conn.transport.disconnected)
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        self.assertEqual(conn.protocol.queued, 0)
        conn.protocol.write(b"more")
        conn.protocol.loseConnection()
        self.assertEqual(conn.sent, 16 * KiB)
        self.close(conn)

    def test_connection_lost_cancels(self) -> None:
        """
        C{connectionLost} cancels the pending pump, stops the registered
        producer, tells the application, counts the time waited so far, and
        later writes are ignored.
        """
        conn = connect(1000)
        producer = RecordingProducer()
        conn.protocol.registerProducer(producer, True)
        conn.protocol.write(b"x" * (MIN_BURST + 5000))
        run(conn.clock, 0.5)
        self.assertEqual(len(conn.clock.getDelayedCalls()), 1)
        self.close(conn)
        self.assertEqual(producer.events, ["pause", "stop"])
        self.assertAlmostEqual(conn.protocol.throttled_seconds, 0.5)
        conn.protocol.write(b"late")
        self.assertEqual(conn.clock.getDelayedCalls(), [])

    def test_transport_stops_producer(self) -> None:
        """
        A transport that stops its producer on disconnection (as TCP does)
        has the registered producer stopped, once.
        """
        conn = connect(1000)
        producer = RecordingProducer()
        conn.protocol.registerProducer(producer, True)
        conn.transport.producer.stopProducing()
        self.close(conn)
        self.assertEqual(producer.events, ["stop"])


class FindThrottleTests(ThrottleTestCase):
    """
    Tests for L{find_throttle}.
    """

    def test_through_wrappers(self) -> None:
        """
        From an application protocol above another wrapper, or from its
        transport, or from the throttle itself, the throttle is found; a
        plain transport has none.
        """
        clock = Clock()
        factory = ThrottlingFactory(
            WrappingFactory(Factory.forProtocol(Recorder)), clock, 1000
        )
        throttle = factory.buildProtocol(ADDRESS)
        transport = StringTransport()
        throttle.makeConnection(transport)
        middle = throttle.wrappedProtocol
        assert isinstance(middle, ProtocolWrapper)
        app = middle.wrappedProtocol
        self.assertIs(find_throttle(app), throttle)
        self.assertIs(find_throttle(app.transport), throttle)
        self.assertIs(find_throttle(throttle), throttle)
        self.assertIsNone(find_throttle(transport))
        self.assertIsNone(find_throttle(Recorder()))
        throttle.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])


def self_signed() -> PrivateCertificate:
    """
    A throwaway self-signed EC certificate and key.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "throttle-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return PrivateCertificate.loadPEM(pem)


@implementer(IPushProducer)
@define
class Streamer:
    """
    A push producer writing C{total} bytes in 16 KiB chunks as fast as it is
    let, then unregistering and closing.
    """

    transport: TLSMemoryBIOProtocol
    total: int
    written: int = 0
    paused: bool = False
    pauses: int = 0
    done: bool = False

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.written < self.total:
            size = min(16 * KiB, self.total - self.written)
            self.written += size
            self.transport.write(b"z" * size)
        if self.written == self.total and not self.done:
            self.done = True
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def stopProducing(self) -> None:
        self.paused = True


class TLSStackTests(ThrottleTestCase):
    """
    The throttle under a real in-memory TLS connection, as realize stacks
    it: TCP, throttle, TLS, application.
    """

    def test_streaming_over_tls(self) -> None:
        """
        An application producer streaming through TLS is held to the rate
        (in ciphertext bytes, which is what the throttle counts) by pausing
        it through TLS's producer membrane; the application finds the
        throttle from its transport; the connection closes cleanly once the
        producer is done, leaving no delayed call.
        """
        clock = Clock()
        rate = 128 * KiB
        server_factory = ThrottlingFactory(
            TLSMemoryBIOFactory(
                self_signed().options(),
                False,
                Factory.forProtocol(Recorder),
                clock,
            ),
            clock,
            rate,
        )
        client_factory = TLSMemoryBIOFactory(
            CertificateOptions(), True, Factory.forProtocol(Recorder), clock
        )
        server = server_factory.buildProtocol(ADDRESS)
        client = client_factory.buildProtocol(ADDRESS)
        assert isinstance(client, TLSMemoryBIOProtocol)
        server_wire, client_wire = StringTransport(), StringTransport()
        server.makeConnection(server_wire)
        client.makeConnection(client_wire)
        tls = server.wrappedProtocol
        assert isinstance(tls, TLSMemoryBIOProtocol)
        server_app, client_app = tls.wrappedProtocol, client.wrappedProtocol
        assert isinstance(server_app, Recorder)
        assert isinstance(client_app, Recorder)
        self.assertIs(find_throttle(server_app), server)

        on_wire = 0

        def shuttle() -> None:
            nonlocal on_wire
            for _ in range(100):
                from_server = server_wire.value()
                from_client = client_wire.value()
                if not (from_server or from_client):
                    return
                server_wire.clear()
                client_wire.clear()
                on_wire += len(from_server)
                if from_server:
                    client.dataReceived(from_server)
                if from_client:
                    server.dataReceived(from_client)

        total = 640 * KiB
        streamer = Streamer(server_app.transport, total)
        streamer.start()
        for step in range(1, 301):
            run(clock, 0.02)
            shuttle()
            elapsed = step * 0.02
            self.assertLessEqual(on_wire, rate * elapsed + MIN_BURST)
            if step == 150:
                # Three seconds in, the producer has kept the wire busy.
                self.assertGreaterEqual(on_wire, 0.97 * rate * elapsed)
            if server_wire.disconnecting:
                break
        self.assertTrue(server_wire.disconnecting)
        self.assertEqual(b"".join(client_app.received), b"z" * total)
        self.assertEqual(server.bytes_sent, on_wire)
        self.assertGreater(on_wire, total)
        self.assertGreater(server.producer_pauses, 0)
        self.assertGreater(streamer.pauses, 0)
        server.connectionLost(Failure(ConnectionDone()))
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(server_app.lost), 1)
        self.assertEqual(clock.getDelayedCalls(), [])


class PropertyTests(ThrottleTestCase):
    """
    Properties over random writes and waits.
    """

    @settings(max_examples=40, deadline=None, database=None)
    @given(
        rate=st.integers(min_value=1, max_value=10 * MiB),
        steps=st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=200_000),
                st.floats(min_value=0, max_value=0.5),
            ),
            max_size=20,
        ),
    )
    def test_prefix_bound_and_delivery(
        self, rate: int, steps: list[tuple[int, float]]
    ) -> None:
        """
        Whatever is written and however time passes, the transport holds a
        prefix of what was written, never more than the burst plus
        C{rate * elapsed}, and eventually all of it.
        """
        conn = connect(rate)
        capacity = default_capacity(rate)
        written = bytearray()
        for number, (size, wait) in enumerate(steps):
            piece = bytes([number % 256]) * size
            written += piece
            conn.protocol.write(piece)
            run(conn.clock, wait)
            self.assertLessEqual(conn.sent, capacity + rate * conn.clock.seconds())
            self.assertEqual(conn.transport.value(), bytes(written[: conn.sent]))
        run(conn.clock, conn.protocol.queued / rate + 1)
        self.assertEqual(conn.transport.value(), bytes(written))
        self.assertEqual(conn.clock.getDelayedCalls(), [])
        self.close(conn)
