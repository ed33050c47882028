"""
C{realized}: the daemon serving this peer's arenas over AMP over TLS
(DESIGN.md section 8).

C{twistd -n realized --config FILE --privkey FILE --listen ENDPOINT}, or
the C{realized} console script with the same options.  An
L{OrderedServices} (L{realize.services.lifecycle}): the thread pools
first, then the store, then the connections and the listening port, so
that stopping stops listening, then closes the connections, then the
store, then joins the threads.

A bad config, an unreadable key or a port that cannot be listened on end
the process with exit code 1 and one line naming the problem.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import IService, IServiceCollection, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorFromThreads
from twisted.logger import Logger
from twisted.python import usage

from realize.collector import tune_gc
from realize.config import Config, PeerConfig, load_config, public_key_spki
from realize.errors import RealizeError
from realize.interfaces import RunInThread, Store
from realize.logs import ApplicationLogging, LogOptions
from realize.metrics import (
    CacheMetrics,
    ConsensusMetrics,
    DaemonMetrics,
    HistoryMetrics,
    make_registry,
)
from realize.model import PeerId
from realize.net.client import authenticate
from realize.net.factory import IDLE_TIMEOUT, client_factory, server_factory
from realize.net.framing import Connection, ConnectionLimits
from realize.net.history import history_responders
from realize.net.locator import CompositeLocator
from realize.net.registry import ConnectionRegistry
from realize.net.server import StoreResponders
from realize.net.throttle import ThrottlingFactory
from realize.net.tls import ClientTLS, ServerTLS, load_private_key, public_key_pem
from realize.processes import WorkerService
from realize.services.history import HistoryService
from realize.services.lifecycle import (
    ConnectionsService,
    OrderedServices,
    reconfigurable,
)
from realize.services.notifier import KernelNotifier
from realize.services.store import StoreService
from realize.services.watcher import WatcherService
from realize.storage import batch
from realize.storage.pool import open_pool
from realize.tap._common import (
    EXIT_ERROR,
    GnuOptions,
    exit_after_shutdown,
    raise_fd_limit,
    tune_gil,
    tune_malloc,
)
from realize.tap.overlay import MountAllOptions, UnmountAllOptions
from realize.tap.overlay import run as run_overlay_command
from realize.tap.unreal import ArenaDbs, UnrealService
from realize.threads import (
    CONNECTION_CPU_JOBS,
    CONNECTION_IO_JOBS,
    CPU_THREADS,
    IO_THREADS,
    BoundedRunner,
    ThreadPoolService,
)
from realize.web import metrics_endpoint, metrics_site, parse_metrics_address

__all__ = ["Daemon", "DaemonOptions", "assemble", "main", "makeService", "make_daemon"]

log = Logger(namespace="realize.daemon")

DEFAULT_LISTEN = "tcp:9771:interface=\\:\\:"

#: Seconds to wait for the TCP connection to a listening peer.
CONNECT_TIMEOUT = 30.0


class DaemonOptions(GnuOptions, LogOptions):
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
        [
            "metrics-addr",
            None,
            None,
            "Serve /metrics (Prometheus) on HOST:PORT; other paths answer 401.",
        ],
        [
            "fuse",
            None,
            None,
            "Mount the view of every peer's files (the Unreal) here.",
        ],
        [
            "statedir",
            None,
            None,
            "Where the global realize.db lives (default: beside the config).",
        ],
    ]

    def opt_version(self) -> None:
        """
        Show realize's and Twisted's versions and exit.
        """
        from realize.tap._common import print_version

        print_version("realized")

    subCommands = [
        ["mountall", None, MountAllOptions, "Mount the overlays of the arenas."],
        ["unmountall", None, UnmountAllOptions, "Unmount the overlays."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is not None:
            self["log"] = self.log_settings()
            return
        for name in ("config", "privkey"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")
        if self["metrics-addr"] is not None:
            try:
                parse_metrics_address(self["metrics-addr"])
            except RealizeError as e:
                raise usage.UsageError(str(e)) from None
        self["log"] = self.log_settings()


class _ListenService(Service):
    """
    Listens on an endpoint; a failure to listen ends the process with
    exit code 1 and a clear message.
    """

    def __init__(
        self, reactor: Any, description: str, factory: Any, what: str = "listening"
    ) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.what = what
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.description)
        except IndexError:
            # systemd:... with no (or no such) socket passed by systemd.
            self._fail(
                f"no socket for {self.description!r}: run under systemd socket "
                "activation with the socket named in the unit"
            )
            return
        except (ValueError, KeyError, TypeError) as e:
            self._fail(f"bad endpoint {self.description!r}: {e}")
            return
        d = endpoint.listen(self.factory)

        def listening(port: IListeningPort) -> None:
            self.port = port
            host = port.getHost()
            # Logged once the reactor runs, with its signal handlers in
            # place: from then on the daemon is ready and stops cleanly.
            self.reactor.callWhenRunning(
                log.info,
                "{what} on {address}",
                what=self.what,
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


def _exit_error(reactor: Any, message: str) -> None:
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(f"realized: error: {message}\n")
    stderr.flush()
    log.critical("{message}", message=message)
    exit_after_shutdown(reactor, EXIT_ERROR)


def _fail(message: str) -> None:
    sys.stderr.write(f"realized: error: {message}\n")
    sys.exit(EXIT_ERROR)


@define(eq=False)
class ReloadService(Service):
    """
    Re-reads the config and the key file on SIGHUP (#sighup) and hands the
    new config to every service under C{root} that takes one
    (L{Reconfigurable}): arenas and peers added, removed or changed apply
    to new commands at once, the connections of peers removed (or whose
    key changed) are closed, the others stay; new connections use the new
    key and limits.  A config or key that cannot be read or is invalid is
    logged and the old ones stay in force.

    @ivar reactor: the reactor (signals, threads).
    @ivar config_path: the config file.
    @ivar key_path: the private key file.
    @ivar root: the daemon's services.
    @ivar tls: the server TLS settings (the key).
    @ivar run_in_thread: reads the files off the reactor thread.
    """

    reactor: IReactorFromThreads
    config_path: str
    key_path: str
    root: IServiceCollection
    tls: ServerTLS
    run_in_thread: RunInThread
    _previous: Any = field(default=None, init=False)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]

        def hangup(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reload)

        self._previous = signal.signal(signal.SIGHUP, hangup)

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return None

    def reload(self) -> Deferred[None]:
        """
        Re-read and apply the config and the key.

        @return: a Deferred that fires once applied or refused (it never
            fails: errors are logged).
        """
        return Deferred.fromCoroutine(self._reload())

    async def _reload(self) -> None:
        try:
            config = await self.run_in_thread(load_config, self.config_path)
            key = await self.run_in_thread(load_private_key, self.key_path)
        except RealizeError as e:
            log.error(
                "config not reloaded: {error}; the old one stays in force",
                error=str(e),
            )
            return
        self.tls.set_key(key)
        for service in reconfigurable(self.root):
            service.reconfigure(config)
        log.info(
            "reloaded {config}: {peers} peer(s), {arenas} arena(s)",
            config=self.config_path,
            peers=len(config.peers),
            arenas=len(config.arenas),
        )


@define(eq=False)
class PeerGate:
    """
    What a reload changes on the listening side: the default rate limits
    of new connections, and the connections of peers the new config no
    longer admits (closed).

    @ivar throttle: the listening factory's throttle.
    @ivar registry: the live connections.
    """

    throttle: ThrottlingFactory
    registry: ConnectionRegistry

    def reconfigure(self, config: Config) -> None:
        self.throttle.rate_up = config.limits.throttle_up
        self.throttle.rate_down = config.limits.throttle_down
        keys = {peer.id: peer.spki for peer in config.peers.values()}
        closed = self.registry.close_peers(lambda peer, spki: keys.get(peer) == spki)
        if closed:
            log.info("{closed} connection(s) of removed peers closed", closed=closed)


class _GateService(Service):
    """
    L{PeerGate} in the service tree, so that the reload finds it.
    """

    def __init__(self, gate: PeerGate) -> None:
        self.gate = gate

    def reconfigure(self, config: Config) -> None:
        self.gate.reconfigure(config)


@define(eq=False)
class Daemon:
    """
    The assembled daemon, for tests and the plugin.

    @ivar service: the root service (start and stop it).
    @ivar registry: the live connections by peer.
    @ivar store: the store service.
    @ivar io: the file I/O thread pool.
    @ivar cpu: the CPU thread pool.
    @ivar history: the histories of the arenas with a datadir.
    @ivar watchers: their watchers.
    @ivar unreal: the Unreal (household, FUSE view).
    """

    service: OrderedServices
    registry: ConnectionRegistry
    store: StoreService
    io: ThreadPoolService
    cpu: ThreadPoolService
    history: HistoryService
    watchers: WatcherService
    unreal: UnrealService


class _OverlayCommand(Service):
    """
    C{twistd -n realized mountall ...}: runs the command once the reactor
    runs, then exits with its code.
    """

    def __init__(self, options: Any) -> None:
        self.options = options

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        from twisted.internet import reactor

        def go() -> None:
            exit_after_shutdown(reactor, run_overlay_command(self.options))

        reactor.callWhenRunning(go)


def make_daemon(
    reactor: Any,
    config: Config,
    key: Any,
    listen: str,
    **kwargs: Any,
) -> OrderedServices:
    """
    Assemble the daemon (L{assemble}) and return its root service.
    """
    return assemble(reactor, config, key, listen, **kwargs).service


def this_peer(config: Config, key: Any) -> PeerId | None:
    """
    @return: the peer of the config whose public key is C{key}'s (one
        config can serve every peer), or C{None}.
    """
    spki = public_key_spki(public_key_pem(key))
    return config.peer_by_spki().get(spki)


def assemble(
    reactor: Any,
    config: Config,
    key: Any,
    listen: str,
    *,
    config_path: str | None = None,
    key_path: str | None = None,
    metrics_addr: str | None = None,
    fuse: str | None = None,
    statedir: str | None = None,
    exit_on_error: Callable[[str], None] | None = None,
) -> Daemon:
    """
    Assemble the daemon: its services in the order they start (and, in
    reverse, stop: L{realize.services.lifecycle}): the arena dbs, the thread
    pools, the store, the histories and their watchers, the Unreal (the
    household, the consensus jobs and the FUSE mount), the connections,
    the listening ports, the reload.

    @param reactor: the reactor.
    @param config: the config.
    @param key: this peer's private key.
    @param listen: endpoint string to listen on.
    @param config_path: the config file, to re-read on SIGHUP (no reload
        without it); its directory is the default state directory.
    @param key_path: the key file, to re-read on SIGHUP.
    @param metrics_addr: C{HOST:PORT} to serve /metrics on, or C{None}.
    @param fuse: where to mount the FUSE view, or C{None}.
    @param statedir: where the global C{realize.db} lives (default: beside
        the config, else the current directory).
    @param exit_on_error: called with a message when a part cannot start.
    @return: the daemon, not started.
    """
    top = OrderedServices()
    dbs = ArenaDbs(functools.partial(open_pool, reactor=reactor))
    top.add(dbs)
    io = ThreadPoolService(reactor, "realized-io", IO_THREADS)
    cpu = ThreadPoolService(reactor, "realized-cpu", CPU_THREADS)
    batches = WorkerService(reactor, "realized-worker", preload=[batch.__name__])
    top.add(io)
    top.add(cpu)
    top.add(batches)
    registry_ = make_registry()
    metrics = DaemonMetrics(registry_)
    history_metrics = HistoryMetrics(registry_)
    history = HistoryService(
        config, reactor, io.run_in_thread, dbs.pool, history_metrics
    )
    watchers = WatcherService(
        config,
        history.indexes,
        history.ready,
        reactor,
        cpu.run_in_thread,
        lambda: KernelNotifier(reactor),
        history_metrics,
    )
    store = StoreService(
        config, io.run_in_thread, listener=watchers, run_batch=batches.run
    )
    store.name = "store"
    top.add(store)
    top.add(history)
    top.add(watchers)

    def lookup(spki: bytes) -> PeerId | None:
        return store.config.peer_by_spki().get(spki)

    registry = ConnectionRegistry()
    tls = ServerTLS(key, lookup)
    serve_history = history_responders(history)

    def responders(connection: Connection) -> Any:
        label = f"peer {connection.peer or connection.address}"
        run_io = BoundedRunner(io.run_in_thread, CONNECTION_IO_JOBS, label)
        run_cpu = BoundedRunner(cpu.run_in_thread, CONNECTION_CPU_JOBS, label)
        run_batch = BoundedRunner(batches.run, CONNECTION_IO_JOBS, label)

        def closed(result: object) -> object:
            run_io.close()
            run_cpu.close()
            run_batch.close()
            return result

        connection.lost.addBoth(closed)

        views: dict[PeerId, Store] = {}

        def view(peer: PeerId) -> Store:
            # One view per connection: it is one writer (a mover repairs
            # ranges of a file in parallel; another connection may not
            # write that file meanwhile).
            if peer not in views:
                views[peer] = store.view(peer, run_io, run_cpu, run_batch)
            return views[peer]

        return CompositeLocator(
            [StoreResponders(connection, view, metrics), serve_history(connection)]
        )

    me = this_peer(config, key)

    def dial(peer: PeerConfig) -> ClientService:
        assert peer.address is not None
        host, port = peer.address
        endpoint = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
        factory = client_factory(
            ClientTLS(tls.key, peer.spki, peer.id),
            reactor,
            responders,
            run_in_thread=cpu.run_in_thread,
            registry=registry,
            limits=ConnectionLimits(idle_timeout=None),
        )
        return ClientService(
            endpoint,
            factory,
            retryPolicy=backoffPolicy(initialDelay=1.0, maxDelay=60.0),
            clock=reactor,
            prepareConnection=authenticate,
        )

    state = (
        Path(statedir)
        if statedir
        else (Path(config_path).absolute().parent if config_path else Path.cwd())
    )
    unreal = UnrealService(
        config,
        state,
        me,
        registry,
        dbs,
        reactor,
        io.run_in_thread,
        local_store=lambda: store.store,
        local_history=history,
        dial=dial,
        mountpoint=fuse,
        exit_on_error=exit_on_error,
        run_cpu=cpu.run_in_thread,
        indexes=history.indexes,
        watchers=watchers,
        consensus_metrics=ConsensusMetrics(registry_),
        cache_metrics=CacheMetrics(registry_),
    )
    top.add(unreal)
    factory = server_factory(
        tls,
        responders,
        reactor,
        config.limits.throttle_up,
        config.limits.throttle_down,
        metrics,
        cpu.run_in_thread,
        registry,
        ConnectionLimits(idle_timeout=IDLE_TIMEOUT),
    )
    top.add(ConnectionsService(registry, reactor))
    top.add(_GateService(PeerGate(factory, registry)))
    if metrics_addr is not None:
        top.add(
            _ListenService(
                reactor,
                metrics_endpoint(metrics_addr),
                metrics_site(registry_),
                "serving metrics",
            )
        )
    top.add(_ListenService(reactor, listen, factory))
    if config_path is not None and key_path is not None:
        top.add(
            ReloadService(reactor, config_path, key_path, top, tls, io.run_in_thread)
        )
    return Daemon(top, registry, store, io, cpu, history, watchers, unreal)


def makeService(options: DaemonOptions) -> IService:
    """
    The twistd plugin's service, logging as the options say.

    Exits the process with code 1 and a message on a bad config or key.
    """
    from twisted.internet import reactor

    if options.subCommand is not None:
        return _OverlayCommand(options.subOptions)
    tune_malloc()
    tune_gil()
    tune_gc()
    raise_fd_limit()

    try:
        config = load_config(options["config"])
        key = load_private_key(options["privkey"])
    except RealizeError as e:
        _fail(str(e))
    daemon = make_daemon(
        reactor,
        config,
        key,
        options["listen"],
        config_path=options["config"],
        key_path=options["privkey"],
        metrics_addr=options["metrics-addr"],
        fuse=options["fuse"],
        statedir=options["statedir"],
        exit_on_error=lambda message: _exit_error(reactor, message),
    )
    return ApplicationLogging(daemon, options["log"].observer(sys.stdout))


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{realized} console script: C{twistd -n realized ...} without a
    pid file; C{realized mountall ...} and C{realized unmountall ...} run
    those commands (L{realize.tap.overlay}) and exit.
    """
    from twisted.scripts.twistd import run as twistd

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("mountall", "unmountall"):
        from realize.tap.overlay import main as overlay_main

        sys.exit(overlay_main(args[0], args[1:]))
    sys.argv = ["realized", "--nodaemon", "--pidfile=", "realized", *args]
    twistd()


#: The name twistd's ServiceMaker looks for.
Options = DaemonOptions


if __name__ == "__main__":  # pragma: no cover
    main()
