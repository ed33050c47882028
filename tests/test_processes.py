"""
Tests for L{realize.processes}: the daemon's worker process, a real child
process on the real reactor.
"""

from __future__ import annotations

import gc
import io
import operator
import os
import pickle
import signal
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from realize.collector import GC_THRESHOLD
from realize.errors import IOFailure
from realize.processes import WorkerService
from realize.worker import (
    OUT_OF_BAND,
    dumps,
    frame_parts,
    read_frame,
    split_frame,
)

from .peers import eventually


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class WorkerServiceTests(TestCase):
    """
    L{WorkerService} runs picklable calls in a child process.
    """

    timeout = 60

    def setUp(self) -> None:
        self.service = WorkerService(reactor, "test-worker")
        self.service.startService()
        self.addCleanup(self.stop)

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()

    async def test_result(self) -> None:
        """
        A call's result comes back from another process; keyword arguments
        are passed.
        """
        pid = await self.service.run(os.getpid)
        self.assertNotEqual(pid, os.getpid())
        self.assertEqual(await self.service.run(int, "ff", base=16), 255)

    async def test_gc_threshold(self) -> None:
        """
        The worker's collector runs every L{GC_THRESHOLD} allocations, not
        Python's default 700 (issue 15).
        """
        threshold = await self.service.run(gc.get_threshold)
        self.assertEqual(threshold[0], GC_THRESHOLD)

    async def test_preload(self) -> None:
        """
        The modules a service names are imported by each worker before its
        first call (C{realize.storage.batch} loads blake3's extension); one
        that cannot be imported does not stop the worker.
        """

        def blake3_loaded(pid: int) -> bool:
            with open(f"/proc/{pid}/maps") as f:
                return "blake3" in f.read()

        self.assertFalse(blake3_loaded(await self.service.run(os.getpid)))
        preloading = WorkerService(
            reactor, "preloading", preload=["realize.storage.batch", "no.such"]
        )
        preloading.startService()
        try:
            self.assertTrue(blake3_loaded(await preloading.run(os.getpid)))
        finally:
            await preloading.stopService()

    async def test_large(self) -> None:
        """
        Large byte strings (sent out of band) reach the worker and come
        back whole, as arguments and inside results.
        """
        big = os.urandom(3 * OUT_OF_BAND)
        self.assertEqual(await self.service.run(len, big), len(big))
        self.assertEqual(
            await self.service.run(operator.add, (1,), (big, b"small")),
            (1, big, b"small"),
        )

    async def test_error(self) -> None:
        """
        What the call raises is raised again here, the same class.
        """
        with self.assertRaises(ZeroDivisionError):
            await self.service.run(operator.truediv, 1, 0)
        self.assertEqual(await self.service.run(operator.add, 1, 2), 3)

    async def test_in_order(self) -> None:
        """
        Calls are answered in the order they were made.
        """
        calls = [self.service.run(operator.mul, i, 2) for i in range(20)]
        self.assertEqual([await d for d in calls], [i * 2 for i in range(20)])

    async def test_dies(self) -> None:
        """
        A worker killed during a call fails it with L{IOFailure}; the next
        call gets a new worker.
        """
        pid = await self.service.run(os.getpid)
        waiting = self.service.run(time.sleep, 30)
        os.kill(pid, signal.SIGKILL)
        with self.assertRaises(IOFailure) as raised:
            await waiting
        self.assertIn("test-worker: the worker process ended", str(raised.exception))
        again = await self.service.run(os.getpid)
        self.assertNotEqual(again, pid)
        self.flushLoggedErrors()

    async def test_sigterm_ignored(self) -> None:
        """
        A SIGTERM sent to the worker (systemd sends it to the whole group)
        does not end it: the daemon ends it after its last call.
        """
        pid = await self.service.run(os.getpid)
        waiting = self.service.run(time.sleep, 0.2)
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        await waiting
        self.assertEqual(await self.service.run(os.getpid), pid)

    async def test_stop_waits(self) -> None:
        """
        Stopping answers the calls made, then the worker ends; a call made
        after fails with L{IOFailure}.
        """
        pid = await self.service.run(os.getpid)
        waiting = self.service.run(operator.add, 2, 3)
        slow = self.service.run(time.sleep, 0.3)
        await self.service.stopService()
        self.assertEqual(await waiting, 5)
        self.assertIsNone(await slow)
        self.assertFalse(alive(pid))
        with self.assertRaises(IOFailure):
            await self.service.run(os.getpid)

    async def test_parent_dies(self) -> None:
        """
        A worker whose daemon is killed ends (its stdin closes): none is
        left behind.
        """
        script = (
            "import os, sys\n"
            "from twisted.internet import reactor\n"
            "from realize.processes import WorkerService\n"
            "service = WorkerService(reactor, 'w')\n"
            "service.startService()\n"
            "def show(pid):\n"
            "    print(pid, flush=True)\n"
            "def ask():\n"
            "    service.run(os.getpid).addCallback(show)\n"
            "reactor.callWhenRunning(ask)\n"
            "reactor.run()\n"
        )
        parent = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, env=os.environ
        )
        self.addCleanup(parent.wait)
        self.addCleanup(parent.kill)
        assert parent.stdout is not None
        line = await deferToThread(parent.stdout.readline)
        pid = int(line)
        self.assertTrue(alive(pid))
        parent.kill()
        await eventually(lambda: not alive(pid), 10, "the worker to end")

    async def test_unloadable(self) -> None:
        """
        A call whose function the worker cannot import (a module only this
        process has) fails with an error that says so; the worker goes on.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "only_here_module.py"), "w") as f:
            f.write("def answer():\n    return 42\n")
        sys.path.insert(0, directory)
        self.addCleanup(sys.path.remove, directory)
        self.addCleanup(sys.modules.pop, "only_here_module", None)
        import only_here_module  # type: ignore[import-not-found]

        pid = await self.service.run(os.getpid)
        with self.assertRaises(RuntimeError) as raised:
            await self.service.run(only_here_module.answer)
        self.assertIn(
            "the worker process cannot load the call: ModuleNotFoundError",
            str(raised.exception),
        )
        self.assertEqual(await self.service.run(os.getpid), pid)


class FrameTests(SynchronousTestCase):
    """
    The frames of L{realize.worker}: a pickle and its out-of-band buffers.
    """

    def test_out_of_band(self) -> None:
        """
        Byte strings of at least L{OUT_OF_BAND} bytes, at the top or one or
        two tuples down, leave the pickle; the rest stay in it.
        """
        big = b"b" * OUT_OF_BAND
        value = (big, (1, big + b"2", [big]), b"small")
        data, buffers = dumps(value)
        self.assertEqual(buffers, [big, big + b"2"])
        self.assertLess(len(data), 2 * OUT_OF_BAND)
        self.assertEqual(pickle.loads(data, buffers=buffers), value)

    def test_dumps_leaves_no_cycle(self) -> None:
        """
        Pickling leaves no reference cycle behind, so that the buffers of
        a batch are freed as soon as its frame is written, not at the
        collector's next pass.
        """
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        dumps((b"b" * OUT_OF_BAND, (1, b"c" * OUT_OF_BAND)))
        self.assertEqual(gc.collect(), 0)

    def test_split(self) -> None:
        """
        A frame is taken off the front of a buffer only once it is whole,
        byte by byte; what follows it stays.
        """
        first = dumps((b"x" * OUT_OF_BAND, "first"))
        second = dumps("second")
        stream = b"".join(frame_parts(first) + frame_parts(second))
        buffer = bytearray()
        frames = []
        for i in range(len(stream)):
            buffer += stream[i : i + 1]
            frame = split_frame(buffer)
            if frame is not None:
                frames.append(frame)
        self.assertEqual(frames, [first, second])
        self.assertEqual(buffer, b"")
        self.assertEqual(read_frame(io.BytesIO(stream)), first)

    def test_truncated(self) -> None:
        """
        A stream that ends inside a frame is an error for the worker's
        reader; one that ends between frames is the end.
        """
        stream = b"".join(frame_parts(dumps((b"y" * OUT_OF_BAND,))))
        self.assertIsNone(read_frame(io.BytesIO(b"")))
        for cut in (3, 20, len(stream) - 1):
            self.assertRaises(EOFError, read_frame, io.BytesIO(stream[:cut]))
