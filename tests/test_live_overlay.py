"""
Changes of the upper layer under a live overlay (issue 13 item 5,
docs/real.md): L{realize.storage.realfiles} realizes, replaces, removes
and unrealizes files of a datadir that is the upper layer of a mounted
overlay, and no edit made through the overlay is lost or written into a
blob.  A real overlay over plain directories (the lower one stands in for
the FUSE view, showing the same files); root only.
"""

from __future__ import annotations

import os
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from realize.errors import Conflict
from realize.overlay import mounted
from realize.storage.arena import ArenaDir
from realize.storage.realfiles import (
    LiveOverlay,
    drop_dentries,
    realize_blob,
    remove_file,
    unrealize_file,
)

MTIME = 10**18


def need_overlay() -> None:
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            raise SkipTest("this kernel has no overlayfs")
    if os.geteuid() != 0:
        raise SkipTest("mounting overlays needs root here")


class _LiveCase(SynchronousTestCase):
    """
    An overlay of C{data} (upper) over C{lower}, mounted at C{ov}; blobs
    beside, on the same filesystem.
    """

    options = "redirect_dir=on,metacopy=off"

    def setUp(self) -> None:
        need_overlay()
        base = os.path.abspath(self.mktemp())
        self.lower = os.path.join(base, "lower")
        self.data = os.path.join(base, "data")
        self.blobs = os.path.join(base, "blobs")
        self.work = os.path.join(base, "work")
        self.ov = os.path.join(base, "ov")
        for d in (self.lower, self.data, self.blobs, self.work, self.ov):
            os.makedirs(d)
        self.arena = ArenaDir("docs", self.data, "work")
        self.live = LiveOverlay(self.ov, True)

    def mount(self) -> None:
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "-o",
                f"lowerdir={self.lower},upperdir={self.data},"
                f"workdir={self.work},{self.options}",
                "overlay",
                self.ov,
            ],
            check=True,
        )
        self.addCleanup(self.unmount)
        self.assertEqual(mounted(self.ov), "overlay")

    def pin(self, path: str) -> None:
        """
        Keep the overlay's dentry of C{path} in use (an C{O_PATH}
        descriptor) to the end of the test: a test of what the kernel does
        when nothing is dropped must not see another test's drop
        (L{drop_dentries} drops every unused dentry of the machine, and
        the suite runs two tests at once).
        """
        fd = os.open(os.path.join(self.ov, path), os.O_PATH)
        self.addCleanup(os.close, fd)

    def unmount(self) -> None:
        if mounted(self.ov):
            subprocess.run(["umount", "-l", self.ov], check=False)

    def both(self, path: str, data: bytes) -> None:
        """
        The file is real here and shown by the lower layer too (as the
        FUSE view shows this peer's own files).
        """
        for top in (self.lower, self.data):
            full = os.path.join(top, path)
            with open(full, "wb") as f:
                f.write(data)
            os.utime(full, ns=(MTIME, MTIME))

    def blob(self, name: str, data: bytes) -> str:
        path = os.path.join(self.blobs, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def read(self, top: str, path: str) -> bytes:
        with open(os.path.join(top, path), "rb") as f:
            return f.read()

    def append(self, path: str, data: bytes) -> None:
        with open(os.path.join(self.ov, path), "ab") as f:
            f.write(data)


class LiveOverlayTests(_LiveCase):
    """
    Each case of DESIGN.md section 11 with the safe way of doing it.
    """

    def test_realize_then_edit(self) -> None:
        """
        A file realized while the overlay shows the lower one (its dentry
        cached): with the dentries dropped, the overlay shows the real file
        at once and an edit through it lands in it.
        """
        with open(os.path.join(self.lower, "a"), "wb") as f:
            f.write(b"version")
        self.mount()
        self.assertEqual(self.read(self.ov, "a"), b"version")
        blob = self.blob("1", b"version")
        realize_blob(self.arena, "a", blob, 7, MTIME, None, None, self.live)
        self.append("a", b" edited")
        self.assertEqual(self.read(self.data, "a"), b"version edited")

    def test_realize_without_drop_fails_loudly(self) -> None:
        """
        Measured: without dropping the dentries, the overlay keeps showing
        the lower file, and an edit through it fails with EEXIST (the
        copy-up finds the real file): nothing is lost, nothing overwritten.
        """
        with open(os.path.join(self.lower, "a"), "wb") as f:
            f.write(b"lower")
        self.mount()
        self.assertEqual(self.read(self.ov, "a"), b"lower")
        self.pin("a")
        blob = self.blob("1", b"realized")
        realize_blob(
            self.arena, "a", blob, 8, MTIME, None, None, LiveOverlay(self.ov, False)
        )
        self.assertEqual(self.read(self.ov, "a"), b"lower")
        with self.assertRaises(FileExistsError):
            self.append("a", b" edited")
        self.assertEqual(self.read(self.data, "a"), b"realized")

    def test_unrealize_then_edit(self) -> None:
        """
        Measured: an edit through the overlay after the real file moved
        into its blob underneath lands in the blob.  Done the safe way
        (dentries dropped once it moved), the blob keeps the version and
        the edit makes a new real file (a copy-up from the view).
        """
        self.both("b", b"real")
        self.mount()
        self.assertEqual(self.read(self.ov, "b"), b"real")
        blob = os.path.join(self.blobs, "2")
        unrealize_file(self.arena, "b", blob, 4, MTIME, self.live)
        self.append("b", b" edited")
        self.assertEqual(self.read(self.blobs, "2"), b"real")
        self.assertEqual(self.read(self.data, "b"), b"real edited")

    def test_unrealize_unsafe_measured(self) -> None:
        """
        What the kernel does when nothing is dropped (the reason for the
        above): the edit is written into the moved inode.
        """
        self.both("b", b"real")
        self.mount()
        self.assertEqual(self.read(self.ov, "b"), b"real")
        self.pin("b")
        os.rename(os.path.join(self.data, "b"), os.path.join(self.blobs, "2"))
        self.append("b", b" edited")
        self.assertEqual(self.read(self.blobs, "2"), b"real edited")

    def test_unrealize_open_through_overlay(self) -> None:
        """
        A file open for writing through the overlay is not unrealized
        (the descriptor shows the overlay's path, not the datadir's).
        """
        self.both("b", b"real")
        self.mount()
        with open(os.path.join(self.ov, "b"), "ab") as f:
            with self.assertRaises(Conflict) as caught:
                unrealize_file(
                    self.arena, "b", os.path.join(self.blobs, "2"), 4, MTIME, self.live
                )
            self.assertIn("through the overlay", str(caught.exception))
            f.write(b" edited")
        self.assertEqual(self.read(self.data, "b"), b"real edited")
        self.assertFalse(os.path.exists(os.path.join(self.blobs, "2")))

    def test_no_drop_no_unrealize(self) -> None:
        """
        A daemon that cannot drop dentries (not root) does not unrealize,
        replace or remove under a live overlay: the file stays.
        """
        self.both("b", b"real")
        self.mount()
        cannot = LiveOverlay(self.ov, False)
        with self.assertRaises(Conflict):
            unrealize_file(
                self.arena, "b", os.path.join(self.blobs, "2"), 4, MTIME, cannot
            )
        with self.assertRaises(Conflict):
            remove_file(
                self.arena, "b", 4, MTIME, os.path.join(self.blobs, "x"), cannot
            )
        blob = self.blob("3", b"new version")
        with self.assertRaises(Conflict):
            realize_blob(self.arena, "b", blob, 11, MTIME, (4, MTIME), None, cannot)
        self.assertEqual(self.read(self.data, "b"), b"real")

    def test_update_then_edit(self) -> None:
        """
        A real file replaced by a peer's version (exchange) while the
        overlay had its dentry: the overlay shows the new version and an
        edit lands in it.
        """
        self.both("c", b"old")
        self.mount()
        self.assertEqual(self.read(self.ov, "c"), b"old")
        blob = self.blob("4", b"new version")
        realize_blob(self.arena, "c", blob, 11, MTIME, (3, MTIME), None, self.live)
        self.assertEqual(self.read(self.ov, "c"), b"new version")
        self.append("c", b" edited")
        self.assertEqual(self.read(self.data, "c"), b"new version edited")

    def test_update_open_for_writing(self) -> None:
        """
        A real file open for writing through the overlay is not replaced:
        the writer's edit is kept.
        """
        self.both("c", b"old")
        self.mount()
        blob = self.blob("4", b"new version")
        with open(os.path.join(self.ov, "c"), "ab") as f:
            with self.assertRaises(Conflict):
                realize_blob(
                    self.arena, "c", blob, 11, MTIME, (3, MTIME), None, self.live
                )
            f.write(b" edited")
        self.assertEqual(self.read(self.data, "c"), b"old edited")

    def test_remove_then_edit(self) -> None:
        """
        A real file a peer removed, removed while the overlay had its
        dentry: the next edit through the overlay does not go to the
        unlinked inode (it copies up what the view shows).
        """
        self.both("d", b"doomed")
        self.mount()
        self.assertEqual(self.read(self.ov, "d"), b"doomed")
        remove_file(self.arena, "d", 6, MTIME, os.path.join(self.blobs, "x"), self.live)
        self.assertFalse(os.path.exists(os.path.join(self.data, "d")))
        self.append("d", b"!")
        self.assertEqual(self.read(self.data, "d"), b"doomed!")

    def test_lower_replaced_while_open(self) -> None:
        """
        Measured: a file of the lower layer replaced while open for
        reading through the overlay: the reader goes on reading the
        version it opened.
        """
        with open(os.path.join(self.lower, "e"), "wb") as f:
            f.write(b"first")
        self.mount()
        with open(os.path.join(self.ov, "e"), "rb") as f:
            tmp = os.path.join(self.lower, ".e")
            with open(tmp, "wb") as g:
                g.write(b"second")
            os.rename(tmp, os.path.join(self.lower, "e"))
            self.assertEqual(f.read(), b"first")

    def test_drop_dentries(self) -> None:
        """
        Root may drop the dentries; a path that cannot be written says so.
        """
        self.assertTrue(drop_dentries())
        self.assertFalse(drop_dentries(os.path.join(self.blobs, "no", "such")))


class UserxattrLiveOverlayTests(LiveOverlayTests):
    """
    The same with the unprivileged mode's options.
    """

    options = "userxattr,redirect_dir=nofollow"
