"""
Tests for L{realize.storage.realfiles}: the file work of the consensus
jobs, and marks on real files and directories, on temporary directories.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from realize.errors import BadRequest, Conflict, IOFailure, NotFound
from realize.storage.arena import ArenaDir
from realize.storage.realfiles import (
    XATTR_MARK,
    open_for_writing,
    read_real_mark,
    realize_blob,
    remove_file,
    unrealize_file,
    verify_file,
    walk_real_marks,
    write_real_mark,
)
from tests.consensus_world import root_of


class Dirs:
    def __init__(self, case: SynchronousTestCase) -> None:
        base = os.path.abspath(case.mktemp())
        self.data = os.path.join(base, "data")
        self.blobs = os.path.join(base, "blobs")
        os.makedirs(self.data)
        os.makedirs(self.blobs)
        self.arena = ArenaDir("docs", self.data, "work")

    def blob(self, name: str, data: bytes) -> str:
        path = os.path.join(self.blobs, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def real(self, path: str, data: bytes | None = None, mtime: int = 10**9) -> str:
        full = os.path.join(self.data, path)
        if data is not None:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(data)
            os.utime(full, ns=(mtime, mtime))
        return full

    def read(self, path: str) -> bytes:
        with open(self.real(path), "rb") as f:
            return f.read()


class RealizeBlobTests(SynchronousTestCase):
    """
    L{realize_blob}.
    """

    def test_new(self) -> None:
        """
        The blob becomes the real file (directories made), with the
        version's mtime and the mark given; the blob file is gone.
        """
        d = Dirs(self)
        blob = d.blob("1", b"data")
        stamp = realize_blob(d.arena, "a/b/f", blob, 4, 7_000_000_000, None, "own")
        self.assertEqual(stamp, (4, 7_000_000_000))
        self.assertEqual(d.read("a/b/f"), b"data")
        self.assertEqual(os.getxattr(d.real("a/b/f"), XATTR_MARK), b"own")
        self.assertFalse(os.path.exists(blob))

    def test_appeared(self) -> None:
        """
        A file that appeared at the path is never replaced: C{Conflict},
        and the blob stays.
        """
        d = Dirs(self)
        blob = d.blob("1", b"data")
        d.real("f", b"mine")
        self.assertRaises(Conflict, realize_blob, d.arena, "f", blob, 4, 1, None)
        self.assertEqual(d.read("f"), b"mine")
        self.assertTrue(os.path.exists(blob))

    def test_replace(self) -> None:
        """
        With the size and mtime of the file replaced, the blob takes its
        place (and its permissions) and the old file goes.
        """
        d = Dirs(self)
        blob = d.blob("1", b"new!")
        d.real("f", b"old", mtime=5)
        os.chmod(d.real("f"), 0o751)
        realize_blob(d.arena, "f", blob, 4, 9, (3, 5))
        self.assertEqual(d.read("f"), b"new!")
        self.assertEqual(os.listdir(d.blobs), [])
        self.assertEqual(os.stat(d.real("f")).st_mode & 0o7777, 0o751)

    def test_replace_changed(self) -> None:
        """
        A file replaced that changed since the index saw it is kept, and
        so is the blob.
        """
        d = Dirs(self)
        blob = d.blob("1", b"new!")
        d.real("f", b"edited", mtime=6)
        self.assertRaises(Conflict, realize_blob, d.arena, "f", blob, 4, 9, (3, 5))
        self.assertEqual(d.read("f"), b"edited")
        self.assertTrue(os.path.exists(blob))

    def test_replace_open_for_writing(self) -> None:
        """
        A file replaced that a process has open for writing is kept.
        """
        d = Dirs(self)
        blob = d.blob("1", b"new!")
        full = d.real("f", b"old", mtime=5)
        with open(full, "r+b"):
            self.assertRaises(Conflict, realize_blob, d.arena, "f", blob, 4, 9, (3, 5))
        self.assertEqual(d.read("f"), b"old")

    def test_short_blob(self) -> None:
        """
        A blob of another size is refused.
        """
        d = Dirs(self)
        blob = d.blob("1", b"dat")
        self.assertRaises(IOFailure, realize_blob, d.arena, "f", blob, 4, 1, None)
        self.assertFalse(os.path.exists(d.real("f")))


class UnrealizeFileTests(SynchronousTestCase):
    """
    L{unrealize_file}.
    """

    def test_moves(self) -> None:
        """
        The real file replaces the blob's file; its size on disk is given.
        """
        d = Dirs(self)
        blob = d.blob("7", b"")
        d.real("f", b"content", mtime=5)
        usage = unrealize_file(d.arena, "f", blob, 7, 5)
        self.assertFalse(os.path.exists(d.real("f")))
        with open(blob, "rb") as f:
            self.assertEqual(f.read(), b"content")
        self.assertEqual(usage, os.stat(blob).st_blocks * 512)

    def test_changed(self) -> None:
        """
        A file whose size or mtime is not the index's stays.
        """
        d = Dirs(self)
        blob = d.blob("7", b"")
        d.real("f", b"content", mtime=6)
        self.assertRaises(Conflict, unrealize_file, d.arena, "f", blob, 7, 5)
        self.assertEqual(d.read("f"), b"content")

    def test_open_for_writing(self) -> None:
        """
        A file open for writing stays (and is seen as such).
        """
        d = Dirs(self)
        blob = d.blob("7", b"")
        full = d.real("f", b"content", mtime=5)
        with open(full, "ab"):
            st = os.stat(full)
            self.assertIn((st.st_dev, st.st_ino), open_for_writing())
            self.assertRaises(Conflict, unrealize_file, d.arena, "f", blob, 7, 5)
        self.assertEqual(d.read("f"), b"content")
        with open(full, "rb"):
            self.assertNotIn((st.st_dev, st.st_ino), open_for_writing())

    def test_gone(self) -> None:
        """
        A file gone: C{NotFound}.
        """
        d = Dirs(self)
        blob = d.blob("7", b"")
        os.makedirs(d.real("dir"))
        self.assertRaises(NotFound, unrealize_file, d.arena, "dir/f", blob, 7, 5)


class RemoveFileTests(SynchronousTestCase):
    """
    L{remove_file}.
    """

    def test_removes(self) -> None:
        """
        The version expected is removed; nothing is left aside.
        """
        d = Dirs(self)
        d.real("f", b"x", mtime=5)
        remove_file(d.arena, "f", 1, 5, os.path.join(d.blobs, "removing-1"))
        self.assertFalse(os.path.exists(d.real("f")))
        self.assertEqual(os.listdir(d.blobs), [])

    def test_changed(self) -> None:
        """
        Another version stays.
        """
        d = Dirs(self)
        d.real("f", b"xy", mtime=5)
        self.assertRaises(
            Conflict,
            remove_file,
            d.arena,
            "f",
            1,
            5,
            os.path.join(d.blobs, "removing-1"),
        )
        self.assertEqual(d.read("f"), b"xy")


class VerifyTests(SynchronousTestCase):
    """
    L{verify_file}.
    """

    def test_root(self) -> None:
        """
        The Merkle root of a file; a size that differs: C{IOFailure}.
        """
        d = Dirs(self)
        blob = d.blob("1", b"abc" * 1000)
        self.assertEqual(verify_file(blob, 3000), root_of(b"abc" * 1000))
        self.assertRaises(IOFailure, verify_file, blob, 3001)
        self.assertEqual(verify_file(d.blob("2", b""), 0), root_of(b""))


class RealMarkTests(SynchronousTestCase):
    """
    Marks on real files and directories.
    """

    def test_write_read(self) -> None:
        """
        A mark written on a file or directory reads back; removed, it is
        none; on a missing path nothing is written.
        """
        d = Dirs(self)
        d.real("dir/f", b"x")
        for path in ("dir/f", "dir", ""):
            self.assertTrue(write_real_mark(d.data, path, "keep"))
            self.assertEqual(read_real_mark(d.data, path), (True, "keep"))
            self.assertTrue(write_real_mark(d.data, path, None))
            self.assertEqual(read_real_mark(d.data, path), (True, None))
        self.assertFalse(write_real_mark(d.data, "missing", "own"))
        self.assertEqual(read_real_mark(d.data, "missing"), (False, None))

    def test_symlink(self) -> None:
        """
        A symlink is not followed: it has no mark, and none is written
        through it.
        """
        d = Dirs(self)
        target = d.real("target", b"x")
        os.symlink(target, d.real("link"))
        self.assertFalse(write_real_mark(d.data, "link", "own"))
        self.assertEqual(read_real_mark(d.data, "link"), (False, None))
        self.assertRaises(OSError, os.getxattr, target, XATTR_MARK)

    def test_bad_value(self) -> None:
        """
        An attribute that is not a mark: C{BadRequest}.
        """
        d = Dirs(self)
        full = d.real("f", b"x")
        os.setxattr(full, XATTR_MARK, b"mine")
        self.assertRaises(BadRequest, read_real_mark, d.data, "f")

    def test_walk(self) -> None:
        """
        The walk finds every mark (the datadir's too), reports bad ones,
        and skips the workdir and partial files.
        """
        d = Dirs(self)
        for path in ("a/f", "a/g", "b/h", "work/x", "a/.p.part"):
            d.real(path, b"1")
        os.setxattr(d.data, XATTR_MARK, b"watch")
        os.setxattr(d.real("a"), XATTR_MARK, b"own")
        os.setxattr(d.real("a/g"), XATTR_MARK, b"keep\0")
        os.setxattr(d.real("b/h"), XATTR_MARK, b"bogus")
        os.setxattr(d.real("work/x"), XATTR_MARK, b"own")
        os.setxattr(d.real("a/.p.part"), XATTR_MARK, b"own")
        found, bad = walk_real_marks(d.data, "work")
        self.assertEqual(found, [("", "watch"), ("a", "own"), ("a/g", "keep")])
        self.assertEqual([path for path, _ in bad], ["b/h"])
