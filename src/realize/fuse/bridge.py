"""
Calls from FUSE threads into the reactor, bounded by a deadline.

A FUSE worker thread that needs the reactor (a download, a write of the
cache tables) calls L{Bridge.call}: the function runs in the reactor
thread, and the FUSE thread waits for its result, at most L{DEADLINE}
seconds.  Twisted's C{blockingCallFromThread} has no timeout; this one
does, and it has a shutdown path: L{Bridge.shutdown} wakes every waiting
thread with an error, and later calls fail at once, so a read in flight
when the daemon stops answers C{EIO} and nothing waits on a reactor that
no longer runs.

The reactor never waits on FUSE: only FUSE threads block here.  A call
from the reactor thread itself would deadlock, and is refused.

L{Bridge.post} tells the reactor something without waiting (e.g. that a
reader served from the cache moved on, for the read-ahead): it costs the
FUSE thread no round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure

from realize.errors import IOFailure

__all__ = ["DEADLINE", "Bridge"]

T = TypeVar("T")

_log = Logger()

#: Seconds a FUSE thread waits for the reactor before the request fails
#: with C{EIO} (DESIGN.md section 10: at most 10 s, so that an application
#: reading data no connected peer has gets an error, not a hang).
DEADLINE: Final = 8.0


@define(eq=False)
class _Call(Generic[T]):
    """
    One call waiting in a FUSE thread: its outcome, once known.

    The outcome is set once, by whichever comes first: the result, the
    deadline, or the shutdown.
    """

    done: threading.Event = field(factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    deferred: Deferred[T] | None = None
    _lock: threading.Lock = field(factory=threading.Lock)

    def settle(self, result: Any, error: BaseException | None) -> bool:
        """
        Record the outcome if none is recorded yet.

        @return: whether this outcome was recorded.
        """
        with self._lock:
            if self.done.is_set():
                return False
            self.result = result
            self.error = error
            self.done.set()
            return True


@define(eq=False)
class Bridge:
    """
    Runs functions in the reactor for FUSE threads, with a deadline.

    @ivar reactor: the reactor the functions run in.
    @ivar deadline: seconds a call may take (L{DEADLINE}).
    """

    reactor: IReactorFromThreads
    deadline: float = DEADLINE
    _calls: set[_Call[Any]] = field(factory=set, init=False)
    _closed: bool = field(default=False, init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)

    def call(
        self, f: Callable[..., Deferred[T] | T], /, *args: Any, **kwargs: Any
    ) -> T:
        """
        Run C{f(*args, **kwargs)} in the reactor thread and wait for its
        result (the result of its Deferred, if it returns one).

        On the deadline the Deferred is cancelled.

        @param f: a function to run in the reactor.
        @return: its result.
        @raise IOFailure: if the deadline passed, or the bridge is shut
            down (before or during the call).
        @raise RuntimeError: if called from the reactor thread.
        @raise Exception: what C{f} raised or its Deferred failed with.
        """
        if threadable.isInIOThread():
            raise RuntimeError("Bridge.call from the reactor thread would deadlock")
        call: _Call[T] = _Call()
        with self._lock:
            if self._closed:
                raise IOFailure("the daemon is stopping")
            self._calls.add(call)
        try:
            self.reactor.callFromThread(self._start, call, f, args, kwargs)
            if not call.done.wait(self.deadline):
                call.settle(
                    None,
                    IOFailure(f"no answer within the deadline ({self.deadline:g} s)"),
                )
        finally:
            with self._lock:
                self._calls.discard(call)
        if call.error is not None:
            if call.deferred is not None and not call.deferred.called:
                self.reactor.callFromThread(call.deferred.cancel)
            raise call.error
        return call.result  # type: ignore[no-any-return]

    def post(self, f: Callable[..., object], /, *args: Any) -> None:
        """
        Run C{f(*args)} in the reactor thread, without waiting for it (any
        thread may call it).  Nothing runs once the bridge is shut down; an
        error of C{f} is logged.

        @param f: a function to run in the reactor; its result is ignored.
        """
        if self._closed:
            return
        self.reactor.callFromThread(self._run_posted, f, args)

    def _run_posted(self, f: Callable[..., object], args: tuple[Any, ...]) -> None:
        # In the reactor thread.
        if self._closed:
            return
        try:
            f(*args)
        except Exception:
            _log.failure("a call posted to the reactor failed")

    def _start(
        self,
        call: _Call[T],
        f: Callable[..., Deferred[T] | T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        # In the reactor thread.
        if call.done.is_set():
            return  # the caller gave up before we started
        d: Deferred[T] = maybeDeferred(f, *args, **kwargs)  # type: ignore[arg-type]
        call.deferred = d

        def finished(result: T | Failure) -> None:
            if isinstance(result, Failure):
                call.settle(None, result.value)
            else:
                call.settle(result, None)

        d.addBoth(finished)
        if call.done.is_set() and not d.called:
            d.cancel()  # the caller gave up while we started

    def shutdown(self) -> None:
        """
        Fail every waiting call and every later one with L{IOFailure}, and
        cancel their Deferreds.  Any thread may call it; it does not wait.
        """
        with self._lock:
            self._closed = True
            calls = list(self._calls)
        for call in calls:
            if call.settle(None, IOFailure("the daemon is stopping")):
                deferred = call.deferred
                if deferred is not None and not deferred.called:
                    self.reactor.callFromThread(deferred.cancel)
