"""
Fixtures for the household integration tests: several real C{realized}
processes on loopback, each with its own config, keys, state directory and
optionally a FUSE mount, and C{realize-history} runs.  Everything started
is stopped (and unmounted) by the test's cleanups.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from realize.tap.keygen import write_key_pair
from tests.integration import REALIZED, Run, _Collector, run_command

REALIZE_HISTORY = [sys.executable, "-m", "realize.tap.history"]


def free_port() -> int:
    """
    @return: a TCP port free on 127.0.0.1 now (another process may take it
        before it is used: tests accept that small race).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_fuse() -> None:
    """
    @raise SkipTest: if this machine cannot mount FUSE.
    """
    if not os.path.exists("/dev/fuse"):
        raise SkipTest("/dev/fuse is missing: no FUSE on this machine")
    if shutil.which("fusermount3") is None:
        raise SkipTest("fusermount3 is missing (apt-get install fuse3)")


async def eventually(
    check: Callable[[], Any], seconds: float = 10.0, what: str = "condition"
) -> Any:
    """
    Poll C{check} (run in a thread: it may touch a FUSE mount) until it
    returns something true, for at most C{seconds}.

    @return: what it returned.
    @raise AssertionError: naming C{what} if it never did.
    """
    from twisted.internet.threads import deferToThread

    deadline = reactor.seconds() + seconds  # type: ignore[attr-defined]
    last: Any = None
    while True:
        try:
            last = await deferToThread(check)
        except (OSError, AssertionError) as e:
            last = e
        else:
            if last:
                return last
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError(f"{what} not reached in {seconds} s: {last!r}")
        await deferLater(reactor, 0.1, lambda: None)


class Peer:
    """
    One peer of a L{Peers} household.
    """

    def __init__(self, peers: Peers, name: str, listens: bool, datadir: bool) -> None:
        self.peers = peers
        self.name = name
        self.port = free_port() if listens else None
        base = os.path.join(peers.root, name)
        self.datadir = os.path.join(base, "data") if datadir else None
        self.workdir = os.path.join(base, "work")
        self.statedir = os.path.join(base, "state")
        self.mountpoint: str | None = None
        #: More lines of this peer's [[arena]] table (e.g. a mountpoint).
        self.arena_lines: list[str] = []
        #: More lines at the end of its config (e.g. an [overlay] table).
        self.config_lines: list[str] = []
        for path in (self.datadir, self.workdir, self.statedir):
            if path is not None:
                os.makedirs(path, exist_ok=True)
        self.daemon: _Collector | None = None
        self.transport: Any = None
        #: C{[cache]} keys of this peer's config (e.g. C{{"size": "8M"}}).
        self.cache: dict[str, str] = {}
        #: The command that runs the daemon.
        self.command: list[str] = list(REALIZED)

    @property
    def key(self) -> str:
        return os.path.join(self.peers.keys, f"{self.name}.key")

    def config(self) -> str:
        """
        Write this peer's config (every peer, one arena).

        @return: its path.
        """
        lines = []
        for peer in self.peers.all:
            lines.append(f"[peers.{peer.name}]")
            if peer.port is not None:
                lines.append(f'address = "127.0.0.1:{peer.port}"')
            lines.append(f'pubkey = """{self.peers.pub(peer.name)}"""')
        lines.append("[[arena]]")
        lines.append(f'name = "{self.peers.arena}"')
        lines.append(f'workdir = "{self.workdir}"')
        if self.datadir is not None:
            lines.append(f'datadir = "{self.datadir}"')
        lines += self.arena_lines
        lines += self.config_lines
        if self.cache:
            lines.append("[cache]")
            lines.extend(f'{key} = "{value}"' for key, value in self.cache.items())
        path = os.path.join(self.peers.root, f"{self.name}.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    async def start(self, *extra: str, fuse: bool = False) -> None:
        """
        Start this peer's daemon and wait until it listens (and mounted,
        with C{fuse}).
        """
        args = [
            *self.command,
            "--config",
            self.config(),
            "--privkey",
            self.key,
            "--statedir",
            self.statedir,
            "--listen",
            f"tcp:{self.port or 0}:interface=127.0.0.1",
            *extra,
        ]
        if fuse:
            need_fuse()
            self.mountpoint = os.path.join(self.peers.root, self.name, "mnt")
            os.makedirs(self.mountpoint, exist_ok=True)
            args += ["--fuse", self.mountpoint]
        collector = _Collector()
        self.transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            collector, args[0], args, env=dict(os.environ)
        )
        self.daemon = collector
        self.peers.case.addCleanup(self.stop)
        await collector.listening
        if fuse:
            await self.wait_log(b"the Unreal is mounted", 20)

    async def wait_log(self, text: bytes, seconds: float = 10.0) -> None:
        """
        Wait until the daemon's output holds C{text}.
        """
        collector = self.daemon
        assert collector is not None

        def seen() -> bool:
            return text in collector.out + collector.err

        await eventually(seen, seconds, f"{text!r} in the log of {self.name}")

    def log(self) -> bytes:
        return b"" if self.daemon is None else self.daemon.out + self.daemon.err

    async def stop(self, kill: bool = False) -> int | None:
        """
        Stop the daemon (SIGTERM, or SIGKILL), wait for it, and make sure
        its mount is gone.
        """
        daemon, self.daemon = self.daemon, None
        code = None
        if daemon is not None:
            if not daemon.ended.called:
                with contextlib.suppress(error.ProcessExitedAlready):
                    self.transport.signalProcess("KILL" if kill else "TERM")
                timeout = reactor.callLater(  # type: ignore[attr-defined]
                    15, lambda: self.transport.signalProcess("KILL")
                )
                code = await daemon.ended
                if timeout.active():
                    timeout.cancel()
            else:
                code = await daemon.ended
        if self.mountpoint is not None and kill:
            subprocess.run(
                ["fusermount3", "-uz", self.mountpoint],
                capture_output=True,
                check=False,
            )
        return code

    def write(self, path: str, data: bytes) -> str:
        """
        Write a file into this peer's datadir.

        @return: its full path.
        """
        assert self.datadir is not None
        full = os.path.join(self.datadir, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        return full

    def mounted(self, path: str = "") -> str:
        """
        @return: a path in this peer's view of the arena.
        """
        assert self.mountpoint is not None
        return os.path.join(self.mountpoint, self.peers.arena, path)

    def history(self, *args: str, peer: str | None = None) -> Deferred[Run]:
        """
        Run C{realize-history} with this peer's config and key, asking
        C{peer} (default: this peer's own index, C{--peer local}).
        """
        return run_command(
            [
                *REALIZE_HISTORY,
                "--config",
                self.config(),
                "--privkey",
                self.key,
                "--peer",
                peer or "local",
                *args,
                self.peers.arena,
            ]
        )


class Peers:
    """
    A household of peers with keys in a temporary directory.

    @ivar all: the peers, in order of creation.
    """

    def __init__(self, case: TestCase, arena: str = "docs") -> None:
        self.case = case
        self.arena = arena
        self.root = os.path.abspath(case.mktemp())
        self.keys = os.path.join(self.root, "keys")
        os.makedirs(self.keys)
        self.all: list[Peer] = []

    def add(self, name: str, listens: bool = True, datadir: bool = True) -> Peer:
        write_key_pair(self.keys, name)
        peer = Peer(self, name, listens, datadir)
        self.all.append(peer)
        return peer

    def pub(self, name: str) -> str:
        with open(os.path.join(self.keys, f"{name}.pub")) as f:
            return f.read()
