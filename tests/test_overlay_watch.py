"""
Tests for what the watcher makes of an overlay's upper layer
(L{realize.storage.overlaymeta}, L{realize.storage.whiteouts}, the
overlay parts of L{realize.storage.scan} and
L{realize.services.watcher}): plain directories whose whiteouts, opaque
directories, redirects and metacopy files the test makes itself, with the
xattrs of both modes (C{trusted.overlay.*} needs root: those tests skip
without it).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet.inotify import IN_CLOSE_WRITE, IN_CREATE, IN_ISDIR, IN_MOVED_TO
from twisted.trial.unittest import SynchronousTestCase

from realize.model import ADD, REMOVE, REPLACE, Notification
from realize.storage import overlaymeta, scan
from realize.storage.globaldb import InodeRange
from realize.storage.unreal import ArenaTree, _txn_apply_batch
from realize.storage.unrealpaths import set_unreal_root
from tests.test_watcher import A, HeldRunner, _WatcherCase, root_of

ROOT = 5
PEER = "b"

PREFIXES = {"trusted": "trusted.overlay.", "user": "user.overlay."}


def _whiteout(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


class _Ranges:
    def __init__(self) -> None:
        self.next = 1000

    def __call__(self, end: int) -> InodeRange:
        start = max(self.next, end)
        self.next = start + 1000
        return InodeRange(start, start + 1000)


class RecognitionTests(SynchronousTestCase):
    """
    L{realize.storage.overlaymeta} on entries made by the test.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    def xattr_mode(self, mode: str) -> str:
        if mode == "trusted" and os.geteuid() != 0:
            raise self.skipTest("trusted.* xattrs need root")
        return PREFIXES[mode]

    def test_whiteout_device(self) -> None:
        """
        A character device 0/0 is a whiteout; another device or a file is
        not.
        """
        if os.geteuid() != 0:
            raise self.skipTest("mknod of a character device needs root")
        path = os.path.join(self.base, "w")
        _whiteout(path)
        self.assertTrue(overlaymeta.is_whiteout(path, os.lstat(path)))
        other = os.path.join(self.base, "null")
        os.mknod(other, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        self.assertFalse(overlaymeta.is_whiteout(other, os.lstat(other)))
        plain = os.path.join(self.base, "f")
        open(plain, "wb").close()
        self.assertFalse(overlaymeta.is_whiteout(plain, os.lstat(plain)))

    def _xattr_whiteout(self, mode: str) -> None:
        prefix = self.xattr_mode(mode)
        path = os.path.join(self.base, f"xw-{mode}")
        open(path, "wb").close()
        os.setxattr(path, prefix + "whiteout", b"")
        self.assertTrue(overlaymeta.is_whiteout(path, os.lstat(path)))

    def test_xattr_whiteout_user(self) -> None:
        """
        An empty file with C{user.overlay.whiteout} is a whiteout.
        """
        self._xattr_whiteout("user")

    def test_xattr_whiteout_trusted(self) -> None:
        """
        An empty file with C{trusted.overlay.whiteout} is a whiteout.
        """
        self._xattr_whiteout("trusted")

    def _opaque(self, mode: str) -> None:
        prefix = self.xattr_mode(mode)
        path = os.path.join(self.base, f"o-{mode}")
        os.mkdir(path)
        self.assertFalse(overlaymeta.is_opaque(path))
        os.setxattr(path, prefix + "opaque", b"y")
        self.assertTrue(overlaymeta.is_opaque(path))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.assertTrue(overlaymeta.is_opaque(fd))
        finally:
            os.close(fd)
        # "x" marks a directory holding xattr whiteouts, not an opaque one.
        os.setxattr(path, prefix + "opaque", b"x")
        self.assertFalse(overlaymeta.is_opaque(path))

    def test_opaque_user(self) -> None:
        """
        C{user.overlay.opaque = y} makes a directory opaque.
        """
        self._opaque("user")

    def test_opaque_trusted(self) -> None:
        """
        C{trusted.overlay.opaque = y} makes a directory opaque.
        """
        self._opaque("trusted")

    def _redirect(self, mode: str) -> None:
        prefix = self.xattr_mode(mode)
        path = os.path.join(self.base, f"r-{mode}")
        os.mkdir(path)
        self.assertIsNone(overlaymeta.redirect_target(path, "x/new"))
        os.setxattr(path, prefix + "redirect", b"old")
        self.assertEqual(overlaymeta.redirect_target(path, "x/new"), "x/old")
        self.assertEqual(overlaymeta.redirect_target(path, "new"), "old")
        os.setxattr(path, prefix + "redirect", b"/a/b")
        self.assertEqual(overlaymeta.redirect_target(path, "x/new"), "a/b")
        for bad in (b"/a/../b", b"../b", b"a/b", b"/", b"\xff"):
            os.setxattr(path, prefix + "redirect", bad)
            self.assertIsNone(overlaymeta.redirect_target(path, "x/new"), bad)

    def test_redirect_user(self) -> None:
        """
        C{user.overlay.redirect}: relative to the parent, or from the root.
        """
        self._redirect("user")

    def test_redirect_trusted(self) -> None:
        """
        C{trusted.overlay.redirect}: relative to the parent, or from the
        root; malformed ones are ignored.
        """
        self._redirect("trusted")

    def _metacopy(self, mode: str) -> None:
        prefix = self.xattr_mode(mode)
        path = os.path.join(self.base, f"m-{mode}")
        with open(path, "wb") as f:
            f.truncate(100_000)
        self.assertFalse(overlaymeta.is_metacopy(path, os.lstat(path)))
        os.setxattr(path, prefix + "metacopy", b"")
        self.assertTrue(overlaymeta.is_metacopy(path, os.lstat(path)))
        # A file with its data is never taken for one.
        full = os.path.join(self.base, f"full-{mode}")
        with open(full, "wb") as f:
            f.write(b"x" * 8192)
        os.setxattr(full, prefix + "metacopy", b"")
        self.assertFalse(overlaymeta.is_metacopy(full, os.lstat(full)))

    def test_metacopy_user(self) -> None:
        """
        A sparse file with C{user.overlay.metacopy} is a metacopy.
        """
        self._metacopy("user")

    def test_metacopy_trusted(self) -> None:
        """
        A sparse file with C{trusted.overlay.metacopy} is a metacopy.
        """
        self._metacopy("trusted")

    def test_overlay_xattr_names(self) -> None:
        """
        Both namespaces are overlayfs's; marks are not.
        """
        self.assertTrue(overlaymeta.is_overlay_xattr("trusted.overlay.origin"))
        self.assertTrue(overlaymeta.is_overlay_xattr("user.overlay.origin"))
        self.assertFalse(overlaymeta.is_overlay_xattr("user.realize.mark"))


class _OverlayCase(_WatcherCase):
    """
    A watcher over a datadir that is the upper layer of an overlay whose
    lower layer shows peer C{b}'s files (the Unreal's tables in the same
    db, its root stored as the Unreal does).
    """

    mode = "user"

    def setUp(self) -> None:
        super().setUp()
        if os.geteuid() != 0:
            raise self.skipTest("whiteouts are character devices: mknod needs root")
        if self.mode == "trusted" and os.geteuid() != 0:
            raise self.skipTest("trusted.* xattrs need root")
        self.prefix = PREFIXES[self.mode]
        self.tree = ArenaTree(A, ROOT, _Ranges(), lambda: 1_700_000_000 * 10**9)
        self.pool.runInteraction(set_unreal_root, ROOT)
        self.position = 0
        self.remote: dict[str, bytes] = {}

    def peer_has(
        self, path: str, data: bytes, peer: str = PEER, old: bytes | None = None
    ) -> bytes:
        """
        A peer (C{b}) adds a file, or replaces version C{old} (as the
        household would apply it).

        @return: the new version's hash.
        """
        digest = root_of(data)
        self.position += 1
        note = Notification(
            ADD if old is None else REPLACE,
            A,
            self.position,
            path=path,
            size=len(data),
            mtime_ns=(1_600_000_000 if old is None else 1_650_000_000) * 10**9,
            hash=digest,
            old_hash=old,
        )
        self.successResultOf(
            self.pool.runInteraction(_txn_apply_batch, self.tree, peer, [note])
        )
        self.remote[path] = digest
        return digest

    def full(self, path: str) -> str:
        return os.path.join(self.root, path)

    def entries(self) -> list[tuple[str, str, Any]]:
        return [(k, p, h) for k, p, h, _ in self.history()]


class OverlayCatchupTests(_OverlayCase):
    """
    What the catch-up scan makes of an upper layer.
    """

    def test_copy_up_is_replace(self) -> None:
        """
        A file of the datadir that the index lacks but the Unreal shows
        (an edit through the overlay: a copy-up) is a Replace whose old
        hash is the Unreal's version; a new file is an Add; a copy-up
        with the same content is an Add (a new copy, not a new version).
        """
        old = self.peer_has("doc.txt", b"remote")
        same = self.peer_has("same.txt", b"same")
        self.write("doc.txt", b"remote, edited")
        self.write("same.txt", b"same")
        self.write("new.txt", b"new")
        self.start()
        self.assertEqual(
            sorted(self.entries()),
            [
                (ADD, "new.txt", None),
                (ADD, "same.txt", None),
                (REPLACE, "doc.txt", old),
            ],
        )
        self.assertEqual(self.indexed()["same.txt"][2], same)

    def test_whiteout_is_remove(self) -> None:
        """
        A whiteout over a peer's file is a Remove with the Unreal's
        version as old hash, recorded once (a restart does not record it
        again); the whiteout is never indexed.
        """
        old = self.peer_has("gone.txt", b"gone")
        self.peer_has("kept.txt", b"kept")
        _whiteout(self.full("gone.txt"))
        watcher = self.start()
        self.assertEqual(self.entries(), [(REMOVE, "gone.txt", old)])
        self.assertEqual(self.indexed(), {})
        self.stop(watcher)
        self.start()
        self.assertEqual(self.entries(), [(REMOVE, "gone.txt", old)])

    def test_whiteout_of_directory(self) -> None:
        """
        A whiteout over a peer's directory removes every file beneath it.
        """
        a = self.peer_has("dir/a", b"a")
        b = self.peer_has("dir/sub/b", b"b")
        self.peer_has("other", b"o")
        _whiteout(self.full("dir"))
        self.start()
        self.assertEqual(
            sorted(self.entries()), [(REMOVE, "dir/a", a), (REMOVE, "dir/sub/b", b)]
        )

    def test_opaque_directory(self) -> None:
        """
        An opaque directory (a peer's directory deleted and made again)
        hides the lower files beneath it: each is removed, except those
        made again, which replace them.
        """
        a = self.peer_has("dir/a", b"a")
        b = self.peer_has("dir/sub/b", b"b")
        c = self.peer_has("dir/c", b"c")
        self.write("dir/c", b"c again")
        os.setxattr(self.full("dir"), self.prefix + "opaque", b"y")
        self.start()
        self.assertEqual(
            sorted(self.entries()),
            [
                (REMOVE, "dir/a", a),
                (REMOVE, "dir/sub/b", b),
                (REPLACE, "dir/c", c),
            ],
        )

    def test_metacopy_not_indexed(self) -> None:
        """
        A metacopy file (its data still in the lower layer) is never
        indexed.
        """
        self.peer_has("m", b"m" * 100_000)
        with open(self.full("m"), "wb") as f:
            f.truncate(100_000)
        os.setxattr(self.full("m"), self.prefix + "metacopy", b"")
        self.start()
        self.assertEqual(self.entries(), [])

    def test_overlay_xattrs_only(self) -> None:
        """
        The overlay's bookkeeping xattrs on copied-up files and
        directories change nothing: the files are indexed as any.
        """
        old = self.peer_has("d/f", b"f")
        self.write("d/f", b"f2")
        os.setxattr(self.full("d"), self.prefix + "impure", b"y")
        os.setxattr(self.full("d/f"), self.prefix + "origin", b"\x00\xfb")
        self.start()
        self.assertEqual(self.entries(), [(REPLACE, "d/f", old)])

    def test_without_unreal(self) -> None:
        """
        A db that no Unreal opened (no root stored): a file is an Add, a
        whiteout nothing.
        """
        self.peer_has("doc.txt", b"remote")
        self.peer_has("gone.txt", b"gone")
        self.pool.connection.execute("DELETE FROM settings WHERE key = 'unreal.root'")
        self.pool.connection.commit()
        self.write("doc.txt", b"local")
        _whiteout(self.full("gone.txt"))
        self.start()
        self.assertEqual(self.entries(), [(ADD, "doc.txt", None)])


class TrustedOverlayCatchupTests(OverlayCatchupTests):
    """
    The same with the privileged mode's C{trusted.overlay.*} xattrs.
    """

    mode = "trusted"


class OverlayEventTests(_OverlayCase):
    """
    Edits through the overlay seen through (fake) inotify events.
    """

    def setUp(self) -> None:
        super().setUp()
        self.old = self.peer_has("d/doc", b"doc")
        self.other = self.peer_has("d/other", b"other")
        self.watcher = self.start()
        self.fake = self.notifiers[0]

    def test_delete_then_make_again(self) -> None:
        """
        Deleting a peer's file (a whiteout appears) is a Remove; a file
        made in its place afterwards replaces that version; deleting it
        again is a Remove of the new one.
        """
        _whiteout(self.full("d/doc"))
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "d")
        self.settle()
        self.assertEqual(self.entries(), [(REMOVE, "d/doc", self.old)])
        os.unlink(self.full("d/doc"))
        self.write("d/doc", b"doc 2")
        self.fake.emit(self.full("d"), IN_MOVED_TO, "doc")
        self.settle()
        self.assertEqual(self.entries()[1:], [(REPLACE, "d/doc", self.old)])
        new = self.indexed()["d/doc"][2]
        os.unlink(self.full("d/doc"))
        _whiteout(self.full("d/doc"))
        self.fake.emit(self.full("d"), IN_CREATE, "doc")
        self.settle()
        self.assertEqual(self.entries()[2:], [(REMOVE, "d/doc", new)])

    def test_rename_remote_file(self) -> None:
        """
        A peer's file renamed through the overlay (copied up to the new
        name, a whiteout at the old one) is a Remove of the old path and
        an Add of the same version at the new one.
        """
        self.write("d/renamed", b"doc")
        _whiteout(self.full("d/doc"))
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "d")
        self.settle()
        self.assertEqual(
            sorted(self.entries()),
            [(ADD, "d/renamed", None), (REMOVE, "d/doc", self.old)],
        )
        self.assertEqual(self.indexed()["d/renamed"][2], self.old)

    def test_rename_remote_directory_copied(self) -> None:
        """
        A peer's directory renamed with C{redirect_dir=nofollow} (C{mv}
        copies it, then deletes it): an Add per file at the new place, a
        Remove per file at the old one.
        """
        self.write("e/doc", b"doc")
        self.write("e/other", b"other")
        _whiteout(self.full("d"))
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "e")
        self.fake.emit(self.root, IN_CREATE, "d")
        self.settle()
        self.assertEqual(
            sorted(self.entries()),
            [
                (ADD, "e/doc", None),
                (ADD, "e/other", None),
                (REMOVE, "d/doc", self.old),
                (REMOVE, "d/other", self.other),
            ],
        )

    def test_hard_link(self) -> None:
        """
        A hard link made through the overlay from a peer's file (the file
        is copied up, then linked): both names are indexed as independent
        files of the same version; the peers get two files, not a link.
        """
        self.write("d/doc", b"doc")
        os.link(self.full("d/doc"), self.full("link"))
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "d")
        self.fake.emit(self.root, IN_CREATE, "link")
        self.settle()
        self.assertEqual(
            sorted(self.entries()), [(ADD, "d/doc", None), (ADD, "link", None)]
        )
        self.assertEqual(self.indexed()["link"][2], self.old)
        # An edit through either name changes both: two Replaces.
        with open(self.full("link"), "ab") as f:
            f.write(b" edited")
        self.fake.emit(self.full("d"), IN_CREATE, "doc")
        self.fake.emit(self.root, IN_CREATE, "link")
        self.settle()
        self.assertEqual(
            sorted(self.entries()[2:]),
            [(REPLACE, "d/doc", self.old), (REPLACE, "link", self.old)],
        )


class CopyUpOriginTests(_OverlayCase):
    """
    The version a copy-up replaces is the one the Unreal showed when the
    file appeared in the datadir (an arena with an overlay), not the one
    it shows when the file is recorded a stability delay later.
    """

    def setUp(self) -> None:
        super().setUp()
        self.old = self.peer_has("d/doc", b"doc")
        os.makedirs(self.full("d"))
        self.watcher = self.start(mountpoint="/nonexistent-overlay")
        self.fake = self.notifiers[0]

    def test_replace_names_version_seen(self) -> None:
        """
        Another peer's Replace of the same version arriving between the
        copy-up and its record does not make this edit follow it: the
        Replace names the version the copy-up read (two edits of one
        version stay a fork, docs/real.md).
        """
        self.write("d/doc", b"doc, edited here")
        self.fake.emit(self.full("d"), IN_MOVED_TO, "doc")
        self.clock.advance(0)
        theirs = self.peer_has("d/doc", b"doc, edited there", "c", self.old)
        self.assertEqual(self.entries(), [])
        self.settle()
        self.assertEqual(self.entries(), [(REPLACE, "d/doc", self.old)])
        self.assertNotEqual(theirs, self.old)

    def test_new_file_stays_add(self) -> None:
        """
        A file made here where the Unreal showed nothing is an Add, even
        if a peer's file of that name arrived before it was recorded.
        """
        self.write("d/new", b"mine")
        self.fake.emit(self.full("d"), IN_CREATE, "new")
        self.clock.advance(0)
        self.peer_has("d/new", b"theirs", peer="c")
        self.settle()
        self.assertEqual(self.entries(), [(ADD, "d/new", None)])

    def test_without_event_looked_up_when_recorded(self) -> None:
        """
        A file seen without a create or rename event (written in place)
        gets the Unreal's version at the time it is recorded, as before.
        """
        self.write("d/doc", b"doc, edited here")
        self.fake.emit(self.full("d"), IN_CLOSE_WRITE, "doc")
        self.clock.advance(0)
        theirs = self.peer_has("d/doc", b"doc, edited there", "c", self.old)
        self.settle()
        self.assertEqual(self.entries(), [(REPLACE, "d/doc", theirs)])

    def test_reserved_directory_not_indexed(self) -> None:
        """
        Files beneath a top-level C{.realize} (a conflict file of the view
        copied up through the overlay) are never indexed, by events or by
        a scan.
        """
        self.write(".realize/conflicts/d/doc/c-0123", b"x")
        self.write("sub/.realize", b"a file of that name elsewhere")
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, ".realize")
        self.fake.emit(self.root, IN_CREATE | IN_ISDIR, "sub")
        self.settle()
        self.stop(self.watcher)
        self.start()
        self.assertEqual(sorted(self.indexed()), ["sub/.realize"])


class RedirectTests(_OverlayCase):
    """
    Directories renamed with C{redirect_dir=on}: their lower files are
    copied up through the overlay (here a stand-in directory that plays
    the overlay: opening a file for writing there copies it into the
    datadir, as the kernel would).
    """

    mode = "trusted"

    def test_redirected_files_copied_up(self) -> None:
        """
        The lower files of a redirected directory that the datadir lacks
        are opened for writing through the mountpoint; those it has (real
        or whited out) are not.
        """
        self.peer_has("old/a", b"a")
        self.peer_has("old/b", b"b")
        self.peer_has("old/gone", b"g")
        self.peer_has("old/sub/c", b"c")
        os.makedirs(self.full("new"))
        os.setxattr(self.full("new"), self.prefix + "redirect", b"old")
        self.write("new/b", b"b edited")
        _whiteout(self.full("new/gone"))
        opened: list[str] = []
        real_open = os.open

        def fake_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if isinstance(path, str) and path.startswith("/overlay/"):
                self.assertTrue(flags & os.O_WRONLY)
                opened.append(path)
                return real_open(os.devnull, os.O_WRONLY)
            return real_open(path, flags, *args, **kw)

        self.patch(os, "open", fake_open)
        errors = scan.copy_up_redirected(
            self.root, "/overlay", self.db, [("new", "old")]
        )
        self.assertEqual(errors, [])
        self.assertEqual(sorted(opened), ["/overlay/new/a", "/overlay/new/sub/c"])

    def test_scan_reports_redirects(self) -> None:
        """
        The scan reports redirected directories; the watcher without a
        mountpoint warns once and copies nothing.
        """
        os.makedirs(self.full("new"))
        os.setxattr(self.full("new"), self.prefix + "redirect", b"/x/old")
        result = scan.scan_tree(self.root, "", None, self.db)
        self.assertEqual(result.redirects, [("new", "x/old")])
        self.start()
        self.assertTrue(
            any(
                "renamed through an overlay" in str(e.get("log_format"))
                for e in self.events
            )
        )

    def test_whiteout_waits_for_copy_up(self) -> None:
        """
        The Remove of a renamed directory's files (its whiteout) is
        recorded only once the copy-up of the new place has read them:
        the owner would otherwise delete them first.
        """
        old = self.peer_has("old/a", b"a")
        os.makedirs(self.full("new"))
        os.setxattr(self.full("new"), self.prefix + "redirect", b"old")
        _whiteout(self.full("old"))
        self.runner = runner = HeldRunner(scan.copy_up_redirected)
        self.start(mountpoint="/nonexistent-overlay")
        self.assertEqual(self.entries(), [])
        self.assertEqual(len(runner.held), 1)
        runner.release()
        self.clock.advance(0)
        self.assertEqual(self.entries(), [(REMOVE, "old/a", old)])
