"""
Pieces shared by the commands: exit codes, the thread pool of
C{realize-move}, the memory allocator's settings, the file descriptor
limit, ending a twistd process with an exit code, and what C{--version}
prints.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import getopt
import os
import resource
import sys
from collections.abc import Sequence
from typing import Any, Final, NoReturn

from twisted.internet.threads import deferToThreadPool
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from realize.interfaces import RunInThread
from realize.services.job import Outcome
from realize.threads import IO_THREADS

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_MAX_DURATION",
    "EXIT_METRICS_PUSH",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "SWITCH_INTERVAL",
    "GnuOptions",
    "exit_after_shutdown",
    "make_thread_pool",
    "print_version",
    "raise_fd_limit",
    "tune_gil",
    "tune_malloc",
    "version_text",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_MAX_DURATION = 11
EXIT_METRICS_PUSH = 12
EXIT_INTERRUPTED = 20
#: Stopped by SIGTERM: 128 + 15, what a shell reports for a process the
#: signal ended.
EXIT_TERMINATED = 143

#: Exit code of each outcome of a move job.
EXIT_CODES: dict[Outcome, int] = {
    Outcome.OK: EXIT_OK,
    Outcome.FAILED: EXIT_ERROR,
    Outcome.DEADLINE: EXIT_MAX_DURATION,
    Outcome.INTERRUPTED: EXIT_INTERRUPTED,
    Outcome.TERMINATED: EXIT_TERMINATED,
}


#: mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


#: The interpreter's GIL switch interval in the daemon, seconds (Python's
#: default is 0.005).
SWITCH_INTERVAL: Final = 0.001


def tune_gil(interval: float = SWITCH_INTERVAL) -> None:
    """
    Shorten how long a thread that wants the GIL waits for the one that
    holds it (C{sys.setswitchinterval}).

    The daemon's reactor thread, its I/O and CPU pools and its sqlite
    threads take turns on one GIL: with the default 5 ms, a reactor that
    has a frame to answer waits behind a thread's sqlite or hashing work
    (the "convoy" of the new GIL, Beazley 2010).  Measured with
    C{bench/move_throughput.py --shapes small} on /dev/shm: 10,000 files
    of 4 KiB moved in a median of 2.20-2.59 s instead of 2.65-2.99 s, and
    the daemon used 2.25-2.72 s of CPU instead of 3.04-3.49 s; one file of
    1 GiB the same within noise (issue 15).

    @param interval: seconds.
    """
    sys.setswitchinterval(interval)


def tune_malloc() -> bool:
    """
    Keep glibc's malloc from handing freed memory back to the kernel while
    data streams.

    Every 1 MiB chunk of a file is read into a new C{bytes} and copied a
    few times on its way into TLS.  With glibc's default, dynamic
    thresholds the freed chunks are trimmed from the heap and the next
    ones page-fault fresh memory: measured here, 600,000 page faults and
    1.4 s more system time per GiB moved (about 30% of the run) in
    C{realize-move}.  Fixed thresholds (chunks up to 4 MiB from the heap,
    up to 64 MiB of free heap kept) bring that back to 11,000 faults, for
    at most 64 MiB more of resident memory.  Call before any data moves.

    @return: whether the thresholds were set (C{False} on a C library
        without C{mallopt}, e.g. musl, where this does nothing).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, 4 << 20) and mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    )


def raise_fd_limit() -> int:
    """
    Raise the soft limit of open file descriptors (C{RLIMIT_NOFILE}) to
    the hard limit: every connection, open file and directory walk costs
    descriptors, and the common soft default of 1,024 is soon reached by a
    daemon serving several peers (issue 14 item 3; the systemd unit sets
    C{LimitNOFILE=}, docs/operations.md says how to size it).

    @return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def make_thread_pool(
    reactor: Any, name: str, threads: int = IO_THREADS
) -> tuple[ThreadPool, RunInThread]:
    """
    Start a dedicated thread pool for blocking work.

    @param reactor: the reactor the results are delivered to.
    @param name: the pool's name (thread names).
    @param threads: its threads at most.
    @return: the pool (stop it when done) and a L{RunInThread} using it.
    """
    pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
    pool.start()

    # Whatever stops the reactor, its threads must not keep the process
    # alive (stopping twice is harmless).
    def stop() -> None:
        if not pool.joined:
            pool.stop()

    reactor.addSystemEventTrigger("during", "shutdown", stop)
    return pool, functools.partial(deferToThreadPool, reactor, pool)


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_after_shutdown(reactor: Any, code: int) -> None:
    """
    Stop the reactor and make the process exit with C{code}.

    twistd always exits 0 once its reactor stops; a twistd plugin that
    must end with another code (C{realize-move}) registers an C{atexit}
    handler that ends the process with it, after twistd's own cleanup.

    @param reactor: the running reactor.
    @param code: the exit code.
    """
    if code:
        atexit.register(_exit_now, code)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


class GnuOptions(usage.Options):
    """
    C{usage.Options} that, like GNU tools, accepts options after positional
    arguments (C{realize-move ARENA --output log}); C{--} ends options.
    """

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        try:
            opts, args = getopt.gnu_getopt(list(options), self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        flat: list[str] = []
        for name, value in opts:
            flat.append(name)
            takes_value = (
                f"{name[2:]}=" in self.longOpt
                if name.startswith("--")
                else f"{name[1:]}:" in self.shortOpt
            )
            if takes_value:
                flat.append(value)
        super().parseOptions([*flat, "--", *args])  # type: ignore[no-untyped-call]


def version_text(program: str) -> str:
    """
    @param program: the command's name (C{realize-move}, C{realized}).
    @return: what C{--version} prints, GNU style: e.g.
        C{"realize-move (realize) 0.1.0\nTwisted 24.3.0"}.
    """
    import realize
    import twisted

    return (
        f"{program} (realize) {realize.__version__.public()}\n"
        f"Twisted {twisted.__version__}"
    )


def print_version(program: str) -> NoReturn:
    """
    Print L{version_text} on stdout and exit 0: the body of the commands'
    C{opt_version} (C{usage.Options}' own prints Twisted's version only).
    """
    print(version_text(program))
    sys.exit(0)
