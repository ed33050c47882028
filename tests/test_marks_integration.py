"""
Marks end to end (issue 12): real daemons on loopback, FUSE views, marks
set with C{setxattr} on the view and on real directories; what lands in
(and leaves) each peer's datadir is checked with ordinary file calls.
"""

from __future__ import annotations

import errno
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.peers import Peer, Peers, eventually, need_fuse

MARK = "user.realize.mark"


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def real_files(peer: Peer) -> dict[str, bytes]:
    """
    @return: every file of a peer's datadir (partial files included) and
        its content.
    """
    assert peer.datadir is not None
    found = {}
    for directory, _, files in os.walk(peer.datadir):
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, peer.datadir)] = read(path)
    return found


def has(peer: Peer, expected: dict[str, bytes]) -> bool:
    """
    @return: whether the peer's datadir holds exactly these files.
    """
    return real_files(peer) == expected


def pause(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


class OwnIntegrationTests(TestCase):
    """
    C{own} set on a directory of b's FUSE view makes its files real files
    in b's datadir, which follow the peers' changes.  Three daemons: a and
    c own their datadirs; b starts empty.
    """

    timeout = 180

    def setUp(self) -> None:
        need_fuse()
        self.peers = Peers(self)
        self.a = self.peers.add("a")
        self.b = self.peers.add("b")
        self.c = self.peers.add("c")
        for peer in (self.a, self.c):
            peer.arena_lines.append('mark = "own"')
        self.a.write("docs/x.txt", b"x from a\n")
        self.a.write("docs/sub/big.bin", os.urandom(3 << 20))
        self.c.write("docs/c.txt", b"from c\n")
        self.c.write("other/not.txt", b"not marked\n")

    async def start_all(self, *b_options: str) -> None:
        await self.a.start()
        await self.c.start()
        await self.b.start(*b_options, fuse=True)
        await eventually(
            lambda: (
                os.path.exists(self.b.mounted("docs/sub/big.bin"))
                and os.path.exists(self.b.mounted("docs/c.txt"))
            ),
            30,
            "the files of a and c in b's view",
        )

    def test_own_realizes_and_follows(self) -> None:
        """
        C{setfattr own} on the view's C{docs}: its files (from a and c) come
        as real files into b's datadir with the right content, the real
        directory shows the mark, the view shows it inherited below, and a
        later change on a is followed.
        """

        async def go() -> None:
            # The files the store finished are one debug event per batch.
            await self.start_all("--log-level", "debug")
            await deferToThread(os.setxattr, self.b.mounted("docs"), MARK, b"own")
            expected = {
                "docs/x.txt": read(os.path.join(self.a.datadir or "", "docs/x.txt")),
                "docs/sub/big.bin": read(
                    os.path.join(self.a.datadir or "", "docs/sub/big.bin")
                ),
                "docs/c.txt": b"from c\n",
            }
            await eventually(lambda: has(self.b, expected), 60, "docs realized on b")
            # Recorded with the hash the job verified: not hashed again.
            await self.b.wait_log(
                b"files finished by the store, recorded without hashing"
            )
            assert self.b.datadir is not None
            self.assertEqual(
                os.getxattr(os.path.join(self.b.datadir, "docs"), MARK), b"own"
            )
            self.assertEqual(
                os.getxattr(self.b.mounted("docs/sub/big.bin"), f"{MARK}.effective"),
                b"own (inherited)",
            )
            self.assertEqual(
                os.getxattr(self.b.mounted("other/not.txt"), f"{MARK}.effective"),
                b"watch (default)",
            )
            await eventually(
                lambda: os.getxattr(
                    self.b.mounted("docs/x.txt"), "user.realize.status"
                ).startswith(b"local"),
                20,
                "x.txt local on b",
            )
            # Realized files still read through the view (from the real
            # copy, no longer from the cache).
            for path, data in expected.items():
                self.assertEqual(read(self.b.mounted(path)), data, path)
            self.a.write("docs/x.txt", b"changed on a\n")
            expected["docs/x.txt"] = b"changed on a\n"
            await eventually(lambda: has(self.b, expected), 60, "the change followed")

        return Deferred.fromCoroutine(go())

    def test_mark_on_missing_path(self) -> None:
        """
        A mark on a path the view does not have: C{ENOENT}; a bad value:
        C{EINVAL}, and a log line.
        """

        async def go() -> None:
            await self.start_all()
            with self.assertRaises(OSError) as missing:
                await deferToThread(
                    os.setxattr, self.b.mounted("docs/nothing"), MARK, b"own"
                )
            self.assertEqual(missing.exception.errno, errno.ENOENT)
            with self.assertRaises(OSError) as bad:
                await deferToThread(os.setxattr, self.b.mounted("docs"), MARK, b"mine")
            self.assertEqual(bad.exception.errno, errno.EINVAL)
            await self.b.wait_log(b"refused user.realize.mark")
            self.assertEqual(real_files(self.b), {})

        return Deferred.fromCoroutine(go())

    def test_kill_during_realize(self) -> None:
        """
        b is killed (SIGKILL) while it realizes: after a restart every file
        is complete at its place with the right content, nothing else is
        in the datadir, and a still has its files.
        """

        async def go() -> None:
            for n in range(6):
                self.a.write(f"docs/bulk/{n}.bin", os.urandom(8 << 20))
            before_a = real_files(self.a)
            await self.start_all()
            await eventually(
                lambda: os.path.exists(self.b.mounted("docs/bulk/5.bin")),
                30,
                "the bulk files in b's view",
            )
            await deferToThread(os.setxattr, self.b.mounted("docs"), MARK, b"own")
            await eventually(
                lambda: len(real_files(self.b)) >= 1, 60, "a first file realized"
            )
            expected = {
                path: data
                for path, data in before_a.items()
                if path.startswith("docs/")
            }
            expected["docs/c.txt"] = b"from c\n"
            await self.b.stop(kill=True)
            # Whatever is there after the kill is complete and right.
            for path, data in real_files(self.b).items():
                self.assertEqual(data, expected[path], path)
            await self.b.start(fuse=True)
            await eventually(lambda: has(self.b, expected), 120, "every file realized")
            # a owns the whole arena: it has c's files too, and its own.
            now_a = real_files(self.a)
            for path, data in before_a.items():
                self.assertEqual(now_a[path], data, path)

        return Deferred.fromCoroutine(go())


class UnrealizeIntegrationTests(TestCase):
    """
    C{watch} set on a real directory of b unrealizes its files into b's
    cache once another peer (a) reports the same versions; the files still
    read through b's view.
    """

    timeout = 180

    def setUp(self) -> None:
        need_fuse()
        self.peers = Peers(self)
        self.a = self.peers.add("a")
        self.b = self.peers.add("b")
        self.c = self.peers.add("c", listens=False, datadir=False)
        self.b.arena_lines.append('mark = "own"')
        self.files = {
            "docs/one.txt": b"one\n",
            "docs/deep/two.bin": os.urandom(2 << 20),
        }
        for path, data in self.files.items():
            self.b.write(path, data)
        self.b.write("kept.txt", b"outside docs\n")

    async def watch_then_share(self, copies: int) -> None:
        if copies != 1:
            self.b.arena_lines.append(f"copies = {copies}")
        await self.b.start(fuse=True)
        await self.a.start(fuse=True)
        await self.c.start()
        assert self.b.datadir is not None
        await eventually(
            lambda: os.path.exists(self.a.mounted("docs/deep/two.bin")),
            30,
            "b's files in a's view",
        )
        os.setxattr(os.path.join(self.b.datadir, "docs"), MARK, b"watch")
        await eventually(
            lambda: os.getxattr(self.b.mounted("docs"), MARK) == b"watch",
            20,
            "the real mark seen on b's view",
        )
        self.assertEqual(
            os.getxattr(self.b.mounted("docs/one.txt"), f"{MARK}.effective"),
            b"watch (inherited)",
        )
        # No other peer has them yet: they stay.
        await pause(8)
        self.assertEqual(
            real_files(self.b), {**self.files, "kept.txt": b"outside docs\n"}
        )
        await deferToThread(os.setxattr, self.a.mounted("docs"), MARK, b"own")
        await eventually(
            lambda: (
                {path: data for path, data in real_files(self.a).items()} == self.files
            ),
            60,
            "docs realized on a",
        )

    def test_watch_unrealizes(self) -> None:
        """
        Once a holds b's versions, b's files marked watch leave b's datadir
        and read back through b's view from the cache.
        """

        async def go() -> None:
            await self.watch_then_share(copies=1)
            await eventually(
                lambda: real_files(self.b) == {"kept.txt": b"outside docs\n"},
                60,
                "docs unrealized on b",
            )
            for path, data in self.files.items():
                self.assertEqual(read(self.b.mounted(path)), data)
            # The unrealize's own Remove queues one more check of each
            # file: it settles as nothing to do.
            await eventually(
                lambda: all(
                    os.getxattr(self.b.mounted(path), "user.realize.status")
                    == b"cached verified"
                    for path in self.files
                ),
                30,
                "docs cached verified on b, no job left",
            )
            await self.b.wait_log(b"unrealized docs/docs/one.txt")

        return Deferred.fromCoroutine(go())

    def test_copies_two(self) -> None:
        """
        With C{copies = 2} and one other peer holding them, nothing is
        unrealized.
        """

        async def go() -> None:
            await self.watch_then_share(copies=2)
            await pause(12)
            self.assertEqual(
                real_files(self.b), {**self.files, "kept.txt": b"outside docs\n"}
            )

        return Deferred.fromCoroutine(go())
