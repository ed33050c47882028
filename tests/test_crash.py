"""
Crash safety under hostile conditions (issue 4, "Crash safety and hostile
conditions"; DESIGN.md sections 6 and 12): the real C{realize-move} and
C{realized} processes on loopback TLS, killed with SIGKILL at random
moments, writing to a full disk, or talking through a proxy that cuts the
connection every few MiB.

The guarantee checked after every such event (L{TreeCheck}): each file of
the original tree is intact in at least one place, the source copy or a
final destination file with the original content (a partial file does not
count); no final destination file ever differs from its original; and
after a clean run the destination tree equals the original and the source
is empty.

Random delays come from fixed seeds, so a run kills at the same points of
the same trees (up to the machine's timing).  These tests are slow
(integration): about 50 s in all on two cores.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from twisted.internet import error, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase

from realize.model import is_partial_name

from .integration import Household, Run, read_tree, write_tree
from .proxy import BOTH, UP, CuttingProxy

KiB = 1 << 10
MiB = 1 << 20


def make_crash_tree(
    root: str, seed: int, big: int = 3, big_size: int = 8 * MiB
) -> dict[str, bytes]:
    """
    Generate a tree to move: C{big} large files (moved by ranges), a few
    files between 256 KiB and 1.5 MiB (moved by single Writes), and many
    small ones in nested directories (moved in batches), some empty.

    @return: relative path to content.
    """
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(big):
        files[f"big/{i}.bin"] = rng.randbytes(big_size + rng.randrange(MiB))
    for i in range(6):
        files[f"mid/{i}.bin"] = rng.randbytes(rng.randrange(256 * KiB, 1536 * KiB))
    for i in range(600):
        size = 0 if i % 97 == 0 else rng.randrange(1, 24 * KiB)
        files[f"small/{i % 13}/{i // 13}/f{i}.dat"] = rng.randbytes(size)
    write_tree(root, files)
    return files


def read_finals(root: str) -> dict[str, bytes]:
    """
    @return: every final file under C{root}, relative path to content.
        Partial files are skipped before they are opened: a daemon still
        finishing a batch its killed client sent renames them meanwhile.
    """
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if is_partial_name(name):
                continue
            full = os.path.join(directory, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, root)] = f.read()
    return found


class TreeCheck:
    """
    Checks the crash-safety guarantee of a move of C{files} from
    C{source} to C{destination}.
    """

    def __init__(
        self, case: TestCase, files: dict[str, bytes], source: str, destination: str
    ) -> None:
        self.case = case
        self.files = files
        self.source = source
        self.destination = destination

    def intact(self, what: object) -> tuple[int, int]:
        """
        Each file is intact somewhere; nothing final differs from its
        original; no final file appeared that was not in the source.

        @param what: names the moment, for messages.
        @return: how many files are at the source, and how many final at
            the destination.
        """
        at_source = read_tree(self.source)
        at_destination = read_finals(self.destination)
        for path, content in at_source.items():
            self.case.assertEqual(
                content, self.files.get(path), f"{what}: source {path} changed"
            )
        for path, content in at_destination.items():
            self.case.assertIn(path, self.files, f"{what}: unexpected final {path}")
            if content != self.files[path]:
                self.case.fail(
                    f"{what}: final destination file {path} differs from its "
                    f"original ({len(content)} bytes, {len(self.files[path])} "
                    "expected)"
                )
        lost = sorted(set(self.files) - set(at_source) - set(at_destination))
        self.case.assertEqual(lost, [], f"{what}: files lost")
        return len(at_source), len(at_destination)

    def done(self) -> None:
        """
        The move is complete: the destination holds exactly the original
        tree, no partial file is left, and the source is empty.
        """
        self.case.assertEqual(read_tree(self.destination), self.files)
        self.case.assertEqual(read_tree(self.source), {})


class Process(protocol.ProcessProtocol):
    """
    A running command: its output so far, its transport (to signal it),
    and C{ended}, which fires with its exit code (negative: the signal).

    @ivar on_output: called with each chunk of stdout.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()
        self.transport: Any = None
        self.on_output: Callable[[bytes], None] | None = None

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self.on_output is not None:
            self.on_output(data)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        if code is None:
            code = -(reason.value.signal or 0)
        self.ended.callback(code)

    def kill(self) -> bool:
        """
        SIGKILL the process.

        @return: whether it was still running.
        """
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            return False
        return True

    def run(self) -> Run:
        """
        @return: the finished command (after C{ended} fired).
        """
        assert self.ended.called
        return Run(self.ended.result, self.out, self.err)  # type: ignore[attr-defined]


def spawn(case: TestCase, args: list[str]) -> Process:
    """
    Start a command; it is killed at the end of the test if still running.
    """
    process = Process()
    process.transport = reactor.spawnProcess(  # type: ignore[attr-defined]
        process, args[0], args, env=dict(os.environ)
    )

    async def cleanup() -> None:
        if process.kill():
            await process.ended

    case.addCleanup(cleanup)
    return process


def move_args(household: Household, *args: str) -> list[str]:
    """
    The command line of realize-move from a's local arena to b, as
    L{Household.move} runs it.
    """
    return household.move_args(args)


async def run_to_end(case: TestCase, args: list[str]) -> Run:
    """
    Run a command to its end.
    """
    process = spawn(case, args)
    await process.ended
    return process.run()


def when_moved(process: Process, count: int) -> Deferred[None]:
    """
    @return: a Deferred that fires once the move printed C{count} "moved"
        lines, or ended.
    """
    d: Deferred[None] = Deferred()

    def check(_: object = None) -> None:
        if not d.called and (
            process.ended.called or process.out.count(b"moved ") >= count
        ):
            d.callback(None)

    def ended(result: object) -> object:
        check()
        return result

    process.on_output = check
    process.ended.addBoth(ended)
    check()
    return d


async def sleep_unless_ended(process: Process, seconds: float) -> None:
    """
    Wait C{seconds}, or less if the process ends first.
    """
    timer: Deferred[None] = Deferred()
    call = reactor.callLater(seconds, timer.callback, None)  # type: ignore[attr-defined]

    def ended(result: object) -> object:
        if not timer.called:
            call.cancel()
            timer.callback(None)
        return result

    process.ended.addBoth(ended)
    await timer


#: What realize-move may send per second in the kill tests
#: (C{--throttle-up}): a tree of about 40 MiB then moves in about 2.5 s,
#: so that kills land while data flows, on a fast machine too.
KILL_RATE = 16 * MiB


def tree_bytes(root: str) -> int:
    """
    @return: the bytes of every file under C{root}, partial files included.
    """
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


async def when_written(process: Process, destination: str, size: int) -> None:
    """
    Wait until the destination holds C{size} bytes (partial files
    included), or the process ended.
    """
    while not process.ended.called and tree_bytes(destination) < size:
        await sleep_unless_ended(process, 0.01)


async def kill_at_random(
    process: Process,
    rng: random.Random,
    mode: str,
    source: str,
    destination: str,
) -> bool:
    """
    SIGKILL a move at a random moment:

        - C{"written"}: once the destination received a random part of
          what is left to send (data is flowing, files are half written);
        - C{"moved"}: once a random number of files were reported moved,
          plus a short random delay (between files, or as they finish);
        - C{"time"}: after a random delay within the time the move should
          take (also while it starts, lists, connects).

    @return: whether it was killed while running.
    """
    tree = read_tree(source)
    size = sum(map(len, tree.values()))
    if mode == "written":
        already = tree_bytes(destination)
        await when_written(
            process, destination, already + int(rng.uniform(0.05, 0.6) * size)
        )
    elif mode == "moved" and len(tree) > 4:
        await when_moved(process, rng.randrange(1, max(2, len(tree) // 4)))
        await sleep_unless_ended(process, rng.uniform(0, 0.1))
    else:
        await sleep_unless_ended(process, rng.uniform(0.1, 0.5 + size / KILL_RATE))
    if process.ended.called:
        return False
    return process.kill()


class KillMoveIntegrationTests(TestCase):
    """
    SIGKILL of realize-move at random moments, repeatedly, then a clean
    run.
    """

    timeout = 120

    async def test_kill_move_repeatedly(self) -> None:
        """
        realize-move is killed (SIGKILL) several times while it moves a
        tree of large files and many small ones into a real realized; after
        each kill every file is intact in at least one place and no final
        destination file differs from its original; a final clean run
        exits 0 with the destination equal to the original tree and the
        source empty.
        """
        household = Household(self)
        files = make_crash_tree(household.source, seed=11)
        check = TreeCheck(self, files, household.source, household.destination)
        await household.start_daemon()
        rng = random.Random(2024)
        kills = 0
        history = []
        for round in range(6):
            count = len(read_tree(household.source))
            process = spawn(
                self,
                move_args(household, "--throttle-up", str(KILL_RATE), "docs"),
            )
            # The first kills land while data flows, the others anywhere.
            mode = "written" if round < 2 else rng.choice(["written", "moved", "time"])
            killed = await kill_at_random(
                process, rng, mode, household.source, household.destination
            )
            kills += killed
            code = await process.ended
            at_source, at_destination = check.intact(f"after round {round}")
            history.append(
                f"round {round}: {count} files at the source, kill by {mode}: "
                f"{'killed' if killed else 'not killed'}, exit {code}, then "
                f"{at_source} at the source, {at_destination} final there"
            )
            if code >= 0:
                self.assertEqual(code, 0, (history, process.run()))
                break
        self.assertGreater(kills, 1, history)
        run = await run_to_end(self, move_args(household, "docs"))
        self.assertEqual(run.code, 0, run)
        check.done()


class KillDaemonIntegrationTests(TestCase):
    """
    SIGKILL of realized while it writes, restart, and the move goes on.
    """

    timeout = 120

    async def test_kill_daemon_during_writes(self) -> None:
        """
        realized is killed (SIGKILL) while a move writes into it, each time
        after the move made some progress, and restarted on the same port;
        realize-move retries (the connection was lost) and continues from
        what is on disk.  After each kill every file is intact somewhere
        and no final destination file differs from its original; in the
        end the move exits 0 with the destination equal to the original
        tree and the source empty.
        """
        household = Household(self)
        files = make_crash_tree(household.source, seed=12)
        check = TreeCheck(self, files, household.source, household.destination)
        rng = random.Random(99)
        port = await household.start_daemon()
        listen = ("--listen", f"tcp:{port}:interface=127.0.0.1")
        process = spawn(
            self,
            move_args(
                household,
                "--max-duration",
                "100s",
                "--throttle-up",
                str(KILL_RATE),
                "docs",
            ),
        )
        kills = 0
        for round in range(2):
            if round == 0:
                # Once the daemon received a part of the tree: writes of
                # large files are in flight.
                left = sum(map(len, read_tree(household.source).values()))
                already = tree_bytes(household.destination)
                wanted = already + int(rng.uniform(0.1, 0.4) * left)
                await when_written(process, household.destination, wanted)
            else:
                # Once some more files moved: writes of small files are in
                # flight, and the attempt made progress, so that the retry
                # waits 5 s, not longer.
                moved = process.out.count(b"moved ")
                await when_moved(process, moved + rng.randrange(1, 30))
                await sleep_unless_ended(process, rng.uniform(0, 0.2))
            if process.ended.called:
                break
            daemon = household.daemon
            assert daemon is not None
            household.daemon_transport.signalProcess("KILL")
            self.assertEqual(await daemon.ended, -9)
            kills += 1
            await household.stop_daemon()
            check.intact(f"after kill {round}")
            await sleep(rng.uniform(0, 1))
            await household.start_daemon(*listen)
        self.assertGreater(kills, 0, "the move ended before any kill")
        code = await process.ended
        run = process.run()
        self.assertEqual(code, 0, run)
        # Each kill cost the move its connection (at most one retry each:
        # the daemon was back before the first retry).
        retries = run.err.count("retrying in 5 s")
        self.assertGreater(retries, 0, run)
        self.assertLessEqual(run.err.count("retrying in"), kills, run)
        self.assertIn("destination b (127.0.0.1:", run.err, run)
        check.done()


class DiskFullIntegrationTests(TestCase):
    """
    The destination's disk fills up.
    """

    timeout = 60

    async def test_destination_full(self) -> None:
        """
        realized's datadir is a tmpfs of 8 MiB; the tree to move is larger.
        realize-move exits 1, its errors say there is no space and name the
        destination and the files; the source is intact; nothing final at
        the destination differs from its original.
        """
        household = Household(self)
        mount_tmpfs(self, household.destination, "8m")
        rng = random.Random(5)
        files = {
            "a.bin": rng.randbytes(5 * MiB),
            "b.bin": rng.randbytes(5 * MiB),
            "c.bin": rng.randbytes(3 * MiB),
        }
        for i in range(50):
            files[f"small/{i}"] = rng.randbytes(rng.randrange(1, 20 * KiB))
        write_tree(household.source, files)
        check = TreeCheck(self, files, household.source, household.destination)
        await household.start_daemon()
        run = await run_to_end(self, move_args(household, "docs"))
        self.assertEqual(run.code, 1, run)
        errors = [line for line in run.err.splitlines() if "error" in line]
        full = [line for line in errors if "no space" in line.lower()]
        self.assertTrue(full, run)
        for line in full:
            self.assertIn("destination b (127.0.0.1:", line, run)
            self.assertTrue(any(path in line for path in files), line)
        check.intact("after the disk filled")
        self.assertEqual(
            read_tree(household.source),
            {
                path: content
                for path, content in files.items()
                if path in read_tree(household.source)
            },
        )
        # The files that did not fit are all still at the source.
        at_destination = read_tree(household.destination)
        for path, content in files.items():
            if at_destination.get(path) != content:
                with open(os.path.join(household.source, path), "rb") as f:
                    self.assertEqual(f.read(), content)


def mount_tmpfs(case: TestCase, directory: str, size: str) -> None:
    """
    Mount a tmpfs of C{size} on an empty directory, unmounted at the end
    of the test (after the daemon stops: cleanups run last-in first-out).

    @raise SkipTest: if mounting is not permitted here.
    """
    if shutil.which("mount") is None:
        raise SkipTest("no mount command")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", directory],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SkipTest(
            f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): "
            f"{result.stderr.strip() or result.returncode}"
        )

    def unmount() -> None:
        done = subprocess.run(["umount", directory], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", directory], check=False)

    case.addCleanup(unmount)


#: A time after 2262: its nanoseconds since the epoch do not fit 64 bits
#: (ext4 stores times up to 2446; archives and broken clocks make them).
YEAR_2300_NS = 10_413_792_000 * 10**9


class FutureMtimeIntegrationTests(TestCase):
    """
    A source file dated after 2262, among ordinary ones.
    """

    timeout = 60

    async def start(self) -> tuple[Household, TreeCheck]:
        household = Household(self)
        files = {f"f{i}": bytes([i]) * 100 for i in range(5)}
        write_tree(household.source, files)
        future = os.path.join(household.source, "f0")
        os.utime(future, ns=(YEAR_2300_NS, YEAR_2300_NS))
        await household.start_daemon()
        return household, TreeCheck(
            self, files, household.source, household.destination
        )

    async def test_nothing_lost(self) -> None:
        """
        Whatever happens to the file dated 2300, nothing is lost and no
        final destination file is wrong.
        """
        household, check = await self.start()
        run = await run_to_end(self, move_args(household, "docs"))
        self.assertIn(run.code, (0, 1), run)
        check.intact("after the move")

    async def test_moved(self) -> None:
        """
        The ordinary files move, and so does the one dated 2300 (its mtime
        clamped to what the wire carries, or refused alone with a message
        naming the mtime): one bad mtime does not fail its whole batch with
        "int too large to convert".
        """
        household, check = await self.start()
        run = await run_to_end(self, move_args(household, "docs"))
        self.assertNotIn("int too large", run.err, run)
        moved = read_tree(household.destination)
        for i in range(1, 5):
            self.assertEqual(moved.get(f"f{i}"), check.files[f"f{i}"], run)
        if run.code == 0:
            check.done()
        else:
            self.assertIn("mtime", run.err, run)


class ProxyCutIntegrationTests(TestCase):
    """
    realize-move through a proxy that cuts its connection to realized
    every few MiB.
    """

    timeout = 120

    async def start(
        self, cut_after: int, cut_connections: int | None = None, mids: int = 8
    ) -> tuple[Household, TreeCheck, CuttingProxy]:
        """
        Start realized and a cutting proxy in front of it (the client
        config points at the proxy), with a tree to move: one file of 6
        MiB, C{mids} of about 1 MiB (16 MiB in all by default), small ones.
        """
        household = Household(self)
        rng = random.Random(8)
        files = {
            f"mid{i}.bin": rng.randbytes(rng.randrange(512 * KiB, 1536 * KiB))
            for i in range(mids)
        }
        files["big.bin"] = rng.randbytes(6 * MiB)
        for i in range(60):
            files[f"small/{i}"] = rng.randbytes(rng.randrange(1, 16 * KiB))
        write_tree(household.source, files)
        check = TreeCheck(self, files, household.source, household.destination)
        port = await household.start_daemon()
        proxy = CuttingProxy(
            reactor, "127.0.0.1", port, cut_after, UP, cut_connections=cut_connections
        )
        self.addCleanup(proxy.stop)
        household.port = await proxy.start()
        return household, check, proxy

    async def test_cut_until_deadline(self) -> None:
        """
        Every connection cut after 3 MiB and a deadline of 4 s: realize-move
        warns that the connection to the destination was lost and that it
        will retry, then stops at the deadline with exit 11; nothing is
        lost; a run without cuts completes the move.
        """
        household, check, proxy = await self.start(3 * MiB)
        run = await run_to_end(
            self, move_args(household, "--max-duration", "4s", "docs")
        )
        self.assertGreater(proxy.cuts, 0)
        self.assertEqual(run.code, 11, run)
        self.assertIn("connection to b lost", run.err, run)
        self.assertIn("destination b (127.0.0.1:", run.err, run)
        self.assertIn("retrying in 5 s", run.err, run)
        self.assertIn("--max-duration 4s", run.err, run)
        check.intact("after the cuts")
        proxy.cut_after = None
        run = await run_to_end(self, move_args(household, "docs"))
        self.assertEqual(run.code, 0, run)
        check.done()

    async def test_cut_retried(self) -> None:
        """
        The first two connections are cut after 3 MiB each: the move
        completes through retries (exit 0), continuing from what is on disk
        rather than starting over.
        """
        household, check, proxy = await self.start(3 * MiB, cut_connections=2)
        run = await run_to_end(
            self, move_args(household, "--max-duration", "100s", "docs")
        )
        self.assertEqual(run.code, 0, run)
        self.assertEqual(proxy.cuts, 2)
        self.assertEqual(run.err.count("retrying in"), 2, run)
        check.done()
        # Resumed, not restarted: much less than twice the tree was sent.
        total = sum(map(len, check.files.values()))
        self.assertLess(proxy.bytes_up, total * 1.5)

    async def test_retried_files_not_reported_failed(self) -> None:
        """
        A move that completes through retries (exit 0) reports the lost
        connections as warnings ("retrying in ..."), not as an "error:"
        line for every file that was in flight and moved later.
        """
        household, check, proxy = await self.start(3 * MiB, cut_connections=1)
        run = await run_to_end(
            self, move_args(household, "--max-duration", "100s", "docs")
        )
        self.assertEqual(run.code, 0, run)
        self.assertEqual(proxy.cuts, 1)
        self.assertIn("retrying in 5 s", run.err, run)
        errors = [line for line in run.err.splitlines() if "error:" in line]
        self.assertEqual(errors, [], run)
        check.done()

    async def test_cut_every_few_mib(self) -> None:
        """
        Every connection cut after 4 MiB: each one still moves 4 MiB, so
        the retries keep waiting 5 s (progress resets the backoff, DESIGN.md
        section 8) and the move completes, exit 0, in well under a minute.
        """
        household, check, proxy = await self.start(4 * MiB, mids=2)
        run = await run_to_end(
            self, move_args(household, "--max-duration", "100s", "docs")
        )
        self.assertEqual(run.code, 0, run)
        self.assertGreater(proxy.cuts, 1)
        delays = [
            line.split("retrying in ")[1].split(" ")[0]
            for line in run.err.splitlines()
            if "retrying in" in line
        ]
        self.assertEqual(set(delays), {"5"}, run)
        check.done()


async def sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater as later

    await later(reactor, seconds, lambda: None)  # type: ignore[arg-type]


class Echo(Protocol):
    """
    Sends back what it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Collect(Protocol):
    """
    Keeps what it receives; C{lost} fires when the connection ends.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class CuttingProxyLoopbackTests(TestCase):
    """
    The test proxy itself (L{tests.proxy.CuttingProxy}), on an echo server.
    """

    timeout = 20

    async def echo_through(self, **kwargs: Any) -> tuple[CuttingProxy, Collect]:
        server = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Echo)
        )
        self.addCleanup(server.stopListening)
        proxy = CuttingProxy(reactor, "127.0.0.1", server.getHost().port, **kwargs)
        self.addCleanup(proxy.stop)
        port = await proxy.start()
        client = Collect()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(lambda: client)
        )
        return proxy, client

    async def test_relays_and_counts(self) -> None:
        """
        Without a cut, bytes go both ways and are counted.
        """
        proxy, client = await self.echo_through()
        assert client.transport is not None
        client.transport.write(b"x" * 100_000)
        while len(client.received) < 100_000:
            await deferLater(0.01)
        self.assertEqual(client.received, b"x" * 100_000)
        self.assertEqual(proxy.bytes_up, 100_000)
        self.assertEqual(proxy.bytes_down, 100_000)
        self.assertEqual(proxy.connections, 1)
        self.assertEqual(proxy.cuts, 0)
        await proxy.stop()
        await client.lost

    async def test_cuts(self) -> None:
        """
        With C{cut_after}, a connection is cut once that many bytes went
        through it: no more than that arrives.
        """
        proxy, client = await self.echo_through(cut_after=50_000, cut_direction=BOTH)
        assert client.transport is not None
        client.transport.write(b"y" * 100_000)
        await client.lost
        self.assertEqual(proxy.cuts, 1)
        self.assertLessEqual(proxy.bytes_up + proxy.bytes_down, 50_000)
        self.assertLessEqual(len(client.received), 50_000)

    async def test_target_down(self) -> None:
        """
        When the target refuses, the client's connection is closed.
        """
        proxy = CuttingProxy(reactor, "127.0.0.1", unused_port())
        self.addCleanup(proxy.stop)
        port = await proxy.start()
        client = Collect()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(lambda: client)
        )
        await client.lost
        self.assertEqual(proxy.refused, 1)


def deferLater(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)  # type: ignore[arg-type]


def unused_port() -> int:
    """
    @return: a loopback port nobody listens on (just released).
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


__all__ = ["TreeCheck", "make_crash_tree", "mount_tmpfs"]
