"""
Tests for L{realize.services.lock}: real locks on real directories, a fake
clock for the wait.  Two L{SourceLocks} in one process conflict as two
processes do: C{flock(2)} locks belong to open files, not to processes.
"""

from __future__ import annotations

import os

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import Conflict
from realize.model import ArenaName
from realize.services.lock import LOCK_POLL, SourceLocks

from .helpers import lock_held, sync_run_in_thread

A = ArenaName("a")
B = ArenaName("b")


class SourceLocksTests(SynchronousTestCase):
    """
    L{SourceLocks}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.root = os.path.abspath(self.mktemp())
        self.a = os.path.join(self.root, "a")
        self.b = os.path.join(self.root, "b")
        os.makedirs(self.a)
        os.makedirs(self.b)
        self.messages: list[str] = []

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def locks(self) -> SourceLocks:
        locks = SourceLocks(self.clock, sync_run_in_thread, self.messages.append)
        self.addCleanup(locks.release)
        return locks

    def test_held_until_released(self) -> None:
        """
        Each directory is locked until L{SourceLocks.release}.
        """
        locks = self.locks()
        self.successResultOf(
            Deferred.fromCoroutine(locks.acquire({A: self.a, B: self.b}, 1.0))
        )
        self.assertTrue(lock_held(self.a))
        self.assertTrue(lock_held(self.b))
        locks.release()
        self.assertFalse(lock_held(self.a))
        self.assertFalse(lock_held(self.b))

    def test_waits_for_the_other(self) -> None:
        """
        A second move waits, says so once, and gets the lock as soon as the
        first releases it, within its wait.
        """
        first = self.locks()
        self.successResultOf(Deferred.fromCoroutine(first.acquire({A: self.a}, 0)))
        second = self.locks()
        d = Deferred.fromCoroutine(second.acquire({A: self.a}, 10.0))
        self.clock.advance(5)
        self.assertNoResult(d)
        self.assertEqual(
            self.messages,
            [
                f"another realize-move is moving from arena 'a' ({self.a}); "
                "waiting up to 10 s"
            ],
        )
        first.release()
        self.clock.advance(LOCK_POLL)
        self.successResultOf(d)
        self.assertTrue(lock_held(self.a))
        second.release()
        self.assertFalse(lock_held(self.a))

    def test_refuses_after_wait(self) -> None:
        """
        Still held after the wait: L{Conflict} naming the arena and the
        directory, and the second holds nothing (its lock of another
        arena taken meanwhile is released).
        """
        first = self.locks()
        self.successResultOf(Deferred.fromCoroutine(first.acquire({B: self.b}, 0)))
        second = self.locks()
        d = Deferred.fromCoroutine(second.acquire({A: self.a, B: self.b}, 2.0))
        self.clock.pump([LOCK_POLL] * 20)
        error = self.failureResultOf(d, Conflict).value
        self.assertEqual(
            str(error),
            f"another realize-move is moving from arena 'b' ({self.b}); "
            "still there after 2 s, refused (--wait DURATION waits longer)",
        )
        self.assertFalse(lock_held(self.a))
        first.release()
        self.assertFalse(lock_held(self.b))

    def test_no_wait(self) -> None:
        """
        A wait of 0 refuses at once, without a timer or a message.
        """
        first = self.locks()
        self.successResultOf(Deferred.fromCoroutine(first.acquire({A: self.a}, 0)))
        second = self.locks()
        self.failureResultOf(
            Deferred.fromCoroutine(second.acquire({A: self.a}, 0)), Conflict
        )
        self.assertEqual(self.messages, [])

    def test_cancelled(self) -> None:
        """
        Cancelling the wait (SIGINT, --max-duration) leaves nothing held
        and no timer.
        """
        first = self.locks()
        self.successResultOf(
            Deferred.fromCoroutine(first.acquire({A: self.a, B: self.b}, 0))
        )
        second = self.locks()
        d = Deferred.fromCoroutine(second.acquire({A: self.a}, 10.0))
        self.clock.advance(1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        first.release()
        self.assertFalse(lock_held(self.a))

    def test_missing_directory(self) -> None:
        """
        A directory that cannot be opened is not locked, and is no error
        here: opening the side of the move reports it.
        """
        locks = self.locks()
        missing = os.path.join(self.root, "missing")
        self.successResultOf(
            Deferred.fromCoroutine(locks.acquire({A: missing, B: self.b}, 0))
        )
        self.assertTrue(lock_held(self.b))
