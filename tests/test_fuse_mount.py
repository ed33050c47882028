"""
Integration tests of the FUSE view: a real mount (L{FuseService} over a
L{MemoryBackend}) in a temporary directory, served in a real reactor, used
by other processes (the serving process never touches its own mount).

Every test unmounts what it mounts, even when it fails.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import threadable
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from realize.errors import ConfigError, IOFailure
from realize.fuse.bridge import DEADLINE, Bridge
from realize.fuse.memory import ROOT_INODE, MemoryBackend
from realize.fuse.service import (
    FUSERMOUNT,
    READ_AHEAD_KB,
    FuseService,
    _unescape,
    mount_device,
    mounted_filesystem,
)

reactor: Any = _reactor

MTIME = 1_700_000_000_123_456_789

#: A script run in another process: mount a MemoryBackend and wait to be
#: killed (to leave a stale mount behind).
_MOUNT_AND_WAIT = """
import os, sys, threading
from realize.fuse.libfuse import RealizeFUSE
from realize.fuse.memory import MemoryBackend
from realize.fuse.ops import RealizeOperations
ops = RealizeOperations(MemoryBackend(), os.getuid(), os.getgid())
RealizeFUSE(ops, sys.argv[1], raw_fi=True, foreground=True, fsname="stale")
"""


#: A daemon in another process, started as twistd starts services (before
#: the reactor runs and installs its signal handlers): serves a
#: MemoryBackend until SIGTERM.
_DAEMON = """
import sys
from twisted.internet import reactor
from realize.fuse.bridge import Bridge
from realize.fuse.memory import ROOT_INODE, MemoryBackend
from realize.fuse.service import FuseService
backend = MemoryBackend()
backend.add_file(ROOT_INODE, "hello", b"hello")
service = FuseService(backend, sys.argv[1], reactor, Bridge(reactor))
service.startService()
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
service.when_mounted().addCallback(lambda _: print("mounted", flush=True))
reactor.run()
print("stopped", flush=True)
"""


def _skip_without_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise SkipTest("/dev/fuse is missing (no FUSE in this kernel or container)")
    if shutil.which(FUSERMOUNT) is None:
        raise SkipTest(f"{FUSERMOUNT} is missing (apt-get install fuse3)")
    try:
        import realize.fuse.libfuse  # noqa: F401
    except OSError as e:
        raise SkipTest(f"libfuse cannot be loaded: {e}") from None


def _force_unmount(mountpoint: str) -> None:
    # Last resort of every test: nothing stays mounted.
    if mounted_filesystem(mountpoint) is not None:
        subprocess.run([FUSERMOUNT, "-uz", mountpoint], check=False, timeout=10)


def _signals_caught() -> int:
    """
    Which of SIGHUP, SIGINT and SIGTERM the process catches (a mask of
    /proc/self/status's SigCgt: the handlers really installed, Python's or
    C's).
    """
    mask = 0
    for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        mask |= 1 << (s - 1)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16) & mask
    raise AssertionError("no SigCgt in /proc/self/status")


class FuseMountIntegrationTests(TestCase):
    """
    A real mount, used by other processes.
    """

    timeout = 60

    def setUp(self) -> None:
        _skip_without_fuse()
        self.mountpoint = os.path.abspath(self.mktemp())
        os.makedirs(self.mountpoint)
        self.addCleanup(_force_unmount, self.mountpoint)
        self.backend = MemoryBackend()
        self.photos = self.backend.mkdir(ROOT_INODE, "photos", mtime_ns=MTIME)
        self.year = self.backend.mkdir(self.photos, "2024")
        self.a = self.backend.add_file(
            self.year, "a.jpg", b"A" * 10_000, mtime_ns=MTIME, version="h1"
        )
        self.c = self.backend.add_file(
            self.photos, "c.txt", b"not verified", verified=False
        )
        self.remote = self.backend.add_file(self.photos, "remote.bin", None, size=4096)

    async def mount(
        self, deadline: float = DEADLINE, mountpoint: str | None = None
    ) -> FuseService:
        bridge = Bridge(reactor, deadline=deadline)
        service = FuseService(
            self.backend, mountpoint or self.mountpoint, reactor, bridge
        )
        self.bridge = bridge
        service.startService()
        self.addCleanup(self.stop, service)
        await service.when_mounted()
        return service

    async def stop(self, service: FuseService) -> None:
        if service.running:
            await service.stopService()

    def path(self, *names: str) -> str:
        return os.path.join(self.mountpoint, *names)

    async def command(self, *argv: str) -> tuple[str, str, int]:
        out, err, code = await getProcessOutputAndValue(
            argv[0], argv[1:], env=os.environ
        )
        return out.decode(), err.decode(), code

    async def python(self, script: str, *args: str) -> Any:
        """
        Run a Python script in another process; return the JSON it prints.
        """
        out, err, code = await self.command(sys.executable, "-c", script, *args)
        self.assertEqual(code, 0, err)
        return json.loads(out)

    async def errno_of(self, script: str, *args: str) -> int:
        """
        Run a statement that should fail; return its errno (0 if none).
        """
        wrapped = (
            "import errno, json, os, sys\n"
            "try:\n"
            f"    {script}\n"
            "except OSError as e:\n"
            "    print(json.dumps(e.errno))\n"
            "else:\n"
            "    print(0)\n"
        )
        result: int = await self.python(wrapped, *args)
        return result

    async def test_attributes(self) -> None:
        """
        Files and directories show their inode, size and mtime, the
        daemon's owner, modes 0664 and 0775.
        """
        await self.mount()
        script = (
            "import json, os, sys\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "    st = os.stat(p)\n"
            "    out[p] = [st.st_ino, st.st_mode, st.st_uid, st.st_gid,"
            " st.st_size, st.st_mtime_ns]\n"
            "print(json.dumps(out))\n"
        )
        a, photos = self.path("photos", "2024", "a.jpg"), self.path("photos")
        found = await self.python(script, a, photos, self.mountpoint)
        uid, gid = os.getuid(), os.getgid()
        self.assertEqual(found[a], [self.a, 0o100664, uid, gid, 10_000, MTIME])
        self.assertEqual(found[photos], [self.photos, 0o40775, uid, gid, 0, MTIME])
        self.assertEqual(found[self.mountpoint][:2], [ROOT_INODE, 0o40775])

    async def test_listing_with_attributes(self) -> None:
        """
        C{ls -lR} lists everything with the attributes sent in the listing
        (readdirplus): on a fresh mount it costs no lookup per file.
        """
        for i in range(50):
            self.backend.add_file(self.year, f"f{i:02}", b"x" * i)
        await self.mount()
        out, err, code = await self.command("ls", "-lR", self.mountpoint)
        self.assertEqual(code, 0, err)
        self.assertIn("-rw-rw-r-- 1", out)
        self.assertIn("drwxrwxr-x 1", out)
        self.assertIn(" 49 ", out)  # f49's size
        self.assertIn("f49", out)
        self.assertIn("remote.bin", out)
        self.assertLess(self.backend.calls["lookup"], 10, self.backend.calls)

    async def test_read(self) -> None:
        """
        File data reads back through the mount.
        """
        await self.mount()
        script = (
            "import json, sys\n"
            "print(json.dumps(open(sys.argv[1], 'rb').read().decode()))\n"
        )
        self.assertEqual(
            await self.python(script, self.path("photos", "2024", "a.jpg")),
            "A" * 10_000,
        )
        self.assertEqual(
            await self.python(script, self.path("photos", "c.txt")), "not verified"
        )

    async def test_keep_cache(self) -> None:
        """
        A complete verified file is read from the page cache the second
        time (the backend is not asked again); one not verified is read
        from the backend each time.
        """
        await self.mount()
        script = "import sys; open(sys.argv[1], 'rb').read(); print(0)"
        verified = self.path("photos", "2024", "a.jpg")
        unverified = self.path("photos", "c.txt")
        await self.python(script, verified)
        reads = self.backend.calls["read"]
        await self.python(script, verified)
        self.assertEqual(self.backend.calls["read"], reads)
        await self.python(script, unverified)
        reads = self.backend.calls["read"]
        await self.python(script, unverified)
        self.assertGreater(self.backend.calls["read"], reads)

    async def test_read_only(self) -> None:
        """
        Data and names are read-only (EROFS), but the mount is not C{ro}.
        """
        await self.mount()
        a = self.path("photos", "2024", "a.jpg")
        for statement in (
            "open(sys.argv[1], 'r+b')",
            "open(sys.argv[1], 'ab')",
            "open(sys.argv[1] + '.new', 'wb')",
            "os.unlink(sys.argv[1])",
            "os.rename(sys.argv[1], sys.argv[1] + '.moved')",
            "os.mkdir(sys.argv[1] + '.d')",
            "os.chmod(sys.argv[1], 0o600)",
            "os.truncate(sys.argv[1], 0)",
            "os.utime(sys.argv[1], (0, 0))",
        ):
            self.assertEqual(await self.errno_of(statement, a), errno.EROFS, statement)
        with open("/proc/self/mountinfo") as f:
            [line] = [line for line in f if f" {self.mountpoint} " in line]
        self.assertIn(" rw,", line)
        self.assertIn("fuse.realize", line)

    async def test_xattrs(self) -> None:
        """
        The mark is set, read, listed and removed through the mount; the
        version and status are read by name and cannot be set.
        """
        await self.mount()
        a = self.path("photos", "2024", "a.jpg")
        script = (
            "import json, os, sys\n"
            "p = sys.argv[1]\n"
            "before = os.listxattr(p)\n"
            "os.setxattr(p, 'user.realize.mark', b'keep')\n"
            "print(json.dumps([before, os.listxattr(p),"
            " os.getxattr(p, 'user.realize.mark').decode(),"
            " os.getxattr(p, 'user.realize.version').decode(),"
            " os.getxattr(p, 'user.realize.status').decode()]))\n"
        )
        found = await self.python(script, a)
        self.assertEqual(
            found,
            [[], ["user.realize.mark"], "keep", "h1", "cached verified"],
        )
        self.assertEqual(self.backend.mark(self.a), "keep")
        self.assertEqual(
            await self.errno_of(
                "os.setxattr(sys.argv[1], 'user.realize.version', b'x')", a
            ),
            errno.EROFS,
        )
        self.assertEqual(
            await self.errno_of(
                "os.setxattr(sys.argv[1], 'user.realize.mark', b'bogus')", a
            ),
            errno.EINVAL,
        )
        self.assertEqual(
            await self.errno_of("os.removexattr(sys.argv[1], 'user.realize.mark')", a),
            0,
        )
        self.assertIsNone(self.backend.mark(self.a))

    async def test_read_ahead(self) -> None:
        """
        Where the daemon may (root), the mount's kernel read-ahead is raised
        to L{READ_AHEAD_KB}, so that sequential reads come in 1 MiB
        requests; with C{read_ahead_kb=None} the kernel's default stays.
        """
        service = await self.mount()
        device = mount_device(self.mountpoint)
        assert device is not None
        knob = f"/sys/class/bdi/{device}/read_ahead_kb"
        if not os.access(knob, os.W_OK):
            raise SkipTest(f"{knob} is not writable by this user")
        with open(knob) as f:
            self.assertEqual(int(f.read()), READ_AHEAD_KB)
        await self.stop(service)
        bridge = Bridge(reactor)
        service = FuseService(
            self.backend, self.mountpoint, reactor, bridge, read_ahead_kb=None
        )
        service.startService()
        self.addCleanup(self.stop, service)
        await service.when_mounted()
        device = mount_device(self.mountpoint)
        with open(f"/sys/class/bdi/{device}/read_ahead_kb") as f:
            self.assertLess(int(f.read()), READ_AHEAD_KB)

    async def test_statfs(self) -> None:
        """
        C{statvfs} of the mount shows the backend's space.
        """
        await self.mount()
        script = (
            "import json, os, sys\n"
            "st = os.statvfs(sys.argv[1])\n"
            "print(json.dumps([st.f_frsize * st.f_blocks, st.f_frsize * st.f_bavail]))"
        )
        total, free = await self.python(script, self.mountpoint)
        self.assertEqual(total, self.backend.space.total_bytes)
        self.assertEqual(free, self.backend.space.free_bytes)

    async def test_remote_read_through_reactor(self) -> None:
        """
        Data not cached is fetched by the reactor (through the bridge), and
        read back.
        """
        threads: list[bool] = []

        def download(inode: int, offset: int, size: int) -> Deferred[bytes]:
            threads.append(threadable.isInIOThread())
            return deferLater(reactor, 0.01, lambda: b"r" * size)

        self.backend.fetch = lambda *args: self.bridge.call(download, *args)
        await self.mount()
        script = "import json, sys; print(len(open(sys.argv[1], 'rb').read()))"
        self.assertEqual(
            await self.python(script, self.path("photos", "remote.bin")), 4096
        )
        self.assertTrue(threads)
        self.assertTrue(all(threads))

    async def test_deadline(self) -> None:
        """
        Data no peer has: the read fails with EIO once the deadline
        passes; it does not hang, and the mount still serves.
        """
        self.backend.fetch = lambda *args: self.bridge.call(Deferred)
        await self.mount(deadline=0.5)
        started = time.monotonic()
        code = await self.errno_of(
            "open(sys.argv[1], 'rb').read()", self.path("photos", "remote.bin")
        )
        self.assertEqual(code, errno.EIO)
        self.assertLess(time.monotonic() - started, DEADLINE)
        out, err, status = await self.command("ls", self.path("photos"))
        self.assertEqual(status, 0, err)
        self.assertIn("remote.bin", out)

    async def test_stop_during_read(self) -> None:
        """
        A read waiting on the reactor when the daemon stops gets EIO at
        once, not at the deadline; the mount is then gone and the FUSE
        thread has returned.
        """
        waiting: Deferred[None] = Deferred()

        def download(inode: int, offset: int, size: int) -> Deferred[bytes]:
            waiting.callback(None)
            return Deferred()

        self.backend.fetch = lambda *args: self.bridge.call(download, *args)
        service = await self.mount()
        reader = self.errno_of(
            "open(sys.argv[1], 'rb').read()", self.path("photos", "remote.bin")
        )
        reading = Deferred.fromCoroutine(reader)
        await waiting
        started = time.monotonic()
        await service.stopService()
        self.assertEqual(await reading, errno.EIO)
        self.assertLess(time.monotonic() - started, DEADLINE / 2)
        self.assertIsNone(mounted_filesystem(self.mountpoint))
        self.assertFalse(service.is_serving())

    async def test_unmount_on_stop(self) -> None:
        """
        Stopping the service unmounts (while a file is held open by
        another process: lazily) and the FUSE thread returns.
        """
        service = await self.mount()
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; f = open(sys.argv[1]); print(1, flush=True);"
                " sys.stdin.read()",
                self.path("photos", "2024", "a.jpg"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.addCleanup(holder.wait)
        self.addCleanup(holder.kill)
        assert holder.stdout is not None
        await deferLater(reactor, 0, lambda: None)
        self.assertEqual(holder.stdout.readline(), b"1\n")
        stopping = service.stopService()
        await deferLater(reactor, 0.2, lambda: None)
        self.assertIsNone(mounted_filesystem(self.mountpoint))
        assert holder.stdin is not None
        holder.stdin.close()
        await stopping
        self.assertFalse(service.is_serving())

    async def test_invalidate(self) -> None:
        """
        The kernel keeps attributes (long timeouts) until the daemon
        invalidates the path: then a new version shows, and a removed file
        is gone.  A new file shows at once.
        """
        service = await self.mount()
        a = self.path("photos", "2024", "a.jpg")
        script = (
            "import json, os, sys\n"
            "out = []\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n"
            "        out.append([os.stat(p).st_size, open(p, 'rb').read().decode()])\n"
            "    except OSError as e:\n"
            "        out.append(e.errno)\n"
            "print(json.dumps(out))\n"
        )
        sizes = "import json, os, sys; print(json.dumps(os.stat(sys.argv[1]).st_size))"
        self.assertEqual(await self.python(sizes, a), 10_000)
        self.backend.replace(self.a, b"new version", mtime_ns=MTIME + 1, version="h2")
        self.assertEqual(await self.python(sizes, a), 10_000)
        await service.invalidate("photos/2024/a.jpg")
        self.assertEqual(await self.python(script, a), [[11, "new version"]])

        self.backend.remove(self.year, "a.jpg")
        await service.invalidate("photos/2024/a.jpg")
        self.assertEqual(await self.python(script, a), [errno.ENOENT])

        self.backend.add_file(self.year, "b.jpg", b"B")
        self.assertEqual(
            await self.python(script, self.path("photos", "2024", "b.jpg")), [[1, "B"]]
        )
        out, _, _ = await self.command("ls", self.path("photos", "2024"))
        self.assertEqual(out.split(), ["b.jpg"])

    async def test_invalidate_unknown(self) -> None:
        """
        Invalidating a path the kernel never saw, or after the unmount, is
        harmless.
        """
        service = await self.mount()
        await service.invalidate("photos/never/seen")
        await service.stopService()
        await service.invalidate("photos/2024/a.jpg")

    async def test_process_state(self) -> None:
        """
        libfuse's changes to the process are undone once mounted: the
        working directory is back, and the signals it took are the
        process's again.
        """
        cwd = os.getcwd()
        caught = _signals_caught()
        await self.mount()
        self.assertEqual(os.getcwd(), cwd)
        self.assertEqual(_signals_caught(), caught)

    async def test_thread_states_kept(self) -> None:
        """
        Each libfuse worker thread keeps its Python thread state from one
        callback to the next: a C{threading.local()} set in one is there
        in the next (per-thread resources, like a read-only sqlite
        connection, are kept).
        """
        local = threading.local()
        seen: list[int] = []

        class Counting(MemoryBackend):
            def lookup(self, parent: int, name: str) -> Any:
                local.calls = getattr(local, "calls", 0) + 1
                if name.startswith("missing"):  # the last of a stat's lookups
                    seen.append(local.calls)
                return super().lookup(parent, name)

        self.backend = Counting()
        photos = self.backend.mkdir(ROOT_INODE, "photos")
        self.backend.mkdir(photos, "2024")
        await self.mount()
        script = (
            "import json, os, sys\n"
            "for p in sys.argv[1:]:\n"
            "    print(json.dumps(os.path.exists(p)))\n"
        )
        paths = [self.path("photos", "2024", f"missing{i}") for i in range(20)]
        out, err, code = await self.command(sys.executable, "-c", script, *paths)
        self.assertEqual((out.split(), code), (["false"] * 20, 0), err)
        # One stat is three lookups (photos, 2024, missingN): a thread state
        # made afresh per callback never counts more.
        self.assertEqual(len(seen), 20)
        self.assertGreater(max(seen), 3)

    async def test_sigterm(self) -> None:
        """
        A daemon started as twistd starts it stops on SIGTERM (libfuse did
        not take the signal over), and leaves nothing mounted.
        """
        daemon = subprocess.Popen(
            [sys.executable, "-c", _DAEMON, self.mountpoint],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(daemon.wait)
        self.addCleanup(daemon.kill)
        assert daemon.stdout is not None
        line = await deferLater(reactor, 0, daemon.stdout.readline)
        self.assertEqual(line, b"mounted\n")
        out, err, code = await self.command("cat", self.path("hello"))
        self.assertEqual((out, code), ("hello", 0), err)
        daemon.send_signal(signal.SIGTERM)
        started = time.monotonic()
        while daemon.poll() is None and time.monotonic() - started < 20:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(daemon.returncode, 0)
        self.assertEqual(daemon.stdout.read(), b"stopped\n")
        self.assertIsNone(mounted_filesystem(self.mountpoint))

    async def test_stale_mount(self) -> None:
        """
        A mount left by a daemon that died (it answers ENOTCONN) is
        cleared at start, and the mount serves.
        """
        stale = subprocess.Popen(
            [sys.executable, "-c", _MOUNT_AND_WAIT, self.mountpoint],
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(stale.wait)
        self.addCleanup(stale.kill)
        for _ in range(200):
            if mounted_filesystem(self.mountpoint) is not None:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(mounted_filesystem(self.mountpoint), "fuse")
        os.kill(stale.pid, signal.SIGKILL)
        await deferLater(reactor, 0, stale.wait)
        self.assertEqual(
            await self.errno_of("os.stat(sys.argv[1])", self.mountpoint),
            errno.ENOTCONN,
        )
        await self.mount()
        self.assertEqual(mounted_filesystem(self.mountpoint), "fuse.realize")
        out, err, code = await self.command("ls", self.mountpoint)
        self.assertEqual((out.split(), code), (["photos"], 0), err)

    async def test_already_mounted(self) -> None:
        """
        A live mount at the mountpoint is not taken over: the second
        service fails to mount, and the first still serves.
        """
        await self.mount()
        second = FuseService(self.backend, self.mountpoint, reactor, Bridge(reactor))
        second.startService()
        self.addCleanup(self.stop, second)
        with self.assertRaises(IOFailure) as caught:
            await second.when_mounted()
        self.assertIn("already mounted", str(caught.exception))
        self.flushLoggedErrors()
        out, err, code = await self.command("ls", self.mountpoint)
        self.assertEqual((out.split(), code), (["photos"], 0), err)

    async def test_missing_mountpoint(self) -> None:
        """
        A mountpoint that does not exist fails to mount, with an error
        naming it.
        """
        missing = os.path.join(self.mountpoint, "missing")
        service = FuseService(self.backend, missing, reactor, Bridge(reactor))
        service.startService()
        self.addCleanup(self.stop, service)
        with self.assertRaises(Exception) as caught:
            await service.when_mounted()
        self.assertIn(missing, str(caught.exception))


class FuseServiceTests(SynchronousTestCase):
    """
    L{FuseService} and its helpers, without a mount.
    """

    def test_relative_mountpoint(self) -> None:
        """
        A relative mountpoint is refused: libfuse changes the working
        directory to C{/}.
        """
        with self.assertRaises(ConfigError) as caught:
            FuseService(MemoryBackend(), "mnt", reactor)
        self.assertIn("absolute", str(caught.exception))

    def test_mountpoint_normalized(self) -> None:
        """
        The mountpoint is normalized, as /proc/self/mountinfo shows it.
        """
        service = FuseService(MemoryBackend(), "/tmp//view/", reactor)
        self.assertEqual(service.mountpoint, "/tmp/view")

    def test_not_mounted(self) -> None:
        """
        L{mounted_filesystem} finds what is mounted at a path, and nothing
        where nothing is; mountinfo's octal escapes are undone.
        """
        self.assertIsNone(mounted_filesystem(os.path.abspath(self.mktemp())))
        self.assertIsNotNone(mounted_filesystem("/"))
        self.assertEqual(_unescape("/tmp/a\\040b\\011c\\134d"), "/tmp/a b\tc\\d")
        self.assertEqual(_unescape("/tmp/\\303\\251"), "/tmp/\u00e9")

    def test_invalidate_forgets_directories(self) -> None:
        """
        L{FuseService.invalidate} of a directory's path makes the adapter
        forget the directories it remembered (mounted or not).
        """
        backend = MemoryBackend()
        d = backend.mkdir(ROOT_INODE, "d")
        backend.add_file(d, "f", b"")
        service = FuseService(backend, "/tmp/view", reactor)
        service.ops.getattr("/d/f")
        lookups = backend.calls["lookup"]
        self.successResultOf(service.invalidate("d/"))
        service.ops.getattr("/d/f")
        self.assertEqual(backend.calls["lookup"] - lookups, 2)
