"""
Tests for L{realize.services.repair} on its own; the repairers at work
are tested through the mover (tests/test_mover.py).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from realize.hashing import LEAF_SIZE
from realize.services.repair import differing_ranges


class DifferingRangesTests(SynchronousTestCase):
    """
    L{differing_ranges}.
    """

    def test_merges_adjacent(self) -> None:
        """
        Adjacent differing leaves merge; the last range ends at the size;
        leaves the destination lacks differ.
        """
        source = [b"a", b"b", b"c", b"d", b"e"]
        destination = [b"a", b"X", b"Y", b"d"]
        size = 4 * LEAF_SIZE + 10
        self.assertEqual(
            differing_ranges(source, destination, size),
            [(LEAF_SIZE, 3 * LEAF_SIZE), (4 * LEAF_SIZE, size)],
        )

    def test_equal(self) -> None:
        """
        Equal leaves: nothing differs.
        """
        self.assertEqual(differing_ranges([b"a"], [b"a"], 5), [])
