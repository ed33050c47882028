"""
The block cache end to end (issue 11): real daemons on loopback, a pure
Unreal (c) with a FUSE mount and a small quota reading the files of a
peer with a datadir (a), while the disk usage of c's blobs is sampled.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from realize.storage.cache import tolerance
from tests.peers import Peers, eventually, need_fuse

MIB = 1 << 20

#: realized with files marked keep by path.
KEEP_DAEMON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keep_daemon.py")

#: The status xattr of the FUSE view.
STATUS = "user.realize.status"


def du(directory: str) -> int:
    """
    @return: the disk usage of a directory's files (C{du} without the
        directory itself), bytes.
    """
    total = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(os.path.join(directory, name)).st_blocks * 512
    return total


def content(path: str, size: int) -> bytes:
    """
    Bytes that differ from file to file.
    """
    seed = hashlib.sha256(path.encode()).digest()
    block = hashlib.sha256(seed).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def listing(root: str) -> dict[str, int]:
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = os.stat(path).st_size
    return found


class CacheIntegrationTests(TestCase):
    """
    c reads through its FUSE mount more than its quota holds.
    """

    timeout = 180

    def setUp(self) -> None:
        need_fuse()
        self.peers = Peers(self)
        self.a = self.peers.add("a")
        self.c = self.peers.add("c", listens=False, datadir=False)
        self.files: dict[str, bytes] = {}

    def write(self, path: str, size: int) -> None:
        data = content(path, size)
        self.files[path] = data
        self.a.write(path, data)

    async def start(self, quota: int, **env: str) -> None:
        self.quota = quota
        self.c.cache = {"size": str(quota), "min_free": "0"}
        if env:
            os.environ.update(env)
            for key in env:
                self.addCleanup(os.environ.pop, key, None)
            self.c.command = [sys.executable, KEEP_DAEMON]
        await self.a.start()
        await self.c.start(fuse=True)
        expected = {path: len(data) for path, data in self.files.items()}
        await eventually(
            lambda: listing(self.c.mounted()) == expected,
            30,
            "every file of a listed in c's view",
        )

    @property
    def blobs(self) -> str:
        return os.path.join(self.c.workdir, "blobs")

    def read(self, paths: list[str], sample: Callable[[], Any]) -> dict[str, str]:
        """
        Read files through c's mount in pieces, sampling after each piece
        (blocking: run it in a thread, never in this test's reactor).

        @return: the SHA-256 of each file read.
        """
        digests = {}
        for path in paths:
            h = hashlib.sha256()
            with open(self.c.mounted(path), "rb") as f:
                while chunk := f.read(256 << 10):
                    h.update(chunk)
                    sample()
            digests[path] = h.hexdigest()
        return digests

    def status(self, path: str) -> str:
        return os.getxattr(self.c.mounted(path), STATUS).decode()

    def assert_within_quota(self, usages: list[int]) -> None:
        self.assertTrue(usages)
        self.assertLessEqual(
            max(usages),
            self.quota + tolerance(self.quota),
            f"du of blobs/ peaked at {max(usages)} for a quota of {self.quota}",
        )

    async def test_quota_while_reading(self) -> None:
        """
        Reading three times the quota: every file reads back right, and the
        disk usage of the blobs, sampled while reading, never passes the
        quota plus the tolerance.
        """
        for i in range(24):
            self.write(f"f{i:02}.bin", MIB)
        await self.start(8 * MIB)
        usages: list[int] = []
        digests = await deferToThread(
            self.read, sorted(self.files), lambda: usages.append(du(self.blobs))
        )
        for path, digest in digests.items():
            self.assertEqual(digest, hashlib.sha256(self.files[path]).hexdigest())
        self.assert_within_quota(usages)
        self.assertGreater(max(usages), self.quota // 2)
        # The most recent files are still cached.
        self.assertEqual(await deferToThread(self.status, "f23.bin"), "cached verified")
        self.assertEqual(await deferToThread(self.status, "f00.bin"), "remote")

    async def test_keep_survives_scan(self) -> None:
        """
        A file marked keep (here by a stand-in for the marks) survives a scan
        of many watch files through a cache smaller than the scan: it is
        protected, and still reads with its peer gone.
        """
        self.write("keep/k.bin", 2 * MIB)
        for i in range(30):
            self.write(f"scan/s{i:02}.bin", MIB)
        await self.start(8 * MIB, REALIZE_TEST_KEEP="keep/k.bin")
        usages: list[int] = []
        await deferToThread(self.read, ["keep/k.bin"], lambda: None)
        await deferToThread(
            self.read,
            sorted(p for p in self.files if p.startswith("scan/")),
            lambda: usages.append(du(self.blobs)),
        )
        self.assert_within_quota(usages)
        self.assertEqual(await deferToThread(self.status, "keep/k.bin"), "protected")
        self.assertEqual(await deferToThread(self.status, "scan/s00.bin"), "remote")
        await self.a.stop()
        digests = await deferToThread(self.read, ["keep/k.bin"], lambda: None)
        self.assertEqual(
            digests["keep/k.bin"],
            hashlib.sha256(self.files["keep/k.bin"]).hexdigest(),
        )

    async def test_large_file(self) -> None:
        """
        A file three times larger than the working area reads back with the
        right hash, through a bounded window: the blobs stay within the
        quota and the small files cached before survive.
        """
        small = [f"small/{i}.bin" for i in range(5)]
        for path in small:
            self.write(path, MIB)
        self.write("big.bin", 48 * MIB)
        await self.start(16 * MIB)
        await deferToThread(self.read, small, lambda: None)
        for path in small:
            self.assertEqual(await deferToThread(self.status, path), "cached verified")
        usages: list[int] = []
        digests = await deferToThread(
            self.read, ["big.bin"], lambda: usages.append(du(self.blobs))
        )
        self.assertEqual(
            digests["big.bin"], hashlib.sha256(self.files["big.bin"]).hexdigest()
        )
        self.assert_within_quota(usages)
        for path in small:
            self.assertEqual(await deferToThread(self.status, path), "cached verified")

    async def test_sighup_quota(self) -> None:
        """
        A smaller quota given by SIGHUP takes effect at once: the blobs
        shrink to it.
        """
        for i in range(10):
            self.write(f"f{i}.bin", MIB)
        await self.start(12 * MIB)
        await deferToThread(self.read, sorted(self.files), lambda: None)
        self.assertGreater(du(self.blobs), 9 * MIB)
        self.quota = 3 * MIB
        self.c.cache["size"] = str(self.quota)
        self.c.config()
        self.c.transport.signalProcess("HUP")
        await eventually(
            lambda: du(self.blobs) <= self.quota,
            10,
            "the blobs within the new quota",
        )
        self.assertEqual(await deferToThread(self.status, "f9.bin"), "cached verified")

    async def test_kill_during_eviction(self) -> None:
        """
        c killed (SIGKILL) while it evicts: after a restart, the blob files
        and rows agree, and the files still read back right.
        """
        for i in range(30):
            self.write(f"f{i:02}.bin", MIB)
        await self.start(4 * MIB)
        killed = False

        def kill_midway() -> None:
            nonlocal killed
            if not killed and du(self.blobs) >= 3 * MIB:
                killed = True
                self.c.transport.signalProcess("KILL")

        reading = deferToThread(self.read, sorted(self.files), kill_midway)
        # The reads fail once c is gone.
        await reading.addErrback(lambda _: None)
        self.assertTrue(killed)
        await self.c.stop(kill=True)
        await self.c.start(fuse=True)
        await eventually(
            lambda: listing(self.c.mounted()) != {}, 30, "c's view listed again"
        )
        db = sqlite3.connect(os.path.join(self.c.workdir, "arena.db"))
        self.addCleanup(db.close)
        rows = {str(row[0]) for row in db.execute("SELECT id FROM blob")}
        files = set(os.listdir(self.blobs))
        self.assertEqual(rows, files)
        queues = {row[0] for row in db.execute("SELECT queue FROM blob")}
        self.assertNotIn("deleting", queues)
        digests = await deferToThread(self.read, sorted(self.files)[-3:], lambda: None)
        for path, digest in digests.items():
            self.assertEqual(digest, hashlib.sha256(self.files[path]).hexdigest())
