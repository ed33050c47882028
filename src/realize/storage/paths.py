"""
Resolving arena paths beneath an arena directory (DESIGN.md section 4):
one segment at a time, with C{dir_fd} and C{O_NOFOLLOW}, so that no
symlink (or C{..}) is ever followed; and the translation of C{OSError}
into L{realize.errors}, with messages that name the arena and the path.

Resolution is iterative and holds a bounded number of descriptors: a
path of 2,000 segments costs 2,000 C{open} calls and at most
L{DirCache.limit} open directories, never recursion or one descriptor per
segment (issue 14, item 6).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from realize.errors import (
    InvalidPath,
    IOFailure,
    NoSpace,
    NotFound,
    PermissionDenied,
    RealizeError,
    where,
)
from realize.storage.fs import O_DIR, NotRegularFile

__all__ = [
    "DIR_CACHE_SIZE",
    "DirCache",
    "not_found",
    "not_regular",
    "open_directory",
    "os_error",
    "where",
]

#: Directories a L{DirCache} keeps open at most.
DIR_CACHE_SIZE = 64


def not_found(arena: str, path: str) -> NotFound:
    """
    @return: the error for a path that has neither a final nor a partial
        file.
    """
    return NotFound(f"arena {arena!r}: no file {path!r}")


def not_regular(arena: str, path: str) -> InvalidPath:
    """
    @return: the error for a path that is a directory, device, FIFO or
        socket.
    """
    return InvalidPath(f"{where(arena, path)}: not a regular file")


def os_error(e: OSError, arena: str, path: str) -> RealizeError:
    """
    Translate an C{OSError} into the error hierarchy.

    @param e: the error.
    @param arena: arena name for the message.
    @param path: path for the message.
    @return: the error to raise.
    """
    if isinstance(e, NotRegularFile):
        return not_regular(arena, path)
    what = f"{where(arena, path)}: {e.strerror or e}"
    if e.errno == errno.ENOENT:
        return NotFound(what)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(what)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(what)
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO):
        return InvalidPath(
            f"{where(arena, path)}: is or crosses a symlink, "
            "a device or another non-regular file"
        )
    return IOFailure(what)


def open_directory(arena: str, directory: str) -> int:
    """
    Open an arena's directory.

    @param arena: its name, for messages.
    @param directory: its path (the config's C{datadir}); may be a
        symlink, which the administrator chose.
    @return: the descriptor.
    @raise NotFound: naming the directory, if it does not exist.
    """
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise NotFound(
                f"arena {arena!r}: directory {directory} does not exist"
            ) from None
        raise os_error(e, arena, "") from None


class DirCache:
    """
    Directories of one arena opened during one piece of work (a command, a
    batch, a listing), by their segments, each resolved beneath the arena
    directory without following symlinks.

    At most L{limit} directories stay open, plus at most L{ANCHORS}
    I{anchors} (directories at a depth that is a multiple of
    L{ANCHOR_STRIDE}): the least recently used one is closed to make room,
    and opened again from its nearest open ancestor if it is needed again,
    which the anchors keep within L{ANCHOR_STRIDE} opens even for the
    deepest path.

    A descriptor returned by L{open} belongs to the cache and is valid
    until the next call of L{open}; L{take} hands one over instead.

    @ivar created: the directories (their segments) the cache made.
    """

    #: Depth between two anchors.
    ANCHOR_STRIDE = 128

    #: Anchors kept open at most: enough for the deepest valid path (a
    #: 4,096-byte path has at most 2,048 segments).
    ANCHORS = 16

    def __init__(self, arena: str, directory: str, limit: int = DIR_CACHE_SIZE):
        """
        @param arena: the arena's name, for messages.
        @param directory: the arena's directory.
        @param limit: directories kept open at most, anchors aside (at
            least 2).
        """
        self.arena = arena
        self.directory = directory
        self.limit = max(limit, 2)
        self._fds: dict[tuple[str, ...], int] = {}
        self._anchors: dict[tuple[str, ...], int] = {}
        # What the last call returned: a batch in directory order asks for
        # the same directory again and again.
        self._last: tuple[tuple[str, ...], int] | None = None
        self.created: set[tuple[str, ...]] = set()

    def __enter__(self) -> DirCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """
        Close every directory of the cache.
        """
        self._last = None
        for fds in (self._fds, self._anchors):
            for fd in fds.values():
                os.close(fd)
            fds.clear()

    def _keep(self, key: tuple[str, ...], fd: int) -> None:
        if key and len(key) % self.ANCHOR_STRIDE == 0:
            fds, limit = self._anchors, self.ANCHORS
        else:
            fds, limit = self._fds, self.limit
        fds[key] = fd
        while len(fds) > limit:
            oldest = next(iter(fds))
            os.close(fds.pop(oldest))

    def _cached(self, key: tuple[str, ...]) -> int | None:
        if key and len(key) % self.ANCHOR_STRIDE == 0:
            fds = self._anchors
        else:
            fds = self._fds
        fd = fds.pop(key, None)
        if fd is not None:
            fds[key] = fd  # most recently used
        return fd

    def open(self, segments: Sequence[str], path: str, create: bool) -> int:
        """
        @param segments: the directory, e.g. C{["d", "e"]}; C{[]} for the
            arena directory.
        @param path: the path this is for, for messages.
        @param create: create missing directories.
        @return: the descriptor of the directory (owned by the cache).
        @raise NotFound: if one is missing and not C{create}, or the
            arena directory is missing.
        @raise InvalidPath: if one is or crosses a symlink or a
            non-directory.
        """
        try:
            return self.resolve(segments, create)
        except OSError as e:
            raise os_error(e, self.arena, path) from None

    def resolve(self, segments: Sequence[str], create: bool) -> int:
        """
        As L{open}, with the C{OSError} of a directory on the way as is.

        @raise NotFound: if the arena directory is missing.
        @raise OSError: for a directory beneath it.
        """
        key = tuple(segments)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        fd = self._cached(key)
        if fd is None:
            self._last = None  # walking may close it
            fd = self._walk(key, create)
        self._last = key, fd
        return fd

    def _walk(self, key: tuple[str, ...], create: bool) -> int:
        depth = len(key)
        while depth > 0:
            fd = self._cached(key[:depth])
            if fd is not None:
                break
            depth -= 1
        else:
            fd = self._cached(())
            if fd is None:
                fd = open_directory(self.arena, self.directory)
                self._keep((), fd)
        for index in range(depth, len(key)):
            fd, made = _open_child(fd, key[index], create)
            if made:
                self.created.add(key[: index + 1])
            self._keep(key[: index + 1], fd)
        return fd

    def take(self, segments: Sequence[str], path: str, create: bool) -> int:
        """
        As L{open}, but the descriptor is the caller's to close.
        """
        self.open(segments, path, create)
        self._last = None
        key = tuple(segments)
        fd = self._fds.pop(key, None)
        return self._anchors.pop(key) if fd is None else fd

    def discard(self, segments: Sequence[str]) -> None:
        """
        Close a directory of the cache (e.g. because it was removed).
        """
        key = tuple(segments)
        self._last = None
        for fds in (self._fds, self._anchors):
            fd = fds.pop(key, None)
            if fd is not None:
                os.close(fd)


def _open_child(parent: int, name: str, create: bool) -> tuple[int, bool]:
    """
    @return: the directory's descriptor, and whether it was made now.
    """
    try:
        return os.open(name, O_DIR, dir_fd=parent), False
    except FileNotFoundError:
        if not create:
            raise
    made = True
    try:
        os.mkdir(name, 0o777, dir_fd=parent)
    except FileExistsError:
        made = False
    return os.open(name, O_DIR, dir_fd=parent), made
