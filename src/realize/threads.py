"""
Thread pools by kind, and fair shares of them.

Blocking work never runs in the reactor thread (DESIGN.md §2).  It goes to
a pool by kind, so that one kind cannot queue behind another (issue 8 item
10): I{file I/O} (list, read, write, finish, delete), I{CPU} (hashing, delta
work, zstd), and, elsewhere, sqlite (each adbapi pool has its own thread)
and FUSE (mfusepy's own threads).

A peer must not be able to fill a pool's queue for everyone (issue 14
item 2): each connection gets L{BoundedRunner}s over the shared pools,
which keep at most a few of its jobs in a pool at once (the rest wait in
the connection's own queue, in order) and drop what is still queued when
the connection goes.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from realize.errors import NetworkError
from realize.interfaces import RunInThread

__all__ = [
    "CPU_THREADS",
    "IO_THREADS",
    "BoundedRunner",
    "ThreadPoolService",
    "join_off_reactor",
]

T = TypeVar("T")

#: Threads for file I/O.
IO_THREADS = 2

#: Threads for CPU work (hashing, deltas, compression): one per core of
#: the 2-core machines this runs on; blake3 and zstd release the GIL.
CPU_THREADS = 2

#: Jobs of one connection in the file I/O pool at once.
CONNECTION_IO_JOBS = 4

#: Jobs of one connection in the CPU pool at once.
CONNECTION_CPU_JOBS = 1


def join_off_reactor(
    reactor: IReactorFromThreads, work: Callable[[], None]
) -> Deferred[None]:
    """
    Run a blocking call (joining a thread pool) in a thread of its own, so
    that the reactor goes on meanwhile.

    @param reactor: delivers the result.
    @param work: the blocking call.
    @return: a Deferred that fires with C{None} (or the call's failure)
        once it returned.
    """
    d: Deferred[None] = Deferred()

    def run() -> None:
        try:
            work()
        except BaseException as e:
            reactor.callFromThread(d.errback, e)
        else:
            reactor.callFromThread(d.callback, None)

    threading.Thread(target=run, name="realize-join", daemon=True).start()
    return d


class ThreadPoolService(Service):
    """
    A thread pool as a service: started with the application, stopped
    (after the services that use it) when it stops, its threads joined off
    the reactor thread.

    @ivar pool: the pool.
    @ivar run_in_thread: a L{RunInThread} using it.
    """

    def __init__(self, reactor: Any, name: str, threads: int = IO_THREADS) -> None:
        self.reactor = reactor
        self.name = name
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        self.run_in_thread: RunInThread = functools.partial(
            deferToThreadPool, reactor, self.pool
        )

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return join_off_reactor(self.reactor, self.pool.stop)


@define(eq=False)
class BoundedRunner:
    """
    A L{RunInThread} over another that keeps at most C{limit} of its jobs
    running or queued in the pool at once; the others wait here, first come
    first served.  L{close} fails what still waits (a disconnected peer's
    work is not started).

    @ivar run_in_thread: the shared runner.
    @ivar limit: jobs in the pool at once.
    @ivar label: whose jobs these are, for the error of closed runners.
    """

    run_in_thread: RunInThread
    limit: int
    label: str = "connection"
    _running: int = field(default=0, init=False)
    _waiting: deque[tuple[Callable[[], Deferred[Any]], Deferred[Any]]] = field(
        factory=deque, init=False
    )
    _closed: bool = field(default=False, init=False)

    @property
    def waiting(self) -> int:
        """
        Jobs waiting for room in the pool.
        """
        return len(self._waiting)

    def __call__(
        self, f: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Deferred[T]:
        return self._submit(functools.partial(self.run_in_thread, f, *args, **kwargs))

    def _submit(self, start: Callable[[], Deferred[T]]) -> Deferred[T]:
        if self._closed:
            d: Deferred[T] = Deferred()
            d.errback(NetworkError(f"{self.label} closed: work not started"))
            return d
        if self._running < self.limit:
            return self._start(start)

        def cancel(d: Deferred[T]) -> None:
            for entry in self._waiting:
                if entry[1] is d:
                    self._waiting.remove(entry)
                    break

        waiter: Deferred[T] = Deferred(cancel)
        self._waiting.append((start, waiter))
        return waiter

    def _start(self, start: Callable[[], Deferred[T]]) -> Deferred[T]:
        self._running += 1

        def done(result: object) -> object:
            self._running -= 1
            self._next()
            return result

        return start().addBoth(done)

    def _next(self) -> None:
        while self._waiting and self._running < self.limit:
            start, waiter = self._waiting.popleft()
            self._start(start).chainDeferred(waiter)

    def close(self) -> None:
        """
        Fail the jobs still waiting (each with its own error) and every
        job asked for from now on; jobs already in the pool finish.
        """
        self._closed = True
        waiting, self._waiting = self._waiting, deque()
        for _, waiter in waiting:
            if not waiter.called:
                waiter.errback(NetworkError(f"{self.label} closed: work not started"))
