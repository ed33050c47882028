"""
Integration tests: C{realized} started by C{systemd-socket-activate} (from
the systemd package), as C{packaging/realized.socket} starts it, serving
C{realize-move} through the inherited socket.  Skipped when
C{systemd-socket-activate} is not installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from typing import Any

from twisted.internet import error, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from .integration import REALIZED, Household, make_tree, read_tree


def free_port(family: socket.AddressFamily, host: str) -> int:
    """
    @return: a TCP port of C{host} that was free a moment ago.
    """
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Activator(protocol.ProcessProtocol):
    """
    Follows C{systemd-socket-activate}: C{ready} fires once it listens,
    C{ended} with the exit code (or minus the signal).
    """

    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[int] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"Listening on" in self.output:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        if code is None:
            code = -(reason.value.signal or 0)
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(
                    f"systemd-socket-activate exited ({code}):\n"
                    + self.output.decode(errors="replace")
                )
            )
        self.ended.callback(code)


class SocketActivationIntegrationTests(TestCase):
    """
    realized under socket activation, as packaging/realized.socket runs it.
    """

    timeout = 120

    def setUp(self) -> None:
        self.activate = shutil.which("systemd-socket-activate")
        if self.activate is None:
            raise SkipTest(
                "systemd-socket-activate is not installed (Debian package systemd)"
            )

    async def activated(
        self, household: Household, listen: str, domain: str
    ) -> _Activator:
        """
        Start realized for peer b behind C{systemd-socket-activate -l
        LISTEN}; it is started at the first connection.

        @return: the activator, listening.
        """
        assert self.activate is not None
        config = household.daemon_config()
        # systemd names every socket it passes (LISTEN_FDNAMES, from
        # FileDescriptorName= or the socket unit's name); Twisted ignores
        # inherited sockets without names, so name it as systemd would.
        args = [
            self.activate,
            "--fdname=realized",
            "-l",
            listen,
            *REALIZED,
            "--config",
            config,
            "--privkey",
            household.key("b"),
            "--listen",
            f"systemd:domain={domain}:index=0",
        ]
        activator = _Activator()
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            activator, args[0], args, env=dict(os.environ)
        )

        async def stop() -> None:
            if not activator.ended.called:
                with contextlib.suppress(error.ProcessExitedAlready):
                    transport.signalProcess("TERM")
                kill = reactor.callLater(  # type: ignore[attr-defined]
                    10, transport.signalProcess, "KILL"
                )
                code = await activator.ended
                if kill.active():
                    kill.cancel()
                # SIGTERM stops the daemon cleanly (exit 0), or ends the
                # activator before it started anything.
                self.assertIn(code, (0, -15), activator.output)

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        await activator.ready
        return activator

    async def test_move_through_inherited_socket(self) -> None:
        """
        A move reaches the daemon through the socket it inherited (IPv4,
        C{systemd:domain=INET:index=0}): every file arrives, the source is
        emptied, and the daemon says it serves the inherited address.
        """
        household = Household(self)
        files = make_tree(household.source, big=1 << 20)
        household.port = free_port(socket.AF_INET, "127.0.0.1")
        activator = await self.activated(
            household, f"127.0.0.1:{household.port}", "INET"
        )
        run = await household.move("docs")
        self.assertEqual(run.code, 0, (run, activator.output))
        self.assertEqual(read_tree(household.destination), files)
        self.assertEqual(read_tree(household.source), {})
        self.assertIn(
            f"listening on 127.0.0.1:{household.port}".encode(), activator.output
        )
        self.assertIn(b"[realize.auth#info] authenticated a", activator.output)

    async def test_dual_stack(self) -> None:
        """
        With the IPv6 socket of realized.socket (C{[::]:PORT}, dual stack,
        C{systemd:domain=INET6:index=0}), an IPv4 client gets through.
        """
        if not socket.has_ipv6:
            raise SkipTest("no IPv6 on this machine")
        try:
            port = free_port(socket.AF_INET6, "::")
        except OSError as e:
            raise SkipTest(f"cannot bind an IPv6 socket: {e}") from None
        household = Household(self)
        files = make_tree(household.source, big=1000)
        household.port = port
        activator = await self.activated(household, f"[::]:{port}", "INET6")
        run = await household.move("docs")
        self.assertEqual(run.code, 0, (run, activator.output))
        self.assertEqual(read_tree(household.destination), files)
