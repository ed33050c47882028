"""
File hashes: a Merkle tree over BLAKE3 leaves (DESIGN.md section 7).

A file is cut into leaves of L{LEAF_SIZE} bytes (the last one may be
shorter).  The tree has the shape of RFC 6962 section 2.1 (Certificate
Transparency), with BLAKE3 in place of SHA-256 and the same domain
separation between leaves and inner nodes:

    - leaf hash: C{BLAKE3(0x00 || leaf bytes)}
    - node hash: C{BLAKE3(0x01 || left || right)}, where for C{n > 1}
      leaves the left subtree holds the largest power of two C{< n}
    - the root of an empty file is C{BLAKE3("")}

The root is the file's digest and blob identifier, shown as
C{blake3m:<hex>}.  Leaves can be computed for any leaf-aligned range, so a
partial file yields a partial list of leaves and comparing two lists
pinpoints the differing ranges.

Everything here is pure and blocking: call it from a thread.  BLAKE3
releases the GIL while hashing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from blake3 import blake3

__all__ = [
    "DIGEST_SIZE",
    "EMPTY_ROOT",
    "LEAF_SIZE",
    "MAX_HASH_LEAVES",
    "LeafHasher",
    "format_hash",
    "hash_fd_range",
    "leaf_hash",
    "leaf_range",
    "merkle_root",
    "zero_leaf_hash",
]

#: Bytes per Merkle leaf.
LEAF_SIZE = 1 << 20

#: Bytes per digest (leaf, node, root).
DIGEST_SIZE = 32

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

#: Root of the empty file.
EMPTY_ROOT: bytes = blake3(b"").digest()

#: Most leaves one hash computation (a Hash command) returns: 32 MiB of
#: digests, for 1 TiB of file.  A Hash answer travels in one AMP box of at
#: most 64 MiB, and the leaves are held in memory while it is built, so
#: larger ranges are hashed in pieces.
MAX_HASH_LEAVES = 1 << 20


#: Leaves at most this long are hashed in one call (L{leaf_hash}).
_SMALL_LEAF = 64 << 10


def leaf_hash(data: bytes | bytearray | memoryview) -> bytes:
    """
    Hash one leaf.

    @param data: the leaf's bytes, at most L{LEAF_SIZE}.
    @return: the 32-byte leaf digest C{BLAKE3(0x00 || data)}.
    """
    if len(data) <= _SMALL_LEAF:
        # One call on a copy with the prefix: C{update} costs about 3 us
        # more (4 KiB: 2 us against 4, issue 9's first indexing of small
        # files); it releases the GIL, which only pays on large leaves.
        return blake3(_LEAF_PREFIX + data).digest()
    hasher = blake3(_LEAF_PREFIX)
    hasher.update(data)
    return hasher.digest()


_ZERO_LEAF = bytes(LEAF_SIZE)
_FULL_ZERO_LEAF_HASH = blake3(_LEAF_PREFIX + _ZERO_LEAF).digest()


def zero_leaf_hash(length: int = LEAF_SIZE) -> bytes:
    """
    Hash of a leaf of zero bytes, as a hole of a sparse file reads: the
    full leaf's digest is computed once, so that hashing a hole costs no
    reading.

    @param length: the leaf's length in bytes, 1 to L{LEAF_SIZE}.
    @return: C{leaf_hash(bytes(length))}.
    """
    if length == LEAF_SIZE:
        return _FULL_ZERO_LEAF_HASH
    return leaf_hash(memoryview(_ZERO_LEAF)[:length])


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """
    Root of the tree over a file's leaves (RFC 6962 section 2.1 shape).

    @param leaves: all leaf digests of a file, in order.
    @return: the 32-byte root; L{EMPTY_ROOT} for no leaves.
    """
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    split = 1 << ((n - 1).bit_length() - 1)
    return blake3(
        _NODE_PREFIX + merkle_root(leaves[:split]) + merkle_root(leaves[split:])
    ).digest()


def format_hash(root: bytes) -> str:
    """
    @param root: a Merkle root.
    @return: C{blake3m:<hex>}.
    """
    return f"blake3m:{root.hex()}"


def leaf_range(index: int, size: int) -> tuple[int, int]:
    """
    Byte range of a leaf.

    @param index: leaf index.
    @param size: file size in bytes.
    @return: C{(start, end)} in bytes, end exclusive.
    """
    start = index * LEAF_SIZE
    return start, min(start + LEAF_SIZE, size)


def align_down(offset: int) -> int:
    """
    @param offset: a byte offset.
    @return: the start of the leaf holding C{offset}.
    """
    return offset - offset % LEAF_SIZE


class LeafHasher:
    """
    Incremental leaf hashing of a byte stream that starts on a leaf
    boundary: feed bytes with L{update}, take the leaves with L{finish}.

    Feeding data in chunks of L{LEAF_SIZE} aligned on leaves costs no
    copy.
    """

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self._hasher = blake3(_LEAF_PREFIX)
        self._filled = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """
        @param data: the next bytes of the stream.
        """
        view = memoryview(data)
        while view:
            take = min(len(view), LEAF_SIZE - self._filled)
            self._hasher.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == LEAF_SIZE:
                self.leaves.append(self._hasher.digest())
                self._hasher = blake3(_LEAF_PREFIX)
                self._filled = 0

    def update_zeros(self, length: int) -> None:
        """
        Feed C{length} zero bytes (a hole of a sparse file) without reading
        or hashing them where they fill whole leaves: those get the
        precomputed digest of L{zero_leaf_hash}.

        @param length: bytes of zeros.
        """
        if self._filled and length:
            take = min(length, LEAF_SIZE - self._filled)
            self.update(memoryview(_ZERO_LEAF)[:take])
            length -= take
        whole, length = divmod(length, LEAF_SIZE)
        self.leaves.extend([_FULL_ZERO_LEAF_HASH] * whole)
        if length:
            self.update(memoryview(_ZERO_LEAF)[:length])

    def finish(self) -> list[bytes]:
        """
        @return: the leaves of everything fed, the last one short if the
            stream did not end on a leaf boundary.
        """
        if self._filled:
            self.leaves.append(self._hasher.digest())
            self._hasher = blake3(_LEAF_PREFIX)
            self._filled = 0
        return self.leaves


def read_range(
    fd: int, start: int, end: int, chunk: int = LEAF_SIZE
) -> Iterator[bytes]:
    """
    Read a byte range of an open file in chunks, sequentially.

    @param fd: a file descriptor open for reading.
    @param start: first byte.
    @param end: end of the range (exclusive); reading stops early at end of
        file.
    @param chunk: bytes per chunk.
    @return: an iterator of chunks (bytes), each at most C{chunk} long; the
        chunks are cut on multiples of C{chunk} from C{start}.
    """
    offset = start
    while offset < end:
        data = os.pread(fd, min(chunk, end - offset), offset)
        if not data:
            return
        yield data
        offset += len(data)


def hash_fd_range(fd: int, start: int, end: int) -> list[bytes]:
    """
    Leaves of a byte range of an open file.

    @param fd: a file descriptor open for reading.
    @param start: first byte, a multiple of L{LEAF_SIZE}.
    @param end: end of the range (exclusive); clipped to the file's size.
    @return: the leaf digests of C{[start, min(end, size))}, the last one
        short if the range ends inside a leaf.
    @raise ValueError: if C{start} is not leaf-aligned.
    @raise OSError: on a read error.
    """
    if start % LEAF_SIZE:
        raise ValueError(f"hash range start {start} is not leaf-aligned")
    buffer = bytearray(LEAF_SIZE)
    view = memoryview(buffer)
    leaves = []
    offset = start
    while offset < end:
        want = min(LEAF_SIZE, end - offset)
        got = 0
        while got < want:
            n = os.preadv(fd, [view[got:want]], offset + got)
            if n == 0:
                break
            got += n
        if got == 0:
            break
        leaves.append(leaf_hash(view[:got]))
        offset += got
        if got < want:
            break
    return leaves
