"""
The downloader of one arena (DESIGN.md section 10): fills the missing
ranges of a file's default version into its blob, from the connected peers
that have that version, and verifies every byte before it is returned or
recorded.

    - A version's bytes are fetched in pieces of L{PIECE_SIZE} (one Merkle
      leaf), at most L{MAX_IN_FLIGHT} requests at once per version.
    - The version's leaves are fetched once (C{Hash} of the whole file from
      any peer that has it) and accepted only if their Merkle root is the
      version's hash; each piece must then hash to its leaf.  A piece that
      does not is fetched again from another peer; when no peer gives
      good bytes the read fails with L{IOFailure} (EIO), logged.  A peer
      that sent bad bytes or bad leaves is not asked again for that
      version.
    - A version of one leaf (up to L{PIECE_SIZE} bytes: every small file)
      needs no C{Hash}: its root I{is} its leaf, so a small file costs one
      C{Read}; and L{Downloader.prefetch} fetches several in one
      C{ReadFiles}, each verified the same way (the peer's own root is not
      trusted).
    - Sequential reads open a read-ahead window: 1 piece, doubling with
      each sequential read up to L{MAX_READAHEAD} pieces; a random read
      fetches only the pieces it needs.
    - A file without a version yet (hash C{None}, #musthash) is waited for
      up to L{DEADLINE} seconds (re-read every L{VERSION_POLL} seconds, or
      at once when L{Downloader.version_changed} is told).
    - Every read ends within L{DEADLINE} seconds (each request has its own
      timeout of L{REQUEST_TIMEOUT}); L{Downloader.close} fails the reads
      in flight with L{IOFailure}.

Verified bytes are written to the blob (data, fsync, then ranges:
L{realize.storage.blobs.BlobStore}, within the quota of the block cache,
L{realize.services.cache.BlobCache}); if the blob cannot be made or
written (full disk, no room) they are still returned, just not kept.  A
blob evicted under a read is opened again and the read tried again.

Readers do not wait for the write: a piece is returned once verified,
and stays in memory until its range is recorded (reads of it meanwhile
take it from there, and FUSE threads through L{Downloader.verified},
without a reactor round trip); read-ahead starts no piece while
L{MAX_UNKEPT} of a version wait to be written, and beyond
L{MAX_UNKEPT_ALL} of all versions (or, with a block cache, a share of its
working area) a read waits for the writes of its version, so memory (and
what the cache cannot evict) stays bounded when the disk is slower than
the network.  L{Downloader.advance} lets
the reader's progress through data served without the downloader (from
the blob, or from memory) move the read-ahead window on.  The file is
pinned in the block cache (L{realize.storage.cache.Pins}) while a piece
of it is fetched or held in memory.

A file larger than the cache's working area (#largedl) does not evict the
rest of the cache: its blob keeps at most L{STREAM_WINDOW} bytes while it
is read sequentially (the read-ahead is kept, the pieces behind the reader
are released), and under random reads the pieces read least recently are
released; either way at most half the working area (the read-ahead is
shortened to fit).  The pieces in flight and those held in memory count
in that budget; a piece being fetched, held or written is never
released, and a piece fetched again while its range is being released is
written only once the release is done.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from attrs import define, field
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    TimeoutError,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from realize.errors import IOFailure, NotFound, RealizeError, describe
from realize.hashing import LEAF_SIZE, format_hash, leaf_hash, merkle_root
from realize.interfaces import ReadStream
from realize.model import ArenaName, ByteRanges, FileState, PeerId, SmallRead
from realize.storage.blobs import Blob
from realize.storage.cache import Pins
from realize.storage.unrealview import FileVersion

__all__ = [
    "DEADLINE",
    "HELD_AREA_SHARE",
    "MAX_IN_FLIGHT",
    "MAX_READAHEAD",
    "MAX_UNKEPT",
    "MAX_UNKEPT_ALL",
    "PIECE_SIZE",
    "PREFETCH_BYTES",
    "PREFETCH_FILES",
    "REQUEST_TIMEOUT",
    "STREAM_WINDOW",
    "VERSION_POLL",
    "BlobAccess",
    "Downloader",
    "RemoteData",
]

T = TypeVar("T")

log = Logger(namespace="realize.downloader")

#: Bytes per request: one Merkle leaf, so each answer is verified alone.
PIECE_SIZE: Final = LEAF_SIZE

#: Requests in flight at most, per version.  Measured (bench/fuse.py, a
#: cold 1 GiB read over loopback, 1 MiB kernel requests, TCP_NODELAY): 4 in
#: flight and 8 ahead 134-155 MB/s, 16 and 32 150-199 MB/s, 8 and 32
#: 211-225 MB/s.
MAX_IN_FLIGHT: Final = 8

#: Read-ahead window on sequential reads, at most, in pieces.
MAX_READAHEAD: Final = 32

#: Seconds within which every read ends (with data or an error), waits for
#: a version included.
DEADLINE: Final = 10.0

#: Seconds one request (Read of a piece, Hash) may take before the peer is
#: given up for it.
REQUEST_TIMEOUT: Final = DEADLINE

#: Seconds between two looks at a file waiting for its version.
VERSION_POLL: Final = 0.5

#: Versions whose transfer state (leaves, read-ahead, bad peers) is kept.
MAX_TRANSFERS: Final = 64

#: Small files fetched together by L{Downloader.prefetch}, at most, and
#: their bytes at most.
PREFETCH_FILES: Final = 32
PREFETCH_BYTES: Final = 4 << 20

#: Verified pieces of a version waiting to be written to its blob (held in
#: memory meanwhile) beyond which read-ahead starts no other piece: with
#: the pieces in flight, at most 24 MiB of a version in memory.
MAX_UNKEPT: Final = 16

#: Verified pieces of all versions waiting to be written beyond which
#: read-ahead starts no other piece and a read waits for the writes of its
#: version before it returns (a reader going through many files must not
#: outrun the disk).
MAX_UNKEPT_ALL: Final = 2 * MAX_UNKEPT

#: With a block cache, the share of its working area that verified pieces
#: waiting to be written (whose files are pinned: the cache cannot evict
#: them) may take at most, 1 / this: beyond, as beyond L{MAX_UNKEPT_ALL};
#: small files being prefetched take that share at most too.
HELD_AREA_SHARE: Final = 4

#: Bytes the blob of a file larger than the working area keeps while it is
#: read sequentially: the read-ahead, the pieces being read, and as many
#: behind the reader (the kernel's reads come a little out of order).
STREAM_WINDOW: Final = 2 * MAX_READAHEAD * PIECE_SIZE

#: Times a read starts again when the cached bytes it counted on vanished
#: (the blob was evicted or replaced).
VANISHED_RETRIES: Final = 2


class RemoteData(Protocol):
    """
    What the downloader needs of a peer's store (L{realize.interfaces.Store}
    has it).
    """

    def describe(self) -> str:
        """
        @return: the peer, for messages.
        """

    def read(self, arena: ArenaName, path: str, start: int, end: int) -> ReadStream:
        """
        Stream the bytes C{[start, end)} of a file.
        """

    async def hash(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> FileState:
        """
        Merkle leaves of C{[start, min(end, size))} of a file.
        """

    async def read_files(
        self, arena: ArenaName, files: Sequence[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        """
        Whole small files in one batch (C{(path, limit)} each).
        """


class BlobAccess(Protocol):
    """
    What the downloader needs of the blob store
    (L{realize.storage.blobs.BlobStore} has it).
    """

    async def open(self, inode: int, digest: bytes) -> Blob:
        """
        The blob of a file's default version, made if needed.
        """

    async def write(self, blob: Blob, offset: int, data: bytes) -> ByteRanges | None:
        """
        Write, sync and record verified bytes; the ranges now present, or
        C{None} if the blob is gone.
        """

    async def read(self, blob: Blob, start: int, end: int) -> bytes:
        """
        Read present bytes of a blob.
        """

    async def release(self, blob: Blob, ranges: ByteRanges) -> ByteRanges | None:
        """
        Give back the disk space of ranges of a blob (out of the row, then
        out of the file); the ranges left, or C{None} if the blob is gone.
        """

    def working_area(self) -> int | None:
        """
        The bytes a blob may hold before it is read through a window, or
        C{None} for no limit.
        """


@define(eq=False)
class _Shared(Generic[T]):
    """
    The result of one piece of work, awaited by any number of readers; a
    reader that stops waiting does not cancel the work.
    """

    _work: Deferred[None] | None = None
    _waiters: list[Deferred[T]] = field(factory=list)
    _outcome: list[T | Failure] = field(factory=list)

    @classmethod
    def start(cls, work: Coroutine[Any, Any, T]) -> _Shared[T]:
        shared: _Shared[T] = cls()
        shared.run(work)
        return shared

    def run(self, work: Coroutine[Any, Any, T]) -> None:
        self._work = Deferred.fromCoroutine(work).addBoth(self._done)

    def _done(self, outcome: T | Failure) -> None:
        self._outcome.append(outcome)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    @property
    def done(self) -> bool:
        return bool(self._outcome)

    @property
    def failed(self) -> bool:
        return bool(self._outcome) and isinstance(self._outcome[0], Failure)

    def result(self) -> T | None:
        """
        @return: the result, if the work is done and did not fail.
        """
        if not self._outcome or isinstance(self._outcome[0], Failure):
            return None
        return self._outcome[0]

    def observe(self) -> Deferred[T]:
        waiter: Deferred[T] = Deferred()
        if self._outcome:
            outcome = self._outcome[0]
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)
        else:
            self._waiters.append(waiter)
        return waiter

    def cancel(self) -> None:
        if self._work is not None and not self.done:
            self._work.cancel()


@define(eq=False)
class _Transfer:
    """
    What the downloader knows of one version being fetched.
    """

    version: FileVersion
    digest: bytes
    semaphore: DeferredSemaphore = field(
        factory=lambda: DeferredSemaphore(MAX_IN_FLIGHT)
    )
    blob: _Shared[Blob | None] | None = None
    opened: Blob | None = None
    present: ByteRanges = field(factory=ByteRanges)
    leaves: _Shared[tuple[bytes, ...]] | None = None
    pieces: dict[int, _Shared[bytes]] = field(factory=dict)
    bad: set[PeerId] = field(factory=set)
    next_offset: int = 0
    ahead_end: int = 0
    window: int = 0
    unkept: int = 0
    kept: OrderedDict[int, None] = field(factory=OrderedDict)
    releasing: dict[int, _Shared[None]] = field(factory=dict)
    reading: dict[int, int] = field(factory=dict)
    settled: list[Deferred[None]] = field(factory=list)

    @property
    def count(self) -> int:
        """
        @return: the number of pieces of the version.
        """
        return -(-self.version.size // PIECE_SIZE)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * PIECE_SIZE
        return start, min(start + PIECE_SIZE, self.version.size)

    def has(self, index: int) -> bool:
        return self.present.contains(*self.bounds(index))

    def busy(self) -> bool:
        return (
            self.unkept > 0
            or bool(self.releasing)
            or any(not piece.done for piece in self.pieces.values())
            or (self.leaves is not None and not self.leaves.done)
        )

    def cancel(self) -> None:
        for shared in [self.blob, self.leaves, *self.pieces.values()]:
            if shared is not None:
                shared.cancel()


@define(eq=False)
class _Prefetch:
    """
    A small file in a batch: where its bytes arrive, and the shared piece
    that reads of it wait on.
    """

    transfer: _Transfer
    peer: PeerId
    shared: _Shared[bytes] = field(factory=_Shared)
    arrived: Deferred[bytes] = field(factory=Deferred)


@define(eq=False)
class Downloader:
    """
    Reads of an arena's files through their blobs, fetching what is missing
    (module docstring).

    @ivar arena: the arena.
    @ivar blobs: its blob store.
    @ivar versions: a file's default version and the peers that have it,
        by inode (e.g. L{realize.storage.unrealview.SqliteUnrealView.version}
        run in a thread); C{None} if no such file.
    @ivar stores: the live store of a connected peer, or C{None} if the
        peer is not connected now.
    @ivar clock: for deadlines and timeouts.
    @ivar pins: where a file being read or downloaded is pinned (its blob
        is not evicted meanwhile), or C{None}.
    @ivar fetched: told the size of every piece downloaded and verified
        (metrics), or C{None}.
    """

    arena: ArenaName
    blobs: BlobAccess
    versions: Callable[[int], Awaitable[FileVersion | None]]
    stores: Callable[[PeerId], RemoteData | None]
    clock: IReactorTime
    pins: Pins | None = None
    fetched: Callable[[int], None] | None = None
    _transfers: OrderedDict[tuple[int, bytes], _Transfer] = field(factory=OrderedDict)
    _waiting: dict[int, list[Deferred[None]]] = field(factory=dict)
    _closed: bool = False
    #: Verified pieces not yet recorded in their blob, by (inode, digest,
    #: index): written in the reactor, read by FUSE threads.
    _memory: dict[tuple[int, bytes, int], bytes] = field(factory=dict)
    _memory_lock: threading.Lock = field(factory=threading.Lock)
    #: Bytes of the small files prefetched and not written yet.
    _prefetching: int = 0
    #: Verified pieces of all versions not written yet.
    _unkept: int = 0

    # Public.

    async def read(
        self,
        inode: int,
        offset: int,
        size: int,
        digest: bytes | None = None,
        version: FileVersion | None = None,
    ) -> bytes:
        """
        Read bytes of a file's default version: from its blob where present,
        fetched from peers (and kept) where not.

        @param inode: the file.
        @param offset: first byte.
        @param size: bytes wanted; fewer come back at the end of the file.
        @param digest: if given, the version the caller opened: a read after
            the default moved to another version fails rather than mixing
            versions.
        @param version: the file's default version, if the caller just read
            it (a FUSE thread reads sqlite itself): not looked up again
            unless it has no hash yet.
        @return: the bytes C{[offset, min(offset + size, file size))}, all
            verified against the version's hash.
        @raise NotFound: if there is no such file.
        @raise IOFailure: if the file has no version within L{DEADLINE}, its
            version changed from C{digest}, no connected peer gives bytes
            that verify, the deadline passed, or the downloader is closed.
        """
        if self._closed:
            raise IOFailure(f"{self.arena}: the downloader is stopped")
        if offset < 0 or size < 0:
            raise IOFailure(f"bad read of {size} bytes at {offset}")
        deadline = self.clock.seconds() + DEADLINE
        if self.pins is not None:
            self.pins.hold(inode)
        try:
            for attempt in range(VANISHED_RETRIES + 1):
                try:
                    return await self._read(
                        inode, offset, size, digest, deadline, version
                    )
                except _Vanished:
                    if attempt == VANISHED_RETRIES:
                        raise
            raise AssertionError("not reached")  # pragma: no cover
        except CancelledError:
            raise IOFailure(
                f"{self.arena}: read of inode {inode} stopped: the downloader "
                "is stopping"
            ) from None
        finally:
            if self.pins is not None:
                self.pins.drop(inode)

    def verified(self, inode: int, digest: bytes, start: int, end: int) -> bytes | None:
        """
        Bytes of a version from the verified pieces held in memory (those
        not yet recorded in the blob): any thread may call it, it does not
        wait.

        @param digest: the version.
        @param start: first byte.
        @param end: end of the range, exclusive, at most the version's size.
        @return: the bytes C{[start, end)}, or C{None} if some of them are
            not in memory.
        """
        if start >= end:
            return b""
        first, last = start // PIECE_SIZE, (end - 1) // PIECE_SIZE
        pieces: list[bytes] = []
        with self._memory_lock:
            for index in range(first, last + 1):
                piece = self._memory.get((inode, digest, index))
                if piece is None:
                    return None
                pieces.append(piece)
        base = first * PIECE_SIZE
        joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return joined[start - base : end - base]

    def writing(self, inode: int, digest: bytes) -> bool:
        """
        Whether verified pieces of a version are held in memory, waiting
        to be written to its blob (L{written} waits for them): any thread
        may call it, it does not wait.
        """
        with self._memory_lock:
            return any(key[0] == inode and key[1] == digest for key in self._memory)

    def advance(self, inode: int, digest: bytes, offset: int, end: int) -> None:
        """
        Tell the downloader that bytes of a version were read without it
        (from the blob or L{verified}), so that sequential reads keep the
        read-ahead window ahead of the reader (and, for a file larger than
        the working area, the pieces behind it released).  In the reactor
        thread; nothing is fetched for a version not being transferred.

        @param offset: first byte read.
        @param end: end of the bytes read, exclusive.
        """
        transfer = self._transfers.get((inode, digest))
        if self._closed or transfer is None or offset >= end:
            return
        first, last = offset // PIECE_SIZE, (end - 1) // PIECE_SIZE
        for index in range(first, last + 1):
            if index in transfer.kept:
                # Read from the blob: recently used (for the trim of a
                # large file read at random).
                transfer.kept.move_to_end(index)
        self._follow(transfer, offset, end)
        budget = self._budget(transfer)
        if budget is None:
            self._read_ahead(transfer, last, None)
            return
        Deferred.fromCoroutine(
            self._advance_within(transfer, first, last, budget)
        ).addErrback(lambda f: log.failure("read-ahead failed", f))

    async def _advance_within(
        self, transfer: _Transfer, first: int, last: int, budget: int
    ) -> None:
        """
        L{advance} for a file kept within a budget (#largedl): room behind
        the reader first, then the read-ahead, as a read does.
        """
        blob = None if transfer.blob is None else transfer.blob.result()
        await self._trim(transfer, blob, first, last, budget)
        if not self._closed:
            self._read_ahead(transfer, last, budget)

    async def written(self, inode: int, digest: bytes) -> None:
        """
        Wait until the verified pieces of a version held in memory are
        written to its blob (or could not be): for a caller that looks at
        the blob next (a realize job), as L{read} returns before.

        @param digest: the version.
        """
        transfer = self._transfers.get((inode, digest))
        if transfer is None or transfer.unkept == 0:
            return
        waiter: Deferred[None] = Deferred()
        transfer.settled.append(waiter)
        await waiter

    def version_changed(self, inodes: Iterable[int]) -> None:
        """
        Tell the downloader that these files' default versions may have
        changed (after a batch of notifications): reads waiting for a
        version look again at once.
        """
        for inode in inodes:
            for waiter in self._waiting.pop(inode, []):
                if not waiter.called:
                    waiter.callback(None)

    def forget(self, inode: int) -> None:
        """
        Forget what is known of a file's transfers (its blob, the ranges in
        it): its blob was taken away whole (realized into the datadir), so
        the next read opens the blob anew, or reads from the peers.
        """
        for key in [key for key in self._transfers if key[0] == inode]:
            del self._transfers[key]

    def close(self) -> None:
        """
        Stop: reads in flight and later ones fail with L{IOFailure};
        requests in flight are cancelled.
        """
        self._closed = True
        for transfer in self._transfers.values():
            transfer.cancel()
        self._transfers.clear()
        with self._memory_lock:
            self._memory.clear()
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            for waiter in waiters:
                if not waiter.called:
                    waiter.cancel()

    # Reading.

    async def _read(
        self,
        inode: int,
        offset: int,
        size: int,
        digest: bytes | None,
        deadline: float,
        known: FileVersion | None,
    ) -> bytes:
        if (
            known is not None
            and known.hash is not None
            and known.inode == inode
            and known.arena == self.arena
        ):
            version = known
        else:
            version = await self._wait_version(inode, deadline)
        assert version.hash is not None
        if digest is not None and version.hash != digest:
            raise IOFailure(
                f"{self.arena}/{version.path}: the version changed from "
                f"{format_hash(digest)} to {format_hash(version.hash)}"
            )
        end = min(offset + size, version.size)
        if offset >= end:
            return b""
        transfer = self._transfer(version, version.hash)
        if transfer.blob is None:
            transfer.blob = _Shared.start(self._open_blob(transfer))
        # Not waited for: pieces are fetched meanwhile, and written once it
        # is open.  Until then nothing counts as present in it.
        blob = transfer.blob.result()
        first, last = offset // PIECE_SIZE, (end - 1) // PIECE_SIZE
        self._follow(transfer, offset, end)
        wanted = {
            index: self._piece(transfer, index)
            for index in range(first, last + 1)
            if not transfer.has(index)
        }
        # The pieces read from the blob are not released meanwhile.
        cached = [index for index in range(first, last + 1) if index not in wanted]
        for index in cached:
            transfer.reading[index] = transfer.reading.get(index, 0) + 1
            if index in transfer.kept:
                transfer.kept.move_to_end(index)
        try:
            budget = self._budget(transfer)
            if budget is not None:
                # Room first (behind the reader), then the read-ahead: the
                # blob, the pieces in flight and those held in memory stay
                # within the budget.
                await self._trim(transfer, blob, first, last, budget)
            self._read_ahead(transfer, last, budget)
            # The pieces are all in flight: waiting for them in turn costs no
            # time.
            fetched = {
                index: await self._until(shared.observe(), deadline, version)
                for index, shared in wanted.items()
            }
            data = await self._assemble(transfer, blob, fetched, offset, end)
            if self._unkept > self._unkept_room():
                await self._settle(transfer, deadline)
        finally:
            for index in cached:
                count = transfer.reading.pop(index, 1) - 1
                if count > 0:
                    transfer.reading[index] = count
        return data

    def _unkept_room(self) -> int:
        """
        @return: the verified pieces of all versions that may wait to be
            written (L{MAX_UNKEPT_ALL}, or a share of the block cache's
            working area), at least one.
        """
        room = MAX_UNKEPT_ALL
        area = self.blobs.working_area()
        if area is not None:
            room = min(room, area // HELD_AREA_SHARE // PIECE_SIZE)
        return max(1, room)

    async def _settle(self, transfer: _Transfer, deadline: float) -> None:
        """
        Wait for the writes of a version's verified pieces, at most until
        the deadline (the bytes are verified: returned all the same).
        """
        if transfer.unkept == 0:
            return
        waiter: Deferred[None] = Deferred()
        transfer.settled.append(waiter)
        remaining = deadline - self.clock.seconds()
        if remaining <= 0:
            waiter.cancel()
        else:
            waiter.addTimeout(remaining, self.clock)
        with contextlib.suppress(TimeoutError, CancelledError):
            await waiter

    async def _assemble(
        self,
        transfer: _Transfer,
        blob: Blob | None,
        fetched: dict[int, bytes],
        offset: int,
        end: int,
    ) -> bytes:
        """
        The bytes C{[offset, end)}: from pieces just fetched, else from the
        blob (consecutive present pieces in one read).
        """
        parts: list[bytes] = []
        disk_start: int | None = None
        position = offset
        for index in range(offset // PIECE_SIZE, (end - 1) // PIECE_SIZE + 1):
            start, stop = transfer.bounds(index)
            start, stop = max(start, offset), min(stop, end)
            if index in fetched:
                if disk_start is not None:
                    parts.append(
                        await self._from_blob(transfer, blob, disk_start, start)
                    )
                    disk_start = None
                base = index * PIECE_SIZE
                parts.append(fetched[index][start - base : stop - base])
            elif disk_start is None:
                disk_start = start
            position = stop
        if disk_start is not None:
            parts.append(await self._from_blob(transfer, blob, disk_start, position))
        return b"".join(parts)

    async def _from_blob(
        self, transfer: _Transfer, blob: Blob | None, start: int, end: int
    ) -> bytes:
        if blob is None:
            raise IOFailure(f"{self._where(transfer.version)}: no blob to read from")
        try:
            data = await self.blobs.read(blob, start, end)
        except NotFound:
            data = b""
        if len(data) != end - start:
            # The blob went (evicted, or its version replaced): forget it;
            # the read starts again.
            self._transfers.pop((transfer.version.inode, transfer.digest), None)
            raise _Vanished(
                f"{self._where(transfer.version)}: the cached bytes "
                f"[{start}, {end}) vanished"
            )
        return data

    async def _wait_version(self, inode: int, deadline: float) -> FileVersion:
        """
        The file's version, waiting up to the deadline for one that has a
        hash.
        """
        while True:
            version = await self.versions(inode)
            if version is None or version.arena != self.arena:
                raise NotFound(f"{self.arena}: no file with inode {inode}")
            if version.hash is not None:
                return version
            now = self.clock.seconds()
            if now >= deadline:
                log.warn(
                    "{arena}/{path}: no version within {deadline} s",
                    arena=self.arena,
                    path=version.path,
                    deadline=DEADLINE,
                )
                raise IOFailure(
                    f"{self._where(version)}: not hashed yet (no version) "
                    f"after {DEADLINE} s"
                )
            await self._sleep(inode, min(VERSION_POLL, deadline - now))

    async def _sleep(self, inode: int, delay: float) -> None:
        waiter: Deferred[None] = Deferred()
        call: IDelayedCall = self.clock.callLater(delay, waiter.callback, None)
        self._waiting.setdefault(inode, []).append(waiter)
        try:
            await waiter
        finally:
            if call.active():
                call.cancel()
            waiters = self._waiting.get(inode, [])
            if waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiting[inode]

    async def _until(self, d: Deferred[T], deadline: float, version: FileVersion) -> T:
        """
        Wait for C{d}, at most until the deadline (the work behind it goes
        on: C{d} is an observer).
        """
        remaining = deadline - self.clock.seconds()
        if not d.called:
            if remaining <= 0:
                d.cancel()
            else:
                d.addTimeout(remaining, self.clock)
        try:
            return await d
        except (TimeoutError, CancelledError):
            if self._closed:
                raise
            raise IOFailure(
                f"{self._where(version)}: no data within {DEADLINE} s"
            ) from None

    def _transfer(self, version: FileVersion, digest: bytes) -> _Transfer:
        key = (version.inode, digest)
        transfer = self._transfers.get(key)
        if transfer is None:
            transfer = _Transfer(version, digest)
            self._transfers[key] = transfer
            idle = [k for k, t in self._transfers.items() if k != key and not t.busy()]
            for old in idle[: max(0, len(self._transfers) - MAX_TRANSFERS)]:
                del self._transfers[old]
        else:
            # The peers that have the version change as notifications come.
            transfer.version = version
            self._transfers.move_to_end(key)
        return transfer

    def _follow(self, transfer: _Transfer, offset: int, end: int) -> None:
        """
        Track sequential access: a read that starts near where the last one
        ended (within a piece either way: the kernel's parallel reads come
        out of order), or within the read-ahead (whose pieces were read
        from the blob, without asking here), doubles the read-ahead window;
        another resets it.
        """
        ahead = max(transfer.next_offset, transfer.ahead_end)
        if transfer.next_offset - PIECE_SIZE <= offset <= ahead + PIECE_SIZE:
            transfer.window = min(max(1, 2 * transfer.window), MAX_READAHEAD)
            transfer.next_offset = max(transfer.next_offset, end)
        else:
            transfer.window = 0
            transfer.next_offset = end

    def _read_ahead(self, transfer: _Transfer, last: int, budget: int | None) -> None:
        """
        Start fetching the pieces of the window after the last one read,
        while requests are free (read-ahead never queues before reads), and
        within the budget of a large file.
        """
        window = transfer.window
        if budget is not None:
            window = min(window, self._ahead(budget))
        # The window is ahead of the furthest sequential read: reads in
        # parallel do not stack theirs.
        furthest = max(last, (transfer.next_offset - 1) // PIECE_SIZE)
        for index in range(last + 1, min(furthest + 1 + window, transfer.count)):
            if (
                transfer.semaphore.tokens <= 0
                or transfer.unkept >= MAX_UNKEPT
                or self._unkept >= self._unkept_room()
            ):
                break
            if budget is not None and self._holding(transfer) >= budget // PIECE_SIZE:
                break
            if not transfer.has(index):
                self._piece(transfer, index)
            transfer.ahead_end = max(transfer.ahead_end, transfer.bounds(index)[1])

    def _holding(self, transfer: _Transfer) -> int:
        """
        @return: the pieces a transfer's blob holds or will: kept, in
            flight, verified and held in memory until written, and being
            released.
        """
        coming = sum(1 for index in transfer.pieces if index not in transfer.kept)
        return len(transfer.kept) + coming + len(transfer.releasing)

    async def _trim(
        self,
        transfer: _Transfer,
        blob: Blob | None,
        first: int,
        last: int,
        budget: int,
    ) -> None:
        """
        Keep the blob of a file larger than the working area within its
        budget (#largedl), with room for the read-ahead: release the pieces
        behind a sequential reader, or those least recently read or
        written; never those being read, fetched, held in memory or
        written.
        """
        if blob is None or not transfer.kept:
            return
        window = min(transfer.window, self._ahead(budget))
        excess = self._holding(transfer) - max(0, budget // PIECE_SIZE - window)
        if excess <= 0:
            return
        candidates = [
            index
            for index in transfer.kept
            if not first <= index <= last
            and not transfer.reading.get(index)
            and index not in transfer.pieces
        ]
        if transfer.window > 0:
            # Behind the reader first; ahead of it only if still too much.
            candidates.sort(key=lambda index: index > last)
        victims = candidates[:excess]
        if not victims:
            return
        for index in victims:
            del transfer.kept[index]
        ranges = ByteRanges.of(*(transfer.bounds(index) for index in victims))
        transfer.present = transfer.present - ranges
        # Still on disk until released: counted meanwhile, and not written
        # again before (the hole would be punched into the new bytes).
        release = _Shared[None]()
        for index in victims:
            transfer.releasing[index] = release
        release.run(self._release(transfer, blob, ranges, victims, release))
        await release.observe()

    def _ahead(self, budget: int) -> int:
        """
        @return: the read-ahead, in pieces, of a file kept within a budget:
            half of it.
        """
        return max(1, budget // PIECE_SIZE // 2)

    def _budget(self, transfer: _Transfer) -> int | None:
        """
        @return: the bytes the blob of a file larger than the working area
            may keep (#largedl): L{STREAM_WINDOW} read sequentially, at
            most half the working area either way; C{None} for a file that
            fits.
        """
        area = self.blobs.working_area()
        if area is None or transfer.version.size <= area:
            return None
        if transfer.window > 0:
            return min(STREAM_WINDOW, area // 2)
        return area // 2

    async def _release(
        self,
        transfer: _Transfer,
        blob: Blob,
        ranges: ByteRanges,
        victims: list[int],
        release: _Shared[None],
    ) -> None:
        try:
            await self.blobs.release(blob, ranges)
        except Exception as e:
            log.warn(
                "{arena}/{path}: could not release {size} bytes behind the "
                "reader: {error}",
                arena=self.arena,
                path=transfer.version.path,
                size=ranges.total(),
                error=describe(e) if isinstance(e, RealizeError) else repr(e),
            )
        finally:
            for index in victims:
                if transfer.releasing.get(index) is release:
                    del transfer.releasing[index]

    def _piece(self, transfer: _Transfer, index: int) -> _Shared[bytes]:
        shared = transfer.pieces.get(index)
        if shared is None or shared.failed:
            shared = _Shared()
            transfer.pieces[index] = shared
            shared.run(self._fetch_piece(transfer, index, shared))
        return shared

    # Fetching.

    async def _open_blob(self, transfer: _Transfer) -> Blob | None:
        try:
            blob = await self.blobs.open(transfer.version.inode, transfer.digest)
        except RealizeError as e:
            log.warn(
                "{arena}/{path}: no blob ({error}): data is read through, not kept",
                arena=self.arena,
                path=transfer.version.path,
                error=describe(e),
            )
            return None
        transfer.opened = blob
        transfer.present = blob.ranges
        transfer.kept = OrderedDict(
            (index, None) for index in range(transfer.count) if transfer.has(index)
        )
        return blob

    async def _fetch_piece(
        self,
        transfer: _Transfer,
        index: int,
        shared: _Shared[bytes],
    ) -> bytes:
        inode = transfer.version.inode
        self._pin(inode)

        def forget() -> None:
            if transfer.pieces.get(index) is shared:
                del transfer.pieces[index]
            self._unpin(inode)

        try:
            await transfer.semaphore.acquire()
            try:
                if transfer.count == 1:
                    # One leaf: the version's root is that leaf's hash.
                    leaves: tuple[bytes, ...] = (transfer.digest,)
                else:
                    if transfer.leaves is None or transfer.leaves.failed:
                        transfer.leaves = _Shared.start(self._fetch_leaves(transfer))
                    leaves = await transfer.leaves.observe()
                start, end = transfer.bounds(index)
                data = await self._fetch_verified(transfer, leaves[index], start, end)
            finally:
                transfer.semaphore.release()
            if self.fetched is not None:
                self.fetched(len(data))
        except BaseException:
            forget()
            raise
        self._hold(transfer, index, data, forget)
        return data

    def _hold(
        self,
        transfer: _Transfer,
        index: int,
        data: bytes,
        forget: Callable[[], None],
    ) -> None:
        """
        Keep a verified piece in memory while it is written: until the bytes
        are recorded, reads of this piece take them from there (its shared
        result, or L{verified}) rather than fetching them again; then
        C{forget} drops the shared piece (and the file's pin).
        """
        key = (transfer.version.inode, transfer.digest, index)
        with self._memory_lock:
            self._memory[key] = data
        transfer.unkept += 1
        self._unkept += 1

        def kept(_: object) -> None:
            transfer.unkept -= 1
            self._unkept -= 1
            with self._memory_lock:
                self._memory.pop(key, None)
            forget()
            if transfer.unkept == 0:
                settled, transfer.settled = transfer.settled, []
                for waiter in settled:
                    waiter.callback(None)

        keeping = Deferred.fromCoroutine(self._keep_when_open(transfer, index, data))
        keeping.addErrback(
            lambda f: log.failure("keeping a verified piece failed", f)
        ).addBoth(kept)

    def _pin(self, inode: int) -> None:
        if self.pins is not None:
            self.pins.hold(inode)

    def _unpin(self, inode: int) -> None:
        if self.pins is not None:
            self.pins.drop(inode)

    # Small files, in batches.

    def prefetch(self, versions: Sequence[FileVersion]) -> None:
        """
        Start fetching whole small files (one leaf each) in batches, one
        C{ReadFiles} per peer: each is verified against its version's hash
        (its root is its one leaf), held in memory for the reads that
        follow (L{verified}) and written to its blob.  In the reactor
        thread; nothing waits for it.  Files already present or being
        fetched, not of one leaf, or that no connected peer has are left
        out; at most L{PREFETCH_FILES} files and L{PREFETCH_BYTES} bytes,
        and, with a block cache, small files being prefetched take at most
        1 / L{HELD_AREA_SHARE} of its working area (those of earlier
        batches not written yet included).  A file whose batch fails is
        fetched again, alone, by its next read.  Each file is pinned until
        its bytes are written or its fetch failed, and counted in
        L{fetched} once verified.

        @param versions: the files' default versions, with their hashes.
        """
        if self._closed:
            return
        batches: dict[PeerId, tuple[RemoteData, list[_Prefetch]]] = {}
        room = PREFETCH_BYTES
        area = self.blobs.working_area()
        if area is not None:
            # Pinned until written: never so many that the cache must evict
            # what it protects to make room.
            room = min(room, area // HELD_AREA_SHARE - self._prefetching)
        total = 0
        for version in versions[:PREFETCH_FILES]:
            digest = version.hash
            if (
                digest is None
                or version.arena != self.arena
                or not 0 < version.size <= PIECE_SIZE
            ):
                continue
            if total + version.size > room:
                break
            transfer = self._transfer(version, digest)
            pending = transfer.pieces.get(0)
            if transfer.has(0) or (pending is not None and not pending.failed):
                continue
            source = next(iter(self._peers(transfer, set())), None)
            if source is None:
                continue
            if transfer.blob is None:
                transfer.blob = _Shared.start(self._open_blob(transfer))
            item = _Prefetch(transfer, source[0])
            transfer.pieces[0] = item.shared
            item.shared.run(self._prefetched(item))
            batches.setdefault(source[0], (source[1], []))[1].append(item)
            total += version.size
        for store, items in batches.values():
            Deferred.fromCoroutine(self._read_batch(store, items)).addErrback(
                lambda f: log.failure("a small-file batch failed", f)
            )

    async def _read_batch(self, store: RemoteData, items: list[_Prefetch]) -> None:
        files = [
            (item.transfer.version.path, item.transfer.version.size) for item in items
        ]
        try:
            results = await self._timed(store.read_files(self.arena, files))
            if len(results) != len(items):
                raise IOFailure(f"{store.describe()}: {len(results)} files answered")
        except (RealizeError, TimeoutError) as e:
            for item in items:
                # (If cancelled, as the downloader closed, this is ignored.)
                item.arrived.errback(Failure(e))
            return
        for item, result in zip(items, results, strict=True):
            if isinstance(result, RealizeError):
                item.arrived.errback(Failure(result))
            else:
                item.arrived.callback(result.data)

    async def _prefetched(self, item: _Prefetch) -> bytes:
        transfer = item.transfer
        inode = transfer.version.inode
        self._pin(inode)
        self._prefetching += transfer.version.size

        def forget() -> None:
            if transfer.pieces.get(0) is item.shared:
                del transfer.pieces[0]
            self._unpin(inode)
            self._prefetching -= transfer.version.size

        try:
            data = await item.arrived
            if len(data) != transfer.version.size or leaf_hash(data) != transfer.digest:
                transfer.bad.add(item.peer)
                log.warn(
                    "{arena}/{path}: the bytes from {peer} do not match version {hash}",
                    arena=self.arena,
                    path=transfer.version.path,
                    peer=item.peer,
                    hash=format_hash(transfer.digest),
                )
                raise IOFailure(
                    f"{self._where(transfer.version)}: bytes do not match the version"
                )
            if self.fetched is not None:
                self.fetched(len(data))
        except BaseException:
            forget()
            raise
        self._hold(transfer, 0, data, forget)
        return data

    async def _keep_when_open(
        self, transfer: _Transfer, index: int, data: bytes
    ) -> None:
        """
        Write verified bytes into the version's blob once it is open (not
        at all if it could not be made), and once a release of their range
        is done.
        """
        releasing = transfer.releasing.get(index)
        if releasing is not None:
            await releasing.observe()
        if transfer.blob is None:
            # The blob went (evicted, outdated) since: a new one.
            transfer.blob = _Shared.start(self._open_blob(transfer))
        blob = await transfer.blob.observe()
        if blob is not None:
            await self._keep(transfer, blob, index, data)

    async def _keep(
        self, transfer: _Transfer, blob: Blob, index: int, data: bytes
    ) -> None:
        """
        Write verified bytes into the blob; a failure (full disk) is logged
        and the bytes are served all the same.  A blob gone meanwhile
        (evicted, outdated) is let go: the next read opens a new one.
        """
        start = transfer.bounds(index)[0]
        try:
            ranges = await self.blobs.write(blob, start, data)
        except RealizeError as e:
            log.warn(
                "{arena}/{path}: could not keep [{start}, {end}): {error}",
                arena=self.arena,
                path=transfer.version.path,
                start=start,
                end=start + len(data),
                error=describe(e),
            )
        else:
            if ranges is None:
                if transfer.opened is blob:
                    transfer.blob = None
                    transfer.opened = None
                    transfer.present = ByteRanges()
                    transfer.kept.clear()
                return
            # What the db says, but never a range released meanwhile (the
            # answer may predate the release): only this piece is added.
            piece = ByteRanges.of((start, start + len(data)))
            transfer.present = transfer.present & ranges
            if ranges.contains(start, start + len(data)):
                transfer.present = transfer.present | piece
                transfer.kept[index] = None
                transfer.kept.move_to_end(index)

    def _peers(
        self, transfer: _Transfer, tried: set[PeerId]
    ) -> Iterable[tuple[PeerId, RemoteData]]:
        """
        The connected peers having the version, not yet tried for this
        request and not known to send bad data for it.
        """
        for peer in transfer.version.peers:
            if peer in tried or peer in transfer.bad:
                continue
            tried.add(peer)
            store = self.stores(peer)
            if store is not None:
                yield peer, store

    async def _fetch_leaves(self, transfer: _Transfer) -> tuple[bytes, ...]:
        version = transfer.version
        expected = transfer.count
        errors: list[str] = []
        for peer, store in self._peers(transfer, set()):
            try:
                state = await self._timed(
                    store.hash(self.arena, version.path, 0, version.size)
                )
            except (RealizeError, TimeoutError) as e:
                errors.append(f"{store.describe()}: {describe(e)}")
                continue
            leaves = tuple(state.leaves)
            if len(leaves) == expected and merkle_root(leaves) == transfer.digest:
                return leaves
            transfer.bad.add(peer)
            log.warn(
                "{arena}/{path}: {peer} sent leaves that do not make version {hash}",
                arena=self.arena,
                path=version.path,
                peer=store.describe(),
                hash=format_hash(transfer.digest),
            )
            errors.append(f"{store.describe()}: leaves do not match the version")
        raise self._failure(transfer, "its Merkle leaves", errors)

    async def _fetch_verified(
        self, transfer: _Transfer, leaf: bytes, start: int, end: int
    ) -> bytes:
        version = transfer.version
        errors: list[str] = []
        for peer, store in self._peers(transfer, set()):
            try:
                data = await self._timed(
                    self._read_range(store, version.path, start, end)
                )
            except (RealizeError, TimeoutError) as e:
                errors.append(f"{store.describe()}: {describe(e)}")
                continue
            if len(data) == end - start and leaf_hash(data) == leaf:
                return data
            transfer.bad.add(peer)
            log.warn(
                "{arena}/{path}: bytes [{start}, {end}) from {peer} do not match "
                "version {hash}; trying another peer",
                arena=self.arena,
                path=version.path,
                start=start,
                end=end,
                peer=store.describe(),
                hash=format_hash(transfer.digest),
            )
            errors.append(f"{store.describe()}: bytes do not match the version")
        raise self._failure(transfer, f"bytes [{start}, {end})", errors)

    def _failure(self, transfer: _Transfer, what: str, errors: list[str]) -> IOFailure:
        why = "; ".join(errors) if errors else "no connected peer has this version"
        log.error(
            "{arena}/{path}: cannot fetch {what} of version {hash}: {why}",
            arena=self.arena,
            path=transfer.version.path,
            what=what,
            hash=format_hash(transfer.digest),
            why=why,
        )
        return IOFailure(f"{self._where(transfer.version)}: cannot fetch {what}: {why}")

    async def _timed(self, work: Coroutine[Any, Any, T]) -> T:
        d = Deferred.fromCoroutine(work)
        d.addTimeout(REQUEST_TIMEOUT, self.clock)
        return await d

    async def _read_range(
        self, store: RemoteData, path: str, start: int, end: int
    ) -> bytes:
        stream = store.read(self.arena, path, start, end)
        chunks: list[bytes] = []
        got = 0
        finished = False
        try:
            async for chunk in stream:
                chunks.append(chunk)
                got += len(chunk)
                if got > end - start:
                    break
            finished = True
        finally:
            if not finished or got > end - start:
                stream.cancel()
        if got <= end - start:
            # What counts is that the bytes verify, not what the peer says.
            with contextlib.suppress(RealizeError):
                await stream.result()
        return b"".join(chunks)

    def _where(self, version: FileVersion) -> str:
        return f"{self.arena}/{version.path}"


class _Vanished(IOFailure):
    """
    Cached bytes a read counted on were gone when it read them.
    """


if TYPE_CHECKING:
    from realize.interfaces import Store
    from realize.storage.blobs import BlobStore

    def _is_remote_data(store: Store) -> RemoteData:
        return store

    def _is_blob_access(blobs: BlobStore) -> BlobAccess:
        return blobs
