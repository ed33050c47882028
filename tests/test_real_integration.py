"""
The Real end to end (issue 13): two real daemons on loopback, each with
its FUSE view and an overlay of its datadir over it (C{realized
mountall}); files are created, edited, deleted and renamed through the
laptop's overlay with ordinary file calls, and the change is seen in the
NAS's overlay and, since the NAS owns everything (C{mark = "own"}), on
its disk with the right content.  Real programs (git, compileall) work
through an overlay.  Every test unmounts its overlays, then its FUSE
views, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from realize.overlay import mounted
from tests.integration import REALIZED, run_command
from tests.peers import Peer, Peers, eventually, need_fuse
from tests.test_overlay_integration import need_overlay


def read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write(path: str, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


class _RealCase(TestCase):
    """
    A NAS (owns everything) and a laptop (watch), both with FUSE and an
    overlay.
    """

    timeout = 240

    def setUp(self) -> None:
        need_fuse()
        need_overlay()
        self.peers = Peers(self)
        self.nas = self.peers.add("nas")
        self.laptop = self.peers.add("laptop")
        self.nas.arena_lines.append('mark = "own"')
        self.overlays: dict[str, str] = {}
        for peer in (self.nas, self.laptop):
            overlay = os.path.join(self.peers.root, peer.name, "docs")
            os.makedirs(overlay)
            peer.arena_lines.append(f'mountpoint = "{overlay}"')
            self.overlays[peer.name] = overlay

    def ov(self, peer: Peer, path: str = "") -> str:
        return os.path.join(self.overlays[peer.name], path)

    def disk(self, peer: Peer, path: str) -> bytes | None:
        assert peer.datadir is not None
        return read(os.path.join(peer.datadir, path))

    async def start(self, seen: str) -> None:
        await self.nas.start(fuse=True)
        await self.laptop.start(fuse=True)
        await eventually(
            lambda: os.path.exists(self.laptop.mounted(seen)),
            30,
            "the NAS's files in the laptop's view",
        )
        # Deletions through an overlay reach a peer subscribed to the
        # history (a first catch-up carries the index only: docs/real.md).
        await self.nas.wait_log(b"subscribed to arena docs of laptop", 30)
        for peer in (self.nas, self.laptop):
            await self.mount(peer)

    async def mount(self, peer: Peer) -> None:
        """
        C{realized mountall} for a peer: its overlay over its view.
        """
        assert peer.mountpoint is not None
        run = await run_command(
            [
                *REALIZED,
                "mountall",
                "--config",
                peer.config(),
                "--fuse",
                peer.mountpoint,
            ]
        )
        self.assertEqual(run.code, 0, run)
        # Cleanups run last first: the overlay goes before the FUSE view.
        self.addCleanup(self.unmount, self.ov(peer))
        self.assertEqual(mounted(self.ov(peer)), "overlay")

    def unmount(self, overlay: str) -> None:
        if mounted(overlay):
            if subprocess.run(["umount", overlay], check=False).returncode:
                subprocess.run(["umount", "-l", overlay], check=False)

    def on_disk(self, peer: Peer, path: str, data: bytes | None) -> Deferred[object]:
        return Deferred.fromCoroutine(
            eventually(
                lambda: self.disk(peer, path) == data,
                40,
                f"{path} = {data!r} on {peer.name}'s disk "
                f"(now {self.disk(peer, path)!r})",
            )
        )

    def in_overlay(self, peer: Peer, path: str, data: bytes | None) -> Deferred[object]:
        return Deferred.fromCoroutine(
            eventually(
                lambda: read(self.ov(peer, path)) == data,
                40,
                f"{path} = {data!r} in {peer.name}'s overlay",
            )
        )


class EditThroughOverlayIntegrationTests(_RealCase):
    """
    Create, edit, delete and rename through the laptop's overlay.
    """

    def test_changes_reach_the_owner(self) -> None:
        """
        Each change made through the laptop's overlay lands on the NAS's
        disk and shows in its overlay: an edit (copy-up: a Replace), a new
        file (an Add), a delete (whiteout: a Remove), a rename of a file
        (Remove + Add) and of a directory (per-file Remove + Add).
        """
        self.nas.write("notes.txt", b"notes\n")
        self.nas.write("gone.txt", b"to delete\n")
        self.nas.write("moveme.txt", b"move me\n")
        self.nas.write("dir/x", b"x\n")
        self.nas.write("dir/sub/y", b"y\n")

        async def go() -> None:
            await self.start("dir/sub/y")
            laptop = self.laptop
            await deferToThread(write, self.ov(laptop, "notes.txt"), b"more\n", "ab")
            await deferToThread(write, self.ov(laptop, "new.txt"), b"new\n")
            await deferToThread(os.unlink, self.ov(laptop, "gone.txt"))
            await deferToThread(
                os.rename, self.ov(laptop, "moveme.txt"), self.ov(laptop, "moved.txt")
            )
            await deferToThread(
                os.rename, self.ov(laptop, "dir"), self.ov(laptop, "dir2")
            )
            for path, data in [
                ("notes.txt", b"notes\nmore\n"),
                ("new.txt", b"new\n"),
                ("gone.txt", None),
                ("moveme.txt", None),
                ("moved.txt", b"move me\n"),
                ("dir/x", None),
                ("dir/sub/y", None),
                ("dir2/x", b"x\n"),
                ("dir2/sub/y", b"y\n"),
            ]:
                await self.on_disk(self.nas, path, data)
                await self.in_overlay(self.nas, path, data)
            # The laptop's overlay still shows what was done there.
            self.assertEqual(read(self.ov(laptop, "notes.txt")), b"notes\nmore\n")
            self.assertFalse(os.path.exists(self.ov(laptop, "gone.txt")))
            # Overlay metadata never reaches the NAS: no whiteouts, no
            # overlay xattrs on its real files.
            assert self.nas.datadir is not None
            for directory, _, files in os.walk(self.nas.datadir):
                for name in files:
                    full = os.path.join(directory, name)
                    self.assertTrue(os.path.isfile(full), full)
                    names = os.listxattr(full, follow_symlinks=False)
                    self.assertFalse(
                        [n for n in names if "overlay" in n], (full, names)
                    )

        return Deferred.fromCoroutine(go())

    def test_copy_up_carries(self) -> None:
        """
        What a copy-up carries into the datadir: the content, the mtime of
        the version, the mark set on the view (the only xattr the view
        lists), never user.realize.version or user.realize.status.
        """
        self.nas.write("marked.txt", b"marked\n")

        async def go() -> None:
            await self.start("marked.txt")
            view = self.laptop.mounted("marked.txt")
            await deferToThread(os.setxattr, view, "user.realize.mark", b"keep")
            before = os.stat(view)
            path = self.ov(self.laptop, "marked.txt")
            await deferToThread(os.chmod, path, 0o640)
            assert self.laptop.datadir is not None
            real = os.path.join(self.laptop.datadir, "marked.txt")
            self.assertEqual(read(real), b"marked\n")
            self.assertEqual(os.stat(real).st_mtime_ns, before.st_mtime_ns)
            names = os.listxattr(real)
            self.assertIn("user.realize.mark", names)
            self.assertEqual(os.getxattr(real, "user.realize.mark"), b"keep")
            self.assertNotIn("user.realize.version", names)
            self.assertNotIn("user.realize.status", names)

        return Deferred.fromCoroutine(go())


class ProgramsThroughOverlayIntegrationTests(_RealCase):
    """
    Real programs at work in an overlay directory.
    """

    def test_git(self) -> None:
        """
        git init, add, commit, status and fsck in a directory of the
        laptop's overlay; the repository reaches the NAS's disk.
        """
        if shutil.which("git") is None:
            raise SkipTest("git is not installed")
        self.nas.write("readme.txt", b"hello\n")

        async def go() -> None:
            await self.start("readme.txt")
            top = self.ov(self.laptop, "repo")
            env = dict(
                os.environ,
                GIT_AUTHOR_NAME="t",
                GIT_AUTHOR_EMAIL="t@example.com",
                GIT_COMMITTER_NAME="t",
                GIT_COMMITTER_EMAIL="t@example.com",
            )

            def git(*args: str) -> str:
                done = subprocess.run(
                    ["git", "-C", top, *args],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                )
                self.assertEqual(done.returncode, 0, done)
                return done.stdout

            def work() -> None:
                os.makedirs(top)
                git("init", "-q")
                write(os.path.join(top, "a.txt"), b"a\n")
                shutil.copy(self.ov(self.laptop, "readme.txt"), top)
                git("add", ".")
                git("commit", "-q", "-m", "first")
                write(os.path.join(top, "a.txt"), b"a2\n")
                git("commit", "-q", "-am", "second")
                self.assertEqual(git("status", "--porcelain"), "")
                git("fsck", "--strict")

            await deferToThread(work)
            await self.on_disk(self.nas, "repo/a.txt", b"a2\n")
            await self.on_disk(self.nas, "repo/readme.txt", b"hello\n")
            await self.on_disk(self.nas, "repo/.git/HEAD", b"ref: refs/heads/master\n")

        return Deferred.fromCoroutine(go())

    def test_compileall(self) -> None:
        """
        python -m compileall over a tree seen through the Unreal (the
        NAS's files in the laptop's overlay): the sources are read from
        the view, the __pycache__ lands in the laptop's datadir.
        """
        self.nas.write("pkg/__init__.py", b"")
        self.nas.write("pkg/mod.py", b"def f():\n    return 42\n")

        async def go() -> None:
            await self.start("pkg/mod.py")

            def work() -> None:
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "compileall",
                        "-q",
                        self.ov(self.laptop, "pkg"),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                self.assertEqual(done.returncode, 0, done)

            await deferToThread(work)
            assert self.laptop.datadir is not None
            cache = os.path.join(self.laptop.datadir, "pkg", "__pycache__")
            self.assertTrue(
                any(
                    n.startswith("mod.") and n.endswith(".pyc")
                    for n in os.listdir(cache)
                ),
                os.listdir(cache),
            )
            # The sources were not copied up: they were only read.
            self.assertFalse(
                os.path.exists(os.path.join(self.laptop.datadir, "pkg", "mod.py"))
            )

        return Deferred.fromCoroutine(go())
