"""
The worker process of realized (C{python -m realize.worker}): it runs the
blocking calls the daemon sends it, one at a time, in order, and answers
each.  The daemon's side is L{realize.processes.WorkerService}.

Protocol, over the worker's stdin (calls) and stdout (answers): frames of
an 8-byte big-endian length and that many bytes of a pickle.  A call is
C{(function, args, kwargs)}, a module-level function and its arguments; its
answer is C{(True, result)} or C{(False, exception)}.  Only the daemon
that spawned the worker writes to it, so the pickles are trusted.

The worker ignores SIGINT and SIGTERM (a terminal and systemd send them
to the whole process group: the daemon finishes what its worker is doing
before it stops) and ends when its stdin closes, that is when the daemon
closes it or dies, after the call it is running.

This module imports nothing of Twisted: the worker starts in ~0.1 s.
The modules named on its command line (C{python -m realize.worker
realize.storage.batch}) are imported before the first call is read, while
the daemon has nothing for it yet: imported by the first call's pickle,
C{realize.storage.batch} (with the parts of Twisted it uses) delayed a
move's first batch by ~0.2 s (issue 15).
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import struct
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

__all__ = ["HEADER", "main", "read_frame", "write_frame"]

#: The header of a frame: the length of its pickle.
HEADER = struct.Struct("!Q")


def read_frame(stream: BinaryIO) -> bytes | None:
    """
    @return: the next frame's bytes, or C{None} at the end of the stream.
    @raise EOFError: if the stream ends inside a frame.
    """
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise EOFError("stream ends inside a frame header")
    (length,) = HEADER.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("stream ends inside a frame")
    return data


def write_frame(stream: BinaryIO, data: bytes) -> None:
    """
    Write one frame and flush it.
    """
    stream.write(HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def answer(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """
    Run a call and pickle its answer.

    @return: the pickled C{(True, result)} or C{(False, exception)}; an
        exception that cannot be pickled is sent as a C{RuntimeError}
        naming it.
    """
    try:
        result = function(*args, **kwargs)
    except Exception as e:
        try:
            return pickle.dumps((False, e), pickle.HIGHEST_PROTOCOL)
        except Exception:
            error = RuntimeError(f"{type(e).__name__}: {e}")
            return pickle.dumps((False, error), pickle.HIGHEST_PROTOCOL)
    return pickle.dumps((True, result), pickle.HIGHEST_PROTOCOL)


def _unloadable(error: str) -> None:
    raise RuntimeError(f"the worker process cannot load the call: {error}")


def main(preload: Sequence[str] = ()) -> None:
    """
    Answer calls from stdin on stdout until stdin ends.

    @param preload: modules to import first (a module that cannot be
        imported is named on stderr; the calls that need it are answered
        with the error).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for module in preload:
        try:
            importlib.import_module(module)
        except Exception as e:
            print(f"realize.worker: cannot import {module}: {e}", file=sys.stderr)
    calls = os.fdopen(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False)
    answers = os.fdopen(sys.stdout.fileno(), "wb", buffering=1 << 16, closefd=False)
    # Nothing else may write to the answers: a stray print goes to stderr.
    sys.stdout = sys.stderr
    while True:
        frame = read_frame(calls)
        if frame is None:
            return
        try:
            function, args, kwargs = pickle.loads(frame)
        except Exception as e:
            # A call this worker cannot load (its module missing here):
            # answered as an error, in its turn, like any other.
            write_frame(answers, answer(_unloadable, (f"{type(e).__name__}: {e}",), {}))
            continue
        del frame
        write_frame(answers, answer(function, args, kwargs))


if __name__ == "__main__":
    main(sys.argv[1:])
