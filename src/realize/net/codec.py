"""
Encodings of the wire that are not AMP's: zstd-compressed data chunks, the
file entries of a listing, Merkle leaf lists, and the packing of small
files into calls and frames.

Pure functions; the compression ones run in threads (zstd releases the
GIL) and import C{zstandard} when first called: a connection that does
not compress (the default) does not pay for loading it.  Every decoder
validates what it is given and raises L{BadRequest} (from a peer) or
L{IOFailure} (an answer we cannot use) naming the problem.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from realize.errors import BadRequest, IOFailure, RealizeError
from realize.hashing import DIGEST_SIZE
from realize.model import (
    CHUNK_SIZE,
    NOTIFICATION_KINDS,
    ArenaName,
    FileInfo,
    Hole,
    Notification,
    NotificationKind,
    check_notification,
    clamp_mtime,
)

__all__ = [
    "BATCH_CALL_COST",
    "BATCH_CALL_FILES",
    "COMPRESS_MIN",
    "COMPRESS_MISSES",
    "MAX_DATA_FRAME",
    "MAX_PEER_COMPRESSION_LEVEL",
    "SparseDecoder",
    "SparseEncoder",
    "batches",
    "compress",
    "decode_entries",
    "decode_flags",
    "decode_notifications",
    "decompress",
    "encode_entries",
    "encode_flags",
    "encode_hole",
    "encode_notifications",
    "entry_cost",
    "join_frames",
    "split_leaves",
]

T = TypeVar("T")

#: Largest data frame payload, in bytes, decompressed.
MAX_DATA_FRAME = CHUNK_SIZE

#: Compress a data chunk only if it is at least this long.
COMPRESS_MIN = 4096

#: Give up compressing a stream after this many chunks that did not shrink
#: by at least a tenth (random or already compressed data).
COMPRESS_MISSES = 2

#: Highest zstd level a peer may make us compress with (SetCompression):
#: level 19 costs about 40 times the CPU of level 1 for a few percent less
#: data, and the compressing side is ours.
MAX_PEER_COMPRESSION_LEVEL = 9

_compressors = threading.local()


def compress(data: bytes, level: int = 3) -> bytes:
    """
    Compress a chunk with zstd (call from a thread).

    @param data: the chunk.
    @param level: zstd level.
    @return: one zstd frame that declares its content size.
    """
    import zstandard

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
    import zstandard

    try:
        size = zstandard.frame_content_size(data)
        if size < 0 or size > MAX_DATA_FRAME:
            raise BadRequest(f"compressed frame of {size} bytes refused")
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as e:
        raise BadRequest(f"malformed compressed frame: {e}") from None
    return bytes(out)


_ENTRY = struct.Struct("!HQqB")


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


def split_leaves(data: bytes) -> tuple[bytes, ...]:
    """
    Split the concatenated Merkle leaves of an answer.

    @param data: leaves of L{DIGEST_SIZE} bytes each, end to end.
    @return: the leaves.
    @raise IOFailure: if the length is not a multiple of the digest size.
    """
    if len(data) % DIGEST_SIZE:
        raise IOFailure(f"malformed leaf list of {len(data)} bytes")
    return tuple(data[i : i + DIGEST_SIZE] for i in range(0, len(data), DIGEST_SIZE))


#: Most files per batch call, and most bytes of the records describing
#: them (the daemon refuses batches over 1,024 files or 16 MiB).
BATCH_CALL_FILES = 512
BATCH_CALL_COST = 1 << 20


def entry_cost(path: str) -> int:
    """
    @return: a generous estimate of the bytes a batch entry for C{path}
        takes in its records (lengths, numbers, a 32-byte root).
    """
    return 64 + len(path.encode("utf-8", "replace"))


def batches(items: Sequence[T], cost: Callable[[T], int]) -> list[Sequence[T]]:
    """
    Split a batch into calls that fit: at most L{BATCH_CALL_FILES} items
    and L{BATCH_CALL_COST} bytes of records each.

    @param cost: the bytes of records an item takes (L{entry_cost}).
    @return: consecutive slices of C{items}, in order.
    """
    parts: list[Sequence[T]] = []
    start = 0
    total = 0
    for index, item in enumerate(items):
        item_cost = cost(item)
        if index > start and (
            index - start >= BATCH_CALL_FILES or total + item_cost > BATCH_CALL_COST
        ):
            parts.append(items[start:index])
            start, total = index, 0
        total += item_cost
    if start < len(items):
        parts.append(items[start:])
    return parts


def encode_flags(flags: Sequence[bool]) -> bytes:
    """
    Pack one bit per item of a batch (bit C{i % 8} of byte C{i // 8} for
    item C{i}), e.g. which files of a DeleteFiles have a partial file.
    """
    packed = bytearray(-(-len(flags) // 8))
    for index, flag in enumerate(flags):
        if flag:
            packed[index >> 3] |= 1 << (index & 7)
    return bytes(packed)


def decode_flags(data: bytes, count: int) -> list[bool]:
    """
    Unpack what L{encode_flags} packed for C{count} items.

    @raise BadRequest: if C{data} does not have the length C{count} needs.
    """
    if len(data) != -(-count // 8):
        raise BadRequest(f"{len(data)} bytes of flags for {count} items")
    return [bool(data[index >> 3] & (1 << (index & 7))) for index in range(count)]


def join_frames(contents: Sequence[bytes | memoryview]) -> list[bytes]:
    """
    Concatenate small contents into chunks of about L{MAX_DATA_FRAME}
    bytes (a larger single content stays whole: the sender splits it into
    frames).
    """
    frames: list[bytes] = []
    pending: list[bytes | memoryview] = []
    size = 0
    for content in contents:
        if size + len(content) > MAX_DATA_FRAME and pending:
            frames.append(b"".join(pending))
            pending, size = [], 0
        pending.append(content)
        size += len(content)
    if size:
        frames.append(b"".join(pending))
    return frames


#: The length of a hole in a sparse data stream: 8 bytes, big-endian.
_HOLE_LENGTH = struct.Struct("!Q")


class SparseEncoder:
    """
    The data chunks of a sparse stream (a Read or a Write with C{sparse}):
    its C{bytes} as they are, each L{Hole} as two chunks, an empty one
    (data chunks are never empty) and the hole's length (8 bytes,
    big-endian).  The zeros themselves are not sent.
    """

    def __init__(self, pieces: AsyncIterable[bytes | Hole]) -> None:
        self._pieces = aiter(pieces)
        self._length: bytes | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._length is not None:
            length, self._length = self._length, None
            return length
        piece = await self._pieces.__anext__()
        if isinstance(piece, Hole):
            self._length = _HOLE_LENGTH.pack(piece.length)
            return b""
        return piece


def encode_hole(length: int) -> tuple[bytes, bytes]:
    """
    @return: the two chunks of a hole of C{length} bytes in a sparse
        stream (L{SparseEncoder}).
    """
    return b"", _HOLE_LENGTH.pack(length)


class SparseDecoder:
    """
    The pieces of a sparse stream from its data chunks: L{SparseEncoder}
    undone.

    @ivar error: the error a malformed stream raises: L{BadRequest} for
        data a peer sends us (Write), L{IOFailure} for an answer we asked
        for (Read).
    """

    def __init__(
        self, chunks: AsyncIterable[bytes], error: type[RealizeError] = BadRequest
    ) -> None:
        self._chunks = aiter(chunks)
        self.error = error

    def __aiter__(self) -> AsyncIterator[bytes | Hole]:
        return self

    async def __anext__(self) -> bytes | Hole:
        chunk = await self._chunks.__anext__()
        if chunk:
            return chunk
        try:
            length = await self._chunks.__anext__()
        except StopAsyncIteration:
            raise self.error("sparse stream ended inside a hole") from None
        if len(length) != _HOLE_LENGTH.size:
            raise self.error(f"hole length of {len(length)} bytes in a sparse stream")
        (size,) = _HOLE_LENGTH.unpack(length)
        if not 0 < size < 1 << 63:
            raise self.error(f"hole of {size} bytes in a sparse stream")
        return Hole(size)


_OPTIONAL = ("path", "size", "mtime_ns", "hash", "old_hash", "uuid")


def encode_notifications(notifications: Sequence[Notification]) -> list[dict[str, Any]]:
    """
    The records of notifications for a Notifications answer: each field
    that is C{None} is marked absent by a clear bit in C{present} (bit 0:
    path, 1: size, 2: mtime_ns, 3: hash, 4: old_hash, 5: uuid) and sent as
    an empty or zero value.

    @return: one record per notification (L{realize.net.commands.
        NOTIFICATION_FIELDS}).
    """
    records = []
    for n in notifications:
        present = 0
        for bit, name in enumerate(_OPTIONAL):
            if getattr(n, name) is not None:
                present |= 1 << bit
        records.append(
            {
                "kind": n.kind,
                "position": n.position,
                "present": present,
                "path": n.path or "",
                "size": n.size or 0,
                "mtime_ns": n.mtime_ns or 0,
                "hash": n.hash or b"",
                "old_hash": n.old_hash or b"",
                "uuid": n.uuid or "",
            }
        )
    return records


def decode_notifications(
    arena: ArenaName, records: Sequence[dict[str, Any]]
) -> list[Notification]:
    """
    Notifications from the records of a Notifications answer, each
    validated like a command's arguments (a peer's notifications are
    input too: L{realize.model.check_notification}).

    @param arena: the arena subscribed to (the records do not repeat it).
    @raise BadRequest: if a record is malformed or a notification invalid.
    @raise InvalidPath: if a notification's path is invalid.
    """
    notifications = []
    for record in records:
        kind = record["kind"]
        if kind not in NOTIFICATION_KINDS:
            raise BadRequest(f"unknown notification kind {kind!r}")
        present = record["present"]
        values = {
            name: record[name] if present & (1 << bit) else None
            for bit, name in enumerate(_OPTIONAL)
        }
        notification = Notification(
            cast(NotificationKind, kind), arena, record["position"], **values
        )
        notifications.append(check_notification(notification))
    return notifications
