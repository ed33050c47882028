"""
rsync-style binary deltas: signature, diff and apply.

This is the algorithm of Tridgell and Mackerras, I{The rsync algorithm}
(ANU TR-CS-96-05, 1996).  The side holding an old version of a file (the
I{basis}) sends a L{signature} of it: for each block of C{block_size} bytes
(the last block may be shorter) a 32-bit weak rolling checksum and a strong
hash.  The side holding the new version (the I{target}) runs L{diff}: it
looks for every basis block at every offset of the target and describes the
target as a sequence of COPY (a run of basis bytes) and LITERAL (new bytes)
operations.  The first side runs L{apply} on its basis to rebuild the target.

All functions here are pure and release no locks of their own: they are
meant to run in a worker thread, never on the reactor thread.

Weak checksum
=============

The weak checksum of a block M{x_0 .. x_{L-1}} of C{L} bytes is rsync's:
M{a = sum(x_i) mod 2**16}, M{b = sum((L - i) * x_i) mod 2**16},
M{weak = a | b << 16}.  It can be rolled one byte forward in constant time;
L{diff} instead computes it for a whole window of offsets at once from
prefix sums (numpy), which is what rolling amounts to.

The strong hash is the 16-byte xxh3_128 digest (seed 0, canonical big-endian
byte order, as returned by C{xxhash.xxh3_128_digest}).  It is not a
cryptographic hash: a delta is always checked afterwards against the file's
BLAKE3 Merkle root, and a (vanishingly unlikely) collision only makes that
check fail.

Formats
=======

All integers are unsigned and B{big-endian} (network byte order).

Signature::

    offset  size  field
    0       1     version, 1
    1       1     kind, 0x53 ("S")
    2       4     block size in bytes, 512 .. 1048576
    6       8     basis length in bytes
    14      20*N  N = ceil(basis length / block size) entries, in block order:
                    4   weak checksum (a | b << 16) of the block
                    16  xxh3_128 digest of the block

Delta::

    offset  size  field
    0       1     version, 1
    1       1     kind, 0x44 ("D")
    2       8     target length in bytes
    10      ...   operations, until the end of the data:
                    COPY:    0x43 ("C"), basis offset (8), length (4)
                    LITERAL: 0x4C ("L"), length (4), then that many bytes

Operations append to the output in order; their lengths are never zero and
must add up to the target length.  L{diff} merges the copies of consecutive
basis blocks into one COPY.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import xxhash
from attrs import define, field, frozen

__all__ = [
    "BLOCK_SIZE",
    "CHECKS_PER_BLOCK",
    "MAX_BLOCK_SIZE",
    "MIN_BLOCK_SIZE",
    "DeltaFormatError",
    "DeltaStats",
    "Signature",
    "apply",
    "delta_stats",
    "diff",
    "is_identity",
    "parse_signature",
    "signature",
    "signature_basis_length",
    "weak_checksum",
]

Buffer = bytes | bytearray | memoryview

BLOCK_SIZE = 4096
"""Default block size in bytes, for signatures and deltas."""

MIN_BLOCK_SIZE = 512
"""Smallest block size, in bytes, that a signature may use."""

MAX_BLOCK_SIZE = 1 << 20
"""Largest block size, in bytes, that a signature may use."""

DEFAULT_MAX_LENGTH = 256 << 20
"""Default bound, in bytes, on the target length L{apply} will build."""

CHECKS_PER_BLOCK = 2
"""Strong digests L{diff} may compute to confirm weak-checksum hits, per
block length of target offsets passed (see L{_Checks})."""

VERSION = 1
SIGNATURE_KIND = 0x53
DELTA_KIND = 0x44
OP_COPY = 0x43
OP_LITERAL = 0x4C

_SIG_HEADER = struct.Struct(">BBIQ")
_DELTA_HEADER = struct.Struct(">BBQ")
_COPY = struct.Struct(">BQI")
_LITERAL = struct.Struct(">BI")
_COPY_ARGS = struct.Struct(">QI")
_LITERAL_ARGS = struct.Struct(">I")

_STRONG_SIZE = 16
_ENTRY_SIZE = 4 + _STRONG_SIZE
_ENTRY_DTYPE = np.dtype([("weak", ">u4"), ("strong", f"V{_STRONG_SIZE}")])

# Bytes of basis handled per numpy window by signature().
_SIGNATURE_WINDOW = 4 << 20
# Largest number of offsets diff() rolls over in one numpy window, unless
# the block size is larger.
_MAX_SCAN = 256 << 10
# Largest single COPY or LITERAL that diff() emits (fits the u32 length).
_MAX_OP_LENGTH = 1 << 30
# Multiplier (Knuth's golden ratio) hashing weak checksums into the filter.
_HASH_MULTIPLIER = 0x9E3779B1
_MAX_FILTER_BITS = 24

_strong_digest = xxhash.xxh3_128_digest


class DeltaFormatError(ValueError):
    """
    A signature or a delta is malformed, or does not fit the basis or the
    bounds it is used with.  The message says what is wrong and where.
    """


@define
class _Checks:
    """
    The strong digests L{diff} may compute to confirm weak-checksum hits:
    a credit of L{CHECKS_PER_BLOCK} digests per C{block_size} bytes of
    target offsets, plus as many to start with, spent as hits are checked.

    A weak checksum is easy to match on purpose (a signature of blocks
    whose weak checksum is 0 hits at every offset of a run of zeros), and
    each check hashes a whole block: without a bound, the search costs
    C{block_size} bytes of hashing per target byte (23 s for 2 MiB with
    1 MiB blocks).  With it, hits checked cost at most
    C{CHECKS_PER_BLOCK} bytes hashed per target byte, whatever the
    signature; hits beyond the credit are skipped (their bytes go as
    literals), which only costs delta size, never correctness.  Several
    blocks sharing a weak checksum cost nothing more: a hit is one digest,
    looked up among all blocks at once.

    @ivar block_size: the signature's block size in bytes.
    @ivar done: digests computed so far.
    """

    block_size: int
    done: int = 0

    def allowed(self, offset: int) -> bool:
        """
        @return: whether a hit at C{offset} may be checked now.
        """
        return self.done < CHECKS_PER_BLOCK * (offset + self.block_size) // (
            self.block_size
        )

    def next_allowed(self) -> int:
        """
        @return: the lowest offset at which the next check is allowed.
        """
        need = -(-(self.done + 1) * self.block_size // CHECKS_PER_BLOCK)
        return max(0, need - self.block_size)


@frozen(eq=False)
class _Lookup:
    """
    Tables L{diff} searches a signature's full blocks with.

    @ivar index: strong digest -> lowest index of a full block with it.
    @ivar weak_sorted: the distinct weak checksums of the full blocks, sorted.
    @ivar weak_filter: C{2**filter_bits} booleans, true at
        C{(weak * _HASH_MULTIPLIER mod 2**32) >> (32 - filter_bits)} for each
        full block's weak checksum: a quick first test before C{weak_sorted}.
    @ivar filter_bits: base-2 logarithm of the length of C{weak_filter}.
    """

    index: dict[bytes, int]
    weak_sorted: npt.NDArray[np.uint32]
    weak_filter: npt.NDArray[np.bool_]
    filter_bits: int


@frozen(eq=False)
class Signature:
    """
    A parsed, validated signature of a basis (see L{parse_signature}).

    @ivar block_size: block size in bytes.
    @ivar basis_length: length of the basis in bytes.
    @ivar weak: weak checksum of each block, shape C{(block_count,)}.
    @ivar strong: xxh3_128 digest (16 bytes) of each block, in block order.
    """

    block_size: int
    basis_length: int
    weak: npt.NDArray[np.uint32] = field(repr=False)
    strong: tuple[bytes, ...] = field(repr=False)
    _lookup: _Lookup = field(repr=False, alias="lookup")

    @property
    def block_count(self) -> int:
        """
        Number of blocks, the last one possibly short.
        """
        return len(self.strong)

    @property
    def full_blocks(self) -> int:
        """
        Number of blocks of exactly C{block_size} bytes.
        """
        return self.basis_length // self.block_size

    @property
    def tail_length(self) -> int:
        """
        Length in bytes of the short last block, 0 if there is none.
        """
        return self.basis_length % self.block_size


@frozen
class DeltaStats:
    """
    What a delta is made of, for metrics such as "bytes saved by the delta".

    @ivar copied_bytes: target bytes taken from the basis by COPY ops.
    @ivar literal_bytes: target bytes carried in the delta by LITERAL ops.
    @ivar ops: number of operations.
    @ivar delta_size: size of the delta itself in bytes, headers included.
    """

    copied_bytes: int
    literal_bytes: int
    ops: int
    delta_size: int


def _as_bytes_view(data: Buffer) -> memoryview:
    """
    View any buffer as a flat memoryview of unsigned bytes, without copying.

    @param data: a contiguous buffer.
    @return: a one-dimensional memoryview of format C{"B"}.
    """
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _check_block_size(block_size: int) -> None:
    """
    @raise ValueError: if C{block_size} is outside
        [L{MIN_BLOCK_SIZE}, L{MAX_BLOCK_SIZE}].
    """
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(
            f"block size {block_size} outside [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]"
        )


def _prefix_sums(
    data: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """
    First and second prefix sums of C{data}, modulo 2**32.

    @param data: C{n} bytes.
    @return: C{(P, Q)}, each of shape C{(n + 1,)}, with
        C{P[k] = sum(data[:k])} and C{Q[k] = P[1] + ... + P[k]}.  Then the
        block of length C{L} at offset C{q} has C{a = P[q+L] - P[q]} and
        C{b = Q[q+L] - Q[q] - L * P[q]}, reduced modulo 2**16.
    """
    p = np.empty(data.size + 1, dtype=np.uint32)
    p[0] = 0
    np.cumsum(data, dtype=np.uint32, out=p[1:])
    q = np.empty_like(p)
    q[0] = 0
    np.cumsum(p[1:], out=q[1:])
    return p, q


def _rolled_weaks(
    p: npt.NDArray[np.uint32],
    q: npt.NDArray[np.uint32],
    length: int,
    starts: npt.NDArray[np.intp] | slice,
) -> npt.NDArray[np.uint32]:
    """
    Weak checksums of the blocks of C{length} bytes at C{starts}.

    @param p: first prefix sums from L{_prefix_sums}.
    @param q: second prefix sums from L{_prefix_sums}.
    @param length: block length in bytes.
    @param starts: block offsets, as an index array or a slice of C{p}.
    @return: C{a | b << 16} for each block, as uint32.
    """
    ends: npt.NDArray[np.intp] | slice
    if isinstance(starts, slice):
        ends = slice(starts.start + length, starts.stop + length)
    else:
        ends = starts + length
    p0 = p[starts]
    a = p[ends] - p0
    b = q[ends] - q[starts] - p0 * np.uint32(length)
    weak: npt.NDArray[np.uint32] = (a & np.uint32(0xFFFF)) | (b << np.uint32(16))
    return weak


def _block_weaks(data: npt.NDArray[np.uint8], length: int) -> npt.NDArray[np.uint32]:
    """
    Weak checksums of consecutive blocks.

    @param data: C{k * length} bytes.
    @param length: block length in bytes.
    @return: the weak checksum of each of the C{k} blocks, shape C{(k,)}.
    """
    count = data.size // length
    if length % 64 == 0 and count:
        # Split each block into rows of 64 bytes: with i = 64 j + k,
        # b = L a - 64 sum_j(j row_j) - sum_k(k column_k), all modulo 2**16,
        # so uint16 arithmetic that wraps around is exact.
        rows = length // 64
        cube = data.reshape(count, rows, 64)
        row_sums = cube.sum(axis=2, dtype=np.uint16)
        column_sums = cube.sum(axis=1, dtype=np.uint16)
        a = row_sums.sum(axis=1, dtype=np.uint16)
        row_weights = np.arange(rows, dtype=np.uint16)
        column_weights = np.arange(64, dtype=np.uint16)
        b = (
            a * np.uint16(length & 0xFFFF)
            - (row_sums * row_weights).sum(axis=1, dtype=np.uint16) * np.uint16(64)
            - (column_sums * column_weights).sum(axis=1, dtype=np.uint16)
        )
        weak: npt.NDArray[np.uint32] = a.astype(np.uint32) | (
            b.astype(np.uint32) << np.uint32(16)
        )
        return weak
    p, q = _prefix_sums(data[: count * length])
    return _rolled_weaks(p, q, length, np.arange(count, dtype=np.intp) * length)


def weak_checksum(block: Buffer) -> int:
    """
    rsync's weak checksum of one block (Tridgell and Mackerras 1996, §3).

    @param block: the block, of any length.
    @return: C{a | b << 16} where C{a = sum(x_i) mod 2**16} and
        C{b = sum((len(block) - i) * x_i) mod 2**16}.
    """
    view = _as_bytes_view(block)
    if not len(view):
        return 0
    data = np.frombuffer(view, dtype=np.uint8)
    return int(_block_weaks(data, data.size)[0])


def signature(basis: Buffer, block_size: int = BLOCK_SIZE) -> bytes:
    """
    Compute the signature of a basis (Tridgell and Mackerras 1996, §2 step 2).

    The basis is read in windows of a few MiB; memory beyond the result
    (20 bytes per block) stays bounded.

    @param basis: the basis; may be a memoryview of an mmap.
    @param block_size: block size in bytes, in [L{MIN_BLOCK_SIZE},
        L{MAX_BLOCK_SIZE}].
    @return: the signature, in the format of the module docstring:
        14 + 20 * ceil(len(basis) / block_size) bytes.
    @raise ValueError: if C{block_size} is out of bounds.
    """
    _check_block_size(block_size)
    view = _as_bytes_view(basis)
    length = len(view)
    parts: list[bytes] = [_SIG_HEADER.pack(VERSION, SIGNATURE_KIND, block_size, length)]
    window = max(1, _SIGNATURE_WINDOW // block_size) * block_size
    for start in range(0, length, window):
        chunk = view[start : start + window]
        data = np.frombuffer(chunk, dtype=np.uint8)
        full = len(chunk) // block_size
        strongs = [
            _strong_digest(chunk[offset : offset + block_size])
            for offset in range(0, len(chunk), block_size)
        ]
        entries = np.empty(len(strongs), dtype=_ENTRY_DTYPE)
        entries["weak"][:full] = _block_weaks(data[: full * block_size], block_size)
        if len(strongs) > full:
            entries["weak"][full] = weak_checksum(chunk[full * block_size :])
        entries["strong"] = np.frombuffer(
            b"".join(strongs), dtype=_ENTRY_DTYPE["strong"]
        )
        parts.append(entries.tobytes())
    return b"".join(parts)


def _build_lookup(weak: npt.NDArray[np.uint32], strong: tuple[bytes, ...]) -> _Lookup:
    """
    Build the search tables of L{diff} over full blocks.

    @param weak: weak checksums of the full blocks.
    @param strong: strong digests of the full blocks.
    @return: the tables; their size is proportional to the number of blocks.
    """
    count = len(strong)
    # Later keys win: insert in reverse so the lowest index is kept.
    index = dict(zip(reversed(strong), range(count - 1, -1, -1), strict=True))
    bits = max(10, min(_MAX_FILTER_BITS, (32 * max(count, 1) - 1).bit_length()))
    weak_filter = np.zeros(1 << bits, dtype=np.bool_)
    weak_filter[_filter_slots(weak, bits)] = True
    return _Lookup(
        index=index,
        weak_sorted=np.unique(weak),
        weak_filter=weak_filter,
        filter_bits=bits,
    )


def _filter_slots(weak: npt.NDArray[np.uint32], bits: int) -> npt.NDArray[np.uint32]:
    """
    @return: the slots of the weak filter for each checksum in C{weak}.
    """
    slots: npt.NDArray[np.uint32] = (weak * np.uint32(_HASH_MULTIPLIER)) >> np.uint32(
        32 - bits
    )
    return slots


def parse_signature(data: bytes, *, max_basis_length: int) -> Signature:
    """
    Parse and validate a signature made by L{signature}.

    Memory used is proportional to C{len(data)}, whatever the header says.

    @param data: the signature bytes.
    @param max_basis_length: largest basis length in bytes to accept.
    @return: the parsed signature, with the tables L{diff} needs.
    @raise DeltaFormatError: on a wrong version or kind, a block size out of
        [L{MIN_BLOCK_SIZE}, L{MAX_BLOCK_SIZE}], a basis longer than
        C{max_basis_length}, or a number of entries that does not match the
        basis length.
    """
    if len(data) < _SIG_HEADER.size:
        raise DeltaFormatError(
            f"signature: truncated header ({len(data)} bytes, need {_SIG_HEADER.size})"
        )
    version, kind, block_size, basis_length = _SIG_HEADER.unpack_from(data)
    if version != VERSION:
        raise DeltaFormatError(
            f"signature: unsupported version {version} (expected {VERSION})"
        )
    if kind != SIGNATURE_KIND:
        raise DeltaFormatError(
            f"signature: kind byte 0x{kind:02x} is not 0x{SIGNATURE_KIND:02x}"
            f" ({chr(SIGNATURE_KIND)!r})"
        )
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise DeltaFormatError(
            f"signature: block size {block_size} outside"
            f" [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]"
        )
    if basis_length > max_basis_length:
        raise DeltaFormatError(
            f"signature: basis length {basis_length} exceeds the limit of"
            f" {max_basis_length} bytes"
        )
    body = len(data) - _SIG_HEADER.size
    if body % _ENTRY_SIZE:
        raise DeltaFormatError(
            f"signature: {body} bytes of entries is not a whole number of"
            f" {_ENTRY_SIZE}-byte entries"
        )
    count = body // _ENTRY_SIZE
    expected = -(-basis_length // block_size)
    if count != expected:
        raise DeltaFormatError(
            f"signature: declares {count} blocks for a {basis_length}-byte basis"
            f" with {block_size}-byte blocks (expected {expected})"
        )
    entries = np.frombuffer(
        data, dtype=_ENTRY_DTYPE, count=count, offset=_SIG_HEADER.size
    )
    weak = entries["weak"].astype(np.uint32)
    weak.flags.writeable = False
    strong = tuple(entries["strong"].tolist())
    full = basis_length // block_size
    return Signature(
        block_size=block_size,
        basis_length=basis_length,
        weak=weak,
        strong=strong,
        lookup=_build_lookup(weak[:full], strong[:full]),
    )


class _DeltaWriter:
    """
    Accumulates delta operations, merging adjacent copies.
    """

    def __init__(self, target: memoryview) -> None:
        self.target = target
        self.parts: list[bytes | memoryview] = [
            _DELTA_HEADER.pack(VERSION, DELTA_KIND, len(target))
        ]
        self.copy_offset = 0
        self.copy_length = 0

    def flush_copy(self) -> None:
        """
        Emit the pending COPY, if any.
        """
        if self.copy_length:
            self.parts.append(_COPY.pack(OP_COPY, self.copy_offset, self.copy_length))
            self.copy_length = 0

    def copy(self, offset: int, length: int) -> None:
        """
        Append a copy of C{length} basis bytes at C{offset}.
        """
        if (
            self.copy_length
            and self.copy_offset + self.copy_length == offset
            and self.copy_length + length <= _MAX_OP_LENGTH
        ):
            self.copy_length += length
        else:
            self.flush_copy()
            self.copy_offset = offset
            self.copy_length = length

    def literal(self, start: int, end: int) -> None:
        """
        Append the target bytes C{[start, end)} as literals.
        """
        if start >= end:
            return
        self.flush_copy()
        for piece in range(start, end, _MAX_OP_LENGTH):
            piece_end = min(end, piece + _MAX_OP_LENGTH)
            self.parts.append(_LITERAL.pack(OP_LITERAL, piece_end - piece))
            self.parts.append(self.target[piece:piece_end])

    def finish(self) -> bytes:
        """
        @return: the whole delta.
        """
        self.flush_copy()
        return b"".join(self.parts)


def _scan(
    target: npt.NDArray[np.uint8],
    view: memoryview,
    start: int,
    stop: int,
    sig: Signature,
    checks: _Checks,
) -> tuple[int, bytes] | None:
    """
    Find the first offset in C{[start, stop)} where a full basis block
    starts in the target, rolling the weak checksum over all of them at once.

    @param target: the target as a numpy array.
    @param view: the same target as a memoryview.
    @param start: first offset to try.
    @param stop: one past the last offset to try; C{stop - 1 + block_size}
        must not exceed the target length.
    @param sig: the signature.
    @param checks: the strong digests still allowed; hits beyond them are
        skipped.
    @return: C{(offset, strong digest)} of the first match, or L{None}.
    """
    block_size = sig.block_size
    lookup = sig._lookup
    p, q = _prefix_sums(target[start : stop - 1 + block_size])
    weak = _rolled_weaks(p, q, block_size, slice(0, stop - start))
    hits = np.flatnonzero(lookup.weak_filter[_filter_slots(weak, lookup.filter_bits)])
    if not hits.size:
        return None
    hit_weak = weak[hits]
    known = lookup.weak_sorted
    where = np.searchsorted(known, hit_weak)
    np.minimum(where, known.size - 1, out=where)
    hits = hits[known[where] == hit_weak]
    index = lookup.index
    digest_of = _strong_digest
    at = 0
    count = hits.size
    while at < count:
        offset = start + int(hits[at])
        if not checks.allowed(offset):
            # Out of credit: skip to the first hit where there is some.
            at = int(np.searchsorted(hits, checks.next_allowed() - start))
            continue
        checks.done += 1
        digest = digest_of(view[offset : offset + block_size])
        if digest in index:
            return offset, digest
        at += 1
    return None


def diff(target: Buffer, sig: Signature) -> bytes:
    """
    Compute the delta that turns the basis of C{sig} into C{target}
    (Tridgell and Mackerras 1996, §2 steps 3-4 and §4).

    Greedy like rsync: from the current offset, the earliest offset where a
    basis block starts in the target is copied, and the bytes skipped become
    literals.  The fast path hashes the block at the current offset and looks
    it up by strong digest, preferring the basis block that continues the
    previous copy; only where that fails is the weak checksum rolled over a
    bounded window of offsets (vectorised) and its candidates confirmed by
    strong digest.  The short last basis block can match only at the end of
    the target.  Memory beyond the result stays bounded by the window size.

    The work is linear in the target's length whatever the signature: the
    weak-checksum hits confirmed by strong digest are bounded per offset
    (L{CHECKS_PER_BLOCK} digests per block length of target), so a
    signature crafted to hit everywhere costs delta size, not time.

    @param target: the new content; may be a memoryview of an mmap.
    @param sig: the basis signature, from L{parse_signature}.
    @return: the delta, in the format of the module docstring.
    """
    view = _as_bytes_view(target)
    array = np.frombuffer(view, dtype=np.uint8)
    length = len(view)
    block_size = sig.block_size
    strong = sig.strong
    index = sig._lookup.index
    full_blocks = sig.full_blocks
    writer = _DeltaWriter(view)
    copy = writer.copy
    digest_of = _strong_digest
    last_start = length - block_size
    position = 0
    literal_start = 0
    following = -1
    window = block_size
    checks = _Checks(block_size)
    while position <= last_start:
        digest = digest_of(view[position : position + block_size])
        if 0 <= following < full_blocks and strong[following] == digest:
            block = following
        else:
            found = index.get(digest)
            if found is None:
                stop = min(position + 1 + window, last_start + 1)
                match = _scan(array, view, position + 1, stop, sig, checks)
                if match is None:
                    position = stop
                    window = min(window * 2, max(_MAX_SCAN, block_size))
                    continue
                position, digest = match
                if 0 <= following < full_blocks and strong[following] == digest:
                    block = following
                else:
                    block = index[digest]
            else:
                block = found
            window = block_size
        if literal_start < position:
            writer.literal(literal_start, position)
        copy(block * block_size, block_size)
        following = block + 1
        position += block_size
        literal_start = position
    tail = sig.tail_length
    end = length
    if tail and length - literal_start >= tail:
        offset = length - tail
        if digest_of(view[offset:]) == strong[-1]:
            writer.literal(literal_start, offset)
            copy(full_blocks * block_size, tail)
            literal_start = end = length
    writer.literal(literal_start, end)
    return writer.finish()


def _parse_delta_header(delta: bytes, max_length: int | None) -> int:
    """
    @return: the target length the delta declares.
    @raise DeltaFormatError: if the header is truncated or wrong, or declares
        more than C{max_length} bytes.
    """
    if len(delta) < _DELTA_HEADER.size:
        raise DeltaFormatError(
            f"delta: truncated header ({len(delta)} bytes, need {_DELTA_HEADER.size})"
        )
    version, kind, target_length = _DELTA_HEADER.unpack_from(delta)
    if version != VERSION:
        raise DeltaFormatError(
            f"delta: unsupported version {version} (expected {VERSION})"
        )
    if kind != DELTA_KIND:
        raise DeltaFormatError(
            f"delta: kind byte 0x{kind:02x} is not 0x{DELTA_KIND:02x}"
            f" ({chr(DELTA_KIND)!r})"
        )
    if max_length is not None and target_length > max_length:
        raise DeltaFormatError(
            f"delta: declares a {target_length}-byte target, above the limit of"
            f" {max_length} bytes"
        )
    result: int = target_length
    return result


def _iter_ops(
    delta: bytes, target_length: int, basis_length: int | None
) -> Iterator[tuple[int, int, int]]:
    """
    Walk the operations of a delta whose header has been checked.

    @param delta: the whole delta.
    @param target_length: the target length from its header.
    @param basis_length: the basis length COPY ops must stay within, or
        L{None} not to check.
    @return: an iterator of C{(op, a, b)}: C{(OP_COPY, basis offset, length)}
        or C{(OP_LITERAL, delta offset of the bytes, length)}.
    @raise DeltaFormatError: on an unknown, empty or truncated op, a COPY
        outside the basis, or output longer or shorter than C{target_length}.
    """
    size = len(delta)
    offset = _DELTA_HEADER.size
    produced = 0
    while offset < size:
        op = delta[offset]
        if op == OP_COPY:
            if offset + _COPY.size > size:
                raise DeltaFormatError(
                    f"delta: truncated COPY op at offset {offset}"
                    f" ({size - offset} bytes left, need {_COPY.size})"
                )
            source, length = _COPY_ARGS.unpack_from(delta, offset + 1)
            if basis_length is not None and source + length > basis_length:
                raise DeltaFormatError(
                    f"delta: COPY of {length} bytes at basis offset {source}"
                    f" reaches past the {basis_length}-byte basis"
                    f" (op at offset {offset})"
                )
            item = (OP_COPY, source, length)
            offset += _COPY.size
        elif op == OP_LITERAL:
            if offset + _LITERAL.size > size:
                raise DeltaFormatError(
                    f"delta: truncated LITERAL op at offset {offset}"
                    f" ({size - offset} bytes left, need {_LITERAL.size})"
                )
            (length,) = _LITERAL_ARGS.unpack_from(delta, offset + 1)
            data_start = offset + _LITERAL.size
            if data_start + length > size:
                raise DeltaFormatError(
                    f"delta: LITERAL of {length} bytes at offset {offset}"
                    f" runs past the end of the {size}-byte delta"
                )
            item = (OP_LITERAL, data_start, length)
            offset = data_start + length
        else:
            raise DeltaFormatError(f"delta: unknown op 0x{op:02x} at offset {offset}")
        if not length:
            raise DeltaFormatError(f"delta: empty op at offset {offset}")
        produced += length
        if produced > target_length:
            raise DeltaFormatError(
                f"delta: ops produce more than the declared {target_length}-byte"
                f" target (op ending at offset {offset})"
            )
        yield item
    if produced != target_length:
        raise DeltaFormatError(
            f"delta: ops produce {produced} bytes, the header declares {target_length}"
        )


def apply(
    basis: Buffer,
    delta: bytes,
    *,
    expected_length: int | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    out: bytearray | None = None,
) -> bytearray | memoryview:
    """
    Rebuild a target from its basis and a delta made by L{diff}
    (Tridgell and Mackerras 1996, §2 step 5), validating the delta as it goes.

    The target is allocated once, at its declared length (at most
    C{max_length}), and filled op by op, so memory stays bounded by the
    target and the delta whatever the number of ops.

    @param basis: the basis the delta was computed against; may be a
        memoryview of an mmap.
    @param delta: the delta.
    @param expected_length: if given, the target length in bytes the delta
        must declare.
    @param max_length: largest target length in bytes to build.
    @param out: a buffer to build the target in, reused across calls to
        spare allocating (and page-faulting) a new one; grown if smaller
        than the target.
    @return: the target: a C{bytearray}, or a C{memoryview} of C{out}.
    @raise DeltaFormatError: on a malformed header, a declared length above
        C{max_length} or different from C{expected_length}, an unknown,
        empty or truncated op, a COPY outside the basis, or ops that produce
        more or fewer bytes than the header declares.
    """
    target_length = _parse_delta_header(delta, max_length)
    if expected_length is not None and target_length != expected_length:
        raise DeltaFormatError(
            f"delta: declares a {target_length}-byte target, expected {expected_length}"
        )
    source = _as_bytes_view(basis)
    literals = memoryview(delta)
    # The output is allocated once (its length is checked against
    # max_length) and filled op by op: memory stays the target plus the
    # delta, however many ops the delta has.
    if out is None:
        output: bytearray | memoryview = bytearray(target_length)
    else:
        if len(out) < target_length:
            out.extend(bytes(target_length - len(out)))
        output = memoryview(out)[:target_length]
    position = 0
    for op, start, length in _iter_ops(delta, target_length, len(source)):
        piece = source if op == OP_COPY else literals
        output[position : position + length] = piece[start : start + length]
        position += length
    return output


def signature_basis_length(signature: bytes) -> int:
    """
    Basis length a signature declares, read from its header only.

    @param signature: a signature made by L{signature}.
    @return: the basis length in bytes.
    @raise DeltaFormatError: if the header is truncated or not a version 1
        signature.
    """
    if len(signature) < _SIG_HEADER.size:
        raise DeltaFormatError("signature: truncated header")
    version, kind, _, basis_length = _SIG_HEADER.unpack_from(signature)
    if version != VERSION or kind != SIGNATURE_KIND:
        raise DeltaFormatError("signature: not a version 1 signature")
    return int(basis_length)


def is_identity(delta: bytes, basis_length: int) -> bool:
    """
    Tell whether a delta rebuilds its basis unchanged, so that applying it
    can be skipped.

    @param delta: a delta.
    @param basis_length: length of the basis in bytes.
    @return: true when the delta only copies the whole basis, in order.
    @raise DeltaFormatError: if the delta is malformed, as for L{apply}.
    """
    target_length = _parse_delta_header(delta, None)
    identity = target_length == basis_length
    produced = 0
    for op, start, length in _iter_ops(delta, target_length, basis_length):
        if op != OP_COPY or start != produced:
            identity = False
        produced += length
    return identity


def delta_stats(delta: bytes) -> DeltaStats:
    """
    Count what a delta copies and carries.

    @param delta: a delta.
    @return: its statistics; sizes in bytes.
    @raise DeltaFormatError: if the delta is malformed (COPY ranges are not
        checked: no basis is given).
    """
    target_length = _parse_delta_header(delta, None)
    copied = literal = ops = 0
    for op, _start, length in _iter_ops(delta, target_length, None):
        ops += 1
        if op == OP_COPY:
            copied += length
        else:
            literal += length
    return DeltaStats(
        copied_bytes=copied, literal_bytes=literal, ops=ops, delta_size=len(delta)
    )
