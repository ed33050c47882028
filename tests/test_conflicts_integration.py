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

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.peers import Peer, eventually, free_port
from tests.test_real_integration import _RealCase, read, write

XATTR = "user.realize.conflicts"
VERSION = "user.realize.version"


async def read_when_served(path: str, seconds: float = 30.0) -> bytes:
    """
    Read a file of a view once a peer that has its version is connected
    again (until then the read fails with EIO, as it should).
    """
    for _ in range(int(seconds / 0.5)):
        try:
            data: bytes = await deferToThread(read, path)
            return data
        except OSError as e:
            if e.errno != errno.EIO:
                raise
        await deferLater(reactor, 0.5, lambda: None)
    data = await deferToThread(read, path)
    return data


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
        # Dials out only: it can be cut off from the others by a restart
        # with wrong addresses, and joined again by a SIGHUP.
        self.laptop2 = self.peers.add("laptop2", listens=False)
        overlay = os.path.join(self.peers.root, "laptop2", "docs")
        os.makedirs(overlay)
        self.laptop2.arena_lines.append(f'mountpoint = "{overlay}"')
        self.overlays["laptop2"] = overlay

    async def start_isolated(self, peer: Peer) -> None:
        """
        Restart a peer with addresses that lead nowhere for the others.
        """
        self.unmount(self.ov(peer))
        await peer.stop()
        others = [p for p in self.peers.all if p is not peer and p.port is not None]
        ports = [p.port for p in others]
        try:
            for other in others:
                other.port = free_port()
            await peer.start(fuse=True)
        finally:
            for other, port in zip(others, ports, strict=True):
                other.port = port
        await self.mount(peer)

    def conflict_file(self, peer: Peer, name: str) -> str:
        return peer.mounted(f".realize/conflicts/notes.txt/{name}")

    async def one_conflict(self, peer: Peer, contents: set[bytes]) -> None:
        """
        Wait until C{notes.txt} lists one conflict on a peer, then check
        that its view and the conflict file read the two C{contents}.
        """
        names = await eventually(
            lambda: conflicts(peer.mounted("notes.txt")),
            40,
            f"a conflict listed on {peer.name}",
        )
        self.assertEqual(len(names), 1, names)
        # Perhaps just joined again: the holders may still be connecting.
        shown = await read_when_served(peer.mounted("notes.txt"))
        other = await read_when_served(self.conflict_file(peer, names[0]))
        self.assertEqual({shown, other}, contents, peer.name)

    def test_concurrent_edit(self) -> None:
        """
        Two laptops edit the NAS's version while they cannot see each
        other's edit (one is cut off, then joins again): each of the
        three peers lists one conflict, its view and its conflict file
        read the two contents.  One laptop writes the chosen content
        through its overlay: its listing goes, and its view shows that
        content.
        """
        self.nas.write("notes.txt", b"base\n")
        one, two = self.laptop, self.laptop2
        mine = {one.name: b"base\nfrom one\n", two.name: b"base\nfrom laptop two\n"}

        async def go() -> None:
            peers = (self.nas, one, two)
            for peer in peers:
                await peer.start(fuse=True)
            for peer in (one, two):
                await eventually(
                    lambda peer=peer: os.path.exists(peer.mounted("notes.txt")),
                    30,
                    f"the NAS's files in the view of {peer.name}",
                )
                # The base version in its cache: the copy-up reads it there.
                self.assertEqual(
                    await deferToThread(read, peer.mounted("notes.txt")), b"base\n"
                )
            # The others follow the history of the laptop cut off below
            # (a first subscription is a catch-up, which lists no
            # conflict: docs/real.md), so that its edit comes back as a
            # Replace.
            two.write("two.txt", b"two\n")
            for peer in (self.nas, one):
                await eventually(
                    lambda peer=peer: os.path.exists(peer.mounted("two.txt")),
                    30,
                    f"two.txt in the view of {peer.name}",
                )
            await self.mount(self.nas)
            await self.mount(one)
            await self.start_isolated(two)
            base = os.getxattr(self.nas.mounted("notes.txt"), VERSION)

            await deferToThread(write, self.ov(two, "notes.txt"), mine[two.name])
            await eventually(
                lambda: os.getxattr(two.mounted("notes.txt"), VERSION) != base,
                30,
                "the cut-off laptop's edit in its own view",
            )
            await deferToThread(write, self.ov(one, "notes.txt"), mine[one.name])
            await self.on_disk(self.nas, "notes.txt", mine[one.name])
            # Joined again: each side learns of the other's edit.
            two.config()
            two.transport.signalProcess("HUP")

            for peer in peers:
                await self.one_conflict(peer, set(mine.values()))
                listed = await deferToThread(os.listdir, peer.mounted(""))
                self.assertIn(".realize", listed)
                # Never listed: a copy-up would carry it into the datadir.
                self.assertNotIn(
                    XATTR, await deferToThread(os.listxattr, peer.mounted("notes.txt"))
                )
            # The owner kept the first version it saw on its disk.
            self.assertEqual(self.disk(self.nas, "notes.txt"), mine[one.name])

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
            for peer in peers:
                assert peer.datadir is not None
                self.assertFalse(
                    os.path.exists(os.path.join(peer.datadir, ".realize")), peer.name
                )

        return Deferred.fromCoroutine(go())

    def test_owner_edits_meanwhile(self) -> None:
        """
        The NAS edits its real file through its overlay while the laptop
        is still writing its edit of the same version (copied up before
        the NAS's edit reached it, recorded after): the laptop's edit is a
        Replace of the version its copy-up read, not of the NAS's, so both
        peers list a conflict and the NAS keeps its own edit on its disk.
        """
        self.nas.write("notes.txt", b"base\n")
        laptop, nas = self.laptop, self.nas
        ours = b"base\nfrom the NAS\n"

        async def go() -> None:
            await self.start("notes.txt")
            self.assertEqual(
                await deferToThread(read, laptop.mounted("notes.txt")), b"base\n"
            )
            base = os.getxattr(laptop.mounted("notes.txt"), VERSION)
            f = await deferToThread(open, self.ov(laptop, "notes.txt"), "ab")
            try:
                written = b"base\nfrom the laptop"

                def more(data: bytes) -> None:
                    f.write(data)
                    f.flush()

                await deferToThread(more, written[len(b"base\n") :])
                await deferToThread(write, self.ov(nas, "notes.txt"), ours)
                # Each write restarts the laptop's stability delay: its
                # edit is recorded only after the NAS's is in its view.
                for _ in range(120):
                    if os.getxattr(laptop.mounted("notes.txt"), VERSION) != base:
                        break
                    await deferToThread(more, b".")
                    written += b"."
                    await deferLater(reactor, 0.25, lambda: None)
                else:
                    self.fail("the NAS's edit never reached the laptop's view")
            finally:
                await deferToThread(f.close)
            for peer in (nas, laptop):
                await self.one_conflict(peer, {ours, written})
            self.assertEqual(self.disk(nas, "notes.txt"), ours)
            self.assertEqual(self.disk(laptop, "notes.txt"), written)

        return Deferred.fromCoroutine(go())
