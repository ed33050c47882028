"""
Tests for L{realize.services.job}: retries, backoff, deadline and stop,
with a fake clock and in-memory stores.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import Conflict, IOFailure, NetworkError, NoSpace, SideError
from realize.interfaces import Store
from realize.model import ArenaName
from realize.services.job import RETRY_DELAYS, MoveJob, Outcome, retry_delay
from realize.services.report import FileResult
from realize.storage.memory import MemoryStore
from realize.tap._common import EXIT_CODES, EXIT_ERROR
from tests.faults import Fault, FaultyStore

A = ArenaName("a")


class Recorder:
    """
    A L{JobObserver} that records warnings, errors and finished files.
    """

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.done: list[FileResult] = []

    def listed(self, arena: ArenaName, files: int, size: int) -> None:
        pass

    def file_started(self, arena: ArenaName, path: str, size: int) -> None:
        pass

    def transferred(self, arena: ArenaName, path: str, size: int) -> None:
        pass

    def file_done(self, result: FileResult) -> None:
        self.done.append(result)

    def retrying(self, error: BaseException, delay: float, retry: int) -> None:
        self.warnings.append(f"{error}; retrying in {delay:g} s (retry {retry})")

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def error(self, message: str) -> None:
        self.errors.append(message)


class Opener:
    """
    Opens the same two stores at each attempt, failing the first ones with
    a network error if asked.
    """

    def __init__(self, source: Store, destination: Store, failures: int = 0) -> None:
        self.source = source
        self.destination = destination
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> tuple[Store, Store]:
        self.calls += 1
        if self.calls <= self.failures:
            raise SideError(
                "destination", "b (127.0.0.1:9771)", NetworkError("connection refused")
            )
        return self.source, self.destination


class JobTests(SynchronousTestCase):
    """
    L{MoveJob}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.observer = Recorder()
        self.source = MemoryStore.with_files(
            "a", {f"f{i}": b"x" * (100 + i) for i in range(5)}, label="src"
        )
        self.destination = MemoryStore.with_files("a", label="dst")

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def job(self, opener: Opener, max_duration: float | None = None) -> MoveJob:
        return MoveJob(self.clock, opener, [A], self.observer, max_duration)

    def test_ok(self) -> None:
        """
        A move without trouble ends "ok" with every file moved.
        """
        job = self.job(Opener(self.source, self.destination))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(job.run())), "ok")
        self.assertEqual(len(job.report.moved), 5)
        self.assertEqual(job.retries, 0)

    def test_backoff_schedule(self) -> None:
        """
        The delays between attempts are 5 s, 15 s, 30 s, 1 min, 2 min,
        5 min, then 5 min again.
        """
        self.assertEqual(
            [retry_delay(n) for n in range(8)],
            [5, 15, 30, 60, 120, 300, 300, 300],
        )
        self.assertEqual(RETRY_DELAYS[-1], 300)

    def test_first_connection_fails_fast(self) -> None:
        """
        Without --max-duration, a first connection that fails is not
        retried: the job fails with the error.
        """
        opener = Opener(self.source, self.destination, failures=1)
        job = self.job(opener)
        self.assertEqual(
            self.successResultOf(Deferred.fromCoroutine(job.run())), "failed"
        )
        self.assertEqual(opener.calls, 1)
        self.assertIn("connection refused", str(job.report.errors[0]))

    def test_first_connection_retried_with_deadline(self) -> None:
        """
        With --max-duration, a failing connection is retried on the backoff
        schedule, and the job succeeds once it connects.
        """
        opener = Opener(self.source, self.destination, failures=3)
        job = self.job(opener, max_duration=3600)
        d = Deferred.fromCoroutine(job.run())
        self.assertEqual(opener.calls, 1)
        for delay, calls in ((5, 2), (15, 3), (30, 4)):
            self.clock.advance(delay - 0.1)
            self.assertEqual(opener.calls, calls - 1)
            self.clock.advance(0.1)
            self.assertEqual(opener.calls, calls)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(job.retries, 3)
        self.assertEqual(len(self.observer.warnings), 3)
        self.assertIn("retrying in 5 s", self.observer.warnings[0])

    def test_deadline_while_waiting(self) -> None:
        """
        The deadline passing during a retry delay ends the job at once with
        "deadline".
        """
        opener = Opener(self.source, self.destination, failures=100)
        job = self.job(opener, max_duration=60)
        d = Deferred.fromCoroutine(job.run())
        self.clock.advance(5)
        self.clock.advance(15)
        self.clock.advance(30)
        self.assertNoResult(d)
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d), "deadline")
        self.assertEqual(opener.calls, 4)

    def test_connection_lost_resumes(self) -> None:
        """
        A connection lost during the move is retried after 5 s and the job
        finishes what is left.
        """
        destination = FaultyStore(self.destination).add(
            Fault("write_files", "disconnect")
        )
        opener = Opener(self.source, destination)
        job = self.job(opener)
        d = Deferred.fromCoroutine(job.run())
        self.assertNoResult(d)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(len(job.report.moved), 5)
        self.assertEqual(job.report.failed, [])
        self.assertEqual(self.source.finals[A], {})

    def test_progress_resets_backoff(self) -> None:
        """
        Two refused connections wait 5 s then 15 s; an attempt that moves a
        file before losing its connection starts the schedule over: the
        next retry waits 5 s, not 30 s.
        """
        big = MemoryStore.with_files(
            "a", {f"f{i}": b"x" * (300 << 10) for i in range(3)}, label="src"
        )
        destination = FaultyStore(self.destination).add(
            Fault("write", "disconnect", path="f1")
        )
        opener = Opener(big, destination, failures=2)
        job = self.job(opener, max_duration=3600)
        d = Deferred.fromCoroutine(job.run())
        self.clock.advance(5)
        self.clock.advance(15)
        self.assertEqual(opener.calls, 3)
        self.assertEqual([r.path for r in job.report.moved], ["f0"])
        self.assertNoResult(d)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(sorted(r.path for r in job.report.moved), ["f0", "f1", "f2"])
        self.assertEqual(job.retries, 3)

    def test_not_retried(self) -> None:
        """
        A disk error is not retried: the job fails with the file's error.
        """
        destination = FaultyStore(self.destination).add(
            Fault("write_files", "error", error=NoSpace("disk full"), times=-1)
        )
        job = self.job(Opener(self.source, destination))
        self.assertEqual(
            self.successResultOf(Deferred.fromCoroutine(job.run())), "failed"
        )
        self.assertEqual(job.retries, 0)
        self.assertEqual(len(job.report.failed), 5)

    def test_stop_during_move(self) -> None:
        """
        Stopping while files move ends the job with the reason; files
        already moved count, the others stay at the source.
        """
        destination = Stalling.with_files("a", label="dst")
        job = self.job(Opener(self.source, destination))
        d = Deferred.fromCoroutine(job.run())
        self.assertNoResult(d)
        job.stop(Outcome.INTERRUPTED)
        self.assertEqual(self.successResultOf(d), "interrupted")
        self.assertEqual(len(self.source.finals[A]), 5)
        self.assertEqual(self.observer.errors, [])

    def test_deadline_during_move(self) -> None:
        """
        The deadline passing while files move ends the job with
        "deadline".
        """
        destination = Stalling.with_files("a", label="dst")
        job = self.job(Opener(self.source, destination), max_duration=30)
        d = Deferred.fromCoroutine(job.run())
        self.clock.advance(30)
        self.assertEqual(self.successResultOf(d), "deadline")

    def test_listing_error_fails(self) -> None:
        """
        A listing that fails (here: the source could not open a directory
        of the tree) fails the job, which the command exits 1 for: it is
        not retried and nothing moves, the error naming the side and the
        directory is in the report.
        """
        source = FaultyStore(self.source).add(
            Fault(
                "list",
                "error",
                error=IOFailure("arena 'a': cannot list 'd/e': Too many open files"),
                times=-1,
            )
        )
        job = self.job(Opener(source, self.destination), max_duration=3600)
        outcome = self.successResultOf(Deferred.fromCoroutine(job.run()))
        self.assertIs(outcome, Outcome.FAILED)
        self.assertEqual(EXIT_CODES[outcome], EXIT_ERROR)
        self.assertEqual(job.retries, 0)
        self.assertEqual(
            [str(e) for e in job.report.errors],
            ["source src: arena 'a': cannot list 'd/e': Too many open files"],
        )
        self.assertEqual(len(self.source.finals[A]), 5)
        self.assertEqual(self.destination.finals[A], {})

    def test_prepare_runs_once(self) -> None:
        """
        The preparation (the source locks) runs once before the first
        attempt, not again for each retry.
        """
        calls: list[int] = []

        async def prepare() -> None:
            calls.append(len(calls))

        opener = Opener(self.source, self.destination, failures=2)
        job = MoveJob(self.clock, opener, [A], self.observer, 3600, prepare=prepare)
        d = Deferred.fromCoroutine(job.run())
        self.clock.advance(5)
        self.clock.advance(15)
        self.assertEqual(self.successResultOf(d), Outcome.OK)
        self.assertEqual(calls, [0])
        self.assertEqual(opener.calls, 3)

    def test_prepare_fails(self) -> None:
        """
        A preparation that fails (another move holds a source) fails the
        job with its error, before any store is opened.
        """

        async def prepare() -> None:
            raise Conflict("another realize-move is moving from arena 'a'")

        opener = Opener(self.source, self.destination)
        job = MoveJob(self.clock, opener, [A], self.observer, prepare=prepare)
        self.assertEqual(
            self.successResultOf(Deferred.fromCoroutine(job.run())), Outcome.FAILED
        )
        self.assertEqual(
            [str(e) for e in job.report.errors],
            ["another realize-move is moving from arena 'a'"],
        )
        self.assertEqual(opener.calls, 0)

    def test_stop_during_prepare(self) -> None:
        """
        Stopping while the preparation waits cancels it and ends the job
        with the reason; no store is opened.
        """
        waiting: Deferred[None] = Deferred()

        async def prepare() -> None:
            await waiting

        opener = Opener(self.source, self.destination)
        job = MoveJob(self.clock, opener, [A], self.observer, 60, prepare=prepare)
        d = Deferred.fromCoroutine(job.run())
        self.assertNoResult(d)
        job.stop(Outcome.TERMINATED)
        self.assertEqual(self.successResultOf(d), Outcome.TERMINATED)
        # Cancelled (the coroutine awaiting it consumed the failure).
        self.assertTrue(waiting.called)
        self.assertEqual(opener.calls, 0)


class Stalling(MemoryStore):
    """
    A destination whose batch writes never complete.
    """

    async def write_files(self, *args: Any, **kwargs: Any) -> Any:
        await Deferred()
