"""
Prometheus metrics of both programs (DESIGN.md section 8, #daemonmetrics,
#cmdmetrics).

Each process makes one registry with L{make_registry} and passes it to the
objects that count: L{DaemonMetrics} in C{realized}, L{MoveMetrics} in
C{realize-move}.  Nothing here touches C{prometheus_client.REGISTRY}, the
global registry, and nothing imports C{twisted.web}: serving and pushing a
registry is L{realize.web}'s job.

Names follow the Prometheus conventions: counters end in C{_total}, sizes
are C{_bytes}, durations C{_seconds}, all in base units.  Label values:

    - C{peer}: a peer id from the config (C{laptop}, C{nas}).
    - C{arena}: an arena name.
    - C{method}: C{copy} (plain data) or C{delta} (rsync signatures and
      deltas).
    - C{direction}: C{read} (read from this peer's disk and sent) or
      C{written} (received and written to this peer's disk).
    - C{status}: see each metric.

Besides the series below, L{make_registry} registers the standard
C{process_*} (CPU, memory, open files, start time), C{python_info} and
C{python_gc_*} series, and C{realize_build_info}.

Metrics of C{realized} (L{DaemonMetrics}):

    - C{realize_connections_open} (gauge; C{peer}): authenticated
      connections open now.
    - C{realize_connections_total} (counter; C{peer}): authenticated
      connections accepted.
    - C{realize_auth_rejections_total} (counter; C{reason}): connections
      refused before any command was served; C{reason} is one of
      C{unknown_key} (the client's key is not in the config),
      C{handshake_failed} (TLS failed for another reason: no client
      certificate, not TLS 1.3, closed during the handshake).
    - C{realize_store_commands_total} (counter; C{command}, C{status}):
      store commands answered; C{command} is the AMP command name (C{Read},
      C{Write}, C{Hash}, ...), C{status} is C{ok}, the lower-case wire code
      of the error (C{not_found}, C{invalid_path}, C{permission},
      C{unauthorized}, C{io}, C{no_space}, C{conflict}, C{bad_delta},
      C{bad_request}, ...), C{cancelled}, or C{internal} for an unexpected
      exception.
    - C{realize_store_command_duration_seconds} (histogram; C{command}):
      time from receiving a command to answering it.
    - C{realize_store_bytes_total} (counter; C{arena}, C{method},
      C{direction}): file data read and sent, or received and written.
    - C{realize_delta_saved_bytes_total} (counter; C{arena}): bytes that
      did not cross the network because a range was repaired by delta
      (range size less the signature and delta sizes).
    - C{realize_files_finished_total} (counter; C{arena}): partial files
      made final (Finish, or a Write that finished the file).
    - C{realize_files_deleted_total} (counter; C{arena}): files deleted
      (Delete, DeleteFiles).
    - C{realize_throttle_waits_total} (counter): times the send throttle
      paused a producer because its queue was full.
    - C{realize_throttled_seconds_total} (counter): seconds data waited in
      the send throttle for tokens.
    - C{realize_hash_seconds_total} (counter; C{arena}): seconds spent
      computing Merkle hashes (thread time, summed over threads).
    - C{realize_hashed_bytes_total} (counter; C{arena}): bytes hashed.

Metrics of C{realize-move} (L{MoveMetrics}):

    - C{realize_move_up} (gauge): 1 while the move runs, 0 once it ended.
    - C{realize_move_success} (gauge): 1 if the finished move moved every
      file, 0 otherwise (and while it runs).
    - C{realize_move_start_time_seconds} (gauge): Unix time the move
      started.
    - C{realize_move_duration_seconds} (gauge): seconds since the start
      while running, the whole run's duration once finished.
    - C{realize_move_listed_files} (gauge; C{arena}): files to move found
      at the source.
    - C{realize_move_listed_bytes} (gauge; C{arena}): their total size.
    - C{realize_move_files_total} (counter; C{arena}, C{status}): files
      done; C{status} is C{moved} or C{failed}.
    - C{realize_move_bytes_total} (counter; C{method}): bytes sent for the
      move: file data (C{copy}) or signatures and deltas (C{delta}).
    - C{realize_move_delta_saved_bytes_total} (counter): bytes not sent
      because ranges were repaired by delta.
    - C{realize_move_files_repaired_total} (counter): files whose
      destination copy had differing ranges that were repaired.
    - C{realize_move_copy_fallbacks_total} (counter): ranges a delta could
      not repair, copied instead.
    - C{realize_move_retries_total} (counter): attempts started again
      after a network error (C{--retry}).

Metrics of the history and the watcher in C{realized} (L{HistoryMetrics}):

    - C{realize_history_entries_total} (counter; C{arena}, C{kind}): history
      entries recorded; C{kind} is C{add}, C{replace}, C{remove} or
      C{drop}.
    - C{realize_history_notifications_total} (counter; C{arena}, C{kind}):
      notifications sent to subscribers, by kind (the four above and
      C{connected}, C{catchup_start}, C{catchup}, C{catchup_complete}).
    - C{realize_history_held_entries} (gauge; C{arena}): entries the
      history holds now (after trimming).
    - C{realize_history_position} (gauge; C{arena}): the last position
      recorded.
    - C{realize_history_trimmed_total} (counter; C{arena}): entries
      trimmed.
    - C{realize_history_subscribers} (gauge; C{arena}, C{peer}):
      subscriptions open.
    - C{realize_watcher_queue_files} (gauge; C{arena}): files waiting to be
      looked at (their stability delay) or hashed.
    - C{realize_watcher_hash_backlog_bytes} (gauge; C{arena}): bytes of the
      files waiting to be hashed.
    - C{realize_watcher_hash_seconds_total} (counter; C{arena}): seconds
      spent hashing changed files (wall time of the hashing batches).
    - C{realize_watcher_hashed_bytes_total} (counter; C{arena}): bytes
      hashed.
    - C{realize_watcher_files_recorded_total} (counter; C{arena},
      C{source}): versions recorded; C{source} is C{hashed} (the watcher
      hashed the file) or C{store} (the store had just finished it and gave
      its hash: not hashed again).
    - C{realize_watcher_watches} (gauge; C{arena}): inotify watches in use.
    - C{realize_watcher_unwatched_directories} (gauge; C{arena}):
      directories that could not be watched (watches ran out), rescanned
      periodically instead.
    - C{realize_watcher_rescans_total} (counter; C{arena}, C{reason}):
      scans comparing the disk with the index; C{reason} is C{start},
      C{overflow} (the inotify queue overflowed), C{unwatched} (periodic
      rescan of unwatched directories) or C{directory} (a directory
      appeared, moved or went).

Metrics of the block cache in C{realized} (L{CacheMetrics}; issue 11):

    - C{realize_cache_bytes} (gauge; C{arena}, C{queue}): bytes the
      cache's blobs use (C{st_blocks * 512} plus a per-file overhead, and
      writes reserved); C{queue} is C{working}, C{protected},
      C{pending_removal} or C{deleting} (evicted, files being removed).
    - C{realize_cache_blobs} (gauge; C{arena}, C{queue}): blobs per queue.
    - C{realize_cache_quota_bytes} (gauge; C{arena}): the configured quota
      (C{[cache] size}); absent without one.
    - C{realize_cache_limit_bytes} (gauge; C{arena}): the bytes the cache
      may use now: the quota, less when the filesystem's free space is
      below C{[cache] min_free}.
    - C{realize_cache_reads_total} (counter; C{arena}, C{result}): FUSE
      reads; C{result} is C{hit} (served from the blob) or C{miss} (the
      downloader fetched some of it).
    - C{realize_cache_read_bytes_total} (counter; C{arena}, C{result}):
      bytes of those reads.
    - C{realize_cache_fetched_bytes_total} (counter; C{arena}): bytes
      downloaded from peers (verified).
    - C{realize_cache_not_kept_bytes_total} (counter; C{arena}): bytes
      downloaded and served but not kept, for lack of room.
    - C{realize_cache_released_bytes_total} (counter; C{arena}): bytes
      given back behind readers of files larger than the working area.
    - C{realize_cache_evictions_total} (counter; C{arena}, C{queue},
      C{reason}): blobs evicted; C{reason} is C{quota} (room for new
      data), C{free_space} (the filesystem's free space fell below the
      reserve) or C{admission} (a protected blob displaced by a more
      frequent one).
    - C{realize_cache_admissions_total} (counter; C{arena}, C{reason}):
      blobs that entered the protected queue; C{reason} is C{mark} (marked
      keep or own) or C{frequency} (TinyLFU).
    - C{realize_cache_pending_deleted_total} (counter; C{arena}): outdated
      blobs deleted by the pending removal batches.
    - C{realize_cache_consistency_fixes_total} (counter; C{arena},
      C{kind}): what the consistency job fixed; C{kind} is C{missing} (a
      row whose file was missing, dropped), C{orphan} (a file without a
      row, deleted) or C{trimmed} (ranges claimed that the file did not
      hold).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

from attrs import define, field
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from realize.errors import RealizeError, SideError

__all__ = [
    "COPY",
    "DELTA",
    "DURATION_BUCKETS",
    "READ",
    "REJECT_HANDSHAKE",
    "REJECT_REASONS",
    "REJECT_UNKNOWN_KEY",
    "STATUS_OK",
    "WRITTEN",
    "CacheMetrics",
    "ConsensusMetrics",
    "DaemonMetrics",
    "HistoryMetrics",
    "MoveMetrics",
    "MoveStatsLike",
    "command_status",
    "make_registry",
]

#: C{method} label values.
COPY = "copy"
DELTA = "delta"

#: C{direction} label values.
READ = "read"
WRITTEN = "written"

#: C{status} of a store command that succeeded.
STATUS_OK = "ok"

#: C{reason} label values of C{realize_auth_rejections_total}.
REJECT_UNKNOWN_KEY = "unknown_key"
REJECT_HANDSHAKE = "handshake_failed"
REJECT_REASONS = (REJECT_UNKNOWN_KEY, REJECT_HANDSHAKE)

#: Buckets of C{realize_store_command_duration_seconds}: from a metadata
#: command answered in a millisecond to a Read of a large file over a slow
#: link.
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    float("inf"),
)

T = TypeVar("T")


def make_registry() -> CollectorRegistry:
    """
    Make the registry of one process.

    @return: a new registry holding the process (C{process_*}), platform
        (C{python_info}) and garbage collector (C{python_gc_*}) collectors
        and C{realize_build_info{version=...}}; the global
        C{prometheus_client.REGISTRY} is left alone.
    """
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    build = Info("realize_build", "Version of realize.", registry=registry)
    from realize._version import __version__

    build.info({"version": __version__.public()})
    return registry


def command_status(error: BaseException | None) -> str:
    """
    The C{status} label of a store command.

    @param error: what the command raised, or C{None} if it succeeded.
    @return: C{"ok"}; the lower-case wire code of a
        L{realize.errors.RealizeError} (C{"not_found"}, C{"io"}, ...; a
        L{SideError} is judged by its cause); C{"cancelled"} for a
        cancelled command; C{"internal"} for any other exception.
    """
    if error is None:
        return STATUS_OK
    if isinstance(error, SideError):
        error = error.cause
    if isinstance(error, CancelledError):
        return "cancelled"
    if isinstance(error, RealizeError):
        return error.code.decode("ascii", "replace").lower()
    return "internal"


@define(eq=False)
class DaemonMetrics:
    """
    The metrics of C{realized}, on a given registry (the series and their
    labels are listed in this module's docstring).

    Call sites use the methods, which name what happened; the metric
    objects are public for tests and for anything the methods do not
    cover.

    @ivar registry: where the metrics are registered.
    @ivar timer: monotonic seconds, to time commands (a fake in tests).
    """

    registry: CollectorRegistry
    timer: Callable[[], float] = field(default=time.perf_counter, kw_only=True)

    connections_open: Gauge = field(init=False)
    connections: Counter = field(init=False)
    auth_rejections: Counter = field(init=False)
    commands: Counter = field(init=False)
    command_duration: Histogram = field(init=False)
    store_bytes: Counter = field(init=False)
    delta_saved_bytes: Counter = field(init=False)
    files_finished: Counter = field(init=False)
    files_deleted: Counter = field(init=False)
    throttle_waits: Counter = field(init=False)
    throttled_seconds: Counter = field(init=False)
    hash_seconds: Counter = field(init=False)
    hashed_bytes: Counter = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.connections_open = Gauge(
            "realize_connections_open",
            "Authenticated peer connections open now.",
            ["peer"],
            registry=r,
        )
        self.connections = Counter(
            "realize_connections",
            "Authenticated peer connections accepted.",
            ["peer"],
            registry=r,
        )
        self.auth_rejections = Counter(
            "realize_auth_rejections",
            "Connections refused before authentication, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:
            self.auth_rejections.labels(reason)
        self.commands = Counter(
            "realize_store_commands",
            "Store commands answered, by command and outcome.",
            ["command", "status"],
            registry=r,
        )
        self.command_duration = Histogram(
            "realize_store_command_duration_seconds",
            "Time to answer a store command.",
            ["command"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.store_bytes = Counter(
            "realize_store_bytes",
            "File data read and sent, or received and written, by method.",
            ["arena", "method", "direction"],
            registry=r,
        )
        self.delta_saved_bytes = Counter(
            "realize_delta_saved_bytes",
            "Bytes not transferred because ranges were repaired by delta.",
            ["arena"],
            registry=r,
        )
        self.files_finished = Counter(
            "realize_files_finished",
            "Partial files made final.",
            ["arena"],
            registry=r,
        )
        self.files_deleted = Counter(
            "realize_files_deleted",
            "Files deleted.",
            ["arena"],
            registry=r,
        )
        self.throttle_waits = Counter(
            "realize_throttle_waits",
            "Times the send throttle paused a producer.",
            registry=r,
        )
        self.throttled_seconds = Counter(
            "realize_throttled_seconds",
            "Seconds data waited in the send throttle.",
            registry=r,
        )
        self.hash_seconds = Counter(
            "realize_hash_seconds",
            "Seconds spent computing Merkle hashes.",
            ["arena"],
            registry=r,
        )
        self.hashed_bytes = Counter(
            "realize_hashed_bytes",
            "Bytes hashed.",
            ["arena"],
            registry=r,
        )

    def connection_opened(self, peer: str) -> None:
        """
        A peer authenticated on a new connection.

        @param peer: its id.
        """
        self.connections.labels(peer).inc()
        self.connections_open.labels(peer).inc()

    def connection_closed(self, peer: str) -> None:
        """
        An authenticated connection was lost (call once per
        L{connection_opened}).

        @param peer: its id.
        """
        self.connections_open.labels(peer).dec()

    def rejected(self, reason: str) -> None:
        """
        A connection was refused before authentication.

        @param reason: one of L{REJECT_REASONS}; spaces become underscores,
            so the C{reason} field of a C{realize.auth} log event (C{"unknown
            key"}) can be passed as is.
        """
        self.auth_rejections.labels(reason.strip().replace(" ", "_")).inc()

    def handshake_failed(self, error: BaseException | None) -> None:
        """
        A connection was lost before its peer was authenticated: count it
        as C{unknown_key} if our key check refused the client's
        certificate (OpenSSL's "certificate verify failed"), else as
        C{handshake_failed}.

        @param error: why the connection was lost.
        """
        text = str(error) if error is not None else ""
        unknown = "certificate verify failed" in text
        self.rejected(REJECT_UNKNOWN_KEY if unknown else REJECT_HANDSHAKE)

    def watch_connection(self, handshake: Deferred[str], lost: Deferred[None]) -> None:
        """
        Count one accepted connection: opened and closed for its peer once
        authenticated, or a rejection if it is lost before.  Call it first
        thing, before other callbacks are added to C{handshake} (one that
        handles the failure would hide it); results pass through
        unchanged.

        @param handshake: fires with the peer id once authenticated, or
            fails with why the connection was lost before
            (L{realize.net.framing.Connection.handshake}).
        @param lost: fires when the connection is lost
            (L{realize.net.framing.Connection.lost}).
        """

        def closed(result: object, peer: str) -> object:
            self.connection_closed(peer)
            return result

        def opened(peer: str) -> str:
            self.connection_opened(peer)
            lost.addBoth(closed, peer)
            return peer

        def failed(failure: Failure) -> Failure:
            self.handshake_failed(failure.value)
            return failure

        handshake.addCallbacks(opened, failed)

    def command_done(
        self, command: str, seconds: float, error: BaseException | None
    ) -> None:
        """
        Count one answered store command.

        @param command: the AMP command name, e.g. C{"Read"}.
        @param seconds: how long it took.
        @param error: what it raised, or C{None}.
        """
        self.commands.labels(command, command_status(error)).inc()
        self.command_duration.labels(command).observe(max(0.0, seconds))

    async def observe(self, command: str, work: Awaitable[T]) -> T:
        """
        Await a store command's work, timing and counting it by outcome.

        Use around a responder's coroutine (or any awaitable, e.g. a
        L{Deferred}); whatever it raises is counted and raised again::

            Deferred.fromCoroutine(metrics.observe("Read", go()))

        @param command: the AMP command name, e.g. C{"Read"}.
        @param work: the command's work.
        @return: its result.
        """
        started = self.timer()
        try:
            result = await work
        except BaseException as e:
            self.command_done(command, self.timer() - started, e)
            raise
        self.command_done(command, self.timer() - started, None)
        return result

    def transferred(self, arena: str, method: str, direction: str, size: int) -> None:
        """
        File data moved through this daemon's store.

        @param arena: the arena.
        @param method: L{COPY} or L{DELTA}.
        @param direction: L{READ} (read from disk and sent) or L{WRITTEN}
            (received and written to disk).
        @param size: bytes.
        """
        self.store_bytes.labels(arena, method, direction).inc(size)

    def delta_saved(self, arena: str, size: int) -> None:
        """
        @param arena: the arena.
        @param size: bytes a delta repair saved (range size less signature
            and delta sizes; negative values count as 0).
        """
        self.delta_saved_bytes.labels(arena).inc(max(0, size))

    def file_finished(self, arena: str, count: int = 1) -> None:
        """
        @param arena: the arena.
        @param count: partial files just made final.
        """
        self.files_finished.labels(arena).inc(count)

    def file_deleted(self, arena: str, count: int = 1) -> None:
        """
        @param arena: the arena.
        @param count: files just deleted.
        """
        self.files_deleted.labels(arena).inc(count)

    def throttled(self, waits: int, seconds: float) -> None:
        """
        Add a connection's throttle counters (e.g. those of a
        L{realize.net.throttle.ThrottlingProtocol}, C{producer_pauses} and
        C{throttled_seconds}, when its connection is lost).

        @param waits: producer pauses.
        @param seconds: seconds waited for tokens.
        """
        self.throttle_waits.inc(max(0, waits))
        self.throttled_seconds.inc(max(0.0, seconds))

    def hashed(self, arena: str, seconds: float, size: int) -> None:
        """
        @param arena: the arena.
        @param seconds: time spent hashing.
        @param size: bytes hashed.
        """
        self.hash_seconds.labels(arena).inc(max(0.0, seconds))
        self.hashed_bytes.labels(arena).inc(max(0, size))


class MoveStatsLike(Protocol):
    """
    Running totals of a move (L{realize.services.report.MoveStats} has
    them), all increasing.
    """

    @property
    def copied_bytes(self) -> int: ...

    @property
    def delta_bytes(self) -> int: ...

    @property
    def saved_bytes(self) -> int: ...

    @property
    def files_repaired(self) -> int: ...

    @property
    def fallbacks(self) -> int: ...


@define(eq=False)
class MoveMetrics:
    """
    The metrics of C{realize-move}, on a given registry (the series and
    their labels are listed in this module's docstring).

    Life of a run: L{started}, then counts from the methods (or
    L{update}, from a mover's running totals), then L{finished} before the
    final push.

    @ivar registry: where the metrics are registered.
    @ivar timer: monotonic seconds, for the duration (a fake in tests).
    """

    registry: CollectorRegistry
    timer: Callable[[], float] = field(default=time.monotonic, kw_only=True)

    up: Gauge = field(init=False)
    success: Gauge = field(init=False)
    start_time: Gauge = field(init=False)
    duration: Gauge = field(init=False)
    listed_files: Gauge = field(init=False)
    listed_bytes: Gauge = field(init=False)
    files: Counter = field(init=False)
    bytes: Counter = field(init=False)
    delta_saved_bytes: Counter = field(init=False)
    files_repaired: Counter = field(init=False)
    copy_fallbacks: Counter = field(init=False)
    retries: Counter = field(init=False)
    _started: float | None = field(default=None, init=False)
    _seen: dict[str, int] = field(factory=dict, init=False)
    #: C{files} children by (arena, status): labels() costs a lookup under
    #: a lock, and a move of small files counts thousands a second.
    _files_of: dict[tuple[str, str], Counter] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.up = Gauge(
            "realize_move_up", "1 while the move runs, 0 once it ended.", registry=r
        )
        self.success = Gauge(
            "realize_move_success",
            "1 if the finished move moved every file, else 0.",
            registry=r,
        )
        self.start_time = Gauge(
            "realize_move_start_time_seconds",
            "Unix time the move started.",
            registry=r,
        )
        self.duration = Gauge(
            "realize_move_duration_seconds",
            "Seconds the move has run, or ran once finished.",
            registry=r,
        )
        self.listed_files = Gauge(
            "realize_move_listed_files",
            "Files to move found at the source.",
            ["arena"],
            registry=r,
        )
        self.listed_bytes = Gauge(
            "realize_move_listed_bytes",
            "Total size of the files to move found at the source.",
            ["arena"],
            registry=r,
        )
        self.files = Counter(
            "realize_move_files",
            "Files done, by status (moved or failed).",
            ["arena", "status"],
            registry=r,
        )
        self.bytes = Counter(
            "realize_move_bytes",
            "Bytes sent for the move, by method (copy or delta).",
            ["method"],
            registry=r,
        )
        for method in (COPY, DELTA):
            self.bytes.labels(method)
        self.delta_saved_bytes = Counter(
            "realize_move_delta_saved_bytes",
            "Bytes not sent because ranges were repaired by delta.",
            registry=r,
        )
        self.files_repaired = Counter(
            "realize_move_files_repaired",
            "Files whose destination copy had differing ranges, repaired.",
            registry=r,
        )
        self.copy_fallbacks = Counter(
            "realize_move_copy_fallbacks",
            "Ranges a delta could not repair, copied instead.",
            registry=r,
        )
        self.retries = Counter(
            "realize_move_retries",
            "Attempts started again after a network error.",
            registry=r,
        )

    def started(self, wall_time: float) -> None:
        """
        The move starts: C{realize_move_up} becomes 1 and the duration
        runs.

        @param wall_time: the Unix time now (C{reactor.seconds()}).
        """
        self._started = self.timer()
        self.up.set(1)
        self.success.set(0)
        self.start_time.set(wall_time)
        self.duration.set_function(self._elapsed)

    def _elapsed(self) -> float:
        if self._started is None:
            return 0.0
        return max(0.0, self.timer() - self._started)

    def finished(self, ok: bool) -> None:
        """
        The move ended (before the final push): C{realize_move_up} becomes
        0, the duration stops.

        @param ok: whether every file moved (C{realize_move_success}).
        """
        elapsed = self._elapsed()
        self.duration.set_function(lambda: elapsed)
        self.up.set(0)
        self.success.set(1 if ok else 0)

    def listed(self, arena: str, files: int, size: int) -> None:
        """
        @param arena: an arena.
        @param files: files to move found at its source.
        @param size: their total size in bytes.
        """
        self.listed_files.labels(arena).set(files)
        self.listed_bytes.labels(arena).set(size)

    def file_done(self, arena: str, status: str) -> None:
        """
        @param arena: the file's arena.
        @param status: C{"moved"} or C{"failed"}.
        """
        key = (arena, status)
        child = self._files_of.get(key)
        if child is None:
            child = self._files_of[key] = self.files.labels(arena, status)
        child.inc()

    def sent(self, method: str, size: int) -> None:
        """
        @param method: L{COPY} or L{DELTA}.
        @param size: bytes just sent.
        """
        self.bytes.labels(method).inc(max(0, size))

    def delta_saved(self, size: int) -> None:
        """
        @param size: bytes a delta repair saved.
        """
        self.delta_saved_bytes.inc(max(0, size))

    def repaired(self, count: int = 1) -> None:
        """
        @param count: files just repaired.
        """
        self.files_repaired.inc(count)

    def fallback(self, count: int = 1) -> None:
        """
        @param count: ranges just copied because a delta failed.
        """
        self.copy_fallbacks.inc(count)

    def retried(self) -> None:
        """
        An attempt starts again after a network error.
        """
        self.retries.inc()

    def update(self, stats: MoveStatsLike) -> None:
        """
        Bring the byte, repair and fallback counters up to a mover's
        running totals: adds what grew since the last call.  Use either
        this or L{sent}/L{delta_saved}/L{repaired}/L{fallback} for a
        counter, not both.

        @param stats: the totals (L{realize.services.report.MoveStats}).
        """
        grown = self._grown
        self.sent(COPY, grown("copied_bytes", stats.copied_bytes))
        self.sent(DELTA, grown("delta_bytes", stats.delta_bytes))
        self.delta_saved(grown("saved_bytes", stats.saved_bytes))
        self.repaired(grown("files_repaired", stats.files_repaired))
        self.fallback(grown("fallbacks", stats.fallbacks))

    def _grown(self, name: str, value: int) -> int:
        before = self._seen.get(name, 0)
        if value <= before:
            return 0
        self._seen[name] = value
        return value - before


#: C{source} label values of C{realize_watcher_files_recorded_total}.
SOURCE_HASHED = "hashed"
SOURCE_STORE = "store"


@define(eq=False)
class HistoryMetrics:
    """
    The metrics of the history service and the watchers of C{realized}, on
    a given registry (the series are listed in this module's docstring).

    @ivar registry: where the metrics are registered.
    """

    registry: CollectorRegistry

    entries: Counter = field(init=False)
    notifications: Counter = field(init=False)
    size: Gauge = field(init=False)
    position: Gauge = field(init=False)
    trimmed: Counter = field(init=False)
    subscribers: Gauge = field(init=False)
    queue: Gauge = field(init=False)
    hash_backlog: Gauge = field(init=False)
    hash_seconds: Counter = field(init=False)
    hashed_bytes: Counter = field(init=False)
    recorded: Counter = field(init=False)
    watches: Gauge = field(init=False)
    unwatched: Gauge = field(init=False)
    rescans: Counter = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.entries = Counter(
            "realize_history_entries",
            "History entries recorded, by kind.",
            ["arena", "kind"],
            registry=r,
        )
        self.notifications = Counter(
            "realize_history_notifications",
            "Notifications sent to subscribers, by kind.",
            ["arena", "kind"],
            registry=r,
        )
        self.size = Gauge(
            "realize_history_held_entries",
            "Entries the history holds now.",
            ["arena"],
            registry=r,
        )
        self.position = Gauge(
            "realize_history_position",
            "Last history position recorded.",
            ["arena"],
            registry=r,
        )
        self.trimmed = Counter(
            "realize_history_trimmed",
            "History entries trimmed.",
            ["arena"],
            registry=r,
        )
        self.subscribers = Gauge(
            "realize_history_subscribers",
            "Subscriptions open, by peer.",
            ["arena", "peer"],
            registry=r,
        )
        self.queue = Gauge(
            "realize_watcher_queue_files",
            "Files waiting for their stability delay or to be hashed.",
            ["arena"],
            registry=r,
        )
        self.hash_backlog = Gauge(
            "realize_watcher_hash_backlog_bytes",
            "Bytes of the files waiting to be hashed.",
            ["arena"],
            registry=r,
        )
        self.hash_seconds = Counter(
            "realize_watcher_hash_seconds",
            "Seconds spent hashing changed files.",
            ["arena"],
            registry=r,
        )
        self.hashed_bytes = Counter(
            "realize_watcher_hashed_bytes",
            "Bytes of changed files hashed.",
            ["arena"],
            registry=r,
        )
        self.recorded = Counter(
            "realize_watcher_files_recorded",
            "Versions recorded, by source (hashed here, or known from the store).",
            ["arena", "source"],
            registry=r,
        )
        self.watches = Gauge(
            "realize_watcher_watches",
            "inotify watches in use.",
            ["arena"],
            registry=r,
        )
        self.unwatched = Gauge(
            "realize_watcher_unwatched_directories",
            "Directories that could not be watched, rescanned periodically.",
            ["arena"],
            registry=r,
        )
        self.rescans = Counter(
            "realize_watcher_rescans",
            "Scans comparing the disk with the index, by reason.",
            ["arena", "reason"],
            registry=r,
        )

    def recorded_entries(self, arena: str, kinds: Iterable[str]) -> None:
        """
        @param arena: the arena.
        @param kinds: the kind of each entry just recorded.
        """
        for kind, count in collections.Counter(kinds).items():
            self.entries.labels(arena, kind).inc(count)

    def sent(self, arena: str, kinds: Iterable[str]) -> None:
        """
        @param arena: the arena.
        @param kinds: the kind of each notification just sent.
        """
        for kind, count in collections.Counter(kinds).items():
            self.notifications.labels(arena, kind).inc(count)

    def history_state(self, arena: str, first: int, last: int) -> None:
        """
        @param arena: the arena.
        @param first: the first position held.
        @param last: the last position recorded.
        """
        self.size.labels(arena).set(max(0, last - first + 1))
        self.position.labels(arena).set(last)

    def subscribed(self, arena: str, peer: str, change: int) -> None:
        """
        @param arena: the arena.
        @param peer: the subscriber.
        @param change: +1 for a new subscription, -1 for one closed.
        """
        self.subscribers.labels(arena, peer).inc(change)

    def watcher_state(
        self, arena: str, queued: int, backlog: int, watches: int, unwatched: int
    ) -> None:
        """
        @param arena: the arena.
        @param queued: files waiting (delay or hashing).
        @param backlog: bytes waiting to be hashed.
        @param watches: inotify watches in use.
        @param unwatched: directories that could not be watched.
        """
        self.queue.labels(arena).set(queued)
        self.hash_backlog.labels(arena).set(backlog)
        self.watches.labels(arena).set(watches)
        self.unwatched.labels(arena).set(unwatched)

    def hashed(self, arena: str, seconds: float, size: int, files: int) -> None:
        """
        @param arena: the arena.
        @param seconds: time the hashing took.
        @param size: bytes hashed.
        @param files: versions recorded from that hashing.
        """
        self.hash_seconds.labels(arena).inc(max(0.0, seconds))
        self.hashed_bytes.labels(arena).inc(max(0, size))
        self.recorded.labels(arena, SOURCE_HASHED).inc(max(0, files))

    def from_store(self, arena: str, files: int = 1) -> None:
        """
        @param arena: the arena.
        @param files: versions recorded with the root the store gave.
        """
        self.recorded.labels(arena, SOURCE_STORE).inc(max(0, files))

    def rescanned(self, arena: str, reason: str) -> None:
        """
        @param arena: the arena.
        @param reason: C{start}, C{overflow}, C{unwatched} or C{directory}.
        """
        self.rescans.labels(arena, reason).inc()


#: C{outcome} label values of C{realize_consensus_jobs_total}.
OUTCOME_DONE = "done"
OUTCOME_FAILED = "failed"


@define(eq=False)
class ConsensusMetrics:
    """
    The metrics of the consensus jobs and the audit events of C{realized}
    (DESIGN.md section 11, #nochurten), on a given registry:

        - C{realize_consensus_jobs_total} (counter; C{arena}, C{action},
          C{outcome}): jobs that ran; C{action} is C{realize}, C{update},
          C{remove}, C{unrealize} or C{keep}; C{outcome} is C{done} or
          C{failed} (it is retried).
        - C{realize_audit_events_total} (counter; C{arena}, C{event}): the
          job steps logged in C{realize.audit}: C{queued}, C{download},
          C{verify}, C{realize}, C{unrealize}, C{remove}, C{evict},
          C{failed}.
        - C{realize_audit_connections_total} (counter; C{peer}, C{event}):
          connections to peers that feed the Unreal, C{connect} or
          C{disconnect}.
        - C{realize_consensus_realized_bytes_total} (counter; C{arena}):
          bytes of files realized (made real files from the cache).
        - C{realize_consensus_unrealized_bytes_total} (counter; C{arena}):
          bytes of real files moved into the cache.
        - C{realize_consensus_downloaded_bytes_total} (counter; C{arena}):
          bytes the jobs fetched from peers into the cache.
        - C{realize_consensus_queue_paths} (gauge; C{arena}): dirty paths
          waiting for a job (or running one).
        - C{realize_consensus_retrying_paths} (gauge; C{arena}): of those,
          the paths waiting for a retry after a failure.
        - C{realize_consensus_running_jobs} (gauge): jobs running now.
        - C{realize_unreal_conflicts} (gauge; C{arena}): open conflicts in
          the Unreal: versions beside a file's default, listed in
          C{user.realize.conflicts} (docs/real.md, Conflicts).

    @ivar registry: where the metrics are registered.
    """

    registry: CollectorRegistry

    jobs: Counter = field(init=False)
    events: Counter = field(init=False)
    connections: Counter = field(init=False)
    realized_bytes: Counter = field(init=False)
    unrealized_bytes: Counter = field(init=False)
    downloaded_bytes: Counter = field(init=False)
    queue: Gauge = field(init=False)
    retrying: Gauge = field(init=False)
    running: Gauge = field(init=False)
    conflicts: Gauge = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.conflicts = Gauge(
            "realize_unreal_conflicts",
            "Open conflicts: versions kept beside a file's default.",
            ["arena"],
            registry=r,
        )
        self.jobs = Counter(
            "realize_consensus_jobs",
            "Consensus jobs that ran, by action and outcome.",
            ["arena", "action", "outcome"],
            registry=r,
        )
        self.events = Counter(
            "realize_audit_events",
            "Job steps logged in realize.audit, by event.",
            ["arena", "event"],
            registry=r,
        )
        self.connections = Counter(
            "realize_audit_connections",
            "Connections of peers feeding the Unreal, connect or disconnect.",
            ["peer", "event"],
            registry=r,
        )
        self.realized_bytes = Counter(
            "realize_consensus_realized_bytes",
            "Bytes of files realized from the cache into the datadir.",
            ["arena"],
            registry=r,
        )
        self.unrealized_bytes = Counter(
            "realize_consensus_unrealized_bytes",
            "Bytes of real files moved into the cache.",
            ["arena"],
            registry=r,
        )
        self.downloaded_bytes = Counter(
            "realize_consensus_downloaded_bytes",
            "Bytes the consensus jobs fetched from peers.",
            ["arena"],
            registry=r,
        )
        self.queue = Gauge(
            "realize_consensus_queue_paths",
            "Dirty paths waiting for a consensus job.",
            ["arena"],
            registry=r,
        )
        self.retrying = Gauge(
            "realize_consensus_retrying_paths",
            "Dirty paths waiting for a retry after a failure.",
            ["arena"],
            registry=r,
        )
        self.running = Gauge(
            "realize_consensus_running_jobs",
            "Consensus jobs running now.",
            registry=r,
        )

    def event(self, arena: str, event: str) -> None:
        """
        @param event: a job step (C{queued}, C{download}, ...).
        """
        self.events.labels(arena, event).inc()

    def job(self, arena: str, action: str, outcome: str) -> None:
        """
        @param action: what the job did.
        @param outcome: L{OUTCOME_DONE} or L{OUTCOME_FAILED}.
        """
        self.jobs.labels(arena, action, outcome).inc()

    def connection(self, peer: str, event: str) -> None:
        """
        @param event: C{connect} or C{disconnect}.
        """
        self.connections.labels(peer, event).inc()

    def moved(self, arena: str, realized: int = 0, unrealized: int = 0) -> None:
        """
        @param realized: bytes realized.
        @param unrealized: bytes unrealized.
        """
        if realized:
            self.realized_bytes.labels(arena).inc(realized)
        if unrealized:
            self.unrealized_bytes.labels(arena).inc(unrealized)

    def downloaded(self, arena: str, size: int) -> None:
        """
        @param size: bytes fetched.
        """
        self.downloaded_bytes.labels(arena).inc(max(0, size))

    def queue_state(self, arena: str, queued: int, retrying: int) -> None:
        """
        @param queued: dirty paths queued.
        @param retrying: of those, waiting for a retry.
        """
        self.queue.labels(arena).set(queued)
        self.retrying.labels(arena).set(retrying)

    def conflicts_open(self, arena: str, count: int) -> None:
        """
        @param count: the arena's open conflicts now.
        """
        self.conflicts.labels(arena).set(count)

    def jobs_running(self, count: int) -> None:
        """
        @param count: jobs running now.
        """
        self.running.set(count)


#: C{result} label values of C{realize_cache_reads_total}.
HIT = "hit"
MISS = "miss"


@define(eq=False)
class CacheMetrics:
    """
    The metrics of the block cache of C{realized}, on a given registry
    (the series are listed in this module's docstring).  Thread-safe (FUSE
    threads count reads).

    @ivar registry: where the metrics are registered.
    """

    registry: CollectorRegistry

    bytes: Gauge = field(init=False)
    blobs: Gauge = field(init=False)
    quota: Gauge = field(init=False)
    limit: Gauge = field(init=False)
    reads: Counter = field(init=False)
    read_bytes: Counter = field(init=False)
    fetched_bytes: Counter = field(init=False)
    not_kept_bytes: Counter = field(init=False)
    released_bytes: Counter = field(init=False)
    evictions: Counter = field(init=False)
    admissions: Counter = field(init=False)
    pending_deleted: Counter = field(init=False)
    fixes: Counter = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.bytes = Gauge(
            "realize_cache_bytes",
            "Bytes the cache's blobs use, by queue.",
            ["arena", "queue"],
            registry=r,
        )
        self.blobs = Gauge(
            "realize_cache_blobs", "Blobs, by queue.", ["arena", "queue"], registry=r
        )
        self.quota = Gauge(
            "realize_cache_quota_bytes",
            "The configured quota of the cache.",
            ["arena"],
            registry=r,
        )
        self.limit = Gauge(
            "realize_cache_limit_bytes",
            "Bytes the cache may use now (the quota, less on low free space).",
            ["arena"],
            registry=r,
        )
        self.reads = Counter(
            "realize_cache_reads",
            "FUSE reads, served from the cache (hit) or not (miss).",
            ["arena", "result"],
            registry=r,
        )
        self.read_bytes = Counter(
            "realize_cache_read_bytes",
            "Bytes of FUSE reads, by result.",
            ["arena", "result"],
            registry=r,
        )
        self.fetched_bytes = Counter(
            "realize_cache_fetched_bytes",
            "Bytes downloaded from peers and verified.",
            ["arena"],
            registry=r,
        )
        self.not_kept_bytes = Counter(
            "realize_cache_not_kept_bytes",
            "Bytes downloaded and served but not kept, for lack of room.",
            ["arena"],
            registry=r,
        )
        self.released_bytes = Counter(
            "realize_cache_released_bytes",
            "Bytes released behind readers of files larger than the working area.",
            ["arena"],
            registry=r,
        )
        self.evictions = Counter(
            "realize_cache_evictions",
            "Blobs evicted, by queue and reason.",
            ["arena", "queue", "reason"],
            registry=r,
        )
        self.admissions = Counter(
            "realize_cache_admissions",
            "Blobs admitted to the protected queue, by reason.",
            ["arena", "reason"],
            registry=r,
        )
        self.pending_deleted = Counter(
            "realize_cache_pending_deleted",
            "Outdated blobs deleted by the pending removal batches.",
            ["arena"],
            registry=r,
        )
        self.fixes = Counter(
            "realize_cache_consistency_fixes",
            "Inconsistencies between blob files and rows fixed, by kind.",
            ["arena", "kind"],
            registry=r,
        )

    def state(
        self,
        arena: str,
        usage: dict[str, int],
        counts: dict[str, int],
        quota: int | None,
        limit: int,
    ) -> None:
        """
        @param arena: the arena.
        @param usage: bytes by queue.
        @param counts: blobs by queue.
        @param quota: the configured quota, or C{None}.
        @param limit: the limit now.
        """
        for queue, value in usage.items():
            self.bytes.labels(arena, queue).set(value)
        for queue, value in counts.items():
            self.blobs.labels(arena, queue).set(value)
        if quota is not None:
            self.quota.labels(arena).set(quota)
        self.limit.labels(arena).set(limit)

    def read(self, arena: str, hit: bool, size: int) -> None:
        """
        @param arena: the arena.
        @param hit: whether the read was served from the cache.
        @param size: bytes asked.
        """
        result = HIT if hit else MISS
        self.reads.labels(arena, result).inc()
        self.read_bytes.labels(arena, result).inc(max(0, size))

    def fetched(self, arena: str, size: int) -> None:
        """
        @param arena: the arena.
        @param size: bytes downloaded and verified.
        """
        self.fetched_bytes.labels(arena).inc(max(0, size))

    def not_kept(self, arena: str, size: int) -> None:
        """
        @param arena: the arena.
        @param size: bytes served without being kept.
        """
        self.not_kept_bytes.labels(arena).inc(max(0, size))

    def released(self, arena: str, size: int) -> None:
        """
        @param arena: the arena.
        @param size: bytes released behind a reader.
        """
        self.released_bytes.labels(arena).inc(max(0, size))

    def evicted(self, arena: str, queue: str, reason: str) -> None:
        """
        @param arena: the arena.
        @param queue: the queue the blob left.
        @param reason: C{quota}, C{free_space}, C{admission}, or C{pending}
            for a pending removal batch (counted apart).
        """
        if reason == "pending":
            self.pending_deleted.labels(arena).inc()
        else:
            self.evictions.labels(arena, queue, reason).inc()

    def admitted(self, arena: str, reason: str, count: int = 1) -> None:
        """
        @param arena: the arena.
        @param reason: C{mark} or C{frequency}.
        @param count: blobs admitted.
        """
        self.admissions.labels(arena, reason).inc(count)

    def fixed(self, arena: str, **kinds: int) -> None:
        """
        @param arena: the arena.
        @param kinds: fixes by kind (C{missing}, C{orphan}, C{trimmed}).
        """
        for kind, count in kinds.items():
            if count:
                self.fixes.labels(arena, kind).inc(count)
