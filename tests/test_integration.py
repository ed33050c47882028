"""
Integration tests: the real C{realized} (console script and C{twistd -n
realized}) and the real C{realize-move} (console script and C{twistd -n
realize-move}) on loopback TLS with real files.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from .helpers import lock_held
from .integration import (
    REALIZE_MOVE,
    REALIZED,
    TWISTD,
    Household,
    make_tree,
    move_from_daemon,
    read_tree,
    run_command,
)


class MoveIntegrationTests(TestCase):
    """
    realize-move from a local arena into a running realized.
    """

    timeout = 120

    async def test_moves_tree(self) -> None:
        """
        A generated tree (nested directories, an empty file, names with
        spaces, ':' and non-ASCII, a file of several MiB) arrives identical
        and the source is emptied; the run exits 0 and prints a line per
        file.
        """
        household = Household(self)
        files = make_tree(household.source)
        await household.start_daemon()
        run = await household.move("docs")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(read_tree(household.destination), files)
        self.assertEqual(read_tree(household.source), {})
        self.assertEqual(
            run.out.count("\nmoved ") + run.out.startswith("moved "), len(files)
        )
        self.assertIn(f"{len(files)} file(s) moved", run.out)
        self.assertEqual(run.err, "")
        # The daemon does not take realize-move (which serves no history)
        # for a peer whose feed failed.
        daemon = household.daemon
        assert daemon is not None
        await household.stop_daemon()
        self.assertNotIn(b"failed", daemon.out)
        self.assertIn(
            b"a serves no history on this connection (a realize-move, or a "
            b"realized older than history): no feed of arena docs",
            daemon.out,
        )
        # mtimes are preserved
        source_tree = make_tree(household.root + "/again")
        del source_tree

    async def test_repairs_partial_by_delta(self) -> None:
        """
        A destination partial of full size with a corrupted byte in every
        leaf is repaired by rsync deltas over real TLS: the file arrives
        identical, nothing is sent by plain copy, and the delta data is
        under 2% of the file.
        """
        household = Household(self)
        content = random.Random(5).randbytes(24 << 20)
        corrupted = bytearray(content)
        for offset in range(12_345, len(content), 1 << 20):
            corrupted[offset] ^= 0xFF
        with open(os.path.join(household.source, "big.bin"), "wb") as f:
            f.write(content)
        with open(os.path.join(household.destination, ".big.bin.part"), "wb") as f:
            f.write(corrupted)
        await household.start_daemon()
        run = await household.move("docs")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(read_tree(household.destination), {"big.bin": content})
        match = re.search(r"sent (\S+) (\S+) by copy, (\S+) (\S+) by delta", run.out)
        assert match is not None, run
        self.assertEqual(match.group(1, 2), ("0", "B"))
        units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}
        sent = float(match.group(3)) * units[match.group(4)]
        self.assertLess(sent, len(content) * 0.02)
        self.assertIn("1 file(s) repaired", run.out)

    async def test_throttle_up(self) -> None:
        """
        --throttle-up 1M holds what realize-move sends to about 1 MiB/s: a
        3 MiB file takes close to 3 s, not a fraction of a second.
        """
        household = Household(self)
        content = random.Random(6).randbytes(3 << 20)
        with open(os.path.join(household.source, "f.bin"), "wb") as f:
            f.write(content)
        await household.start_daemon()
        started = time.monotonic()
        run = await household.move("docs", "--throttle-up", "1M")
        elapsed = time.monotonic() - started
        self.assertEqual(run.code, 0, run)
        self.assertEqual(read_tree(household.destination), {"f.bin": content})
        self.assertGreater(elapsed, 2.5)
        self.assertLess(elapsed, 8)

    async def test_throttle_down(self) -> None:
        """
        --throttle-down 1M asks the daemon (SetRateLimit) to send at most
        1 MiB/s: a 3 MiB file from it takes close to 3 s, and the daemon
        logs the change.
        """
        household = Household(self)
        content = random.Random(7).randbytes(3 << 20)
        with open(os.path.join(household.destination, "f.bin"), "wb") as f:
            f.write(content)
        await household.start_daemon()
        started = time.monotonic()
        run = await move_from_daemon(household, "docs", "--throttle-down", "1M")
        elapsed = time.monotonic() - started
        self.assertEqual(run.code, 0, run)
        self.assertEqual(read_tree(household.source), {"f.bin": content})
        self.assertGreater(elapsed, 2.5)
        assert household.daemon is not None
        self.assertIn(b"asked us to send at most 1048576 B/s", household.daemon.out)

    async def test_unknown_key_refused(self) -> None:
        """
        A client whose key the daemon does not know is refused with exit 1
        and a clear message; nothing moves and the daemon keeps serving.
        """
        household = Household(self)
        files = make_tree(household.source, big=1000)
        await household.start_daemon()
        run = await household.move("docs", key="stranger")
        self.assertEqual(run.code, 1, run)
        self.assertIn("refused our key", run.err)
        self.assertIn("destination b (127.0.0.1:", run.err)
        self.assertEqual(len(run.err.strip().splitlines()), 1, run)
        self.assertEqual(read_tree(household.source), files)
        self.assertEqual(read_tree(household.destination), {})
        assert household.daemon is not None
        self.assertIn(b"rejected connection from 127.0.0.1", household.daemon.out)
        run = await household.move("docs")
        self.assertEqual(run.code, 0, run)

    async def test_daemon_not_running(self) -> None:
        """
        No daemon at the address: exit 1, one line saying the connection
        was refused, nothing deleted.
        """
        household = Household(self)
        files = make_tree(household.source, big=1000)
        household.port = 9  # discard: nobody listens there on loopback
        run = await household.move("docs")
        self.assertEqual(run.code, 1, run)
        self.assertIn("connection refused", run.err)
        self.assertEqual(len(run.err.strip().splitlines()), 1, run)
        self.assertEqual(read_tree(household.source), files)

    async def test_unknown_arena(self) -> None:
        """
        An arena the daemon does not have: exit 1 naming the arena and the
        side.
        """
        household = Household(self)
        await household.start_daemon()
        household.arena = "other"
        os.makedirs(household.source, exist_ok=True)
        run = await household.move("other")
        self.assertEqual(run.code, 1, run)
        self.assertIn("destination b", run.err)
        self.assertIn("'other'", run.err)

    async def test_twistd_plugins(self) -> None:
        """
        Under twistd, realized serves and realize-move moves, ending with
        the same exit codes as the console script: 0 on success, 1 on an
        error.
        """
        household = Household(self)
        files = make_tree(household.source, big=1000)
        await household.start_daemon(command=[*TWISTD, "-n", "--pidfile=", "realized"])
        twistd_move = [*TWISTD, "-n", "--pidfile=", "realize-move"]
        run = await household.move("docs", command=twistd_move)
        self.assertEqual(run.code, 0, run)
        self.assertEqual(read_tree(household.destination), files)
        run = await household.move("nope", command=twistd_move)
        self.assertEqual(run.code, 1, run)
        self.assertIn("arena 'nope'", run.err)

    async def test_local_paths(self) -> None:
        """
        local:/path to local:/path without a config: moves the tree.
        """
        root = os.path.abspath(self.mktemp())
        source = os.path.join(root, "src")
        destination = os.path.join(root, "dst")
        files = make_tree(source, big=3 << 20)
        run = await run_command(
            [
                *REALIZE_MOVE,
                "--src",
                f"local:{source}",
                "--dst",
                f"local:{destination}",
                "--output",
                "quiet",
                "x",
            ]
        )
        self.assertEqual(run.code, 0, run)
        self.assertEqual(run.out, "")
        self.assertEqual(read_tree(destination), files)
        self.assertEqual(read_tree(source), {})

    async def test_same_source_and_destination(self) -> None:
        """
        Source and destination the same: exit 1, nothing touched.
        """
        root = os.path.abspath(self.mktemp())
        files = make_tree(root, big=10)
        run = await run_command(
            [*REALIZE_MOVE, "--src", f"local:{root}", "--dst", f"local:{root}/", "x"]
        )
        self.assertEqual(run.code, 1, run)
        self.assertIn("same", run.err)
        self.assertEqual(read_tree(root), files)

    async def test_destination_inside_source(self) -> None:
        """
        A destination inside the source (here reached through a symbolic
        link to the source) is refused with exit 1 and a message naming
        both directories; nothing is touched or created.
        """
        root = os.path.abspath(self.mktemp())
        source = os.path.join(root, "a")
        files = make_tree(source, big=10)
        os.symlink(source, os.path.join(root, "link"))
        run = await run_command(
            [
                *REALIZE_MOVE,
                "--src",
                f"local:{source}",
                "--dst",
                f"local:{root}/link/sub",
                "x",
            ]
        )
        self.assertEqual(run.code, 1, run)
        self.assertIn("the destination lies inside the source", run.err)
        self.assertIn(f"from {source} into {source}/sub", run.err)
        self.assertEqual(len(run.err.strip().splitlines()), 1, run)
        self.assertEqual(read_tree(source), files)
        self.assertFalse(os.path.exists(os.path.join(source, "sub")))

    async def test_source_inside_destination(self) -> None:
        """
        A source inside the destination is refused with exit 1 and a clear
        message; nothing is touched.
        """
        root = os.path.abspath(self.mktemp())
        source = os.path.join(root, "a", "sub")
        files = make_tree(source, big=10)
        run = await run_command(
            [
                *REALIZE_MOVE,
                "--src",
                f"local:{source}",
                "--dst",
                f"local:{root}/a",
                "x",
            ]
        )
        self.assertEqual(run.code, 1, run)
        self.assertIn("the source lies inside the destination", run.err)
        self.assertEqual(read_tree(source), files)

    async def test_local_datadir_overlap(self) -> None:
        """
        For the side C{local}, the arena's datadir in the config is what
        is compared: a local:/path destination inside it, or holding it,
        is refused with exit 1.
        """
        household = Household(self)
        household.port = 9771
        files = make_tree(household.source, big=10)
        config = household.client_config()
        for dst, message in [
            (f"local:{household.source}/sub", "destination lies inside the source"),
            (f"local:{household.root}", "source lies inside the destination"),
        ]:
            run = await run_command(
                [*REALIZE_MOVE, "--src", "local", "--dst", dst, "-c", config, "docs"]
            )
            self.assertEqual(run.code, 1, run)
            self.assertIn(message, run.err)
            self.assertIn("arena 'docs'", run.err)
        self.assertEqual(read_tree(household.source), files)

    async def test_bad_usage(self) -> None:
        """
        Missing options: exit 1 with a usage message.
        """
        run = await run_command([*REALIZE_MOVE, "docs"])
        self.assertEqual(run.code, 1, run)
        self.assertIn("--src is required", run.err)


class VersionIntegrationTests(TestCase):
    """
    C{--version} of both commands.
    """

    timeout = 60

    async def test_versions(self) -> None:
        """
        realize-move --version and realized --version print the command's
        name with realize's version, then Twisted's, and exit 0 (Twisted's
        own --version printed only Twisted's).
        """
        import realize
        import twisted

        for name, command in [("realize-move", REALIZE_MOVE), ("realized", REALIZED)]:
            run = await run_command([*command, "--version"])
            self.assertEqual(run.code, 0, run)
            self.assertEqual(
                run.out.splitlines(),
                [
                    f"{name} (realize) {realize.__version__.public()}",
                    f"Twisted {twisted.__version__}",
                ],
            )


class DaemonIntegrationTests(TestCase):
    """
    realized's own failures.
    """

    timeout = 60

    async def test_bad_config(self) -> None:
        """
        A config with an unknown key: exit 1, one line naming the file and
        the key.
        """
        household = Household(self)
        config = household.write_config(
            "bad.toml", "[peers.a]\npubkey='x'\ncolour='red'\n"
        )
        run = await run_command(
            [*REALIZED, "--config", config, "--privkey", household.key("b")]
        )
        self.assertEqual(run.code, 1, run)
        self.assertIn("bad.toml: peers.a.pubkey", run.err)

    async def test_unreadable_key(self) -> None:
        """
        A key file that does not exist: exit 1 naming it.
        """
        household = Household(self)
        run = await run_command(
            [
                *REALIZED,
                "--config",
                household.daemon_config(),
                "--privkey",
                household.root + "/missing.key",
            ]
        )
        self.assertEqual(run.code, 1, run)
        self.assertIn("missing.key: cannot read private key", run.err)

    async def test_port_in_use(self) -> None:
        """
        A second daemon on the same port exits 1 saying it cannot listen.
        """
        household = Household(self)
        port = await household.start_daemon()
        run = await run_command(
            [
                *REALIZED,
                "--config",
                household.daemon_config(),
                "--privkey",
                household.key("b"),
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ]
        )
        self.assertEqual(run.code, 1, run)
        self.assertIn("cannot listen", run.err)

    async def test_sigterm(self) -> None:
        """
        SIGTERM stops the daemon cleanly: it shuts its services down, then
        ends by the signal, as twistd does (systemd counts that as a clean
        exit).
        """
        household = Household(self)
        await household.start_daemon()
        daemon = household.daemon
        assert daemon is not None
        self.assertEqual(await household.stop_daemon(), -15)
        self.assertIn(b"Server Shut Down", daemon.out, daemon.out + daemon.err)


class SignalIntegrationTests(TestCase):
    """
    SIGINT, SIGTERM and --max-duration end a running realize-move at once,
    with their exit codes, through the console script and twistd alike.
    """

    timeout = 90

    async def _slow_move(self, household: Household, *args: str, **kw: Any) -> Any:
        with open(os.path.join(household.source, "slow.bin"), "wb") as f:
            f.write(os.urandom(8 << 20))
        await household.start_daemon()
        return household.spawn_move("docs", "--throttle-up", "1M", *args, **kw)

    async def _signal(
        self, name: str, code: int, command: list[str] | None = None
    ) -> None:
        household = Household(self)
        process = await self._slow_move(household, command=command)
        # Until the first data frames have reached the daemon (a fixed
        # 2.5 s was not always enough for twistd on a loaded machine).
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        partial = os.path.join(household.destination, ".slow.bin.part")
        while not (os.path.exists(partial) and os.path.getsize(partial)):
            await deferLater(reactor, 0.05, lambda: None)
        started = time.monotonic()
        process.signal(name)
        run = await process.ended
        elapsed = time.monotonic() - started
        self.assertEqual(run.code, code, run)
        self.assertLess(elapsed, 1.0, run)
        self.assertIn("partial files are kept", run.err)
        # The partial file stays, the source too: the next run resumes.
        self.assertTrue(os.path.exists(os.path.join(household.source, "slow.bin")))
        self.assertEqual(list(read_tree(household.destination)), [".slow.bin.part"])
        run = await household.move("docs")
        self.assertEqual(run.code, 0, run)

    async def test_sigint(self) -> None:
        """
        SIGINT ends the move within a second with exit 20; partials stay.
        """
        await self._signal("INT", 20)

    async def test_sigterm(self) -> None:
        """
        SIGTERM ends the move within a second with exit 143; partials stay.
        """
        await self._signal("TERM", 143)

    async def test_sigint_twistd(self) -> None:
        """
        Under twistd, SIGINT gives the same exit code, 20.
        """
        await self._signal(
            "INT", 20, command=[*TWISTD, "-n", "--pidfile=", "realize-move"]
        )

    async def test_max_duration(self) -> None:
        """
        --max-duration ends the move with exit 11 and says so.
        """
        household = Household(self)
        process = await self._slow_move(household, "--max-duration", "2s")
        run = await process.ended
        self.assertEqual(run.code, 11, run)
        self.assertIn("--max-duration 2s reached", run.err)


class LockIntegrationTests(TestCase):
    """
    Two realize-move processes moving from one local arena: the second
    waits for the first (--wait) or refuses with exit 1.
    """

    timeout = 90

    async def test_second_move_waits_or_refuses(self) -> None:
        """
        While another process holds an arena's lock (as a running move
        does), a move from it with a short --wait exits 1 naming the arena
        and its directory and touches nothing; one with a long --wait says
        it waits, then runs once the lock is released, and exits 0.  (The
        lock is held by this test, not by a slow move, so that a loaded
        machine cannot make the first move end before the second starts.)
        """
        import fcntl

        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        household = Household(self)
        content = os.urandom(1 << 20)
        with open(os.path.join(household.source, "slow.bin"), "wb") as f:
            f.write(content)
        await household.start_daemon()
        holder = os.open(household.source, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, holder)
        fcntl.flock(holder, fcntl.LOCK_EX)
        self.assertTrue(lock_held(household.source))
        refused = await household.move("docs", "--wait", "0.5")
        self.assertEqual(refused.code, 1, refused)
        self.assertIn(
            "error: another realize-move is moving from arena 'docs' "
            f"({os.path.realpath(household.source)}); still there after 0.5 s",
            refused.err,
        )
        self.assertEqual(read_tree(household.source), {"slow.bin": content})
        waiting = household.spawn_move("docs", "--wait", "60s")
        await waiting.wait_for(b"waiting up to 60 s", 0.1)
        self.assertFalse(waiting.ended.called)
        await deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(waiting.ended.called)
        fcntl.flock(holder, fcntl.LOCK_UN)
        waited = await waiting.ended
        self.assertEqual(waited.code, 0, waited)
        self.assertIn("1 file(s) moved", waited.out)
        self.assertEqual(read_tree(household.destination), {"slow.bin": content})
        self.assertEqual(read_tree(household.source), {})


class AddressIntegrationTests(TestCase):
    """
    IPv6 listening and names that resolve to both families (#ipv64).
    """

    timeout = 60

    async def _move_to(self, listen: str, address: str) -> None:
        household = Household(self)
        files = make_tree(household.source, big=1000)
        try:
            await household.start_daemon(listen=listen)
        except RuntimeError as e:
            raise SkipTest(f"cannot listen on {listen}: {e}") from None
        household.address = address
        run = await household.move("docs")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(read_tree(household.destination), files)

    async def test_ipv6(self) -> None:
        """
        realized listens on an IPv6 endpoint and a [::1]:port address
        reaches it.
        """
        if not socket.has_ipv6:
            raise SkipTest("no IPv6 on this machine")
        await self._move_to("tcp6:0:interface=\\:\\:1", "[::1]:{port}")

    async def test_localhost_both_families(self) -> None:
        """
        A daemon on IPv4 only is reached at localhost:port, a name that
        may resolve to ::1 first: HostnameEndpoint tries both families.
        """
        await self._move_to("tcp:0:interface=127.0.0.1", "localhost:{port}")
