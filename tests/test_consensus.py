"""
Tests for L{realize.services.consensus} and L{realize.storage.consensus}:
the queue of dirty paths (dirty counters, retry schedule on a L{Clock},
resumption from the db) and the jobs (realize, update, remove,
unrealize, keep) in a synchronous world (L{tests.consensus_world}).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import IOFailure
from realize.hashing import LEAF_SIZE, leaf_hash
from realize.model import FileState
from realize.services.consensus import MAX_JOBS, SETTLE_DELAY
from realize.services.downloader import Downloader
from realize.storage.blobs import read_cached
from realize.storage.consensus import (
    EVENT_REMOVED_LOCAL,
    EVENT_REMOVED_REMOTE,
    EVENT_SUPERSEDED,
    _txn_change_mark,
    _txn_done,
    _txn_due,
    _txn_failed,
    _txn_mark_dirty,
    _txn_next_due,
    _txn_queue_counts,
    _txn_step,
    _txn_sweep,
    create_consensus_tables,
    queue_row,
)
from realize.storage.index import _txn_lookup
from tests.consensus_world import ARENA, ME, P, Q, World, root_of


def bare_db(case: SynchronousTestCase) -> sqlite3.Connection:
    connection = sqlite3.connect(case.mktemp() + ".db")
    create_consensus_tables(connection.cursor())
    case.addCleanup(connection.close)
    return connection


class QueueTests(SynchronousTestCase):
    """
    The queue's transactions, on a bare connection.
    """

    def setUp(self) -> None:
        self.db = bare_db(self)
        self.cursor = self.db.cursor()

    def row(self, path: str) -> tuple[int, int, float]:
        found = queue_row(self.db, path)
        assert found is not None
        return found.generation, found.attempts, found.not_before

    def test_dirty_counter(self) -> None:
        """
        Each time a path becomes dirty its generation grows; a job that
        took generation 1 does not remove a row dirtied meanwhile, one that
        took the last generation does.
        """
        _txn_mark_dirty(self.cursor, ["a", "b"])
        _txn_mark_dirty(self.cursor, ["a"])
        self.assertEqual(self.row("a")[0], 2)
        self.assertEqual(self.row("b")[0], 1)
        self.assertFalse(_txn_done(self.cursor, "a", 1))
        self.assertEqual(self.row("a")[0], 2)
        self.assertTrue(_txn_done(self.cursor, "a", 2))
        self.assertIsNone(queue_row(self.db, "a"))

    def test_retry_schedule(self) -> None:
        """
        Each failure in a row waits longer (the delay function's value for
        the number of failures); a new change makes it due at once.
        """
        _txn_mark_dirty(self.cursor, ["a"])
        delays = {1: 15.0, 2: 30.0, 3: 60.0}
        for attempt in (1, 2, 3):
            when = _txn_failed(self.cursor, "a", 1, "realize", "x", 100.0, delays.get)  # type: ignore[arg-type]
            self.assertEqual(when, 100.0 + delays[attempt])
            self.assertEqual(self.row("a")[1:], (attempt, when))
        self.assertEqual(_txn_due(self.cursor, 150.0, 10), [])
        self.assertEqual(_txn_next_due(self.cursor), 160.0)
        _txn_mark_dirty(self.cursor, ["a"])
        self.assertEqual(self.row("a"), (2, 0, 0.0))
        # A failure of the older generation: due at once, no count.
        self.assertEqual(
            _txn_failed(self.cursor, "a", 1, "realize", "x", 200.0, delays.get),  # type: ignore[arg-type]
            200.0,
        )
        self.assertEqual(self.row("a")[1], 0)

    def test_due(self) -> None:
        """
        Due rows come oldest first, without the busy ones.
        """
        _txn_mark_dirty(self.cursor, ["a", "b", "c"])
        _txn_failed(self.cursor, "c", 1, "x", "x", 10.0, lambda n: 5.0)
        self.assertEqual(
            [r.path for r in _txn_due(self.cursor, 12.0, 10, ["a"])], ["b"]
        )
        self.assertEqual(
            [r.path for r in _txn_due(self.cursor, 15.0, 10)], ["a", "b", "c"]
        )
        self.assertEqual(_txn_next_due(self.cursor, ["a", "b"]), 15.0)


class TrackingTests(SynchronousTestCase):
    """
    What the household's batches queue and record
    (L{realize.storage.consensus._txn_apply_tracked}).
    """

    def test_relevant_only(self) -> None:
        """
        A remote file marked watch is not queued; one marked own (or keep)
        is; a local one marked watch is once another peer has its version
        (it may then be unrealized), not before.
        """
        world = World(self)
        world.peer_adds(P, "w/f", b"watched")
        self.assertEqual(world.queue(), [])
        world.run(_txn_change_mark, world.root, "o", "own", "view", 1)
        world.peer_adds(P, "o/f", b"owned")
        world.local_file("w/local", b"here")
        self.assertEqual([r[0] for r in world.queue()], ["o/f"])
        world.peer_adds(P, "w/local", b"other")
        self.assertEqual([r[0] for r in world.queue()], ["o/f"])
        world.peer_adds(P, "w/local", b"here", mtime_ns=6_000)
        self.assertEqual([r[0] for r in world.queue()], ["o/f", "w/local"])

    def test_events(self) -> None:
        """
        A peer's Replace of the local version records C{superseded}; a
        peer's Remove of it C{removed_remote}; a local Remove
        C{removed_local}.
        """
        world = World(self)
        old = world.local_file("f", b"v1")
        world.peer_adds(P, "f", b"v1")
        world.peer_replaces(P, "f", b"v2", old)
        events = dict(
            world.pool.connection.execute(
                "SELECT kind, hash FROM consensus_event WHERE path = 'f'"
            ).fetchall()
        )
        self.assertEqual(events, {EVENT_SUPERSEDED: old})
        world.local_file("g", b"g1")
        world.peer_removes(P, "g", root_of(b"g1"))
        world.peer_adds(Q, "g", b"g1")
        self.successResultOf(
            Deferred.fromCoroutine(world.index.record_removals([("g", world.now_ns())]))
        )
        kinds = {
            kind
            for (kind,) in world.pool.connection.execute(
                "SELECT kind FROM consensus_event WHERE path = 'g'"
            )
        }
        # The local Remove clears the events of the local copy.
        self.assertEqual(kinds, {EVENT_REMOVED_LOCAL})
        self.assertNotIn(EVENT_REMOVED_REMOTE, kinds)

    def test_events_in_one_batch(self) -> None:
        """
        Within one batch of this peer's own feed, the last change of an
        event decides (the batch writes them at its end): a Remove then an
        Add of the path leaves no C{removed_local}, an Add then a Remove
        leaves it.  A local copy whose version another peer has is queued
        when its Add is applied (the batch finds the file's inode itself).
        """
        world = World(self)
        old = root_of(b"old")
        world.peer_adds(P, "shared", b"same")
        world.apply(
            ME,
            [
                world.note("remove", "back", mtime_ns=10, old_hash=old),
                world.note("add", "back", size=1, mtime_ns=20, hash=root_of(b"x")),
                world.note("add", "gone", size=1, mtime_ns=20, hash=root_of(b"y")),
                world.note("remove", "gone", mtime_ns=30, old_hash=root_of(b"y")),
            ],
        )
        events = world.pool.connection.execute(
            "SELECT path, kind, hash, mtime_ns FROM consensus_event ORDER BY path"
        ).fetchall()
        self.assertEqual(events, [("gone", EVENT_REMOVED_LOCAL, root_of(b"y"), 30)])
        world.local_file("shared", b"same")
        self.assertEqual([r[0] for r in world.queue()], ["shared"])

    def test_change_mark_queues_beneath(self) -> None:
        """
        A mark set on a directory queues every file beneath it, remote or
        local, and nothing else; setting the same mark again queues
        nothing.
        """
        world = World(self)
        world.peer_adds(P, "d/a", b"a")
        world.peer_adds(P, "d/e/b", b"b")
        world.peer_adds(P, "dd/c", b"c")
        world.local_file("d/local", b"l")
        world.run(_txn_done, "d/local", 1)
        self.assertEqual(
            world.run(_txn_change_mark, world.root, "d", "keep", "view", 1), 3
        )
        self.assertEqual([r[0] for r in world.queue()], ["d/a", "d/e/b", "d/local"])
        self.assertEqual(
            world.run(_txn_change_mark, world.root, "d", "keep", "view", 2), 0
        )

    def test_sweep(self) -> None:
        """
        The first start queues every local path and every remote one marked
        own or keep; a start with the same default mark and copies queues
        nothing; a changed copy count queues again.
        """
        world = World(self)
        world.peer_adds(P, "remote", b"r")
        world.local_file("local", b"l")
        world.run(_txn_done, "local", 1)
        self.assertEqual(world.run(_txn_sweep, world.root, "watch", 1), 1)
        world.run(_txn_done, "local", 1)
        self.assertEqual(world.run(_txn_sweep, world.root, "watch", 1), 0)
        self.assertEqual(world.run(_txn_sweep, world.root, "watch", 2), 1)
        self.assertEqual(world.run(_txn_sweep, world.root, "own", 2), 2)


class RealizeTests(SynchronousTestCase):
    """
    C{own}: realize, update, remove.
    """

    def test_realize(self) -> None:
        """
        A remote file marked own becomes a real file with the version's
        content and mtime; the watcher is given its hash; the blob's row
        goes; the queue is empty; the job is counted.
        """
        world = World(self)
        world.start()
        digest = world.peer_adds(P, "d/f", b"content", mtime_ns=7_000_000_000)
        world.run(_txn_change_mark, world.root, "d", "own", "view", 1)
        world.service.poke()
        self.assertEqual(world.read_real("d/f"), b"content")
        self.assertEqual(os.stat(world.real("d/f")).st_mtime_ns, 7_000_000_000)
        self.assertEqual(world.watcher.finished, [("d/f", 7, 7_000_000_000, digest)])
        self.assertEqual(
            world.pool.connection.execute("SELECT count(*) FROM blob").fetchone(),
            (0,),
        )
        self.assertEqual(world.queue(), [])
        self.assertEqual(
            world.metric(
                "realize_consensus_jobs_total",
                arena=ARENA,
                action="realize",
                outcome="done",
            ),
            1,
        )
        self.assertEqual(
            world.metric("realize_consensus_realized_bytes_total", arena=ARENA), 7
        )
        self.assertEqual(os.listdir(world.blobs_dir), [])

    def test_update_follows_replace(self) -> None:
        """
        A realized file follows a peer's Replace of its version.
        """
        world = World(self, default_mark="own")
        world.start()
        v1 = world.peer_adds(P, "f", b"one")
        self.assertEqual(world.read_real("f"), b"one")
        world.peer_replaces(P, "f", b"two!", v1)
        self.assertEqual(world.read_real("f"), b"two!")
        self.assertEqual(world.queue(), [])

    def test_local_edit_not_overwritten(self) -> None:
        """
        A local file that no peer replaced (an independent Add of the same
        path) is a conflict: it is not overwritten.
        """
        world = World(self, default_mark="own")
        world.start()
        world.peer_adds(P, "f", b"theirs")
        world.local_file("f", b"mine", mtime_ns=9_000)
        self.assertEqual(world.read_real("f"), b"mine")

    def test_remove_follows(self) -> None:
        """
        A peer's Remove (newer) of the version a peer owns removes the
        real file; the watcher is told.
        """
        world = World(self, default_mark="own")
        world.start()
        digest = world.local_file("f", b"x")
        world.peer_adds(P, "f", b"x")
        world.peer_removes(P, "f", digest)
        self.assertFalse(os.path.exists(world.real("f")))
        self.assertEqual(world.watcher.deleted, ["f"])
        self.assertEqual(world.queue(), [])

    def test_deleted_here_not_resurrected(self) -> None:
        """
        A file owned, deleted by the user here, is not downloaded again.
        """
        world = World(self, default_mark="own")
        world.start()
        world.local_file("f", b"x")
        world.peer_adds(P, "f", b"x")
        os.unlink(world.real("f"))
        self.successResultOf(
            Deferred.fromCoroutine(world.index.record_removals([("f", world.now_ns())]))
        )
        world.service.poke()
        self.assertFalse(os.path.exists(world.real("f")))

    def test_bad_bytes_not_realized(self) -> None:
        """
        Cached bytes that do not make the version are never realized: the
        job fails (retried), the ranges are forgotten.
        """
        world = World(self, default_mark="own")
        digest = root_of(b"good")
        world.downloader.contents[digest] = b"evil"
        world.start()
        world.apply(P, [world.note("add", "f", size=4, mtime_ns=1, hash=digest)])
        self.assertFalse(os.path.exists(world.real("f")))
        [(path, attempts, _, action, step, error)] = world.queue()
        self.assertEqual((path, attempts, action, step), ("f", 1, "realize", "failed"))
        self.assertIn("not blake3m", error)


class RetryTests(SynchronousTestCase):
    """
    Failures, backoff, resumption, concurrency.
    """

    def test_backoff_on_clock(self) -> None:
        """
        A job whose download fails is retried after 15 s, then 30 s, then
        60 s; it succeeds once the peer serves again.
        """
        world = World(self, default_mark="own")
        world.downloader.fail = IOFailure("peer gone")
        world.start()
        world.peer_adds(P, "f", b"data")
        for attempt, wait in ((1, 15), (2, 30), (3, 60)):
            [row] = world.queue()
            self.assertEqual(row[1], attempt)
            self.assertEqual(row[2], world.clock.seconds() + wait)
            self.assertIn("peer gone", row[5])
            if attempt == 3:
                world.downloader.fail = None
            world.clock.advance(wait - 1)
            self.assertEqual(world.queue()[0][1], attempt)
            world.clock.advance(1)
        self.assertEqual(world.read_real("f"), b"data")
        self.assertEqual(world.queue(), [])
        self.assertEqual(
            world.metric(
                "realize_consensus_jobs_total",
                arena=ARENA,
                action="realize",
                outcome="failed",
            ),
            3,
        )

    def test_resume_after_restart(self) -> None:
        """
        Paths queued before a stop are worked by the next service on the
        same db.
        """
        first = World(self, default_mark="own")
        first.downloader.fail = IOFailure("peer gone")
        first.start()
        first.peer_adds(P, "f", b"data")
        self.assertEqual(len(first.queue()), 1)
        first.stop()
        second = World(self, default_mark="own", base=first.base)
        second.downloader.contents.update(first.downloader.contents)
        second.start()
        second.clock.advance(15)
        self.assertEqual(second.read_real("f"), b"data")
        self.assertEqual(second.queue(), [])

    def test_at_most_four(self) -> None:
        """
        At most four jobs run at once; the others wait their turn.
        """
        world = World(self, default_mark="own")
        world.downloader.block = True
        world.start()
        for n in range(6):
            world.peer_adds(P, f"f{n}", b"x" * n)
        self.assertEqual(len(world.downloader.waiting), MAX_JOBS)
        self.assertEqual(world.metric("realize_consensus_running_jobs"), MAX_JOBS)
        world.downloader.block = False
        for d in list(world.downloader.waiting):
            d.callback(None)
        self.assertEqual(sorted(os.listdir(world.datadir)), [f"f{n}" for n in range(6)])

    def test_queue_gauge_once_a_second(self) -> None:
        """
        The queue is counted (a scan of it) for its gauge at most once a
        second however often it is looked at, jobs running or not, and
        once more a second after the last look, so that the gauge ends
        right.
        """
        world = World(self, default_mark="own")
        counts: list[float] = []
        run = world.arena.run_interaction

        def counting(f: Any, *args: Any) -> Any:
            if f is _txn_queue_counts:
                counts.append(world.clock.seconds())
            return run(f, *args)

        world.arena.run_interaction = counting
        world.start()
        world.clock.advance(1.0)
        del counts[:]
        for n in range(6):
            world.peer_adds(P, f"f{n}", b"x" * n)
        self.assertEqual(len(counts), 1)
        world.clock.advance(1.0)
        self.assertEqual(len(counts), 2)
        self.assertEqual(world.metric("realize_consensus_queue_paths", arena=ARENA), 0)
        self.assertEqual(sorted(os.listdir(world.datadir)), [f"f{n}" for n in range(6)])

    def test_dirty_during_job(self) -> None:
        """
        A path that becomes dirty while its job runs is looked at again
        after it.
        """
        world = World(self, default_mark="own")
        world.downloader.block = True
        world.start()
        v1 = world.peer_adds(P, "f", b"one")
        world.downloader.block = False
        v2 = world.peer_replaces(P, "f", b"two", v1)
        world.downloader.waiting[0].callback(None)
        # The first job failed (its version is gone) or realized v1; the
        # second realizes v2.
        world.clock.advance(15)
        self.assertEqual(world.read_real("f"), b"two")
        self.assertEqual(world.queue(), [])
        del v2


class UnrealizeTests(SynchronousTestCase):
    """
    C{watch} and C{keep} on a real file: unrealize, only with enough other
    copies.
    """

    def held(self, world: World, data: bytes = b"held") -> bytes:
        digest = world.local_file("f", data)
        world.peer_adds(P, "f", data)
        return digest

    def test_unrealize(self) -> None:
        """
        A real file marked watch that a connected peer holds: a Drop, the
        settle delay, then the file moves into its blob (complete, read
        from the cache), its index entry gone.
        """
        world = World(self)
        world.start()
        digest = self.held(world)
        self.assertTrue(os.path.exists(world.real("f")))
        self.assertEqual(world.run(_txn_lookup, ["f"]), {})
        world.clock.advance(SETTLE_DELAY)
        self.assertFalse(os.path.exists(world.real("f")))
        row = world.pool.connection.execute(
            "SELECT inode FROM file WHERE peer = '' "
        ).fetchone()
        self.assertEqual(
            read_cached(world.pool.connection, world.blobs_dir, row[0], digest, 0, 4),
            b"held",
        )
        kinds = [
            kind
            for (kind,) in world.pool.connection.execute(
                "SELECT kind FROM history ORDER BY position"
            )
        ]
        self.assertEqual(kinds, ["add", "drop"])
        self.assertEqual(world.queue(), [])
        self.assertEqual(
            world.metric("realize_consensus_unrealized_bytes_total", arena=ARENA), 4
        )

    def test_refused_below_copies(self) -> None:
        """
        With copies = 2 and one other peer holding the version, nothing is
        dropped nor moved.
        """
        world = World(self, copies=2)
        world.start()
        self.held(world)
        world.clock.advance(SETTLE_DELAY * 10)
        self.assertEqual(world.read_real("f"), b"held")
        self.assertIn("f", world.run(_txn_lookup, ["f"]))
        self.assertEqual(world.queue(), [])

    def test_not_connected(self) -> None:
        """
        A holder that is not connected does not count.
        """
        world = World(self)
        world.connected.clear()
        world.start()
        self.held(world)
        world.clock.advance(SETTLE_DELAY * 10)
        self.assertEqual(world.read_real("f"), b"held")

    def test_holder_drops_while_settling(self) -> None:
        """
        If the only other holder drops its copy during the settle delay,
        the file stays, is recorded again with its hash (no hashing), and
        the job is retried later.
        """
        world = World(self)
        world.start()
        digest = self.held(world)
        world.peer_drops(P, "f", digest)
        world.clock.advance(SETTLE_DELAY)
        self.assertEqual(world.read_real("f"), b"held")
        self.assertEqual(world.run(_txn_lookup, ["f"])["f"].hash, digest)
        kinds = [
            kind
            for (kind,) in world.pool.connection.execute(
                "SELECT kind FROM history ORDER BY position"
            )
        ]
        self.assertEqual(kinds, ["add", "drop", "add"])
        self.assertEqual(
            world.metric(
                "realize_consensus_jobs_total",
                arena=ARENA,
                action="unrealize",
                outcome="failed",
            ),
            1,
        )
        # Looked at again at once (the file changed back): nothing to do.
        self.assertEqual(world.queue(), [])

    def test_changed_while_settling(self) -> None:
        """
        A file written during the settle delay is not moved: it stays
        with its new content, and the watcher is asked to look at it.
        """
        world = World(self)
        world.start()
        self.held(world)
        with open(world.real("f"), "wb") as f:
            f.write(b"edited!")
        world.clock.advance(SETTLE_DELAY)
        self.assertEqual(world.read_real("f"), b"edited!")
        self.assertIn("f", world.watcher.deleted)

    def test_keep_protects(self) -> None:
        """
        A file marked keep is downloaded whole and handed to the protected
        queue; unrealized, it is protected too.
        """
        world = World(self, default_mark="keep")
        world.start()
        world.peer_adds(P, "remote", b"kept bytes")
        self.assertEqual(len(world.protected), 1)
        self.assertEqual(world.queue(), [])
        self.held(world)
        world.clock.advance(SETTLE_DELAY)
        self.assertEqual(len(world.protected), 2)
        self.assertFalse(os.path.exists(world.real("f")))

    def test_finish_after_crash(self) -> None:
        """
        A crash after an unrealize moved the file into its blob, before the
        blob's ranges were recorded: at the next start the journal (the
        queue row's blob) finishes it: the blob is verified and recorded,
        and reads come from the cache.
        """
        world = World(self)
        digest = self.held(world)
        blob = self.successResultOf(
            Deferred.fromCoroutine(world.blobs.open(world.inode("f"), digest))
        )
        self.successResultOf(Deferred.fromCoroutine(world.index.record_drops(["f"])))
        os.rename(world.real("f"), world.arena.blob_file(blob))
        world.run(_txn_step, "f", "unrealize", "unrealize", blob.id)
        world.start()
        self.assertEqual(
            read_cached(
                world.pool.connection, world.blobs_dir, world.inode("f"), digest, 0, 4
            ),
            b"held",
        )
        self.assertFalse(os.path.exists(world.real("f")))
        self.assertEqual(world.queue(), [])


class _Stream:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __aiter__(self) -> Any:
        return self._chunks()

    async def _chunks(self) -> Any:
        yield self.data

    async def result(self) -> FileState:
        return FileState((), len(self.data), 0)

    def cancel(self) -> None:
        pass


class _Store:
    """
    A peer's store serving one version (for the real downloader).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    def describe(self) -> str:
        return "p"

    def read(self, arena: str, path: str, start: int, end: int) -> _Stream:
        self.reads += 1
        return _Stream(self.data[start:end])

    async def hash(self, arena: str, path: str, start: int, end: int) -> FileState:
        data = self.data[start:end]
        leaves = tuple(
            leaf_hash(data[i : i + LEAF_SIZE]) for i in range(0, len(data), LEAF_SIZE)
        )
        return FileState(leaves, len(self.data), 0)


class DownloaderTests(SynchronousTestCase):
    """
    The jobs with the real downloader.
    """

    def test_read_after_realize(self) -> None:
        """
        A file realized through the downloader still reads through it
        (and so through the view) once its blob became the real file.
        """
        world = World(self, default_mark="own")
        data = os.urandom(3 * LEAF_SIZE + 5)
        store = _Store(data)

        async def versions(inode: int) -> Any:
            return world.view.version(inode)

        downloader = Downloader(
            ARENA, world.blobs, versions, {P: store}.get, world.clock
        )
        world.arena.downloader = downloader
        world.start()
        world.peer_adds(P, "f", data)
        self.assertEqual(world.read_real("f"), data)
        reads = store.reads
        got = self.successResultOf(
            Deferred.fromCoroutine(downloader.read(world.inode("f"), 0, len(data)))
        )
        self.assertEqual(got, data)
        self.assertGreater(store.reads, reads)

    def test_realize_waits_for_the_writes(self) -> None:
        """
        The downloader returns verified bytes before they are written to
        the blob: the job waits for the writes (L{Downloader.written})
        rather than finding the blob incomplete and failing.
        """
        world = World(self, default_mark="own")
        data = os.urandom(3 * LEAF_SIZE + 5)
        store = _Store(data)
        held = _HeldWrites(world.blobs)

        async def versions(inode: int) -> Any:
            return world.view.version(inode)

        downloader = Downloader(ARENA, held, versions, {P: store}.get, world.clock)
        world.arena.downloader = downloader
        world.start()
        world.peer_adds(P, "f", data)
        self.assertFalse(os.path.exists(world.real("f")))
        self.assertGreater(held.let_go(), 0)
        self.assertEqual(world.read_real("f"), data)
        self.assertEqual(world.queue(), [])


class _HeldWrites:
    """
    A blob store whose writes wait for the test (L{let_go}).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gates: list[Deferred[None]] = []

    async def open(self, inode: int, digest: bytes) -> Any:
        return await self.inner.open(inode, digest)

    async def write(self, blob: Any, offset: int, data: bytes) -> Any:
        gate: Deferred[None] = Deferred()
        self.gates.append(gate)
        await gate
        return await self.inner.write(blob, offset, data)

    async def read(self, blob: Any, start: int, end: int) -> bytes:
        data: bytes = await self.inner.read(blob, start, end)
        return data

    async def release(self, blob: Any, ranges: Any) -> Any:
        return await self.inner.release(blob, ranges)

    def working_area(self) -> int | None:
        return None

    def let_go(self) -> int:
        gates, self.gates = self.gates, []
        for gate in gates:
            gate.callback(None)
        return len(gates)
