"""
Tests for L{realize.services.budget}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from realize.services.budget import ByteBudget


class ByteBudgetTests(SynchronousTestCase):
    """
    L{ByteBudget}.
    """

    def test_bytes(self) -> None:
        """
        Holders wait until enough bytes are free, first come first served.
        """
        budget = ByteBudget(100, 10)
        first = budget.acquire(60)
        second = budget.acquire(50)
        third = budget.acquire(10)
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertNoResult(third)
        budget.release(60)
        self.successResultOf(second)
        self.successResultOf(third)

    def test_files(self) -> None:
        """
        At most max_files holders at once.
        """
        budget = ByteBudget(100, 2)
        ds = [budget.acquire(1) for _ in range(3)]
        self.successResultOf(ds[0])
        self.successResultOf(ds[1])
        self.assertNoResult(ds[2])
        budget.release(1)
        self.successResultOf(ds[2])

    def test_weight(self) -> None:
        """
        Weights are at least 1 and at most the capacity.
        """
        budget = ByteBudget(100, 2)
        self.assertEqual(
            [budget.weight(0), budget.weight(50), budget.weight(10**12)], [1, 50, 100]
        )
