"""
Tests for L{realize.fuse.ops}: the adapter from libfuse's calls to a
L{FuseBackend}, with the in-memory backend, without a mount.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from attrs import define, field
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from realize.errors import (
    BadRequest,
    ConfigError,
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
)
from realize.fuse import ops as ops_module
from realize.fuse.backend import Entry, SpaceInfo
from realize.fuse.memory import ROOT_INODE, MemoryBackend
from realize.fuse.ops import (
    ATTR_TIMEOUT,
    DIR_MODE,
    ENTRY_TIMEOUT,
    FILE_MODE,
    XATTR_MARK,
    XATTR_MARK_EFFECTIVE,
    XATTR_STATUS,
    XATTR_VERSION,
    RealizeOperations,
    errno_of,
)

UID = 1234
GID = 5678
MTIME = 1_700_000_000_123_456_789


@define
class FileInfo:
    """
    The fields of C{struct fuse_file_info} the adapter uses.
    """

    flags: int = os.O_RDONLY
    fh: int = 0
    keep_cache: int = 0


@define
class TimeSpec:
    tv_sec: int = -1
    tv_nsec: int = -1


@define
class Stat:
    """
    The fields of C{struct stat} the adapter writes.
    """

    st_ino: int = -1
    st_mode: int = -1
    st_nlink: int = -1
    st_uid: int = -1
    st_gid: int = -1
    st_size: int = -1
    st_blksize: int = -1
    st_blocks: int = -1
    st_atimespec: TimeSpec = field(factory=TimeSpec)
    st_mtimespec: TimeSpec = field(factory=TimeSpec)
    st_ctimespec: TimeSpec = field(factory=TimeSpec)


@define
class Config:
    """
    The fields of C{struct fuse_config} the adapter sets.
    """

    use_ino: int = 0
    nullpath_ok: int = 0
    entry_timeout: float = 1.0
    attr_timeout: float = 1.0
    negative_timeout: float = 1.0


class OpsTestCase(SynchronousTestCase):
    """
    A tree: C{/photos/2024/a.jpg} (cached, verified), C{/photos/b.raw}
    (remote), C{/photos/c.txt} (cached, not verified).
    """

    def setUp(self) -> None:
        self.backend = MemoryBackend()
        self.photos = self.backend.mkdir(ROOT_INODE, "photos", mtime_ns=MTIME)
        self.year = self.backend.mkdir(self.photos, "2024")
        self.a = self.backend.add_file(
            self.year, "a.jpg", b"0123456789", mtime_ns=MTIME, version="h1"
        )
        self.b = self.backend.add_file(self.photos, "b.raw", None, size=5000)
        self.c = self.backend.add_file(self.photos, "c.txt", b"text", verified=False)
        self.ops = RealizeOperations(self.backend, UID, GID)

    def assertErrno(self, code: int, f: Callable[..., Any], *args: Any) -> OSError:
        error = self.assertRaises(OSError, f, *args)
        self.assertEqual(
            error.errno, code, f"{errno.errorcode[error.errno]} is not the errno"
        )
        return error

    def open(self, path: str, flags: int = os.O_RDONLY) -> FileInfo:
        fi = FileInfo(flags=flags)
        self.assertEqual(self.ops.open(path, fi), 0)
        return fi


class ErrnoTableTests(SynchronousTestCase):
    """
    L{errno_of} maps the error hierarchy to errnos, most specific first.
    """

    def test_table(self) -> None:
        """
        Each error class has its errno.
        """
        expected: dict[type[BaseException], int] = {
            NotFound: errno.ENOENT,
            InvalidPath: errno.ENOENT,
            NotADirectory: errno.ENOTDIR,
            IsADirectory: errno.EISDIR,
            ReadOnly: errno.EROFS,
            PermissionDenied: errno.EACCES,
            Unauthorized: errno.EACCES,
            BadRequest: errno.EINVAL,
            NoSpace: errno.ENOSPC,
            IOFailure: errno.EIO,
            NetworkError: errno.EIO,
            ConfigError: errno.EIO,
            RealizeError: errno.EIO,
        }
        for cls, code in expected.items():
            self.assertEqual(errno_of(cls("x")), code, cls.__name__)

    def test_other_exceptions(self) -> None:
        """
        An exception outside the hierarchy maps to C{EIO}.
        """
        self.assertEqual(errno_of(ValueError("x")), errno.EIO)
        self.assertEqual(errno_of(KeyError("x")), errno.EIO)

    def test_subclass(self) -> None:
        """
        A subclass not in the table takes its nearest ancestor's errno.
        """

        class Gone(NotFound):
            pass

        self.assertEqual(errno_of(Gone("x")), errno.ENOENT)


class PathTests(OpsTestCase):
    """
    Paths to inodes: the directories on the way are remembered.
    """

    def test_directories_remembered(self) -> None:
        """
        Once a path was resolved, the directories above its last component
        are not looked up again.
        """
        self.ops.getattr("/photos/2024/a.jpg")
        lookups = self.backend.calls["lookup"]
        self.ops.getattr("/photos/2024/a.jpg")
        self.ops.getattr("/photos/2024")
        self.assertEqual(self.backend.calls["lookup"] - lookups, 2)

    def test_forget(self) -> None:
        """
        A directory replaced by another at the same path is found again
        once its path is invalidated (L{RealizeOperations.forget}); the
        invalidation of a file's path or of an unknown path forgets
        nothing; that of the root, everything.
        """
        self.ops.getattr("/photos/2024/a.jpg")
        self.backend.remove(self.photos, "2024")
        year = self.backend.mkdir(self.photos, "2024")
        self.backend.add_file(year, "new.jpg", b"new")
        self.assertErrno(errno.ENOENT, self.ops.getattr, "/photos/2024/new.jpg")
        self.ops.forget("/photos/c.txt")
        self.ops.forget("/nope")
        self.assertErrno(errno.ENOENT, self.ops.getattr, "/photos/2024/new.jpg")
        self.ops.forget("/photos/2024")
        self.assertEqual(self.ops.getattr("/photos/2024/new.jpg").size, 3)
        self.ops.forget("/")
        lookups = self.backend.calls["lookup"]
        self.ops.getattr("/photos/2024/new.jpg")
        self.assertEqual(self.backend.calls["lookup"] - lookups, 3)

    def test_not_a_directory_on_the_way(self) -> None:
        """
        A file in the middle of a path: C{ENOTDIR}; a missing directory:
        C{ENOENT}; neither is remembered.
        """
        self.assertErrno(errno.ENOTDIR, self.ops.getattr, "/photos/c.txt/x")
        self.assertErrno(errno.ENOENT, self.ops.getattr, "/nope/x")
        year = self.backend.mkdir(ROOT_INODE, "nope")
        self.backend.add_file(year, "x", b"")
        self.assertEqual(self.ops.getattr("/nope/x").size, 0)

    def test_bounded(self) -> None:
        """
        At most L{MAX_DIRECTORIES} directories are remembered.
        """
        self.patch(ops_module, "MAX_DIRECTORIES", 2)
        for name in ("d1", "d2", "d3"):
            d = self.backend.mkdir(ROOT_INODE, name)
            self.backend.add_file(d, "f", b"")
            self.ops.getattr(f"/{name}/f")
        self.assertLessEqual(len(self.ops._directories), 2)


class AttributeTests(OpsTestCase):
    """
    C{getattr} and L{RealizeOperations.fill_stat}.
    """

    def stat(self, path: str | None, fh: int | None = None) -> Stat:
        st = Stat()
        self.ops.fill_stat(st, self.ops.getattr(path, fh))
        return st

    def test_file(self) -> None:
        """
        A file has its inode, size and mtime, the daemon's owner and mode
        C{rw-rw-r--}; atime and ctime equal mtime; blocks count the size.
        """
        st = self.stat("/photos/2024/a.jpg")
        self.assertEqual(st.st_ino, self.a)
        self.assertEqual(st.st_mode, stat.S_IFREG | 0o664)
        self.assertEqual(st.st_mode, FILE_MODE)
        self.assertEqual((st.st_uid, st.st_gid), (UID, GID))
        self.assertEqual(st.st_size, 10)
        self.assertEqual(st.st_blocks, 1)
        self.assertEqual(st.st_nlink, 1)
        for times in (st.st_atimespec, st.st_mtimespec, st.st_ctimespec):
            self.assertEqual(
                (times.tv_sec, times.tv_nsec), (1_700_000_000, 123_456_789)
            )

    def test_blocks(self) -> None:
        """
        C{st_blocks} is the size in 512-byte units, rounded up.
        """
        self.assertEqual(self.stat("/photos/b.raw").st_blocks, 10)
        empty = self.backend.add_file(self.photos, "empty", b"")
        self.assertEqual(self.stat("/photos/empty").st_blocks, 0)
        self.assertEqual(self.stat("/photos/empty").st_ino, empty)

    def test_directory(self) -> None:
        """
        Directories, the root included, have mode C{rwxrwxr-x}.
        """
        st = self.stat("/photos")
        self.assertEqual(st.st_mode, stat.S_IFDIR | 0o775)
        self.assertEqual(st.st_mode, DIR_MODE)
        self.assertEqual(st.st_ino, self.photos)
        root = self.stat("/")
        self.assertEqual(root.st_mode, DIR_MODE)
        self.assertEqual(root.st_ino, ROOT_INODE)

    def test_missing(self) -> None:
        """
        A name that does not exist: C{ENOENT}, at any depth.
        """
        self.assertErrno(errno.ENOENT, self.ops.getattr, "/nope")
        self.assertErrno(errno.ENOENT, self.ops.getattr, "/photos/nope")
        self.assertErrno(errno.ENOENT, self.ops.getattr, "/nope/a.jpg")

    def test_through_a_file(self) -> None:
        """
        A path that goes through a file: C{ENOTDIR}.
        """
        self.assertErrno(errno.ENOTDIR, self.ops.getattr, "/photos/c.txt/x")

    def test_by_handle(self) -> None:
        """
        With C{nullpath_ok} the kernel asks C{getattr(None, fh)} of an open
        file: the handle gives the entry, even once its name is gone.
        """
        fi = self.open("/photos/2024/a.jpg")
        self.assertEqual(self.stat(None, fi.fh).st_ino, self.a)
        self.backend.remove(self.photos, "2024")
        self.assertErrno(errno.ENOENT, self.ops.getattr, "/photos/2024/a.jpg")
        self.assertErrno(errno.ENOENT, self.ops.getattr, None, fi.fh)

    def test_unknown_handle(self) -> None:
        """
        A handle that is not open falls back to the path; without a path:
        C{ENOENT}.
        """
        self.assertEqual(self.stat("/photos", 999).st_ino, self.photos)
        self.assertErrno(errno.ENOENT, self.ops.getattr, None, 999)

    def test_statfs(self) -> None:
        """
        C{statfs} shows the backend's space in 4 KiB blocks.
        """
        self.backend.space = SpaceInfo(
            total_bytes=10 * 4096, free_bytes=3 * 4096 + 5, files=0
        )
        fields = self.ops.statfs("/")
        self.assertEqual(fields["f_bsize"], 4096)
        self.assertEqual(fields["f_frsize"], 4096)
        self.assertEqual(fields["f_blocks"], 10)
        self.assertEqual(fields["f_bfree"], 3)
        self.assertEqual(fields["f_bavail"], 3)
        self.assertEqual(fields["f_files"], 6)  # the root and five entries
        self.assertEqual(fields["f_namemax"], 255)

    def test_init(self) -> None:
        """
        C{init} sets inode numbers from the backend, paths not built for
        calls with a handle, long entry and attribute timeouts and no
        negative caching, then calls C{on_init}; C{destroy} calls
        C{on_destroy}.
        """
        calls: list[str] = []
        ops = RealizeOperations(
            self.backend,
            UID,
            GID,
            on_init=lambda: calls.append("init"),
            on_destroy=lambda: calls.append("destroy"),
        )
        config = Config()
        ops.init_with_config(object(), config)
        self.assertEqual(config.use_ino, 1)
        self.assertEqual(config.nullpath_ok, 1)
        self.assertEqual(config.entry_timeout, ENTRY_TIMEOUT)
        self.assertEqual(config.attr_timeout, ATTR_TIMEOUT)
        self.assertGreaterEqual(ENTRY_TIMEOUT, 60)
        self.assertEqual(config.negative_timeout, 0)
        self.assertEqual(calls, ["init"])
        ops.destroy("/")
        self.assertEqual(calls, ["init", "destroy"])


class DirectoryTests(OpsTestCase):
    """
    C{opendir}, C{readdir_with_offset}, C{releasedir}.
    """

    def names(self, items: Any) -> list[str]:
        return [name for name, _, _ in items]

    def test_listing(self) -> None:
        """
        A listing has C{.} and C{..} (without attributes), then each entry
        with its attributes; each item's offset is its index + 1.
        """
        fh = self.ops.opendir("/photos")
        items = self.ops.readdir_with_offset(None, 0, fh)
        self.assertEqual(self.names(items), [".", "..", "2024", "b.raw", "c.txt"])
        self.assertEqual([offset for _, _, offset in items], [1, 2, 3, 4, 5])
        self.assertEqual([entry for _, entry, _ in items][:2], [None, None])
        by_name = {name: entry for name, entry, _ in items}
        self.assertEqual(by_name["2024"], Entry(self.year, "dir", 0, 0, None, 1))
        self.assertEqual(by_name["b.raw"], Entry(self.b, "file", 5000, 0, None, 1))

    def test_offsets(self) -> None:
        """
        The kernel asks for the rest of a listing from an offset: the rest
        of the same list, fetched once, even if the directory changed.
        """
        fh = self.ops.opendir("/photos")
        first = self.ops.readdir_with_offset(None, 0, fh)
        self.backend.add_file(self.photos, "d.new", b"")
        rest = self.ops.readdir_with_offset(None, 3, fh)
        self.assertEqual(self.names(rest), ["b.raw", "c.txt"])
        self.assertEqual(rest, first[3:])
        self.assertEqual(self.ops.readdir_with_offset(None, 5, fh), [])

    def test_rewind(self) -> None:
        """
        Reading from offset 0 again (C{rewinddir}) fetches a fresh listing.
        """
        fh = self.ops.opendir("/photos")
        self.ops.readdir_with_offset(None, 0, fh)
        self.backend.add_file(self.photos, "d.new", b"")
        self.assertIn("d.new", self.names(self.ops.readdir_with_offset(None, 0, fh)))

    def test_root(self) -> None:
        """
        The root lists the arenas.
        """
        fh = self.ops.opendir("/")
        self.assertEqual(
            self.names(self.ops.readdir_with_offset("/", 0, fh)), [".", "..", "photos"]
        )

    def test_not_a_directory(self) -> None:
        """
        C{opendir} of a file: C{ENOTDIR}; of nothing: C{ENOENT}.
        """
        self.assertErrno(errno.ENOTDIR, self.ops.opendir, "/photos/c.txt")
        self.assertErrno(errno.ENOENT, self.ops.opendir, "/photos/nope")

    def test_gone(self) -> None:
        """
        A directory removed while open lists as C{ENOENT}.
        """
        fh = self.ops.opendir("/photos/2024")
        self.backend.remove(self.photos, "2024")
        self.assertErrno(errno.ENOENT, self.ops.readdir_with_offset, None, 0, fh)

    def test_release(self) -> None:
        """
        C{releasedir} forgets the handle; its listing is no longer served.
        """
        fh = self.ops.opendir("/photos")
        self.assertEqual(self.ops.open_handles(), 1)
        self.assertEqual(self.ops.releasedir(None, fh), 0)
        self.assertEqual(self.ops.open_handles(), 0)
        self.assertErrno(errno.EINVAL, self.ops.readdir_with_offset, None, 0, fh)


class FileTests(OpsTestCase):
    """
    C{open}, C{read}, C{release}.
    """

    def test_keep_cache(self) -> None:
        """
        A complete verified file is opened with C{keep_cache}; a file
        whose content is not verified (or not complete) is not.
        """
        self.assertEqual(self.open("/photos/2024/a.jpg").keep_cache, 1)
        self.assertEqual(self.open("/photos/c.txt").keep_cache, 0)
        self.assertEqual(self.open("/photos/b.raw").keep_cache, 0)

    def test_read(self) -> None:
        """
        Reads return the bytes asked for, fewer at the end of the file.
        """
        fi = self.open("/photos/2024/a.jpg")
        self.assertEqual(self.ops.read(None, 4, 2, fi), b"2345")
        self.assertEqual(self.ops.read(None, 100, 8, fi), b"89")
        self.assertEqual(self.ops.read(None, 100, 10, fi), b"")

    def test_remote_read(self) -> None:
        """
        Reads of data not cached go to the backend's download (here
        C{fetch}), with the range asked.
        """
        asked: list[tuple[int, int, int]] = []

        def fetch(inode: int, offset: int, size: int) -> bytes:
            asked.append((inode, offset, size))
            return b"x" * size

        self.backend.fetch = fetch
        fi = self.open("/photos/b.raw")
        self.assertEqual(self.ops.read(None, 4096, 512, fi), b"x" * 4096)
        self.assertEqual(self.ops.read(None, 4096, 4096, fi), b"x" * 904)
        self.assertEqual(asked, [(self.b, 512, 4096), (self.b, 4096, 904)])

    def test_read_errors(self) -> None:
        """
        A download that fails or times out (L{IOFailure}), or whose peers
        are lost (L{NetworkError}), reads as C{EIO}, and is logged.
        """
        fi = self.open("/photos/b.raw")
        self.assertErrno(errno.EIO, self.ops.read, None, 10, 0, fi)

        def lost(inode: int, offset: int, size: int) -> bytes:
            raise NetworkError("peer b lost")

        self.backend.fetch = lost
        self.assertErrno(errno.EIO, self.ops.read, None, 10, 0, fi)

    def test_unexpected_error(self) -> None:
        """
        An exception outside the hierarchy answers C{EIO} and is logged
        with its traceback.
        """

        def broken(inode: int, offset: int, size: int) -> bytes:
            raise ZeroDivisionError("bug")

        self.backend.fetch = broken
        fi = self.open("/photos/b.raw")
        self.assertErrno(errno.EIO, self.ops.read, None, 10, 0, fi)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_release(self) -> None:
        """
        C{release} closes the backend's handle and forgets the file's.
        """
        fi = self.open("/photos/2024/a.jpg")
        self.assertEqual(list(self.backend.opened.values()), [self.a])
        self.assertEqual(self.ops.release(None, fi), 0)
        self.assertEqual(self.backend.opened, {})
        self.assertEqual(self.ops.open_handles(), 0)
        self.assertErrno(errno.EINVAL, self.ops.read, None, 1, 0, fi)

    def test_handles_distinct(self) -> None:
        """
        Each open gets its own handle.
        """
        first = self.open("/photos/2024/a.jpg")
        second = self.open("/photos/2024/a.jpg")
        self.assertNotEqual(first.fh, second.fh)
        self.assertEqual(self.ops.open_handles(), 2)

    def test_open_for_writing(self) -> None:
        """
        An open for writing: C{EROFS}, and nothing is opened.
        """
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND):
            self.assertErrno(
                errno.EROFS, self.ops.open, "/photos/2024/a.jpg", FileInfo(flags=flags)
            )
        self.assertEqual(self.backend.opened, {})

    def test_open_errors(self) -> None:
        """
        C{open} of a directory: C{EISDIR}; of nothing: C{ENOENT}.
        """
        self.assertErrno(errno.EISDIR, self.ops.open, "/photos", FileInfo())
        self.assertErrno(errno.ENOENT, self.ops.open, "/photos/nope", FileInfo())


class ReadOnlyTests(OpsTestCase):
    """
    Every change of data or names: C{EROFS}.
    """

    def test_changes(self) -> None:
        """
        create, write, truncate, unlink, rmdir, mkdir, mknod, rename,
        link, symlink, chmod, chown and utimens all answer C{EROFS}, and
        change nothing.
        """
        path = "/photos/2024/a.jpg"
        calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
            (self.ops.create, ("/photos/new", 0o644, FileInfo())),
            (self.ops.write, (path, b"x", 0, FileInfo())),
            (self.ops.truncate, (path, 0)),
            (self.ops.unlink, (path,)),
            (self.ops.rmdir, ("/photos/2024",)),
            (self.ops.mkdir, ("/photos/new", 0o755)),
            (self.ops.mknod, ("/photos/new", 0o644, 0)),
            (self.ops.rename, (path, "/photos/moved")),
            (self.ops.link, ("/photos/new", path)),
            (self.ops.symlink, ("/photos/new", path)),
            (self.ops.chmod, (path, 0o600)),
            (self.ops.chown, (path, 0, 0)),
            (self.ops.utimens, (path, (0, 0))),
        ]
        for f, args in calls:
            self.assertErrno(errno.EROFS, f, *args)
        self.assertEqual(self.ops.read(None, 10, 0, self.open(path)), b"0123456789")
        self.assertErrno(errno.ENOENT, self.ops.getattr, "/photos/new")


class XattrTests(OpsTestCase):
    """
    C{user.realize.mark}, C{.version}, C{.status}.
    """

    path = "/photos/2024/a.jpg"

    def test_version_and_status(self) -> None:
        """
        The version and status of a file read by name.
        """
        self.assertEqual(self.ops.getxattr(self.path, XATTR_VERSION), b"h1")
        self.assertEqual(self.ops.getxattr(self.path, XATTR_STATUS), b"cached verified")
        self.assertEqual(self.ops.getxattr("/photos/b.raw", XATTR_STATUS), b"remote")
        self.assertEqual(self.ops.getxattr("/photos/b.raw", XATTR_VERSION), b"none")

    def test_directory(self) -> None:
        """
        A directory has no version or status: C{ENODATA}.
        """
        self.assertErrno(errno.ENODATA, self.ops.getxattr, "/photos", XATTR_VERSION)
        self.assertErrno(errno.ENODATA, self.ops.getxattr, "/photos", XATTR_STATUS)

    def test_listed(self) -> None:
        """
        Only a mark set on the entry itself is listed; version and status
        never are.
        """
        self.assertEqual(self.ops.listxattr(self.path), [])
        self.ops.setxattr("/photos", XATTR_MARK, b"keep", 0)
        self.assertEqual(self.ops.listxattr("/photos"), [XATTR_MARK])
        self.assertEqual(self.ops.listxattr(self.path), [])

    def test_set_mark(self) -> None:
        """
        A mark set is read back, listed, and reaches the backend.
        """
        for mark in ("own", "keep", "watch"):
            self.assertEqual(
                self.ops.setxattr(self.path, XATTR_MARK, mark.encode(), 0), 0
            )
            self.assertEqual(self.ops.getxattr(self.path, XATTR_MARK), mark.encode())
            self.assertEqual(self.backend.mark(self.a), mark)
        self.assertEqual(self.ops.listxattr(self.path), [XATTR_MARK])

    def test_no_mark(self) -> None:
        """
        Without a mark, reading it: C{ENODATA}.
        """
        self.assertErrno(errno.ENODATA, self.ops.getxattr, self.path, XATTR_MARK)

    def test_bad_mark(self) -> None:
        """
        A value other than own, keep or watch (or not UTF-8): C{EINVAL}.
        """
        for value in (b"delete", b"", b"keep\0", b"\xff"):
            self.assertErrno(
                errno.EINVAL, self.ops.setxattr, self.path, XATTR_MARK, value, 0
            )
        self.assertIsNone(self.backend.mark(self.a))

    def test_remove_mark(self) -> None:
        """
        C{removexattr} removes the mark; without one: C{ENODATA}.
        """
        self.ops.setxattr(self.path, XATTR_MARK, b"keep", 0)
        self.assertEqual(self.ops.removexattr(self.path, XATTR_MARK), 0)
        self.assertIsNone(self.backend.mark(self.a))
        self.assertErrno(errno.ENODATA, self.ops.removexattr, self.path, XATTR_MARK)

    def test_create_replace(self) -> None:
        """
        C{XATTR_CREATE} of a mark already set: C{EEXIST}; C{XATTR_REPLACE}
        of one not set: C{ENODATA}.
        """
        create, replace = 1, 2
        self.assertErrno(
            errno.ENODATA, self.ops.setxattr, self.path, XATTR_MARK, b"keep", replace
        )
        self.ops.setxattr(self.path, XATTR_MARK, b"keep", create)
        self.assertErrno(
            errno.EEXIST, self.ops.setxattr, self.path, XATTR_MARK, b"own", create
        )
        self.ops.setxattr(self.path, XATTR_MARK, b"own", replace)
        self.assertEqual(self.backend.mark(self.a), "own")

    def test_read_only_attributes(self) -> None:
        """
        The version and status cannot be set or removed: C{EROFS}.
        """
        for name in (XATTR_VERSION, XATTR_STATUS):
            self.assertErrno(errno.EROFS, self.ops.setxattr, self.path, name, b"x", 0)
            self.assertErrno(errno.EROFS, self.ops.removexattr, self.path, name)
        self.assertEqual(self.ops.getxattr(self.path, XATTR_VERSION), b"h1")

    def test_effective_mark(self) -> None:
        """
        C{user.realize.mark.effective} shows the mark set on the entry, else
        the nearest one above it (inherited), else the default; it is not
        listed and cannot be set or removed.
        """
        self.assertEqual(
            self.ops.getxattr(self.path, XATTR_MARK_EFFECTIVE), b"watch (default)"
        )
        self.ops.setxattr("/photos", XATTR_MARK, b"own", 0)
        self.assertEqual(
            self.ops.getxattr(self.path, XATTR_MARK_EFFECTIVE), b"own (inherited)"
        )
        self.ops.setxattr("/photos/2024", XATTR_MARK, b"keep", 0)
        self.assertEqual(
            self.ops.getxattr(self.path, XATTR_MARK_EFFECTIVE), b"keep (inherited)"
        )
        self.ops.setxattr(self.path, XATTR_MARK, b"watch", 0)
        self.assertEqual(self.ops.getxattr(self.path, XATTR_MARK_EFFECTIVE), b"watch")
        self.assertEqual(self.ops.listxattr(self.path), [XATTR_MARK])
        self.assertErrno(
            errno.EROFS, self.ops.setxattr, self.path, XATTR_MARK_EFFECTIVE, b"own", 0
        )
        self.assertErrno(
            errno.EROFS, self.ops.removexattr, self.path, XATTR_MARK_EFFECTIVE
        )

    def test_bad_mark_logged(self) -> None:
        """
        A refused value is logged, with the path and the value.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertErrno(
            errno.EINVAL, self.ops.setxattr, self.path, XATTR_MARK, b"mine", 0
        )
        [event] = [e for e in events if "value" in e]
        self.assertEqual((event["path"], event["value"]), (self.path, b"mine"))
        self.assertEqual(event["log_level"], LogLevel.warn)

    def test_other_names(self) -> None:
        """
        Other attributes do not exist (C{ENODATA}) and cannot be set
        (C{ENOTSUP}).
        """
        self.assertErrno(errno.ENODATA, self.ops.getxattr, self.path, "user.other")
        self.assertErrno(
            errno.ENODATA, self.ops.getxattr, self.path, "security.selinux"
        )
        self.assertErrno(
            errno.ENOTSUP, self.ops.setxattr, self.path, "user.other", b"x", 0
        )
        self.assertErrno(errno.ENODATA, self.ops.removexattr, self.path, "user.other")

    def test_other_names_fast(self) -> None:
        """
        Other names are answered without resolving the path: C{ls -l}
        asks two of them of every file it lists.
        """
        before = self.backend.calls["lookup"]
        for name in ("security.selinux", "system.posix_acl_access"):
            self.assertErrno(errno.ENODATA, self.ops.getxattr, self.path, name)
        self.assertEqual(self.backend.calls["lookup"], before)

    def test_missing_entry(self) -> None:
        """
        Attributes of a name that does not exist: C{ENOENT}.
        """
        self.assertErrno(errno.ENOENT, self.ops.getxattr, "/nope", XATTR_MARK)
        self.assertErrno(errno.ENOENT, self.ops.listxattr, "/nope")
        self.assertErrno(
            errno.ENOENT, self.ops.setxattr, "/nope", XATTR_MARK, b"keep", 0
        )


class LibfuseGlueTests(OpsTestCase):
    """
    L{realize.fuse.libfuse}: C{struct stat} and readdirplus, without a
    mount.
    """

    def setUp(self) -> None:
        super().setUp()
        try:
            from realize.fuse import libfuse
        except OSError as e:
            raise SkipTest(f"libfuse cannot be loaded: {e}") from None
        self.libfuse = libfuse

    def readdir(self, flags: int, full_after: int | None = None) -> list[Any]:
        """
        Run the glue's readdir over C{/photos} with a recording filler.
        """
        filled: list[Any] = []

        def filler(buf: Any, name: bytes, st: Any, offset: int, fill: int) -> int:
            filled.append((name, st.st_ino, st.st_mode, st.st_size, offset, fill))
            return 1 if full_after is not None and len(filled) > full_after else 0

        fh = self.ops.opendir("/photos")
        fake = SimpleNamespace(operations=self.ops, encoding="utf-8", errors="strict")
        fip = SimpleNamespace(contents=SimpleNamespace(fh=fh))
        self.libfuse.RealizeFUSE.readdir_fuse_3(fake, None, None, filler, 0, fip, flags)
        return filled

    def test_fill_stat(self) -> None:
        """
        L{RealizeOperations.fill_stat} writes mfusepy's C{c_stat}.
        """
        import mfusepy

        st = mfusepy.c_stat()
        self.ops.fill_stat(st, self.ops.getattr("/photos/2024/a.jpg"))
        self.assertEqual(
            (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size),
            (self.a, FILE_MODE, UID, GID, 10),
        )
        self.assertEqual(st.st_mtimespec.tv_sec, 1_700_000_000)
        self.assertEqual(st.st_mtimespec.tv_nsec, 123_456_789)
        self.assertEqual(st.st_ctimespec.tv_nsec, 123_456_789)

    def test_readdirplus(self) -> None:
        """
        When the kernel asks for readdirplus, every entry but C{.} and
        C{..} is filled with its attributes and C{FUSE_FILL_DIR_PLUS}, at
        a non-zero offset (libfuse 3.14 sends attributes only then).
        """
        plus = self.libfuse.FUSE_FILL_DIR_PLUS
        filled = self.readdir(self.libfuse.FUSE_READDIR_PLUS)
        self.assertEqual(
            filled,
            [
                (b".", 0, DIR_MODE, 0, 1, 0),
                (b"..", 0, DIR_MODE, 0, 2, 0),
                (b"2024", self.year, DIR_MODE, 0, 3, plus),
                (b"b.raw", self.b, FILE_MODE, 5000, 4, plus),
                (b"c.txt", self.c, FILE_MODE, 4, 5, plus),
            ],
        )

    def test_readdir(self) -> None:
        """
        A plain readdir fills the same entries without the flag.
        """
        filled = self.readdir(0)
        self.assertEqual([fill for *_, fill in filled], [0] * 5)
        self.assertEqual(filled[3][:2], (b"b.raw", self.b))

    def test_full(self) -> None:
        """
        Filling stops when the kernel's buffer is full (the filler answers
        1); the kernel asks again from the last offset it took.
        """
        filled = self.readdir(self.libfuse.FUSE_READDIR_PLUS, full_after=2)
        self.assertEqual([name for name, *_ in filled], [b".", b"..", b"2024"])

    def test_getxattr_fast(self) -> None:
        """
        The glue answers C{ENODATA} for names that are not the view's
        without calling the operations; the view's names reach them.
        """
        fake = SimpleNamespace(operations=self.ops, encoding="utf-8", errors="strict")
        getxattr = self.libfuse.RealizeFUSE.getxattr
        path = b"/photos/2024/a.jpg"
        before = self.backend.calls["lookup"]
        for name in (b"security.selinux", b"system.posix_acl_access", b"user.x"):
            self.assertEqual(getxattr(fake, path, name, None, 0), -errno.ENODATA)
        self.assertEqual(self.backend.calls["lookup"], before)
        self.backend.set_mark(self.a, "keep")
        self.assertEqual(getxattr(fake, path, b"user.realize.mark", None, 0), 4)
