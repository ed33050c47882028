"""
The cyclic garbage collector's settings in realize's processes
(C{realize-move}, C{realized} and its worker).  Imports nothing of
Twisted: the worker uses it too.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GC_THRESHOLD", "tune_gc"]

#: Allocations of container objects (less deallocations) between two
#: collections of the youngest generation; Python's default is 700.
GC_THRESHOLD: Final = 50_000


def tune_gc(threshold: int = GC_THRESHOLD) -> None:
    """
    Collect the youngest generation every C{threshold} allocations, and so
    the older ones as many times less often (C{gc.set_threshold}; the
    other two thresholds are kept).

    Reference counting frees what a move makes and drops; the collector
    only finds cycles.  With Python's default, a move's hundreds of
    thousands of long-lived objects (listings, results, the watcher's
    and index's bookkeeping) are traversed again and again: moving
    100,000 files of 1 KiB (/dev/shm, timed with C{gc.callbacks}),
    realized spent 0.36-0.44 s in collections, realize-move 0.24-0.29 s,
    the worker 0.12-0.14 s, each collection pausing every thread of its
    process; with 50,000, 0.07 s, 0.07 s and 0.02-0.03 s.  That is ~0.65 s
    of the move's ~14 s of CPU; its time changed within this machine's
    noise (issue 15).  At most that many objects in cycles wait to be
    freed: a few MB, unless a cycle holds a large buffer, which then
    waits as long (the worker's pickling made one per batch and doubled
    realized's peak resident set until it was fixed; with C{gc.DEBUG_SAVEALL},
    a move and C{realize-demo}'s FUSE reads left no garbage holding a
    buffer of more than 10 KB).

    @param threshold: the youngest generation's threshold.
    """
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)
