"""
Tests of L{realize.storage.fs}, the file helpers of the stores, and of
L{realize.storage.paths.DirCache}, on real files.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from realize.errors import InvalidPath, NotFound
from realize.hashing import (
    LEAF_SIZE,
    hash_fd_range,
    leaf_hash,
    merkle_root,
    zero_leaf_hash,
)
from realize.model import ArenaName, SmallFile
from realize.storage import batch, fs
from realize.storage.arena import ArenaDir
from realize.storage.fs import (
    NotRegularFile,
    copy_file,
    data_ranges,
    hash_range,
    next_piece,
    open_regular,
    punch_hole,
    pwrite_all,
    read_whole,
)
from realize.storage.paths import DirCache

MiB = 1 << 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _FilesCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, self.dir_fd)

    def sparse(self, name: str, size: int, data: dict[int, bytes]) -> int:
        """
        @return: a descriptor (read-write) of a new sparse file of C{size}
            bytes holding C{data} (offset to bytes), closed at cleanup.
        """
        fd = os.open(os.path.join(self.dir, name), os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, fd)
        os.ftruncate(fd, size)
        for offset, chunk in data.items():
            pwrite_all(fd, chunk, offset)
        return fd

    def count_reads(self) -> list[int]:
        """
        @return: a list that gets the byte count of every C{pread} and
            C{preadv} from now on.
        """
        counts: list[int] = []
        preadv, pread = os.preadv, os.pread

        def counting_preadv(fd: int, buffers: Any, offset: int) -> int:
            n = preadv(fd, buffers, offset)
            counts.append(n)
            return n

        def counting_pread(fd: int, length: int, offset: int) -> bytes:
            data = pread(fd, length, offset)
            counts.append(len(data))
            return data

        self.patch(os, "preadv", counting_preadv)
        self.patch(os, "pread", counting_pread)
        return counts


class OpenRegularTests(_FilesCase):
    """
    L{open_regular} opens regular files only, without blocking, without
    following symlinks, and never opens anything else for writing.
    """

    def record_opens(self) -> list[tuple[str, int]]:
        calls: list[tuple[str, int]] = []
        real: Callable[..., int] = os.open

        def recording(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            calls.append((path, flags))
            return real(path, flags, *args, **kwargs)

        self.patch(os, "open", recording)
        return calls

    def test_regular(self) -> None:
        """
        A regular file opens, blocking (C{O_NONBLOCK} cleared) unless told
        not to, with its status.
        """
        with open(os.path.join(self.dir, "f"), "wb") as f:
            f.write(b"data")
        for flags in (fs.O_READ, fs.O_WRITE):
            fd, st = open_regular("f", self.dir_fd, flags)
            try:
                self.assertEqual(st.st_size, 4)
                self.assertEqual(fcntl_flags(fd) & os.O_NONBLOCK, 0)
            finally:
                os.close(fd)
        fd, _ = open_regular("f", self.dir_fd, fs.O_READ, blocking=False)
        try:
            self.assertEqual(fcntl_flags(fd) & os.O_NONBLOCK, os.O_NONBLOCK)
            self.assertEqual(os.read(fd, 10), b"data")
        finally:
            os.close(fd)

    def test_fifo(self) -> None:
        """
        A FIFO is refused with L{NotRegularFile}: opened for reading without
        blocking (no writer comes) and with C{O_NOCTTY}, never for writing.
        """
        os.mkfifo(os.path.join(self.dir, "fifo"))
        calls = self.record_opens()
        self.assertRaises(NotRegularFile, open_regular, "fifo", self.dir_fd, fs.O_READ)
        self.assertRaises(NotRegularFile, open_regular, "fifo", self.dir_fd, fs.O_WRITE)
        self.assertEqual(len(calls), 1)
        [(_, flags)] = calls
        self.assertEqual(flags & os.O_ACCMODE, os.O_RDONLY)
        for flag in (os.O_NONBLOCK, os.O_NOCTTY, os.O_NOFOLLOW):
            self.assertTrue(flags & flag)

    def test_device(self) -> None:
        """
        A character device is never opened for writing.
        """
        try:
            os.mknod(
                os.path.join(self.dir, "null"), stat.S_IFCHR | 0o600, os.makedev(1, 3)
            )
        except PermissionError:
            self.skipTest("cannot create device nodes here")
        calls = self.record_opens()
        self.assertRaises(NotRegularFile, open_regular, "null", self.dir_fd, fs.O_WRITE)
        self.assertEqual(calls, [])

    def test_symlink(self) -> None:
        """
        A symlink is not followed: C{ELOOP}.
        """
        os.symlink("/etc/passwd", os.path.join(self.dir, "link"))
        for flags in (fs.O_READ, fs.O_WRITE):
            with self.assertRaises(OSError) as raised:
                open_regular("link", self.dir_fd, flags)
            self.assertEqual(raised.exception.errno, errno.ELOOP)


def fcntl_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


class HoleTests(_FilesCase):
    """
    L{data_ranges} finds the data of sparse files, L{hash_range} hashes a
    hole without reading it, L{copy_file} keeps holes.
    """

    def test_data_ranges(self) -> None:
        """
        The data of a sparse file is found as ranges (filesystems allocate
        in blocks, so a range covers at least the bytes written).
        """
        fd = self.sparse("f", 64 * MiB, {10 * MiB: b"a", 40 * MiB: b"b" * 5000})
        ranges = data_ranges(fd, 0, 64 * MiB)
        self.assertEqual(len(ranges), 2)
        (a, b), (c, d) = ranges
        self.assertTrue(a <= 10 * MiB < b <= 11 * MiB)
        self.assertTrue(c <= 40 * MiB and 40 * MiB + 5000 <= d <= 41 * MiB)
        self.assertEqual(data_ranges(fd, 20 * MiB, 30 * MiB), [])
        self.assertEqual(data_ranges(fd, 0, 5 * MiB), [])
        self.assertEqual(
            data_ranges(fd, 40 * MiB + 1, 40 * MiB + 2)[0][0], 40 * MiB + 1
        )

    def test_hash_sparse(self) -> None:
        """
        Hashing a 64 GiB file holding one byte gives the leaves of its
        content (zero leaves, and the leaf with the byte) while reading
        only the leaves with data.
        """
        size = 64 << 30
        fd = self.sparse("f", size, {size - 1: b"x"})
        counts = self.count_reads()
        leaves = hash_range(fd, 0, size)
        self.assertLessEqual(sum(counts), LEAF_SIZE)
        self.assertEqual(len(leaves), size // LEAF_SIZE)
        self.assertEqual(leaves[0], zero_leaf_hash())
        self.assertEqual(leaves[-1], leaf_hash(bytes(LEAF_SIZE - 1) + b"x"))
        self.assertEqual(set(leaves[:-1]), {leaf_hash(bytes(LEAF_SIZE))})

    def test_hash_like_hash_fd_range(self) -> None:
        """
        On files with data, holes, short last leaves and ranges that start
        later, L{hash_range} gives what L{hash_fd_range} gives.
        """
        fd = self.sparse(
            "f",
            9 * MiB + 123,
            {0: b"head", 3 * MiB + 5: b"mid" * 1000, 9 * MiB + 100: b"tail"},
        )
        size = 9 * MiB + 123
        for start, end in [
            (0, size),
            (MiB, size),
            (4 * MiB, 8 * MiB),
            (0, 2 * size),
            (8 * MiB, size),
            (9 * MiB, 9 * MiB + 50),
            (10 * MiB, 11 * MiB),
        ]:
            self.assertEqual(
                hash_range(fd, start, end), hash_fd_range(fd, start, end), (start, end)
            )
        self.assertRaises(ValueError, hash_range, fd, 1, 10)

    def test_zero_leaf_hash(self) -> None:
        """
        L{zero_leaf_hash} is the leaf hash of zeros of any leaf length.
        """
        for length in (1, 1000, LEAF_SIZE - 1, LEAF_SIZE):
            self.assertEqual(zero_leaf_hash(length), leaf_hash(bytes(length)))

    def test_copy_keeps_holes(self) -> None:
        """
        A copy of a sparse file has its content and its holes, cut or
        extended to the size asked.
        """
        source = self.sparse("s", 256 * MiB, {0: b"start", 200 * MiB: b"end"})
        for size in (256 * MiB, 100 * MiB, 300 * MiB, 3):
            target = os.open(
                os.path.join(self.dir, f"t{size}"), os.O_RDWR | os.O_CREAT, 0o600
            )
            try:
                copy_file(source, target, size)
                st = os.fstat(target)
                self.assertEqual(st.st_size, size)
                self.assertLess(st.st_blocks * 512, 8 * MiB)
                self.assertEqual(os.pread(target, 5, 0), b"start"[:size])
                if size > 200 * MiB:
                    self.assertEqual(os.pread(target, 4, 200 * MiB - 1), b"\0end")
            finally:
                os.close(target)

    def test_copy_without_copy_file_range(self) -> None:
        """
        Where C{copy_file_range} cannot copy (another filesystem, an old
        kernel), the copy reads and writes.
        """
        source = self.sparse("s", 3 * MiB, {MiB: os.urandom(MiB)})

        def unsupported(*args: Any) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        self.patch(os, "copy_file_range", unsupported)
        target = self.sparse("t", 0, {})
        copy_file(source, target, 3 * MiB)
        self.assertEqual(read_whole(target, 3 * MiB), read_whole(source, 3 * MiB))


class PieceTests(_FilesCase):
    """
    L{next_piece} cuts a sparse file into data and holes for a stream;
    L{punch_hole} deallocates a range.
    """

    def pieces(self, fd: int, end: int, limit: int = MiB) -> list[int]:
        offset, pieces = 0, []
        while offset < end:
            piece, known = next_piece(fd, offset, end, limit, 64 << 10)
            self.assertNotEqual(piece, 0)
            if piece > 0:
                self.assertGreaterEqual(known, offset + piece)
            pieces.append(piece)
            offset += abs(piece)
        self.assertEqual(offset, end)
        return pieces

    def test_sparse_file(self) -> None:
        """
        A 2 GiB file with 5 bytes at 1 GB is a hole, a little data (what
        the filesystem allocated around the 5 bytes) and a hole: three
        pieces, the holes as negative lengths.
        """
        size = 2 << 30
        fd = self.sparse("f", size, {1_000_000_000: b"hello"})
        first, data, last = self.pieces(fd, size)
        self.assertLess(first, 0)
        self.assertTrue(-first <= 1_000_000_000 < -first + data)
        self.assertLessEqual(data, MiB)
        self.assertLess(last, 0)

    def test_dense_file(self) -> None:
        """
        A file without holes is data, in pieces of at most the limit.
        """
        fd = self.sparse("f", 0, {0: os.urandom(3 * MiB + 5)})
        self.assertEqual(self.pieces(fd, 3 * MiB + 5), [MiB, MiB, MiB, 5])

    def test_short_holes_are_data(self) -> None:
        """
        Holes shorter than the minimum inside data count as data; a hole
        that reaches the end of the stream is a hole however short.
        """
        fd = self.sparse(
            "f", 10 * MiB, {0: b"a" * 4096, 16384: b"b" * 4096, 4 * MiB: b"c"}
        )
        pieces = self.pieces(fd, 4 * MiB + 8192, limit=8 * MiB)
        self.assertGreaterEqual(pieces[0], 16384 + 4096)
        self.assertLess(pieces[1], 0)
        self.assertGreater(pieces[2], 0)
        self.assertLess(pieces[3], 0)

    def test_past_end_of_file(self) -> None:
        """
        Past the end of the file (it shrank), the rest of the stream is a
        hole.
        """
        fd = self.sparse("f", 0, {0: b"x" * 100})
        self.assertEqual(self.pieces(fd, 3 * MiB), [100, -(3 * MiB - 100)])

    def test_without_seek_data(self) -> None:
        """
        Where the filesystem cannot tell holes, everything is data.
        """
        fd = self.sparse("f", 8 * MiB, {MiB: b"x"})

        def unsupported(fd: int, offset: int, whence: int) -> int:
            raise OSError(errno.EINVAL, "no SEEK_DATA here")

        self.patch(os, "lseek", unsupported)
        self.assertEqual(self.pieces(fd, 2 * MiB), [MiB, MiB])

    def test_known_data(self) -> None:
        """
        The data of a dense file is known to reach its end after the first
        piece: a stream need not look for holes again (tmpfs scans pages
        up to the hole at each C{SEEK_HOLE}).
        """
        fd = self.sparse("f", 0, {0: os.urandom(3 * MiB)})
        self.assertEqual(next_piece(fd, 0, 3 * MiB, MiB, 64 << 10), (MiB, 3 * MiB))

    def test_punch_hole(self) -> None:
        """
        A punched range reads as zeros and takes no room; the size stays.
        """
        fd = self.sparse("f", 0, {0: os.urandom(4 * MiB)})
        self.assertTrue(punch_hole(fd, MiB, 2 * MiB))
        st = os.fstat(fd)
        self.assertEqual(st.st_size, 4 * MiB)
        self.assertLessEqual(st.st_blocks * 512, 2 * MiB + (64 << 10))
        self.assertEqual(os.pread(fd, 2 * MiB, MiB), bytes(2 * MiB))


class DirCacheTests(_FilesCase):
    """
    L{DirCache} resolves directories one segment at a time with a bounded
    number of open descriptors, however deep the path.
    """

    def test_deep(self) -> None:
        """
        A directory 2,000 levels deep is created and opened again with at
        most L{DirCache.limit} plus L{DirCache.ANCHORS} directories open,
        and no recursion; its ancestors are found again from anchors.
        """
        segments = ["d"] * 2000
        before = open_fds()
        with DirCache("a", self.dir, limit=8) as dirs:
            fd = dirs.open(segments, "d/.../f", create=True)
            os.close(os.open("f", os.O_CREAT | os.O_RDWR, 0o600, dir_fd=fd))
            self.assertLessEqual(open_fds() - before, 8 + DirCache.ANCHORS)
            for depth in range(1999, 0, -1):
                dirs.open(segments[:depth], "", create=False)
                self.assertLessEqual(open_fds() - before, 8 + DirCache.ANCHORS)
            fd = dirs.take(segments, "", create=False)
        self.assertEqual(open_fds(), before + 1)
        self.assertTrue(stat.S_ISREG(os.stat("f", dir_fd=fd).st_mode))
        os.close(fd)
        self.addCleanup(remove_tree, os.path.join(self.dir, "d"))

    def test_created(self) -> None:
        """
        The directories the cache made are in L{DirCache.created}; those
        that were there are not.
        """
        os.makedirs(os.path.join(self.dir, "old"))
        self.addCleanup(remove_tree, os.path.join(self.dir, "old"))
        with DirCache("a", self.dir) as dirs:
            dirs.open(["old", "new", "deeper"], "", create=True)
            dirs.open(["old"], "", create=False)
            self.assertEqual(dirs.created, {("old", "new"), ("old", "new", "deeper")})

    def test_errors(self) -> None:
        """
        A missing directory is L{NotFound} unless created; a symlink or a
        file on the way is L{InvalidPath}; a missing arena directory is
        L{NotFound} naming it.
        """
        os.symlink("/tmp", os.path.join(self.dir, "link"))
        with open(os.path.join(self.dir, "file"), "wb"):
            pass
        with DirCache("a", self.dir) as dirs:
            self.assertRaises(NotFound, dirs.open, ["x", "y"], "x/y/f", False)
            self.assertRaises(InvalidPath, dirs.open, ["link", "y"], "p", True)
            self.assertRaises(InvalidPath, dirs.open, ["file"], "p", True)
        with DirCache("a", os.path.join(self.dir, "missing")) as dirs:
            error = self.assertRaises(NotFound, dirs.open, [], "", False)
            self.assertIn("missing", str(error))


def remove_tree(path: str) -> None:
    """
    Remove a directory tree too deep for C{shutil.rmtree}.
    """
    import subprocess

    subprocess.run(["rm", "-rf", path], check=True)


class FreshPartialTests(_FilesCase):
    """
    L{batch.write_files} makes each file's partial with
    L{realize.storage.partials.Partials.fresh}.
    """

    def test_new_directory(self) -> None:
        """
        Into a directory the batch made, files are written without a look
        at their final names (there is none); into one that was there, a
        directory at a final's name is refused.
        """
        os.makedirs(os.path.join(self.dir, "old", "taken"))
        self.addCleanup(remove_tree, os.path.join(self.dir, "old"))
        self.addCleanup(remove_tree, os.path.join(self.dir, "new"))
        looked: list[str] = []
        real_stat = os.stat

        def recording(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            looked.append(os.fsdecode(path))
            return real_stat(path, *args, **kwargs)

        self.patch(os, "stat", recording)
        files = [
            SmallFile(path, 1, 10**18, merkle_root([leaf_hash(b"x")]))
            for path in ("new/a", "new/b", "old/taken")
        ]
        outcomes = batch.write_files(
            ArenaDir(ArenaName("a"), self.dir), files, [b"x"] * 3
        )
        self.assertEqual(outcomes[:2], [None, None])
        self.assertIsInstance(outcomes[2], InvalidPath)
        self.assertNotIn("a", looked)
        self.assertNotIn("b", looked)
        self.assertIn("taken", looked)
        with open(os.path.join(self.dir, "new", "a"), "rb") as f:
            self.assertEqual(f.read(), b"x")
