"""
Tests for L{realize.services.history}: the subscription state machine
(connected, replay, catch-up, live, trimmed positions, back-pressure),
acknowledgements and trimming, over a L{Clock} and a real temporary db
run synchronously.
"""

from __future__ import annotations

import os
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from realize.config import ArenaConfig, Config, HistoryConfig, PeerConfig
from realize.errors import BadRequest, NotFound, Unauthorized
from realize.metrics import HistoryMetrics, make_registry
from realize.model import (
    ADD,
    CATCHUP,
    CATCHUP_COMPLETE,
    CATCHUP_START,
    CONNECTED,
    REMOVE,
    REPLACE,
    ArenaName,
    Notification,
    PeerId,
)
from realize.services import history as history_module
from realize.services.history import (
    MAX_BATCH,
    TRIM_INTERVAL,
    HistoryService,
    Subscription,
    SubscriptionClosed,
    needs_catchup,
)
from realize.storage.index import ArenaIndex, Version
from realize.storage.schema import SchemaTooNew
from tests.helpers import sync_run_in_thread
from tests.sqlite_helpers import SyncPool

A = ArenaName("a")
B = PeerId("b")
C = PeerId("c")
H1 = b"1" * 32
H2 = b"2" * 32


def make_config(
    base: str,
    acl: frozenset[PeerId] | None = None,
    history: HistoryConfig | None = None,
) -> Config:
    """
    Peers b and c; arena a with a datadir (ACL C{acl}); arena nodata
    without one.
    """
    root = Path(base)
    peers = {p: PeerConfig(p, None, p.encode()) for p in (B, C)}
    arenas = {
        A: ArenaConfig(A, root / "data", root / "work", peers=acl),
        ArenaName("nodata"): ArenaConfig(ArenaName("nodata"), None, root / "w2"),
    }
    return Config("test.toml", peers, arenas, history=history or HistoryConfig())


def kinds(batch: list[Notification]) -> list[str]:
    return [n.kind for n in batch]


class _ServiceCase(SynchronousTestCase):
    """
    A started L{HistoryService} over synchronous pools on temporary dbs.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))
        self.pools: list[SyncPool] = []
        self.registry = make_registry()
        self.metrics = HistoryMetrics(self.registry)
        self.service = self.make_service(make_config(self.base))
        self.index = self.service.index(A)

    def open_pool(self, path: str) -> SyncPool:
        pool = SyncPool(path)
        self.pools.append(pool)
        return pool

    def make_service(self, config: Config, **kwargs: Any) -> HistoryService:
        # Local readers read at once here, unless a test says otherwise.
        kwargs.setdefault("local_settle", 0.0)
        service = HistoryService(
            config,
            self.clock,
            sync_run_in_thread,
            self.open_pool,
            kwargs.pop("metrics", self.metrics),
            **kwargs,
        )
        service.startService()
        self.successResultOf(service.ready)
        self.addCleanup(self.stop, service)
        return service

    def stop(self, service: HistoryService) -> None:
        if service.running:
            self.successResultOf(service.stopService())

    def wait(self, coro: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def add(self, *paths: str, size: int = 1, hash: bytes = H1) -> list[Notification]:
        notes: list[Notification] = self.wait(
            self.index.record_versions([Version(p, size, 5, hash) for p in paths])
        )
        return notes

    def pull(self, subscription: Subscription, count: int = MAX_BATCH) -> Any:
        return self.successResultOf(subscription.next_batch(count))

    def drain(self, subscription: Subscription, count: int = MAX_BATCH) -> list[Any]:
        """
        Pull until a pull would wait; return everything pulled.
        """
        got = []
        while True:
            d = subscription.next_batch(count)
            if not d.called:
                d.cancel()
                self.failureResultOf(d, CancelledError)
                return got
            got += self.successResultOf(d)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


class NeedsCatchupTests(SynchronousTestCase):
    """
    L{needs_catchup}: the rule of DESIGN.md section 9.
    """

    def test_rule(self) -> None:
        """
        No progress, another uuid, position 0, a position beyond the end or
        before the first held need a catch-up; the others replay.
        """
        cases = [
            (None, True),
            (("other", 5), True),
            (("u", 0), True),
            (("u", 11), True),
            (("u", 3), True),
            (("u", 4), False),
            (("u", 10), False),
        ]
        for progress, expected in cases:
            self.assertEqual(needs_catchup("u", progress, 5, 10), expected, progress)


class SubscriptionTests(_ServiceCase):
    """
    The subscription state machine.
    """

    def test_connected_then_catchup(self) -> None:
        """
        Without progress: C{connected(uuid)} with the last position, then a
        catch-up of the whole index in path order, complete with the
        position it started at; then the pull waits for a change.
        """
        self.add("b", "a/x", "a.txt")
        sub = self.service.subscribe(A, B, None)
        batch = self.pull(sub)
        self.assertEqual(
            kinds(batch),
            [CONNECTED, CATCHUP_START, CATCHUP, CATCHUP, CATCHUP, CATCHUP_COMPLETE],
        )
        self.assertEqual(batch[0].uuid, self.index.uuid)
        self.assertEqual(batch[0].position, 3)
        self.assertEqual([n.path for n in batch[2:5]], ["a.txt", "a/x", "b"])
        self.assertEqual({n.position for n in batch[1:]}, {3})
        self.assertEqual(batch[2].hash, H1)
        d = sub.next_batch()
        self.assertNoResult(d)
        self.add("c")
        [live] = self.successResultOf(d)
        self.assertEqual((live.kind, live.path, live.position), (ADD, "c", 4))

    def test_replay(self) -> None:
        """
        With this store's uuid and a position it holds: C{connected}, then
        the entries after that position, then live entries.
        """
        self.add("a", "b", "c", "d", "e")
        sub = self.service.subscribe(A, B, (self.index.uuid, 2))
        batch = self.pull(sub)
        self.assertEqual(kinds(batch), [CONNECTED, ADD, ADD, ADD])
        self.assertEqual([n.position for n in batch[1:]], [3, 4, 5])
        self.assertEqual(sub.position, 5)

    def test_replay_rederived(self) -> None:
        """
        Replayed entries carry the current index: a Replace of a file
        removed since is a Remove, an Add of a file gone since is skipped.
        """
        self.add("f", "g")
        self.add("f", hash=H2)
        self.wait(self.index.record_removals([("f", 9), ("g", 9)]))
        sub = self.service.subscribe(A, B, (self.index.uuid, 1))
        batch = self.pull(sub)
        self.assertEqual(
            [(n.kind, n.path, n.position) for n in batch[1:]],
            [(REMOVE, "f", 3), (REMOVE, "f", 4), (REMOVE, "g", 5)],
        )
        self.assertEqual(batch[1].old_hash, H1)

    def test_caught_up(self) -> None:
        """
        A subscriber at the last position gets C{connected} and then waits.
        """
        self.add("a")
        sub = self.service.subscribe(A, B, (self.index.uuid, 1))
        self.assertEqual(kinds(self.pull(sub)), [CONNECTED])
        d = sub.next_batch()
        self.assertNoResult(d)
        self.add("a", hash=H2)
        self.assertEqual(kinds(self.successResultOf(d)), [REPLACE])

    def test_foreign_uuid(self) -> None:
        """
        Progress naming another store's uuid gets a catch-up, not an error.
        """
        self.add("a")
        sub = self.service.subscribe(A, B, ("0" * 32, 1))
        self.assertEqual(
            kinds(self.pull(sub)),
            [CONNECTED, CATCHUP_START, CATCHUP, CATCHUP_COMPLETE],
        )

    def test_position_zero_or_beyond(self) -> None:
        """
        Position 0 and a position beyond the end get a catch-up.
        """
        self.add("a")
        for position in (0, 2, 10**12):
            sub = self.service.subscribe(A, B, (self.index.uuid, position))
            self.assertEqual(kinds(self.pull(sub))[:2], [CONNECTED, CATCHUP_START])

    def test_empty_catchup(self) -> None:
        """
        A catch-up of an empty index is start and complete at position 0.
        """
        sub = self.service.subscribe(A, B, None)
        batch = self.pull(sub)
        self.assertEqual(kinds(batch), [CONNECTED, CATCHUP_START, CATCHUP_COMPLETE])
        self.assertEqual(batch[-1].position, 0)

    def test_trimmed_position(self) -> None:
        """
        A position the history was trimmed past gets a catch-up.
        """
        self.add(*"abcdef")
        self.wait(self.index.trim([B], 2, 10**9))
        sub = self.service.subscribe(A, B, (self.index.uuid, 3))
        self.assertEqual(kinds(self.pull(sub))[:2], [CONNECTED, CATCHUP_START])
        sub = self.service.subscribe(A, B, (self.index.uuid, 4))
        self.assertEqual(kinds(self.pull(sub)), [CONNECTED, ADD, ADD])

    def test_trimmed_while_slow(self) -> None:
        """
        A subscriber replaying slowly whose position is trimmed away
        meanwhile gets a catch-up at its next pull, then live entries
        after the catch-up's position.
        """
        self.add(*"abcdef")
        sub = self.service.subscribe(A, B, (self.index.uuid, 1))
        self.assertEqual(kinds(self.pull(sub, 2)), [CONNECTED, ADD])
        self.wait(self.index.trim([B], 1, 10**9))
        batch = self.pull(sub)
        self.assertEqual(
            kinds(batch), [CATCHUP_START] + [CATCHUP] * 6 + [CATCHUP_COMPLETE]
        )
        self.assertEqual(batch[-1].position, 6)
        self.add("g")
        self.assertEqual([n.path for n in self.pull(sub)], ["g"])

    def test_batches_bounded(self) -> None:
        """
        No batch exceeds the count asked; a catch-up is read a page at a
        time, no page larger than what the pull asked for.
        """
        self.add(*[f"f{i:02}" for i in range(25)])
        limits: list[int] = []
        original = ArenaIndex.index_after

        async def spy(
            index: ArenaIndex, after: Any, limit: int, prefix: str = ""
        ) -> Any:
            limits.append(limit)
            return await original(index, after, limit, prefix)

        self.patch(ArenaIndex, "index_after", spy)
        sub = self.service.subscribe(A, B, None)
        batches = []
        while not batches or batches[-1][-1].kind != CATCHUP_COMPLETE:
            batches.append(self.pull(sub, 7))
        self.assertTrue(all(len(b) <= 7 for b in batches))
        flat = [n for b in batches for n in b]
        self.assertEqual(kinds(flat).count(CATCHUP), 25)
        self.assertTrue(all(limit <= 7 for limit in limits))
        self.assertGreater(len(limits), 3)
        replay = self.service.subscribe(A, B, (self.index.uuid, 3))
        self.assertEqual(len(self.pull(replay, 5)), 5)

    def test_count_clamped(self) -> None:
        """
        A pull for more than L{MAX_BATCH} gets at most L{MAX_BATCH}; for
        less than one, one.
        """
        self.add(*[f"f{i}" for i in range(MAX_BATCH + 10)])
        sub = self.service.subscribe(A, B, (self.index.uuid, 1))
        self.assertEqual(len(self.pull(sub, 10**9)), MAX_BATCH)
        self.assertEqual(len(self.pull(sub, 0)), 1)

    def test_one_pull_at_a_time(self) -> None:
        """
        A second pull while one waits is refused.
        """
        sub = self.service.subscribe(A, B, None)
        self.pull(sub)
        d = sub.next_batch()
        self.assertRaises(BadRequest, sub.next_batch)
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_cancel_wait(self) -> None:
        """
        Cancelling a waiting pull leaves the subscription usable: the next
        pull gets the changes.
        """
        sub = self.service.subscribe(A, B, None)
        self.pull(sub)
        d = sub.next_batch()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.add("x")
        self.assertEqual([n.path for n in self.pull(sub)], ["x"])

    def test_close(self) -> None:
        """
        Closing a subscription fails its waiting pull and the later ones
        with L{SubscriptionClosed}, and counts it out of the metrics.
        """
        sub = self.service.subscribe(A, B, None)
        labels = {"arena": "a", "peer": "b"}
        self.assertEqual(self.metric("realize_history_subscribers", **labels), 1)
        self.pull(sub)
        d = sub.next_batch()
        sub.close()
        self.failureResultOf(d, SubscriptionClosed)
        self.failureResultOf(sub.next_batch(), SubscriptionClosed)
        self.assertEqual(self.metric("realize_history_subscribers", **labels), 0)
        sub.close()
        self.assertEqual(self.service.subscriptions(), [])

    def test_several_subscribers(self) -> None:
        """
        Every waiting subscriber of the arena is woken by a change.
        """
        subs = [self.service.subscribe(A, p, None) for p in (B, C, None)]
        waits = []
        for sub in subs:
            self.pull(sub)
            waits.append(sub.next_batch())
        self.add("z")
        for d in waits:
            self.assertEqual([n.path for n in self.successResultOf(d)], ["z"])

    def test_metrics(self) -> None:
        """
        Entries recorded and notifications sent are counted by kind; the
        history's size and position are gauges.
        """
        self.add("a", "b")
        sub = self.service.subscribe(A, B, None)
        self.pull(sub)
        m = self.metric
        self.assertEqual(m("realize_history_entries_total", arena="a", kind="add"), 2)
        self.assertEqual(
            m("realize_history_notifications_total", arena="a", kind="catchup"), 2
        )
        self.assertEqual(
            m("realize_history_notifications_total", arena="a", kind="connected"), 1
        )
        self.assertEqual(m("realize_history_position", arena="a"), 2)
        self.assertEqual(m("realize_history_held_entries", arena="a"), 2)

    def settling(self) -> HistoryService:
        """
        A service whose local readers settle (0.5 s, at most 2 s).
        """
        base = os.path.abspath(self.mktemp())
        return self.make_service(
            make_config(base), local_settle=0.5, local_max_delay=2.0
        )

    def test_local_reader_settles(self) -> None:
        """
        A local reader woken by a change reads once the arena recorded
        nothing for the settle delay, everything recorded meanwhile in
        one pull; a peer's subscription reads at once.
        """
        service = self.settling()
        index = service.index(A)
        local = service.subscribe(A, None, None)
        peer = service.subscribe(A, B, None)
        self.pull(local)
        self.pull(peer)
        d, e = local.next_batch(), peer.next_batch()
        self.wait(index.record_versions([Version("a", 1, 5, H1)]))
        self.assertEqual([n.path for n in self.successResultOf(e)], ["a"])
        self.clock.advance(0.4)
        self.wait(index.record_versions([Version("b", 1, 5, H1)]))
        self.clock.advance(0.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual([n.path for n in self.successResultOf(d)], ["a", "b"])

    def test_local_reader_at_most_delayed(self) -> None:
        """
        An arena that keeps recording delays a local reader by the most
        delay at most; a reader closed or cancelled while it settles stops
        (no timer left).
        """
        service = self.settling()
        index = service.index(A)
        timers = self.clock.getDelayedCalls()
        local = service.subscribe(A, None, None)
        self.pull(local)
        d = local.next_batch()
        for i in range(6):
            self.wait(index.record_versions([Version(f"f{i}", 1, 5, H1)]))
            self.clock.advance(0.3)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(len(self.successResultOf(d)), 6)
        d = local.next_batch()
        self.wait(index.record_versions([Version("g", 1, 5, H1)]))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), timers)
        self.assertEqual([n.path for n in self.pull(local)], ["g"])
        d = local.next_batch()
        self.wait(index.record_versions([Version("h", 1, 5, H1)]))
        local.close()
        self.failureResultOf(d, SubscriptionClosed)
        self.assertEqual(self.clock.getDelayedCalls(), timers)

    def test_recording_logged_once(self) -> None:
        """
        A recording is one debug event with its count and positions, not
        an event per entry (a move records thousands a second).
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.add("a", "b", "c")
        recorded = [e for e in events if "recorded" in e.get("log_format", "")]
        self.assertEqual(
            [(e["log_level"], e["count"], e["first"], e["last"]) for e in recorded],
            [(LogLevel.debug, 3, 1, 3)],
        )


class BackPressureTests(_ServiceCase):
    """
    A subscriber that stops pulling costs bounded memory.
    """

    def test_stalled_subscriber(self) -> None:
        """
        While a subscriber does not pull, 10,000 changes happen: the
        service queues nothing for it (no waiting set, and the memory
        still held by the history code afterwards is a few KiB, not the
        10,000 notifications); when it pulls again it gets every change,
        read from the table in bounded batches.
        """
        sub = self.service.subscribe(A, B, None)
        self.pull(sub)
        waiting = sub.next_batch()
        self.add("first")
        self.assertEqual(len(self.successResultOf(waiting)), 1)
        # The subscriber stops pulling now.
        filters = [
            tracemalloc.Filter(True, history_module.__file__),
            tracemalloc.Filter(True, "*/realize/storage/index.py"),
        ]
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot().filter_traces(filters)
            for i in range(100):
                self.add(*[f"d{i}/f{j}" for j in range(100)])
            after = tracemalloc.take_snapshot().filter_traces(filters)
        finally:
            tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        self.assertLess(grown, 64 * 1024)
        self.assertEqual(self.service._waiting, {})
        got = self.drain(sub)
        self.assertEqual(len(got), 10_000)
        self.assertEqual(got[-1].position, 10_001)
        self.assertEqual(sub.position, 10_001)


class AccessTests(_ServiceCase):
    """
    The ACL and unknown arenas.
    """

    def test_acl(self) -> None:
        """
        A peer the arena's ACL does not admit is refused with
        L{Unauthorized}, for subscriptions and acknowledgements; a local
        reader (peer C{None}) is not checked.
        """
        self.successResultOf(self.service.stopService())
        service = self.make_service(make_config(self.base, acl=frozenset({B})))
        self.assertRaises(Unauthorized, service.subscribe, A, C, None)
        self.assertRaises(Unauthorized, service.subscribe, A, PeerId("zz"), None)
        service.subscribe(A, B, None)
        service.subscribe(A, None, None)
        error = self.failureResultOf(
            Deferred.fromCoroutine(service.acknowledge(A, C, 1)), Unauthorized
        )
        self.assertIn("may not use arena 'a'", str(error.value))

    def test_unknown_arena(self) -> None:
        """
        An unknown arena, or one without a datadir, is L{NotFound}.
        """
        self.assertRaises(NotFound, self.service.subscribe, ArenaName("x"), B, None)
        self.assertRaises(
            NotFound, self.service.subscribe, ArenaName("nodata"), B, None
        )
        self.assertEqual(list(self.service.indexes), [A])

    def test_reconfigure_closes(self) -> None:
        """
        A config that no longer admits a subscriber closes its
        subscription; an arena removed is closed with its db.
        """
        sub_b = self.service.subscribe(A, B, None)
        sub_c = self.service.subscribe(A, C, None)
        self.wait(self.service.reconfigure(make_config(self.base, acl=frozenset({B}))))
        self.assertTrue(sub_c.closed)
        self.assertFalse(sub_b.closed)
        config = make_config(self.base)
        config = Config(config.source, config.peers, {})
        self.wait(self.service.reconfigure(config))
        self.assertTrue(sub_b.closed)
        self.assertEqual(self.service.indexes, {})
        self.assertTrue(self.pools[0].closed)
        self.wait(self.service.reconfigure(make_config(self.base)))
        self.assertEqual(self.service.uuid(A), self.index.uuid)


class ReconfigureDatadirTests(_ServiceCase):
    """
    A reload that takes an arena's datadir away.
    """

    def test_datadir_removed(self) -> None:
        """
        An arena that keeps its name but loses its datadir closes its db and
        the subscriptions to it.
        """
        sub = self.service.subscribe(A, B, None)
        config = make_config(self.base)
        arenas = dict(config.arenas)
        arenas[A] = ArenaConfig(A, None, Path(self.base) / "work")
        self.wait(self.service.reconfigure(Config(config.source, config.peers, arenas)))
        self.assertTrue(sub.closed)
        self.assertEqual(self.service.indexes, {})
        self.assertTrue(self.pools[0].closed)


class TrimServiceTests(_ServiceCase):
    """
    Acknowledgements and periodic trimming.
    """

    def test_periodic(self) -> None:
        """
        Every L{TRIM_INTERVAL} the history is trimmed up to what every peer
        of the ACL acknowledged; a subscriber behind that position gets a
        catch-up.
        """
        self.add(*"abcde")
        self.wait(self.service.acknowledge(A, B, 4))
        self.clock.advance(TRIM_INTERVAL)
        self.assertEqual(self.wait(self.index.count()), 5)
        self.wait(self.service.acknowledge(A, C, 3))
        self.clock.advance(TRIM_INTERVAL)
        self.assertEqual(self.wait(self.index.count()), 2)
        self.assertEqual(self.metric("realize_history_trimmed_total", arena="a"), 3)
        self.assertEqual(self.metric("realize_history_held_entries", arena="a"), 2)
        sub = self.service.subscribe(A, B, (self.index.uuid, 2))
        self.assertEqual(kinds(self.pull(sub))[:2], [CONNECTED, CATCHUP_START])

    def test_limits(self) -> None:
        """
        C{max_entries} and C{max_age} trim whatever was acknowledged.
        """
        self.successResultOf(self.service.stopService())
        config = make_config(self.base, history=HistoryConfig(3, 3600.0))
        service = self.make_service(config)
        index = service.index(A)
        for p in "abcdef":
            self.wait(index.record_versions([Version(p, 1, 1, H1)]))
        self.assertEqual(self.wait(service.trim()), 3)
        self.wait(index.record_versions([Version("g", 1, 1, H1)]))
        self.clock.advance(3601)
        # The periodic trim ran meanwhile: entries older than an hour went.
        self.assertEqual(self.wait(index.positions()).first, 8)
        self.assertEqual(self.wait(service.trim()), 0)


class LifeTests(_ServiceCase):
    """
    Opening and closing.
    """

    def test_stop_closes(self) -> None:
        """
        Stopping closes the subscriptions and the dbs, and the trim timer.
        """
        sub = self.service.subscribe(A, B, None)
        self.successResultOf(self.service.stopService())
        self.assertTrue(sub.closed)
        self.assertTrue(all(p.closed for p in self.pools))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_workdir_made(self) -> None:
        """
        The workdir is created and holds arena.db; the uuid stays across
        restarts.
        """
        self.assertTrue(os.path.exists(os.path.join(self.base, "work", "arena.db")))
        uuid = self.service.uuid(A)
        self.successResultOf(self.service.stopService())
        service = self.make_service(make_config(self.base))
        self.assertEqual(service.uuid(A), uuid)

    def test_newer_db(self) -> None:
        """
        A db newer than the code makes L{HistoryService.ready} fail with
        L{SchemaTooNew}.
        """
        self.successResultOf(self.service.stopService())
        db = sqlite3.connect(os.path.join(self.base, "work", "arena.db"))
        db.execute("PRAGMA user_version = 77")
        db.close()
        service = HistoryService(
            make_config(self.base), self.clock, sync_run_in_thread, self.open_pool
        )
        service.startService()
        self.failureResultOf(service.ready, SchemaTooNew)
        self.successResultOf(service.stopService())

    def test_readonly_polls(self) -> None:
        """
        A read-only service over another's db (C{realize-history --peer
        local}) finds new entries by polling, and trims nothing.
        """
        reader = self.make_service(
            make_config(self.base), metrics=None, readonly=True, poll_interval=0.5
        )
        sub = reader.subscribe(A, None, (self.index.uuid, 0))
        self.assertEqual(kinds(self.pull(sub))[-1], CATCHUP_COMPLETE)
        d = sub.next_batch()
        self.add("new")
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.assertEqual([n.path for n in self.successResultOf(d)], ["new"])
        self.assertIsNone(reader._trimmer)
