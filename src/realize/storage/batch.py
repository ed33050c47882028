"""
The batch commands on one arena directory (ReadFiles, WriteFiles,
DeleteFiles, and Delete as a batch of one): many small files in one
thread call, their directories resolved once through one
L{realize.storage.paths.DirCache}.  Blocking: call from threads.

One file's failure is that file's result, never the batch's: a path too
deep, a symlink, a changed file fail alone.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Collection, Sequence
from typing import Any

from realize.errors import BadRequest, Conflict, IOFailure, RealizeError
from realize.hashing import LEAF_SIZE, LeafHasher, leaf_hash, merkle_root
from realize.model import SmallFile, SmallRead, clamp_mtime, partial_name
from realize.storage.arena import ArenaDir
from realize.storage.commit import CommitItem, commit_group
from realize.storage.fs import Filesystems, pwrite_all, read_whole
from realize.storage.paths import DirCache, not_regular, where

__all__ = [
    "delete_files",
    "read_files",
    "read_packed",
    "unpack_reads",
    "write_files",
    "write_packed",
]

#: A placeholder in a list of results, each filled in before it returns.
_UNSET: Any = None


def _root(data: bytes | memoryview) -> bytes:
    if 0 < len(data) <= LEAF_SIZE:
        # One leaf: the root is its digest (what nearly every file of a
        # batch is, in a fraction of the incremental hasher's time).
        return leaf_hash(data)
    hasher = LeafHasher()
    hasher.update(data)
    return merkle_root(hasher.finish())


def read_files(
    arena_dir: ArenaDir, files: list[tuple[str, int]]
) -> list[SmallRead | RealizeError]:
    """
    Read whole small files (final, else partial) in one call.

    @param files: C{(path, limit)}; a file larger than C{limit} is not
        read, only its size and mtime are returned.
    @return: per file, what was read or its error.
    """
    results: list[SmallRead | RealizeError] = [_UNSET] * len(files)
    with arena_dir.dirs() as dirs:
        for index, segments in arena_dir.by_directory([p for p, _ in files]):
            path, limit = files[index]
            try:
                if isinstance(segments, RealizeError):
                    raise segments
                dir_fd = dirs.open(segments[:-1], path, create=False)
                # Read at once and closed: left O_NONBLOCK (one system call
                # less a file, each a turn of the GIL with the reactor).
                fd, _, st = arena_dir.open_either(
                    dir_fd, segments[-1], path, False, blocking=False
                )
                try:
                    data = b""
                    if st.st_size <= limit:
                        data = read_whole(fd, st.st_size)
                        st = os.fstat(fd)
                finally:
                    os.close(fd)
                results[index] = SmallRead(
                    data, st.st_size, clamp_mtime(st.st_mtime_ns), _root(data)
                )
            except RealizeError as e:
                results[index] = e
            except OSError as e:
                results[index] = arena_dir.error(e, path)
    return results


def read_packed(
    arena_dir: ArenaDir, files: list[tuple[str, int]]
) -> tuple[list[tuple[int, int, bytes, int] | RealizeError], bytes]:
    """
    L{read_files} in the form the daemon's worker process answers it
    (L{realize.processes}; see L{write_packed}): each file's size, mtime,
    root and the length of its data read, or its error, and the data of
    all the files joined in one buffer, in order.  L{unpack_reads} makes
    L{SmallRead}s of it again.
    """
    reads = read_files(arena_dir, files)
    meta: list[tuple[int, int, bytes, int] | RealizeError] = [
        read
        if isinstance(read, RealizeError)
        else (read.size, read.mtime_ns, read.root, len(read.data))
        for read in reads
    ]
    return meta, b"".join(
        read.data for read in reads if not isinstance(read, RealizeError)
    )


def unpack_reads(
    packed: tuple[list[tuple[int, int, bytes, int] | RealizeError], bytes],
) -> list[SmallRead | RealizeError]:
    """
    @param packed: what L{read_packed} returned.
    @return: what L{read_files} returned.
    """
    meta, data = packed
    view = memoryview(data)
    reads: list[SmallRead | RealizeError] = []
    offset = 0
    for entry in meta:
        if isinstance(entry, RealizeError):
            reads.append(entry)
            continue
        size, mtime_ns, root, length = entry
        reads.append(
            SmallRead(bytes(view[offset : offset + length]), size, mtime_ns, root)
        )
        offset += length
    return reads


def write_files(
    arena_dir: ArenaDir,
    files: list[SmallFile],
    data: Sequence[bytes | memoryview],
) -> list[RealizeError | None]:
    """
    Write, verify and finish whole small files in one call (WriteFiles):
    each is written to a new partial file and hashed; those with the
    expected root get their mtime and are made final durably by
    L{realize.storage.commit.commit_group}, with the directories already
    open.

    @param files: the files.
    @param data: their contents.
    @return: per file, C{None} if it is final, else its error (L{Conflict}
        if its hash differs: the partial stays).
    """
    results: list[BaseException | None] = [None] * len(files)
    seen: set[str] = set()
    ordered = arena_dir.by_directory([file.path for file in files])
    with arena_dir.dirs() as dirs:
        for index, segments in ordered:
            file, content = files[index], data[index]
            path = file.path
            try:
                if isinstance(segments, RealizeError):
                    raise segments
                if path in seen:
                    raise BadRequest(
                        f"{where(arena_dir.name, path)}: named twice in one batch"
                    )
                seen.add(path)
                if len(content) != file.size:
                    raise Conflict(
                        f"{where(arena_dir.name, path)}: {len(content)} bytes "
                        f"sent for a {file.size}-byte file"
                    )
                dir_fd = dirs.open(segments[:-1], path, create=True)
                fd = arena_dir.partials.fresh(
                    dir_fd, segments[-1], path, tuple(segments[:-1]) in dirs.created
                )
                try:
                    pwrite_all(fd, content, 0)
                    if _root(content) != file.root:
                        raise Conflict(
                            f"{where(arena_dir.name, path)}: hash differs from "
                            "the source's"
                        )
                    os.utime(fd, ns=(file.mtime_ns, file.mtime_ns))
                    if len(files) == 1:
                        os.fdatasync(fd)
                finally:
                    os.close(fd)
            except RealizeError as e:
                results[index] = e
            except OSError as e:
                results[index] = arena_dir.error(e, path)
        ready = [i for i, _ in ordered if results[i] is None]
        items = [
            CommitItem(arena_dir, files[i].path, prepared=True, synced=len(files) == 1)
            for i in ready
        ]
        for index, error in zip(ready, commit_group(items, dirs), strict=True):
            results[index] = error
    return [
        e if e is None or isinstance(e, RealizeError) else IOFailure(str(e))
        for e in results
    ]


def write_packed(
    arena_dir: ArenaDir,
    records: list[tuple[str, int, int, bytes, int]],
    data: bytes,
) -> list[RealizeError | None]:
    """
    L{write_files} of a batch in the form it is sent to the daemon's
    worker process (L{realize.processes}): each file as a C{(path, size,
    mtime_ns, root, length)} tuple, their contents (C{length} bytes each)
    joined in one buffer in that order.  It pickles in ~0.5 ms a batch of
    256 files of 4 KiB, where L{SmallFile} objects and 256 separate
    buffers took ~1.4 ms of the reactor's time.

    @param records: the files.
    @param data: their contents, one after the other.
    @return: as L{write_files}.
    """
    files: list[SmallFile] = []
    contents: list[memoryview] = []
    view = memoryview(data)
    offset = 0
    for path, size, mtime_ns, root, length in records:
        files.append(SmallFile(path, size, mtime_ns, root))
        contents.append(view[offset : offset + length])
        offset += length
    return write_files(arena_dir, files, contents)


def delete_files(
    arena_dir: ArenaDir,
    files: list[tuple[str, int | None, int | None]],
    durable: bool = False,
    partials: Collection[str] | None = None,
) -> list[RealizeError | bool]:
    """
    Delete files in one call, and their partial files, each final file
    only if it still has the given size and mtime; then remove the
    directories this left empty, up to the arena directory.

    @param files: C{(path, size, mtime_ns)}; C{None}s for no precondition.
    @param durable: flush the deletions to disk before returning (one
        C{syncfs} per filesystem).
    @param partials: the paths whose partial file the caller saw (in a
        listing): only those partials are deleted, the others are not
        looked for (a move's source has the listing; an unlink that fails
        with C{ENOENT} costs more than the deletion of the file itself).
        C{None}: every path's partial is deleted, if there is one.
    @return: per file, whether a final file was deleted, or its error
        (L{Conflict} if it changed).
    @raise NotFound: if the arena directory is missing.
    @raise IOFailure: if C{durable} and the flush failed.
    """
    results: list[RealizeError | bool] = [False] * len(files)
    emptied: dict[tuple[str, ...], None] = {}  # directories that lost a file
    with arena_dir.dirs() as dirs, Filesystems() as filesystems:
        dirs.open([], "", create=False)
        for index, segments in arena_dir.by_directory([f[0] for f in files]):
            path, size, mtime_ns = files[index]
            try:
                if isinstance(segments, RealizeError):
                    raise segments
                try:
                    dir_fd = dirs.resolve(segments[:-1], create=False)
                except FileNotFoundError:
                    continue
                if durable:
                    filesystems.add(dir_fd)
                results[index] = _delete_in(
                    arena_dir,
                    dir_fd,
                    segments[-1],
                    path,
                    size,
                    mtime_ns,
                    partials is None or path in partials,
                )
                emptied[tuple(segments[:-1])] = None
            except RealizeError as e:
                results[index] = e
            except OSError as e:
                results[index] = arena_dir.error(e, path)
        for directory in sorted(emptied, key=len, reverse=True):
            _remove_empty(dirs, directory)
        if durable:
            try:
                filesystems.sync()
            except OSError as e:
                raise arena_dir.error(e, "") from None
    return results


def _delete_in(
    arena_dir: ArenaDir,
    dir_fd: int,
    name: str,
    path: str,
    size: int | None,
    mtime_ns: int | None,
    partial: bool = True,
) -> bool:
    """
    Delete the final and partial file of C{name} in an open directory,
    the final one only if it still has C{size} and C{mtime_ns}.

    @param partial: also delete the partial file, if there is one.
    @return: whether a final file was deleted.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(arena_dir.name, path)
        if size is not None and (
            st.st_size != size
            or (mtime_ns is not None and clamp_mtime(st.st_mtime_ns) != mtime_ns)
        ):
            raise Conflict(
                f"{where(arena_dir.name, path)}: changed since it was listed "
                f"(size {size} -> {st.st_size}), not deleted"
            )
        os.unlink(name, dir_fd=dir_fd)
    if partial:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial_name(name), dir_fd=dir_fd)
    return st is not None


def _remove_empty(dirs: DirCache, directory: tuple[str, ...]) -> None:
    """
    Remove a directory if it is empty, then its parent if that is empty
    then, and so on up to (not including) the arena directory.
    """
    for depth in range(len(directory), 0, -1):
        try:
            parent = dirs.resolve(directory[: depth - 1], create=False)
            os.rmdir(directory[depth - 1], dir_fd=parent)
        except (OSError, RealizeError):
            return
        dirs.discard(directory[:depth])
