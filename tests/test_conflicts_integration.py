"""
Conflicts end to end (issue 13, item 4): three real daemons on loopback,
each with its FUSE view and an overlay: two laptops edit the same version
of the NAS's file at once.  Both versions stay readable on each peer, the
other one listed in C{user.realize.conflicts} and readable under
C{.realize/conflicts/}; writing the chosen content through a laptop's
overlay settles it there.
"""

from __future__ import annotations

import errno
import os
import threading

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from tests.integration import REALIZED, run_command
from tests.peers import Peer, eventually
from tests.test_real_integration import _RealCase, read, write

XATTR = "user.realize.conflicts"


def conflicts(path: str) -> list[str] | None:
    try:
        value = os.getxattr(path, XATTR)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
        return None
    return value.decode("utf-8").split("\n")


class ConflictIntegrationTests(_RealCase):
    """
    A NAS (owns everything) and two laptops that edit one of its files at
    the same time through their overlays.
    """

    def setUp(self) -> None:
        super().setUp()
        self.laptop2 = self.peers.add("laptop2")
        overlay = os.path.join(self.peers.root, "laptop2", "docs")
        os.makedirs(overlay)
        self.laptop2.arena_lines.append(f'mountpoint = "{overlay}"')
        self.overlays["laptop2"] = overlay

    async def start_all(self, seen: str) -> None:
        peers = (self.nas, self.laptop, self.laptop2)
        for peer in peers:
            await peer.start(fuse=True)
        for peer in peers[1:]:
            await eventually(
                lambda peer=peer: os.path.exists(peer.mounted(seen)),
                30,
                f"the NAS's files in the view of {peer.name}",
            )
        for peer in peers:
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
            self.addCleanup(self.unmount, self.ov(peer))

    def conflict_file(self, peer: Peer, name: str) -> str:
        return peer.mounted(f".realize/conflicts/notes.txt/{name}")

    def test_concurrent_edit(self) -> None:
        """
        Both laptops edit the NAS's version within the watcher's stability
        delay: each peer lists one conflict, its view and its conflict
        file read the two contents.  One laptop writes the chosen content
        through its overlay: its listing goes, and its view shows that
        content.
        """
        self.nas.write("notes.txt", b"base\n")
        one, two = self.laptop, self.laptop2
        mine = {one.name: b"base\nfrom one\n", two.name: b"base\nfrom laptop two\n"}

        async def go() -> None:
            await self.start_all("notes.txt")
            for peer in (one, two):
                # Each laptop has the base version in its cache (the
                # copy-up below reads it from there).
                self.assertEqual(
                    await deferToThread(read, self.ov(peer, "notes.txt")), b"base\n"
                )
            barrier = threading.Barrier(2)

            def edit(peer: Peer) -> None:
                barrier.wait()
                write(self.ov(peer, "notes.txt"), mine[peer.name])

            await Deferred.fromCoroutine(
                _both(deferToThread(edit, one), deferToThread(edit, two))
            )
            for peer in (self.nas, one, two):
                names = await eventually(
                    lambda peer=peer: conflicts(peer.mounted("notes.txt")),
                    40,
                    f"a conflict listed on {peer.name}",
                )
                self.assertEqual(len(names), 1, names)
                shown = await deferToThread(read, peer.mounted("notes.txt"))
                other = await deferToThread(read, self.conflict_file(peer, names[0]))
                self.assertEqual({shown, other}, set(mine.values()), peer.name)
                listed = await deferToThread(os.listdir, peer.mounted(""))
                self.assertIn(".realize", listed)
                # Never listed: a copy-up would carry it into the datadir.
                self.assertNotIn(
                    XATTR, await deferToThread(os.listxattr, peer.mounted("notes.txt"))
                )

            # Resolving on the first laptop: the chosen content written
            # through its overlay.
            chosen = b"base\nfrom one\nfrom laptop two\n"
            await deferToThread(write, self.ov(one, "notes.txt"), chosen)
            await eventually(
                lambda: (
                    conflicts(one.mounted("notes.txt")) is None
                    and read(one.mounted("notes.txt")) == chosen
                ),
                40,
                "the conflict settled on the first laptop",
            )
            listed = await deferToThread(os.listdir, one.mounted(""))
            self.assertNotIn(".realize", listed)
            self.assertEqual(
                await deferToThread(os.listdir, one.mounted(".realize/conflicts")),
                [],
            )
            # Nothing of the view's own tree reached a datadir.
            for peer in (self.nas, one, two):
                assert peer.datadir is not None
                self.assertFalse(
                    os.path.exists(os.path.join(peer.datadir, ".realize")), peer.name
                )

        return Deferred.fromCoroutine(go())


async def _both(a: Deferred[None], b: Deferred[None]) -> None:
    await a
    await b
