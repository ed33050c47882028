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
payloads at most L{MAX_BOX_FRAME}; a larger frame or an unknown kind drops
the connection.  Data for an unknown stream id is discarded (the stream
was abandoned, e.g. because its command failed).

Back-pressure: the connection registers as a streaming producer on its
transport; senders of data wait on L{Connection.writable} while the
transport is paused.  Received data waits in an L{Inbox} per stream; while
any inbox holds more than L{Inbox.HIGH} bytes, the connection stops reading
from its transport, so neither side buffers more than a bounded window.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import zstandard
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from realize.errors import BadRequest, Conflict, NetworkError
from realize.interfaces import RunInThread
from realize.model import CHUNK_SIZE, FileInfo, PeerId, clamp_mtime
from realize.net.tls import auth_log, fingerprint, peer_spki

__all__ = [
    "BOX",
    "READ_CANCEL",
    "READ_DATA",
    "READ_DATA_Z",
    "WRITE_DATA",
    "WRITE_DATA_Z",
    "WRITE_END",
    "Connection",
    "Inbox",
    "decode_entries",
    "encode_entries",
]

log = Logger()

BOX = 0
WRITE_DATA = 1
WRITE_END = 2
READ_DATA = 3
READ_CANCEL = 4
WRITE_DATA_Z = 5
READ_DATA_Z = 6

#: Compress a data chunk only if it is at least this long.
COMPRESS_MIN = 4096

#: Give up compressing a stream after this many chunks that did not shrink
#: by at least a tenth (random or already compressed data).
COMPRESS_MISSES = 2

_compressors = threading.local()


def compress(data: bytes, level: int = 3) -> bytes:
    """
    Compress a chunk with zstd (call from a thread).

    @param data: the chunk.
    @param level: zstd level.
    @return: one zstd frame that declares its content size.
    """
    compressor = getattr(_compressors, "compressor", None)
    if compressor is None or getattr(_compressors, "level", None) != level:
        compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
        _compressors.compressor = compressor
        _compressors.level = level
    return bytes(compressor.compress(data))


def decompress(data: bytes) -> bytes:
    """
    Decompress a chunk made by L{compress}.

    @raise BadRequest: if it is not one zstd frame of at most
        L{MAX_DATA_FRAME} bytes (a peer cannot make us allocate more).
    """
    try:
        size = zstandard.frame_content_size(data)
        if size < 0 or size > MAX_DATA_FRAME:
            raise BadRequest(f"compressed frame of {size} bytes refused")
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as e:
        raise BadRequest(f"malformed compressed frame: {e}") from None
    return bytes(out)


_HEADER = struct.Struct("!BII")
_HEADER_SIZE = _HEADER.size

#: Largest data frame payload, in bytes.
MAX_DATA_FRAME = CHUNK_SIZE

#: Largest box frame payload, in bytes (an AMP box carrying the Merkle
#: leaves of a 2 TiB file).
MAX_BOX_FRAME = 64 << 20

_END_OK = b"\x00"
_END_ABORT = b"\x01"

_ENTRY = struct.Struct("!HQqB")


def check_stream(stream: int) -> None:
    """
    @raise BadRequest: if a stream id from the wire does not fit a frame
        header (4 bytes, unsigned).
    """
    if not 0 <= stream <= 0xFFFFFFFF:
        raise BadRequest(f"stream id {stream} is out of range")


def encode_entries(
    entries: Iterable[FileInfo], limit: int = CHUNK_SIZE
) -> Iterable[bytes]:
    """
    Encode file entries for the data frames of a List.

    Each entry is C{path length (u16) | size (u64) | mtime ns (i64) | flags
    (u8, bit 0: partial) | path (UTF-8)}.

    @param entries: the entries.
    @param limit: largest chunk, in bytes.
    @return: chunks of whole entries, each at most C{limit} bytes.
    """
    parts: list[bytes] = []
    size = 0
    for entry in entries:
        path = entry.path.encode("utf-8")
        encoded = (
            _ENTRY.pack(
                len(path),
                entry.size,
                clamp_mtime(entry.mtime_ns),
                entry.partial,
            )
            + path
        )
        if size + len(encoded) > limit and parts:
            yield b"".join(parts)
            parts, size = [], 0
        parts.append(encoded)
        size += len(encoded)
    if parts:
        yield b"".join(parts)


def decode_entries(chunk: bytes) -> list[FileInfo]:
    """
    Decode a chunk made by L{encode_entries}.

    @param chunk: the bytes of whole entries.
    @return: the entries.
    @raise BadRequest: if the chunk is malformed.
    """
    entries = []
    offset = 0
    end = len(chunk)
    try:
        while offset < end:
            length, size, mtime_ns, flags = _ENTRY.unpack_from(chunk, offset)
            offset += _ENTRY.size
            if offset + length > end:
                raise BadRequest("truncated file entry in listing")
            path = chunk[offset : offset + length].decode("utf-8")
            offset += length
            entries.append(FileInfo(path, size, mtime_ns, bool(flags & 1)))
    except (struct.error, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed file entry in listing: {e}") from None
    return entries


class Inbox:
    """
    Chunks received for one stream, waiting for their consumer: an async
    iterator of C{bytes} that ends at the end of the stream and raises
    the stream's error if it failed.

    @cvar HIGH: bytes held above which the connection stops reading.
    @cvar LOW: bytes held below which it reads again.
    """

    HIGH = 4 * CHUNK_SIZE
    LOW = 2 * CHUNK_SIZE

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._chunks: deque[tuple[bytes, bool]] = deque()
        self._held = 0
        self._over = False
        self._waiter: Deferred[None] | None = None
        self._closed = False
        self._error: BaseException | None = None
        self.received = 0

    def put(self, chunk: bytes, compressed: bool = False) -> None:
        """
        Add a chunk received from the network.

        @param compressed: the chunk is compressed (L{compress}); it is
            decompressed (in a thread) when consumed.
        """
        if self._closed:
            return
        self._chunks.append((chunk, compressed))
        self._held += len(chunk)
        self.received += len(chunk)
        if not self._over and self._held > self.HIGH:
            self._over = True
            self._connection._inbox_full(+1)
        self._wake()

    def close(self, error: BaseException | None = None) -> None:
        """
        End the stream, after the chunks already held.

        @param error: if given, the consumer gets it after those chunks.
        """
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._wake()

    def discard(self) -> None:
        """
        Drop the stream: free what is held and ignore what comes.
        """
        self._chunks.clear()
        self._held = 0
        self._release()
        if not self._closed:
            self.close(Conflict("stream discarded"))

    def _release(self) -> None:
        if self._over:
            self._over = False
            self._connection._inbox_full(-1)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = Deferred()
            await self._waiter
        chunk, compressed = self._chunks.popleft()
        self._held -= len(chunk)
        if self._over and self._held < self.LOW:
            self._release()
        if compressed:
            run = self._connection.run_in_thread
            if run is None:
                return decompress(chunk)
            return await run(decompress, chunk)
        return chunk


class _AMP(amp.AMP):
    """
    AMP for which a command sent without asking for an answer that fails
    with a known error drops the connection with a warning, not with the
    traceback of an unhandled error.
    """

    def __init__(self, locator: amp.CommandLocator) -> None:
        super().__init__(locator=locator)  # type: ignore[no-untyped-call]

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
    @ivar peer: the peer's id once the TLS handshake completed and its key
        was found in the config; C{None} before.
    @ivar handshake: fires with the peer id when the handshake completed,
        or fails with the reason the connection was lost before that.
    @ivar bytes_received: data bytes received in data frames.
    @ivar bytes_sent: data bytes sent in data frames.
    """

    #: The TLS protocol under us: an ITransport that is also a producer
    #: and consumer (pause/resume reading, register a producer, abort).
    transport: Any

    def __init__(
        self,
        locator: amp.CommandLocator,
        lookup: Callable[[bytes], PeerId | None],
        run_in_thread: RunInThread | None = None,
    ) -> None:
        self.amp: amp.AMP = _AMP(locator=locator)
        #: Runs compression and decompression off the reactor thread.
        self.run_in_thread = run_in_thread
        self.locator = locator
        self._lookup = lookup
        self.peer: PeerId | None = None
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
        self._lost = False
        self._lost_error: NetworkError | None = None
        self._aborted = False
        self._registered = False
        #: Whether this side compresses the data it sends (SetCompression).
        self.compression = False
        self.compression_level = 3
        #: Bytes compression spared sending.
        self.compressed_saved = 0
        self._misses: dict[tuple[int, int], int] = {}

    # -- connection lifecycle -------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "?")
        port = getattr(peer, "port", "?")
        self.address = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        self.transport.registerProducer(self, True)
        self._registered = True
        self.amp.makeConnection(_BoxTransport(self))

    def handshakeCompleted(self) -> None:
        spki = peer_spki(self.transport)
        peer = self._lookup(spki) if spki is not None else None
        if peer is None:
            # Cannot happen with the verify callbacks of realize.net.tls.
            auth_log.error(
                "TLS handshake with {address} completed without a known key",
                address=self.address,
                accepted=False,
            )
            self._abort()
            return
        self.peer = peer
        auth_log.info(
            "authenticated {peer} at {address} ({fingerprint})",
            peer=peer,
            address=self.address,
            fingerprint=fingerprint(spki or b""),
            accepted=True,
        )
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

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        self._lost = True
        error = NetworkError(
            f"connection to {self.peer or self.address} lost: {_reason(reason)}"
        )
        self._lost_error = error
        for inbox in [*self._incoming.values(), *self._reading.values()]:
            inbox.close(error)
        self._incoming.clear()
        self._reading.clear()
        waiters, self._writable = self._writable, []
        for d in waiters:
            d.errback(error)
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.amp.connectionLost(reason)
        self.lost.callback(None)

    # -- receiving -------------------------------------------------------

    def _abort(self) -> None:
        # Drop the connection; whatever the peer sent after is ignored.
        self._aborted = True
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        view = memoryview(data)
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
                    log.warn(
                        "dropping connection from {peer}: bad frame "
                        "(kind {kind}, {length} bytes)",
                        peer=self.peer or self.address,
                        kind=kind,
                        length=length,
                    )
                    self._abort()
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
            self._parts.append(bytes(view[:take]))
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
            try:
                self.amp.dataReceived(payload)
            except Exception as e:
                # A box that is not a command, or answers a question we
                # never asked: the peer does not speak our protocol.
                log.warn(
                    "dropping connection from {peer}: bad AMP box: {error!r}",
                    peer=self.peer,
                    error=e,
                )
                self._abort()
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
            inbox.close(NetworkError("connection lost"))
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
        if self._lost_error is not None:
            return fail(self._lost_error)
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

    def _inbox_full(self, delta: int) -> None:
        before = self._full_inboxes
        self._full_inboxes += delta
        if self._lost or self.transport is None:
            return
        if before == 0 and self._full_inboxes > 0:
            self.transport.pauseProducing()
        elif before > 0 and self._full_inboxes == 0:
            self.transport.resumeProducing()


def _reason(reason: Failure) -> str:
    value = reason.value
    text = str(value) or type(value).__name__
    return text
