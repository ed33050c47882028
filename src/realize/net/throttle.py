"""
Send-rate limiting for one connection: a token bucket that pauses producers.

L{ThrottlingFactory} wraps another factory and limits the bytes each of its
connections I{sends}; received bytes pass through untouched (and so does a
read-side C{pauseProducing} of the transport).  Unlike
L{twisted.protocols.policies.ThrottlingFactory}, which counts in one-second
windows and stops writes for whole seconds with the global reactor, the
limit here is a L{TokenBucket} that refills continuously from an injected
clock, and the pump sends exactly as much as the bucket allows and wakes up
exactly when the next piece will be allowed.

Where it sits
=============

The throttle is the I{outermost} wrapper, directly on the TCP transport, so
that it counts wire bytes (TLS ciphertext, record headers and handshake
included)::

    TCP transport
      ThrottlingProtocol          (ThrottlingFactory)      <- this module
        TLSMemoryBIOProtocol      (TLSMemoryBIOFactory)
          AMP                     (the application factory)

that is, a server listens on a plain C{tcp:} endpoint with
C{ThrottlingFactory(TLSMemoryBIOFactory(tls_options, False, amp_factory,
clock), clock, rate_up)}, and a client connects a plain C{tcp:} endpoint with
the same built with C{isClient=True}.  (A TLS endpoint such as C{ssl:} or
C{wrapClientTLS} would put TLS beneath the throttle, which would then count
plaintext.)  Endpoints and C{ClientService} hand back the outermost protocol,
the throttle; the application protocol is
C{throttle.wrappedProtocol.wrappedProtocol}.

Back-pressure
=============

Bulk data reaches the throttle from a streaming producer registered with it
(L{TLSMemoryBIOProtocol} registers a membrane around the application's
producer on its transport, which is the throttle).  Written bytes are queued;
while more than L{ThrottlingProtocol.high_water} bytes are queued that
producer is paused, and it is resumed once the queue has drained to
L{ThrottlingProtocol.low_water}.  The throttle itself registers as a
streaming producer with the real transport, so when the kernel cannot keep
up the pump stops (and the upper producer is paused) until the transport
resumes it.

Each connection has its own bucket: a rate is per connection, not shared
by all connections of a factory.  Sending is limited exactly; receiving is
paced (L{ThrottlingProtocol.set_receive_rate}): reading pauses while the
bytes read exceed the allowance, and TCP flow control slows the sender.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final, Protocol, cast

from attrs import define, field
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "BURST_SECONDS",
    "MAX_HIGH_WATER",
    "MIN_BURST",
    "ThrottlingFactory",
    "ThrottlingProtocol",
    "TokenBucket",
    "check_rate",
    "default_capacity",
    "find_throttle",
]

#: The smallest default bucket capacity, in bytes: one TLS record (16 KiB of
#: plaintext), so that at low rates a control message or a record is sent
#: in one piece instead of being chopped by the pump.
MIN_BURST: Final = 16 * 1024

#: The default bucket capacity at high rates, in seconds of the rate: 50 ms
#: of sending is enough to cover timer and scheduling jitter of a busy
#: reactor (and a producer that is slow to refill the queue), so that the
#: achieved rate is not lost to jitter, while keeping the burst the network
#: sees small.
BURST_SECONDS: Final = 0.05

#: The high-water mark of the send queue is the smaller of this many bytes
#: and one second of the rate.  One second of the rate bounds the delay that
#: a control message queued behind bulk data suffers from the throttle to
#: about a second; 64 KiB bounds the memory a fast connection holds here,
#: which suffices because the bucket's burst and the transport's own buffers
#: keep the wire busy while the producer refills the queue.
MAX_HIGH_WATER: Final = 64 * 1024

#: The pump waits until this many seconds of the rate (at least
#: L{_MIN_QUANTUM} bytes, at most the bucket capacity) can be sent before it
#: wakes up again, which caps the timer rate at 50 wake-ups a second.
_PUMP_INTERVAL: Final = 0.02

#: The smallest piece the pump waits for while more is queued, in bytes.
_MIN_QUANTUM: Final = 1024

#: The shortest delay ever scheduled, in seconds, so that floating point
#: rounding can never schedule a call at the current time over and over.
_MIN_DELAY: Final = 1e-6

#: Tolerance, in bytes, for floating point error in the token count.
_SLACK: Final = 1e-6


def check_rate(rate: object) -> int:
    """
    Check a send rate.

    @param rate: bytes per second; C{0} means unlimited.
    @return: C{rate}, as an L{int}.
    @raise ValueError: if C{rate} is negative or not an L{int} (L{bool} and
        L{float} are refused too, even C{1024.0}); the message names it.
    """
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise ValueError(
            f"send rate must be a non-negative integer number of bytes per "
            f"second (0 for unlimited), not {rate!r}"
        )
    return rate


def default_capacity(rate: int) -> int:
    """
    The default capacity (burst) of a bucket refilled at C{rate}.

    It is C{max(MIN_BURST, rate * BURST_SECONDS)}: a small bucket, so that
    the rate holds over any window longer than a few tens of milliseconds.
    See L{MIN_BURST} and L{BURST_SECONDS} for the reasons.

    @param rate: bytes per second, C{0} for unlimited.
    @return: the capacity in bytes.
    """
    return max(MIN_BURST, int(rate * BURST_SECONDS))


def _check_burst(burst: int | None) -> int | None:
    if burst is not None and (
        isinstance(burst, bool) or not isinstance(burst, int) or burst < 1
    ):
        raise ValueError(f"bucket capacity must be a positive integer, not {burst!r}")
    return burst


@define(eq=False)
class TokenBucket:
    """
    A token bucket of bytes, refilled continuously from a clock.

    Tokens accrue at L{rate} per second of C{clock.seconds()}, computed at
    each use from the time elapsed (no windows, no timers), up to
    L{capacity}.  A new bucket, and a bucket switched from unlimited to a
    rate, starts full.

    @ivar _clock: where the time comes from.
    @ivar _rate: bytes per second, C{0} for unlimited.
    @ivar _burst: the capacity given, or L{None} for L{default_capacity} of
        the current rate.
    """

    _clock: IReactorTime
    _rate: int = field(default=0, converter=check_rate)
    _burst: int | None = field(default=None, converter=_check_burst)
    _tokens: float = field(init=False, default=0.0)
    _stamp: float = field(init=False, default=0.0)

    def __attrs_post_init__(self) -> None:
        self._tokens = float(self.capacity)
        self._stamp = self._clock.seconds()

    @property
    def rate(self) -> int:
        """
        Bytes per second; C{0} means unlimited.
        """
        return self._rate

    @property
    def capacity(self) -> int:
        """
        The most tokens the bucket holds, in bytes: the burst allowed after
        an idle period.
        """
        if self._burst is not None:
            return self._burst
        return default_capacity(self._rate)

    @property
    def tokens(self) -> float:
        """
        The bytes that may be sent now (fractional); infinite when unlimited.
        """
        if not self._rate:
            return math.inf
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock.seconds()
        elapsed = now - self._stamp
        self._stamp = now
        if elapsed > 0 and self._rate:
            self._tokens = min(
                float(self.capacity), self._tokens + elapsed * self._rate
            )

    def set_rate(self, rate: int) -> None:
        """
        Change the rate from now on.

        Tokens accrued so far at the old rate are kept, up to the capacity at
        the new rate; switching from unlimited to a rate fills the bucket.

        @param rate: bytes per second, C{0} for unlimited.
        @raise ValueError: if C{rate} is negative or not an integer.
        """
        rate = check_rate(rate)
        self._refill()
        was_unlimited = not self._rate
        self._rate = rate
        if was_unlimited:
            self._tokens = float(self.capacity)
        else:
            self._tokens = min(self._tokens, float(self.capacity))

    def take(self, size: int) -> int:
        """
        Take up to C{size} tokens.

        @param size: the bytes wanted, C{>= 0}.
        @return: the bytes that may be sent now, C{0 <= n <= size}; all of
            them when unlimited.
        @raise ValueError: if C{size} is negative.
        """
        if size < 0:
            raise ValueError(f"cannot take a negative number of bytes: {size!r}")
        if not self._rate:
            return size
        self._refill()
        granted = min(size, math.floor(self._tokens + _SLACK))
        if granted <= 0:
            return 0
        self._tokens -= granted
        return granted

    def delay_for(self, size: int) -> float:
        """
        How long until C{size} tokens are there.

        @param size: the bytes wanted; more than L{capacity} can never be
            there at once, so the delay is the one for C{capacity} bytes.
        @return: seconds from now, C{0.0} if they are there already (or
            when unlimited).
        """
        if not self._rate:
            return 0.0
        self._refill()
        missing = min(size, self.capacity) - self._tokens
        if missing <= _SLACK:
            return 0.0
        return missing / self._rate


class _RealTransport(Protocol):
    """
    What the throttle uses of the transport beneath it (a TCP transport
    provides all of it: C{ITCPTransport} and C{IConsumer}).
    """

    def write(self, data: bytes) -> None: ...

    def writeSequence(self, data: Sequence[bytes]) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


@implementer(IPushProducer)
@define(eq=False)
class _WireProducer:
    """
    What a L{ThrottlingProtocol} registers with the real transport, to learn
    when the transport cannot take more bytes.

    It is a separate object because C{pauseProducing} on the throttling
    protocol itself must keep meaning what it means on the transport it
    stands in for (stop I{reading}); upper layers reach it through
    L{ProtocolWrapper.__getattr__}.
    """

    _protocol: ThrottlingProtocol = field(repr=False)

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: stop pumping.
        """
        self._protocol._wire_paused()

    def resumeProducing(self) -> None:
        """
        The transport's buffer has drained: pump again.
        """
        self._protocol._wire_resumed()

    def stopProducing(self) -> None:
        """
        The connection is going away: stop the upper producer.
        """
        self._protocol._wire_stopped()


@define(eq=False, repr=False)
class ThrottlingProtocol(ProtocolWrapper):
    """
    Stands between a real transport and a wrapped protocol, limiting the
    bytes sent to the transport to L{rate} bytes per second.

    Unlimited (rate C{0}), writes go straight to the transport.  Limited,
    writes are queued and a pump sends them, splitting large writes, as the
    L{TokenBucket} allows; when it runs out of tokens it schedules itself
    with C{callLater} for when the next piece (L{_PUMP_INTERVAL} of the
    rate, or all that is queued if less) will be allowed.  The producer
    registered by the wrapped protocol is paused while more than
    L{high_water} bytes are queued and resumed at L{low_water}; it is also
    paused for as long as the real transport pauses this protocol, during
    which the pump stops.

    Only streaming producers can be registered (C{TLSMemoryBIOProtocol}
    always registers one); unlike C{ITransport.loseConnection}'s general
    contract, L{loseConnection} does not wait for that producer to be
    unregistered: it flushes the queue and closes.  C{TLSMemoryBIOProtocol}
    above already waits for its producer before shutting down, and waiting
    here too would hang a connection that TLS closes on an error.

    Counters, for the metrics layer:

    @ivar bytes_sent: bytes written to the real transport so far.
    @ivar producer_pauses: how many times the throttle paused the registered
        producer because the queue was above the high-water mark (pauses
        forwarded from the real transport are not counted).
    @ivar throttled_seconds: seconds spent with queued bytes waiting for
        tokens (not counting time the real transport had paused sending).

    @ivar factory: the L{ThrottlingFactory} that built this protocol.
    @ivar wrappedProtocol: the protocol above, for which this protocol is
        the transport; L{None} after the connection is lost.
    """

    factory: ThrottlingFactory
    wrappedProtocol: IProtocol

    bytes_sent: int = field(init=False, default=0)
    producer_pauses: int = field(init=False, default=0)
    throttled_seconds: float = field(init=False, default=0.0)

    _clock: IReactorTime = field(init=False)
    #: The real transport, typed; set by L{connectionMade}.
    _real: _RealTransport = field(init=False)
    _bucket: TokenBucket = field(init=False)
    _unlimited: bool = field(init=False)
    _queue: deque[bytes] = field(init=False, factory=deque)
    _queued: int = field(init=False, default=0)
    _offset: int = field(init=False, default=0)
    _call: IDelayedCall | None = field(init=False, default=None)
    _wait_started: float | None = field(init=False, default=None)
    _wire: _WireProducer | None = field(init=False, default=None)
    _wire_is_paused: bool = field(init=False, default=False)
    _producer: IPushProducer | None = field(init=False, default=None)
    _producer_paused: bool = field(init=False, default=False)
    _queue_high: bool = field(init=False, default=False)
    _holding: bool = field(init=False, default=False)
    _close_sent: bool = field(init=False, default=False)
    _finished: bool = field(init=False, default=False)
    #: Receive pacing: bytes allowed to arrive now (negative: in debt).
    _receive_rate: int = field(init=False, default=0)
    _receive_allowance: float = field(init=False, default=0.0)
    _receive_stamp: float = field(init=False, default=0.0)
    _receive_call: IDelayedCall | None = field(init=False, default=None)
    _upper_read_paused: bool = field(init=False, default=False)
    _reading_paused: bool = field(init=False, default=False)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._clock = self.factory.clock
        self._bucket = TokenBucket(self._clock, self.factory.rate_up)
        self._unlimited = self._bucket.rate == 0
        self._receive_rate = self.factory.rate_down

    def __repr__(self) -> str:
        return (
            f"<ThrottlingProtocol rate={self.rate} queued={self._queued} "
            f"sent={self.bytes_sent} around {self.wrappedProtocol!r}>"
        )

    # Introspection

    @property
    def rate(self) -> int:
        """
        The send limit in bytes per second; C{0} means unlimited.
        """
        return self._bucket.rate

    @property
    def queued(self) -> int:
        """
        Bytes written by the wrapped protocol and not yet sent.
        """
        return self._queued

    @property
    def high_water(self) -> int:
        """
        Above this many queued bytes the registered producer is paused:
        C{min(MAX_HIGH_WATER, rate)}, i.e. one second of the rate at most
        (see L{MAX_HIGH_WATER}).  C{0} when unlimited (nothing is queued).
        """
        return min(MAX_HIGH_WATER, self._bucket.rate)

    @property
    def low_water(self) -> int:
        """
        At or below this many queued bytes a producer paused for a high
        queue is resumed: half the high-water mark.
        """
        return self.high_water // 2

    @property
    def _quantum(self) -> int:
        rate = self._bucket.rate
        return min(self._bucket.capacity, max(_MIN_QUANTUM, int(rate * _PUMP_INTERVAL)))

    # Runtime control

    def set_rate(self, rate: int) -> None:
        """
        Change the send limit of this connection, effective at once.

        A pending wake-up of the pump is replaced by one computed for the
        new rate; switching to unlimited writes everything queued to the
        transport now.  The high- and low-water marks follow the new rate,
        so the registered producer may be paused or resumed.

        @param rate: bytes per second, C{0} for unlimited.
        @raise ValueError: if C{rate} is negative or not an integer.
        """
        rate = check_rate(rate)
        self._bucket.set_rate(rate)
        self._unlimited = rate == 0
        self.log.debug("send rate set to {rate} B/s", rate=rate)
        if self._unlimited:
            self._stop_waiting()
            if self._queued and not self._finished:
                self._send(self._dequeue(self._queued))
        else:
            self._pump()
        self._settle()

    @property
    def receive_rate(self) -> int:
        """
        The receive limit in bytes per second; C{0} means unlimited.
        """
        return self._receive_rate

    def set_receive_rate(self, rate: int) -> None:
        """
        Change how fast this connection reads, effective at once.

        The other side cannot be made to send slower, but the connection
        can read slower: after reading, reading is paused for as long as
        the bytes read exceed what the rate allows, and TCP flow control
        slows the sender down.  The allowance refills continuously and
        holds at most L{default_capacity} bytes, like the send bucket.

        @param rate: bytes per second, C{0} for unlimited.
        @raise ValueError: if C{rate} is negative or not an integer.
        """
        self._receive_rate = check_rate(rate)
        self._receive_allowance = float(default_capacity(self._receive_rate))
        self._receive_stamp = self._clock.seconds()
        self.log.debug("receive rate set to {rate} B/s", rate=self._receive_rate)
        if self._receive_call is not None and self._receive_call.active():
            self._receive_call.cancel()
        self._receive_call = None
        self._sync_reading()

    def dataReceived(self, data: bytes) -> None:
        """
        Pass received bytes up, charging them to the receive allowance.
        """
        if self._receive_rate:
            now = self._clock.seconds()
            capacity = default_capacity(self._receive_rate)
            self._receive_allowance = min(
                capacity,
                self._receive_allowance
                + (now - self._receive_stamp) * self._receive_rate,
            )
            self._receive_stamp = now
            self._receive_allowance -= len(data)
            if self._receive_allowance < 0 and self._receive_call is None:
                delay = -self._receive_allowance / self._receive_rate
                self._receive_call = self._clock.callLater(delay, self._receive_due)
                self._sync_reading()
        ProtocolWrapper.dataReceived(self, data)

    def _receive_due(self) -> None:
        self._receive_call = None
        self._sync_reading()

    def pauseProducing(self) -> None:
        """
        The protocol above wants reading paused (its buffers are full).
        """
        self._upper_read_paused = True
        self._sync_reading()

    def resumeProducing(self) -> None:
        """
        The protocol above wants reading again.
        """
        self._upper_read_paused = False
        self._sync_reading()

    def _sync_reading(self) -> None:
        """
        Read from the real transport unless the protocol above or the
        receive pacing wants reading paused.
        """
        if self._finished or self.transport is None:
            return
        paused = self._upper_read_paused or self._receive_call is not None
        if paused != self._reading_paused:
            self._reading_paused = paused
            if paused:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
            else:
                self.transport.resumeProducing()  # type: ignore[attr-defined]

    # ITransport, as seen by the wrapped protocol

    def connectionMade(self) -> None:
        """
        Register with the real transport as a streaming producer, before the
        wrapped protocol is connected (and may write).
        """
        self._real = cast(_RealTransport, self.transport)
        self._wire = _WireProducer(self)
        self._real.registerProducer(self._wire, True)

    def write(self, data: bytes) -> None:
        """
        Send C{data}, now if unlimited, else as the bucket allows.

        @param data: bytes to send.
        @raise TypeError: if limited and C{data} is not L{bytes}.
        """
        if self._unlimited:
            self.bytes_sent += len(data)
            self._real.write(data)
            return
        self._enqueue((data,))

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """
        Send the concatenation of C{data}, as L{write} does.

        @param data: pieces of bytes to send, in order.
        @raise TypeError: if limited and a piece is not L{bytes}.
        """
        if self._unlimited:
            pieces = list(data)
            self.bytes_sent += sum(map(len, pieces))
            self._real.writeSequence(pieces)
            return
        self._enqueue(data)

    def loseConnection(self) -> None:
        """
        Close the connection once everything queued has been sent.

        Bytes written after this call and before the queue is empty (a TLS
        close notification, say) are still sent first.
        """
        if self._finished or self.disconnecting:
            return
        self.disconnecting = True
        self._maybe_close()

    def abortConnection(self) -> None:
        """
        Drop everything queued and abort the real connection at once.
        """
        if self._finished:
            return
        self._finished = True
        self.disconnecting = True
        self._stop_waiting()
        self._drop_queue()
        self._real.abortConnection()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """
        Register the producer of the wrapped protocol's data.

        It is not registered with the real transport: this protocol pauses
        and resumes it, for its own queue and on behalf of the transport.

        @param producer: a streaming producer.
        @param streaming: must be C{True}.
        @raise RuntimeError: if a producer is already registered.
        @raise ValueError: if C{streaming} is false.
        """
        if self._producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, because producer "
                f"{self._producer!r} was never unregistered."
            )
        if not streaming:
            raise ValueError(
                f"ThrottlingProtocol takes streaming producers only, "
                f"not the pull producer {producer!r}"
            )
        if self._finished:
            producer.stopProducing()
            return
        self._producer = producer
        self._producer_paused = False
        self._holding = False
        self._sync_producer()

    def unregisterProducer(self) -> None:
        """
        Forget the registered producer, if any.
        """
        self._producer = None
        self._producer_paused = False
        self._holding = False

    # IProtocol, as seen by the real transport

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Cancel the pump, drop the queue, stop a still registered producer
        and tell the wrapped protocol.

        @param reason: why the connection was lost.
        """
        self._finished = True
        self.connected = False
        self._stop_waiting()
        if self._receive_call is not None and self._receive_call.active():
            self._receive_call.cancel()
        self._receive_call = None
        self._drop_queue()
        self._wire_stopped()
        ProtocolWrapper.connectionLost(self, reason)

    # The pump

    def _enqueue(self, data: Iterable[bytes]) -> None:
        pieces = list(data)
        for piece in pieces:
            if not isinstance(piece, bytes):
                raise TypeError(f"data must be bytes, not {type(piece).__name__}")
        if self._finished:
            return
        for piece in pieces:
            if piece:
                self._queue.append(piece)
                self._queued += len(piece)
        if self._call is None:
            self._pump()
        self._settle(reassert=True)

    def _dequeue(self, size: int) -> list[bytes]:
        """
        Remove and return the first C{size} queued bytes, in pieces.
        """
        out: list[bytes] = []
        queue = self._queue
        left = size
        while left > 0:
            head = queue[0]
            start = self._offset
            available = len(head) - start
            if available <= left:
                out.append(head[start:] if start else head)
                queue.popleft()
                self._offset = 0
                left -= available
            else:
                out.append(head[start : start + left])
                self._offset = start + left
                left = 0
        self._queued -= size
        return out

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._queued = 0
        self._offset = 0

    def _send(self, pieces: Sequence[bytes]) -> None:
        self.bytes_sent += sum(map(len, pieces))
        if len(pieces) == 1:
            self._real.write(pieces[0])
        else:
            self._real.writeSequence(pieces)

    def _pump(self) -> None:
        """
        Send what the bucket allows now; if bytes remain, wake up when the
        next piece will be allowed.
        """
        self._stop_waiting()
        if self._wire_is_paused or self._finished or not self._queued:
            return
        allowed = self._bucket.take(self._queued)
        if allowed:
            self._send(self._dequeue(allowed))
        if (
            self._queued
            and self._call is None
            and not self._wire_is_paused
            and not self._finished
        ):
            wanted = min(self._queued, self._quantum)
            delay = max(self._bucket.delay_for(wanted), _MIN_DELAY)
            self._wait_started = self._clock.seconds()
            self._call = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._pump()
        self._settle()

    def _stop_waiting(self) -> None:
        """
        Cancel a pending wake-up (if it has not run) and count the time
        waited for tokens.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        if self._wait_started is not None:
            waited = self._clock.seconds() - self._wait_started
            self._wait_started = None
            self.throttled_seconds += max(0.0, waited)

    def _settle(self, reassert: bool = False) -> None:
        """
        Bring the producer and the close in line with the queue.

        @param reassert: pause the producer again if it should be paused,
            even if it already was: a write arriving while it is paused means
            someone else resumed it (C{TLSMemoryBIOProtocol} does so when it
            unbuffers), as Twisted's own transports do.
        """
        if self._unlimited:
            self._queue_high = False
        elif self._queued > self.high_water:
            self._queue_high = True
        elif self._queued <= self.low_water:
            self._queue_high = False
        self._sync_producer(reassert)
        self._maybe_close()

    def _sync_producer(self, reassert: bool = False) -> None:
        producer = self._producer
        if producer is None:
            return
        if self._queue_high and not self._holding:
            self.producer_pauses += 1
        self._holding = self._queue_high
        if self._queue_high or self._wire_is_paused:
            if reassert or not self._producer_paused:
                self._producer_paused = True
                producer.pauseProducing()
        elif self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()

    def _maybe_close(self) -> None:
        if (
            self.disconnecting
            and not self._queued
            and not self._close_sent
            and not self._finished
        ):
            self._close_sent = True
            # A registered (possibly paused) producer keeps a TCP transport
            # from closing, so stop being one first.
            if self._wire is not None:
                self._wire = None
                self._real.unregisterProducer()
            self._real.loseConnection()

    # Called by _WireProducer

    def _wire_paused(self) -> None:
        self._wire_is_paused = True
        self._stop_waiting()
        self._sync_producer()

    def _wire_resumed(self) -> None:
        self._wire_is_paused = False
        self._pump()
        self._settle()

    def _wire_stopped(self) -> None:
        producer, self._producer = self._producer, None
        self._producer_paused = False
        self._holding = False
        if producer is not None:
            producer.stopProducing()


@define(eq=False)
class ThrottlingFactory(WrappingFactory[ThrottlingProtocol]):
    """
    Wraps a factory so that each connection's sending is limited.

    @ivar wrappedFactory: the factory of the protocols above (for realize,
        a C{TLSMemoryBIOFactory}).
    @ivar clock: the clock the buckets and the pumps use.
    @ivar rate_up: the send limit of new connections in bytes per second,
        C{0} for unlimited; see L{set_rate} to change it for live ones too.
    @ivar rate_down: the receive limit of new connections in bytes per
        second (reading is paced, see
        L{ThrottlingProtocol.set_receive_rate}), C{0} for unlimited.
    @ivar protocols: the live connections' protocols (keys).
    """

    wrappedFactory: IProtocolFactory
    clock: IReactorTime
    rate_up: int = field(default=0, converter=check_rate)
    rate_down: int = field(default=0, converter=check_rate)
    protocols: dict[ThrottlingProtocol, int] = field(
        init=False, factory=dict, repr=False
    )

    protocol = ThrottlingProtocol
    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> ThrottlingProtocol:
        """
        Build a L{ThrottlingProtocol} around the wrapped factory's protocol.

        @param addr: the peer's address.
        @return: the protocol, or L{None} (refusing the connection) when the
            wrapped factory returns L{None}.
        """
        wrapped = self.wrappedFactory.buildProtocol(cast(IAddress, addr))
        if wrapped is None:
            # Refusing is part of IProtocolFactory, which WrappingFactory's
            # signature forgets.
            return None  # type: ignore[return-value]
        return ThrottlingProtocol(self, wrapped)

    def set_rate(self, rate: int) -> None:
        """
        Change the send limit of new connections and of every live one.

        @param rate: bytes per second, C{0} for unlimited.
        @raise ValueError: if C{rate} is negative or not an integer.
        """
        self.rate_up = check_rate(rate)
        for protocol in list(self.protocols):
            protocol.set_rate(self.rate_up)


#: Links followed by L{find_throttle} before giving up (guards a cycle).
_MAX_HOPS: Final = 16


def find_throttle(start: object) -> ThrottlingProtocol | None:
    """
    Find the L{ThrottlingProtocol} under a protocol or transport.

    Follows C{.transport} links downwards from C{start} (which may itself be
    the throttle): from an AMP protocol, its transport is the
    C{TLSMemoryBIOProtocol}, whose transport is the throttle.  Upper layers
    use it to read the counters or call L{ThrottlingProtocol.set_rate}.

    @param start: a protocol, or the transport a protocol was given.
    @return: the throttle, or L{None} when there is none beneath C{start}.
    """
    current: object = start
    for _ in range(_MAX_HOPS):
        if isinstance(current, ThrottlingProtocol):
            return current
        current = getattr(current, "transport", None)
        if current is None:
            return None
    return None
