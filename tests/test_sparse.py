"""
Sparse files moved hole by hole (issue 15 item 5): holes found at the
reading side with C{SEEK_DATA}/C{SEEK_HOLE} and hashed from the digest of
zeros (L{realize.storage.streams.LocalSparseStream}), sent as their length
(L{realize.net.codec.SparseEncoder}), and left unallocated at the writing
side (L{realize.storage.local.LocalStore.write_sparse}); the mover uses
them when both sides can (L{realize.interfaces.SparseStore}).

What shows that a hole was neither read, sent nor written: the
destination's allocated blocks (C{st_blocks}), the bytes the mover counts
as sent, the bytes read at the source.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from realize.config import Config, parse_config
from realize.errors import BadRequest, Conflict, IOFailure
from realize.hashing import LeafHasher, merkle_root
from realize.interfaces import SparseStore
from realize.model import ArenaName, FileState, Hole
from realize.net.codec import SparseDecoder, SparseEncoder
from realize.net.server import StoreResponders
from realize.services.mover import Mover
from realize.services.store import StoreService
from realize.storage.fs import hash_range
from realize.storage.local import LocalStore
from realize.storage.memory import MemoryStore
from tests.helpers import failure_of, result_of, sync_run_in_thread
from tests.test_net_store import RemoteTestCase

A = ArenaName("a")
MiB = 1 << 20

#: The file of the issue: 2 GiB holding 5 bytes at offset 1 GB.
SIZE = 2 << 30
OFFSET = 1_000_000_000
DATA = b"hello"

#: Most a destination may allocate for it: "a few MiB".
FEW_MIB = 4 * MiB


def make_sparse(
    path: str, size: int = SIZE, data: dict[int, bytes] | None = None
) -> str:
    """
    Make a sparse file of C{size} bytes holding C{data} (offset to bytes;
    by default the 5 bytes at 1 GB).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, chunk in (data if data is not None else {OFFSET: DATA}).items():
            f.seek(offset)
            f.write(chunk)
    return path


def allocated(path: str) -> int:
    """
    @return: bytes the file takes on disk.
    """
    return os.stat(path).st_blocks * 512


def read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def file_leaves(path: str) -> tuple[bytes, ...]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return tuple(hash_range(fd, 0, os.fstat(fd).st_size))
    finally:
        os.close(fd)


async def pieces(*items: bytes | Hole) -> AsyncIterator[bytes | Hole]:
    for item in items:
        yield item


async def collect(stream: Any) -> tuple[list[bytes | Hole], FileState]:
    items = [item async for item in stream]
    return items, await stream.result()


def total(items: list[bytes | Hole]) -> int:
    return sum(i.length if isinstance(i, Hole) else len(i) for i in items)


class _Local(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.src = os.path.join(self.base, "src")
        self.dst = os.path.join(self.base, "dst")
        for directory in (self.src, self.dst):
            os.makedirs(directory)
        self.source = LocalStore.single(A, self.src, sync_run_in_thread)
        self.destination = LocalStore.single(A, self.dst, sync_run_in_thread)

    def count_reads(self) -> list[int]:
        """
        @return: a list that gets the byte count of every C{pread}.
        """
        counts: list[int] = []
        pread = os.pread

        def counting(fd: int, length: int, offset: int) -> bytes:
            data = pread(fd, length, offset)
            counts.append(len(data))
            return data

        self.patch(os, "pread", counting)
        return counts


class LocalSparseTests(_Local):
    """
    Sparse reads and writes of L{LocalStore}.
    """

    def test_capability(self) -> None:
        """
        A local store moves sparse files; the in-memory one does not claim
        to.
        """
        self.assertIsInstance(self.source, SparseStore)
        self.assertTrue(result_of(self, self.source.sparse()))
        self.assertNotIsInstance(MemoryStore(), SparseStore)

    def test_read_sparse(self) -> None:
        """
        A sparse read of the 2 GiB file gives a hole, the little data the
        filesystem holds around the 5 bytes, and a hole; it reads only that
        data, and its leaves are the file's.
        """
        path = make_sparse(os.path.join(self.src, "f"))
        reads = self.count_reads()
        items, state = result_of(
            self, collect(self.source.read_sparse(A, "f", 0, SIZE, hash_from=0))
        )
        self.assertEqual([type(i) for i in items], [Hole, bytes, Hole])
        self.assertEqual(total(items), SIZE)
        self.assertIn(DATA, items[1])
        self.assertLessEqual(sum(reads), MiB)
        self.assertEqual(state.size, SIZE)
        self.assertEqual(state.leaves, file_leaves(path))

    def test_read_sparse_from_offset(self) -> None:
        """
        A sparse read that starts in the middle hashes from C{hash_from}
        and gives the bytes from C{start}, holes included.
        """
        path = make_sparse(
            os.path.join(self.src, "f"),
            8 * MiB,
            {0: b"head", 5 * MiB + 3: b"x" * 100},
        )
        items, state = result_of(
            self,
            collect(self.source.read_sparse(A, "f", 2 * MiB + 7, 8 * MiB, hash_from=0)),
        )
        self.assertEqual(total(items), 8 * MiB - 2 * MiB - 7)
        self.assertIsInstance(items[0], Hole)
        self.assertEqual(state.leaves, file_leaves(path))
        data = b"".join(bytes(i.length) if isinstance(i, Hole) else i for i in items)
        self.assertEqual(data, read_at(path, 2 * MiB + 7, 8 * MiB))

    def test_dense_file_seeks_once(self) -> None:
        """
        A sparse read of a file without holes looks for holes once, not
        for every chunk (on tmpfs each C{SEEK_HOLE} scans the pages up to
        the hole: per chunk, that was quadratic in the file's size).
        """
        with open(os.path.join(self.src, "f"), "wb") as f:
            f.write(os.urandom(16 * MiB))
        seeks: list[int] = []
        lseek = os.lseek

        def counting(fd: int, offset: int, whence: int) -> int:
            seeks.append(whence)
            return lseek(fd, offset, whence)

        self.patch(os, "lseek", counting)
        items, state = result_of(
            self, collect(self.source.read_sparse(A, "f", 0, 16 * MiB, hash_from=0))
        )
        self.assertEqual(len(items), 16)
        self.assertEqual(state.size, 16 * MiB)
        self.assertLessEqual(len(seeks), 2)

    def test_write_sparse(self) -> None:
        """
        A sparse write of data and holes makes a file with that content
        whose holes take no room, and answers the leaves of the content.
        """
        content = [b"a" * 1000, Hole(OFFSET - 1000), DATA, Hole(SIZE - OFFSET - 5)]
        result = result_of(
            self,
            self.destination.write_sparse(
                A, "f", 0, SIZE, SIZE, pieces(*content), hash=True
            ),
        )
        result_of(self, self.destination.finish(A, "f"))
        path = os.path.join(self.dst, "f")
        self.assertEqual(os.path.getsize(path), SIZE)
        self.assertLessEqual(allocated(path), FEW_MIB)
        self.assertEqual(read_at(path, OFFSET - 2, 9), b"\0\0hello\0\0")
        self.assertEqual(read_at(path, 0, 1001), b"a" * 1000 + b"\0")
        self.assertEqual(result.leaves, file_leaves(path))

    def test_hole_over_data(self) -> None:
        """
        A hole written over bytes the partial file holds (a resumed or
        repaired file) makes them zeros and frees their room.
        """
        partial = os.path.join(self.dst, ".f.part")
        with open(partial, "wb") as f:
            f.write(os.urandom(8 * MiB))
        result = result_of(
            self,
            self.destination.write_sparse(
                A,
                "f",
                MiB,
                7 * MiB,
                8 * MiB,
                pieces(Hole(5 * MiB), b"z" * MiB),
                hash=True,
            ),
        )
        self.assertEqual(read_at(partial, MiB, 5 * MiB), bytes(5 * MiB))
        self.assertEqual(read_at(partial, 6 * MiB, MiB), b"z" * MiB)
        self.assertLessEqual(allocated(partial), 3 * MiB + FEW_MIB // 4)
        self.assertEqual(result.leaves, file_leaves(partial)[1:7])

    def test_range_ending_in_hole(self) -> None:
        """
        A range that ends in a hole past the end of the partial file (not
        at the end of the file) leaves the file at least as long as the
        range.
        """
        result_of(
            self,
            self.destination.write_sparse(
                A, "f", 0, 4 * MiB, 8 * MiB, pieces(b"x", Hole(4 * MiB - 1))
            ),
        )
        self.assertEqual(os.path.getsize(os.path.join(self.dst, ".f.part")), 4 * MiB)

    def test_hole_too_long(self) -> None:
        """
        A hole that goes past the announced range is a conflict, like too
        much data.
        """
        error = failure_of(
            self,
            self.destination.write_sparse(A, "f", 0, MiB, MiB, pieces(b"x", Hole(MiB))),
            Conflict,
        )
        self.assertIn("more data than the announced", str(error))


class CodecTests(SynchronousTestCase):
    """
    L{SparseEncoder} and L{SparseDecoder}: holes on the wire.
    """

    def test_round_trip(self) -> None:
        """
        Data and holes come back as they were; a hole costs two chunks,
        an empty one and 8 bytes of length.
        """
        items: list[bytes | Hole] = [b"ab", Hole(5), b"c", Hole(1 << 40), Hole(1)]
        chunks = result_of(self, _gather(SparseEncoder(pieces(*items))))
        self.assertEqual(len(chunks), 8)
        self.assertEqual(chunks[1:3], [b"", (5).to_bytes(8, "big")])
        decoded = result_of(self, _gather(SparseDecoder(_bytes(chunks))))
        self.assertEqual(decoded, items)

    def test_malformed(self) -> None:
        """
        A stream that ends after a hole mark, or gives a length of the
        wrong size or zero, is refused with the decoder's error.
        """
        for chunks in ([b"x", b""], [b"", b"123"], [b"", bytes(8)]):
            failure_of(self, _gather(SparseDecoder(_bytes(chunks))), BadRequest)
        failure_of(self, _gather(SparseDecoder(_bytes([b""]), IOFailure)), IOFailure)


async def _gather(stream: Any) -> list[Any]:
    return [item async for item in stream]


async def _bytes(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class MoverSparseTests(_Local):
    """
    The mover moves a sparse file hole by hole between stores that can.
    """

    def move(self, source: Any, destination: Any) -> Mover:
        mover = Mover(source, destination, log_moves=False)
        report = result_of(self, mover.move([A]))
        self.assertTrue(report.ok, report)
        return mover

    def test_local_to_local(self) -> None:
        """
        The 2 GiB file with 5 bytes moves with a few KiB read and sent,
        allocates at most a few MiB at the destination, keeps its content
        and root, and is gone at the source.
        """
        make_sparse(os.path.join(self.src, "dir", "f"))
        reads = self.count_reads()
        mover = self.move(self.source, self.destination)
        path = os.path.join(self.dst, "dir", "f")
        self.assertEqual(os.path.getsize(path), SIZE)
        self.assertLessEqual(allocated(path), FEW_MIB)
        self.assertEqual(read_at(path, OFFSET, 5), DATA)
        self.assertLessEqual(mover.stats.copied_bytes, MiB)
        self.assertLessEqual(sum(reads), MiB)
        self.assertFalse(os.path.exists(os.path.join(self.src, "dir", "f")))
        hasher = LeafHasher()
        hasher.update_zeros(OFFSET)
        hasher.update(DATA)
        hasher.update_zeros(SIZE - OFFSET - len(DATA))
        [result] = mover.report.moved
        self.assertEqual(result.root, merkle_root(hasher.finish()))

    def test_dense_file(self) -> None:
        """
        A file without holes moves as before through the sparse path.
        """
        data = os.urandom(3 * MiB + 77)
        with open(os.path.join(self.src, "dense"), "wb") as f:
            f.write(data)
        mover = self.move(self.source, self.destination)
        with open(os.path.join(self.dst, "dense"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(mover.stats.copied_bytes, len(data))

    def test_resume_over_stale_partial(self) -> None:
        """
        A destination partial holding other bytes where the source has a
        hole is verified and repaired: the file arrives as the source is.
        """
        make_sparse(os.path.join(self.src, "f"), 6 * MiB, {5 * MiB: b"tail"})
        with open(os.path.join(self.dst, ".f.part"), "wb") as f:
            f.write(os.urandom(3 * MiB))
        self.move(self.source, self.destination)
        path = os.path.join(self.dst, "f")
        self.assertEqual(read_at(path, 0, 5 * MiB), bytes(5 * MiB))
        self.assertEqual(read_at(path, 5 * MiB, 4), b"tail")

    def test_cannot_tell(self) -> None:
        """
        If a side cannot say whether it moves holes, the file goes as zeros,
        with a warning, and arrives whole.
        """

        class Unsure(LocalStore):
            async def sparse(self) -> bool:
                raise IOFailure("no answer")

        make_sparse(os.path.join(self.src, "f"), 3 * MiB, {2 * MiB: b"x"})
        destination = Unsure.single(A, self.dst, sync_run_in_thread)
        with capturedLogs() as events:
            mover = self.move(self.source, destination)
        self.assertEqual(mover.stats.copied_bytes, 3 * MiB)
        self.assertEqual(read_at(os.path.join(self.dst, "f"), 2 * MiB, 2), b"x\0")
        warned = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warned), 1)
        self.assertIn("no answer", str(warned[0].get("error")))

    def test_memory_destination(self) -> None:
        """
        Toward a store that does not move holes, a sparse file is sent as
        zeros, and arrives whole.
        """
        make_sparse(os.path.join(self.src, "f"), 3 * MiB, {2 * MiB: b"x"})
        destination = MemoryStore.with_files("a", label="dst")
        self.move(self.source, destination)
        self.assertEqual(
            destination.content("a", "f"), bytes(2 * MiB) + b"x" + bytes(MiB - 1)
        )


class RemoteSparseTests(RemoteTestCase):
    """
    Sparse reads and writes over the wire, against a daemon's store.
    """

    def setUp(self) -> None:
        super().setUp()
        self.base = Path(self.mktemp())
        (self.base / "docs").mkdir(parents=True)
        self.local = self.base / "local"
        self.local.mkdir()
        peers = {p.id: {"pubkey": p.pem} for p in (self.a, self.b, self.c)}
        self.config: Config = parse_config(
            {"peers": peers, "arena": [{"name": "docs", "datadir": "docs"}]},
            "realize.toml",
            self.base,
        )
        self.service = StoreService(self.config, sync_run_in_thread)
        self.link = self.open_link(
            self.a, self.service.view, server_lookup=self.config.peer_by_spki().get
        )
        self.remote = self.link.remote()

    def test_features(self) -> None:
        """
        The daemon's Arenas answer names the sparse feature; a daemon that
        serves an in-memory store does not.
        """
        self.assertTrue(self.call(self.remote.sparse()))
        memory = MemoryStore.with_files("docs")
        other = self.open_link(self.a, lambda peer: memory).remote()
        self.assertFalse(self.call(other.sparse()))

    def test_older_peer(self) -> None:
        """
        A peer that does not know the Features command (older) has no
        features: holes go to it as zeros.
        """
        self.patch(
            StoreResponders,
            "_commandDispatch",
            {
                name: entry
                for name, entry in StoreResponders._commandDispatch.items()
                if name != b"Features"
            },
        )
        older = self.open_link(
            self.a, self.service.view, server_lookup=self.config.peer_by_spki().get
        ).remote()
        self.assertFalse(self.call(older.sparse()))
        self.assertEqual(self.call(older.arenas()), [ArenaName("docs")])

    def test_read_sparse(self) -> None:
        """
        A sparse Read sends the holes as their length: the client gets a
        hole, the data and a hole, and the file's leaves.
        """
        path = make_sparse(str(self.base / "docs" / "f"))
        stream = self.remote.read_sparse(ArenaName("docs"), "f", 0, SIZE, hash_from=0)
        items, state = self.call(collect(stream))
        self.assertEqual([type(i) for i in items], [Hole, bytes, Hole])
        self.assertEqual(total(items), SIZE)
        self.assertEqual(state.leaves, file_leaves(path))
        self.assertLess(self.link.client.bytes_received, MiB)

    def test_write_sparse(self) -> None:
        """
        A sparse Write makes the file on the daemon with its holes
        unallocated.
        """
        content = [Hole(OFFSET), DATA, Hole(SIZE - OFFSET - len(DATA))]
        result = self.call(
            self.remote.write_sparse(
                ArenaName("docs"), "f", 0, SIZE, SIZE, pieces(*content), hash=True
            )
        )
        path = str(self.base / "docs" / ".f.part")
        self.assertEqual(os.path.getsize(path), SIZE)
        self.assertLessEqual(allocated(path), FEW_MIB)
        self.assertEqual(result.leaves, file_leaves(path))
        self.assertLess(self.link.server.bytes_received, MiB)

    def test_move_up_and_down(self) -> None:
        """
        The mover moves the sparse file to the daemon and back, holes
        unallocated both times.
        """
        make_sparse(str(self.local / "f"))
        local = LocalStore.single(
            ArenaName("docs"), str(self.local), sync_run_in_thread
        )
        for source, destination, where in (
            (local, self.remote, self.base / "docs" / "f"),
            (self.remote, local, self.local / "f"),
        ):
            mover = Mover(source, destination, log_moves=False)
            report = self.call(mover.move([ArenaName("docs")]))
            self.assertTrue(report.ok, report)
            self.assertEqual(os.path.getsize(where), SIZE)
            self.assertLessEqual(allocated(str(where)), FEW_MIB)
            self.assertEqual(read_at(str(where), OFFSET, 5), DATA)
            self.assertLessEqual(mover.stats.copied_bytes, MiB)
