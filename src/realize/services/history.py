"""
The history service of a daemon (DESIGN.md section 9): one
L{ArenaIndex} per arena with a datadir, the subscriptions of peers to
them, and trimming.

A subscription is transport-independent and pulled: the AMP layer (or a
test, or C{realize-history --peer local}) calls
L{Subscription.next_batch} whenever it can send more, and gets the next
notifications:

    1. C{connected(uuid)} (its position: the last one recorded);
    2. if the subscriber's progress is none, names another store's uuid,
       has position 0, lies beyond the end, or the history no longer reaches
       back to it: a catch-up, C{catchup_start(P)}, one C{catchup} per
       index entry (in path order, read a page at a time), and
       C{catchup_complete(P)}, where C{P} was the last position when the
       catch-up started; else a replay from the position after the
       subscriber's;
    3. the entries after that, re-derived from the current index
       (L{realize.storage.index._txn_history_after}), live: when the
       subscriber is caught up, C{next_batch} waits for the next change
       (a local reader, this daemon's own feed, then waits for the arena
       to be quiet: L{LOCAL_SETTLE}, at most L{LOCAL_MAX_DELAY}).

If the history is trimmed past a subscriber's position while it is
slow, its next pull starts a catch-up.  A subscriber that stops pulling
costs no memory beyond its cursor: nothing is queued per subscriber, the
entries are read from the history table when it pulls again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from realize.config import ArenaConfig, Config
from realize.errors import (
    BadRequest,
    NotFound,
    RealizeError,
    SubscriptionClosed,
    Unauthorized,
)
from realize.interfaces import RunInThread
from realize.metrics import HistoryMetrics
from realize.model import (
    CATCHUP_COMPLETE,
    CATCHUP_START,
    CONNECTED,
    ArenaName,
    Notification,
    PeerId,
)
from realize.storage.index import ArenaIndex, Interactions

__all__ = [
    "DB_NAME",
    "LOCAL_MAX_DELAY",
    "LOCAL_SETTLE",
    "MAX_BATCH",
    "TRIM_INTERVAL",
    "HistoryService",
    "Subscription",
    "SubscriptionClosed",
]

#: Name of the arena db in an arena's workdir.
DB_NAME = "arena.db"

#: Most notifications one L{Subscription.next_batch} returns.
MAX_BATCH = 1000

#: Seconds between two trims of every arena's history.
TRIM_INTERVAL = 300.0

#: A local reader (this daemon's own feed into its Unreal) woken by a
#: change reads once the arena recorded nothing for this many seconds...
LOCAL_SETTLE = 0.5

#: ... or this many seconds after the change woke it, whichever comes
#: first.  A store receiving thousands of files a second records all the
#: time: applied meanwhile, the feed took the daemon's threads (and the
#: GIL) from the store, and a move of 10,000 small files took 20-25% longer
#: (issue 15).
LOCAL_MAX_DELAY = 10.0


class _Phase(Enum):
    CONNECT = "connect"
    CATCHUP_START = "catchup_start"
    CATCHUP = "catchup"
    LIVE = "live"
    CLOSED = "closed"


def needs_catchup(
    uuid: str, progress: tuple[str, int] | None, first: int, last: int
) -> bool:
    """
    Whether a subscriber with this progress needs a catch-up rather than a
    replay (DESIGN.md section 9).

    @param uuid: this store's uuid.
    @param progress: the subscriber's C{(uuid, position)}, or C{None}.
    @param first: the first position the history holds.
    @param last: the last position recorded.
    @return: C{True} for no progress, another store's uuid, position 0, a
        position beyond C{last}, or one before C{first - 1} (trimmed).
    """
    if progress is None:
        return True
    their_uuid, position = progress
    return their_uuid != uuid or position <= 0 or not first - 1 <= position <= last


@define(eq=False)
class Subscription:
    """
    One peer's subscription to one arena's history: a cursor, nothing
    more (no queue).  Pull with L{next_batch}; at most one pull at a time.

    @ivar service: the service it belongs to (for waiting and counting).
    @ivar index: the arena's index.
    @ivar peer: the subscriber (C{None} for a local reader).
    @ivar progress: the subscriber's C{(uuid, position)} as it asked.
    @ivar position: the last history position sent (after C{connected}).
    """

    log = Logger(namespace="realize.history")

    service: HistoryService
    index: ArenaIndex
    peer: PeerId | None
    progress: tuple[str, int] | None
    position: int = field(default=0, init=False)
    _phase: _Phase = field(default=_Phase.CONNECT, init=False)
    _catchup_position: int = field(default=0, init=False)
    _catchup_after: str | None = field(default=None, init=False)
    _waiter: Deferred[None] | None = field(default=None, init=False)
    _sleeping: IDelayedCall | None = field(default=None, init=False)
    _pulling: bool = field(default=False, init=False)

    @property
    def arena(self) -> ArenaName:
        return self.index.arena

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def caught_up(self) -> bool:
        """
        Whether the notifications sent so far reach the end of the history
        as this service last saw it (no catch-up under way): what a
        one-shot reader (C{realize-history} without C{--follow}) waits for.
        """
        return self._phase is _Phase.LIVE and self.position >= (
            self.service.last_position(self.arena)
        )

    @property
    def catching_up(self) -> bool:
        """
        Whether a catch-up is under way (started, not complete).
        """
        return self._phase in (_Phase.CATCHUP_START, _Phase.CATCHUP)

    def next_batch(self, max_count: int = MAX_BATCH) -> Deferred[list[Notification]]:
        """
        The next notifications, at least one: waits for a change when the
        subscriber is caught up.  Cancelling the Deferred stops the wait
        (the subscription stays usable).

        @param max_count: at most this many (clamped to 1 ...
            L{MAX_BATCH}).
        @return: the notifications, in order.
        @raise SubscriptionClosed: if the subscription is closed (also while
            waiting).
        @raise BadRequest: if another pull is under way.
        """
        if self._pulling:
            raise BadRequest(
                f"arena {self.arena}: a pull is already under way on this subscription"
            )
        self._pulling = True
        d = Deferred.fromCoroutine(self._next(max(1, min(max_count, MAX_BATCH))))

        def done(result: object) -> object:
            self._pulling = False
            return result

        return d.addBoth(done)

    async def _next(self, max_count: int) -> list[Notification]:
        while True:
            batch = await self._read(max_count)
            if batch:
                self.service.sent(self, batch)
                return batch
            await self._wait()
            if self.peer is None:
                await self._settle()

    async def _settle(self) -> None:
        """
        A local reader woken by a change waits until the arena is quiet
        (L{LOCAL_SETTLE}), at most L{LOCAL_MAX_DELAY} seconds (the
        service's C{local_settle} and C{local_max_delay}); then it reads
        all that was recorded meanwhile, a batch at a time, without waiting.
        """
        service = self.service
        clock = service.clock
        until = clock.seconds() + service.local_max_delay
        while True:
            self._check_open()
            quiet = service.recorded_at(self.arena) + service.local_settle
            now = clock.seconds()
            if now >= quiet or now >= until:
                return
            await self._sleep(min(quiet, until) - now)

    def _sleep(self, seconds: float) -> Deferred[None]:
        def fire() -> None:
            self._sleeping = None
            if self._waiter is d:
                self._waiter = None
                d.callback(None)

        def cancel(_: Deferred[None]) -> None:
            if self._waiter is d:
                self._waiter = None
            self._stop_sleeping()

        d: Deferred[None] = Deferred(cancel)
        self._waiter = d
        self._sleeping = self.service.clock.callLater(seconds, fire)
        return d

    def _stop_sleeping(self) -> None:
        if self._sleeping is not None and self._sleeping.active():
            self._sleeping.cancel()
        self._sleeping = None

    async def _read(self, max_count: int) -> list[Notification]:
        index = self.index
        batch: list[Notification] = []
        while len(batch) < max_count:
            self._check_open()
            phase = self._phase
            if phase is _Phase.CONNECT:
                positions = await index.positions()
                batch.append(
                    Notification(CONNECTED, self.arena, positions.last, uuid=index.uuid)
                )
                if needs_catchup(
                    index.uuid, self.progress, positions.first, positions.last
                ):
                    self._start_catchup("progress")
                else:
                    assert self.progress is not None
                    self.position = self.progress[1]
                    self._phase = _Phase.LIVE
            elif phase is _Phase.CATCHUP_START:
                positions = await index.positions()
                self._catchup_position = positions.last
                self._catchup_after = None
                batch.append(
                    Notification(CATCHUP_START, self.arena, self._catchup_position)
                )
                self._phase = _Phase.CATCHUP
            elif phase is _Phase.CATCHUP:
                want = max_count - len(batch)
                page = await index.catchup_page(
                    self._catchup_after, want, self._catchup_position
                )
                batch += page
                if len(page) < want:
                    batch.append(
                        Notification(
                            CATCHUP_COMPLETE, self.arena, self._catchup_position
                        )
                    )
                    self.position = self._catchup_position
                    self._phase = _Phase.LIVE
                else:
                    self._catchup_after = page[-1].path
            else:
                replay = await index.replay_after(self.position, max_count - len(batch))
                self._check_open()
                if replay is None:
                    self._start_catchup("trimmed")
                    continue
                notes, last, positions = replay
                batch += notes
                self.position = last
                if last >= positions.last:
                    break
        return batch

    def _start_catchup(self, reason: str) -> None:
        self.log.info(
            "arena {arena}: catch-up for {peer} ({reason})",
            arena=self.arena,
            peer=self.peer,
            reason=reason,
            position=self.position,
        )
        self._phase = _Phase.CATCHUP_START

    def _check_open(self) -> None:
        if self._phase is _Phase.CLOSED:
            raise SubscriptionClosed(
                f"arena {self.arena}: the subscription of {self.peer} is closed"
            )

    def _wait(self) -> Deferred[None]:
        if self.service.last_position(self.arena) > self.position:
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            self._waiter = None
            self.service.not_waiting(self)
            d.errback(CancelledError())

        self._waiter = Deferred(cancel)
        self.service.waiting(self)
        return self._waiter

    def wake(self) -> None:
        """
        Something was recorded in the arena: a waiting pull reads again.
        """
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def close(self) -> None:
        """
        End the subscription: a waiting pull fails with
        L{SubscriptionClosed}; later pulls too.  Closing twice does nothing.
        """
        if self._phase is _Phase.CLOSED:
            return
        self._phase = _Phase.CLOSED
        self._stop_sleeping()
        self.service.closed(self)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.errback(
                SubscriptionClosed(
                    f"arena {self.arena}: the subscription of {self.peer} is closed"
                )
            )


@define(eq=False)
class HistoryService(Service):
    """
    The histories of this daemon's arenas (those with a datadir), opened in
    L{startService} (see L{ready}) and closed in L{stopService}.

    @ivar config: the config in force.
    @ivar clock: for trimming and polling.
    @ivar run_in_thread: runs blocking file system calls (creating the
        workdir).
    @ivar open_pool: makes the pool of an arena db file
        (C{functools.partial(realize.storage.pool.open_pool,
        reactor=reactor)}).
    @ivar metrics: where to count, or C{None}.
    @ivar readonly: read another process's dbs (C{realize-history --peer
        local}): no workdir is created, nothing is trimmed, and live
        changes are found by polling every C{poll_interval} seconds.
    @ivar poll_interval: seconds between two looks for changes recorded by
        another process, or C{None} (changes are recorded through this
        service's indexes).
    @ivar trim_interval: seconds between two trims.
    @ivar local_settle: see L{LOCAL_SETTLE} (0: local readers read at
        once).
    @ivar local_max_delay: see L{LOCAL_MAX_DELAY}.
    @ivar indexes: the open indexes by arena.
    @ivar ready: fires once every index is open (or fails with the first
        error, e.g. L{realize.storage.schema.SchemaTooNew}); made by
        L{startService}.
    """

    log = Logger(namespace="realize.history")

    config: Config
    clock: IReactorTime
    run_in_thread: RunInThread
    open_pool: Callable[[str], Interactions]
    metrics: HistoryMetrics | None = None
    readonly: bool = False
    poll_interval: float | None = None
    trim_interval: float = TRIM_INTERVAL
    local_settle: float = LOCAL_SETTLE
    local_max_delay: float = LOCAL_MAX_DELAY
    indexes: dict[ArenaName, ArenaIndex] = field(factory=dict, init=False)
    ready: Deferred[None] = field(factory=Deferred, init=False)
    _subscriptions: set[Subscription] = field(factory=set, init=False)
    _waiting: dict[ArenaName, set[Subscription]] = field(factory=dict, init=False)
    _last: dict[ArenaName, int] = field(factory=dict, init=False)
    _recorded_at: dict[ArenaName, float] = field(factory=dict, init=False)
    _trimmer: LoopingCall | None = field(default=None, init=False)
    _poll: IDelayedCall | None = field(default=None, init=False)
    _opening: Deferred[None] | None = field(default=None, init=False)

    # -- life ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._opening = Deferred.fromCoroutine(self._open_all(self.config))

        def opened(result: None) -> None:
            self._opening = None
            if isinstance(result, Failure) or not self.running:
                return result
            if not self.readonly:
                self._trimmer = LoopingCall(self.trim)
                self._trimmer.clock = self.clock
                self._trimmer.start(self.trim_interval, now=False).addErrback(
                    lambda f: self.log.failure("trimming stopped", f)
                )
            return result

        self._opening.addBoth(opened).chainDeferred(self.ready)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._trimmer is not None and self._trimmer.running:
            self._trimmer.stop()
        self._trimmer = None
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
        for subscription in list(self._subscriptions):
            subscription.close()

        async def close() -> None:
            if self._opening is not None:
                with contextlib.suppress(Exception):
                    await self._opening
            for index in self.indexes.values():
                index.close()
            self.indexes.clear()

        return Deferred.fromCoroutine(close())

    async def _open_all(self, config: Config) -> None:
        wanted = [a for a in config.arenas.values() if a.datadir is not None]
        await _all([Deferred.fromCoroutine(self._open(a)) for a in wanted])

    async def _open(self, arena: ArenaConfig) -> None:
        path = arena.workdir / DB_NAME
        if not self.readonly:
            await self.run_in_thread(_make_workdir, arena.workdir)
        index = await ArenaIndex.open(
            arena.name, str(path), self.open_pool(str(path)), self.clock
        )
        if not self.running:
            index.close()
            return
        index.listeners.append(self._recorded)
        self.indexes[arena.name] = index
        positions = await index.positions()
        self._last[arena.name] = positions.last
        if self.metrics is not None:
            self.metrics.history_state(arena.name, positions.first, positions.last)
        self.log.info(
            "arena {arena}: history open at position {position} (store {uuid})",
            arena=arena.name,
            position=positions.last,
            uuid=index.uuid,
            path=str(path),
        )

    async def reconfigure(self, config: Config) -> None:
        """
        Apply a new config (SIGHUP): arenas added get their index, arenas
        removed (or without a datadir now) are closed with their
        subscriptions, and subscriptions of peers the ACL no longer admits
        are closed.  Stop the watchers of the arenas removed first
        (L{realize.services.watcher.WatcherService.reconfigure} before and
        after this one).

        @raise Exception: the first error opening a new arena's db (the
            others are opened; the old config's arenas stay as they were).
        """
        old = self.config
        self.config = config
        closing = set()
        for name in self.indexes:
            arena = config.arenas.get(name)
            if (
                arena is None
                or arena.datadir is None
                or arena.workdir != old.arenas[name].workdir
            ):
                closing.add(name)
        for subscription in list(self._subscriptions):
            try:
                if subscription.arena in closing:
                    raise NotFound(f"arena {subscription.arena!r} was removed")
                self._check_access(subscription.arena, subscription.peer)
            except RealizeError:
                subscription.close()
        for name in closing:
            self.indexes.pop(name).close()
            self._last.pop(name, None)
        added = [
            a
            for a in config.arenas.values()
            if a.datadir is not None and a.name not in self.indexes
        ]
        await _all([Deferred.fromCoroutine(self._open(a)) for a in added])

    # -- what the others call --------------------------------------------------

    def index(self, arena: ArenaName) -> ArenaIndex:
        """
        @return: the arena's open index.
        @raise NotFound: if the arena is unknown here or has no datadir.
        """
        try:
            return self.indexes[arena]
        except KeyError:
            raise NotFound(f"arena {arena!r} has no history on this peer") from None

    def _check_access(self, arena: ArenaName, peer: PeerId | None) -> ArenaConfig:
        config = self.config.arenas.get(arena)
        if config is None:
            raise NotFound(f"no arena {arena!r} on this peer")
        if peer is not None:
            if peer not in self.config.peers:
                raise Unauthorized(f"peer {peer!r} is no longer in the config")
            if not config.allows(peer):
                raise Unauthorized(f"peer {peer!r} may not use arena {arena!r}")
        return config

    def subscribe(
        self,
        arena: ArenaName,
        peer: PeerId | None,
        progress: tuple[str, int] | None,
    ) -> Subscription:
        """
        Open a subscription (nothing is read until its first pull).

        @param arena: the arena.
        @param peer: the subscribing peer, checked against the arena's ACL;
            C{None} for a local reader (no ACL).
        @param progress: the subscriber's C{(uuid, position)} for this
            arena and this peer, or C{None}.
        @return: the subscription; its first notification is C{connected}.
        @raise NotFound: if the arena is unknown or has no datadir here.
        @raise Unauthorized: if the ACL does not admit C{peer}.
        """
        self._check_access(arena, peer)
        subscription = Subscription(self, self.index(arena), peer, progress)
        self._subscriptions.add(subscription)
        if self.metrics is not None:
            self.metrics.subscribed(arena, str(peer or "local"), 1)
        self.log.info(
            "arena {arena}: {peer} subscribed from {progress}",
            arena=arena,
            peer=peer or "local",
            progress=progress,
        )
        return subscription

    def subscriptions(self) -> list[Subscription]:
        """
        @return: the subscriptions open.
        """
        return list(self._subscriptions)

    async def acknowledge(self, arena: ArenaName, peer: PeerId, position: int) -> None:
        """
        A subscriber applied this history up to C{position} (for trimming).

        @raise NotFound: if the arena has no history here.
        @raise Unauthorized: if the ACL does not admit C{peer}.
        """
        self._check_access(arena, peer)
        await self.index(arena).acknowledge(peer, position)

    def uuid(self, arena: ArenaName) -> str:
        """
        @return: the store uuid of an arena (compared by C{realize-move} to
            refuse moving an arena onto itself).
        @raise NotFound: if the arena has no history here.
        """
        return self.index(arena).uuid

    def last_position(self, arena: ArenaName) -> int:
        """
        @return: the last position recorded in the arena, as this service
            last saw it.
        """
        return self._last.get(arena, 0)

    async def trim(self) -> int:
        """
        Trim every arena's history now (#trimhistory): entries that every
        peer of the arena's ACL acknowledged, beyond C{[history]
        max_entries}, or older than C{max_age}.

        @return: how many entries were dropped in all.
        """
        total = 0
        history = self.config.history
        for name, index in list(self.indexes.items()):
            arena = self.config.arenas.get(name)
            if arena is None:
                continue
            peers: Iterable[str] = (
                arena.peers if arena.peers is not None else self.config.peers
            )
            try:
                dropped = await index.trim(peers, history.max_entries, history.max_age)
                positions = await index.positions()
            except Exception:
                self.log.failure("arena {arena}: trimming failed", arena=name)
                continue
            total += dropped
            if self.metrics is not None:
                self.metrics.trimmed.labels(name).inc(dropped)
                self.metrics.history_state(name, positions.first, positions.last)
            if dropped:
                self.log.info(
                    "arena {arena}: trimmed {count} history entries, "
                    "first position now {first}",
                    arena=name,
                    count=dropped,
                    first=positions.first,
                )
        return total

    # -- subscriptions' and indexes' callbacks ----------------------------------

    def recorded_at(self, arena: ArenaName) -> float:
        """
        @return: when this service last recorded something in the arena
            (the clock's seconds), 0 if never.
        """
        return self._recorded_at.get(arena, 0.0)

    def _recorded(self, index: ArenaIndex, notes: list[Notification]) -> None:
        arena = index.arena
        self._recorded_at[arena] = self.clock.seconds()
        self._last[arena] = max(self._last.get(arena, 0), notes[-1].position)
        if self.metrics is not None:
            self.metrics.recorded_entries(arena, (n.kind for n in notes))
            self.metrics.position.labels(arena).set(self._last[arena])
            self.metrics.size.labels(arena).inc(len(notes))
        # One event per recording, not per entry: a move records thousands
        # of files a second (issue 15).
        self.log.debug(
            "arena {arena}: {count} entries recorded, positions {first} to {last}",
            arena=arena,
            count=len(notes),
            first=notes[0].position,
            last=notes[-1].position,
        )
        self._wake(arena)

    def _wake(self, arena: ArenaName) -> None:
        for subscription in list(self._waiting.pop(arena, ())):
            subscription.wake()

    def waiting(self, subscription: Subscription) -> None:
        """
        A subscription waits for the next change of its arena.
        """
        self._waiting.setdefault(subscription.arena, set()).add(subscription)
        if self.poll_interval is not None and self._poll is None:
            self._poll = self.clock.callLater(self.poll_interval, self._polled)

    def not_waiting(self, subscription: Subscription) -> None:
        """
        A subscription no longer waits.
        """
        waiting = self._waiting.get(subscription.arena)
        if waiting is not None:
            waiting.discard(subscription)
            if not waiting:
                del self._waiting[subscription.arena]

    def _polled(self) -> None:
        self._poll = None
        Deferred.fromCoroutine(self._poll_once()).addErrback(
            lambda f: self.log.failure("polling the histories failed", f)
        )

    async def _poll_once(self) -> None:
        for arena in list(self._waiting):
            index = self.indexes.get(arena)
            if index is None:
                continue
            positions = await index.positions()
            if positions.last > self._last.get(arena, 0):
                self._last[arena] = positions.last
                self._wake(arena)
        if self._waiting and self.running and self._poll is None:
            assert self.poll_interval is not None
            self._poll = self.clock.callLater(self.poll_interval, self._polled)

    def sent(self, subscription: Subscription, batch: list[Notification]) -> None:
        """
        A subscription returned a batch (for the metrics).
        """
        if self.metrics is not None:
            self.metrics.sent(subscription.arena, (n.kind for n in batch))

    def closed(self, subscription: Subscription) -> None:
        """
        A subscription was closed.
        """
        self.not_waiting(subscription)
        if subscription in self._subscriptions:
            self._subscriptions.discard(subscription)
            if self.metrics is not None:
                self.metrics.subscribed(
                    subscription.arena, str(subscription.peer or "local"), -1
                )
            self.log.info(
                "arena {arena}: subscription of {peer} closed at {position}",
                arena=subscription.arena,
                peer=subscription.peer or "local",
                position=subscription.position,
            )


async def _all(ds: list[Deferred[None]]) -> None:
    """
    Wait for every Deferred; then raise the first failure, if any.
    """
    results = await DeferredList(ds, consumeErrors=True)
    for ok, value in results:
        if not ok:
            assert isinstance(value, Failure)
            value.raiseException()


def _make_workdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
