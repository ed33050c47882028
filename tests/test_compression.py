"""
Tests for the compression of data chunks (#compress): the zstd helpers of
L{realize.net.framing} and realize-move --compress end to end.
"""

from __future__ import annotations

import os
import random

import zstandard
from twisted.trial.unittest import SynchronousTestCase, TestCase

from realize.errors import BadRequest
from realize.net.codec import MAX_DATA_FRAME, compress, decompress

from .integration import Household, move_from_daemon, read_tree


def text(size: int, seed: int = 0) -> bytes:
    """
    Compressible bytes: lines of words.
    """
    rng = random.Random(seed)
    words = [f"word{i}" for i in range(500)]
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choice(words) for _ in range(12)) + "\n").encode()
    return bytes(out[:size])


class ZstdTests(SynchronousTestCase):
    """
    L{compress} and L{decompress}.
    """

    def test_round_trip(self) -> None:
        """
        A chunk comes back equal, and text shrinks.
        """
        chunk = text(MAX_DATA_FRAME)
        packed = compress(chunk)
        self.assertLess(len(packed), len(chunk) // 2)
        self.assertEqual(decompress(packed), chunk)
        self.assertEqual(decompress(compress(b"")), b"")

    def test_bomb_refused(self) -> None:
        """
        A frame that would decompress to more than a data frame is refused
        before anything is allocated.
        """
        bomb = zstandard.ZstdCompressor().compress(bytes(MAX_DATA_FRAME + 1))
        self.assertRaises(BadRequest, decompress, bomb)

    def test_malformed_refused(self) -> None:
        """
        Garbage, and a frame that does not declare its size, are refused.
        """
        self.assertRaises(BadRequest, decompress, b"not zstd at all")
        streamed = zstandard.ZstdCompressor(write_content_size=False).compress(
            b"x" * 10
        )
        self.assertRaises(BadRequest, decompress, streamed)


class CompressIntegrationTests(TestCase):
    """
    realize-move --compress over real TLS.
    """

    timeout = 60

    async def test_compressed_both_ways(self) -> None:
        """
        With --compress, compressible files (batched and streamed) move to
        the daemon and back identical, and the daemon agrees to compress.
        """
        household = Household(self)
        files = {"small.txt": text(50_000, 1), "big.txt": text(5 << 20, 2)}
        files["random.bin"] = os.urandom(3 << 20)
        for name, content in files.items():
            with open(os.path.join(household.source, name), "wb") as f:
                f.write(content)
        await household.start_daemon()
        run = await household.move("docs", "--compress", "3")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(read_tree(household.destination), files)
        assert household.daemon is not None
        self.assertIn(b"asked for compressed data (zstd level 3)", household.daemon.out)
        run = await move_from_daemon(household, "docs", "--compress", "1")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(read_tree(household.source), files)

    async def test_bad_level(self) -> None:
        """
        A level out of range is a usage error.
        """
        household = Household(self)
        run = await household.move("docs", "--compress", "42")
        self.assertEqual(run.code, 1, run)
        self.assertIn("zstd level from 1 to 19", run.err)
