"""
Tests for L{realize.services.downloader}, with fake remote stores, a
L{Clock}, and a real blob store on a temporary directory run synchronously.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import IOFailure, NetworkError, NoSpace, NotFound, RealizeError
from realize.hashing import EMPTY_ROOT, LEAF_SIZE, leaf_hash, merkle_root
from realize.model import ByteRanges, FileState, PeerId, SmallRead
from realize.services.downloader import (
    DEADLINE,
    HELD_AREA_SHARE,
    MAX_IN_FLIGHT,
    MAX_READAHEAD,
    MAX_UNKEPT,
    PIECE_SIZE,
    PREFETCH_FILES,
    REQUEST_TIMEOUT,
    Downloader,
    RemoteData,
)
from realize.storage.blobs import Blob, BlobStore, decode_ranges, read_cached
from realize.storage.cache import Pins
from realize.storage.unreal import _txn_add, _txn_replace
from realize.storage.unrealview import FileVersion, file_version, small_files_after

from .helpers import sync_run_in_thread
from .test_blobs import sync_interaction
from .test_unreal_tables import (
    ARENA,
    ROOT,
    add,
    arena_db,
    inode_of,
    make_tree,
    replace,
    run,
)

A = PeerId("a")
B = PeerId("b")

#: Bytes per chunk of the fake streams.
CHUNK = 256 << 10


def content(size: int, seed: int = 0) -> bytes:
    """
    Bytes that differ from piece to piece.
    """
    block = bytes((i * 7 + seed) % 251 for i in range(4096))
    return (block * (size // 4096 + 1))[:size]


def leaves_of(data: bytes) -> tuple[bytes, ...]:
    return tuple(
        leaf_hash(data[i : i + LEAF_SIZE]) for i in range(0, len(data), LEAF_SIZE)
    )


class FakeStream:
    """
    A L{realize.interfaces.ReadStream} over a fake store's bytes.
    """

    def __init__(self, store: FakeStore, start: int, end: int) -> None:
        self.store = store
        self.start = start
        self.end = end
        self.cancelled = False
        self.finished = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        store = self.store
        store.open_streams.append(self)
        try:
            if store.hold:
                gate: Deferred[None] = Deferred()
                store.gates.append(gate)
                await gate
            offset = self.start
            while offset < self.end:
                if (
                    store.fail_after is not None
                    and offset - self.start >= store.fail_after
                ):
                    raise NetworkError(f"{store.name}: connection lost")
                chunk = store.data[offset : min(self.end, offset + CHUNK)]
                if store.corrupt:
                    chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
                yield chunk
                offset += len(chunk)
            self.finished = True
        finally:
            store.open_streams.remove(self)

    async def result(self) -> FileState:
        return FileState((), len(self.store.data), 0)

    def cancel(self) -> None:
        self.cancelled = True


class FakeStore:
    """
    A peer's store holding one file's bytes, with faults to order.

    @ivar hold: streams wait for the test (L{release}) before sending.
    @ivar corrupt: every chunk sent has a flipped byte.
    @ivar fail_after: streams fail after this many bytes.
    @ivar bad_leaves: Hash answers leaves of other bytes.
    @ivar hang_hash: Hash never answers.
    """

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data
        self.hold = False
        self.corrupt = False
        self.fail_after: int | None = None
        self.bad_leaves = False
        self.hang_hash = False
        self.reads: list[tuple[int, int]] = []
        self.hashes = 0
        self.gates: list[Deferred[None]] = []
        self.open_streams: list[FakeStream] = []
        self.streams: list[FakeStream] = []

    def describe(self) -> str:
        return self.name

    def read(self, arena: str, path: str, start: int, end: int) -> FakeStream:
        assert arena == ARENA and path == "f", (arena, path)
        self.reads.append((start, end))
        stream = FakeStream(self, start, end)
        self.streams.append(stream)
        return stream

    async def hash(self, arena: str, path: str, start: int, end: int) -> FileState:
        self.hashes += 1
        if self.hang_hash:
            await Deferred()
        data = self.data[start:end]
        if self.bad_leaves:
            data = content(len(data), seed=99)
        return FileState(leaves_of(data), len(self.data), 0)

    def release(self) -> int:
        """
        Let every held stream go; return how many.
        """
        gates, self.gates = self.gates, []
        for gate in gates:
            gate.callback(None)
        return len(gates)


class FailingBlobs:
    """
    A blob store whose writes fail with a full disk.
    """

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner

    async def open(self, inode: int, digest: bytes) -> Blob:
        return await self.inner.open(inode, digest)

    async def write(self, blob: Blob, offset: int, data: bytes) -> ByteRanges | None:
        raise NoSpace("disk full")

    async def read(self, blob: Blob, start: int, end: int) -> bytes:
        return await self.inner.read(blob, start, end)

    async def release(self, blob: Blob, ranges: ByteRanges) -> ByteRanges | None:
        return await self.inner.release(blob, ranges)

    def working_area(self) -> int | None:
        return None


class HeldBlobs:
    """
    A blob store whose writes wait for the test (L{release}).
    """

    def __init__(self, inner: BlobStore, hold_open: bool = False) -> None:
        self.inner = inner
        self.hold_open = hold_open
        self.gates: list[Deferred[None]] = []

    async def open(self, inode: int, digest: bytes) -> Blob:
        if self.hold_open:
            gate: Deferred[None] = Deferred()
            self.gates.append(gate)
            await gate
        return await self.inner.open(inode, digest)

    async def write(self, blob: Blob, offset: int, data: bytes) -> ByteRanges | None:
        gate: Deferred[None] = Deferred()
        self.gates.append(gate)
        await gate
        return await self.inner.write(blob, offset, data)

    async def read(self, blob: Blob, start: int, end: int) -> bytes:
        return await self.inner.read(blob, start, end)

    def working_area(self) -> int | None:
        # No limit: the blob store's own release (of ranges) is never asked
        # for (L{release} here lets the held writes go).
        return None

    def release(self) -> int:
        gates, self.gates = self.gates, []
        for gate in gates:
            gate.callback(None)
        return len(gates)


class GatedBlobs:
    """
    A blob store with a working area (a block cache's), whose opens, writes
    and releases can be made to wait for the test (L{let_go}); what it did,
    in order, in C{done}.

    @ivar done: C{("write", start)} as a write starts, C{("release",
        start)} for each piece once a release is done.
    """

    def __init__(self, inner: BlobStore, area: int) -> None:
        self.inner = inner
        self.area = area
        self.hold_open = False
        self.hold_writes = False
        self.hold_releases = False
        self.gates: list[Deferred[None]] = []
        self.done: list[tuple[str, int]] = []

    async def _gate(self, hold: bool) -> None:
        if hold:
            gate: Deferred[None] = Deferred()
            self.gates.append(gate)
            await gate

    async def open(self, inode: int, digest: bytes) -> Blob:
        await self._gate(self.hold_open)
        return await self.inner.open(inode, digest)

    async def write(self, blob: Blob, offset: int, data: bytes) -> ByteRanges | None:
        await self._gate(self.hold_writes)
        self.done.append(("write", offset // LEAF_SIZE))
        return await self.inner.write(blob, offset, data)

    async def read(self, blob: Blob, start: int, end: int) -> bytes:
        return await self.inner.read(blob, start, end)

    async def release(self, blob: Blob, ranges: ByteRanges) -> ByteRanges | None:
        await self._gate(self.hold_releases)
        left = await self.inner.release(blob, ranges)
        for start, end in ranges:
            self.done.extend(
                ("release", index)
                for index in range(start // LEAF_SIZE, -(-end // LEAF_SIZE))
            )
        return left

    def working_area(self) -> int | None:
        return self.area

    def let_go(self) -> int:
        """
        Let every held open, write and release go; return how many.
        """
        gates, self.gates = self.gates, []
        for gate in gates:
            gate.callback(None)
        return len(gates)


class DownloaderTests(SynchronousTestCase):
    """
    Reads through L{Downloader}.
    """

    size = 5 * LEAF_SIZE + 12345

    def setUp(self) -> None:
        self.clock = Clock()
        self.db = arena_db(self)
        self.tree = make_tree()
        self.data = content(self.size)
        self.root_hash = merkle_root(leaves_of(self.data))
        for peer in (A, B):
            run(
                self.db,
                _txn_add,
                self.tree,
                peer,
                add("f", self.size, 10, self.root_hash),
            )
        self.inode = inode_of(self.db, "f")
        self.stores: dict[PeerId, RemoteData] = {}
        self.a = FakeStore("a", self.data)
        self.b = FakeStore("b", self.data)
        self.directory = os.path.join(self.mktemp(), "blobs")
        self.blobs = BlobStore(
            self.directory, sync_run_in_thread, sync_interaction(self.db), lambda: 1
        )
        self.downloader = self.make_downloader(self.blobs)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(self.no_delayed_calls)

    def make_downloader(self, blobs: Any) -> Downloader:
        self.lookups = 0

        async def versions(inode: int) -> FileVersion | None:
            self.lookups += 1
            return file_version(self.db, ARENA, ROOT, inode)

        return Downloader(ARENA, blobs, versions, self.stores.get, self.clock)

    def no_delayed_calls(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def read(
        self, offset: int, size: int, digest: bytes | None = None
    ) -> Deferred[bytes]:
        return Deferred.fromCoroutine(
            self.downloader.read(self.inode, offset, size, digest)
        )

    def present(self) -> ByteRanges:
        row = self.db.execute("SELECT ranges FROM blob").fetchone()
        return decode_ranges(row[0]) if row else ByteRanges()

    def logged(self, level: LogLevel) -> list[str]:
        return [
            e["log_format"].format(**e)
            for e in self.events
            if e.get("log_level") == level
            and e.get("log_namespace") == "realize.downloader"
        ]

    def test_read_through(self) -> None:
        """
        A read gives the version's bytes, fetched in leaf-aligned pieces,
        verified and kept in the blob; the leaves are fetched once.
        """
        self.stores[A] = self.a
        start = LEAF_SIZE + 100
        self.assertEqual(
            self.successResultOf(self.read(start, 5000)),
            self.data[start : start + 5000],
        )
        self.assertEqual(self.a.reads, [(LEAF_SIZE, 2 * LEAF_SIZE)])
        self.assertEqual(self.present(), ByteRanges.of((LEAF_SIZE, 2 * LEAF_SIZE)))
        self.successResultOf(self.read(3 * LEAF_SIZE, 10))
        self.assertEqual(self.a.hashes, 1)

    def test_cached(self) -> None:
        """
        Bytes already in the blob are read from it: no request.
        """
        self.stores[A] = self.a
        self.successResultOf(self.read(0, 100))
        self.assertEqual(self.successResultOf(self.read(10, 50)), self.data[10:60])
        self.assertEqual(self.a.reads.count((0, LEAF_SIZE)), 1)

    def test_across_pieces_and_end(self) -> None:
        """
        A read across pieces, some cached and some not, up to and past the
        end of the file, gives exactly the file's bytes.
        """
        self.stores[A] = self.a
        self.successResultOf(self.read(2 * LEAF_SIZE, 1))
        got = self.successResultOf(self.read(LEAF_SIZE - 10, 10 * LEAF_SIZE))
        self.assertEqual(got, self.data[LEAF_SIZE - 10 :])
        self.assertEqual(self.successResultOf(self.read(self.size, 100)), b"")
        self.assertEqual(self.successResultOf(self.read(0, self.size)), self.data)

    def test_verification_failure_then_failover(self) -> None:
        """
        Bytes from a peer that do not match the version's leaves are never
        returned: the piece is fetched from another peer that has the same
        hash, the bad peer is not asked again for this version, and the
        failure is logged.
        """
        self.a.corrupt = True
        self.stores[A] = self.a
        self.stores[B] = self.b
        offset = 2 * LEAF_SIZE
        self.assertEqual(
            self.successResultOf(self.read(offset, 1000)),
            self.data[offset : offset + 1000],
        )
        self.assertEqual(self.a.reads, [(offset, offset + LEAF_SIZE)])
        self.assertEqual(self.b.reads, [(offset, offset + LEAF_SIZE)])
        self.successResultOf(self.read(4 * LEAF_SIZE, 10))
        self.assertEqual(len(self.a.reads), 1)
        self.assertEqual(
            self.present(),
            ByteRanges.of((offset, offset + LEAF_SIZE), (4 * LEAF_SIZE, 5 * LEAF_SIZE)),
        )
        self.assertTrue(any("do not match" in m for m in self.logged(LogLevel.warn)))

    def test_all_peers_bad(self) -> None:
        """
        When no peer sends bytes that verify, the read fails with
        L{IOFailure} (EIO), the error is logged, and nothing is recorded.
        """
        self.a.corrupt = self.b.corrupt = True
        self.stores[A] = self.a
        self.stores[B] = self.b
        failure = self.failureResultOf(self.read(0, 10), IOFailure)
        self.assertIn("f", str(failure.value))
        self.assertEqual(self.present(), ByteRanges())
        self.assertTrue(self.logged(LogLevel.error))

    def test_bad_leaves(self) -> None:
        """
        Leaves whose root is not the version's hash are refused; another
        peer's are used.
        """
        self.a.bad_leaves = True
        self.stores[A] = self.a
        self.stores[B] = self.b
        self.assertEqual(self.successResultOf(self.read(0, 10)), self.data[:10])
        self.assertEqual((self.a.hashes, self.b.hashes), (1, 1))
        self.assertEqual(self.a.reads, [])

    def test_disconnect_mid_range(self) -> None:
        """
        A peer that disconnects in the middle of a piece: the piece is
        fetched again from another peer, and the first peer stays a
        candidate (it sent nothing wrong).
        """
        self.a.fail_after = CHUNK * 2
        self.stores[A] = self.a
        self.stores[B] = self.b
        offset = 2 * LEAF_SIZE + 5
        self.assertEqual(
            self.successResultOf(self.read(offset, 10)), self.data[offset : offset + 10]
        )
        self.assertEqual(self.a.reads, [(2 * LEAF_SIZE, 3 * LEAF_SIZE)])
        self.assertEqual(self.b.reads, [(2 * LEAF_SIZE, 3 * LEAF_SIZE)])
        self.assertTrue(self.a.streams[0].cancelled)
        self.a.fail_after = None
        self.b.fail_after = 0
        self.successResultOf(self.read(3 * LEAF_SIZE, 10))
        self.assertIn((3 * LEAF_SIZE, 4 * LEAF_SIZE), self.a.reads)

    def test_no_peer(self) -> None:
        """
        Data no connected peer has fails at once with L{IOFailure}.
        """
        self.failureResultOf(self.read(0, 10), IOFailure)
        self.stores[A] = self.a
        self.assertEqual(self.successResultOf(self.read(0, 10)), self.data[:10])

    def test_sequential_read_ahead(self) -> None:
        """
        Sequential reads open a read-ahead window that grows but never
        passes L{MAX_READAHEAD} pieces beyond the read, nor
        L{MAX_IN_FLIGHT} requests at once.
        """
        size = 40 * LEAF_SIZE
        self.bigger(size)
        self.a.hold = True
        self.stores[A] = self.a
        step = 128 << 10
        offset = 0
        ahead = []
        while offset < size:
            d = self.read(offset, step)
            # The network answers between two reads.
            self.assertLessEqual(len(self.a.open_streams), MAX_IN_FLIGHT)
            self.a.release()
            self.assertEqual(self.successResultOf(d), self.data[offset : offset + step])
            piece = offset // PIECE_SIZE
            furthest = max(start for start, _ in self.a.reads) // PIECE_SIZE
            self.assertLessEqual(furthest - piece, MAX_READAHEAD)
            ahead.append(furthest - piece)
            offset += step
        self.assertEqual(max(ahead), MAX_READAHEAD)
        self.assertEqual(
            sorted(self.a.reads),
            [(i * LEAF_SIZE, (i + 1) * LEAF_SIZE) for i in range(40)],
        )
        self.a.release()

    def test_sequential_through_fast_path(self) -> None:
        """
        A reader that consumed the read-ahead elsewhere (from the blob, in
        the FUSE thread) and comes back at its end is still sequential: the
        window keeps growing.
        """
        self.bigger(40 * LEAF_SIZE)
        self.stores[A] = self.a
        self.successResultOf(self.read(0, 128 << 10))
        self.assertEqual(len(self.a.reads), 2)
        # Pieces 0 and 1 were read from the blob meanwhile.
        self.successResultOf(self.read(2 * LEAF_SIZE, 128 << 10))
        self.assertEqual(
            sorted(start // LEAF_SIZE for start, _ in self.a.reads), [0, 1, 2, 3, 4]
        )

    def test_random_reads_no_read_ahead(self) -> None:
        """
        Random reads fetch only the pieces they need.
        """
        self.bigger(40 * LEAF_SIZE)
        self.stores[A] = self.a
        for piece in [30, 3, 17, 9, 25]:
            offset = piece * LEAF_SIZE + 4096
            self.assertEqual(
                self.successResultOf(self.read(offset, 4096)),
                self.data[offset : offset + 4096],
            )
        self.assertEqual(len(self.a.reads), 5)

    def test_shared_requests(self) -> None:
        """
        Two reads of the same missing piece share one request.
        """
        self.a.hold = True
        self.stores[A] = self.a
        first = self.read(100, 10)
        second = self.read(5000, 10)
        self.a.release()
        self.assertEqual(self.successResultOf(first), self.data[100:110])
        self.assertEqual(self.successResultOf(second), self.data[5000:5010])
        self.assertEqual(self.a.reads.count((0, LEAF_SIZE)), 1)
        self.a.release()

    def test_no_version_waits(self) -> None:
        """
        A file with no version yet is waited for; once it has one (told
        by L{Downloader.version_changed}, or seen by polling) the read goes
        on.
        """
        run(self.db, _txn_add, self.tree, A, add("g", 3, 10, None))
        g = inode_of(self.db, "g")
        self.stores[A] = self.a
        d = Deferred.fromCoroutine(self.downloader.read(g, 0, 3))
        self.clock.advance(2)
        self.assertNoResult(d)
        # The file gets its version: the hash of the whole file here (the
        # fake store serves "f"'s bytes for any path it is asked).
        run(
            self.db,
            _txn_replace,
            self.tree,
            A,
            replace("g", self.size, 11, self.root_hash, None),
        )
        self.db.execute("UPDATE directory SET name = 'old' WHERE name = 'f'")
        self.db.execute("UPDATE directory SET name = 'f' WHERE name = 'g'")
        self.db.commit()
        self.downloader.version_changed([g])
        self.assertEqual(self.successResultOf(d), self.data[:3])

    def test_no_version_deadline(self) -> None:
        """
        A file that gets no version fails with L{IOFailure} at the
        deadline, not before.
        """
        run(self.db, _txn_add, self.tree, A, add("g", 3, 10, None))
        g = inode_of(self.db, "g")
        d = Deferred.fromCoroutine(self.downloader.read(g, 0, 3))
        self.clock.pump([0.5] * int(DEADLINE / 0.5 - 1))
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.assertIn("no version", str(self.failureResultOf(d, IOFailure).value))

    def test_hanging_peer(self) -> None:
        """
        A peer that never answers: the read fails at the deadline, and its
        request is cancelled.
        """
        self.a.hold = True
        self.stores[A] = self.a
        d = self.read(0, 10)
        self.clock.advance(DEADLINE - 0.1)
        self.assertNoResult(d)
        self.clock.advance(REQUEST_TIMEOUT)
        self.failureResultOf(d, IOFailure)
        self.assertTrue(self.a.streams[0].cancelled)

    def test_hanging_hash(self) -> None:
        """
        A peer whose Hash never answers is given up at the deadline.
        """
        self.a.hang_hash = True
        self.stores[A] = self.a
        d = self.read(0, 10)
        self.clock.advance(DEADLINE)
        self.failureResultOf(d, IOFailure)

    def test_close(self) -> None:
        """
        A read in flight when the downloader stops fails with L{IOFailure};
        later reads too.
        """
        self.a.hold = True
        self.stores[A] = self.a
        d = self.read(0, 10)
        self.downloader.close()
        self.failureResultOf(d, IOFailure)
        self.assertTrue(self.a.streams[0].cancelled)
        self.failureResultOf(self.read(0, 10), IOFailure)

    def test_version_changed_under_reader(self) -> None:
        """
        A read for the version the caller opened fails once the default
        moved on, rather than mixing versions.
        """
        self.stores[A] = self.a
        self.successResultOf(self.read(0, 10, self.root_hash))
        failure = self.failureResultOf(self.read(0, 10, b"\1" * 32), IOFailure)
        self.assertIn("version changed", str(failure.value))

    def test_unknown_file(self) -> None:
        """
        An inode that is not a file is L{NotFound}.
        """
        self.failureResultOf(
            Deferred.fromCoroutine(self.downloader.read(10**9, 0, 1)), NotFound
        )

    def test_full_disk(self) -> None:
        """
        Verified bytes are served even when the blob cannot keep them.
        """
        self.downloader = self.make_downloader(FailingBlobs(self.blobs))
        self.stores[A] = self.a
        self.assertEqual(self.successResultOf(self.read(0, 10)), self.data[:10])
        self.assertEqual(self.present(), ByteRanges())
        self.assertTrue(any("could not keep" in m for m in self.logged(LogLevel.warn)))

    def test_empty_file(self) -> None:
        """
        An empty file reads as no bytes, asking no peer.
        """
        run(self.db, _txn_add, self.tree, A, add("e", 0, 10, EMPTY_ROOT))
        e = inode_of(self.db, "e")
        self.assertEqual(
            self.successResultOf(
                Deferred.fromCoroutine(self.downloader.read(e, 0, 10))
            ),
            b"",
        )

    def test_single_leaf_no_hash(self) -> None:
        """
        A version of one leaf is read with one request and no C{Hash}: its
        root is its leaf, against which the bytes are still verified (a
        peer sending other bytes is refused, the next peer asked).
        """
        self.bigger(5000)
        self.stores[A] = self.a
        self.assertEqual(self.successResultOf(self.read(0, 4096)), self.data[:4096])
        self.assertEqual((self.a.hashes, self.a.reads), (0, [(0, 5000)]))
        self.bigger(LEAF_SIZE, seed=3)
        self.a.corrupt = True
        self.stores[B] = self.b
        self.assertEqual(self.successResultOf(self.read(10, 100)), self.data[10:110])
        self.assertEqual((self.a.hashes, self.b.hashes), (0, 0))
        self.assertEqual(self.b.reads, [(0, LEAF_SIZE)])
        self.b.corrupt = True
        self.bigger(LEAF_SIZE - 1, seed=4)
        self.failureResultOf(self.read(0, 10), IOFailure)
        rows = self.db.execute(
            "SELECT ranges FROM blob WHERE hash = ?", (self.root_hash,)
        ).fetchall()
        self.assertEqual([decode_ranges(row[0]) for row in rows], [ByteRanges()])

    def test_reader_does_not_wait_for_the_write(self) -> None:
        """
        A verified piece is returned before it is written to the blob; until
        it is recorded, reads of it (and L{Downloader.verified}) take it
        from memory, with no new request; then from the blob.
        """
        held = HeldBlobs(self.blobs)
        self.downloader = self.make_downloader(held)
        self.stores[A] = self.a
        offset = 2 * LEAF_SIZE
        self.assertEqual(
            self.successResultOf(self.read(offset + 5, 10)),
            self.data[offset + 5 : offset + 15],
        )
        self.assertEqual(self.present(), ByteRanges())
        self.assertEqual(
            self.successResultOf(self.read(offset + 100, 10)),
            self.data[offset + 100 : offset + 110],
        )
        verified = self.downloader.verified
        self.assertEqual(
            verified(self.inode, self.root_hash, offset, offset + 7),
            self.data[offset : offset + 7],
        )
        self.assertIsNone(verified(self.inode, self.root_hash, offset - 1, offset + 7))
        self.assertIsNone(verified(self.inode, b"\1" * 32, offset, offset + 7))
        self.assertEqual(verified(self.inode, self.root_hash, offset, offset), b"")
        self.assertEqual(self.a.reads.count((offset, offset + LEAF_SIZE)), 1)
        held.release()
        self.assertTrue(self.present().contains(offset, offset + LEAF_SIZE))
        self.assertIsNone(verified(self.inode, self.root_hash, offset, offset + 7))
        self.assertEqual(
            self.successResultOf(self.read(offset, 10)), self.data[offset : offset + 10]
        )
        self.assertEqual(self.a.reads.count((offset, offset + LEAF_SIZE)), 1)

    def test_reader_does_not_wait_for_the_blob(self) -> None:
        """
        The first read of a version does not wait for its blob to be made:
        the piece is fetched and returned meanwhile, and written once the
        blob is open.
        """
        held = HeldBlobs(self.blobs, hold_open=True)
        self.downloader = self.make_downloader(held)
        self.stores[A] = self.a
        self.assertEqual(self.successResultOf(self.read(7, 10)), self.data[7:17])
        self.assertEqual(self.a.reads.count((0, LEAF_SIZE)), 1)
        self.assertEqual(self.present(), ByteRanges())
        held.hold_open = False
        self.assertEqual(held.release(), 1)  # the open
        while held.release():  # the writes
            pass
        self.assertTrue(self.present().contains(0, LEAF_SIZE))

    def test_verified_across_pieces(self) -> None:
        """
        L{Downloader.verified} joins consecutive pieces held in memory, up
        to the end of the file.
        """
        held = HeldBlobs(self.blobs)
        self.downloader = self.make_downloader(held)
        self.stores[A] = self.a
        self.successResultOf(self.read(4 * LEAF_SIZE, self.size))
        self.successResultOf(self.read(3 * LEAF_SIZE, 1))
        self.assertEqual(
            self.downloader.verified(
                self.inode, self.root_hash, 3 * LEAF_SIZE + 9, self.size
            ),
            self.data[3 * LEAF_SIZE + 9 :],
        )
        held.release()

    def test_read_ahead_bounded_by_unkept_pieces(self) -> None:
        """
        While L{MAX_UNKEPT} verified pieces of a version wait to be written,
        read-ahead starts no other piece (reads still fetch what they need);
        once they are written it goes on.
        """
        size = 40 * LEAF_SIZE
        self.bigger(size)
        held = HeldBlobs(self.blobs)
        self.downloader = self.make_downloader(held)
        self.stores[A] = self.a
        step = 256 << 10
        read_up_to = 0
        for offset in range(0, (MAX_UNKEPT + 4) * LEAF_SIZE, step):
            self.successResultOf(self.read(offset, step))
            read_up_to = offset // LEAF_SIZE
        fetched = len(self.a.reads)
        self.assertEqual(
            max(start for start, _ in self.a.reads), read_up_to * LEAF_SIZE
        )
        self.assertLessEqual(fetched, MAX_UNKEPT + 5)
        held.release()
        self.successResultOf(self.read((read_up_to + 1) * LEAF_SIZE, step))
        self.assertGreater(
            max(start for start, _ in self.a.reads), (read_up_to + 1) * LEAF_SIZE
        )
        while held.release():
            pass

    def test_advance(self) -> None:
        """
        Bytes read without the downloader (from the blob or from memory)
        move a sequential read-ahead window on: the pieces after them are
        fetched.  A version not being transferred is left alone.
        """
        self.bigger(40 * LEAF_SIZE)
        self.stores[A] = self.a
        self.successResultOf(self.read(0, 128 << 10))
        self.assertEqual(len(self.a.reads), 2)  # piece 0 and one ahead
        self.downloader.advance(self.inode, self.root_hash, LEAF_SIZE, LEAF_SIZE + 10)
        self.assertEqual(
            sorted(start // LEAF_SIZE for start, _ in self.a.reads), [0, 1, 2, 3]
        )
        self.downloader.advance(self.inode, b"\1" * 32, 0, 10)
        self.downloader.advance(10**9, self.root_hash, 0, 10)
        self.assertEqual(len(self.a.reads), 4)

    def test_known_version(self) -> None:
        """
        A read given the file's version (with a hash) does not look it up.
        """
        self.stores[A] = self.a
        version = file_version(self.db, ARENA, ROOT, self.inode)
        d = Deferred.fromCoroutine(
            self.downloader.read(self.inode, 0, 10, self.root_hash, version)
        )
        self.assertEqual(self.successResultOf(d), self.data[:10])
        self.assertEqual(self.lookups, 0)
        self.successResultOf(self.read(0, 10))
        self.assertEqual(self.lookups, 1)

    def bigger(self, size: int, seed: int = 0) -> None:
        """
        Make "f" a larger (or smaller) file.
        """
        self.data = content(size, seed)
        self.root_hash = merkle_root(leaves_of(self.data))
        self.mtime = getattr(self, "mtime", 19) + 1
        for peer in (A, B):
            run(
                self.db,
                _txn_add,
                self.tree,
                peer,
                add("f", size, self.mtime, self.root_hash),
            )
        self.a.data = self.b.data = self.data

    # The read path that does not wait for the writes, with the block
    # cache's pins, metrics and the budget of a file larger than the
    # working area (#largedl).

    def gated(self, area_pieces: int) -> GatedBlobs:
        """
        A downloader on a blob store with a working area of this many
        pieces, pins and a fetched count, for a file of 40 pieces.
        """
        self.bigger(40 * LEAF_SIZE)
        self.stores[A] = self.a
        gated = GatedBlobs(self.blobs, area_pieces * LEAF_SIZE)
        self.pins = Pins()
        self.fetched: list[int] = []

        async def versions(inode: int) -> FileVersion | None:
            return file_version(self.db, ARENA, ROOT, inode)

        self.downloader = Downloader(
            ARENA,
            gated,
            versions,
            self.stores.get,
            self.clock,
            self.pins,
            self.fetched.append,
        )
        return gated

    def pieces_present(self) -> list[int]:
        present = self.present()
        return [
            index
            for index in range(len(self.data) // LEAF_SIZE)
            if present.contains(index * LEAF_SIZE, (index + 1) * LEAF_SIZE)
        ]

    def test_pinned_while_held(self) -> None:
        """
        A piece verified but not written yet keeps its file pinned (its
        blob is not evicted under the write); the pin goes once it is
        written.  Each piece fetched is counted once.
        """
        held = HeldBlobs(self.blobs)
        self.pins = Pins()
        self.fetched = []

        async def versions(inode: int) -> FileVersion | None:
            return file_version(self.db, ARENA, ROOT, inode)

        self.downloader = Downloader(
            ARENA,
            held,
            versions,
            self.stores.get,
            self.clock,
            self.pins,
            self.fetched.append,
        )
        self.stores[A] = self.a
        self.assertEqual(
            self.successResultOf(self.read(LEAF_SIZE + 5, 10)),
            self.data[LEAF_SIZE + 5 : LEAF_SIZE + 15],
        )
        self.assertTrue(self.pins.held(self.inode))
        self.assertEqual(self.fetched, [LEAF_SIZE])
        while held.release():
            pass
        self.assertFalse(self.pins.held(self.inode))
        self.assertEqual(self.fetched, [LEAF_SIZE])

    def test_unkept_pieces_count_in_budget(self) -> None:
        """
        The pieces verified and waiting to be written count in the budget
        of a file larger than the working area: other pieces are released
        to make room for them, the blob and the memory together stay within
        the budget.
        """
        gated = self.gated(16)  # budget 8 pieces read at random

        def held() -> list[int]:
            return [
                index
                for index in range(40)
                if self.downloader.verified(
                    self.inode,
                    self.root_hash,
                    index * LEAF_SIZE,
                    (index + 1) * LEAF_SIZE,
                )
                is not None
            ]

        for index in range(38, 20, -2):  # not sequential: no read-ahead
            self.successResultOf(self.read(index * LEAF_SIZE, 10))
        self.assertEqual(len(self.pieces_present()), 8)
        gated.hold_writes = True
        for index in range(18, 12, -2):
            self.assertEqual(
                self.successResultOf(self.read(index * LEAF_SIZE, 10)),
                self.data[index * LEAF_SIZE : index * LEAF_SIZE + 10],
            )
            self.assertIn(index, held())
            self.assertLessEqual(len(self.pieces_present()) + len(held()), 8)
        while gated.let_go():
            pass
        self.assertFalse(self.pins.held(self.inode))

    def test_trim_spares_pieces_being_written(self) -> None:
        """
        A piece of a large file whose write is under way is not released
        to make room, even if the blob already held its range.
        """
        plain = self.gated(100)
        for index in (9, 7, 5, 3, 1, 8, 6, 4, 2, 0):  # no read-ahead
            self.successResultOf(self.read(index * LEAF_SIZE + 3, 1))
        self.assertEqual(self.pieces_present(), list(range(10)))
        del plain
        gated = self.gated(8)  # budget 4 pieces read at random
        gated.hold_open = gated.hold_writes = True
        self.assertEqual(
            self.successResultOf(self.read(5 * LEAF_SIZE, 10)),
            self.data[5 * LEAF_SIZE : 5 * LEAF_SIZE + 10],
        )
        self.assertEqual(gated.let_go(), 1)  # the open; the write waits
        self.successResultOf(self.read(20 * LEAF_SIZE, 10))
        self.assertIn(5, self.pieces_present())
        self.assertNotIn(("write", 5), gated.done)
        while gated.let_go():
            pass
        self.assertIn(5, self.pieces_present())
        self.assertLessEqual(len(self.pieces_present()), 4)

    def test_write_waits_for_release(self) -> None:
        """
        A piece fetched again while its range is being released is written
        only once the release is done (the hole would be punched into the
        new bytes otherwise).
        """
        gated = self.gated(8)  # budget 4 pieces read at random
        for index in (3, 6, 9, 12):
            self.successResultOf(self.read(index * LEAF_SIZE, 10))
        gated.hold_releases = True
        fifteen = self.read(15 * LEAF_SIZE, 10)  # releases piece 3
        self.assertNoResult(fifteen)
        three = self.read(3 * LEAF_SIZE, 10)  # fetched again meanwhile
        self.assertEqual(self.a.reads.count((3 * LEAF_SIZE, 4 * LEAF_SIZE)), 2)
        self.assertEqual(gated.done.count(("write", 3)), 1)
        while gated.let_go():
            pass
        self.assertEqual(
            self.successResultOf(three), self.data[3 * LEAF_SIZE : 3 * LEAF_SIZE + 10]
        )
        self.successResultOf(fifteen)
        threes = [step for step in gated.done if step[1] == 3]
        self.assertEqual(threes, [("write", 3), ("release", 3), ("write", 3)])
        self.assertIn(3, self.pieces_present())

    def test_advance_within_budget(self) -> None:
        """
        A large file read sequentially from the blob (the FUSE thread's
        fast path, which tells L{Downloader.advance}) keeps its read-ahead
        going, the pieces behind the reader released: no read waits for
        the network after the first, and the blob stays within its budget.
        """
        self.gated(8)  # budget 4 pieces read sequentially
        step = 256 << 10
        misses = 0
        for offset in range(0, 30 * LEAF_SIZE, step):
            end = offset + step
            data = read_cached(
                self.db, self.directory, self.inode, self.root_hash, offset, end
            )
            if data is None:
                misses += 1
                data = self.successResultOf(self.read(offset, step))
            else:
                self.downloader.advance(self.inode, self.root_hash, offset, end)
            self.assertEqual(data, self.data[offset:end])
            self.assertLessEqual(len(self.pieces_present()), 4 + 1)
        self.assertEqual(misses, 1)
        self.assertFalse(self.pins.held(self.inode))


class BatchStore:
    """
    A peer's store of several small files, answering C{ReadFiles} (and
    C{Read}, C{Hash}), with faults to order.
    """

    def __init__(self, name: str, files: dict[str, bytes]) -> None:
        self.name = name
        self.files = files
        self.batches: list[list[tuple[str, int]]] = []
        self.reads: list[tuple[str, int, int]] = []
        self.corrupt: set[str] = set()
        self.fail: BaseException | None = None
        self.hold: Deferred[None] | None = None

    def describe(self) -> str:
        return self.name

    async def read_files(
        self, arena: str, files: Sequence[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        self.batches.append(list(files))
        if self.hold is not None:
            await self.hold
        if self.fail is not None:
            raise self.fail
        results: list[SmallRead | RealizeError] = []
        for path, _ in files:
            data = self.files.get(path)
            if data is None:
                results.append(NotFound(path))
                continue
            if path in self.corrupt:
                data = b"x" + data[1:]
            results.append(SmallRead(data, len(data), 0, leaf_hash(data)))
        return results

    def read(self, arena: str, path: str, start: int, end: int) -> Any:
        self.reads.append((path, start, end))
        store = FakeStore(self.name, self.files[path])
        return FakeStream(store, start, end)

    async def hash(self, arena: str, path: str, start: int, end: int) -> FileState:
        raise AssertionError("small files need no Hash")


class PrefetchTests(SynchronousTestCase):
    """
    Small files fetched in batches (L{Downloader.prefetch}) and found by
    L{small_files_after}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.db = arena_db(self)
        self.tree = make_tree()
        self.files = {f"d/s{i}": content(1000 + i, seed=i) for i in range(5)}
        self.files["d/big"] = content(2 * LEAF_SIZE)
        for peer in (A, B):
            for path, data in self.files.items():
                root = merkle_root(leaves_of(data))
                run(self.db, _txn_add, self.tree, peer, add(path, len(data), 10, root))
        self.a = BatchStore("a", self.files)
        self.b = BatchStore("b", self.files)
        self.stores: dict[PeerId, Any] = {A: self.a}
        self.blobs = BlobStore(
            os.path.join(self.mktemp(), "blobs"),
            sync_run_in_thread,
            sync_interaction(self.db),
            lambda: 1,
        )

        async def versions(inode: int) -> FileVersion | None:
            return file_version(self.db, ARENA, ROOT, inode)

        self.downloader = Downloader(
            ARENA, self.blobs, versions, self.stores.get, self.clock
        )
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def version(self, path: str) -> FileVersion:
        found = file_version(self.db, ARENA, ROOT, inode_of(self.db, path))
        assert found is not None
        return found

    def read(self, path: str) -> bytes:
        inode = inode_of(self.db, path)
        data: bytes = self.successResultOf(
            Deferred.fromCoroutine(self.downloader.read(inode, 0, 10**7))
        )
        return data

    def test_batch(self) -> None:
        """
        Small files prefetched arrive in one C{ReadFiles}, verified; reads
        of them then ask nothing more; they are kept in their blobs.
        """
        paths = ["d/s1", "d/s2", "d/s3"]
        self.downloader.prefetch([self.version(p) for p in paths])
        self.assertEqual(self.a.batches, [[(p, len(self.files[p])) for p in paths]])
        for path in paths:
            self.assertEqual(self.read(path), self.files[path])
        self.assertEqual(self.a.reads, [])
        kept = self.db.execute("SELECT count(*) FROM blob WHERE ranges != x''")
        self.assertEqual(kept.fetchone()[0], 3)

    def test_held_until_kept(self) -> None:
        """
        A prefetched file is in memory (L{Downloader.verified}) once its
        batch arrived, even while its blob is not written yet; a read that
        comes before the batch waits for it rather than asking again.
        """
        held = HeldBlobs(self.blobs)
        self.downloader.blobs = held
        self.a.hold = Deferred()
        version = self.version("d/s2")
        assert version.hash is not None
        self.downloader.prefetch([version])
        d = Deferred.fromCoroutine(self.downloader.read(version.inode, 0, 10))
        self.assertNoResult(d)
        self.a.hold.callback(None)
        self.assertEqual(self.successResultOf(d), self.files["d/s2"][:10])
        self.assertEqual(
            self.downloader.verified(version.inode, version.hash, 0, version.size),
            self.files["d/s2"],
        )
        self.assertEqual(self.a.reads, [])
        while held.release():
            pass
        self.assertIsNone(
            self.downloader.verified(version.inode, version.hash, 0, version.size)
        )

    def test_pinned_and_counted(self) -> None:
        """
        Each prefetched file is pinned until its bytes are written, and its
        size counted once verified.
        """
        held = HeldBlobs(self.blobs)
        pins = Pins()
        fetched: list[int] = []
        self.downloader.blobs = held
        self.downloader.pins = pins
        self.downloader.fetched = fetched.append
        self.a.hold = Deferred()
        versions = [self.version("d/s1"), self.version("d/s2")]
        self.downloader.prefetch(versions)
        self.assertTrue(all(pins.held(v.inode) for v in versions))
        self.assertEqual(fetched, [])
        self.a.hold.callback(None)
        self.assertEqual(sorted(fetched), sorted(v.size for v in versions))
        self.assertTrue(all(pins.held(v.inode) for v in versions))
        while held.release():
            pass
        self.assertFalse(any(pins.held(v.inode) for v in versions))

    def test_room_in_the_cache(self) -> None:
        """
        With a block cache, the small files being prefetched (those of
        earlier batches not written yet included) take at most a share of
        its working area: they are pinned until written.
        """
        gated = GatedBlobs(self.blobs, HELD_AREA_SHARE * 2100)
        gated.hold_writes = True
        self.downloader.blobs = gated
        self.downloader.prefetch([self.version(f"d/s{i}") for i in (1, 2, 3)])
        self.assertEqual(self.a.batches, [[("d/s1", 1001), ("d/s2", 1002)]])
        self.downloader.prefetch([self.version("d/s3")])
        self.assertEqual(len(self.a.batches), 1)
        while gated.let_go():
            pass
        self.downloader.prefetch([self.version("d/s3")])
        self.assertEqual(self.a.batches[1:], [[("d/s3", 1003)]])
        while gated.let_go():
            pass

    def test_reads_wait_for_the_disk(self) -> None:
        """
        Beyond a share of the cache's working area of verified pieces (of
        all versions) waiting to be written, a read waits for the writes of
        its version before it returns (a reader going through many files
        does not outrun the disk; their pinned files would fill the cache):
        until the deadline at most, then it returns the verified bytes.
        """
        gated = GatedBlobs(self.blobs, HELD_AREA_SHARE * LEAF_SIZE)  # one piece
        gated.hold_writes = True
        self.downloader.blobs = gated
        self.assertEqual(self.read("d/s0"), self.files["d/s0"])
        second = Deferred.fromCoroutine(
            self.downloader.read(inode_of(self.db, "d/s1"), 0, 10**7)
        )
        self.assertNoResult(second)
        self.assertEqual(gated.let_go(), 2)
        self.assertEqual(self.successResultOf(second), self.files["d/s1"])
        self.assertEqual(self.read("d/s2"), self.files["d/s2"])
        last = Deferred.fromCoroutine(
            self.downloader.read(inode_of(self.db, "d/s3"), 0, 10**7)
        )
        self.assertNoResult(last)
        self.clock.advance(DEADLINE)
        self.assertEqual(self.successResultOf(last), self.files["d/s3"])
        while gated.let_go():
            pass

    def test_writing(self) -> None:
        """
        L{Downloader.writing} tells whether verified bytes of a version are
        waiting to be written; L{Downloader.written} waits for them.
        """
        held = HeldBlobs(self.blobs)
        self.downloader.blobs = held
        version = self.version("d/s2")
        assert version.hash is not None
        self.assertFalse(self.downloader.writing(version.inode, version.hash))
        self.successResultOf(
            Deferred.fromCoroutine(self.downloader.written(version.inode, version.hash))
        )
        self.assertEqual(self.read("d/s2"), self.files["d/s2"])
        self.assertTrue(self.downloader.writing(version.inode, version.hash))
        self.assertFalse(self.downloader.writing(version.inode, b"\1" * 32))
        written = Deferred.fromCoroutine(
            self.downloader.written(version.inode, version.hash)
        )
        self.assertNoResult(written)
        while held.release():
            pass
        self.successResultOf(written)
        self.assertFalse(self.downloader.writing(version.inode, version.hash))

    def test_bad_bytes(self) -> None:
        """
        A file whose batched bytes do not match its version is not served:
        its read fetches it again from another peer; the failure is logged.
        """
        self.stores[B] = self.b
        self.a.corrupt.add("d/s1")
        self.downloader.prefetch([self.version("d/s1"), self.version("d/s2")])
        self.assertEqual(self.read("d/s1"), self.files["d/s1"])
        self.assertEqual(self.read("d/s2"), self.files["d/s2"])
        self.assertEqual(self.b.reads, [("d/s1", 0, len(self.files["d/s1"]))])
        self.assertEqual(self.a.reads, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_batch_fails(self) -> None:
        """
        When the batch fails, each file is fetched alone by its read.
        """
        self.a.fail = NetworkError("connection lost")
        self.downloader.prefetch([self.version("d/s1"), self.version("d/s2")])
        self.assertEqual(self.read("d/s2"), self.files["d/s2"])
        self.assertEqual(self.a.reads, [("d/s2", 0, len(self.files["d/s2"]))])

    def test_left_out(self) -> None:
        """
        Files of more than one leaf, files already kept or being fetched,
        and files no connected peer has are not batched; nor beyond
        L{PREFETCH_FILES}.
        """
        self.assertEqual(self.read("d/s0"), self.files["d/s0"])
        self.downloader.prefetch(
            [self.version("d/big"), self.version("d/s0"), self.version("d/s1")]
        )
        self.assertEqual(self.a.batches, [[("d/s1", len(self.files["d/s1"]))]])
        self.stores.clear()
        self.downloader.prefetch([self.version("d/s3")])
        self.assertEqual(len(self.a.batches), 1)
        self.stores[A] = self.a
        self.downloader.prefetch([self.version("d/s3")] * (PREFETCH_FILES + 5))
        self.assertEqual(self.a.batches[-1], [("d/s3", len(self.files["d/s3"]))])

    def test_close_during_batch(self) -> None:
        """
        A downloader closed while a batch is out: the batch's answer is
        dropped quietly.
        """
        self.a.hold = Deferred()
        self.downloader.prefetch([self.version("d/s1")])
        self.downloader.close()
        self.a.hold.callback(None)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_small_files_after(self) -> None:
        """
        The small files after one in its directory, by name, with their
        versions; none of more than the size asked, nor those already in a
        blob.
        """
        after = small_files_after(
            self.db, ARENA, ROOT, inode_of(self.db, "d/s1"), LEAF_SIZE, 10
        )
        self.assertEqual([v.path for v in after], ["d/s2", "d/s3", "d/s4"])
        self.assertEqual(after[0], self.version("d/s2"))
        self.read("d/s3")
        after = small_files_after(
            self.db, ARENA, ROOT, inode_of(self.db, "d/s1"), LEAF_SIZE, 1
        )
        self.assertEqual([v.path for v in after], ["d/s2"])
        after = small_files_after(
            self.db, ARENA, ROOT, inode_of(self.db, "d/s1"), LEAF_SIZE, 10
        )
        self.assertEqual([v.path for v in after], ["d/s2", "d/s4"])
        self.assertEqual(small_files_after(self.db, ARENA, ROOT, 10**9, 10, 10), [])
