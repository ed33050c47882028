"""
Tests for L{realize.fuse.bridge}: calls from FUSE threads into the reactor,
with a deadline and a shutdown path.

The "FUSE thread" is a real thread; the test's own thread plays the
reactor, running what the bridge hands it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.python import threadable
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import IOFailure, NotFound
from realize.fuse.bridge import DEADLINE, Bridge

#: Seconds a test waits for its thread (never reached when the code works).
WAIT = 10.0


@define
class QueueReactor:
    """
    C{IReactorFromThreads} whose calls wait in a queue until the test
    thread runs them.
    """

    calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = field(
        factory=queue.Queue
    )

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.calls.put((f, args))

    def take(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.calls.get(timeout=WAIT)

    def run_one(self) -> None:
        f, args = self.take()
        f(*args)


@define
class InThread:
    """
    A call made from another thread, with its outcome.
    """

    thread: threading.Thread
    outcome: list[Any] = field(factory=list)

    def result(self) -> Any:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the call did not return"
        [(kind, value)] = self.outcome
        if kind == "error":
            raise value
        return value


def in_thread(f: Callable[[], Any]) -> InThread:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("result", f()))
        except BaseException as e:
            outcome.append(("error", e))

    call = InThread(threading.Thread(target=run, daemon=True), outcome)
    call.thread.start()
    return call


class BridgeTests(SynchronousTestCase):
    """
    L{Bridge.call} runs a function in the reactor for another thread.
    """

    def setUp(self) -> None:
        self.reactor = QueueReactor()
        self.bridge = Bridge(self.reactor)

    def test_deadline_constant(self) -> None:
        """
        The default deadline is at most 10 s (DESIGN.md section 10).
        """
        self.assertLessEqual(DEADLINE, 10.0)
        self.assertEqual(self.bridge.deadline, DEADLINE)

    def test_value(self) -> None:
        """
        A plain return value reaches the calling thread; the function runs
        in the reactor's thread (here, the test's).
        """
        threads: list[threading.Thread] = []

        def f(x: int) -> int:
            threads.append(threading.current_thread())
            return x + 1

        call = in_thread(lambda: self.bridge.call(f, 41))
        self.reactor.run_one()
        self.assertEqual(call.result(), 42)
        self.assertEqual(threads, [threading.current_thread()])

    def test_deferred(self) -> None:
        """
        The result of a Deferred reaches the calling thread once it fires.
        """
        d: Deferred[str] = Deferred()
        call = in_thread(lambda: self.bridge.call(lambda: d))
        self.reactor.run_one()
        self.assertTrue(call.thread.is_alive())
        d.callback("data")
        self.assertEqual(call.result(), "data")

    def test_error(self) -> None:
        """
        An error of the function, or of its Deferred, is raised in the
        calling thread as is.
        """

        def f() -> None:
            raise NotFound("gone")

        call = in_thread(lambda: self.bridge.call(f))
        self.reactor.run_one()
        self.assertRaises(NotFound, call.result)

        d: Deferred[None] = Deferred()
        call = in_thread(lambda: self.bridge.call(lambda: d))
        self.reactor.run_one()
        d.errback(NotFound("also gone"))
        self.assertRaises(NotFound, call.result)

    def test_deadline_before_start(self) -> None:
        """
        A call whose deadline passes before the reactor ran it fails with
        L{IOFailure}, and the function is then never run.
        """
        bridge = Bridge(self.reactor, deadline=0.0)
        ran: list[bool] = []
        call = in_thread(lambda: bridge.call(lambda: ran.append(True)))
        error = self.assertRaises(IOFailure, call.result)
        self.assertIn("deadline", str(error))
        self.reactor.run_one()
        self.assertEqual(ran, [])

    def test_deadline_cancels(self) -> None:
        """
        A call whose Deferred does not fire within the deadline fails with
        L{IOFailure}, and its Deferred is cancelled in the reactor.
        """
        bridge = Bridge(self.reactor, deadline=0.01)
        cancelled: list[bool] = []
        d: Deferred[None] = Deferred(lambda d: cancelled.append(True))
        call = in_thread(lambda: bridge.call(lambda: d))
        self.reactor.run_one()
        self.assertRaises(IOFailure, call.result)
        self.reactor.run_one()
        self.assertEqual(cancelled, [True])
        self.assertTrue(d.called)

    def test_shutdown_wakes_waiting(self) -> None:
        """
        L{Bridge.shutdown} wakes a call waiting on the reactor with
        L{IOFailure} at once, and cancels its Deferred.
        """
        cancelled: list[bool] = []
        d: Deferred[None] = Deferred(lambda d: cancelled.append(True))
        call = in_thread(lambda: self.bridge.call(lambda: d))
        self.reactor.run_one()
        self.bridge.shutdown()
        error = self.assertRaises(IOFailure, call.result)
        self.assertIn("stopping", str(error))
        self.reactor.run_one()
        self.assertEqual(cancelled, [True])
        self.assertTrue(d.called)

    def test_shutdown_before_start(self) -> None:
        """
        A call queued but not yet run when the bridge shuts down fails, and
        the function is never run.
        """
        ran: list[bool] = []
        call = in_thread(lambda: self.bridge.call(lambda: ran.append(True)))
        f, args = self.reactor.take()
        self.bridge.shutdown()
        self.assertRaises(IOFailure, call.result)
        f(*args)
        self.assertEqual(ran, [])

    def test_after_shutdown(self) -> None:
        """
        After L{Bridge.shutdown}, calls fail at once without reaching the
        reactor.
        """
        self.bridge.shutdown()
        call = in_thread(lambda: self.bridge.call(lambda: 1))
        self.assertRaises(IOFailure, call.result)
        self.assertTrue(self.reactor.calls.empty())

    def test_post(self) -> None:
        """
        L{Bridge.post} runs a function in the reactor without the caller
        waiting; its error is logged, not raised; after L{Bridge.shutdown}
        nothing posted runs, even what was posted before.
        """
        ran: list[tuple[int, threading.Thread]] = []

        def f(x: int) -> None:
            ran.append((x, threading.current_thread()))

        call = in_thread(lambda: self.bridge.post(f, 1))
        self.assertIsNone(call.result())
        self.assertEqual(ran, [])
        self.reactor.run_one()
        self.assertEqual(ran, [(1, threading.current_thread())])
        self.bridge.post(lambda: 1 / 0)
        self.reactor.run_one()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.bridge.post(f, 2)
        self.bridge.shutdown()
        self.reactor.run_one()
        self.bridge.post(f, 3)
        self.assertTrue(self.reactor.calls.empty())
        self.assertEqual([x for x, _ in ran], [1])

    def test_reactor_thread_refused(self) -> None:
        """
        A call from the reactor thread, which would wait on itself, is
        refused.
        """
        self.patch(threadable, "ioThread", threadable.getThreadID())
        self.assertRaises(RuntimeError, self.bridge.call, lambda: 1)
        self.assertTrue(self.reactor.calls.empty())
