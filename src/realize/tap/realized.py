"""
C{realized}: the daemon serving this peer's arenas over AMP over TLS
(DESIGN.md section 8).

C{twistd -n realized --config FILE --privkey FILE --listen ENDPOINT}, or
the C{realized} console script with the same options.  A L{MultiService}:
the I/O thread pool first, then the store, then the listening port, so
that stopping stops listening before the store and the threads.

A bad config, an unreadable key or a port that cannot be listened on end
the process with exit code 1 and one line naming the problem.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from realize.config import Config, load_config
from realize.errors import RealizeError
from realize.model import PeerId
from realize.net.server import server_factory
from realize.net.tls import ServerTLS, load_private_key
from realize.services.store import StoreService
from realize.tap._common import (
    EXIT_ERROR,
    GnuOptions,
    ThreadPoolService,
    exit_after_shutdown,
)

__all__ = ["DaemonOptions", "main", "makeService"]

log = Logger(namespace="realize.daemon")

DEFAULT_LISTEN = "tcp:9771:interface=\\:\\:"


class DaemonOptions(GnuOptions):
    """
    Command line of C{realized}.
    """

    synopsis = "--config FILE --privkey FILE [--listen ENDPOINT]"

    optParameters = [
        ["config", "c", None, "Config file (TOML)."],
        ["privkey", "k", None, "This peer's ed25519 private key (PEM)."],
        [
            "listen",
            "l",
            DEFAULT_LISTEN,
            "Twisted server endpoint to listen on, e.g. tcp:9771:interface=127.0.0.1 "
            "or systemd:domain=INET6:index=0.",
        ],
    ]

    def postOptions(self) -> None:
        for name in ("config", "privkey"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")


class _ListenService(Service):
    """
    Listens on an endpoint; a failure to listen ends the process with
    exit code 1 and a clear message.
    """

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.description)
        except (ValueError, KeyError, TypeError) as e:
            self._fail(f"bad --listen endpoint {self.description!r}: {e}")
            return
        d = endpoint.listen(self.factory)

        def listening(port: IListeningPort) -> None:
            self.port = port
            host = port.getHost()
            # Logged once the reactor runs, with its signal handlers in
            # place: from then on the daemon is ready and stops cleanly.
            self.reactor.callWhenRunning(
                log.info,
                "listening on {address}",
                address=f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}",
            )

        d.addCallbacks(
            listening,
            lambda f: self._fail(
                f"cannot listen on {self.description!r}: {f.getErrorMessage()}"
            ),
        )

    def _fail(self, message: str) -> None:
        # twistd sends sys.stderr to its log: tell the user directly too.
        stderr = sys.__stderr__ or sys.stderr
        stderr.write(f"realized: error: {message}\n")
        stderr.flush()
        log.critical("{message}", message=message)
        exit_after_shutdown(self.reactor, EXIT_ERROR)

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def _fail(message: str) -> None:
    sys.stderr.write(f"realized: error: {message}\n")
    sys.exit(EXIT_ERROR)


def make_daemon(reactor: Any, config: Config, key: Any, listen: str) -> MultiService:
    """
    Assemble the daemon.

    @param reactor: the reactor.
    @param config: the config.
    @param key: this peer's private key.
    @param listen: endpoint string to listen on.
    @return: the daemon's service, not started.
    """
    top = MultiService()
    threads = ThreadPoolService(reactor, "realized-io")
    top.addService(threads)
    store = StoreService(config, threads.run_in_thread)
    store.name = "store"
    top.addService(store)

    def lookup(spki: bytes) -> PeerId | None:
        return store.config.peer_by_spki().get(spki)

    tls = ServerTLS(key, lookup)
    factory = server_factory(
        tls,
        store.view,
        reactor,
        config.limits.throttle_up,
        config.limits.throttle_down,
    )
    top.addService(_ListenService(reactor, listen, factory))
    return top


def makeService(options: DaemonOptions) -> IService:
    """
    The twistd plugin's service.

    Exits the process with code 1 and a message on a bad config or key.
    """
    from twisted.internet import reactor

    try:
        config = load_config(options["config"])
        key = load_private_key(options["privkey"])
    except RealizeError as e:
        _fail(str(e))
    return make_daemon(reactor, config, key, options["listen"])


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{realized} console script: C{twistd -n realized ...} without a
    pid file.
    """
    from twisted.scripts.twistd import run as twistd

    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["realized", "--nodaemon", "--pidfile=", "realized", *args]
    twistd()


#: The name twistd's ServiceMaker looks for.
Options = DaemonOptions


if __name__ == "__main__":  # pragma: no cover
    main()
