"""
Fixtures for integration tests: real C{realized} processes on loopback,
real C{realize-move} runs, generated keys and configs in a temporary
directory.  Everything started is stopped by the test's cleanups.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from typing import Any

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from realize.tap.keygen import write_key_pair

#: How a test runs the commands: the same interpreter, as modules.
REALIZE_MOVE = [sys.executable, "-m", "realize.tap.move"]
REALIZED = [sys.executable, "-m", "realize.tap.realized"]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

_LISTENING = re.compile(rb"listening on \[?([0-9a-f.:]+)\]?:(\d+)")


class _Collector(protocol.ProcessProtocol):
    """
    Collects a process's output; fires C{ended} with the exit code, and
    C{listening} with the port of a daemon's "listening on" log line.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()
        self.listening: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self._check()

    def _check(self) -> None:
        if not self.listening.called:
            match = _LISTENING.search(self.out + self.err)
            if match:
                self.listening.callback(int(match.group(2)))

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        if code is None:
            code = -(reason.value.signal or 0)
        if not self.listening.called:
            self.listening.errback(
                RuntimeError(
                    f"daemon exited ({code}) before listening:\n"
                    f"{self.out.decode(errors='replace')}"
                    f"{self.err.decode(errors='replace')}"
                )
            )
        self.ended.callback(code)


class Run:
    """
    A finished command: exit code and output.
    """

    def __init__(self, code: int, out: bytes, err: bytes) -> None:
        self.code = code
        self.out = out.decode("utf-8", "replace")
        self.err = err.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Run exit={self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}>"


class Running:
    """
    A command running in the background: signal it, wait for its output
    or its end.
    """

    def __init__(self, args: list[str]) -> None:
        self._collector = _Collector()
        self._collector.listening.addErrback(lambda _: None)
        self.transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            self._collector, args[0], args, env=dict(os.environ)
        )
        self.ended: Deferred[Run] = self._collector.ended.addCallback(
            lambda code: Run(code, self._collector.out, self._collector.err)
        )

    async def wait_for(self, text: bytes, seconds: float) -> None:
        """
        Wait until the output holds C{text}, for at least C{seconds}.
        """
        from twisted.internet.task import deferLater

        await deferLater(reactor, seconds, lambda: None)
        while text not in self._collector.out + self._collector.err:
            await deferLater(reactor, 0.05, lambda: None)

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"INT"}, C{"TERM"}, ...).
        """
        self.transport.signalProcess(name)

    async def kill(self) -> None:
        """
        SIGKILL the command if it still runs, and wait for its end: a
        test that fails or times out leaves nothing running behind it.
        """
        if not self.ended.called:
            with contextlib.suppress(error.ProcessExitedAlready):
                self.transport.signalProcess("KILL")
        await self._collector.ended


def run_command(args: list[str], env: dict[str, str] | None = None) -> Deferred[Run]:
    """
    Run a command to its end.

    @return: a Deferred firing with its L{Run}.
    """
    collector = _Collector()
    reactor.spawnProcess(  # type: ignore[attr-defined]
        collector, args[0], args, env=env or dict(os.environ)
    )
    collector.listening.addErrback(lambda _: None)
    return collector.ended.addCallback(
        lambda code: Run(code, collector.out, collector.err)
    )


class Household:
    """
    Two peers, C{a} (runs realize-move, local arena) and C{b} (runs
    realized), with keys and configs in a directory.

    @ivar root: the directory.
    @ivar source: a's datadir of arena C{docs}.
    @ivar destination: b's datadir of arena C{docs}.
    """

    def __init__(self, case: TestCase, arena: str = "docs") -> None:
        self.case = case
        self.arena = arena
        self.root = os.path.abspath(case.mktemp())
        os.makedirs(os.path.join(self.root, "keys"))
        self.keys = os.path.join(self.root, "keys")
        for name in ("a", "b", "stranger"):
            write_key_pair(self.keys, name)
        self.source = os.path.join(self.root, "a-docs")
        self.destination = os.path.join(self.root, "b-docs")
        os.makedirs(self.source)
        os.makedirs(self.destination)
        self.port = 0
        #: How a's config gives b's address; {port} is replaced.
        self.address = "127.0.0.1:{port}"
        self.daemon: _Collector | None = None
        self.daemon_transport: Any = None

    def pub(self, name: str) -> str:
        with open(os.path.join(self.keys, f"{name}.pub")) as f:
            return f.read()

    def key(self, name: str) -> str:
        return os.path.join(self.keys, f"{name}.key")

    def write_config(self, name: str, text: str) -> str:
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def daemon_config(self, extra: str = "") -> str:
        return self.write_config(
            "b.toml",
            f'[peers.a]\npubkey = """{self.pub("a")}"""\n'
            f'[peers.b]\npubkey = """{self.pub("b")}"""\n'
            f'[[arena]]\nname = "{self.arena}"\ndatadir = "{self.destination}"\n'
            + extra,
        )

    def client_config(self) -> str:
        return self.write_config(
            "a.toml",
            f'[peers.a]\npubkey = """{self.pub("a")}"""\n'
            f'[peers.b]\naddress = "{self.address.format(port=self.port)}"\n'
            f'pubkey = """{self.pub("b")}"""\n'
            f'[[arena]]\nname = "{self.arena}"\ndatadir = "{self.source}"\n',
        )

    async def start_daemon(
        self,
        *extra: str,
        command: list[str] | None = None,
        listen: str = "tcp:0:interface=127.0.0.1",
    ) -> int:
        """
        Start C{realized} for b on a free loopback port.

        @return: the port.
        """
        config = self.daemon_config()
        collector = _Collector()
        args = [
            *(command or REALIZED),
            "--config",
            config,
            "--privkey",
            self.key("b"),
            "--listen",
            listen,
            *extra,
        ]
        self.daemon_transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            collector, args[0], args, env=dict(os.environ)
        )
        self.daemon = collector
        self.case.addCleanup(self.stop_daemon)
        self.port = await collector.listening
        return self.port

    async def stop_daemon(self) -> int | None:
        """
        SIGTERM the daemon and wait for it.

        @return: its exit code, or C{None} if none was running.
        """
        if self.daemon is None:
            return None
        daemon, self.daemon = self.daemon, None
        if not daemon.ended.called:
            with contextlib.suppress(error.ProcessExitedAlready):
                self.daemon_transport.signalProcess("TERM")
            timeout = reactor.callLater(  # type: ignore[attr-defined]
                10, lambda: self.daemon_transport.signalProcess("KILL")
            )
            code = await daemon.ended
            if timeout.active():
                timeout.cancel()
            return code
        return await daemon.ended

    def move_args(
        self, args: tuple[str, ...], key: str = "a", command: list[str] | None = None
    ) -> list[str]:
        """
        The command line of realize-move from a's local arena to b.
        """
        return [
            *(command or REALIZE_MOVE),
            "--src",
            "local",
            "--dst",
            "b",
            "--config",
            self.client_config(),
            "--privkey",
            self.key(key),
            "--output",
            "log",
            *args,
        ]

    def move(
        self, *args: str, key: str = "a", command: list[str] | None = None
    ) -> Deferred[Run]:
        """
        Run realize-move from a's local arena to b.
        """
        return run_command(self.move_args(args, key, command))

    def spawn_move(
        self, *args: str, key: str = "a", command: list[str] | None = None
    ) -> Running:
        """
        Start realize-move from a's local arena to b, without waiting.
        """
        running = Running(self.move_args(args, key, command))
        self.case.addCleanup(running.kill)
        return running


def move_from_daemon(household: Household, *args: str) -> Deferred[Run]:
    """
    Run realize-move from b (the daemon) to a's local arena.
    """
    return run_command(
        [
            *REALIZE_MOVE,
            "--src",
            "b",
            "--dst",
            "local",
            "--config",
            household.client_config(),
            "--privkey",
            household.key("a"),
            "--output",
            "log",
            *args,
        ]
    )


def make_tree(root: str, big: int = 5 << 20) -> dict[str, bytes]:
    """
    Generate a tree of real files: nested directories, an empty file,
    names with spaces, ':' and non-ASCII, a file of several MiB, and some
    small files.

    @return: path relative to the root to content.
    """
    rng = __import__("random").Random(42)
    files = {
        "empty": b"",
        "top.txt": b"hello\n",
        "nested/deeper/deepest/leaf.bin": rng.randbytes(70_000),
        "with space/and: colon.txt": b"colon and space\n",
        "unicodé/naïve ☃.txt": "non-ASCII ✓\n".encode(),
        "big/several-mib.bin": rng.randbytes(big),
    }
    for i in range(40):
        files[f"many/f{i:03d}"] = rng.randbytes(rng.randrange(0, 20_000))
    write_tree(root, files)
    return files


def write_tree(root: str, files: dict[str, bytes]) -> None:
    """
    Write files below C{root}, making their directories.

    @param files: path relative to the root to content.
    """
    for path, content in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(content)


def read_tree(root: str) -> dict[str, bytes]:
    """
    @return: every regular file under C{root}, relative path to content.
    """
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            full = os.path.join(directory, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, root)] = f.read()
    return found


__all__ = [
    "Household",
    "Run",
    "defer",
    "make_tree",
    "move_from_daemon",
    "read_tree",
    "run_command",
    "signal",
]
