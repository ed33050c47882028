"""
C{realize-history}: print what a peer's history reports (issue 9 item 5).

C{realize-history --config C --privkey K --peer ID [--from UUID:POSITION]
[--follow] ARENA} connects to peer C{ID} (or, with C{--peer local}, reads
this machine's own index read-only), subscribes to C{ARENA} and prints
one JSON object per notification on stdout::

    {"kind": "add", "arena": "docs", "position": 12, "path": "a/b.txt",
     "size": 5, "mtime_ns": 1700000000000000000, "hash": "blake3m:..."}

Keys that do not apply to a kind are omitted (L{realize.model.Notification}
says which apply); C{hash} and C{old_hash} are C{null} for a version not
hashed yet.  Without C{--follow} the command exits 0 once the replay or
the catch-up is complete; with it, it keeps printing until SIGINT (exit
20) or SIGTERM (exit 143).  It is the operator's way to see what a peer
reports, and the way the integration tests observe a history from
outside.

Exit codes: 0 done, 1 an error (bad option or config, unreachable or
refusing peer, unknown arena), 20 interrupted, 143 terminated.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.application.service import IService, Service
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import react
from twisted.logger import Logger
from twisted.python import usage

from realize.config import load_config
from realize.errors import NetworkError, RealizeError, describe
from realize.hashing import format_hash
from realize.interfaces import Subscription
from realize.logs import ApplicationLogging, LogOptions, start_logging
from realize.model import ArenaName, Notification, check_arena_name
from realize.net.client import _connect_reason, authenticate
from realize.net.factory import client_factory
from realize.net.history import RemoteHistory
from realize.net.tls import ClientTLS, load_private_key
from realize.tap._common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    GnuOptions,
    exit_after_shutdown,
    make_thread_pool,
)

__all__ = ["HistoryOptions", "format_notification", "main", "makeService", "run"]

log = Logger(namespace="realize.history")

#: Seconds between two looks at this machine's own db (C{--peer local}).
LOCAL_POLL = 0.5

#: Seconds to wait for the TCP connection to a peer.
CONNECT_TIMEOUT = 30.0


class HistoryOptions(GnuOptions, LogOptions):
    """
    Command line of C{realize-history}.
    """

    synopsis = "--config FILE --peer ID|local [--privkey FILE] [--follow] ARENA"

    #: stdout is the JSON lines; stderr says only what went wrong.
    default_log_level = "warn"

    optFlags = [["follow", "f", "Keep printing live notifications until stopped."]]
    optParameters = [
        ["config", "c", None, "Config file (TOML)."],
        ["privkey", "k", None, "This peer's ed25519 private key (PEM)."],
        ["peer", "p", None, "The peer to ask: a peer id, or 'local'."],
        [
            "from",
            None,
            None,
            "Progress to resume from, UUID:POSITION (default: a catch-up).",
        ],
    ]

    def parseArgs(self, *arenas: str) -> None:
        if len(arenas) != 1:
            raise usage.UsageError("give exactly one ARENA")
        try:
            self["arena"] = check_arena_name(arenas[0])
        except RealizeError as e:
            raise usage.UsageError(str(e)) from None

    def postOptions(self) -> None:
        for name in ("config", "peer"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")
        if self["peer"] != "local" and not self["privkey"]:
            raise usage.UsageError("--privkey is required to ask a peer")
        progress = None
        if self["from"] is not None:
            uuid, sep, position = self["from"].rpartition(":")
            if not sep or not uuid or not position.isdigit():
                raise usage.UsageError(
                    f"--from {self['from']!r}: expected UUID:POSITION, e.g. 3f2a...:120"
                )
            progress = (uuid, int(position))
        self["progress"] = progress
        self["log"] = self.log_settings()


def format_notification(notification: Notification) -> dict[str, Any]:
    """
    The JSON object printed for a notification.

    @return: C{kind}, C{arena}, C{position}, and the fields that apply to
        the kind; hashes as C{blake3m:<hex>} or C{None}.
    """
    kind = notification.kind
    out: dict[str, Any] = {
        "kind": kind,
        "arena": notification.arena,
        "position": notification.position,
    }
    if notification.path is not None:
        out["path"] = notification.path
    if notification.size is not None:
        out["size"] = notification.size
    if notification.mtime_ns is not None:
        out["mtime_ns"] = notification.mtime_ns
    if kind in ("add", "replace", "catchup"):
        out["hash"] = _hash(notification.hash)
    if kind in ("replace", "remove", "drop"):
        out["old_hash"] = _hash(notification.old_hash)
    if notification.uuid is not None:
        out["uuid"] = notification.uuid
    return out


def _hash(digest: bytes | None) -> str | None:
    return None if digest is None else format_hash(digest)


async def _local(reactor: Any, config: Any, arena: ArenaName, progress: Any) -> Any:
    from realize.services.history import HistoryService
    from realize.storage.pool import open_pool

    _, run_in_thread = make_thread_pool(reactor, "realize-history")
    service = HistoryService(
        config,
        reactor,
        run_in_thread,
        functools.partial(open_pool, reactor=reactor, readonly=True),
        readonly=True,
        poll_interval=LOCAL_POLL,
    )
    wanted = config.arenas.get(arena)
    if wanted is None or wanted.datadir is None:
        raise RealizeError(
            f"{config.source}: arena {arena!r} has no datadir on this machine"
        )
    service.startService()
    await service.ready
    return service, service.subscribe(arena, None, progress)


async def _remote(
    reactor: Any, options: HistoryOptions, config: Any, arena: ArenaName
) -> tuple[Any, Subscription]:
    peer = config.peer(options["peer"])
    if peer.address is None:
        raise NetworkError(f"peer {peer.id} has no address in the config")
    key = load_private_key(options["privkey"])
    host, port = peer.address
    endpoint = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    factory = client_factory(ClientTLS(key, peer.spki, peer.id), reactor)
    try:
        protocol = await endpoint.connect(factory)
    except (neterror.ConnectError, CancelledError) as e:
        raise NetworkError(
            f"peer {peer.describe()}: cannot connect: {_connect_reason(e)}"
        ) from None
    connection = await authenticate(protocol)
    history = RemoteHistory(connection, peer.describe())
    subscription = await history.subscribe(arena, options["progress"])
    return connection, subscription


async def run(reactor: Any, options: HistoryOptions, out: IO[str] | None = None) -> int:
    """
    Subscribe and print, as the module docstring says.

    @param out: where the JSON lines go (default: stdout).
    @return: the exit code.
    """
    out = out or sys.stdout
    err = sys.__stderr__ or sys.stderr
    arena: ArenaName = options["arena"]
    stopped: dict[str, int] = {}
    pending: list[Deferred[Any]] = []

    def stopper(code: int) -> Any:
        def handler(signum: int, frame: Any) -> None:
            def stop() -> None:
                stopped["code"] = code
                for d in pending:
                    d.cancel()

            reactor.callFromThread(stop)

        return handler

    previous: dict[int, Any] = {}

    def install() -> None:
        # Once the reactor runs: starting, it installs its own SIGTERM
        # handler over any other.
        previous[signal.SIGINT] = signal.signal(
            signal.SIGINT, stopper(EXIT_INTERRUPTED)
        )
        previous[signal.SIGTERM] = signal.signal(
            signal.SIGTERM, stopper(EXIT_TERMINATED)
        )

    if reactor.running:
        install()
    else:
        reactor.callWhenRunning(install)
    holder: Any = None
    subscription: Subscription | None = None
    try:
        config = load_config(options["config"])
        if options["peer"] == "local":
            holder, subscription = await _local(
                reactor, config, arena, options["progress"]
            )
        else:
            holder, subscription = await _remote(reactor, options, config, arena)
        while "code" not in stopped:
            d = subscription.next_batch()
            pending.append(d)
            try:
                batch = await d
            finally:
                pending.remove(d)
            for notification in batch:
                out.write(json.dumps(format_notification(notification)) + "\n")
            out.flush()
            if not options["follow"] and subscription.caught_up:
                return EXIT_OK
    except CancelledError:
        pass
    except RealizeError as e:
        err.write(f"realize-history: error: {describe(e)}\n")
        return EXIT_ERROR
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if subscription is not None:
            subscription.close()
        if holder is not None:
            if hasattr(holder, "stopService"):
                await holder.stopService()
            else:
                holder.close()
                await holder.lost
    return stopped.get("code", EXIT_OK)


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{realize-history} console script.
    """
    options = HistoryOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else list(argv))
    except usage.UsageError as e:
        sys.stderr.write(f"realize-history: {e}\nTry realize-history --help.\n")
        sys.exit(EXIT_ERROR)
    start_logging(options["log"].observer(sys.stderr))

    def start(reactor: Any) -> Deferred[None]:
        def done(code: int) -> None:
            if code:
                raise SystemExit(code)

        return Deferred.fromCoroutine(run(reactor, options)).addCallback(done)

    react(start)


def makeService(options: HistoryOptions) -> IService:
    """
    The twistd plugin's service: subscribes and prints, then stops the
    reactor and makes the process exit with the command's code.
    """

    class HistoryCommand(Service):
        def startService(self) -> None:
            super().startService()  # type: ignore[no-untyped-call]
            from twisted.internet import reactor

            def go() -> None:
                d = Deferred.fromCoroutine(
                    run(reactor, options, sys.__stdout__ or sys.stdout)
                )

                def failed(failure: Any) -> int:
                    log.failure("realize-history failed", failure)
                    return EXIT_ERROR

                d.addErrback(failed)
                d.addCallback(lambda code: exit_after_shutdown(reactor, code))

            reactor.callWhenRunning(go)

    return ApplicationLogging(
        HistoryCommand(), options["log"].observer(sys.__stderr__ or sys.stderr)
    )


#: The name twistd's ServiceMaker looks for.
Options = HistoryOptions


if __name__ == "__main__":  # pragma: no cover
    main()
