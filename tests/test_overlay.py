"""
Tests for L{realize.overlay}: the mode, the options, the mount table.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from realize import overlay
from realize.config import ArenaConfig, Config
from realize.model import ArenaName
from realize.overlay import OverlayError, Planned, choose_mode, mounted, overlay_options


class OverlayOptionsTests(SynchronousTestCase):
    """
    The options of each mode, as this kernel accepts them.
    """

    plan = Planned("docs", "/v/docs", "/d", "/w/work", "/m")

    def test_modes(self) -> None:
        """
        auto is the privileged mode for root and userxattr for others; a
        setting of trusted or user forces it.
        """
        self.assertEqual(choose_mode("auto", euid=0), "trusted")
        self.assertEqual(choose_mode("auto", euid=1000), "user")
        self.assertEqual(choose_mode("trusted", euid=1000), "trusted")
        self.assertEqual(choose_mode("user", euid=0), "user")

    def test_options(self) -> None:
        """
        trusted: redirect_dir=on and metacopy=off (a metacopy file in the
        datadir would hold no data); user: userxattr and
        redirect_dir=nofollow, no metacopy (the kernel refuses the other
        combinations).
        """
        self.assertEqual(
            overlay_options(self.plan, "trusted"),
            "lowerdir=/v/docs,upperdir=/d,workdir=/w/work,redirect_dir=on,metacopy=off",
        )
        user = overlay_options(self.plan, "user")
        self.assertTrue(user.endswith(",userxattr,redirect_dir=nofollow"))
        self.assertNotIn("metacopy", user)

    def test_comma_refused(self) -> None:
        """
        A path with a comma or colon cannot be carried by the options: a
        clear error naming the arena and the path.
        """
        bad = Planned("docs", "/v/a,b", "/d", "/w", "/m")
        error = self.assertRaises(OverlayError, overlay_options, bad, "user")
        self.assertIn("'/v/a,b'", str(error))

    def test_mounted(self) -> None:
        """
        L{mounted} reads the mount table, octal escapes included.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("overlay /srv/my\\040docs overlay rw 0 0\n")
            f.write("fuse /srv/view fuse rw 0 0\n")
        self.assertEqual(mounted("/srv/my docs", path), "overlay")
        self.assertEqual(mounted("/srv/view", path), "fuse")
        self.assertIsNone(mounted("/srv/other", path))


class RemountStaleTests(SynchronousTestCase):
    """
    L{overlay.remount_stale}: which overlays a restarted daemon mounts
    again over its new view (the mount table, the listing and the mount
    itself faked).
    """

    def setUp(self) -> None:
        self.mounts = self.mktemp()
        self.mounted: list[tuple[str, str]] = []
        self.stale = {"/m/a", "/m/b", "/m/c"}
        arenas = {
            ArenaName(n): ArenaConfig(
                ArenaName(n), Path(f"/d/{n}"), Path(f"/w/{n}"), Path(f"/m/{n}")
            )
            for n in ("a", "b", "c", "d")
        }
        self.config = Config("test.toml", {}, arenas)
        real_listdir = os.listdir

        def listdir(path: Any) -> list[str]:
            if path in self.stale:
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
            if isinstance(path, str) and path.startswith("/m/"):
                return ["x"]
            return real_listdir(path)

        self.patch(os, "listdir", listdir)
        self.patch(
            overlay,
            "plan",
            lambda arena, fuse: Planned(
                arena.name, f"{fuse}/{arena.name}", "", "", str(arena.mountpoint)
            ),
        )
        self.patch(
            overlay,
            "mount_overlay",
            lambda planned, mode: self.mounted.append((planned.mountpoint, mode)),
        )

    def table(self, *lines: str) -> None:
        with open(self.mounts, "w") as f:
            f.write("".join(line + "\n" for line in lines))

    def test_stale_ones(self) -> None:
        """
        An overlay whose lowerdir is the view's directory of its arena and
        that answers ENOTCONN is mounted again in the mode it had; one
        over another lower directory (b), one that answers (d), and a
        mountpoint with something else mounted (c) are left alone.
        """
        self.table(
            "overlay /m/a overlay rw,lowerdir=/v/a,upperdir=/d/a,workdir=/w/a/work,"
            "userxattr,redirect_dir=nofollow 0 0",
            "overlay /m/b overlay rw,lowerdir=/elsewhere/b,upperdir=/d/b 0 0",
            "tmpfs /m/c tmpfs rw 0 0",
            "overlay /m/d overlay rw,lowerdir=/v/d,upperdir=/d/d,redirect_dir=on 0 0",
        )
        done = overlay.remount_stale(self.config, "/v", self.mounts)
        self.assertEqual(done, ["/m/a"])
        self.assertEqual(self.mounted, [("/m/a", "user")])

    def test_trusted_mode_and_errors(self) -> None:
        """
        An overlay without userxattr is mounted again in the trusted
        mode; one that cannot be mounted does not stop the others, and
        its error is raised after them.
        """
        self.table(
            "overlay /m/a overlay rw,lowerdir=/v/a,redirect_dir=on 0 0",
            "overlay /m/b overlay rw,lowerdir=/v/b,redirect_dir=on 0 0",
        )

        def mount(planned: Planned, mode: str) -> None:
            if planned.mountpoint == "/m/a":
                raise OverlayError("arena 'a': refused")
            self.mounted.append((planned.mountpoint, mode))

        self.patch(overlay, "mount_overlay", mount)
        error = self.assertRaises(
            OverlayError, overlay.remount_stale, self.config, "/v", self.mounts
        )
        self.assertIn("arena 'a'", str(error))
        self.assertEqual(self.mounted, [("/m/b", "trusted")])
