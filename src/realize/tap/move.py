"""
C{realize-move}: move the files of some arenas from one peer to another
(DESIGN.md section 8).

Two entry points share L{run}: the C{realize-move} console script
(L{main}, through C{task.react}) and the twistd plugin (C{twistd -n
realize-move ...}, L{makeService}), which ends the process with the same
exit code.

Exit codes (L{realize.tap._common.EXIT_CODES}): 0 every file moved, 1 an
error or a file failed, 11 stopped by C{--max-duration}, 12 every file
moved but the metrics could not be pushed (C{--metrics-pushgateway}), 20
interrupted by SIGINT, 143 terminated by SIGTERM.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.task import LoopingCall, react
from twisted.logger import (
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
)
from twisted.python import usage

from realize.collector import tune_gc
from realize.config import Config, load_config, parse_duration, parse_rate
from realize.errors import (
    ConfigError,
    RealizeError,
    SideError,
    describe,
    is_retryable,
)
from realize.interfaces import RunInThread, Store
from realize.logs import (
    ApplicationLogging,
    LogOptions,
    LogSettings,
    NamespacePredicate,
    start_logging,
)
from realize.model import ArenaName, check_arena_name
from realize.net.client import connect
from realize.net.tls import ClientTLS, load_private_key
from realize.services.job import MoveJob, Outcome
from realize.services.lock import LOCK_WAIT, SourceLocks
from realize.services.report import FileResult, MoveReport
from realize.storage.local import LocalStore
from realize.tap._common import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_METRICS_PUSH,
    EXIT_OK,
    GnuOptions,
    exit_after_shutdown,
    make_thread_pool,
    print_version,
    tune_malloc,
)
from realize.tap.identity import arena_uuid
from realize.tap.output import Output, make_output

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from twisted.application.service import IService

    from realize.metrics import MoveMetrics

__all__ = ["IMoveReactor", "MoveOptions", "main", "makeService", "run"]

log = Logger(namespace="realize.move")
throttle_log = Logger(namespace="realize.throttle")

#: Default C{--metrics-job}: L{realize.web.DEFAULT_JOB}, which is not
#: imported for it (L{realize.web} and C{twisted.web} are imported only by
#: a move that serves or pushes its metrics: they cost ~30 ms of start-up).
DEFAULT_JOB = "realize"

#: Threads of realize-move's pool (its file I/O and hashing).  One: its
#: batches of small files are system calls and Python between them, and
#: two threads passing the GIL back and forth at each call cost more than
#: they overlap (issue 15, interleaved on /dev/shm: 10,000 x 4 KiB 1.49 s
#: against 1.57, 100,000 x 1 KiB 8.1 s against 8.6; 1 GiB, the stdlib tree
#: and a move out of the daemon unchanged).
MOVE_THREADS = 1


class IMoveReactor(
    IReactorCore,
    IReactorTime,
    IReactorFromThreads,
    IReactorTCP,
    IReactorPluggableNameResolver,
):
    """
    What C{realize-move} needs of its reactor: start-up and shutdown
    (L{IReactorCore}), timers (L{IReactorTime}), signals handed over from
    their handlers (L{IReactorFromThreads}), and TCP connections to
    peers by name (L{IReactorTCP}, L{IReactorPluggableNameResolver}).
    The global reactor provides all of them.
    """


class MoveOptions(GnuOptions, LogOptions):
    """
    Command line of C{realize-move}.
    """

    synopsis = "--src PEER --dst PEER [--config FILE] [--privkey FILE] ARENA..."

    #: Log warnings and errors by default: the output shows the rest.
    default_log_level = "warn"

    longdesc = (
        "Move every file of the given arenas from the source peer to the "
        "destination peer.  PEER is a peer id from the config, 'local' "
        "(this machine's arenas, from their datadir in the config), or "
        "'local:/path' (one directory used as the root of the single ARENA). "
        "Exit codes: 0 all files moved, 1 error, 11 --max-duration reached, "
        "12 metrics not pushed, 20 interrupted (SIGINT), 143 terminated "
        "(SIGTERM)."
    )

    optParameters = [
        ["src", None, None, "Source peer: a peer id, local or local:/path."],
        ["dst", None, None, "Destination peer: a peer id, local or local:/path."],
        [
            "config",
            "c",
            None,
            "Config file (TOML); optional if both sides are local:/path.",
        ],
        ["privkey", "k", None, "This peer's ed25519 private key (PEM)."],
        [
            "throttle",
            None,
            None,
            "Limit both directions to RATE bytes per second (k, M, G "
            "suffixes: KiB, MiB, GiB; 0 for no limit).",
        ],
        [
            "throttle-up",
            None,
            None,
            "Limit what this process sends to remote peers to RATE bytes/s.",
        ],
        [
            "throttle-down",
            None,
            None,
            "Limit what remote peers send to this process to RATE bytes/s "
            "(asked of them with SetRateLimit).",
        ],
        [
            "metrics-addr",
            None,
            None,
            "Serve /metrics (Prometheus) on HOST:PORT while the move runs.",
        ],
        [
            "metrics-pushgateway",
            None,
            None,
            "Push the final metrics to this Pushgateway URL at the end.",
        ],
        ["metrics-job", None, DEFAULT_JOB, "Job name of the pushed metrics."],
        ["metrics-instance", None, None, "Instance label of the pushed metrics."],
        [
            "compress",
            None,
            None,
            "Compress data on the connections with zstd at this level "
            "(1 fast .. 19 small; 3 is a good start); off by default.",
        ],
        [
            "max-duration",
            None,
            None,
            "Stop after this long (e.g. 30s, 5m, 2h) with exit code 11; "
            "network errors are retried until then.",
        ],
        [
            "wait",
            None,
            None,
            "If another realize-move is moving from the same local arena, "
            f"wait this long for it to end (e.g. 30s, 1h; 0 to refuse at "
            f"once; default {LOCK_WAIT:g}s), then exit 1.",
        ],
        [
            "output",
            "o",
            "auto",
            "progress (bars), log (a line per file) or quiet; default: "
            "progress on a terminal, log otherwise.",
        ],
    ]

    def opt_version(self) -> NoReturn:
        """
        Show realize's and Twisted's versions and exit.
        """
        print_version("realize-move")

    def parseArgs(self, *arenas: str) -> None:
        if not arenas:
            raise usage.UsageError("give at least one ARENA to move")
        self["arenas"] = list(arenas)

    def postOptions(self) -> None:
        for side in ("src", "dst"):
            if not self[side]:
                raise usage.UsageError(f"--{side} is required")
        if self["output"] not in ("auto", "progress", "log", "quiet"):
            raise usage.UsageError(
                f"--output {self['output']!r}: use progress, log or quiet"
            )
        try:
            self["arenas"] = [check_arena_name(a) for a in self["arenas"]]
        except RealizeError as e:
            raise usage.UsageError(str(e)) from None
        if len(set(self["arenas"])) != len(self["arenas"]):
            raise usage.UsageError("an arena is given twice")
        if self["throttle"] is not None and (
            self["throttle-up"] is not None or self["throttle-down"] is not None
        ):
            raise usage.UsageError(
                "give --throttle, or --throttle-up and/or --throttle-down, not both"
            )
        for name in ("throttle", "throttle-up", "throttle-down"):
            if self[name] is not None:
                try:
                    self[name] = parse_rate(self[name])
                except ValueError as e:
                    raise usage.UsageError(f"--{name}: {e}") from None
        both = self["throttle"] or 0
        self["rate_up"] = self["throttle-up"] or both
        self["rate_down"] = self["throttle-down"] or both
        if self["metrics-addr"] is not None:
            from realize.web import parse_metrics_address

            try:
                parse_metrics_address(self["metrics-addr"])
            except RealizeError as e:
                raise usage.UsageError(str(e)) from None
        if self["metrics-pushgateway"] is not None:
            from realize.web import pushgateway_url

            try:
                pushgateway_url(
                    self["metrics-pushgateway"],
                    self["metrics-job"],
                    self["metrics-instance"],
                )
            except (ValueError, RealizeError) as e:
                raise usage.UsageError(f"--metrics-pushgateway: {e}") from None
        if self["compress"] is not None:
            try:
                level = int(self["compress"])
            except ValueError:
                level = 0
            if not 1 <= level <= 19:
                raise usage.UsageError(
                    f"--compress {self['compress']!r}: give a zstd level from 1 to 19"
                )
            self["compress"] = level
        self["log"] = self.log_settings()
        self["max_duration_text"] = self["max-duration"]
        self["max_duration"] = None
        if self["max-duration"] is not None:
            try:
                self["max_duration"] = parse_duration(self["max-duration"])
            except ValueError as e:
                raise usage.UsageError(f"--max-duration: {e}") from None
        wait = self["wait"]
        if wait is None:
            self["wait"] = LOCK_WAIT
        elif wait.strip() in ("0", "0s"):
            self["wait"] = 0.0
        else:
            try:
                self["wait"] = parse_duration(wait)
            except ValueError as e:
                raise usage.UsageError(f"--wait: {e}") from None


def _is_local_path(peer: str) -> bool:
    return peer.startswith("local:")


def local_directories(
    peer: str, arenas: Sequence[ArenaName], config: Config | None
) -> dict[ArenaName, str]:
    """
    The directories on this machine a side of the move reads or writes.

    @param peer: a C{--src}/C{--dst} value.
    @param arenas: the arenas moved.
    @param config: the config, if one was given.
    @return: arena name to the real path (symbolic links resolved) of its
        directory: the path of C{local:/path} for its single arena, the
        datadir of each arena in the config for C{local}; nothing for a
        remote peer (or an arena without a datadir: opening the side
        reports that).
    """
    if _is_local_path(peer):
        path = peer[len("local:") :]
        if not path or len(arenas) != 1:
            return {}
        return {arenas[0]: os.path.realpath(path)}
    if peer != "local" or config is None:
        return {}
    found = {}
    for arena in arenas:
        arena_config = config.arenas.get(arena)
        if arena_config is not None and arena_config.datadir is not None:
            found[arena] = os.path.realpath(arena_config.datadir)
    return found


def _same_directory(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b


def _inside(inner: str, outer: str) -> bool:
    """
    @return: whether the real path C{inner} lies below C{outer}.
    """
    return inner != outer and os.path.commonpath([inner, outer]) == outer


def overlap(
    src: str,
    dst: str,
    arenas: Sequence[ArenaName],
    config: Config | None,
) -> str | None:
    """
    Tell why a move cannot run because its sides overlap on this machine:
    the same directory, or one side's directory inside the other's (the
    move would nest the tree into itself, or move it into itself).

    @param src: the C{--src} value.
    @param dst: the C{--dst} value.
    @param arenas: the arenas moved.
    @param config: the config, if one was given (the datadirs of C{local}).
    @return: the message to show, or C{None} if the sides are apart.
    """
    if src == dst:
        return f"source and destination are the same ({src})"
    sources = local_directories(src, arenas, config)
    destinations = local_directories(dst, arenas, config)
    for arena, source in sources.items():
        destination = destinations.get(arena)
        if destination is None:
            continue
        if _same_directory(source, destination):
            return (
                f"source and destination are the same ({src} and {dst}: "
                f"arena {arena!r} in {source})"
            )
        if _inside(destination, source):
            return (
                f"the destination lies inside the source: arena {arena!r} "
                f"would move from {source} into {destination}, within itself"
            )
        if _inside(source, destination):
            return (
                f"the source lies inside the destination: arena {arena!r} "
                f"would move from {source} into {destination}, which holds it"
            )
    return None


async def _open_store(
    reactor: IMoveReactor,
    side: str,
    peer: str,
    arenas: Sequence[ArenaName],
    config: Config | None,
    privkey_path: str | None,
    run_in_thread: RunInThread,
    rate_up: int = 0,
    rate_down: int = 0,
    compress: int | None = None,
) -> Store:
    """
    Open one side of the move.

    @param side: C{"source"} or C{"destination"}, for messages.
    @param peer: the C{--src}/C{--dst} value.
    @raise SideError: naming the side, if it cannot be opened or lacks an
        arena.
    """
    if _is_local_path(peer):
        path = peer[len("local:") :]
        if not path:
            raise ConfigError(f"--{side[:3]}: local: needs a path, e.g. local:/data")
        if len(arenas) != 1:
            raise ConfigError(
                f"{side} {peer}: a local:/path side moves exactly one arena, "
                f"{len(arenas)} given"
            )
        path = os.path.abspath(path)
        if side == "destination":
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as e:
                raise SideError(
                    side, peer, ConfigError(f"cannot create {path}: {e.strerror}")
                ) from None
        elif not os.path.isdir(path):
            raise SideError(side, peer, ConfigError(f"{path} is not a directory"))
        return LocalStore.single(arenas[0], path, run_in_thread)
    if config is None:
        raise ConfigError(f"--config is required for {side} {peer!r}")
    if peer == "local":
        store: Store = LocalStore.from_config(config, run_in_thread)
    else:
        peer_config = config.peer(peer)
        if privkey_path is None:
            raise ConfigError(f"--privkey is required to connect to peer {peer!r}")
        key = load_private_key(privkey_path)
        tls = ClientTLS(key, peer_config.spki, peer_config.id)
        try:
            remote = await connect(
                reactor, peer_config, tls, rate_up=rate_up, run_in_thread=run_in_thread
            )
            if compress is not None:
                await remote.set_compression(compress)
            if rate_up:
                throttle_log.info(
                    "sending at most {rate} B/s to {peer}",
                    rate=rate_up,
                    peer=peer_config.id,
                )
            if rate_down:
                in_force = await remote.set_rate_limit(rate_down)
                throttle_log.info(
                    "asked {peer} to send at most {asked} B/s; in force: {rate} B/s",
                    peer=peer_config.id,
                    asked=rate_down,
                    rate=in_force,
                )
        except RealizeError as e:
            raise SideError(side, peer_config.describe(), e) from None
        store = remote
    try:
        available = set(await store.arenas())
    except RealizeError as e:
        raise SideError(side, store.describe(), e) from None
    for arena in arenas:
        if arena not in available:
            await store.close()
            why = (
                "no arena with a datadir of that name in the config"
                if peer == "local"
                else "no such arena, or this peer may not use it"
            )
            raise SideError(
                side, store.describe(), ConfigError(f"arena {arena!r}: {why}")
            )
    return store


async def _check_identities(
    source: Store,
    destination: Store,
    src: str,
    dst: str,
    arenas: Sequence[ArenaName],
    config: Config | None,
) -> None:
    """
    Refuse to move an arena onto itself under two names: both sides' store
    uuids of an arena are equal (L{realize.tap.identity}).

    @raise ConfigError: naming the arena, both sides and the uuid.
    """
    for arena in arenas:
        ours = await arena_uuid(source, src, arena, config)
        theirs = await arena_uuid(destination, dst, arena, config)
        if ours is not None and ours == theirs:
            raise ConfigError(
                f"arena {arena!r}: source {source.describe()} and destination "
                f"{destination.describe()} are the same arena store (uuid {ours}); "
                "nothing moved"
            )


def moves_logged(settings: LogSettings, exclude: Sequence[str] = ()) -> bool:
    """
    Tell whether the log would show the mover's info event of each moved
    file, so that the mover builds them only then.

    @param settings: the logging options.
    @param exclude: namespaces the log leaves out.
    @return: whether an info event of C{realize.move} passes the same
        filters as the process's observer (L{realize.logs.make_observer}).
    """
    event = {"log_namespace": log.namespace, "log_level": LogLevel.info}
    predicates = [
        LogLevelFilterPredicate(defaultLogLevel=settings.level),
        NamespacePredicate(tuple(settings.namespaces), tuple(exclude)),
    ]
    return all(p(event) != PredicateResult.no for p in predicates)


def _log_exclude(settings: LogSettings) -> list[str]:
    """
    @return: the namespaces the console script leaves out of its log: the
        move's own events in text, which its output shows already.
    """
    if settings.fmt == "text" and not settings.namespaces:
        return [log.namespace]
    return []


async def run(
    reactor: IMoveReactor,
    options: MoveOptions,
    output: Output | None = None,
    log_exclude: Sequence[str] = (),
) -> int:
    """
    Run a move: open both sides, move, retry network errors, stop at the
    deadline or on SIGINT/SIGTERM.

    @param reactor: the reactor.
    @param options: parsed options.
    @param output: where to show progress and errors (default: as
        C{--output} says, on stdout/stderr).
    @param log_exclude: namespaces the process's log leaves out.
    @return: the exit code (L{realize.services.job.MoveJob.run}).
    """
    if output is None:
        output = make_output(options["output"], reactor)
    src, dst = options["src"], options["dst"]
    arenas: list[ArenaName] = options["arenas"]
    if src == dst:
        output.error(f"source and destination are the same ({src})")
        return EXIT_ERROR
    config = None
    needs_config = not (_is_local_path(src) and _is_local_path(dst))
    try:
        if options["config"] is not None or needs_config:
            if options["config"] is None:
                output.error("--config is required unless both sides are local:/path")
                return EXIT_ERROR
            config = load_config(options["config"])
    except RealizeError as e:
        output.error(describe(e))
        return EXIT_ERROR
    refused = overlap(src, dst, arenas, config)
    if refused is not None:
        output.error(refused)
        return EXIT_ERROR
    pool, run_in_thread = make_thread_pool(reactor, "realize-move", MOVE_THREADS)

    def open_side(side: str, peer: str) -> Coroutine[Any, Any, Store]:
        return _open_store(
            reactor,
            side,
            peer,
            arenas,
            config,
            options["privkey"],
            run_in_thread,
            options["rate_up"],
            options["rate_down"],
            options["compress"],
        )

    async def open_stores() -> tuple[Store, Store]:
        source = await open_side("source", src)
        try:
            destination = await open_side("destination", dst)
        except BaseException:
            await source.close()
            raise
        try:
            await _check_identities(source, destination, src, dst, arenas, config)
        except BaseException:
            await source.close()
            await destination.close()
            raise
        return source, destination

    # Metrics only if something reads them (served or pushed): nothing
    # else would, and prometheus_client costs ~20 ms of start-up and a
    # labelled counter per file.
    metrics: MoveMetrics | None = None
    registry: CollectorRegistry | None = None
    served = options["metrics-addr"] is not None
    if served or options["metrics-pushgateway"] is not None:
        from realize.metrics import MoveMetrics, make_registry

        registry = make_registry()
        metrics = MoveMetrics(registry)
    observer = _Observers(output, metrics)
    # Held from before the first attempt to the end of the job, through
    # retries: another move from the same local arena waits or refuses.
    locks = SourceLocks(reactor, run_in_thread, waiting=output.warning)
    sources = local_directories(src, arenas, config)
    job = MoveJob(
        reactor,
        open_stores,
        arenas,
        observer,
        options["max_duration"],
        prepare=lambda: locks.acquire(sources, options["wait"]),
        log_moves=moves_logged(options["log"], log_exclude),
    )
    port = None
    if options["metrics-addr"] is not None:
        assert registry is not None
        try:
            from realize.web import listen_metrics

            port = await listen_metrics(reactor, options["metrics-addr"], registry)
        except RealizeError as e:
            pool.stop()
            output.error(describe(e))
            return EXIT_ERROR
    catch_up = None
    if metrics is not None:
        catch_up = LoopingCall(metrics.update, job.stats)
        catch_up.clock = reactor

    def stopper(reason: Outcome) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            reactor.callFromThread(job.stop, reason)

        return handler

    previous: dict[int, Any] = {}

    def install() -> None:
        # Once the reactor runs: starting, it installs its own SIGTERM
        # handler over any other (task.react runs us before that).
        previous[signal.SIGINT] = signal.signal(
            signal.SIGINT, stopper(Outcome.INTERRUPTED)
        )
        previous[signal.SIGTERM] = signal.signal(
            signal.SIGTERM, stopper(Outcome.TERMINATED)
        )

    if reactor.running:
        install()
    else:
        reactor.callWhenRunning(install)
    started = time.monotonic()
    if metrics is not None and catch_up is not None:
        metrics.started(reactor.seconds())
        catch_up.start(1.0, now=False)
    output.start()
    outcome = Outcome.FAILED
    try:
        outcome = await job.run()
    finally:
        locks.release()
        output.stop()
        if catch_up is not None:
            catch_up.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not pool.joined:
            pool.stop()
        if metrics is not None:
            metrics.update(job.stats)
            metrics.finished(outcome is Outcome.OK)
        if port is not None:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
    observer.release(job.report, outcome)
    if outcome is Outcome.OK or job.report.results:
        output.summary(job.report, time.monotonic() - started, job.stats)
    for error in job.report.errors:
        output.error(describe(error))
    kept = "partial files are kept for the next run"
    if outcome is Outcome.DEADLINE:
        output.error(
            f"stopped: --max-duration {options['max_duration_text']} reached; {kept}"
        )
    elif outcome is Outcome.INTERRUPTED:
        output.error(f"interrupted; {kept}")
    elif outcome is Outcome.TERMINATED:
        output.error(f"terminated; {kept}")
    code = EXIT_CODES[outcome]
    if options["metrics-pushgateway"] is not None:
        assert registry is not None
        from realize.web import make_http_client, push_metrics

        try:
            await push_metrics(
                make_http_client(reactor),
                options["metrics-pushgateway"],
                options["metrics-job"],
                options["metrics-instance"],
                registry,
                clock=reactor,
            )
        except RealizeError as e:
            output.error(f"metrics not pushed: {describe(e)}")
            if code == EXIT_OK:
                code = EXIT_METRICS_PUSH
    return code


class _Observers:
    """
    The job's observer: the output (what the user sees) and the metrics
    (if the move has any: only one that serves or pushes them).

    A file that fails with a network error is held back, not shown: the
    job retries it (the lost connection is shown once, as a warning), and
    it is reported as failed only if it still is when the job ends
    (L{release}).
    """

    def __init__(self, output: Output, metrics: MoveMetrics | None) -> None:
        self.output = output
        self.metrics = metrics
        self._held: dict[tuple[ArenaName, str], FileResult] = {}

    def release(self, report: MoveReport, outcome: Outcome) -> None:
        """
        The job ended: report the held failures of files that are still
        failed, if the job failed (a job stopped by its deadline or a
        signal says so once, not per file).

        @param report: the job's final report.
        @param outcome: how the job ended.
        """
        held, self._held = self._held, {}
        if outcome is not Outcome.FAILED:
            return
        for result in report.failed:
            if held.get((result.arena, result.path)) is result:
                self.output.file_done(result)
                if self.metrics is not None:
                    self.metrics.file_done(result.arena, result.status)

    def listed(self, arena: ArenaName, files: int, size: int) -> None:
        self.output.listed(arena, files, size)
        if self.metrics is not None:
            self.metrics.listed(arena, files, size)

    def file_started(self, arena: ArenaName, path: str, size: int) -> None:
        self.output.file_started(arena, path, size)

    def transferred(self, arena: ArenaName, path: str, size: int) -> None:
        self.output.transferred(arena, path, size)

    def file_done(self, result: FileResult) -> None:
        if result.error is not None and is_retryable(result.error):
            self._held[(result.arena, result.path)] = result
            return
        if self._held:
            self._held.pop((result.arena, result.path), None)
        self.output.file_done(result)
        if self.metrics is not None:
            self.metrics.file_done(result.arena, result.status)

    def retrying(self, error: BaseException, delay: float, retry: int) -> None:
        self.output.retrying(error, delay, retry)
        if self.metrics is not None:
            self.metrics.retried()


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{realize-move} console script.

    @param argv: arguments (default: C{sys.argv[1:]}).
    """
    options = MoveOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else list(argv))
    except usage.UsageError as e:
        sys.stderr.write(f"realize-move: {e}\nTry realize-move --help.\n")
        sys.exit(EXIT_ERROR)

    tune_malloc()
    tune_gc()
    settings = options["log"]
    # The output shows the move's own events (files, failures) already.
    exclude = _log_exclude(settings)
    start_logging(settings.observer(sys.stderr, exclude=exclude))
    # Objects made at start-up live to the end: keep the collector from
    # scanning them again and again while thousands of files move.
    gc.freeze()

    async def go(reactor: IMoveReactor) -> int:
        return await run(reactor, options, log_exclude=exclude)

    def start(reactor: IMoveReactor) -> Deferred[None]:
        def done(code: int) -> None:
            if code:
                raise SystemExit(code)

        return Deferred.fromCoroutine(go(reactor)).addCallback(done)

    react(start)


def makeService(options: MoveOptions) -> IService:
    """
    The twistd plugin's service: runs the move once, then stops the
    reactor and makes the process exit with the move's code.
    """
    # Imported here: the console script does not need twistd's machinery.
    from twisted.application.service import Service

    tune_malloc()
    tune_gc()

    class MoveService(Service):
        def startService(self) -> None:
            super().startService()  # type: ignore[no-untyped-call]
            from twisted.internet import reactor

            def go() -> None:
                # twistd sends sys.stdout/sys.stderr to its log: show the
                # user progress and errors on the real streams.
                output = make_output(
                    options["output"], reactor, sys.__stdout__, sys.__stderr__
                )
                d = Deferred.fromCoroutine(
                    run(cast(IMoveReactor, reactor), options, output)
                )

                def failed(failure: Any) -> int:
                    log.failure("realize-move failed", failure)
                    return EXIT_ERROR

                d.addErrback(failed)
                d.addCallback(lambda code: exit_after_shutdown(reactor, code))

            reactor.callWhenRunning(go)

    settings = options["log"]
    return ApplicationLogging(
        MoveService(), settings.observer(sys.__stderr__ or sys.stderr)
    )


#: The name twistd's ServiceMaker looks for.
Options = MoveOptions


if __name__ == "__main__":  # pragma: no cover
    main()
