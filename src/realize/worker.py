"""
The worker process of realized (C{python -m realize.worker}): it runs the
blocking calls the daemon sends it, one at a time, in order, and answers
each.  The daemon's side is L{realize.processes.WorkerService}.

Protocol, over the worker's stdin (calls) and stdout (answers): frames of
a header (the 8-byte big-endian length of a pickle, the 4-byte count of
its out-of-band buffers), that pickle (protocol 5), then each buffer as an
8-byte length and its bytes.  A call is C{(function, args, kwargs)}, a
module-level function and its arguments; its answer is C{(True, result)}
or C{(False, exception)}.  Only the daemon that spawned the worker writes
to it, so the pickles are trusted.

Large byte strings (a batch's joined contents, a read batch's data) go
out of band (PEP 574, L{dumps}): pickled in band, 2 MiB took ~1 ms of the
daemon's reactor to copy into the pickle, where the frame's own copy
takes ~0.07 ms.

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

from realize.collector import tune_gc

__all__ = [
    "HEADER",
    "LENGTH",
    "OUT_OF_BAND",
    "dumps",
    "frame_parts",
    "main",
    "read_frame",
    "split_frame",
    "write_frame",
]

#: The header of a frame: the length of its pickle, its buffers' count.
HEADER = struct.Struct("!QI")

#: The length before each out-of-band buffer.
LENGTH = struct.Struct("!Q")

#: Byte strings at least this long go out of band (L{dumps}).
OUT_OF_BAND = 64 << 10

#: A pickled value: the pickle and its out-of-band buffers, in order.
Pickled = tuple[bytes, list[bytes]]


def dumps(value: Any) -> Pickled:
    """
    Pickle a value (protocol 5) with its large byte strings out of band:
    those of at least L{OUT_OF_BAND} bytes that are the value, or an item
    of a tuple that is the value or is one of its items (a call's
    arguments, a read batch's answer).

    @return: the pickle and the byte strings sent out of band, in order.
    """
    large: list[bytes] = []
    wrapped = _out_of_band(value, 2, large)
    called: list[pickle.PickleBuffer] = []
    data = pickle.dumps(wrapped, 5, buffer_callback=called.append)
    assert len(called) == len(large)
    return data, large


def _out_of_band(item: Any, depth: int, large: list[bytes]) -> Any:
    """
    L{dumps}'s wrapping of large byte strings, C{depth} tuples deep: a
    module function, not a closure (a closure that calls itself is a
    reference cycle, which kept each call's buffers alive until the next
    collection: twice realized's peak resident set, issue 15).

    @param large: where the wrapped byte strings are appended, in order.
    """
    if type(item) is bytes and len(item) >= OUT_OF_BAND:
        large.append(item)
        return pickle.PickleBuffer(item)
    if depth and type(item) is tuple:
        return tuple([_out_of_band(x, depth - 1, large) for x in item])
    return item


def frame_parts(pickled: Pickled) -> list[bytes]:
    """
    @return: the byte strings of a frame, to be written one after the
        other.
    """
    data, buffers = pickled
    parts = [HEADER.pack(len(data), len(buffers)), data]
    for buffer in buffers:
        parts.append(LENGTH.pack(len(buffer)))
        parts.append(buffer)
    return parts


def split_frame(buffer: bytearray) -> Pickled | None:
    """
    Take the first whole frame off the front of C{buffer}.

    @return: its pickle and buffers, or C{None} if C{buffer} does not
        hold a whole frame yet (it is left as it was).
    """
    if len(buffer) < HEADER.size:
        return None
    length, count = HEADER.unpack_from(buffer)
    end = HEADER.size + length
    spans = []
    for _ in range(count):
        if len(buffer) < end + LENGTH.size:
            return None
        (size,) = LENGTH.unpack_from(buffer, end)
        spans.append((end + LENGTH.size, end + LENGTH.size + size))
        end += LENGTH.size + size
    if len(buffer) < end:
        return None
    view = memoryview(buffer)
    try:
        data = bytes(view[HEADER.size : HEADER.size + length])
        buffers = [bytes(view[start:stop]) for start, stop in spans]
    finally:
        view.release()
    del buffer[:end]
    return data, buffers


def _read(stream: BinaryIO, length: int) -> bytes:
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("stream ends inside a frame")
    return data


def read_frame(stream: BinaryIO) -> Pickled | None:
    """
    @return: the next frame's pickle and buffers, or C{None} at the end of
        the stream.
    @raise EOFError: if the stream ends inside a frame.
    """
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise EOFError("stream ends inside a frame header")
    length, count = HEADER.unpack(header)
    data = _read(stream, length)
    buffers = []
    for _ in range(count):
        (size,) = LENGTH.unpack(_read(stream, LENGTH.size))
        buffers.append(_read(stream, size))
    return data, buffers


def write_frame(stream: BinaryIO, pickled: Pickled) -> None:
    """
    Write one frame and flush it.
    """
    for part in frame_parts(pickled):
        stream.write(part)
    stream.flush()


def answer(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Pickled:
    """
    Run a call and pickle its answer (L{dumps}).

    @return: the pickled C{(True, result)} or C{(False, exception)}; an
        exception that cannot be pickled is sent as a C{RuntimeError}
        naming it.
    """
    try:
        result = function(*args, **kwargs)
    except Exception as e:
        try:
            return dumps((False, e))
        except Exception:
            return dumps((False, RuntimeError(f"{type(e).__name__}: {e}")))
    return dumps((True, result))


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
    tune_gc()
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
        data, buffers = frame
        try:
            function, args, kwargs = pickle.loads(data, buffers=buffers)
        except Exception as e:
            # A call this worker cannot load (its module missing here):
            # answered as an error, in its turn, like any other.
            write_frame(answers, answer(_unloadable, (f"{type(e).__name__}: {e}",), {}))
            continue
        del frame, data, buffers
        write_frame(answers, answer(function, args, kwargs))


if __name__ == "__main__":
    main(sys.argv[1:])
