"""
File helpers for the stores: safe opens, whole-buffer reads and writes,
durability, copies, holes of sparse files, hashing.

Everything here works on file descriptors, knows nothing of arenas or
paths, raises C{OSError}, and blocks: call it from a thread.  The arena
store (L{realize.storage.arena}) and the blob store of a later milestone
build on it.

Opening (issue 14, item 11): files are opened with C{O_NOFOLLOW}
(a symlink fails with C{ELOOP}), C{O_NONBLOCK} (opening a FIFO cannot
hang) and C{O_NOCTTY}, then checked with C{fstat}; anything but a regular
file is refused with L{NotRegularFile}.  A file to be written is looked at
(C{lstat}) before it is opened, so that a device or a FIFO is never opened
for writing.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator

from attrs import frozen

from realize.hashing import LEAF_SIZE, hash_fd_range, zero_leaf_hash

__all__ = [
    "O_CREATE",
    "O_DIR",
    "O_READ",
    "O_WRITE",
    "WRITEBACK_STEP",
    "Filesystems",
    "NotRegularFile",
    "Stamp",
    "copy_file",
    "data_ranges",
    "free_space",
    "hash_range",
    "next_piece",
    "open_regular",
    "punch_hole",
    "pwrite_all",
    "read_into",
    "read_whole",
    "start_writeback",
    "syncfs",
    "thread_buffer",
]

#: Flags to open a file for reading (see the module docstring).
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

#: Flags to open a file for reading and writing.
O_WRITE = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

#: Flags to create a new file for reading and writing (C{O_EXCL}: never
#: an existing file, a symlink or a device).
O_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

#: Flags to open a directory, not following a symlink (C{O_DIRECTORY}
#: refuses anything else before opening it).
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: Start writeback of written data every this many bytes, so that the
#: fdatasync of a large file when it is finished has little left to do.
WRITEBACK_STEP = 8 << 20

#: The C{FICLONE} ioctl (C{_IOW(0x94, 9, int)}): share the source's extents
#: (a reflink) on filesystems that have them (btrfs, XFS, bcachefs).
_FICLONE = 0x40049409

#: Errors that mean "this filesystem or kernel cannot do that", after
#: which a plainer way is tried.
_UNSUPPORTED = frozenset(
    (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS)
)

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
    _fallocate = _libc.fallocate64
    _fallocate.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_longlong,
        ctypes.c_longlong,
    ]
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _syncfs = None  # type: ignore[assignment]
    _sync_file_range = None  # type: ignore[assignment]
    _fallocate = None  # type: ignore[assignment]

#: C{fallocate(2)} modes: deallocate a range, keeping the file's size.
_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2

_SYNC_FILE_RANGE_WRITE = 2


class NotRegularFile(OSError):
    """
    The file is a directory, device, FIFO or socket, not a regular file.
    """


@frozen
class Stamp:
    """
    Which file, and which version of its content, as C{fstat} shows it:
    two equal stamps of one path mean that nobody replaced or changed the
    file in between (to the filesystem's timestamp granularity).

    @ivar ino: inode number.
    @ivar size: size in bytes.
    @ivar mtime_ns: modification time.
    @ivar ctime_ns: status change time (changes with the mtime, a rename,
        a new link).
    """

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def open_regular(
    name: str, dir_fd: int, flags: int, mode: int = 0o666, *, blocking: bool = True
) -> tuple[int, os.stat_result]:
    """
    Open a regular file of a directory safely (see the module docstring).

    @param name: the file's name in the directory.
    @param dir_fd: the open directory.
    @param flags: L{O_READ} or L{O_WRITE}, maybe with C{O_CREAT}/C{O_EXCL}.
    @param mode: permissions of a file created.
    @param blocking: clear the C{O_NONBLOCK} the flags open with (which
        keeps the open of a FIFO from blocking).  C{False}: leave it, one
        system call less, for a descriptor read at once and closed
        (C{O_NONBLOCK} does not change reads of a regular file).
    @return: the descriptor (blocking, unless C{blocking} is C{False}) and
        the file's status.
    @raise NotRegularFile: if it is not a regular file.
    @raise OSError: C{ENOENT}, C{ELOOP} (a symlink), ...
    """
    if flags & os.O_ACCMODE != os.O_RDONLY and not flags & os.O_EXCL:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
        else:
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                raise NotRegularFile(errno.EINVAL, "not a regular file", name)
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", name)
        if blocking and flags & os.O_NONBLOCK:
            # Of the flags F_SETFL changes, we only ever set O_NONBLOCK.
            fcntl.fcntl(fd, fcntl.F_SETFL, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


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


class Filesystems:
    """
    The filesystems a group of changes touched, each to be flushed once
    (L{syncfs}): one descriptor per filesystem, whatever the group holds
    open meanwhile.
    """

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}

    def __enter__(self) -> Filesystems:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add(self, fd: int) -> None:
        """
        @param fd: a descriptor on a filesystem to flush (not kept).
        """
        dev = os.fstat(fd).st_dev
        if dev not in self._fds:
            self._fds[dev] = os.dup(fd)

    def sync(self) -> None:
        """
        L{syncfs} every filesystem added.

        @raise OSError: if a flush fails.
        """
        for fd in self._fds.values():
            syncfs(fd)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


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


def free_space(fd: int) -> int | None:
    """
    @param fd: any descriptor on a filesystem.
    @return: bytes an unprivileged user may still write there, or C{None}
        if the filesystem does not say (it reports no blocks at all).
    """
    st = os.fstatvfs(fd)
    if st.f_blocks == 0:
        return None
    return st.f_bavail * st.f_frsize


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """
    Write all of C{data} at C{offset}, however many C{pwrite} calls it
    takes.
    """
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


_buffers = threading.local()


def thread_buffer(name: str, size: int) -> bytearray:
    """
    A buffer of at least C{size} bytes for this thread, kept from one call
    to the next: delta work on 16 MiB ranges would otherwise allocate and
    page-fault fresh memory for every range.

    @param name: which of this thread's buffers.
    """
    buffer: bytearray | None = getattr(_buffers, name, None)
    if buffer is None or len(buffer) < size:
        buffer = bytearray(size)
        setattr(_buffers, name, buffer)
    return buffer


def read_into(fd: int, start: int, end: int, name: str) -> memoryview:
    """
    Read C{[start, end)} (or less at end of file) into this thread's
    buffer C{name} (L{thread_buffer}).

    @return: a view of the bytes read; valid until the next call with
        the same name in this thread.
    """
    view = memoryview(thread_buffer(name, end - start))
    got = 0
    while start + got < end:
        n = os.preadv(fd, [view[got : end - start]], start + got)
        if n == 0:
            break
        got += n
    return view[:got]


def read_whole(fd: int, size: int) -> bytes:
    """
    Read a whole small file from its start, whatever its size is now.

    @param size: its expected size: one C{pread} if it did not change.
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


def _extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    offset = start
    while offset < end:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after offset
                return
            if e.errno in _UNSUPPORTED:
                yield offset, end
                return
            raise
        if data >= end:
            return
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        yield data, min(hole, end)
        offset = hole


def data_ranges(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """
    Where a file holds data, as opposed to holes (C{SEEK_DATA} and
    C{SEEK_HOLE}): what a copy must copy and a hash must read.  On a
    filesystem that cannot tell, the whole range is data.

    @param start: first byte.
    @param end: end of the range (exclusive); nothing past the end of the
        file is data.
    @return: disjoint, sorted C{(start, end)} ranges within C{[start, end)}.
    @raise OSError: on an I/O error.
    """
    return list(_extents(fd, start, end))


def next_piece(
    fd: int, offset: int, end: int, limit: int, min_hole: int
) -> tuple[int, int]:
    """
    What a file holds from C{offset} on, for a stream that sends data and
    describes holes: the length of the hole that starts there (at least
    C{min_hole} bytes long, or reaching C{end}), as a negative number, or
    else the length of the data that follows, at most C{limit} bytes and
    up to the next such hole (shorter holes count as data: they cost less
    to send than to describe).  On a filesystem that cannot tell
    (C{SEEK_DATA} unsupported), everything is data.

    @param offset: where the stream is, below C{end}.
    @param end: end of the stream (exclusive); past the end of the file
        is a hole.
    @param limit: most bytes of data to give, at least 1.
    @param min_hole: shortest hole to give.
    @return: C{-length} of a hole, or C{length} of data (never 0); and
        how far from C{offset} on the file is known to hold data (for the
        next calls to skip: C{SEEK_HOLE} on tmpfs scans every page up to
        the hole, so asking again for each chunk of a dense file would cost
        the square of its size).
    @raise OSError: on an I/O error.
    """
    stop = min(offset + limit, end)
    position = offset
    while True:
        data = _seek(fd, position, os.SEEK_DATA, end)
        if data is None:
            return stop - offset, end  # no hole information
        if data > position and (data - position >= min_hole or data >= end):
            if position == offset:
                return -(data - offset), offset
            return position - offset, position  # data up to that hole
        if data >= stop:
            return stop - offset, stop
        hole = _seek(fd, data, os.SEEK_HOLE, end)
        if hole is None:
            return stop - offset, end
        if hole >= stop:
            return stop - offset, hole
        position = hole


def _seek(fd: int, offset: int, whence: int, end: int) -> int | None:
    """
    C{lseek} for C{SEEK_DATA} or C{SEEK_HOLE}: where the next data (or
    hole) is, C{end} if there is none before the end of the file, or
    C{None} if the filesystem cannot tell.
    """
    try:
        return min(os.lseek(fd, offset, whence), end)
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data after offset, or offset past EOF
            return end
        if e.errno in _UNSUPPORTED:
            return None
        raise


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """
    Deallocate a range of a file, keeping its size: the range then reads
    as zeros and takes no room (C{fallocate(2)} with
    C{FALLOC_FL_PUNCH_HOLE}).

    @return: whether it was done; C{False} where the filesystem or the
        kernel cannot (the caller writes zeros instead).
    @raise OSError: on an I/O error.
    """
    if _fallocate is None or length <= 0:  # pragma: no cover - not Linux
        return length <= 0
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if _fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err))


def hash_range(fd: int, start: int, end: int) -> list[bytes]:
    """
    Merkle leaves of a byte range of an open file, as
    L{realize.hashing.hash_fd_range} computes them, but a leaf that lies
    wholly in a hole of a sparse file costs no reading (its digest is
    L{realize.hashing.zero_leaf_hash}): hashing an 8 TiB file holding one
    byte costs its number of leaves, not 8 TiB of reads.

    @param start: first byte, a multiple of L{LEAF_SIZE}.
    @param end: end of the range (exclusive); clipped to the file's size.
    @return: the leaf digests of C{[start, min(end, size))}.
    @raise ValueError: if C{start} is not leaf-aligned.
    @raise OSError: on a read error.
    """
    if start % LEAF_SIZE:
        raise ValueError(f"hash range start {start} is not leaf-aligned")
    end = min(end, os.fstat(fd).st_size)
    leaves: list[bytes] = []
    offset = start  # leaves before offset are done

    def holes(until: int) -> None:
        nonlocal offset
        while offset < until:
            length = min(LEAF_SIZE, end - offset)
            leaves.append(zero_leaf_hash(length))
            offset += length

    def data(until: int) -> bool:
        # False if the file turned out shorter than its size said.
        nonlocal offset
        got = hash_fd_range(fd, offset, until)
        leaves.extend(got)
        complete = len(got) == -(-(until - offset) // LEAF_SIZE)
        offset = until
        return complete

    group: tuple[int, int] | None = None
    for first, last in _extents(fd, start, end):
        first -= first % LEAF_SIZE
        last = min(end, -(-last // LEAF_SIZE) * LEAF_SIZE)
        if group is not None and first <= group[1]:
            group = (group[0], max(group[1], last))
            continue
        if group is not None and not data(group[1]):
            return leaves
        holes(first)
        group = (first, last)
    if group is not None and not data(group[1]):
        return leaves
    holes(end)
    return leaves


def copy_file(source: int, target: int, size: int) -> None:
    """
    Make an empty file hold the first C{size} bytes of another: a reflink
    where the filesystem has them (C{FICLONE}), else C{copy_file_range}
    of the parts that hold data (holes stay holes), else reads and writes.

    @param source: the file to copy, open for reading.
    @param target: an empty file on the same filesystem, open for writing.
    @param size: bytes to copy (the target ends up exactly this long, with
        zeros past the end of the source).
    @raise OSError: on an I/O error.
    """
    try:
        fcntl.ioctl(target, _FICLONE, source)
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
    else:
        os.ftruncate(target, size)
        return
    for start, end in _extents(source, 0, size):
        _copy_range(source, target, start, end)
    os.ftruncate(target, size)


def _copy_range(source: int, target: int, start: int, end: int) -> None:
    offset = start
    try:
        while offset < end:
            n = os.copy_file_range(source, target, end - offset, offset, offset)
            if n == 0:
                return
            offset += n
        return
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
    buffer = memoryview(thread_buffer("copy", LEAF_SIZE))
    while offset < end:
        n = os.preadv(source, [buffer[: min(LEAF_SIZE, end - offset)]], offset)
        if n == 0:
            return
        pwrite_all(target, buffer[:n], offset)
        offset += n
