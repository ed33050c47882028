"""
Tests for L{realize.hashing}: the Merkle tree over BLAKE3 leaves.
"""

from __future__ import annotations

import itertools
import os
import random

from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realize.hashing import (
    DIGEST_SIZE,
    EMPTY_ROOT,
    LEAF_SIZE,
    LeafHasher,
    align_down,
    format_hash,
    hash_fd_range,
    leaf_hash,
    leaf_range,
    merkle_root,
    read_range,
    zero_leaf_hash,
)

#: Three and a half leaves of deterministic pseudo-random bytes.
DATA = random.Random(7).randbytes(3 * LEAF_SIZE + LEAF_SIZE // 2)

#: BLAKE3 of the empty string, from the BLAKE3 test vectors.
BLAKE3_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"

#: Sizes at and around leaf boundaries.
EDGE_SIZES = [
    0,
    1,
    LEAF_SIZE - 1,
    LEAF_SIZE,
    LEAF_SIZE + 1,
    2 * LEAF_SIZE,
    3 * LEAF_SIZE,
    len(DATA),
]


def node(left: bytes, right: bytes) -> bytes:
    """
    An inner node, written out: C{BLAKE3(0x01 || left || right)}.
    """
    return blake3(b"\x01" + left + right).digest()


def reference_leaves(data: bytes) -> list[bytes]:
    """
    The leaves of C{data}, cut by slicing: C{BLAKE3(0x00 || leaf)}.
    """
    return [
        blake3(b"\x00" + data[i : i + LEAF_SIZE]).digest()
        for i in range(0, len(data), LEAF_SIZE)
    ]


def reference_root(leaves: list[bytes]) -> bytes:
    """
    RFC 6962 section 2.1, finding the split by counting up rather than
    with bit arithmetic.
    """
    if not leaves:
        return blake3(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(reference_root(leaves[:k]), reference_root(leaves[k:]))


class KnownAnswerTests(SynchronousTestCase):
    """
    The hash functions against values computed independently.
    """

    def test_empty_root(self) -> None:
        """
        The root of an empty file is BLAKE3 of nothing.
        """
        self.assertEqual(EMPTY_ROOT, blake3(b"").digest())
        self.assertEqual(EMPTY_ROOT.hex(), BLAKE3_EMPTY)
        self.assertEqual(merkle_root([]), EMPTY_ROOT)

    def test_leaf_hash(self) -> None:
        """
        A leaf is BLAKE3 of a 0x00 byte then the data, for every buffer
        type.
        """
        expected = blake3(b"\x00abc").digest()
        self.assertEqual(len(expected), DIGEST_SIZE)
        self.assertEqual(
            [
                leaf_hash(b"abc"),
                leaf_hash(bytearray(b"abc")),
                leaf_hash(memoryview(b"xabcx")[1:4]),
            ],
            [expected] * 3,
        )
        self.assertEqual(leaf_hash(b""), blake3(b"\x00").digest())
        self.assertNotEqual(leaf_hash(b""), EMPTY_ROOT)

    def test_leaf_hash_small_and_large(self) -> None:
        """
        Small leaves (hashed in one call on a prefixed copy) and large ones
        (hashed incrementally) give the same digest as the definition, on
        either side of the size where the method changes.
        """
        data = os.urandom(LEAF_SIZE)
        for size in (1, 4096, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, LEAF_SIZE):
            expected = blake3(b"\x00" + data[:size]).digest()
            self.assertEqual(leaf_hash(data[:size]), expected, size)
            self.assertEqual(leaf_hash(memoryview(data)[:size]), expected, size)

    def test_one_leaf(self) -> None:
        """
        The root of a single leaf is the leaf itself.
        """
        leaf = leaf_hash(b"only")
        self.assertEqual(merkle_root([leaf]), leaf)

    def test_shapes(self) -> None:
        """
        The roots of 2 to 7 leaves have the RFC 6962 shape: the left
        subtree holds the largest power of two below the count.
        """
        x = [leaf_hash(bytes([i])) for i in range(7)]
        four = node(node(x[0], x[1]), node(x[2], x[3]))
        expected = {
            2: node(x[0], x[1]),
            3: node(node(x[0], x[1]), x[2]),
            4: four,
            5: node(four, x[4]),
            6: node(four, node(x[4], x[5])),
            7: node(four, node(node(x[4], x[5]), x[6])),
        }
        self.assertEqual({n: merkle_root(x[:n]) for n in expected}, expected)

    def test_order_matters(self) -> None:
        """
        Swapping two leaves changes the root.
        """
        x = [leaf_hash(b"a"), leaf_hash(b"b")]
        self.assertNotEqual(merkle_root(x), merkle_root(x[::-1]))

    @settings(max_examples=60, deadline=None, database=None)
    @given(st.integers(min_value=0, max_value=70))
    def test_reference(self, count: int) -> None:
        """
        Any number of leaves gives the root of an independent RFC 6962
        implementation.
        """
        leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(count)]
        self.assertEqual(merkle_root(leaves), reference_root(leaves))

    def test_format_hash(self) -> None:
        """
        Hashes are shown as C{blake3m:} and lowercase hex.
        """
        self.assertEqual(format_hash(EMPTY_ROOT), f"blake3m:{BLAKE3_EMPTY}")
        self.assertEqual(format_hash(bytes(range(0xF0, 0xF2))), "blake3m:f0f1")


class LeafHasherTests(SynchronousTestCase):
    """
    Tests for L{LeafHasher}.
    """

    def leaves_of(self, data: bytes, cuts: list[int]) -> list[bytes]:
        """
        Feed C{data} to a new hasher, cut at C{cuts}, and finish.
        """
        hasher = LeafHasher()
        bounds = [0, *sorted(cuts), len(data)]
        for start, end in itertools.pairwise(bounds):
            hasher.update(data[start:end])
        return hasher.finish()

    def test_empty(self) -> None:
        """
        No input, or only empty chunks, give no leaves: the root is
        L{EMPTY_ROOT}.
        """
        self.assertEqual(LeafHasher().finish(), [])
        self.assertEqual(self.leaves_of(b"", [0, 0]), [])
        self.assertEqual(merkle_root(self.leaves_of(b"", [])), EMPTY_ROOT)

    def test_edges(self) -> None:
        """
        At and around multiples of L{LEAF_SIZE}, in one piece, the leaves
        are the slices' hashes; a multiple of L{LEAF_SIZE} ends without an
        empty leaf.
        """
        counts = {}
        for size in EDGE_SIZES:
            data = DATA[:size]
            leaves = self.leaves_of(data, [])
            self.assertEqual(leaves, reference_leaves(data))
            counts[size] = len(leaves)
        self.assertEqual(list(counts.values()), [0, 1, 1, 1, 2, 2, 3, 4])

    def test_one_leaf_chunks(self) -> None:
        """
        Chunks of exactly L{LEAF_SIZE}, as bytes, bytearray and
        memoryview, each make one leaf as soon as they are fed.
        """
        hasher = LeafHasher()
        hasher.update(DATA[:LEAF_SIZE])
        self.assertEqual(len(hasher.leaves), 1)
        hasher.update(bytearray(DATA[LEAF_SIZE : 2 * LEAF_SIZE]))
        hasher.update(memoryview(DATA)[2 * LEAF_SIZE : 3 * LEAF_SIZE])
        self.assertEqual(hasher.leaves, reference_leaves(DATA[: 3 * LEAF_SIZE]))
        self.assertEqual(hasher.finish(), reference_leaves(DATA[: 3 * LEAF_SIZE]))

    @settings(max_examples=40, deadline=None, database=None)
    @given(
        st.one_of(
            st.sampled_from(EDGE_SIZES),
            st.integers(min_value=0, max_value=len(DATA)),
        ).flatmap(
            lambda size: st.tuples(
                st.just(size),
                st.lists(
                    st.one_of(
                        st.integers(min_value=0, max_value=size),
                        st.sampled_from(
                            [n * LEAF_SIZE for n in range(4) if n * LEAF_SIZE <= size]
                        ),
                    ),
                    max_size=12,
                ),
            )
        )
    )
    def test_any_chunking(self, case: tuple[int, list[int]]) -> None:
        """
        However the input is cut into chunks, the leaves are those of
        slicing it into L{LEAF_SIZE} pieces.
        """
        size, cuts = case
        data = DATA[:size]
        self.assertEqual(self.leaves_of(data, cuts), reference_leaves(data))

    def test_boundary_inside_chunk(self) -> None:
        """
        A leaf boundary crossed inside a chunk splits the chunk.
        """
        data = DATA[: LEAF_SIZE + 5]
        self.assertEqual(
            self.leaves_of(data, [LEAF_SIZE - 2, LEAF_SIZE + 2, LEAF_SIZE + 3]),
            reference_leaves(data),
        )


class ZerosTests(SynchronousTestCase):
    """
    L{LeafHasher.update_zeros}: a hole fed as a length.
    """

    @settings(max_examples=60, deadline=None, database=None)
    @given(
        st.lists(
            st.tuples(
                st.booleans(),
                st.one_of(
                    st.integers(min_value=0, max_value=3 * LEAF_SIZE),
                    st.sampled_from([1, LEAF_SIZE - 1, LEAF_SIZE, 2 * LEAF_SIZE + 1]),
                ),
            ),
            max_size=6,
        )
    )
    def test_like_zero_bytes(self, pieces: list[tuple[bool, int]]) -> None:
        """
        Zeros fed as a length, between data and wherever leaves start and
        end, give the leaves of feeding the zero bytes themselves.
        """
        fed, expected = LeafHasher(), LeafHasher()
        for zeros, length in pieces:
            if zeros:
                fed.update_zeros(length)
                expected.update(bytes(length))
            else:
                fed.update(DATA[:length])
                expected.update(DATA[:length])
        self.assertEqual(fed.finish(), expected.finish())

    def test_whole_leaves_not_hashed(self) -> None:
        """
        Whole zero leaves cost no hashing: 64 GiB of zeros take the time of
        appending 65,536 digests.
        """
        hasher = LeafHasher()
        hasher.update(b"x")
        hasher.update_zeros(64 << 30)
        leaves = hasher.finish()
        self.assertEqual(len(leaves), (64 << 10) + 1)
        self.assertEqual(leaves[1], zero_leaf_hash())
        self.assertEqual(leaves[0], leaf_hash(b"x" + bytes(LEAF_SIZE - 1)))


class HashFdRangeTests(SynchronousTestCase):
    """
    Tests for L{hash_fd_range} and L{read_range} on a real file.
    """

    def open_file(self, data: bytes) -> int:
        """
        Write C{data} to a new file and open it for reading.

        @return: the file descriptor, closed at cleanup.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        return fd

    def test_whole_file(self) -> None:
        """
        The leaves of C{[0, size)} are the file's leaves; their root is
        the root of L{LeafHasher} over the same bytes.
        """
        fd = self.open_file(DATA)
        leaves = hash_fd_range(fd, 0, len(DATA))
        self.assertEqual(leaves, reference_leaves(DATA))
        hasher = LeafHasher()
        hasher.update(DATA)
        self.assertEqual(merkle_root(leaves), merkle_root(hasher.finish()))

    def test_aligned_ranges(self) -> None:
        """
        A leaf-aligned range gives the leaves it covers, the last one short
        when the range ends inside a leaf.
        """
        fd = self.open_file(DATA)
        expected = reference_leaves(DATA)
        self.assertEqual(hash_fd_range(fd, LEAF_SIZE, 2 * LEAF_SIZE), expected[1:2])
        self.assertEqual(hash_fd_range(fd, LEAF_SIZE, 3 * LEAF_SIZE), expected[1:3])
        self.assertEqual(
            hash_fd_range(fd, 2 * LEAF_SIZE, 2 * LEAF_SIZE + 100),
            [leaf_hash(DATA[2 * LEAF_SIZE : 2 * LEAF_SIZE + 100])],
        )
        self.assertEqual(
            hash_fd_range(fd, 0, LEAF_SIZE + 1),
            [expected[0], leaf_hash(DATA[LEAF_SIZE : LEAF_SIZE + 1])],
        )

    def test_past_eof(self) -> None:
        """
        A range reaching past the end of the file is clipped to it; one
        starting at or after the end has no leaves.
        """
        fd = self.open_file(DATA)
        expected = reference_leaves(DATA)
        self.assertEqual(hash_fd_range(fd, 0, 100 * LEAF_SIZE), expected)
        self.assertEqual(hash_fd_range(fd, 3 * LEAF_SIZE, 5 * LEAF_SIZE), expected[3:])
        self.assertEqual(hash_fd_range(fd, 4 * LEAF_SIZE, 5 * LEAF_SIZE), [])

    def test_exact_multiple(self) -> None:
        """
        A file of exactly two leaves has two leaves, not a third empty one,
        even when the range asks for more.
        """
        fd = self.open_file(DATA[: 2 * LEAF_SIZE])
        self.assertEqual(
            hash_fd_range(fd, 0, 3 * LEAF_SIZE),
            reference_leaves(DATA[: 2 * LEAF_SIZE]),
        )

    def test_empty_ranges(self) -> None:
        """
        An empty or reversed range has no leaves.
        """
        fd = self.open_file(DATA)
        self.assertEqual(hash_fd_range(fd, 0, 0), [])
        self.assertEqual(hash_fd_range(fd, LEAF_SIZE, LEAF_SIZE), [])
        self.assertEqual(hash_fd_range(fd, LEAF_SIZE, 1), [])

    def test_empty_file(self) -> None:
        """
        An empty file has no leaves, so its root is L{EMPTY_ROOT}.
        """
        fd = self.open_file(b"")
        leaves = hash_fd_range(fd, 0, LEAF_SIZE)
        self.assertEqual(leaves, [])
        self.assertEqual(merkle_root(leaves), EMPTY_ROOT)

    def test_unaligned(self) -> None:
        """
        A start that is not a multiple of L{LEAF_SIZE} is a L{ValueError}.
        """
        fd = self.open_file(b"abc")
        for start in [1, LEAF_SIZE - 1, LEAF_SIZE + 1]:
            error = self.assertRaises(
                ValueError, hash_fd_range, fd, start, 2 * LEAF_SIZE
            )
            self.assertEqual(
                str(error), f"hash range start {start} is not leaf-aligned"
            )

    def test_bad_fd(self) -> None:
        """
        A read error is an L{OSError}.
        """
        fd = os.open(self.mktemp(), os.O_WRONLY | os.O_CREAT)
        self.addCleanup(os.close, fd)
        self.assertRaises(OSError, hash_fd_range, fd, 0, 10)

    def test_read_range(self) -> None:
        """
        L{read_range} yields chunks cut at multiples of C{chunk} from
        C{start} and stops at the end of the range or of the file.
        """
        fd = self.open_file(b"0123456789")
        self.assertEqual(list(read_range(fd, 1, 8, chunk=3)), [b"123", b"456", b"7"])
        self.assertEqual(list(read_range(fd, 6, 100, chunk=3)), [b"678", b"9"])
        self.assertEqual(list(read_range(fd, 10, 20)), [])
        self.assertEqual(list(read_range(fd, 5, 5)), [])


class LeafRangeTests(SynchronousTestCase):
    """
    Tests for L{leaf_range} and L{align_down}.
    """

    def test_leaf_range(self) -> None:
        """
        Leaf C{i} covers C{[i * LEAF_SIZE, (i + 1) * LEAF_SIZE)}, clipped
        to the file size.
        """
        self.assertEqual(LEAF_SIZE, 1 << 20)
        cases = {
            (0, 0): (0, 0),
            (0, 100): (0, 100),
            (0, 5 * LEAF_SIZE): (0, LEAF_SIZE),
            (1, 3 * LEAF_SIZE): (LEAF_SIZE, 2 * LEAF_SIZE),
            (2, 2 * LEAF_SIZE + 7): (2 * LEAF_SIZE, 2 * LEAF_SIZE + 7),
            (2, 3 * LEAF_SIZE): (2 * LEAF_SIZE, 3 * LEAF_SIZE),
        }
        self.assertEqual(
            {args: leaf_range(*args) for args in cases},
            cases,
        )

    def test_leaf_range_matches_hasher(self) -> None:
        """
        The ranges of a file's leaves are the pieces L{LeafHasher} hashes.
        """
        size = len(DATA)
        count = len(reference_leaves(DATA))
        self.assertEqual(
            [leaf_hash(DATA[slice(*leaf_range(i, size))]) for i in range(count)],
            reference_leaves(DATA),
        )

    def test_align_down(self) -> None:
        """
        L{align_down} gives the start of the leaf holding an offset.
        """
        cases = {
            0: 0,
            1: 0,
            LEAF_SIZE - 1: 0,
            LEAF_SIZE: LEAF_SIZE,
            LEAF_SIZE + 1: LEAF_SIZE,
            5 * LEAF_SIZE + 7: 5 * LEAF_SIZE,
        }
        self.assertEqual({offset: align_down(offset) for offset in cases}, cases)
