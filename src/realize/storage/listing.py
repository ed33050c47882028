"""
Listing an arena directory: its regular files, final and partial, with a
bounded number of open descriptors, and never a listing that silently
left something out (issue 14, item 1).

The walk is depth first through a L{DirCache}: at most
L{LIST_OPEN_DIRECTORIES} directories are open at once however wide or deep
the tree is (a directory closed to make room is opened again from its
nearest open ancestor when its turn comes).  A directory that cannot be
opened or read fails the whole listing with an error naming it: a caller
that got an answer has every file.  What is not listed, on purpose:
symlinks, devices, FIFOs, sockets, empty directories, the excluded
workdir, and names that are not valid paths (not UTF-8, too long), which
are counted and logged once per listing.
"""

from __future__ import annotations

import errno
import os

from twisted.logger import Logger

from realize.errors import InvalidPath, IOFailure, PermissionDenied, RealizeError
from realize.model import (
    MAX_INT64,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    FileInfo,
    check_path,
    clamp_mtime,
    final_name,
    is_partial_name,
)
from realize.storage.paths import DirCache

__all__ = ["LIST_OPEN_DIRECTORIES", "list_tree"]

log = Logger()

#: Directories a listing holds open at most.
LIST_OPEN_DIRECTORIES = 16

#: A directory that is gone, or no longer a directory, when its turn comes
#: was removed or replaced meanwhile: nothing of it to list.
_VANISHED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _cannot_list(arena: str, directory: str, e: OSError) -> RealizeError:
    what = (
        f"arena {arena!r}: cannot list directory {directory or '.'!r}: "
        f"{e.strerror or e}"
    )
    if e.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(what)
    return IOFailure(what)


def list_tree(arena: str, directory: str, exclude: str | None) -> list[FileInfo]:
    """
    List the regular files of an arena directory, finals and partials.

    @param arena: the arena's name, for messages.
    @param directory: the arena's directory.
    @param exclude: a name at the top of the directory not to list.
    @return: the files, in no particular order.
    @raise NotFound: if the arena directory does not exist.
    @raise PermissionDenied: if a directory may not be read.
    @raise IOFailure: if a directory cannot be opened or read (too many
        open files, an I/O error); the message names it.
    """
    files: list[FileInfo] = []
    skipped: list[str] = []
    pending: list[tuple[str, ...]] = [()]
    with DirCache(arena, directory, LIST_OPEN_DIRECTORIES) as dirs:
        while pending:
            segments = pending.pop()
            prefix = "".join(f"{segment}/" for segment in segments)
            # Room left for an ASCII name (one byte a character).
            room = min(MAX_PATH_BYTES - len(prefix.encode("utf-8")), MAX_NAME_BYTES)
            fd = _open(dirs, segments, prefix)
            if fd is None:
                continue
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        name = entry.name
                        if not segments and name == exclude:
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            child = prefix + name
                            if _valid_directory(child):
                                pending.append((*segments, name))
                            else:
                                skipped.append(child + "/")
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        partial = name[0] == "." and is_partial_name(name)
                        if partial or not (name.isascii() and len(name) <= room):
                            # The common case (an ASCII name of a listed
                            # directory, which was checked) needs no check
                            # of the whole path: 30% of listing 100,000
                            # files took check_path (issue 15).
                            path = prefix + (final_name(name) if partial else name)
                            try:
                                check_path(path)
                            except InvalidPath:
                                skipped.append(path)
                                continue
                        else:
                            path = prefix + name
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        mtime_ns = st.st_mtime_ns
                        if not -MAX_INT64 - 1 <= mtime_ns <= MAX_INT64:
                            mtime_ns = clamp_mtime(mtime_ns)
                        files.append(FileInfo(path, st.st_size, mtime_ns, partial))
            except OSError as e:
                raise _cannot_list(arena, prefix.rstrip("/"), e) from None
    if skipped:
        log.warn(
            "arena {arena}: {count} names not listed, not valid paths (e.g. {path!r})",
            arena=arena,
            count=len(skipped),
            path=skipped[0],
        )
    return files


def _open(dirs: DirCache, segments: tuple[str, ...], prefix: str) -> int | None:
    """
    @return: the directory's descriptor (the cache's), or C{None} if it
        vanished meanwhile.
    @raise RealizeError: if it cannot be opened, naming it.
    """
    try:
        return dirs.resolve(segments, create=False)
    except OSError as e:
        if e.errno in _VANISHED:
            return None
        raise _cannot_list(dirs.arena, prefix.rstrip("/"), e) from None


def _valid_directory(path: str) -> bool:
    """
    Whether files below a directory can have valid paths: its path is
    UTF-8, its name not longer than L{MAX_NAME_BYTES}, and it leaves room
    for a name (the names of the files of a valid directory are all that
    L{list_tree} checks).
    """
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    name = encoded.rpartition(b"/")[2]
    return len(encoded) < MAX_PATH_BYTES - 1 and len(name) <= MAX_NAME_BYTES
