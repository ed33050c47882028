"""
Repair by delta (rsync) on one arena directory: the Signature, Diff and
ApplyDelta commands.  CPU work on ranges of at most
L{realize.model.MAX_DELTA_RANGE} bytes held in per-thread buffers;
blocking: call from threads.

L{realize.delta} (and numpy) are imported when a repair needs them: they
cost ~60 ms of every start-up, and most moves repair nothing.
"""

from __future__ import annotations

import os

from realize.errors import BadDelta, Conflict
from realize.hashing import LeafHasher
from realize.model import MAX_DELTA_RANGE
from realize.storage.arena import ArenaDir
from realize.storage.fs import Stamp, pwrite_all, read_into, thread_buffer
from realize.storage.paths import where

__all__ = ["apply_delta", "diff", "signature"]


def signature(arena_dir: ArenaDir, path: str, start: int, end: int) -> bytes | None:
    """
    rsync signature of C{[start, min(end, size))} of the file being
    received (partial, else final).

    @return: the signature, or C{None} if the file has no byte at C{start}
        (nothing to build a delta on).
    """
    from realize import delta

    fd, _, st = arena_dir.open_for_reading(path, prefer_partial=True)
    try:
        if st.st_size <= start:
            return None
        basis = read_into(fd, start, min(end, st.st_size), "basis")
    except OSError as e:
        raise arena_dir.error(e, path) from None
    finally:
        os.close(fd)
    return delta.signature(basis)


def diff(
    arena_dir: ArenaDir, path: str, start: int, end: int, signature: bytes
) -> bytes:
    """
    Delta that turns the basis described by C{signature} into C{[start,
    end)} of the file (final, else partial).

    @raise BadDelta: if the signature is malformed.
    @raise Conflict: if the file is shorter than C{end}.
    """
    from realize import delta

    try:
        parsed = delta.parse_signature(signature, max_basis_length=end - start)
    except delta.DeltaFormatError as e:
        raise BadDelta(f"{where(arena_dir.name, path)}: {e}") from None
    fd, _, _ = arena_dir.open_for_reading(path, prefer_partial=False)
    try:
        target = read_into(fd, start, end, "target")
    except OSError as e:
        raise arena_dir.error(e, path) from None
    finally:
        os.close(fd)
    if len(target) != end - start:
        raise Conflict(f"{where(arena_dir.name, path)}: shorter than {end} bytes")
    return delta.diff(target, parsed)


def apply_delta(
    arena_dir: ArenaDir, path: str, start: int, end: int, file_size: int, change: bytes
) -> tuple[tuple[bytes, ...], Stamp]:
    """
    Apply a delta to C{[start, end)} of the partial file, the basis being
    the file's bytes from C{start} on (the partial's, else the final's, of
    which the partial is then made); write the blocks that changed;
    truncate at C{file_size} if C{end} is the end of the file.  The delta
    is checked before anything is written: a bad one changes nothing.

    @param start: a leaf boundary.
    @return: the Merkle leaves of C{[start, end)} afterwards, and the
        partial file's stamp.
    @raise BadDelta: if the delta is malformed, refers to bytes the basis
        lacks, or does not produce exactly C{end - start} bytes.
    """
    from realize import delta

    dir_fd, name = arena_dir.parent(path, create=False)
    try:
        fd, _, st = arena_dir.open_either(dir_fd, name, path, True)
        try:
            basis = read_into(fd, start, max(start, min(end, st.st_size)), "basis")
        except OSError as e:
            raise arena_dir.error(e, path) from None
        finally:
            os.close(fd)
        try:
            output = delta.apply(
                basis,
                change,
                expected_length=end - start,
                max_length=MAX_DELTA_RANGE,
                out=thread_buffer("output", end - start),
            )
        except delta.DeltaFormatError as e:
            raise BadDelta(f"{where(arena_dir.name, path)}: {e}") from None
        # The partial holds the basis there (or will: it is made from the
        # file just read), so only the blocks that differ are written.
        with arena_dir.partials.changing(
            dir_fd, name, path, keep=None, create=False, reserve=0
        ) as fd:
            _write_changed(fd, start, basis, output)
            if end == file_size:
                os.ftruncate(fd, file_size)
            stamp = Stamp.of(os.fstat(fd))
    finally:
        os.close(dir_fd)
    hasher = LeafHasher()
    hasher.update(output)
    return tuple(hasher.finish()), stamp


def _write_changed(
    fd: int, start: int, basis: memoryview, output: bytearray | memoryview
) -> None:
    """
    Write C{output} at C{start}, skipping the blocks equal to C{basis}
    (what the file already holds there); runs of changed blocks are
    written at once.  The comparison is vectorised (numpy).
    """
    import numpy as np

    from realize import delta

    block = delta.BLOCK_SIZE
    common = min(len(basis), len(output)) // block * block
    changed = np.zeros(-(-len(output) // block), dtype=bool)
    if common:
        old = np.frombuffer(basis, dtype=np.uint8, count=common).reshape(-1, block)
        new = np.frombuffer(output, dtype=np.uint8, count=common).reshape(-1, block)
        changed[: common // block] = (old != new).any(axis=1)
    changed[common // block :] = True
    view = memoryview(output)
    index = 0
    count = len(changed)
    while index < count:
        if not changed[index]:
            index += 1
            continue
        run = index
        while run < count and changed[run]:
            run += 1
        first, last = index * block, min(run * block, len(output))
        pwrite_all(fd, view[first:last], start + first)
        index = run
