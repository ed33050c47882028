"""
Tests for L{realize.overlay}: the mode, the options, the mount table.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

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
