"""
Tests for L{realize.delta}: rsync signatures, diffs and their application.
"""

from __future__ import annotations

import contextlib
import random
import struct
from array import array
from typing import Any

import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realize import delta
from realize.delta import (
    BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    DeltaFormatError,
    DeltaStats,
    apply,
    delta_stats,
    diff,
    is_identity,
    parse_signature,
    signature,
    weak_checksum,
)

SMALL = MIN_BLOCK_SIZE
"""Block size for the property tests: small, so few bytes make many blocks."""

LIMIT = 1 << 30

fast = settings(max_examples=150, deadline=None)


def reference_weak(block: bytes) -> int:
    """
    The weak checksum as the rsync paper writes it, one byte at a time.
    """
    length = len(block)
    a = sum(block) % 65536
    b = sum((length - i) * x for i, x in enumerate(block)) % 65536
    return a | b << 16


def random_bytes(seed: int, size: int) -> bytes:
    """
    Deterministic pseudo-random bytes.
    """
    return random.Random(seed).randbytes(size)


def round_trip(basis: bytes, target: bytes, block_size: int = BLOCK_SIZE) -> bytes:
    """
    Diff C{target} against C{basis}, check that applying the delta gives the
    target back, and return the delta.
    """
    sig = parse_signature(signature(basis, block_size), max_basis_length=LIMIT)
    result = diff(target, sig)
    assert apply(basis, result, expected_length=len(target)) == target
    return result


def ops(data: bytes) -> list[tuple[str, int, int]]:
    """
    Decode a delta's ops as C{("C", offset, length)} or C{("L", 0, length)}.
    """
    result = []
    at = 10
    while at < len(data):
        if data[at] == 0x43:
            offset, length = struct.unpack_from(">QI", data, at + 1)
            result.append(("C", offset, length))
            at += 13
        else:
            (length,) = struct.unpack_from(">I", data, at + 1)
            result.append(("L", 0, length))
            at += 5 + length
    return result


@st.composite
def edited_pairs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """
    A basis and a target derived from it by insertions, deletions,
    corrupted bytes, truncation and extension.
    """
    if draw(st.booleans()):
        basis = draw(st.binary(max_size=4 * SMALL))
    else:
        basis = random_bytes(draw(st.integers(0, 2**32)), draw(st.integers(0, 6000)))
    target = bytearray(basis)
    edits = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["insert", "delete", "corrupt", "truncate", "extend"]),
                st.floats(0, 1),
                st.binary(min_size=1, max_size=2 * SMALL),
            ),
            max_size=4,
        )
    )
    for kind, where, data in edits:
        at = int(where * len(target))
        if kind == "insert":
            target[at:at] = data
        elif kind == "delete":
            del target[at : at + len(data)]
        elif kind == "corrupt" and target:
            at = min(at, len(target) - 1)
            target[at] ^= data[0] | 1
        elif kind == "truncate":
            del target[at:]
        elif kind == "extend":
            target += data
    return basis, bytes(target)


class WeakChecksumTests(SynchronousTestCase):
    """
    Tests for L{weak_checksum} and the weak checksums in signatures.
    """

    def test_known_answers(self) -> None:
        """
        The weak checksum of small blocks is rsync's, computed by hand:
        for C{b"abc"}, a = 97 + 98 + 99 = 294 and
        b = 3*97 + 2*98 + 1*99 = 586.
        """
        self.assertEqual(weak_checksum(b""), 0)
        self.assertEqual(weak_checksum(b"\x01"), 1 | 1 << 16)
        self.assertEqual(weak_checksum(b"\x01\x02\x03"), 6 | 10 << 16)
        self.assertEqual(weak_checksum(b"abc"), 294 | 586 << 16)

    def test_wraps_modulo_2_16(self) -> None:
        """
        Both halves are reduced modulo 2**16: 4096 bytes of 0xff give
        a = 4096 * 255 mod 2**16 and b = 255 * 4096 * 4097 / 2 mod 2**16.
        """
        a = (4096 * 255) % 65536
        b = (255 * 4096 * 4097 // 2) % 65536
        self.assertEqual(weak_checksum(b"\xff" * 4096), a | b << 16)

    @fast
    @given(st.binary(max_size=3000))
    def test_matches_reference(self, block: bytes) -> None:
        """
        For any block, the vectorised checksum equals the byte-by-byte one.
        """
        self.assertEqual(weak_checksum(block), reference_weak(block))

    @fast
    @given(st.integers(0, 2**32), st.sampled_from([512, 1000, 4096]))
    def test_signature_weak_matches_reference(self, seed: int, size: int) -> None:
        """
        Each signature entry holds the reference weak checksum of its block,
        for block sizes that are and are not multiples of 64 and for a short
        last block.
        """
        basis = random_bytes(seed, 3 * size + 77)
        sig = parse_signature(signature(basis, size), max_basis_length=LIMIT)
        blocks = [basis[i : i + size] for i in range(0, len(basis), size)]
        self.assertEqual(sig.weak.tolist(), [reference_weak(b) for b in blocks])


class SignatureTests(SynchronousTestCase):
    """
    Tests for L{signature} and its format.
    """

    def test_layout(self) -> None:
        """
        A signature is a big-endian header (version 1, kind "S", block size,
        basis length) followed by one weak checksum and xxh3_128 digest per
        block, the last block short.
        """
        basis = random_bytes(1, 2 * 512 + 10)
        data = signature(basis, 512)
        self.assertEqual(data[:14], b"\x01S" + struct.pack(">IQ", 512, len(basis)))
        self.assertEqual(len(data), 14 + 3 * 20)
        for n, start in enumerate(range(0, len(basis), 512)):
            block = basis[start : start + 512]
            entry = data[14 + 20 * n : 14 + 20 * (n + 1)]
            self.assertEqual(entry[:4], struct.pack(">I", reference_weak(block)))
            self.assertEqual(entry[4:], xxhash.xxh3_128_digest(block))

    def test_empty_basis(self) -> None:
        """
        The signature of an empty basis is the header alone.
        """
        data = signature(b"")
        self.assertEqual(data, b"\x01S" + struct.pack(">IQ", BLOCK_SIZE, 0))
        sig = parse_signature(data, max_basis_length=0)
        self.assertEqual((sig.block_count, sig.basis_length), (0, 0))

    def test_buffers(self) -> None:
        """
        Bytes, bytearrays and memoryviews of any format give the same
        signature.
        """
        basis = random_bytes(2, 5000)
        expected = signature(basis, 1024)
        self.assertEqual(signature(bytearray(basis), 1024), expected)
        self.assertEqual(signature(memoryview(basis), 1024), expected)
        words = array("I", basis[:4000])
        self.assertEqual(
            signature(memoryview(words), 1024), signature(basis[:4000], 1024)
        )

    def test_windows(self) -> None:
        """
        A basis longer than the processing window gives the same entries as
        the blocks taken one by one.
        """
        basis = random_bytes(3, (4 << 20) + 3 * 4096 + 5)
        data = signature(basis)
        sig = parse_signature(data, max_basis_length=LIMIT)
        self.assertEqual(sig.block_count, len(basis) // 4096 + 1)
        for n in (0, 1023, 1024, 1025, sig.block_count - 1):
            block = basis[n * 4096 : (n + 1) * 4096]
            self.assertEqual(sig.strong[n], xxhash.xxh3_128_digest(block))
            self.assertEqual(int(sig.weak[n]), reference_weak(block))

    def test_block_size_bounds(self) -> None:
        """
        Block sizes outside [MIN_BLOCK_SIZE, MAX_BLOCK_SIZE] are refused.
        """
        self.assertRaises(ValueError, signature, b"x", MIN_BLOCK_SIZE - 1)
        self.assertRaises(ValueError, signature, b"x", MAX_BLOCK_SIZE + 1)
        signature(b"x", MAX_BLOCK_SIZE)


class ParseSignatureTests(SynchronousTestCase):
    """
    Tests for L{parse_signature}.
    """

    def assert_rejected(self, data: bytes, message: str, limit: int = LIMIT) -> None:
        """
        Parsing C{data} raises L{DeltaFormatError} mentioning C{message}.
        """
        error = self.assertRaises(
            DeltaFormatError, parse_signature, data, max_basis_length=limit
        )
        self.assertIn(message, str(error))

    def test_fields(self) -> None:
        """
        The parsed signature gives back the block size, basis length and
        entries.
        """
        basis = random_bytes(4, 3000)
        sig = parse_signature(signature(basis, 1024), max_basis_length=3000)
        self.assertEqual((sig.block_size, sig.basis_length), (1024, 3000))
        self.assertEqual(
            (sig.block_count, sig.full_blocks, sig.tail_length), (3, 2, 952)
        )
        self.assertEqual(sig.strong[2], xxhash.xxh3_128_digest(basis[2048:]))

    def test_truncated_header(self) -> None:
        """
        Fewer bytes than a header are refused.
        """
        self.assert_rejected(signature(b"")[:13], "truncated header")
        self.assert_rejected(b"", "truncated header")

    def test_bad_version(self) -> None:
        """
        A version other than 1 is refused.
        """
        self.assert_rejected(b"\x02" + signature(b"")[1:], "unsupported version 2")

    def test_bad_kind(self) -> None:
        """
        A delta is not a signature.
        """
        self.assert_rejected(b"\x01D" + signature(b"")[2:], "kind byte 0x44")

    def test_block_size_bounds(self) -> None:
        """
        Block sizes outside the bounds are refused.
        """
        for size in (0, 511, MAX_BLOCK_SIZE + 1, 2**32 - 1):
            data = b"\x01S" + struct.pack(">IQ", size, 0)
            self.assert_rejected(data, f"block size {size} outside")

    def test_oversize_basis(self) -> None:
        """
        A basis longer than C{max_basis_length} is refused before anything
        proportional to it is allocated.
        """
        data = b"\x01S" + struct.pack(">IQ", 4096, 2**64 - 1)
        self.assert_rejected(data, "exceeds the limit of 1000 bytes", limit=1000)
        self.assert_rejected(signature(b"x" * 1001), "basis length 1001", limit=1000)

    def test_entry_count(self) -> None:
        """
        The number of entries must be the number of blocks of the basis.
        """
        data = signature(b"x" * 4096)
        bogus = data[:6] + struct.pack(">Q", 300 * 4096) + data[14:]
        self.assert_rejected(
            bogus, "declares 1 blocks for a 1228800-byte basis with 4096-byte"
        )
        self.assert_rejected(data + b"\x00" * 20, "declares 2 blocks")
        self.assert_rejected(data[:-20], "declares 0 blocks")

    def test_partial_entry(self) -> None:
        """
        Entries must be whole: a truncated or padded signature is refused.
        """
        data = signature(b"x" * 5000)
        self.assert_rejected(data[:-1], "not a whole number")
        self.assert_rejected(data + b"\x00", "not a whole number")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_fuzz_random(self, data: bytes) -> None:
        """
        Random bytes are parsed or raise L{DeltaFormatError}, nothing else.
        """
        with contextlib.suppress(DeltaFormatError):
            parse_signature(data, max_basis_length=LIMIT)

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 2**32), st.integers(0, 200), st.integers(0, 255))
    def test_fuzz_mutated(self, seed: int, where: int, value: int) -> None:
        """
        A valid signature with one byte changed or cut short is parsed or
        raises L{DeltaFormatError}, nothing else.
        """
        data = bytearray(signature(random_bytes(seed, 1500), 512))
        where %= len(data)
        data[where] = value
        for candidate in (bytes(data), bytes(data[:where])):
            with contextlib.suppress(DeltaFormatError):
                parse_signature(candidate, max_basis_length=LIMIT)


class RoundTripTests(SynchronousTestCase):
    """
    L{apply} of a L{diff} rebuilds the target.
    """

    @settings(max_examples=300, deadline=None)
    @given(edited_pairs())
    def test_edited(self, pair: tuple[bytes, bytes]) -> None:
        """
        Targets derived from the basis by insertions, deletions, corrupted
        bytes, truncation and extension are rebuilt exactly.
        """
        basis, target = pair
        round_trip(basis, target, SMALL)

    @fast
    @given(st.binary(max_size=3000), st.binary(max_size=3000))
    def test_unrelated(self, basis: bytes, target: bytes) -> None:
        """
        Any target is rebuilt from any basis.
        """
        round_trip(basis, target, SMALL)

    @fast
    @given(
        st.integers(0, 2**32),
        st.integers(0, 40 * SMALL),
        st.integers(1, 3 * SMALL),
    )
    def test_insertion_costs_little(self, seed: int, at: int, size: int) -> None:
        """
        After an insertion of C{size} bytes into random data, only the
        inserted bytes and the one broken block are sent as literals.
        """
        basis = random_bytes(seed, 40 * SMALL + 100)
        target = basis[:at] + random_bytes(~seed, size) + basis[at:]
        stats = delta_stats(round_trip(basis, target, SMALL))
        self.assertLessEqual(stats.literal_bytes, size + SMALL)
        self.assertLessEqual(stats.ops, 4)

    @fast
    @given(st.integers(0, 2**32), st.integers(0, 40 * SMALL), st.integers(1, 3 * SMALL))
    def test_deletion_costs_little(self, seed: int, at: int, size: int) -> None:
        """
        After a deletion from random data, only what is left of the (at most
        two) blocks it cuts into is sent as literals.
        """
        basis = random_bytes(seed, 40 * SMALL + 100)
        target = basis[:at] + basis[at + size :]
        stats = delta_stats(round_trip(basis, target, SMALL))
        self.assertLessEqual(stats.literal_bytes, 2 * SMALL - 2)

    def test_block_boundaries(self) -> None:
        """
        Bases and targets of 0, 1, bs-1, bs, bs+1, 3 bs and 3 bs + 1 bytes, in
        every pairing, related (the target a prefix or extension of the
        basis) or not, round-trip.
        """
        bs = BLOCK_SIZE
        sizes = [0, 1, bs - 1, bs, bs + 1, 3 * bs, 3 * bs + 1]
        source = random_bytes(5, 4 * bs)
        other = random_bytes(6, 4 * bs)
        for basis_size in sizes:
            basis = source[:basis_size]
            for target_size in sizes:
                round_trip(basis, source[:target_size])
                round_trip(basis, other[:target_size])

    def test_empty_basis(self) -> None:
        """
        Against an empty basis, the delta is the whole target as one literal.
        """
        target = random_bytes(7, 10000)
        result = round_trip(b"", target)
        self.assertEqual(ops(result), [("L", 0, 10000)])

    def test_empty_target(self) -> None:
        """
        An empty target gives a delta of the header alone.
        """
        result = round_trip(random_bytes(8, 10000), b"")
        self.assertEqual(result, b"\x01D" + bytes(8))

    def test_short_target(self) -> None:
        """
        A target shorter than one block is a literal, unless it is the short
        last block of the basis at the end.
        """
        basis = random_bytes(9, 4096 + 100)
        self.assertEqual(ops(round_trip(basis, basis[:100])), [("L", 0, 100)])
        self.assertEqual(ops(round_trip(basis, basis[4096:])), [("C", 4096, 100)])

    def test_tail_only_at_end(self) -> None:
        """
        The short last block of the basis matches only at the end of the
        target: moved to the front, it becomes a literal.
        """
        basis = random_bytes(10, 4096 + 100)
        head, tail = basis[:4096], basis[4096:]
        self.assertEqual(
            ops(round_trip(basis, tail + head)), [("L", 0, 100), ("C", 0, 4096)]
        )
        self.assertEqual(
            ops(round_trip(basis, head + b"xyz" + tail)),
            [("C", 0, 4096), ("L", 0, 3), ("C", 4096, 100)],
        )

    def test_merges_copies(self) -> None:
        """
        Copies of consecutive basis blocks are merged into one COPY.
        """
        basis = random_bytes(11, 10 * 4096 + 5)
        self.assertEqual(ops(round_trip(basis, basis)), [("C", 0, len(basis))])
        target = basis[:4096] + b"!" + basis[4096:]
        self.assertEqual(
            ops(round_trip(basis, target)),
            [("C", 0, 4096), ("L", 0, 1), ("C", 4096, len(basis) - 4096)],
        )

    def test_prefers_continuing_block(self) -> None:
        """
        Where several basis blocks are equal, the one that continues the
        previous copy is chosen, so a run of zeros is one COPY.
        """
        basis = bytes(8 * 4096)
        self.assertEqual(ops(round_trip(basis, basis)), [("C", 0, len(basis))])

    def test_moved_blocks(self) -> None:
        """
        Blocks found out of order are copied from where they are.
        """
        basis = random_bytes(12, 4 * 4096)
        blocks = [basis[i : i + 4096] for i in range(0, len(basis), 4096)]
        target = blocks[2] + blocks[3] + blocks[0]
        self.assertEqual(
            ops(round_trip(basis, target)), [("C", 8192, 8192), ("C", 0, 4096)]
        )

    def test_far_match(self) -> None:
        """
        A basis block far inside an unrelated target, past several growing
        scan windows, is still found at its exact offset.
        """
        basis = random_bytes(13, 3 * 4096)
        target = random_bytes(14, 300_001) + basis[4096:8192] + random_bytes(15, 999)
        self.assertEqual(
            ops(round_trip(basis, target)),
            [("L", 0, 300_001), ("C", 4096, 4096), ("L", 0, 999)],
        )

    def test_corrupted_one_percent(self) -> None:
        """
        With 1% of its blocks corrupted, the delta is about 1% of the file:
        the corrupted blocks as literals plus a few bytes per op.
        """
        rng = random.Random(16)
        target = rng.randbytes(400 * 4096)
        basis = bytearray(target)
        for block in rng.sample(range(400), 4):
            basis[block * 4096 + rng.randrange(4096)] ^= 0x55
        result = round_trip(bytes(basis), target)
        stats = delta_stats(result)
        self.assertEqual(stats.literal_bytes, 4 * 4096)
        self.assertLess(len(result), 4 * 4096 + 200)

    def test_buffers(self) -> None:
        """
        Targets given as bytearray or memoryview give the same delta as bytes.
        """
        basis = random_bytes(17, 5 * 4096)
        target = basis[1000:] + b"tail"
        sig = parse_signature(signature(basis), max_basis_length=LIMIT)
        expected = diff(target, sig)
        self.assertEqual(diff(bytearray(target), sig), expected)
        self.assertEqual(diff(memoryview(target), sig), expected)
        self.assertEqual(apply(memoryview(basis), expected), target)


class IdentityTests(SynchronousTestCase):
    """
    Tests for L{is_identity}.
    """

    @fast
    @given(st.binary(max_size=5000))
    def test_same(self, basis: bytes) -> None:
        """
        The delta of a file against itself is an identity.
        """
        self.assertTrue(is_identity(round_trip(basis, basis, SMALL), len(basis)))

    def test_changed(self) -> None:
        """
        Deltas that truncate, extend, reorder or change the basis are not
        identities.
        """
        basis = random_bytes(18, 3 * 4096)
        for target in (
            basis[:-1],
            basis + b"x",
            basis[4096:] + basis[:4096],
            b"y" + basis[1:],
            b"",
        ):
            self.assertFalse(is_identity(round_trip(basis, target), len(basis)))

    def test_split_copy(self) -> None:
        """
        Copies of the whole basis in order, split into several ops, are still
        an identity; a wrong basis length is not.
        """
        data = b"\x01D" + struct.pack(">Q", 100)
        data += struct.pack(">BQI", 0x43, 0, 60) + struct.pack(">BQI", 0x43, 60, 40)
        self.assertTrue(is_identity(data, 100))
        self.assertRaises(DeltaFormatError, is_identity, data, 99)
        self.assertFalse(is_identity(data, 101))

    def test_malformed(self) -> None:
        """
        A malformed delta raises L{DeltaFormatError}.
        """
        self.assertRaises(DeltaFormatError, is_identity, b"\x01D", 0)


class DeltaStatsTests(SynchronousTestCase):
    """
    Tests for L{delta_stats}.
    """

    def test_counts(self) -> None:
        """
        Copied and literal bytes, ops and the delta size are counted.
        """
        basis = random_bytes(19, 4 * 4096)
        target = basis[:8192] + b"hello" + basis[8192:]
        result = round_trip(basis, target)
        self.assertEqual(
            delta_stats(result),
            DeltaStats(
                copied_bytes=len(basis),
                literal_bytes=5,
                ops=3,
                delta_size=10 + 13 + 5 + 5 + 13,
            ),
        )
        self.assertEqual(len(result), 46)

    def test_malformed(self) -> None:
        """
        A malformed delta raises L{DeltaFormatError}.
        """
        self.assertRaises(DeltaFormatError, delta_stats, b"\x01D" + bytes(8) + b"L")


class ApplyValidationTests(SynchronousTestCase):
    """
    L{apply} refuses malformed deltas with L{DeltaFormatError}.
    """

    basis = random_bytes(20, 3 * 4096)

    def header(self, length: int) -> bytes:
        """
        A delta header declaring a target of C{length} bytes.
        """
        return b"\x01D" + struct.pack(">Q", length)

    def assert_rejected(self, data: bytes, message: str, **kwargs: int) -> None:
        """
        Applying C{data} to C{self.basis} raises L{DeltaFormatError}
        mentioning C{message}.
        """
        error = self.assertRaises(DeltaFormatError, apply, self.basis, data, **kwargs)
        self.assertIn(message, str(error))

    def test_truncated_header(self) -> None:
        """
        Fewer bytes than a header are refused.
        """
        self.assert_rejected(b"\x01D\x00", "truncated header")

    def test_bad_version(self) -> None:
        """
        A version other than 1 is refused.
        """
        self.assert_rejected(b"\x07D" + bytes(8), "unsupported version 7")

    def test_bad_kind(self) -> None:
        """
        A signature is not a delta.
        """
        self.assert_rejected(b"\x01S" + bytes(8), "kind byte 0x53")

    def test_oversize_length(self) -> None:
        """
        A declared target length above C{max_length} is refused before the
        ops are read or anything is allocated.
        """
        self.assert_rejected(self.header(2**64 - 1), "above the limit")
        self.assert_rejected(self.header(101), "above the limit of 100", max_length=100)

    def test_expected_length(self) -> None:
        """
        A declared target length other than C{expected_length} is refused.
        """
        data = round_trip(self.basis, self.basis)
        self.assert_rejected(data, "expected 5", expected_length=5)

    def test_copy_out_of_range(self) -> None:
        """
        A COPY reaching past the end of the basis is refused.
        """
        data = self.header(10) + struct.pack(">BQI", 0x43, len(self.basis) - 5, 10)
        self.assert_rejected(data, "reaches past the 12288-byte basis")
        data = self.header(10) + struct.pack(">BQI", 0x43, 2**64 - 1, 10)
        self.assert_rejected(data, "reaches past")

    def test_truncated_ops(self) -> None:
        """
        A COPY or LITERAL cut short, or a literal running past the end of the
        delta, is refused.
        """
        copy = struct.pack(">BQI", 0x43, 0, 10)
        self.assert_rejected(self.header(10) + copy[:-1], "truncated COPY op")
        literal = struct.pack(">BI", 0x4C, 10) + b"x" * 10
        self.assert_rejected(self.header(10) + literal[:3], "truncated LITERAL op")
        self.assert_rejected(self.header(10) + literal[:-1], "runs past the end")

    def test_unknown_op(self) -> None:
        """
        An op byte other than COPY and LITERAL is refused.
        """
        self.assert_rejected(self.header(1) + b"\x00", "unknown op 0x00 at offset 10")

    def test_empty_op(self) -> None:
        """
        Zero-length ops are refused.
        """
        self.assert_rejected(self.header(0) + struct.pack(">BI", 0x4C, 0), "empty op")

    def test_trailing_garbage(self) -> None:
        """
        Bytes after the last op of a valid delta are refused.
        """
        data = round_trip(self.basis, self.basis[5:])
        self.assert_rejected(data + b"\x00", "unknown op")
        extra = struct.pack(">BI", 0x4C, 1) + b"!"
        self.assert_rejected(data + extra, "more than the declared 12283-byte target")

    def test_short_output(self) -> None:
        """
        Ops that produce fewer bytes than declared are refused.
        """
        data = self.header(11) + struct.pack(">BI", 0x4C, 10) + b"x" * 10
        self.assert_rejected(data, "produce 10 bytes, the header declares 11")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_fuzz_random(self, data: bytes) -> None:
        """
        Random bytes, with or without a valid header, are applied or raise
        L{DeltaFormatError}, nothing else.
        """
        for candidate in (data, self.header(len(data) // 2) + data):
            with contextlib.suppress(DeltaFormatError):
                apply(self.basis, candidate)

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 10_000), st.integers(0, 255))
    def test_fuzz_mutated(self, where: int, value: int) -> None:
        """
        A valid delta with one byte changed or cut short is applied or raises
        L{DeltaFormatError}, nothing else; so do L{is_identity} and
        L{delta_stats}.
        """
        target = self.basis[:5000] + b"new" + self.basis[5000:8000]
        data = bytearray(round_trip(self.basis, target))
        where %= len(data)
        data[where] = value
        for candidate in (bytes(data), bytes(data[:where])):
            with contextlib.suppress(DeltaFormatError):
                apply(self.basis, candidate)
            with contextlib.suppress(DeltaFormatError):
                is_identity(candidate, len(self.basis))
            with contextlib.suppress(DeltaFormatError):
                delta_stats(candidate)


def hostile_signature(block_size: int, blocks: int, weak: int = 0) -> bytes:
    """
    A signature whose blocks all have the same weak checksum (0: that of a
    run of zeros) and random strong digests that match nothing.
    """
    rng = random.Random(block_size ^ blocks)
    entries = b"".join(
        struct.pack(">I", weak) + rng.randbytes(16) for _ in range(blocks)
    )
    header = struct.pack(">BBIQ", 1, 0x53, block_size, block_size * blocks)
    return header + entries


class CostTests(SynchronousTestCase):
    """
    L{diff} does work linear in the target's length whatever the
    signature: counted in bytes given to the strong hash and to the
    rolling checksum's prefix sums, not in wall time.
    """

    def setUp(self) -> None:
        self.hashed = 0
        self.rolled = 0
        strong = delta._strong_digest
        prefix_sums = delta._prefix_sums

        def counting_strong(data: bytes | memoryview) -> bytes:
            self.hashed += len(data)
            return strong(data)

        def counting_prefix_sums(data: Any) -> Any:
            self.rolled += data.size
            return prefix_sums(data)

        self.patch(delta, "_strong_digest", counting_strong)
        self.patch(delta, "_prefix_sums", counting_prefix_sums)

    def assert_linear(self, length: int, block_size: int) -> None:
        """
        The work counted stays within a few bytes per target byte.
        """
        bound = (delta.CHECKS_PER_BLOCK + 1) * (length + block_size)
        self.assertLessEqual(self.hashed, bound)
        self.assertLessEqual(self.rolled, 3 * (length + block_size))

    def test_zero_weak_checksum_large_blocks(self) -> None:
        """
        The reported attack: 1 MiB blocks of weak checksum 0 against 2 MiB
        of zeros hit at every offset, and each hit hashed 1 MiB (23 s).
        Now the target goes as literals for a few MiB of hashing.
        """
        target = bytes(2 << 20)
        sig = parse_signature(hostile_signature(1 << 20, 1), max_basis_length=LIMIT)
        result = diff(target, sig)
        self.assertEqual(ops(result), [("L", 0, len(target))])
        self.assert_linear(len(target), 1 << 20)

    def test_duplicate_weak_sums(self) -> None:
        """
        Thousands of small blocks sharing one weak checksum cost no more
        than one: a hit is one digest, looked up among them all.
        """
        target = bytes(4 << 20)
        sig = parse_signature(
            hostile_signature(MIN_BLOCK_SIZE, 4096), max_basis_length=LIMIT
        )
        self.assertEqual(ops(diff(target, sig)), [("L", 0, len(target))])
        self.assert_linear(len(target), MIN_BLOCK_SIZE)

    def test_constant_runs(self) -> None:
        """
        Any run of one byte value rolls to one weak checksum: a signature
        made of it hits everywhere in the run, and is bounded the same.
        """
        block_size = 4096
        weak = weak_checksum(b"\x07" * block_size)
        target = b"\x07" * (3 << 20)
        sig = parse_signature(
            hostile_signature(block_size, 16, weak), max_basis_length=LIMIT
        )
        self.assertEqual(ops(diff(target, sig)), [("L", 0, len(target))])
        self.assert_linear(len(target), block_size)

    def test_matches_after_hostile_run(self) -> None:
        """
        Blocks past the hostile part of a signature still match: a basis
        whose signature is true for its first half and hostile for its
        second gives, for zeros then that first half, a literal of the
        zeros and copies of the rest.
        """
        block_size = 4096
        half = random_bytes(3, 256 << 10)
        true_part = signature(half, block_size)
        blocks = len(half) // block_size
        hostile = hostile_signature(block_size, blocks)
        sig_bytes = (
            struct.pack(">BBIQ", 1, 0x53, block_size, 2 * len(half))
            + true_part[14:]
            + hostile[14:]
        )
        sig = parse_signature(sig_bytes, max_basis_length=LIMIT)
        zeros = bytes(1 << 20)
        target = zeros + half
        result = diff(target, sig)
        basis = half + bytes(len(half))
        self.assertEqual(apply(basis, result), target)
        copied = sum(length for kind, _, length in ops(result) if kind == "C")
        self.assertGreaterEqual(copied, len(half) - block_size)
        self.assert_linear(len(target), block_size)


class ModuleTests(SynchronousTestCase):
    """
    Tests for the module's public surface.
    """

    def test_all(self) -> None:
        """
        Everything in C{__all__} exists.
        """
        for name in delta.__all__:
            self.assertTrue(hasattr(delta, name), name)
