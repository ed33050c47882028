"""
A worker process for the daemon's batches of small files (the reads,
writes and deletions of ReadFiles, WriteFiles and DeleteFiles).

A batch of small files is a few hundred short system calls (for a write:
create, write, utime, close, rename) and a little Python between them.
In a thread of the daemon, each of those calls gives the GIL up and takes
it again while the reactor thread receives the next batch: the two take
turns on one lock thousands of times a second.  On the 2-core machines
this runs on, the futex waits and context switches of those turns cost
more CPU than the writes themselves: 38% of the daemon's CPU under
C{perf} while 10,000 files of 4 KiB were moved in (issue 15).  A process
of its own makes the same calls without that lock: with it, that move
took a median of 1.49 s instead of 1.74 s (5 interleaved rounds on
/dev/shm), and 100,000 files of 1 KiB 8.6 s instead of 11.5 s.

L{WorkerService} spawns C{python -m realize.worker} (L{realize.worker}:
the protocol) with Twisted's C{spawnProcess} when the service starts, and
runs picklable blocking functions in it like a L{realize.interfaces.
RunInThread}, one at a time, in order, with results and errors delivered
in the reactor thread.  A worker that dies fails the calls it had with
L{IOFailure}; the next call starts another.  The worker ends when its
stdin closes: when the service stops (after the calls sent), or when the
daemon dies, so none is left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from realize.errors import IOFailure
from realize.worker import Pickled, dumps, frame_parts, split_frame

__all__ = ["WorkerService"]

T = TypeVar("T")

log = Logger()

#: fcntl(2): set a pipe's capacity (Linux; C{fcntl.F_SETPIPE_SZ} from
#: Python 3.10).
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

#: The capacity asked for the worker's pipes: Linux's default
#: C{/proc/sys/fs/pipe-max-size}.
PIPE_SIZE = 1 << 20


class _Worker(ProcessProtocol):
    """
    One worker process: the calls sent to it wait for their answers here,
    in the order they were sent.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending: deque[Deferred[Any]] = deque()
        self.buffer = bytearray()
        #: Fires when the process ended.
        self.ended: Deferred[None] = Deferred()
        self.closing = False
        #: Whether the process ended.
        self.gone = False

    def call(self, pickled: Pickled) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        assert self.transport is not None
        self.transport.writeSequence(frame_parts(pickled))
        self.pending.append(d)
        return d

    def outReceived(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while (frame := split_frame(buffer)) is not None:
            self._answered(frame)

    def _answered(self, frame: Pickled) -> None:
        if not self.pending:
            log.error("{name}: an answer nobody asked for", name=self.name)
            return
        d = self.pending.popleft()
        data, buffers = frame
        ok, value = pickle.loads(data, buffers=buffers)
        if ok:
            d.callback(value)
        else:
            d.errback(Failure(value))

    def processEnded(self, reason: Failure) -> None:
        if not self.closing or self.pending:
            log.error(
                "{name}: the worker process ended ({reason}) with {calls} "
                "call(s) unanswered",
                name=self.name,
                reason=reason.getErrorMessage(),
                calls=len(self.pending),
            )
        # Gone before the callers hear of it: a call they make then goes
        # to a new worker.
        self.gone = True
        pending, self.pending = self.pending, deque()
        for d in pending:
            d.errback(IOFailure(f"{self.name}: the worker process ended"))
        self.ended.callback(None)


class WorkerService(Service):
    """
    A worker process as a service (see the module's docstring).

    @ivar reactor: spawns the worker, delivers its answers.
    @ivar name: for the log and errors.
    @ivar preload: modules each worker imports as it starts, before its
        first call (those of the functions it will run).
    """

    def __init__(self, reactor: Any, name: str, preload: Sequence[str] = ()) -> None:
        self.reactor = reactor
        self.name = name
        self.preload = tuple(preload)
        self._worker: _Worker | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._spawn()

    def _spawn(self) -> _Worker:
        worker = _Worker(str(self.name))
        # This Python, running realize.worker.
        argv = [sys.executable, "-m", "realize.worker", *self.preload]
        process: Any = self.reactor.spawnProcess(
            worker,
            argv[0],
            argv,
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: 2},
        )
        self._worker = worker
        # A batch (up to 2 MiB, mover.BATCH_BYTES) goes through the pipe in
        # a few writes, not one per 64 KiB (Linux's default pipe size), each
        # a turn of both processes.
        for pipe in process.pipes.values():
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
        return worker

    def stopService(self) -> Deferred[None]:
        """
        Close the worker's stdin: it answers the calls sent, then ends.

        @return: fires when it ended.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        worker, self._worker = self._worker, None
        if worker is None or worker.gone:
            return succeed(None)
        worker.closing = True
        assert worker.transport is not None
        worker.transport.closeStdin()
        return worker.ended

    def run(self, f: Callable[..., T], /, *args: Any, **kwargs: Any) -> Deferred[T]:
        """
        Run C{f(*args, **kwargs)} in the worker (a L{realize.interfaces.
        RunInThread}): C{f} must be a module-level function, its arguments
        and result picklable.

        @return: a L{Deferred} firing in the reactor thread with the
            result, or failing with what C{f} raised, or with
            L{IOFailure} if the worker ended first or the service is not
            running.
        """
        if not self.running:
            return fail(IOFailure(f"{self.name}: not running"))
        worker = self._worker
        if worker is None or worker.gone:
            log.info("{name}: starting a new worker process", name=self.name)
            worker = self._spawn()
        return worker.call(dumps((f, args, kwargs)))
