"""
The FUSE operations of the view: a thin adapter from libfuse's path-based
calls (as mfusepy passes them) to a L{FuseBackend}.

What the adapter decides, and nothing else:

    - B{Paths to inodes}: libfuse's high-level API names entries by path
      (C{/arena/dir/file}); each component is looked up in the backend
      from L{FuseBackend.root_inode}.  The inodes of the directories on
      the way are remembered by path (an open of a file four levels down
      otherwise costs four lookups), up to L{MAX_DIRECTORIES}; all are
      forgotten when one of them is invalidated
      (L{RealizeOperations.forget}, from the daemon's invalidations), as a
      directory at the same path may then be another one.  Open files and
      directories are reached through their handle (with C{nullpath_ok}
      the kernel sends C{getattr(None, fh)}, C{read(None, ...)}).
    - B{Handles}: one table of open files and directories, keyed by the
      C{fh} given to the kernel; a directory handle keeps the listing it
      got, so that a listing read in several calls (non-zero offsets) is
      one consistent list, fetched once.
    - B{Attributes}: files have the daemon's uid and gid and mode
      C{rw-rw-r--} (0o664), directories C{rwxrwxr-x} (0o775); atime and
      ctime equal mtime; C{st_blocks} counts the whole size.
      L{RealizeOperations.fill_stat} is the one place that writes a
      C{struct stat}.
    - B{Read-only data and names}: every call that would change data or a
      name (create, write, truncate, unlink, rename, mkdir, rmdir, link,
      symlink, mknod, chmod, chown, utimens) fails with
      L{realize.errors.ReadOnly} (C{EROFS}).  The mount itself is not
      read-only: the kernel refuses C{setxattr} on a C{ro} mount before
      asking us, and marks are set here.
    - B{Extended attributes}: C{user.realize.mark} (read and write: C{own},
      C{keep} or C{watch}; removable; another value is refused with
      C{EINVAL} and logged), C{user.realize.mark.effective} (the mark that
      applies: C{own}, C{own (inherited)}, C{watch (default)}),
      C{user.realize.version}, C{user.realize.status} and
      C{user.realize.conflicts} (read-only; the last one C{ENODATA} for a
      file without conflicts).
      C{listxattr} lists C{user.realize.mark} only, and only where a mark
      is set on that very entry: overlayfs copy-up copies the attributes
      the lower layer I{lists} (DESIGN.md section 11), and a version or
      status copied into the datadir would be stale the moment it lands.
      The effective mark, version, status and conflicts are read by name
      (C{getfattr -n user.realize.status FILE}); the conflicts are not
      listed for the same reason: a resolving write through the overlay
      would copy the settled list into the real file.  Other names: C{getxattr} answers
      C{ENODATA} (as for any absent attribute), C{setxattr} C{ENOTSUP}.
    - B{Errors}: L{ERRNOS} is the one table from the error hierarchy
      (L{realize.errors}) to errnos, most specific class first; an
      unexpected exception is logged with its traceback and answers
      C{EIO}.  C{ENODATA}, C{EEXIST} and C{ENOTSUP} of the xattr calls
      are answers of this adapter, not errors of the backend.

The C{struct stat} filling and readdirplus live in L{realize.fuse.libfuse}
(the mfusepy glue); this module imports neither mfusepy nor libfuse, so it
is tested without them.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from attrs import define, field
from twisted.logger import Logger

from realize.errors import (
    BadRequest,
    InvalidPath,
    IOFailure,
    IsADirectory,
    NetworkError,
    NoSpace,
    NotADirectory,
    NotFound,
    PermissionDenied,
    ReadOnly,
    RealizeError,
    Unauthorized,
    describe,
)
from realize.fuse.backend import MARKS, Entry, FuseBackend

__all__ = [
    "ATTR_TIMEOUT",
    "DIR_MODE",
    "ENTRY_TIMEOUT",
    "ERRNOS",
    "FILE_MODE",
    "MAX_DIRECTORIES",
    "XATTR_CONFLICTS",
    "XATTR_MARK",
    "XATTR_MARK_EFFECTIVE",
    "XATTR_STATUS",
    "XATTR_VERSION",
    "RealizeOperations",
    "errno_of",
]

#: Mode of every file: a regular file, C{rw-rw-r--}.
FILE_MODE: Final = stat.S_IFREG | 0o664

#: Mode of every directory: C{rwxrwxr-x}.
DIR_MODE: Final = stat.S_IFDIR | 0o775

#: Block size shown in C{st_blksize} and C{f_bsize}, bytes.
BLOCK_SIZE: Final = 4096

#: Longest name shown in C{f_namemax}, bytes.
NAME_MAX: Final = 255

#: Directories whose inode the adapter remembers by path, at most (beyond,
#: it forgets them all and starts again).
MAX_DIRECTORIES: Final = 4096

#: Seconds the kernel may keep a name's lookup (a dentry) without asking
#: again.  Long, because metadata only changes through notifications, and
#: the daemon then invalidates what changed
#: (L{realize.fuse.service.FuseService.invalidate}).
ENTRY_TIMEOUT: Final = 3600.0

#: Seconds the kernel may keep an entry's attributes; long, as above.
ATTR_TIMEOUT: Final = 3600.0

#: Seconds the kernel may remember that a name does not exist: none, so a
#: file added by a peer is visible at once (an invalidation of the
#: parent's path does not drop negative entries in libfuse 3.14).
NEGATIVE_TIMEOUT: Final = 0.0

XATTR_MARK: Final = "user.realize.mark"
XATTR_MARK_EFFECTIVE: Final = "user.realize.mark.effective"
XATTR_VERSION: Final = "user.realize.version"
XATTR_STATUS: Final = "user.realize.status"
XATTR_CONFLICTS: Final = "user.realize.conflicts"

#: The attributes a getxattr answers, and those of them that cannot be set.
_READ_ONLY: Final = (XATTR_MARK_EFFECTIVE, XATTR_VERSION, XATTR_STATUS, XATTR_CONFLICTS)
_READABLE: Final = (XATTR_MARK, *_READ_ONLY)

#: Errno of each error class; L{errno_of} takes the most specific class of
#: an error's MRO found here.
ERRNOS: Final[dict[type[BaseException], int]] = {
    NotADirectory: errno.ENOTDIR,
    IsADirectory: errno.EISDIR,
    # A path the kernel sends is well formed; one the store refuses does
    # not exist as far as the view goes.
    InvalidPath: errno.ENOENT,
    NotFound: errno.ENOENT,
    ReadOnly: errno.EROFS,
    PermissionDenied: errno.EACCES,
    Unauthorized: errno.EACCES,
    BadRequest: errno.EINVAL,
    NoSpace: errno.ENOSPC,
    NetworkError: errno.EIO,
    IOFailure: errno.EIO,
    RealizeError: errno.EIO,
}

#: setxattr(2) flags.
_XATTR_CREATE: Final = 1
_XATTR_REPLACE: Final = 2


def errno_of(error: BaseException) -> int:
    """
    The errno a FUSE call answers for an error.

    @param error: any exception.
    @return: the errno of the most specific class of C{error} in
        L{ERRNOS}; C{EIO} for any other exception.
    """
    for cls in type(error).__mro__:
        found = ERRNOS.get(cls)
        if found is not None:
            return found
    return errno.EIO


def _answer(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@define(eq=False)
class _OpenFile:
    inode: int
    handle: int


@define(eq=False)
class _OpenDir:
    inode: int
    listing: Sequence[tuple[str, Entry | None]] | None = None


def _translated(
    method: Callable[..., Any],
) -> Callable[..., Any]:
    """
    Wrap an operation: errors of the hierarchy become their errno
    (L{ERRNOS}); an C{OSError} (an answer) passes as is; anything else is
    logged and answers C{EIO}.
    """

    def operation(self: RealizeOperations, *args: Any) -> Any:
        try:
            return method(self, *args)
        except OSError:
            raise
        except RealizeError as e:
            code = errno_of(e)
            if code == errno.EIO:
                self.log.warn(
                    "FUSE {operation} failed: {error}",
                    operation=method.__name__,
                    error=describe(e),
                )
            raise _answer(code) from e
        except Exception as e:
            self.log.failure(
                "FUSE {operation} failed unexpectedly",
                operation=method.__name__,
            )
            raise _answer(errno.EIO) from e

    operation.__name__ = method.__name__
    operation.__doc__ = method.__doc__
    return operation


@define(eq=False)
class RealizeOperations:
    """
    mfusepy operations over a L{FuseBackend} (see the module docstring).

    Use it with L{realize.fuse.libfuse.RealizeFUSE} and C{raw_fi=True}:
    that glue fills C{struct stat} through L{fill_stat} and sends listings
    with their attributes through L{readdir_with_offset}.

    @ivar backend: the view's content.
    @ivar uid: owner shown for every entry (the daemon's uid).
    @ivar gid: group shown for every entry (the daemon's gid).
    @ivar on_init: called in the FUSE thread when the kernel connection
        is up (libfuse's C{init}), e.g. to learn the C{struct fuse *}.
    @ivar on_destroy: called in the FUSE thread as libfuse tears the
        connection down (C{destroy}), before C{FUSE(...)} returns.

    Several FUSE threads call it at once.  It needs no lock: handle ids
    come from C{itertools.count} and the handle table is a C{dict}, whose
    single operations are atomic; the rest is the backend's.
    """

    log = Logger()

    #: mfusepy: times in nanoseconds.
    use_ns = True

    backend: FuseBackend
    uid: int
    gid: int
    on_init: Callable[[], None] | None = None
    on_destroy: Callable[[], None] | None = None
    _handles: dict[int, _OpenFile | _OpenDir] = field(factory=dict, init=False)
    _ids: Iterator[int] = field(factory=lambda: itertools.count(1), init=False)
    _directories: dict[str, int] = field(factory=dict, init=False)

    # -- lifecycle ---------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        """
        libfuse's C{init}: set the configuration the view relies on.

        @param conn: C{struct fuse_conn_info} (unused).
        @param config: C{struct fuse_config}: inode numbers from
            L{Entry.inode} (C{use_ino}), paths not built for calls that
            have a handle (C{nullpath_ok}), the timeouts.
        """
        if config is not None:
            config.use_ino = 1
            config.nullpath_ok = 1
            config.entry_timeout = ENTRY_TIMEOUT
            config.attr_timeout = ATTR_TIMEOUT
            config.negative_timeout = NEGATIVE_TIMEOUT
        if self.on_init is not None:
            self.on_init()

    def destroy(self, path: str) -> None:
        """
        libfuse's C{destroy}: the connection is going away.
        """
        if self.on_destroy is not None:
            self.on_destroy()

    # -- attributes --------------------------------------------------------

    def _resolve(self, path: str) -> Entry:
        backend = self.backend
        if path == "/":
            root = backend.getattr(backend.root_inode)
            if root is None:
                raise NotFound("the view's root is gone")
            return root
        head, _, name = path.rpartition("/")
        parent = self._directory(head, path) if head else backend.root_inode
        found = backend.lookup(parent, name)
        if found is None:
            raise NotFound(f"{path}: no such file or directory")
        return found

    def _directory(self, path: str, full: str) -> int:
        """
        The inode of a directory by path, remembered (see the module
        docstring).

        @param path: C{/}-rooted, not C{/} itself.
        @param full: the path asked, for messages.
        """
        known = self._directories.get(path)
        if known is not None:
            return known
        head, _, name = path.rpartition("/")
        parent = self._directory(head, full) if head else self.backend.root_inode
        entry = self.backend.lookup(parent, name)
        if entry is None:
            raise NotFound(f"{full}: no such file or directory")
        if entry.kind != "dir":
            raise NotADirectory(f"{full}: not a directory")
        if len(self._directories) >= MAX_DIRECTORIES:
            self._directories.clear()
        self._directories[path] = entry.inode
        return entry.inode

    def forget(self, path: str) -> None:
        """
        The entry at a path changed (added, removed or replaced): if it is a
        directory remembered, or the root, forget every directory.  Any
        thread may call it.

        @param path: C{/}-rooted.
        """
        if path == "/" or path in self._directories:
            self._directories.clear()

    def _entry(self, path: str | None, fh: int | None) -> Entry:
        if fh is not None:
            opened = self._handles.get(fh)
            if opened is not None:
                entry = self.backend.getattr(opened.inode)
                if entry is None:
                    raise NotFound(f"{path or 'an open file'}: no longer exists")
                return entry
        if path is None:
            raise NotFound("no path and no open handle")
        return self._resolve(path)

    @_translated
    def getattr(self, path: str | None, fh: int | None = None) -> Entry:
        """
        The entry at a path, or of an open handle.

        @param path: C{/}-rooted path, or C{None} (C{nullpath_ok}).
        @param fh: the handle of an open file or directory, or C{None}.
        @return: the entry (L{fill_stat} turns it into a C{struct stat}).
        """
        return self._entry(path, fh)

    def fill_stat(self, st: Any, entry: Entry) -> None:
        """
        Write an entry's attributes into a C{struct stat}.

        @param st: an object with C{st_*} attributes and
            C{st_atimespec}/C{st_mtimespec}/C{st_ctimespec} objects with
            C{tv_sec} and C{tv_nsec} (mfusepy's C{c_stat}).
        @param entry: the entry.
        """
        st.st_ino = entry.inode
        st.st_mode = DIR_MODE if entry.kind == "dir" else FILE_MODE
        st.st_nlink = entry.nlink
        st.st_uid = self.uid
        st.st_gid = self.gid
        st.st_size = entry.size
        st.st_blksize = BLOCK_SIZE
        st.st_blocks = (entry.size + 511) // 512
        seconds, nanoseconds = divmod(entry.mtime_ns, 1_000_000_000)
        for times in (st.st_atimespec, st.st_mtimespec, st.st_ctimespec):
            times.tv_sec = seconds
            times.tv_nsec = nanoseconds

    @_translated
    def statfs(self, path: str) -> dict[str, int]:
        """
        C{statvfs} fields from L{FuseBackend.statfs}.
        """
        space = self.backend.statfs()
        return {
            "f_bsize": BLOCK_SIZE,
            "f_frsize": BLOCK_SIZE,
            "f_blocks": max(space.total_bytes, 0) // BLOCK_SIZE,
            "f_bfree": max(space.free_bytes, 0) // BLOCK_SIZE,
            "f_bavail": max(space.free_bytes, 0) // BLOCK_SIZE,
            "f_files": max(space.files, 0),
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": NAME_MAX,
        }

    # -- directories -------------------------------------------------------

    @_translated
    def opendir(self, path: str) -> int:
        """
        Open a directory.

        @return: its handle.
        @raise OSError: C{ENOENT}, C{ENOTDIR}.
        """
        entry = self._resolve(path)
        if entry.kind != "dir":
            raise NotADirectory(f"{path}: not a directory")
        fh = next(self._ids)
        self._handles[fh] = _OpenDir(entry.inode)
        return fh

    @_translated
    def readdir_with_offset(
        self, path: str | None, offset: int, fh: int
    ) -> Sequence[tuple[str, Entry | None, int]]:
        """
        The listing of an open directory from an offset, with attributes.

        The listing is fetched from the backend when read from offset 0
        (as POSIX asks of C{rewinddir}) and kept in the handle for the
        later offsets.

        @param path: the directory's path, or C{None} (unused).
        @param fh: the handle from L{opendir}.
        @param offset: how many entries the kernel already has.
        @return: C{(name, entry, next offset)} from entry C{offset} on,
            C{.} and C{..} first (with C{None}: no attributes sent).
        """
        opened = self._handles.get(fh)
        if not isinstance(opened, _OpenDir):
            raise BadRequest(f"no open directory with handle {fh}")
        listing = opened.listing
        if offset == 0 or listing is None:
            listing = [(".", None), ("..", None)]
            listing.extend(self.backend.readdir(opened.inode))
            opened.listing = listing
        return [
            (name, entry, index + 1)
            for index, (name, entry) in enumerate(listing[offset:], start=offset)
        ]

    def releasedir(self, path: str | None, fh: int) -> int:
        """
        Close a directory handle.
        """
        self._handles.pop(fh, None)
        return 0

    # -- files -------------------------------------------------------------

    @_translated
    def open(self, path: str, fi: Any) -> int:
        """
        Open a file for reading.

        @param path: its path.
        @param fi: C{struct fuse_file_info} (C{raw_fi=True}): its C{flags}
            are read; its C{fh} and C{keep_cache} are set.
        @return: 0.
        @raise OSError: C{EROFS} for any access mode but C{O_RDONLY};
            C{ENOENT}, C{EISDIR}.
        """
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            raise ReadOnly(f"{path}: the view is read-only")
        entry = self._resolve(path)
        if entry.kind != "file":
            raise IsADirectory(f"{path}: is a directory")
        opened = self.backend.open(entry.inode)
        fh = next(self._ids)
        self._handles[fh] = _OpenFile(entry.inode, opened.handle)
        fi.fh = fh
        fi.keep_cache = 1 if opened.keep_cache else 0
        return 0

    def _file(self, fi: Any) -> _OpenFile:
        opened = self._handles.get(fi.fh)
        if not isinstance(opened, _OpenFile):
            raise BadRequest(f"no open file with handle {fi.fh}")
        return opened

    @_translated
    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        """
        Read from an open file (may block on a download, see
        L{FuseBackend.read}).
        """
        opened = self._file(fi)
        return self.backend.read(opened.inode, opened.handle, offset, size)

    @_translated
    def release(self, path: str | None, fi: Any) -> int:
        """
        Close an open file.
        """
        opened = self._file(fi)
        del self._handles[fi.fh]
        self.backend.release(opened.inode, opened.handle)
        return 0

    # -- extended attributes -----------------------------------------------

    @_translated
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        """
        The value of C{user.realize.mark}, C{.mark.effective}, C{.version},
        C{.status} or C{.conflicts}.

        @raise OSError: C{ENODATA} for an attribute not set or not known.
        """
        if name not in _READABLE:
            # Answered before the path is resolved: C{ls -l} asks for
            # security.selinux and system.posix_acl_access of every file.
            raise _answer(errno.ENODATA)
        inode = self._resolve(path).inode
        value: str | None
        if name == XATTR_MARK:
            value = self.backend.mark(inode)
        elif name == XATTR_MARK_EFFECTIVE:
            value = self.backend.effective_mark(inode)
        elif name == XATTR_VERSION:
            value = self.backend.version(inode)
        elif name == XATTR_CONFLICTS:
            value = self.backend.conflicts(inode)
        else:
            value = self.backend.status(inode)
        if value is None:
            raise _answer(errno.ENODATA)
        return value.encode("utf-8")

    @_translated
    def listxattr(self, path: str) -> list[str]:
        """
        C{[user.realize.mark]} where a mark is set on the entry itself,
        else nothing (see the module docstring).
        """
        entry = self._resolve(path)
        return [XATTR_MARK] if self.backend.mark(entry.inode) is not None else []

    @_translated
    def setxattr(
        self, path: str, name: str, value: bytes, options: int, position: int = 0
    ) -> int:
        """
        Set the mark (C{own}, C{keep} or C{watch}).

        @raise OSError: C{EINVAL} for another value, C{EROFS} for the
            version and status, C{ENOTSUP} for other names, C{EEXIST} and
            C{ENODATA} for C{XATTR_CREATE} and C{XATTR_REPLACE}.
        """
        if name in _READ_ONLY:
            raise ReadOnly(f"{name} is read-only")
        if name != XATTR_MARK:
            raise _answer(errno.ENOTSUP)
        try:
            mark = value.decode("utf-8")
        except UnicodeDecodeError:
            mark = None
        if mark not in MARKS:
            self.log.warn(
                "refused {name} = {value!r} on {path}: not one of {marks}",
                name=name,
                value=value,
                path=path,
                marks=", ".join(MARKS),
            )
            raise BadRequest(f"{name}: {value!r} is not one of {', '.join(MARKS)}")
        entry = self._resolve(path)
        if options & (_XATTR_CREATE | _XATTR_REPLACE):
            present = self.backend.mark(entry.inode) is not None
            if options & _XATTR_CREATE and present:
                raise _answer(errno.EEXIST)
            if options & _XATTR_REPLACE and not present:
                raise _answer(errno.ENODATA)
        self.backend.set_mark(entry.inode, mark)
        return 0

    @_translated
    def removexattr(self, path: str, name: str) -> int:
        """
        Remove the mark.

        @raise OSError: C{ENODATA} if no mark is set, C{EROFS} for the
            version and status.
        """
        if name in _READ_ONLY:
            raise ReadOnly(f"{name} is read-only")
        entry = self._resolve(path)
        if name != XATTR_MARK or self.backend.mark(entry.inode) is None:
            raise _answer(errno.ENODATA)
        self.backend.set_mark(entry.inode, None)
        return 0

    # -- changes: refused --------------------------------------------------

    @staticmethod
    def _read_only(path: str | None) -> ReadOnly:
        return ReadOnly(
            f"{path}: the view is read-only (changes go through the overlay)"
        )

    @_translated
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    @_translated
    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    @_translated
    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    @_translated
    def unlink(self, path: str) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    @_translated
    def rmdir(self, path: str) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    @_translated
    def mkdir(self, path: str, mode: int) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    @_translated
    def mknod(self, path: str, mode: int, dev: int) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    @_translated
    def rename(self, old: str, new: str) -> int:
        """C{EROFS}."""
        raise self._read_only(old)

    @_translated
    def link(self, target: str, source: str) -> int:
        """C{EROFS}."""
        raise self._read_only(target)

    @_translated
    def symlink(self, target: str, source: str) -> int:
        """C{EROFS}."""
        raise self._read_only(target)

    @_translated
    def chmod(self, path: str | None, mode: int) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    @_translated
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    @_translated
    def utimens(self, path: str | None, times: Any = None) -> int:
        """C{EROFS}."""
        raise self._read_only(path)

    # -- introspection, for tests and the service ---------------------------

    def open_handles(self) -> int:
        """
        @return: how many files and directories are open.
        """
        return len(self._handles)
