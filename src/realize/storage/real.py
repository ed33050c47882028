"""
The arena directory store: the Real of DESIGN.md section 1, on disk.

L{ArenaRoot} does the blocking work on one arena directory: safe path
resolution, the partial-file convention, range I/O, hashing.  Every method
of it blocks and must run in a thread.  L{LocalStore} serves several arenas
through the L{realize.interfaces.Store} interface, running that work in a
thread pool; it backs both C{realized} and the C{local}/C{local:/path}
sides of C{realize-move}.

Path safety (DESIGN.md section 4): a path is checked by
L{realize.model.check_path}, then resolved beneath the arena root one
segment at a time with C{dir_fd} and C{O_NOFOLLOW}, so no symlink (or
C{..}) is ever followed; every file opened is checked to be a regular file
before use (devices, FIFOs and sockets are refused; FIFOs are opened with
C{O_NONBLOCK} so that opening one cannot hang).

Partial files (DESIGN.md section 1): the file being received for
C{dir/name} is C{dir/.name.part}; callers only ever name C{dir/name}.

Durability: L{ArenaRoot.commit} makes a group of partial files final with
one C{syncfs(2)} before and after the renames (one C{fdatasync} and a
directory C{fsync} for a group of one); L{Committer} forms the groups from
whatever finish requests arrive while a commit is running, the way
databases group commits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any, TypeVar

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger

# realize.delta (and numpy) are imported where a repair needs them: they
# cost ~60 ms of every start-up, and most moves repair nothing.
from realize.config import Config
from realize.errors import (
    BadDelta,
    BadRequest,
    Conflict,
    InvalidPath,
    IOFailure,
    NoSpace,
    NotFound,
    PermissionDenied,
    RealizeError,
)
from realize.hashing import (
    LEAF_SIZE,
    LeafHasher,
    align_down,
    hash_fd_range,
    merkle_root,
)
from realize.interfaces import RunInThread
from realize.model import (
    CHUNK_SIZE,
    MAX_DELTA_RANGE,
    ArenaName,
    FileInfo,
    FileState,
    SmallFile,
    SmallRead,
    WriteResult,
    check_mtime,
    check_path,
    check_range,
    clamp_mtime,
    final_name,
    is_partial_name,
    partial_name,
)

__all__ = ["MAX_DELTA_RANGE", "ArenaRoot", "Committer", "LocalStore"]

log = Logger()

T = TypeVar("T")

_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_WRITE = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: Start writeback of written data every this many bytes, so that the
#: fdatasync of a large file when it is finished has little left to do.
WRITEBACK_STEP = 8 << 20

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syncfs = _libc.syncfs
    _syncfs.argtypes = [ctypes.c_int]
    _sync_file_range = _libc.sync_file_range
    _sync_file_range.argtypes = [
        ctypes.c_int,
        ctypes.c_longlong,
        ctypes.c_longlong,
        ctypes.c_uint,
    ]
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _syncfs = None  # type: ignore[assignment]
    _sync_file_range = None  # type: ignore[assignment]

_SYNC_FILE_RANGE_WRITE = 2


def syncfs(fd: int) -> None:
    """
    Flush the whole filesystem holding C{fd} to disk (Linux C{syncfs(2)},
    falling back to C{sync(2)}).

    @param fd: any file descriptor on that filesystem.
    @raise OSError: if the flush fails.
    """
    if _syncfs is None:  # pragma: no cover
        os.sync()
        return
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start_writeback(fd: int, offset: int, length: int) -> None:
    """
    Ask the kernel to start writing a range of a file to disk, without
    waiting (Linux C{sync_file_range(2)} with C{SYNC_FILE_RANGE_WRITE}); a
    no-op where unavailable.

    @param fd: an open file descriptor.
    @param offset: first byte.
    @param length: bytes.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _os_error(e: OSError, arena: str, path: str) -> RealizeError:
    """
    Translate an C{OSError} into the error hierarchy.

    @param e: the error.
    @param arena: arena name for the message.
    @param path: path for the message.
    @return: the error to raise.
    """
    what = f"arena {arena!r}, path {path!r}: {e.strerror or e}"
    if e.errno == errno.ENOENT:
        return NotFound(what)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(what)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(what)
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO):
        return InvalidPath(
            f"arena {arena!r}, path {path!r}: is or crosses a symlink, "
            "a device or another non-regular file"
        )
    return IOFailure(what)


@define
class _Dir:
    """
    An open directory of an arena, with the path to it.
    """

    fd: int
    path: str


@define(eq=False)
class _ReadHandle:
    """
    A file open for a read stream, with its leaf hasher.
    """

    fd: int
    hasher: LeafHasher | None

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if self.hasher is not None:
            self.hasher.update(data)
        return data

    def close(self) -> None:
        os.close(self.fd)


@define(eq=False)
class _WriteHandle:
    """
    A partial file open for a write stream.
    """

    root: ArenaRoot
    path: str
    dir_fd: int
    name: str
    fd: int
    hasher: LeafHasher | None
    hash_start: int
    written_since_writeback: int = 0
    writeback_from: int = 0

    def write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n
        if self.hasher is not None:
            self.hasher.update(data)
        self.written_since_writeback += len(data)
        if self.written_since_writeback >= WRITEBACK_STEP:
            start_writeback(self.fd, self.writeback_from, offset - self.writeback_from)
            self.writeback_from = offset
            self.written_since_writeback = 0

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.dir_fd)


@frozen
class CommitItem:
    """
    A partial file to make final.

    @ivar root: its arena.
    @ivar path: its (final) path.
    @ivar mtime_ns: mtime to set, or C{None}.
    """

    root: ArenaRoot
    path: str
    mtime_ns: int | None = None


@define(eq=False)
class ArenaRoot:
    """
    Blocking operations on one arena directory.  Call from threads.

    @ivar name: the arena's name, for messages.
    @ivar root: the arena's root directory (the config's C{datadir}).
    @ivar exclude: a directory name at the top of the root that is not
        part of the arena (a workdir inside the datadir), or C{None}.
    """

    name: str
    root: str
    exclude: str | None = None

    # -- resolution -----------------------------------------------------

    def _error(self, e: OSError, path: str) -> RealizeError:
        return _os_error(e, self.name, path)

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise NotFound(
                    f"arena {self.name!r}: directory {self.root} does not exist"
                ) from None
            raise self._error(e, "") from None

    def _check_path(self, path: str) -> list[str]:
        """
        Validate a path of this arena.

        @return: its segments.
        @raise InvalidPath: if the path is malformed or in the excluded
            workdir.
        """
        segments = check_path(path)
        if self.exclude is not None and segments[0] == self.exclude:
            raise InvalidPath(
                f"arena {self.name!r}, path {path!r}: inside the arena's workdir"
            )
        return segments

    def _open_parent(self, path: str, create: bool) -> tuple[_Dir, str]:
        """
        Open the directory holding C{path}.

        @param path: a file path.
        @param create: create missing directories.
        @return: the open directory and the file's name in it.
        @raise InvalidPath: if the path is malformed or crosses a symlink
            or a non-directory.
        @raise NotFound: if a directory is missing and not C{create}.
        """
        segments = self._check_path(path)
        fd = self._open_root()
        try:
            for segment in segments[:-1]:
                try:
                    child = os.open(segment, _O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(segment, 0o777, dir_fd=fd)
                    child = os.open(segment, _O_DIR, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as e:
            os.close(fd)
            raise self._error(e, path) from None
        return _Dir(fd, path), segments[-1]

    def _check_regular(self, fd: int, path: str) -> os.stat_result:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidPath(f"arena {self.name!r}, path {path!r}: not a regular file")
        return st

    def _open_existing(
        self, parent: _Dir, name: str, prefer_partial: bool, flags: int
    ) -> tuple[int, bool, os.stat_result]:
        """
        Open the final or partial file of a name.

        @return: the file descriptor, whether it is the partial, and its
            status.
        @raise NotFound: if neither exists.
        """
        order = (
            [(partial_name(name), True), (name, False)]
            if prefer_partial
            else [(name, False), (partial_name(name), True)]
        )
        for candidate, is_partial in order:
            try:
                fd = os.open(candidate, flags, dir_fd=parent.fd)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self._error(e, parent.path) from None
            try:
                st = self._check_regular(fd, parent.path)
            except BaseException:
                os.close(fd)
                raise
            return fd, is_partial, st
        raise NotFound(f"arena {self.name!r}: no file {parent.path!r}")

    def _open_for_reading(
        self, path: str, prefer_partial: bool
    ) -> tuple[int, os.stat_result]:
        """
        Open the final or partial file of an arena path for reading.

        @param prefer_partial: try the partial file first.
        @return: the file descriptor and its status.
        @raise NotFound: if neither file (or a directory on the way) exists.
        """
        parent, name = self._open_parent(path, create=False)
        try:
            fd, _, st = self._open_existing(parent, name, prefer_partial, _O_READ)
        finally:
            os.close(parent.fd)
        return fd, st

    def _open_partial(self, parent: _Dir, name: str, create: bool) -> int:
        """
        Open the partial file of a name for writing; a final file is first
        turned into the partial one.

        @param create: create an empty partial file if neither exists.
        @raise NotFound: if neither exists and not C{create}.
        """
        partial = partial_name(name)
        path = parent.path
        try:
            fd = os.open(partial, _O_WRITE, dir_fd=parent.fd)
        except FileNotFoundError:
            fd = -1
        except OSError as e:
            raise self._error(e, path) from None
        if fd < 0:
            try:
                st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            except OSError as e:
                raise self._error(e, path) from None
            try:
                if st is not None:
                    if not stat.S_ISREG(st.st_mode):
                        raise InvalidPath(
                            f"arena {self.name!r}, path {path!r}: not a regular file"
                        )
                    os.rename(name, partial, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
                    fd = os.open(partial, _O_WRITE, dir_fd=parent.fd)
                elif create:
                    fd = os.open(
                        partial,
                        _O_WRITE | os.O_CREAT | os.O_EXCL,
                        0o666,
                        dir_fd=parent.fd,
                    )
                else:
                    raise NotFound(f"arena {self.name!r}: no file {path!r}")
            except OSError as e:
                raise self._error(e, path) from None
        try:
            self._check_regular(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _create_partial(self, dir_fd: int, name: str, path: str) -> tuple[int, bool]:
        """
        Open the partial file of a name to replace its whole content: a
        new one if possible (the common case, two system calls), else the
        existing partial.  The final file is left alone (the rename that
        finishes the partial replaces it) but must be a regular file if it
        exists.

        @return: the descriptor, and whether the file was created empty.
        @raise InvalidPath: if the partial or the final is not a regular
            file.
        """
        partial = partial_name(name)
        try:
            try:
                fd = os.open(
                    partial, _O_WRITE | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=dir_fd
                )
                created = True
            except FileExistsError:
                fd = os.open(partial, _O_WRITE, dir_fd=dir_fd)
                created = False
        except OSError as e:
            raise self._error(e, path) from None
        try:
            if not created:
                self._check_regular(fd, path)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise InvalidPath(
                    f"arena {self.name!r}, path {path!r}: not a regular file"
                )
        except BaseException as e:
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(partial, dir_fd=dir_fd)
            if isinstance(e, OSError):
                raise self._error(e, path) from None
            raise
        return fd, created

    # -- listing --------------------------------------------------------

    def list_files(self) -> list[FileInfo]:
        """
        List the regular files of the arena, finals and partials.

        Symlinks, devices, FIFOs, sockets and empty directories are not
        listed; names that are not valid paths (e.g. not UTF-8) and
        unreadable directories are skipped with a warning in the log.

        @return: the files, in no particular order.
        @raise NotFound: if the arena directory does not exist.
        """
        files: list[FileInfo] = []
        root_fd = self._open_root()
        stack: list[tuple[int, str]] = [(root_fd, "")]
        while stack:
            fd, prefix = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        name = entry.name
                        if not prefix and name == self.exclude:
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            try:
                                child = os.open(name, _O_DIR, dir_fd=fd)
                            except OSError as e:
                                log.warn(
                                    "arena {arena}: skipping directory {path}: {error}",
                                    arena=self.name,
                                    path=prefix + name,
                                    error=e.strerror,
                                )
                                continue
                            stack.append((child, f"{prefix}{name}/"))
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        partial = is_partial_name(name)
                        path = prefix + (final_name(name) if partial else name)
                        try:
                            check_path(path)
                            path.encode("utf-8")
                        except (InvalidPath, UnicodeEncodeError) as e:
                            log.warn(
                                "arena {arena}: skipping {path!r}: {error}",
                                arena=self.name,
                                path=path,
                                error=str(e),
                            )
                            continue
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        files.append(
                            FileInfo(
                                path, st.st_size, clamp_mtime(st.st_mtime_ns), partial
                            )
                        )
            except OSError as e:
                log.warn(
                    "arena {arena}: skipping directory {path}: {error}",
                    arena=self.name,
                    path=prefix or ".",
                    error=e.strerror,
                )
            finally:
                os.close(fd)
        return files

    # -- reading --------------------------------------------------------

    def open_read(self, path: str, start: int, hash_from: int | None) -> _ReadHandle:
        """
        Open a file (final, else partial) for a read stream, hashing
        C{[hash_from, start)} first if asked.

        @raise NotFound, InvalidPath, PermissionDenied, IOFailure: as usual.
        """
        fd, _ = self._open_for_reading(path, prefer_partial=False)
        try:
            hasher = None
            if hash_from is not None:
                hasher = LeafHasher()
                for chunk in _read_range(fd, hash_from, start):
                    hasher.update(chunk)
        except OSError as e:
            os.close(fd)
            raise self._error(e, path) from None
        return _ReadHandle(fd, hasher)

    def read_chunk(
        self, handle: _ReadHandle, path: str, offset: int, length: int
    ) -> bytes:
        """
        Read the next chunk of a read stream.
        """
        try:
            return handle.read(offset, length)
        except OSError as e:
            raise self._error(e, path) from None

    def end_read(self, handle: _ReadHandle) -> FileState:
        """
        Close a read stream's file.

        @return: its leaves and its size and mtime now.
        """
        try:
            st = os.fstat(handle.fd)
        finally:
            handle.close()
        leaves = tuple(handle.hasher.finish()) if handle.hasher else ()
        return FileState(leaves, st.st_size, clamp_mtime(st.st_mtime_ns))

    def write_all(
        self,
        path: str,
        start: int,
        data: bytes,
        end: int,
        file_size: int,
        hash: bool,
        verify: bool,
    ) -> tuple[tuple[bytes, ...], bytes | None]:
        """
        A whole (small) write stream in one call: L{open_write},
        L{write_chunk}, L{end_write}.
        """
        handle = self.open_write(path, start, hash)
        try:
            handle.write(data, start)
        except OSError as e:
            handle.close()
            raise self._error(e, path) from None
        return self.end_write(handle, end, file_size, verify)

    def read_all(
        self, path: str, start: int, end: int, hash_from: int | None
    ) -> tuple[bytes, FileState]:
        """
        Read a whole (small) range in one call.

        @return: the bytes of C{[start, end)} (fewer at end of file) and the
            file's state.
        """
        handle = self.open_read(path, start, hash_from)
        try:
            data = handle.read(start, end - start)
        except OSError as e:
            handle.close()
            raise self._error(e, path) from None
        return data, self.end_read(handle)

    # -- writing --------------------------------------------------------

    def open_write(self, path: str, start: int, hash: bool) -> _WriteHandle:
        """
        Open the partial file of a path for a write stream at C{start},
        creating directories and the file as needed; with C{hash}, hash
        the existing bytes C{[align_down(start), start)} first.
        """
        parent, name = self._open_parent(path, create=True)
        try:
            fd = self._open_partial(parent, name, create=True)
        except BaseException:
            os.close(parent.fd)
            raise
        handle = _WriteHandle(
            self, path, parent.fd, name, fd, None, align_down(start), 0, start
        )
        if hash:
            handle.hasher = LeafHasher()
            try:
                for chunk in _read_range(fd, align_down(start), start):
                    handle.hasher.update(chunk)
                size = os.fstat(fd).st_size
                if size < start:
                    handle.hasher.update(bytes(start - max(size, align_down(start))))
            except OSError as e:
                handle.close()
                raise self._error(e, path) from None
        return handle

    def write_chunk(self, handle: _WriteHandle, data: bytes, offset: int) -> None:
        """
        Write the next chunk of a write stream.
        """
        try:
            handle.write(data, offset)
        except OSError as e:
            raise self._error(e, handle.path) from None

    def end_write(
        self, handle: _WriteHandle, end: int, file_size: int, verify: bool
    ) -> tuple[tuple[bytes, ...], bytes | None]:
        """
        Complete a write stream: truncate at C{file_size} if C{end} is the
        end of the file, close.

        @param verify: also compute the whole file's root, re-reading only
            the leaves before the written range (needs a hashing handle).
        @return: the leaves of C{[align_down(start), end)} (if hashing)
            and, with C{verify}, the Merkle root of the whole file.
        """
        try:
            if end == file_size:
                os.ftruncate(handle.fd, file_size)
            leaves = handle.hasher.finish() if handle.hasher else []
            root = None
            if verify:
                prefix = hash_fd_range(handle.fd, 0, handle.hash_start)
                root = merkle_root(prefix + leaves)
            return tuple(leaves), root
        except OSError as e:
            raise self._error(e, handle.path) from None
        finally:
            handle.close()

    def truncate(self, path: str, size: int) -> None:
        """
        Truncate or extend the partial file (a final file becomes partial).

        @raise NotFound: if there is no file.
        """
        parent, name = self._open_parent(path, create=False)
        try:
            fd = self._open_partial(parent, name, create=False)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        except OSError as e:
            raise self._error(e, path) from None
        finally:
            os.close(parent.fd)

    def hash(self, path: str, start: int, end: int) -> FileState:
        """
        Leaves of C{[start, min(end, size))} of the file (partial if it
        exists, else final).
        """
        fd, _ = self._open_for_reading(path, prefer_partial=True)
        try:
            leaves = hash_fd_range(fd, start, end)
            st = os.fstat(fd)
        except OSError as e:
            raise self._error(e, path) from None
        finally:
            os.close(fd)
        return FileState(tuple(leaves), st.st_size, clamp_mtime(st.st_mtime_ns))

    # -- batches of small files ------------------------------------------

    def read_files(
        self, files: list[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        """
        Read whole small files (final, else partial) in one call.

        @param files: C{(path, limit)}; a file larger than C{limit} is not
            read, only its size and mtime are returned.
        @return: per file, what was read or its error.
        """
        results: list[SmallRead | RealizeError] = []
        with _DirCache(self) as dirs:
            for path, limit in files:
                try:
                    segments = self._check_path(path)
                    parent = _Dir(dirs.open(segments[:-1], path, create=False), path)
                    fd, _, st = self._open_existing(
                        parent, segments[-1], False, _O_READ
                    )
                    try:
                        data = b""
                        if st.st_size <= limit:
                            data = _read_fd(fd, st.st_size)
                            st = os.fstat(fd)
                    finally:
                        os.close(fd)
                    results.append(
                        SmallRead(
                            data, st.st_size, clamp_mtime(st.st_mtime_ns), _root(data)
                        )
                    )
                except RealizeError as e:
                    results.append(e)
                except OSError as e:
                    results.append(self._error(e, path))
        return results

    def write_files(
        self, files: list[SmallFile], data: list[bytes]
    ) -> list[RealizeError | None]:
        """
        Write, verify and finish whole small files in one call: every file
        is written to its partial file and hashed; those with the expected
        root get their mtime and are renamed final between two
        C{syncfs} (one C{fdatasync} and a directory C{fsync} for a single
        file), so they are on disk when this returns.

        @param files: the files.
        @param data: their contents.
        @return: per file, C{None} if it is final, else its error.
        """
        results: list[RealizeError | None] = [None] * len(files)
        ready: list[tuple[int, int, str]] = []
        with _DirCache(self) as dirs:
            seen: set[str] = set()
            for index, (file, content) in enumerate(zip(files, data, strict=True)):
                try:
                    segments = self._check_path(file.path)
                    if file.path in seen:
                        raise BadRequest(
                            f"arena {self.name!r}, path {file.path!r}: named "
                            "twice in one batch"
                        )
                    seen.add(file.path)
                    if len(content) != file.size:
                        raise Conflict(
                            f"arena {self.name!r}, path {file.path!r}: "
                            f"{len(content)} bytes sent for a {file.size}-byte file"
                        )
                    dir_fd = dirs.open(segments[:-1], file.path, create=True)
                    name = segments[-1]
                    fd, created = self._create_partial(dir_fd, name, file.path)
                    try:
                        _write_fd(fd, content)
                        if not created:
                            os.ftruncate(fd, file.size)
                        if _root(content) != file.root:
                            raise Conflict(
                                f"arena {self.name!r}, path {file.path!r}: hash "
                                "differs from the source's"
                            )
                        os.utime(fd, ns=(file.mtime_ns, file.mtime_ns))
                        if len(files) == 1:
                            os.fdatasync(fd)
                    finally:
                        os.close(fd)
                    ready.append((index, dir_fd, name))
                except RealizeError as e:
                    results[index] = e
                except OSError as e:
                    results[index] = self._error(e, file.path)
            if not ready:
                return results
            try:
                if len(files) > 1:
                    _sync_filesystems(fd for _, fd, _ in ready)
                for index, dir_fd, name in ready:
                    try:
                        os.rename(
                            partial_name(name),
                            name,
                            src_dir_fd=dir_fd,
                            dst_dir_fd=dir_fd,
                        )
                    except OSError as e:
                        results[index] = self._error(e, files[index].path)
                if len(files) > 1:
                    _sync_filesystems(fd for _, fd, _ in ready)
                else:
                    os.fsync(ready[0][1])
            except OSError as e:
                for index, _, _ in ready:
                    if results[index] is None:
                        results[index] = self._error(e, files[index].path)
        return results

    def delete_files(self, files: list[FileInfo]) -> list[RealizeError | None]:
        """
        Delete final files in one call, each only if it still has its
        size and mtime, and their partial files; then remove the
        directories this left empty, up to the arena root.

        @return: per file, C{None} or its error (L{Conflict} if it changed).
        """
        results: list[RealizeError | None] = []
        touched: set[tuple[str, ...]] = set()
        with _DirCache(self) as dirs:
            for info in files:
                try:
                    segments = self._check_path(info.path)
                    try:
                        dir_fd = dirs.open(segments[:-1], info.path, create=False)
                    except NotFound:
                        results.append(None)
                        continue
                    self._delete_in(
                        dir_fd, segments[-1], info.path, info.size, info.mtime_ns
                    )
                    results.append(None)
                    for depth in range(1, len(segments)):
                        touched.add(tuple(segments[:depth]))
                except RealizeError as e:
                    results.append(e)
                except OSError as e:
                    results.append(self._error(e, info.path))
            for directory in sorted(touched, key=len, reverse=True):
                try:
                    parent = dirs.open(
                        list(directory[:-1]), "/".join(directory), create=False
                    )
                    os.rmdir(directory[-1], dir_fd=parent)
                except (OSError, RealizeError):
                    continue
        return results

    def _delete_in(
        self, dir_fd: int, name: str, path: str, size: int | None, mtime_ns: int | None
    ) -> None:
        """
        Delete the final and partial file of C{name} in an open directory,
        the final one only if it still has C{size} and C{mtime_ns}.
        """
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise InvalidPath(
                    f"arena {self.name!r}, path {path!r}: not a regular file"
                )
            if size is not None and (
                st.st_size != size
                or (mtime_ns is not None and clamp_mtime(st.st_mtime_ns) != mtime_ns)
            ):
                raise Conflict(
                    f"arena {self.name!r}, path {path!r}: changed since it "
                    f"was listed (size {size} -> {st.st_size}), not deleted"
                )
            os.unlink(name, dir_fd=dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial_name(name), dir_fd=dir_fd)

    # -- repair by delta (rsync) -----------------------------------------

    def signature(self, path: str, start: int, end: int) -> bytes | None:
        """
        rsync signature of C{[start, min(end, size))} of the file being
        received (partial, else final).

        @return: the signature, or C{None} if the file has no byte at
            C{start} (nothing to build a delta on).
        """
        from realize import delta

        fd, st = self._open_for_reading(path, prefer_partial=True)
        try:
            if st.st_size <= start:
                return None
            basis = _read_into(fd, start, min(end, st.st_size), "basis")
        except OSError as e:
            raise self._error(e, path) from None
        finally:
            os.close(fd)
        return delta.signature(basis)

    def diff(self, path: str, start: int, end: int, signature: bytes) -> bytes:
        """
        Delta that turns the basis described by C{signature} into
        C{[start, end)} of the file (final, else partial).

        @raise BadDelta: if the signature is malformed.
        @raise Conflict: if the file is shorter than C{end}.
        """
        from realize import delta

        try:
            parsed = delta.parse_signature(signature, max_basis_length=end - start)
        except delta.DeltaFormatError as e:
            raise BadDelta(f"arena {self.name!r}, path {path!r}: {e}") from None
        fd, _ = self._open_for_reading(path, prefer_partial=False)
        try:
            target = _read_into(fd, start, end, "target")
        except OSError as e:
            raise self._error(e, path) from None
        finally:
            os.close(fd)
        if len(target) != end - start:
            raise Conflict(
                f"arena {self.name!r}, path {path!r}: shorter than {end} bytes"
            )
        return delta.diff(target, parsed)

    def apply_delta(
        self, path: str, start: int, end: int, file_size: int, change: bytes
    ) -> tuple[bytes, ...]:
        """
        Apply a delta to C{[start, end)} of the partial file (a final file
        becomes partial), the basis being the file's bytes from C{start}
        on; write the blocks that changed; truncate at C{file_size} if
        C{end} is the end of the file.

        @param start: a leaf boundary.
        @return: the Merkle leaves of C{[start, end)} afterwards.
        @raise BadDelta: if the delta is malformed, refers to bytes the
            basis lacks, or does not produce exactly C{end - start} bytes.
        """
        from realize import delta

        parent, name = self._open_parent(path, create=False)
        try:
            fd = self._open_partial(parent, name, create=False)
        finally:
            os.close(parent.fd)
        try:
            size = os.fstat(fd).st_size
            basis = _read_into(fd, start, max(start, min(end, size)), "basis")
            try:
                output = delta.apply(
                    basis,
                    change,
                    expected_length=end - start,
                    max_length=MAX_DELTA_RANGE,
                    out=_buffer("output", end - start),
                )
            except delta.DeltaFormatError as e:
                raise BadDelta(f"arena {self.name!r}, path {path!r}: {e}") from None
            _write_changed(fd, start, basis, output)
            if end == file_size:
                os.ftruncate(fd, file_size)
        except OSError as e:
            raise self._error(e, path) from None
        finally:
            os.close(fd)
        hasher = LeafHasher()
        hasher.update(output)
        return tuple(hasher.finish())

    # -- finishing and deleting -----------------------------------------

    @staticmethod
    def commit(items: list[CommitItem]) -> list[BaseException | None]:
        """
        Make a group of partial files final, durably: data on disk before
        the renames, renames on disk before returning.

        One file: C{fdatasync} it, rename, C{fsync} the directory.  Several:
        C{syncfs} each filesystem, rename them all, C{syncfs} again.  A file
        that is already final (no partial, final present) is left alone.

        @param items: the files.
        @return: for each item, C{None} or the error that failed it.
        """
        results: list[BaseException | None] = [None] * len(items)
        opened: list[tuple[int, _Dir, str, bool]] = []
        try:
            for index, item in enumerate(items):
                try:
                    parent, name = item.root._open_parent(item.path, create=False)
                except RealizeError as e:
                    results[index] = e
                    continue
                try:
                    fd = os.open(partial_name(name), _O_READ, dir_fd=parent.fd)
                except FileNotFoundError:
                    results[index] = _finish_final(item, parent, name)
                    os.close(parent.fd)
                    continue
                except OSError as e:
                    results[index] = item.root._error(e, item.path)
                    os.close(parent.fd)
                    continue
                try:
                    item.root._check_regular(fd, item.path)
                    if item.mtime_ns is not None:
                        os.utime(fd, ns=(item.mtime_ns, item.mtime_ns))
                except (OSError, RealizeError, OverflowError, ValueError) as e:
                    results[index] = (
                        e
                        if isinstance(e, RealizeError)
                        else item.root._error(e, item.path)
                        if isinstance(e, OSError)
                        else BadRequest(f"path {item.path!r}: {e}")
                    )
                    os.close(fd)
                    os.close(parent.fd)
                    continue
                opened.append((index, parent, name, fd >= 0))
                if len(items) == 1:
                    try:
                        os.fdatasync(fd)
                    except OSError as e:
                        results[index] = item.root._error(e, item.path)
                        opened.pop()
                        os.close(parent.fd)
                os.close(fd)
            if len(items) > 1 and opened:
                _sync_filesystems(parent.fd for _, parent, _, _ in opened)
            for index, parent, name, _ in opened:
                try:
                    os.rename(
                        partial_name(name),
                        name,
                        src_dir_fd=parent.fd,
                        dst_dir_fd=parent.fd,
                    )
                except OSError as e:
                    results[index] = items[index].root._error(e, items[index].path)
            if len(items) == 1:
                for _, parent, _, _ in opened:
                    os.fsync(parent.fd)
            elif opened:
                _sync_filesystems(parent.fd for _, parent, _, _ in opened)
        except OSError as e:
            for index, _, _, _ in opened:
                if results[index] is None:
                    results[index] = items[index].root._error(e, items[index].path)
        finally:
            for _, parent, _, _ in opened:
                os.close(parent.fd)
        return results

    def delete(self, path: str, size: int | None, mtime_ns: int | None) -> None:
        """
        Delete the final and partial files of a path, then the directories
        this left empty, up to the arena root.

        @param size: with C{mtime_ns}, a precondition on the final file.
        @raise Conflict: if the final file's size or mtime differ.
        """
        segments = self._check_path(path)
        fds = [self._open_root()]
        try:
            for segment in segments[:-1]:
                try:
                    fds.append(os.open(segment, _O_DIR, dir_fd=fds[-1]))
                except FileNotFoundError:
                    return
            self._delete_in(fds[-1], segments[-1], path, size, mtime_ns)
            for index in range(len(segments) - 2, -1, -1):
                try:
                    os.rmdir(segments[index], dir_fd=fds[index])
                except OSError:
                    break
        except OSError as e:
            raise self._error(e, path) from None
        finally:
            for fd in fds:
                os.close(fd)


def _finish_final(item: CommitItem, parent: _Dir, name: str) -> RealizeError | None:
    """
    Finish of a file with no partial: fine if the final file exists (its
    mtime is set if asked), else L{NotFound}.
    """
    try:
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    except OSError as e:
        return item.root._error(e, item.path)
    if st is None:
        return NotFound(f"arena {item.root.name!r}: no file {item.path!r}")
    if not stat.S_ISREG(st.st_mode):
        return InvalidPath(
            f"arena {item.root.name!r}, path {item.path!r}: not a regular file"
        )
    if item.mtime_ns is not None and clamp_mtime(st.st_mtime_ns) != item.mtime_ns:
        try:
            os.utime(
                name,
                ns=(item.mtime_ns, item.mtime_ns),
                dir_fd=parent.fd,
                follow_symlinks=False,
            )
        except OSError as e:
            return item.root._error(e, item.path)
    return None


_buffers = threading.local()


def _buffer(name: str, size: int) -> bytearray:
    """
    A buffer of at least C{size} bytes for this thread, kept from one call
    to the next: delta work on 16 MiB ranges would otherwise allocate and
    page-fault fresh memory for every range.
    """
    buffer: bytearray | None = getattr(_buffers, name, None)
    if buffer is None or len(buffer) < size:
        buffer = bytearray(size)
        setattr(_buffers, name, buffer)
    return buffer


def _read_into(fd: int, start: int, end: int, name: str) -> memoryview:
    """
    Read C{[start, end)} (or less at end of file) into this thread's
    buffer C{name}.

    @return: a view of the bytes read; valid until the next call with
        the same name in this thread.
    """
    view = memoryview(_buffer(name, end - start))
    got = 0
    while start + got < end:
        n = os.preadv(fd, [view[got : end - start]], start + got)
        if n == 0:
            break
        got += n
    return view[:got]


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
        _pwrite_all(fd, view[first:last], start + first)
        index = run


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _root(data: bytes) -> bytes:
    hasher = LeafHasher()
    hasher.update(data)
    return merkle_root(hasher.finish())


def _read_fd(fd: int, size: int) -> bytes:
    """
    Read a whole small file from its start.
    """
    parts = []
    offset = 0
    while True:
        # One byte more than expected: a short read means the end (one
        # pread for a file that did not change, not a second for EOF).
        want = max(size - offset, 0) + 1
        chunk = os.pread(fd, want, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        if len(chunk) < want:
            break
    return b"".join(parts)


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)


class _DirCache:
    """
    Directories of an arena opened during one batch, by their segments,
    each resolved without following symlinks (as L{ArenaRoot._open_parent}
    does); closed when the batch ends.
    """

    def __init__(self, root: ArenaRoot) -> None:
        self._root = root
        self._fds: dict[tuple[str, ...], int] = {}

    def __enter__(self) -> _DirCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def open(self, segments: list[str], path: str, create: bool) -> int:
        """
        @return: the descriptor of the directory C{segments} (owned by
            the cache).
        @raise NotFound: if missing and not C{create}.
        @raise InvalidPath: if it is or crosses a symlink or non-directory.
        """
        key = tuple(segments)
        fd = self._fds.get(key)
        if fd is not None:
            return fd
        if not key:
            fd = self._root._open_root()
        else:
            parent = self.open(segments[:-1], path, create)
            try:
                try:
                    fd = os.open(key[-1], _O_DIR, dir_fd=parent)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(key[-1], 0o777, dir_fd=parent)
                    fd = os.open(key[-1], _O_DIR, dir_fd=parent)
            except OSError as e:
                raise self._root._error(e, path) from None
        self._fds[key] = fd
        return fd


def _read_range(fd: int, start: int, end: int) -> Iterable[bytes]:
    offset = start
    while offset < end:
        data = os.pread(fd, min(CHUNK_SIZE, end - offset), offset)
        if not data:
            return
        yield data
        offset += len(data)


def _sync_filesystems(fds: Iterable[int]) -> None:
    seen: set[int] = set()
    for fd in fds:
        dev = os.fstat(fd).st_dev
        if dev not in seen:
            seen.add(dev)
            syncfs(fd)


@define(eq=False)
class Committer:
    """
    Group commit of finished files (as databases group commits): while one
    L{ArenaRoot.commit} runs in a thread, new requests wait and then go
    together in the next one, so N concurrent finishes cost far fewer than
    N flushes, and a lone finish waits for nobody.

    @ivar run_in_thread: runs the blocking commit.
    """

    run_in_thread: RunInThread
    _queue: list[tuple[CommitItem, Deferred[None]]] = field(factory=list)
    _running: bool = False

    def commit(self, item: CommitItem) -> Deferred[None]:
        """
        Make a partial file final, durably.

        @param item: the file.
        @return: a Deferred that fires with C{None} once the file is final
            on disk, or fails with the file's error.
        """
        d: Deferred[None] = Deferred()
        self._queue.append((item, d))
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        batch, self._queue = self._queue, []
        self._running = True
        self.run_in_thread(ArenaRoot.commit, [item for item, _ in batch]).addBoth(
            self._done, batch
        )

    def _done(
        self,
        results: list[BaseException | None] | Any,
        batch: list[tuple[CommitItem, Deferred[None]]],
    ) -> None:
        self._running = False
        if self._queue:
            self._start()
        for index, (_, d) in enumerate(batch):
            if isinstance(results, list):
                error = results[index]
            else:  # the whole commit failed (a Failure)
                error = results.value
            if error is None:
                d.callback(None)
            else:
                d.errback(error)


class _LocalReadStream:
    """
    A read stream of a local file: reads chunk by chunk in threads,
    one chunk ahead of the consumer, hashing as it reads.
    """

    def __init__(
        self,
        run: RunInThread,
        root: ArenaRoot,
        path: str,
        start: int,
        end: int,
        hash_from: int | None,
    ) -> None:
        self._run = run
        self._root = root
        self._path = path
        self._offset = start
        self._start = start
        self._end = end
        self._hash_from = hash_from
        self._handle: _ReadHandle | None = None
        self._pending: Deferred[bytes] | None = None
        self._state: FileState | None = None
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._handle is None:
                if self._end - self._start <= CHUNK_SIZE:
                    data, self._state = await self._run(
                        self._root.read_all,
                        self._path,
                        self._start,
                        self._end,
                        self._hash_from,
                    )
                    self._done = True
                    if not data:
                        raise StopAsyncIteration
                    return data
                handle = await self._run(
                    self._root.open_read, self._path, self._start, self._hash_from
                )
                if self._done:  # cancelled while opening
                    self._run(handle.close).addErrback(lambda f: None)
                    raise StopAsyncIteration
                self._handle = handle
                self._prefetch()
            # Keep the pending read visible while it runs, so that cancel()
            # closes the file only after it (not under the reading thread).
            pending = self._pending
            assert pending is not None
            chunk = await pending
            self._pending = None
            if self._done:  # cancelled while reading; cancel() closes
                raise StopAsyncIteration
            self._offset += len(chunk)
            if chunk and self._offset < self._end:
                self._prefetch()
            else:
                handle, self._handle = self._handle, None
                self._done = True
                self._state = await self._run(self._root.end_read, handle)
            if not chunk:
                raise StopAsyncIteration
            return chunk
        except StopAsyncIteration:
            raise
        except BaseException:
            self.cancel()
            raise

    def _prefetch(self) -> None:
        length = min(CHUNK_SIZE, self._end - self._offset)
        self._pending = self._run(
            self._root.read_chunk, self._handle, self._path, self._offset, length
        )

    async def result(self) -> FileState:
        if self._state is None:
            raise Conflict(f"read of {self._path!r} did not complete")
        return self._state

    def cancel(self) -> None:
        self._done = True
        handle, self._handle = self._handle, None
        pending, self._pending = self._pending, None
        if handle is None:
            return

        def close(_: object) -> None:
            self._run(handle.close).addErrback(lambda f: None)

        if pending is None:
            close(None)
        else:
            pending.addBoth(close)


def _check_delta_range(start: int, end: int, file_size: int | None = None) -> None:
    """
    @raise BadRequest: if the range of a delta command is malformed, not
        leaf-aligned at its start, or longer than L{MAX_DELTA_RANGE}.
    """
    check_range(start, end, file_size)
    if start % LEAF_SIZE:
        raise BadRequest(f"delta range start {start} is not a leaf boundary")
    if end - start > MAX_DELTA_RANGE:
        raise BadRequest(
            f"delta range of {end - start} bytes exceeds {MAX_DELTA_RANGE}"
        )


async def _next_chunk(iterator: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


@define(eq=False)
class LocalStore:
    """
    The L{realize.interfaces.Store} of arenas on this machine, doing the
    blocking work in threads.

    @ivar roots: the arenas served.
    @ivar run_in_thread: runs blocking calls in a thread pool.
    @ivar label: how this store is named in messages (C{"local"},
        C{"local:/path"}).
    """

    roots: dict[ArenaName, ArenaRoot]
    run_in_thread: RunInThread
    label: str = "local"
    committer: Committer = field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.committer is None:
            self.committer = Committer(self.run_in_thread)

    @classmethod
    def from_config(
        cls, config: Config, run_in_thread: RunInThread, label: str = "local"
    ) -> LocalStore:
        """
        Serve every arena of a config that has a datadir.

        @param config: the config.
        @param run_in_thread: the thread pool runner.
        @param label: name of this store in messages.
        """
        roots = {}
        for arena in config.arenas.values():
            if arena.datadir is None:
                continue
            exclude = None
            try:
                relative = arena.workdir.relative_to(arena.datadir)
            except ValueError:
                pass
            else:
                exclude = relative.parts[0] if relative.parts else None
            roots[arena.name] = ArenaRoot(arena.name, str(arena.datadir), exclude)
        return cls(roots, run_in_thread, label)

    @classmethod
    def single(
        cls, arena: ArenaName, path: str, run_in_thread: RunInThread
    ) -> LocalStore:
        """
        Serve one directory as the given arena (C{local:/path}).

        @param arena: the arena name.
        @param path: the directory.
        """
        return cls({arena: ArenaRoot(arena, path)}, run_in_thread, f"local:{path}")

    def describe(self) -> str:
        return self.label

    def root(self, arena: ArenaName) -> ArenaRoot:
        """
        @return: the arena's root.
        @raise NotFound: if this store has no such arena.
        """
        try:
            return self.roots[arena]
        except KeyError:
            raise NotFound(f"{self.label} has no arena {arena!r}") from None

    async def arenas(self) -> list[ArenaName]:
        return sorted(self.roots)

    async def list_files(self, arena: ArenaName) -> list[FileInfo]:
        return await self.run_in_thread(self.root(arena).list_files)

    def read(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> _LocalReadStream:
        root = self.root(arena)
        check_path(path)
        check_range(start, end)
        if hash_from is not None and (
            hash_from % LEAF_SIZE or not 0 <= hash_from <= start
        ):
            raise BadRequest(
                f"hash start {hash_from} is not a leaf boundary at or before {start}"
            )
        return _LocalReadStream(self.run_in_thread, root, path, start, end, hash_from)

    async def write(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes],
        *,
        hash: bool = False,
        finish_root: bytes | None = None,
        mtime_ns: int | None = None,
    ) -> WriteResult:
        root = self.root(arena)
        check_path(path)
        check_range(start, end, file_size)
        check_mtime(mtime_ns)
        run = self.run_in_thread
        verify = finish_root is not None and end == file_size
        want_hash = hash or verify
        iterator = aiter(data)
        chunk = await _next_chunk(iterator)
        if chunk is None or len(chunk) == end - start:
            # The whole range in one chunk (or empty): one thread hop.
            if chunk is None and end > start:
                raise Conflict(
                    f"arena {arena!r}, path {path!r}: write stream ended at "
                    f"{start}, expected {end}"
                )
            leaves, root_hash = await run(
                root.write_all,
                path,
                start,
                chunk or b"",
                end,
                file_size,
                want_hash,
                verify,
            )
            if chunk is not None and await _next_chunk(iterator) is not None:
                raise Conflict(
                    f"arena {arena!r}, path {path!r}: more data than the "
                    f"announced {end - start} bytes"
                )
        else:
            handle = await run(root.open_write, path, start, want_hash)
            try:
                offset = start
                while chunk is not None:
                    if offset + len(chunk) > end:
                        raise Conflict(
                            f"arena {arena!r}, path {path!r}: more data than "
                            f"the announced {end - start} bytes"
                        )
                    await run(root.write_chunk, handle, chunk, offset)
                    offset += len(chunk)
                    chunk = await _next_chunk(iterator)
                if offset != end:
                    raise Conflict(
                        f"arena {arena!r}, path {path!r}: write stream ended "
                        f"at {offset}, expected {end}"
                    )
            except BaseException:
                await run(handle.close)
                raise
            leaves, root_hash = await run(
                root.end_write, handle, end, file_size, verify
            )
        finished = False
        if verify and root_hash == finish_root:
            await self.committer.commit(CommitItem(root, path, mtime_ns))
            finished = True
        return WriteResult(leaves if hash else (), finished)

    async def truncate(self, arena: ArenaName, path: str, size: int) -> None:
        check_range(0, size)
        await self.run_in_thread(self.root(arena).truncate, path, size)

    async def finish(
        self, arena: ArenaName, path: str, mtime_ns: int | None = None
    ) -> None:
        root = self.root(arena)
        check_path(path)
        check_mtime(mtime_ns)
        await self.committer.commit(CommitItem(root, path, mtime_ns))

    async def delete(
        self,
        arena: ArenaName,
        path: str,
        *,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        await self.run_in_thread(self.root(arena).delete, path, size, mtime_ns)

    async def hash(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> FileState:
        check_range(start, end)
        if start % LEAF_SIZE:
            raise BadRequest(f"hash start {start} is not a leaf boundary")
        return await self.run_in_thread(self.root(arena).hash, path, start, end)

    async def signature(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> bytes | None:
        _check_delta_range(start, end)
        return await self.run_in_thread(self.root(arena).signature, path, start, end)

    async def diff(
        self, arena: ArenaName, path: str, start: int, end: int, signature: bytes
    ) -> bytes:
        _check_delta_range(start, end)
        return await self.run_in_thread(
            self.root(arena).diff, path, start, end, signature
        )

    async def apply_delta(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        change: bytes,
    ) -> tuple[bytes, ...]:
        _check_delta_range(start, end, file_size)
        return await self.run_in_thread(
            self.root(arena).apply_delta, path, start, end, file_size, change
        )

    async def read_files(
        self, arena: ArenaName, files: Sequence[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        return await self.run_in_thread(self.root(arena).read_files, list(files))

    async def write_files(
        self, arena: ArenaName, files: Sequence[SmallFile], data: Sequence[bytes]
    ) -> list[RealizeError | None]:
        return await self.run_in_thread(
            self.root(arena).write_files, list(files), list(data)
        )

    async def delete_files(
        self, arena: ArenaName, files: Sequence[FileInfo]
    ) -> list[RealizeError | None]:
        return await self.run_in_thread(self.root(arena).delete_files, list(files))

    async def close(self, abort: bool = False) -> None:
        pass
