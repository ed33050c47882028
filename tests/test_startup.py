"""
What the commands set up at start-up: the modules realize-move loads
(every run pays for them, and a move of many small files is short), and
the memory allocator's thresholds (bulk data churns MiB-sized buffers).
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase


class StartupTests(SynchronousTestCase):
    """
    realize-move imports numpy (through the delta code) only when a file
    needs repair: numpy costs every start-up about 60 ms.
    """

    def test_no_numpy(self) -> None:
        """
        Importing the command, the mover and the local store does not
        import numpy; importing the delta code does.
        """
        code = (
            "import sys\n"
            "import realize.tap.move, realize.services.mover, "
            "realize.storage.local\n"
            "print('numpy' in sys.modules)\n"
            "import realize.delta\n"
            "print('numpy' in sys.modules)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(out.split(), ["False", "True"])

    def test_no_web_no_zstd(self) -> None:
        """
        Importing and parsing the options of a move without metrics or
        compression does not import twisted.web (the metrics HTTP code) or
        zstandard; a move that serves its metrics does.
        """
        code = (
            "import sys\n"
            "import realize.tap.move as m\n"
            "o = m.MoveOptions()\n"
            "o.parseOptions(['--src', 'local:/a', '--dst', 'local:/b', 'x'])\n"
            "print('twisted.web.server' in sys.modules, 'zstandard' in sys.modules)\n"
            "o = m.MoveOptions()\n"
            "o.parseOptions(['--src', 'local:/a', '--dst', 'local:/b', "
            "'--metrics-addr', '127.0.0.1:0', 'x'])\n"
            "print('twisted.web.server' in sys.modules)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(out.split(), ["False", "False", "True"])

    def test_no_db_code(self) -> None:
        """
        Importing the command does not import the arena db code (sqlite
        pools, schema, index: ~18 ms); only a look at a local arena db for
        its uuid does.
        """
        code = (
            "import sys, pathlib\n"
            "import realize.tap.move\n"
            "from realize.tap.identity import local_uuid\n"
            "print('realize.storage.pool' in sys.modules)\n"
            "print(local_uuid(pathlib.Path(sys.argv[1])))\n"
            "print('realize.storage.pool' in sys.modules)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, self.mktemp()],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.assertEqual(out.split(), ["False", "None", "False"])

    def test_no_prometheus(self) -> None:
        """
        A move that neither serves nor pushes its metrics does not make
        them (nothing would read them): it does not import
        prometheus_client, which costs ~20 ms of start-up.  One that pushes
        them does.
        """
        code = (
            "import os, sys\n"
            "from twisted.internet import defer, task\n"
            "import realize.tap.move as m\n"
            "src, dst = sys.argv[1:3]\n"
            "os.makedirs(src)\n"
            "open(os.path.join(src, 'f'), 'w').write('x')\n"
            "o = m.MoveOptions()\n"
            "o.parseOptions(['--src', 'local:' + src, '--dst', 'local:' + dst, "
            "'--output', 'quiet', *sys.argv[3:], 'x'])\n"
            "async def go(reactor):\n"
            "    code = await m.run(reactor, o)\n"
            "    print(code, 'prometheus_client' in sys.modules, os.listdir(dst))\n"
            "task.react(lambda r: defer.Deferred.fromCoroutine(go(r)))\n"
        )

        def move(*arguments: str) -> list[str]:
            return subprocess.run(
                [sys.executable, "-c", code, self.mktemp(), self.mktemp(), *arguments],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()

        self.assertEqual(move(), ["0", "False", "['f']"])
        pushed = move("--metrics-pushgateway", "http://127.0.0.1:1")
        self.assertEqual(pushed, ["12", "True", "['f']"])

    def test_default_job(self) -> None:
        """
        The default C{--metrics-job} of realize-move, spelled out so that
        the option needs no import of the web code, is the web code's.
        """
        from realize.tap.move import DEFAULT_JOB, MoveOptions
        from realize.web import DEFAULT_JOB as WEB_DEFAULT_JOB

        self.assertEqual(DEFAULT_JOB, WEB_DEFAULT_JOB)
        options = MoveOptions()
        options.parseOptions(["--src", "local:/a", "--dst", "local:/b", "x"])
        self.assertEqual(options["metrics-job"], WEB_DEFAULT_JOB)


#: Run in a fresh interpreter: allocate 2 MiB, then 32 x 1 MiB and free
#: them, and print what glibc's malloc did (mallinfo2(3)).
_MALLOC_PROBE = """
import ctypes, sys
from realize.tap._common import tune_malloc
if sys.argv[1] == "tune":
    assert tune_malloc()
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
        "fordblks keepcost").split()]
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
big = bytes(2 << 20)
print(libc.mallinfo2().hblks - before)
del big
pieces = [bytes(1 << 20) for _ in range(32)]
del pieces
print(libc.mallinfo2().keepcost >> 20)
"""


class MallocTests(SynchronousTestCase):
    """
    L{realize.tap._common.tune_malloc}: chunks of a few MiB come from the
    heap, and freed ones stay there for the next, instead of being mapped
    and unmapped (page-faulted afresh) one by one.
    """

    def probe(self, mode: str) -> list[int]:
        """
        @return: mmapped blocks the 2 MiB allocation added, and MiB kept
            free at the top of the heap after the 32 x 1 MiB were freed.
        """
        try:
            import ctypes

            ctypes.CDLL(None).mallinfo2  # noqa: B018
        except (OSError, AttributeError):
            raise SkipTest("not glibc >= 2.33: no mallinfo2") from None
        out = subprocess.run(
            [sys.executable, "-c", _MALLOC_PROBE, mode],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [int(line) for line in out.split()]

    def test_default(self) -> None:
        """
        Without it (what the test below would see if it did nothing): the
        2 MiB allocation is mmapped, and the freed heap is trimmed.
        """
        mmapped, kept = self.probe("plain")
        self.assertEqual(mmapped, 1)
        self.assertLess(kept, 16)

    def test_tuned(self) -> None:
        """
        With it: no mmap for 2 MiB, and the 32 MiB stay for reuse.
        """
        mmapped, kept = self.probe("tune")
        self.assertEqual(mmapped, 0)
        self.assertGreaterEqual(kept, 30)
