"""
A move job: the mover run until done, through retries, within a deadline
(#retry, #max-duration, #sigterm).

L{MoveJob.run} opens both sides, moves, and on a network error (refused,
lost, timed out) waits and tries again from what is on disk (partial
files, files already moved), with the backoff of DESIGN.md section 8:
5 s, 15 s, 30 s, 1 min, 2 min, 5 min, then every 5 min, starting over
after an attempt that moved something.  Local, disk, application and
authentication errors are not retried.  A deadline (C{--max-duration}) or
a signal stops the job at once; partial files stay for the next run.

The job takes an injected clock and a function that opens the stores, so
it is tested with C{twisted.internet.task.Clock} and in-memory stores.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from realize.errors import describe, is_retryable
from realize.interfaces import Store
from realize.model import ArenaName
from realize.services.mover import Mover
from realize.services.report import MoveObserver, MoveReport, MoveStats

__all__ = [
    "RETRY_DELAYS",
    "JobObserver",
    "MoveJob",
    "Outcome",
    "retry_delay",
]

log = Logger(namespace="realize.move")

T = TypeVar("T")


class Outcome(enum.StrEnum):
    """
    How a job ends.  The commands map these to exit codes
    (L{realize.tap._common.EXIT_CODES}).
    """

    #: Every file moved.
    OK = "ok"
    #: An error, or a file failed.
    FAILED = "failed"
    #: Stopped by the deadline (C{--max-duration}).
    DEADLINE = "deadline"
    #: Stopped by SIGINT.
    INTERRUPTED = "interrupted"
    #: Stopped by SIGTERM.
    TERMINATED = "terminated"


#: Seconds to wait before the n-th retry; the last repeats.
RETRY_DELAYS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0)


def retry_delay(attempt: int) -> float:
    """
    @param attempt: retries already made since the last progress (0 for
        the first retry).
    @return: seconds to wait before the next one.
    """
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]


class JobObserver(MoveObserver, Protocol):
    """
    A L{MoveObserver} that is also told about retries.
    """

    def retrying(self, error: BaseException, delay: float, retry: int) -> None:
        """
        An attempt failed with a network error; the next starts in
        C{delay} seconds.

        @param retry: the number of this retry, from 1.
        """


@define(eq=False)
class MoveJob:
    """
    Moves arenas until done, retrying network errors.

    @ivar clock: for retry delays and the deadline.
    @ivar open_stores: opens the source and the destination; raises
        L{realize.errors.RealizeError} (a L{realize.errors.SideError}
        naming the side) if it cannot.
    @ivar arenas: the arenas to move.
    @ivar observer: told about progress, retries and errors.
    @ivar max_duration: seconds before the job stops (exit 11), or
        C{None}.
    @ivar stats: what was sent, over all attempts.
    @ivar report: every file moved over all attempts, and the failures
        and errors of the last attempt.
    @ivar retries: retries made.
    @ivar prepare: run once before the first attempt, stopped like the
        rest (e.g. taking the locks of the source's arenas,
        L{realize.services.lock}), or C{None}; an error it raises fails
        the job, without retries.
    @ivar log_moves: whether the mover logs an info event per file moved
        (L{Mover.log_moves}).
    """

    clock: IReactorTime
    open_stores: Callable[[], Coroutine[Any, Any, tuple[Store, Store]]]
    arenas: Sequence[ArenaName]
    observer: JobObserver
    max_duration: float | None = None
    stats: MoveStats = field(factory=MoveStats)
    report: MoveReport = field(factory=MoveReport)
    retries: int = 0
    prepare: Callable[[], Coroutine[Any, Any, None]] | None = None
    log_moves: bool = True
    _work: Deferred[Any] | None = field(default=None, init=False)
    _stopped: Outcome | None = field(default=None, init=False)

    def stop(self, reason: Outcome) -> None:
        """
        Stop the job at once: what is running is cancelled, partial files
        stay.

        @param reason: L{Outcome.DEADLINE}, L{Outcome.INTERRUPTED} or
            L{Outcome.TERMINATED}.
        """
        if self._stopped is None:
            self._stopped = reason
        if self._work is not None and not self._work.called:
            self._work.cancel()

    async def _cancellable(self, work: Coroutine[Any, Any, T]) -> T:
        if self._stopped is not None:
            work.close()
            raise CancelledError()
        self._work = Deferred.fromCoroutine(work)
        try:
            return await self._work  # type: ignore[no-any-return]
        finally:
            self._work = None

    async def _sleep(self, seconds: float) -> None:
        if self._stopped is not None:
            raise CancelledError()
        self._work = deferLater(self.clock, seconds)
        try:
            await self._work
        finally:
            self._work = None

    async def run(self) -> Outcome:
        """
        Run the job.

        @return: L{Outcome.OK} if every file moved, L{Outcome.FAILED} on
            an error (a listing that failed included) or a failed file, or
            why it was stopped.
        """
        deadline = None
        if self.max_duration is not None:
            deadline = self.clock.callLater(
                self.max_duration, self.stop, Outcome.DEADLINE
            )
        try:
            return await self._run()
        except CancelledError:
            if self._stopped is None:
                raise
            return self._stopped
        finally:
            if deadline is not None and deadline.active():
                deadline.cancel()

    async def _run(self) -> Outcome:
        if self.prepare is not None:
            try:
                await self._cancellable(self.prepare())
            except CancelledError:
                raise
            except Exception as e:
                self.report.errors = [e]
                return Outcome.FAILED
        connected = False
        attempt = 0
        while True:
            before = self._progress()
            try:
                source, destination = await self._cancellable(self.open_stores())
            except CancelledError:
                raise
            except Exception as e:
                if not is_retryable(e) or (not connected and self.max_duration is None):
                    self.report.errors = [e]
                    return Outcome.FAILED
                error: BaseException = e
            else:
                connected = True
                try:
                    report = await self._attempt(source, destination)
                finally:
                    for store in (source, destination):
                        with contextlib.suppress(Exception):
                            await store.close(abort=self._stopped is not None)
                moved = self.report.moved
                self.report = MoveReport(
                    results=moved + report.results, errors=report.errors
                )
                if report.ok:
                    return Outcome.OK
                if not report.retryable:
                    return Outcome.FAILED
                error = next(
                    e
                    for e in [*report.errors, *(r.error for r in report.failed)]
                    if e is not None
                )
            if self._progress() != before:
                attempt = 0
            delay = retry_delay(attempt)
            attempt += 1
            self.retries += 1
            log.warn(
                "{error}; retrying in {delay} s (attempt {attempt})",
                error=describe(error),
                delay=delay,
                attempt=self.retries,
            )
            self.observer.retrying(error, delay, self.retries)
            await self._sleep(delay)

    def _progress(self) -> tuple[int, int]:
        """
        @return: what the job achieved so far: files moved, bytes sent.  An
            attempt that changed it made progress (a large file that moved
            some MiB before the connection was lost counts).
        """
        return len(self.report.moved), self.stats.streamed_bytes

    async def _attempt(self, source: Store, destination: Store) -> MoveReport:
        mover = Mover(
            source,
            destination,
            observer=self.observer,
            stats=self.stats,
            log_moves=self.log_moves,
        )
        try:
            return await self._cancellable(mover.move(self.arenas))
        except CancelledError:
            self.report.results.extend(mover.report.moved)
            raise
