"""
Tests for L{realize.processes}: the daemon's worker process, a real child
process on the real reactor.
"""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from realize.errors import IOFailure
from realize.processes import WorkerService

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
