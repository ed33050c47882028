"""
The connection: a framing layer under AMP that also carries bulk data.

AMP values are limited to 65,535 bytes and AMP's parsing costs per byte
(DESIGN.md section 5 measured ~215 MB/s for a stream of AMP boxes over TLS
against ~550 MB/s for bare TLS).  So every message on the TLS connection is
a I{frame}::

    kind (1 byte) | stream id (4 bytes) | length (4 bytes) | payload

all big-endian.  Kinds:

    - C{BOX} (0): the payload is bytes of the AMP box stream; the stream
      id is 0.
    - C{WRITE_DATA} (1): a chunk of the data of a command the sender
      called (Write): the caller allocated the stream id.
    - C{WRITE_END} (2): end of such a stream; the payload is one byte, 0
      for complete, 1 for aborted by the sender.
    - C{READ_DATA} (3): a chunk of data answering a command the receiver
      called (Read, List): the receiver allocated the stream id.
    - C{READ_CANCEL} (4): the caller of a Read no longer wants its data.
    - C{WRITE_DATA_Z} (5), C{READ_DATA_Z} (6): as C{WRITE_DATA} and
      C{READ_DATA}, the payload compressed with zstd (one zstd frame that
      declares its size, at most L{MAX_DATA_FRAME} once decompressed).
      Sent only on a connection where the caller asked for compression
      (SetCompression); a receiver accepts them on any connection.

Frames are ordered on the connection, so the data of a Read is complete
when its AMP answer arrives, and the data of a Write cannot arrive before
the Write command.  Data payloads are at most L{MAX_DATA_FRAME} bytes, box
payloads at most L{MAX_BOX_FRAME}, and one AMP box at most
L{MAX_BOX_FRAME} over however many frames; a larger frame or box, or an
unknown kind, drops the connection.  Data for an unknown stream id is
discarded (the stream was abandoned, e.g. because its command failed).

Either side may call commands and answer them: the connection's AMP
dispatches to the responder locator it is given (L{set_locator}), built per
connection by the factory (L{realize.net.factory}).  Who the peer is comes
from the TLS layer: the connection is given an C{identify} function
(L{realize.net.tls.pinned_identity}) that it calls once the handshake
completed; no box is dispatched before.

Back-pressure: the connection registers as a streaming producer on its
transport; senders of data wait on L{Connection.writable} while the
transport is paused.  Received data waits in an
L{realize.net.streams.Inbox} per stream; while any inbox holds more than
L{Inbox.HIGH} bytes, or all of them (with what responders hold, see
L{Connection.hold}) more than L{ConnectionLimits.max_held}, the connection
stops reading from its transport, so neither side buffers more than a
bounded window.

Budgets (issue 14): besides the held bytes, a connection answers at most
L{ConnectionLimits.max_commands} commands at once (more are refused with
L{BadRequest}), and, if given a clock, is closed after
L{ConnectionLimits.idle_timeout} seconds without a frame received, a
command in flight in either direction or an open stream.
"""

from __future__ import annotations

import copy
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from realize.errors import BadRequest, Conflict, NetworkError
from realize.interfaces import RunInThread
from realize.model import PeerId
from realize.net.codec import (
    COMPRESS_MIN,
    COMPRESS_MISSES,
    MAX_DATA_FRAME,
    compress,
)
from realize.net.streams import Inbox

__all__ = [
    "BOX",
    "MAX_BOX_FRAME",
    "MAX_DATA_FRAME",
    "READ_CANCEL",
    "READ_DATA",
    "READ_DATA_Z",
    "WRITE_DATA",
    "WRITE_DATA_Z",
    "WRITE_END",
    "Connection",
    "ConnectionLimits",
    "Identify",
]

log = Logger(namespace="realize.net")

BOX = 0
WRITE_DATA = 1
WRITE_END = 2
READ_DATA = 3
READ_CANCEL = 4
WRITE_DATA_Z = 5
READ_DATA_Z = 6

_HEADER = struct.Struct("!BII")
_HEADER_SIZE = _HEADER.size

#: Largest box frame payload, and largest AMP box, in bytes (a box
#: carrying the Merkle leaves of a 2 TiB file).
MAX_BOX_FRAME = 64 << 20

_END_OK = b"\x00"
_END_ABORT = b"\x01"

#: Warnings about a peer's bad input logged per minute and connection.
WARNINGS_PER_MINUTE = 10

#: Who the peer of a connection is, from its transport once the TLS
#: handshake completed: its id, or C{None} to drop the connection.
Identify = Callable[[Any], PeerId | None]


@frozen
class ConnectionLimits:
    """
    What one connection may make this side hold (issue 14: every resource
    a peer can make us spend is bounded per connection).

    @ivar max_commands: commands of the peer answered at once; more are
        refused with L{BadRequest}.
    @ivar max_held: bytes of received data held at once, in inboxes and by
        responders (L{Connection.hold}); above it the connection stops
        reading until they drain.
    @ivar max_box: bytes of one AMP box, over however many frames.
    @ivar idle_timeout: seconds without a frame received, a command in
        flight or an open stream after which the connection is closed;
        C{None} for never.
    """

    max_commands: int = 1024
    max_held: int = 64 << 20
    max_box: int = MAX_BOX_FRAME
    idle_timeout: float | None = None


def check_stream(stream: int) -> None:
    """
    @raise BadRequest: if a stream id from the wire does not fit a frame
        header (4 bytes, unsigned).
    """
    if not 0 <= stream <= 0xFFFFFFFF:
        raise BadRequest(f"stream id {stream} is out of range")


class _AMP(amp.AMP):
    """
    The AMP of a connection: counts the commands it answers (refusing those
    over the connection's budget), resets the per-box byte count at each
    box, and drops the connection with a warning (not the traceback of an
    unhandled error) when a command sent without asking for an answer
    fails with a known error.
    """

    def __init__(self, connection: Connection) -> None:
        super().__init__(locator=amp.CommandLocator())  # type: ignore[no-untyped-call]
        self.connection = connection
        #: Commands of the peer being answered now.
        self.answering = 0

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        self.connection._box_bytes = 0
        super().ampBoxReceived(box)  # type: ignore[no-untyped-call]

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred[Any]:
        limit = self.connection.limits.max_commands
        if self.answering >= limit:
            command = box.get(amp.COMMAND, b"?").decode("ascii", "replace")
            return fail(
                amp.RemoteAmpError(
                    BadRequest.code,
                    f"{command} refused: {limit} commands are already in "
                    "flight on this connection",
                )
            )
        self.answering += 1
        self.connection._touch()

        def done(result: object) -> object:
            self.answering -= 1
            self.connection._touch()
            return result

        d: Deferred[Any] = super().dispatchCommand(box)  # type: ignore[no-untyped-call]
        return d.addBoth(done).addErrback(self._malformed, box)

    def _malformed(self, failure: Failure, box: amp.AmpBox) -> Failure:
        """
        A command that failed before its responder ran (a missing or
        malformed argument) is the peer's mistake, not ours: answer
        C{BAD_REQUEST} and keep the connection, with one warning line (not
        a traceback), rate-limited per connection.
        """
        if failure.check(amp.RemoteAmpError):
            return failure
        command = box.get(amp.COMMAND, b"?").decode("ascii", "replace")
        reason = f"{type(failure.value).__name__}: {failure.getErrorMessage()}"
        self.connection.warn_peer(command, reason[:200])
        return Failure(
            amp.RemoteAmpError(
                BadRequest.code, f"{command}: malformed arguments ({reason[:200]})"
            )
        )

    def unhandledError(self, failure: Failure) -> None:
        if failure.check(amp.RemoteAmpError):
            log.warn(
                "dropping connection: a command sent without asking for an "
                "answer failed: {error}",
                error=failure.getErrorMessage(),
            )
            if self.transport is not None:
                self.transport.loseConnection()
            return
        super().unhandledError(failure)

    def outstanding(self) -> int:
        """
        @return: commands this side called that await an answer.
        """
        requests = self._outstandingRequests
        return len(requests) if requests is not None else 0

    def fail_outstanding(self, error: Callable[[], BaseException]) -> None:
        """
        Fail every call awaiting an answer, each with a fresh error (one
        shared exception raised into many coroutines would keep all their
        frames alive on its traceback).
        """
        requests = self._outstandingRequests or {}
        self._outstandingRequests = {}
        for d in requests.values():
            d.errback(Failure(error()))


class _BoxTransport:
    """
    The transport AMP sees: what it writes becomes box frames.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def write(self, data: bytes) -> None:
        self._connection.send_frame(BOX, 0, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._connection.close()

    def abortConnection(self) -> None:
        transport = self._connection.transport
        if transport is not None:
            transport.abortConnection()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection.transport, name)


@implementer(IPushProducer, IHandshakeListener)
class Connection(Protocol):
    """
    One peer connection over TLS: framing, streams and the AMP protocol.

    @ivar amp: the AMP protocol running over box frames.
    @ivar peer: the peer's id once the TLS handshake completed and the
        peer was identified; C{None} before.
    @ivar handshake: fires with the peer id when the handshake completed,
        or fails with the reason the connection was lost before that.
    @ivar lost: fires with C{None} when the connection is lost.
    @ivar outbound: whether this side dialled.
    @ivar bytes_received: data bytes received in data frames.
    @ivar bytes_sent: data bytes sent in data frames.
    """

    #: The TLS protocol under us: an ITransport that is also a producer
    #: and consumer (pause/resume reading, register a producer, abort).
    transport: Any

    def __init__(
        self,
        identify: Identify,
        run_in_thread: RunInThread | None = None,
        *,
        locator: Any = None,
        limits: ConnectionLimits | None = None,
        clock: IReactorTime | None = None,
        outbound: bool = False,
    ) -> None:
        """
        @param identify: tells who the peer is after the TLS handshake.
        @param run_in_thread: runs compression and decompression of data
            chunks off the reactor thread.
        @param locator: the responders of the commands the peer may call
            (an C{IResponderLocator}); none by default (see
            L{set_locator}).
        @param limits: this connection's budgets.
        @param clock: for the idle timeout.
        @param outbound: whether this side dialled.
        """
        self._amp = _AMP(self)
        #: The AMP protocol (typed as Twisted's, whose calls are allowed
        #: untyped).
        self.amp: amp.AMP = self._amp
        if locator is not None:
            self.set_locator(locator)
        #: Runs compression and decompression off the reactor thread.
        self.run_in_thread = run_in_thread
        self.limits = limits or ConnectionLimits()
        self.outbound = outbound
        self._identify = identify
        self._clock = clock
        self.peer: PeerId | None = None
        #: Set by the factory: drop the connection as soon as it is made
        #: (too many connections not authenticated yet).
        self.refuse = False
        #: The client TLS settings of a dialled connection (for messages).
        self.client_tls: Any = None
        self.address = "?"
        self.handshake: Deferred[PeerId] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.bytes_received = 0
        self.bytes_sent = 0
        self._header = b""
        self._kind = -1
        self._stream = 0
        self._need = 0
        self._parts: list[bytes] = []
        self._box_bytes = 0
        self._next_stream = 1
        self._incoming: dict[int, Inbox] = {}
        self._reading: dict[int, Inbox] = {}
        #: READ_DATA streams being sent (L{open_outgoing}); cancels of
        #: other streams are ignored, so that they cannot pile up.
        self._sending: set[int] = set()
        self._cancelled: set[int] = set()
        self._paused = False
        self._writable: list[Deferred[None]] = []
        self._full_inboxes = 0
        self._held = 0
        self._reading_paused = False
        self._lost = False
        self._lost_reason: str | None = None
        self._aborted = False
        self._registered = False
        self._busy = 0
        self._idle_call: IDelayedCall | None = None
        self._warn_window = float("-inf")
        self._warned = 0
        self._warn_suppressed = 0
        #: Whether this side compresses the data it sends (SetCompression).
        self.compression = False
        self.compression_level = 3
        #: Bytes compression spared sending.
        self.compressed_saved = 0
        self._misses: dict[tuple[int, int], int] = {}

    def set_locator(self, locator: Any) -> None:
        """
        Answer the peer's commands with these responders.

        @param locator: an C{IResponderLocator}, e.g. a
            L{realize.net.locator.Responders} or a composite of several.
        """
        self.amp.locator = locator

    # -- connection lifecycle -------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "?")
        port = getattr(peer, "port", "?")
        self.address = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        if self.refuse:
            self._abort()
            return
        # Boxes are small: without TCP_NODELAY, Nagle's algorithm holds one
        # back until the peer's delayed ACK (40 ms on Linux).
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:
            nodelay(True)
        self.transport.registerProducer(self, True)
        self._registered = True
        self.amp.makeConnection(_BoxTransport(self))
        self._touch()

    def handshakeCompleted(self) -> None:
        peer = self._identify(self.transport)
        if peer is None:
            self._abort()
            return
        self.peer = peer
        self.handshake.callback(peer)

    def close(self, abort: bool = False) -> None:
        """
        Close the connection: unregister as the transport's producer (TLS
        does not shut down while a producer is registered), then lose the
        connection cleanly, or abort it.

        @param abort: drop it at once, with whatever is still queued to
            send (a throttled connection may hold a second or more).
        """
        transport = self.transport
        if transport is None or self._lost:
            return
        if self._registered:
            self._registered = False
            transport.unregisterProducer()
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()

    def lost_error(self) -> NetworkError | None:
        """
        @return: once the connection is lost, a fresh error naming its peer
            and the reason (what its waiters fail with); C{None} before.
        """
        return self._lost_error() if self._lost else None

    def _lost_error(self) -> NetworkError:
        """
        @return: a fresh error for one waiter of a lost connection.
        """
        return NetworkError(
            f"connection to {self.peer or self.address} lost: {self._lost_reason}"
        )

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self._lost = True
        self._lost_reason = _reason(reason)
        self._cancel_idle()
        for inbox in [*self._incoming.values(), *self._reading.values()]:
            inbox.close(self._lost_error())
        self._incoming.clear()
        self._reading.clear()
        waiters, self._writable = self._writable, []
        for d in waiters:
            d.errback(self._lost_error())
        if not self.handshake.called:
            self.handshake.errback(reason)
        self._amp.fail_outstanding(lambda: _fresh(reason))
        self.amp.connectionLost(reason)
        self.lost.callback(None)

    # -- bad input ---------------------------------------------------------

    def warn_peer(self, command: str, reason: str) -> None:
        """
        Log bad input from the peer: one warning line with the peer, the
        command and the reason, at most L{WARNINGS_PER_MINUTE} a minute
        per connection (a peer cannot flood the log); the number left out
        is logged with the next one let through.

        @param command: the command, e.g. C{"Read"}.
        @param reason: what was wrong with it.
        """
        now = self._clock.seconds() if self._clock is not None else time.monotonic()
        if now - self._warn_window >= 60:
            self._warn_window = now
            self._warned = 0
        if self._warned >= WARNINGS_PER_MINUTE:
            self._warn_suppressed += 1
            return
        self._warned += 1
        suppressed, self._warn_suppressed = self._warn_suppressed, 0
        log.warn(
            "bad {command} from {peer}: {reason}",
            command=command,
            peer=self.peer or self.address,
            reason=reason,
            suppressed=suppressed,
        )

    # -- idleness --------------------------------------------------------

    def busy(self, delta: int) -> None:
        """
        Count a long-lived activity (a subscription) that keeps the
        connection from being idle though no command is in flight.

        @param delta: +1 when it starts, -1 when it ends.
        """
        self._busy += delta
        self._touch()

    def _touch(self) -> None:
        timeout = self.limits.idle_timeout
        if self._clock is None or timeout is None or self._lost:
            return
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(timeout)
        else:
            self._idle_call = self._clock.callLater(timeout, self._idle)

    def _cancel_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _idle(self) -> None:
        self._idle_call = None
        if (
            self._amp.answering
            or self._amp.outstanding()
            or self._busy
            or self._incoming
            or self._reading
            or self._sending
        ):
            self._touch()
            return
        log.info(
            "closing the idle connection of {peer} at {address}",
            peer=self.peer,
            address=self.address,
        )
        self.close()

    # -- receiving -------------------------------------------------------

    def _abort(self) -> None:
        # Drop the connection; whatever the peer sent after is ignored.
        self._aborted = True
        self.transport.abortConnection()

    def _bad_frame(self, why: str) -> None:
        log.warn(
            "dropping connection from {peer}: {why}",
            peer=self.peer or self.address,
            why=why,
        )
        self._abort()

    def dataReceived(self, data: bytes) -> None:
        view = memoryview(data)
        if self._idle_call is not None:
            self._touch()
        while view and not self._aborted:
            if self._need == 0:
                take = _HEADER_SIZE - len(self._header)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) < _HEADER_SIZE:
                    return
                kind, stream, length = _HEADER.unpack(self._header)
                self._header = b""
                limit = MAX_BOX_FRAME if kind == BOX else MAX_DATA_FRAME
                if kind > READ_DATA_Z or length > limit:
                    self._bad_frame(f"bad frame (kind {kind}, {length} bytes)")
                    return
                self._kind, self._stream = kind, stream
                if length == 0:
                    self._frame(b"")
                    continue
                self._need = length
            take = min(self._need, len(view))
            if take == self._need and not self._parts:
                piece = bytes(view[:take])
                self._need = 0
                view = view[take:]
                self._frame(piece)
                continue
            # A whole chunk of TLS plaintext inside a frame (most of a 1 MiB
            # data frame) is kept as it came, not copied.
            self._parts.append(data if take == len(data) else bytes(view[:take]))
            self._need -= take
            view = view[take:]
            if self._need == 0:
                payload = b"".join(self._parts)
                self._parts = []
                self._frame(payload)
            if self._lost:
                return

    def _frame(self, payload: bytes) -> None:
        kind = self._kind
        if kind == BOX:
            if self.peer is None:
                self._abort()
                return
            self._box_bytes += len(payload)
            if self._box_bytes > self.limits.max_box:
                self._bad_frame(f"an AMP box of more than {self.limits.max_box} bytes")
                return
            try:
                self.amp.dataReceived(payload)
            except Exception as e:
                # A box that is not a command, or answers a question we
                # never asked: the peer does not speak our protocol.
                self._bad_frame(f"bad AMP box: {e!r}")
        elif kind in (WRITE_DATA, WRITE_DATA_Z):
            self.bytes_received += len(payload)
            inbox = self._incoming.get(self._stream)
            if inbox is not None:
                inbox.put(payload, kind == WRITE_DATA_Z)
        elif kind == WRITE_END:
            inbox = self._incoming.pop(self._stream, None)
            if inbox is not None:
                inbox.close(
                    None
                    if payload == _END_OK
                    else Conflict("the sender aborted the write stream")
                )
        elif kind in (READ_DATA, READ_DATA_Z):
            self.bytes_received += len(payload)
            inbox = self._reading.get(self._stream)
            if inbox is not None:
                inbox.put(payload, kind == READ_DATA_Z)
        elif kind == READ_CANCEL:
            if self._stream in self._sending:
                self._cancelled.add(self._stream)

    # -- streams -----------------------------------------------------------

    def new_stream(self) -> int:
        """
        @return: a fresh stream id for a command this side calls.
        """
        stream = self._next_stream
        self._next_stream = (self._next_stream + 1) & 0xFFFFFFFF or 1
        return stream

    def open_reading(self, stream: int) -> Inbox:
        """
        Register the inbox of a command this side calls (Read, List),
        before calling it.

        @param stream: the stream id given to the command.
        @return: the inbox; close it when the command answers.
        """
        inbox = Inbox(self)
        if self._lost:
            inbox.close(self._lost_error())
        else:
            self._reading[stream] = inbox
        return inbox

    def close_reading(self, stream: int, error: BaseException | None = None) -> None:
        """
        The command of a reading stream answered: end its inbox.

        @param error: the command's error, if it failed.
        """
        inbox = self._reading.pop(stream, None)
        if inbox is not None:
            inbox.close(error)

    def cancel_reading(self, stream: int) -> None:
        """
        Abandon a reading stream: ask the responder to stop, drop the data.
        """
        inbox = self._reading.get(stream)
        if inbox is not None:
            inbox.discard()
            self.send_frame(READ_CANCEL, stream, b"")

    def open_outgoing(self, stream: int) -> None:
        """
        Register a stream this side sends the data of (Read, List,
        ReadFiles, Diff the other side called): done by the responder as
        the command is dispatched, ended with L{forget_stream}.

        @raise BadRequest: if the stream id is out of range.
        """
        check_stream(stream)
        self._sending.add(stream)

    def open_incoming(self, stream: int) -> Inbox:
        """
        Register the inbox of a Write stream the other side called; done by
        the responder synchronously, as the command is dispatched.

        @raise BadRequest: if the stream id is in use or out of range.
        """
        check_stream(stream)
        if stream in self._incoming:
            raise BadRequest(f"stream {stream} is already in use")
        inbox = Inbox(self)
        self._incoming[stream] = inbox
        return inbox

    def close_incoming(self, stream: int) -> None:
        """
        The responder is done with a Write stream: drop whatever else comes.
        """
        inbox = self._incoming.pop(stream, None)
        if inbox is not None:
            inbox.discard()

    def is_cancelled(self, stream: int) -> bool:
        """
        @return: whether the caller cancelled this Read stream; forgets it.
        """
        if stream in self._cancelled:
            self._cancelled.discard(stream)
            return True
        return False

    # -- sending -----------------------------------------------------------

    def send_frame(self, kind: int, stream: int, payload: bytes) -> None:
        """
        Send one frame (dropped silently if the connection is lost).
        """
        if self._lost:
            return
        transport = self.transport
        if len(payload) <= 4096:
            transport.write(_HEADER.pack(kind, stream, len(payload)) + payload)
        else:
            transport.write(_HEADER.pack(kind, stream, len(payload)))
            transport.write(payload)

    def send_data(self, kind: int, stream: int, data: bytes) -> None:
        """
        Send a chunk of a stream, split into frames of at most
        L{MAX_DATA_FRAME} bytes.
        """
        self.bytes_sent += len(data)
        if len(data) <= MAX_DATA_FRAME:
            self.send_frame(kind, stream, data)
            return
        view = memoryview(data)
        for offset in range(0, len(data), MAX_DATA_FRAME):
            self.send_frame(kind, stream, bytes(view[offset : offset + MAX_DATA_FRAME]))

    async def send_chunk(self, kind: int, stream: int, data: bytes) -> None:
        """
        Send a chunk of a stream (C{WRITE_DATA} or C{READ_DATA}),
        compressed in a thread if this connection compresses and the
        chunk shrinks; a stream whose chunks do not shrink is no longer
        compressed.

        @param kind: C{WRITE_DATA} or C{READ_DATA}.
        """
        key = (kind, stream)
        if (
            not self.compression
            or self.run_in_thread is None
            or len(data) < COMPRESS_MIN
            or len(data) > MAX_DATA_FRAME
            or self._misses.get(key, 0) >= COMPRESS_MISSES
        ):
            self.send_data(kind, stream, data)
            return
        packed = await self.run_in_thread(compress, data, self.compression_level)
        if len(packed) * 10 > len(data) * 9:
            self._misses[key] = self._misses.get(key, 0) + 1
            self.send_data(kind, stream, data)
            return
        self.bytes_sent += len(data)
        self.compressed_saved += len(data) - len(packed)
        zkind = WRITE_DATA_Z if kind == WRITE_DATA else READ_DATA_Z
        self.send_frame(zkind, stream, packed)

    def forget_stream(self, kind: int, stream: int) -> None:
        """
        Drop what L{send_chunk} and L{open_outgoing} remember of a stream
        that ended.
        """
        self._misses.pop((kind, stream), None)
        if kind == READ_DATA:
            self._sending.discard(stream)
            self._cancelled.discard(stream)

    def end_write(self, stream: int, ok: bool) -> None:
        """
        End a Write stream this side called.
        """
        self.send_frame(WRITE_END, stream, _END_OK if ok else _END_ABORT)

    def writable(self) -> Deferred[None] | None:
        """
        @return: C{None} if data may be sent now, else a Deferred that
            fires when the transport wants more, or fails with
            L{NetworkError} when the connection is lost (so that senders
            stop instead of producing data nobody will receive).
        """
        if self._lost:
            return fail(self._lost_error())
        if not self._paused:
            return None
        d: Deferred[None] = Deferred()
        self._writable.append(d)
        return d

    def _wake_writers(self) -> None:
        waiters, self._writable = self._writable, []
        for d in waiters:
            d.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake_writers()

    def stopProducing(self) -> None:
        self._paused = True

    # -- received data held ------------------------------------------------

    @property
    def held(self) -> int:
        """
        Bytes of received data held now, in inboxes and by responders.
        """
        return self._held

    def hold(self, size: int) -> None:
        """
        Count received bytes held (positive) or released (negative): an
        inbox does it for its chunks; a responder that gathers a stream in
        memory before acting on it (WriteFiles, ApplyDelta) does it for
        what it gathered, until it is done.
        """
        self._held += size
        self._sync_reading()

    def inbox_full(self, delta: int) -> None:
        """
        Count inboxes over their high-water mark.
        """
        self._full_inboxes += delta
        self._sync_reading()

    def _sync_reading(self) -> None:
        pause = self._full_inboxes > 0 or self._held > self.limits.max_held
        if pause == self._reading_paused or self._lost or self.transport is None:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()


def _fresh(reason: Failure) -> BaseException:
    """
    @return: a new exception like the one of C{reason}, without its
        traceback: raised into one waiter only.
    """
    value = reason.value
    try:
        fresh = copy.copy(value)
    except Exception:
        fresh = None
    return fresh if isinstance(fresh, BaseException) else NetworkError(_reason(reason))


def _reason(reason: Failure) -> str:
    value = reason.value
    text = str(value) or type(value).__name__
    return text
