"""
C{realized mountall} / C{unmountall} end to end (issue 13 item 1): a real
daemon with a FUSE view, an overlay of its datadir over it, and the errors
of a bad layout.
"""

from __future__ import annotations

import errno
import os
import shutil
import time

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from realize.overlay import mounted
from tests.integration import REALIZED, run_command
from tests.peers import Peers, eventually, need_fuse


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def need_overlay() -> None:
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            raise SkipTest("this kernel has no overlayfs")
    if os.geteuid() != 0:
        raise SkipTest("mounting overlays needs root here")


class OverlayIntegrationTests(TestCase):
    """
    b's overlay merges its datadir over its view of a's files.
    """

    timeout = 90

    def setUp(self) -> None:
        need_fuse()
        need_overlay()
        self.peers = Peers(self)
        self.a = self.peers.add("a")
        self.b = self.peers.add("b")
        self.overlay = os.path.join(self.peers.root, "b", "docs")
        os.makedirs(self.overlay)
        self.b.arena_lines.append(f'mountpoint = "{self.overlay}"')
        self.a.write("remote.txt", b"from a")
        self.b.write("local.txt", b"on b")
        self.addCleanup(self.unmount)

    def unmount(self) -> None:
        if mounted(self.overlay):
            os.system(f"umount -l '{self.overlay}'")

    def command(self, *args: str) -> Deferred:
        return run_command([*REALIZED, *args, "--config", self.b.config()])

    async def start(self) -> None:
        await self.a.start()
        await self.b.start(fuse=True)
        await eventually(
            lambda: os.path.exists(self.b.mounted("remote.txt")), 15, "a's file seen"
        )

    def test_mount_and_unmount(self) -> None:
        """
        mountall mounts one directory showing both peers' files (in the
        mode it says); unmountall unmounts it, and refuses while a file is
        open there unless --force.
        """

        async def go() -> None:
            await self.start()
            assert self.b.mountpoint is not None
            run = await self.command("mountall", "--fuse", self.b.mountpoint)
            self.assertEqual(run.code, 0, run)
            self.assertIn("trusted mode", run.out)
            self.assertEqual(mounted(self.overlay), "overlay")
            self.assertEqual(
                sorted(os.listdir(self.overlay)), ["local.txt", "remote.txt"]
            )
            with open(os.path.join(self.overlay, "remote.txt"), "rb") as f:
                self.assertEqual(f.read(), b"from a")
                busy = await self.command("unmountall")
                self.assertEqual(busy.code, 1, busy)
                self.assertIn("--force", busy.err)
                self.assertEqual(mounted(self.overlay), "overlay")
            run = await self.command("unmountall")
            self.assertEqual(run.code, 0, run)
            self.assertIsNone(mounted(self.overlay))
            self.assertEqual(os.listdir(self.overlay), [])

        return Deferred.fromCoroutine(go())

    def test_bad_layouts(self) -> None:
        """
        A missing mountpoint, one that is not empty, a datadir and workdir
        on different filesystems, and no FUSE view are each an error
        naming the arena and the path, exit 1, nothing mounted.
        """

        async def go() -> None:
            run = await self.command("mountall", "--fuse", "/nonexistent-view")
            self.assertEqual(run.code, 1, run)
            self.assertIn("nothing is mounted at /nonexistent-view", run.err)
            await self.start()
            assert self.b.mountpoint is not None
            fuse = self.b.mountpoint
            with open(os.path.join(self.overlay, "clutter"), "w"):
                pass
            run = await self.command("mountall", "--fuse", fuse)
            self.assertEqual(run.code, 1, run)
            self.assertIn(
                f"arena 'docs': mountpoint {self.overlay} is not empty", run.err
            )
            os.unlink(os.path.join(self.overlay, "clutter"))
            os.rmdir(self.overlay)
            run = await self.command("mountall", "--fuse", fuse)
            self.assertEqual(run.code, 1, run)
            self.assertIn("does not exist", run.err)
            os.makedirs(self.overlay)
            elsewhere = "/dev/shm/" + os.path.basename(self.peers.root) + "-work"
            self.addCleanup(shutil.rmtree, elsewhere, True)
            os.makedirs(elsewhere)
            self.b.workdir = elsewhere
            run = await self.command("mountall", "--fuse", fuse)
            self.assertEqual(run.code, 1, run)
            self.assertIn("different filesystems", run.err)
            self.assertIsNone(mounted(self.overlay))

        return Deferred.fromCoroutine(go())

    def test_daemon_restart(self) -> None:
        """
        A restart of b's daemon under its live overlay: the stop does not
        wait for the overlay to let go of the view; in between, a peer's
        file read through the overlay fails at once (ENOTCONN, not a
        hang) while b's own files still read; once b's daemon is up
        again, the same overlay directory shows both again, an edit made
        before the restart is kept, and edits work.  The same after the
        daemon was killed.
        """

        async def go() -> None:
            await self.start()
            assert self.b.mountpoint is not None
            run = await self.command("mountall", "--fuse", self.b.mountpoint)
            self.assertEqual(run.code, 0, run)
            remote = os.path.join(self.overlay, "remote.txt")
            local = os.path.join(self.overlay, "local.txt")
            self.assertEqual(read(remote), b"from a")
            with open(local, "ab") as f:
                f.write(b", edited")
            started = time.monotonic()
            await self.b.stop()
            self.assertLess(time.monotonic() - started, 8)
            started = time.monotonic()
            with self.assertRaises(OSError) as caught:
                read(remote)
            self.assertEqual(caught.exception.errno, errno.ENOTCONN)
            self.assertLess(time.monotonic() - started, 2)
            self.assertEqual(read(local), b"on b, edited")
            await self.b.start(fuse=True)
            await self.b.wait_log(b"mounted it again", 15)
            self.assertEqual(mounted(self.overlay), "overlay")
            self.assertEqual(read(remote), b"from a")
            self.assertEqual(read(local), b"on b, edited")
            self.assertEqual(
                sorted(os.listdir(self.overlay)), ["local.txt", "remote.txt"]
            )
            with open(remote, "ab") as f:
                f.write(b", edited on b")
            assert self.b.datadir is not None
            self.assertEqual(
                read(os.path.join(self.b.datadir, "remote.txt")),
                b"from a, edited on b",
            )
            # Killed: the same once it is started again.
            await self.b.stop(kill=True)
            with self.assertRaises(OSError) as caught:
                os.listdir(self.overlay)
            self.assertEqual(caught.exception.errno, errno.ENOTCONN)
            await self.b.start(fuse=True)
            await self.b.wait_log(b"mounted it again", 15)
            self.assertEqual(
                sorted(os.listdir(self.overlay)), ["local.txt", "remote.txt"]
            )
            self.assertEqual(read(remote), b"from a, edited on b")

        return Deferred.fromCoroutine(go())
