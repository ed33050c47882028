"""
The Unreal end to end (issue 10): three real daemons on loopback, two with
datadirs (a, b, listening), one pure Unreal with a FUSE mount (c, deaf:
it dials the others).  What c's mount shows is read with ordinary file
calls from this process.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.peers import Peers, eventually, need_fuse


def sha256(path: str) -> str:
    return hashlib.sha256(read(path)).hexdigest()


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def listing(root: str) -> dict[str, int]:
    """
    @return: the files under C{root} with their sizes (as C{ls -lR} sees
        them).
    """
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = os.stat(path).st_size
    return found


class UnrealIntegrationTests(TestCase):
    """
    c's FUSE view shows the files of a and b, reads them on demand,
    verified, follows their changes and survives their absence.
    """

    timeout = 120

    def setUp(self) -> None:
        need_fuse()
        self.peers = Peers(self)
        self.a = self.peers.add("a")
        self.b = self.peers.add("b")
        self.c = self.peers.add("c", listens=False, datadir=False)
        self.files = {
            "a.txt": (self.a, b"from a\n"),
            "dir/with space.txt": (self.a, b"a" * 10_000),
            "big/b.bin": (self.b, os.urandom(3 << 20)),
            "dir/b: colon.txt": (self.b, b"from b\n"),
            "empty": (self.b, b""),
        }
        for path, (peer, data) in self.files.items():
            peer.write(path, data)

    async def start_all(self) -> None:
        await self.a.start()
        await self.b.start()
        await self.c.start(fuse=True)
        expected = {path: len(data) for path, (_, data) in self.files.items()}
        await eventually(
            lambda: listing(self.c.mounted()) == expected,
            20,
            "every file of a and b listed in c's view",
        )

    def test_view_reads_and_follows(self) -> None:
        """
        Every file of both peers reads back through c's mount with its
        source's content; a file created, modified and deleted on a
        appears, changes and disappears in the view within seconds.
        """

        async def go() -> None:
            await self.start_all()
            for path, (_, data) in self.files.items():
                self.assertEqual(
                    sha256(self.c.mounted(path)), hashlib.sha256(data).hexdigest()
                )
            self.assertEqual(
                os.getxattr(self.c.mounted("big/b.bin"), "user.realize.status"),
                b"cached verified",
            )
            self.a.write("new.txt", b"new")
            await eventually(
                lambda: os.path.exists(self.c.mounted("new.txt")), 10, "new.txt shown"
            )
            self.a.write("a.txt", b"changed on a\n")
            await eventually(
                lambda: read(self.c.mounted("a.txt")) == b"changed on a\n",
                10,
                "a.txt changed",
            )
            assert self.a.datadir is not None
            os.unlink(os.path.join(self.a.datadir, "new.txt"))
            await eventually(
                lambda: not os.path.exists(self.c.mounted("new.txt")),
                10,
                "new.txt gone",
            )

        return Deferred.fromCoroutine(go())

    def test_peer_down(self) -> None:
        """
        With b killed: the listing still shows b's files, uncached data
        gives EIO quickly, cached data still reads; restarted with both
        peers down, c still lists everything.
        """

        async def go() -> None:
            await self.start_all()
            cached = sha256(self.c.mounted("dir/b: colon.txt"))
            await self.b.stop(kill=True)
            self.assertIn("big/b.bin", listing(self.c.mounted()))
            started = time.monotonic()
            with self.assertRaises(OSError) as caught:
                read(self.c.mounted("big/b.bin"))
            self.assertEqual(caught.exception.errno, errno.EIO)
            self.assertLess(time.monotonic() - started, 10)
            self.assertEqual(sha256(self.c.mounted("dir/b: colon.txt")), cached)
            await self.a.stop(kill=True)
            await self.c.stop()
            await self.c.start(fuse=True)
            expected = {path: len(data) for path, (_, data) in self.files.items()}
            self.assertEqual(listing(self.c.mounted()), expected)
            self.assertEqual(sha256(self.c.mounted("dir/b: colon.txt")), cached)

        return Deferred.fromCoroutine(go())
