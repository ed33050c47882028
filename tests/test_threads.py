"""
Tests for L{realize.threads}: fair shares of the thread pools.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import NetworkError
from realize.threads import BoundedRunner


class FakePool:
    """
    A L{realize.interfaces.RunInThread} whose jobs finish when the test
    says so.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], Deferred[Any]]] = []

    def __call__(
        self, f: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((lambda: f(*args, **kwargs), d))
        return d

    def finish(self, index: int = 0) -> None:
        run, d = self.jobs.pop(index)
        d.callback(run())


class BoundedRunnerTests(SynchronousTestCase):
    """
    L{BoundedRunner} keeps at most a few jobs of one connection in a pool.
    """

    def test_limit_and_order(self) -> None:
        """
        Beyond the limit, jobs wait, and enter the pool in the order they
        were asked for as earlier ones finish.
        """
        pool = FakePool()
        runner = BoundedRunner(pool, 2)
        results = [runner(lambda n=n: n) for n in range(5)]
        self.assertEqual(len(pool.jobs), 2)
        self.assertEqual(runner.waiting, 3)
        pool.finish()
        self.assertEqual(len(pool.jobs), 2)
        while pool.jobs:
            pool.finish()
        self.assertEqual([self.successResultOf(d) for d in results], [0, 1, 2, 3, 4])

    def test_close(self) -> None:
        """
        Closing fails every waiting job with its own L{NetworkError} and
        refuses new ones; jobs already in the pool still finish.
        """
        pool = FakePool()
        runner = BoundedRunner(pool, 1, "peer a")
        running = runner(lambda: "done")
        waiting = [runner(lambda: "never") for _ in range(2)]
        runner.close()
        errors = [self.failureResultOf(d, NetworkError).value for d in waiting]
        self.assertIsNot(errors[0], errors[1])
        self.assertIn("peer a closed", str(errors[0]))
        self.failureResultOf(runner(lambda: "late"), NetworkError)
        pool.finish()
        self.assertEqual(self.successResultOf(running), "done")
        self.assertEqual(pool.jobs, [])

    def test_cancel_waiting(self) -> None:
        """
        A waiting job that is cancelled leaves the queue: it never runs.
        """
        pool = FakePool()
        runner = BoundedRunner(pool, 1)
        first = runner(lambda: 1)
        second = runner(lambda: 2)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual(runner.waiting, 0)
        pool.finish()
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(pool.jobs, [])
