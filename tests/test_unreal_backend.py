"""
Tests for the read path of L{realize.services.unreal.UnrealBackend}, over
fakes of the view, the bridge and the downloader: what is local is served
in the calling (FUSE) thread, the rest through the bridge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from realize.model import KIND_FILE, ArenaName, Entry, PeerId
from realize.services.downloader import PIECE_SIZE
from realize.services.unreal import SMALL_STREAK, VERSION_REFRESH, UnrealBackend
from realize.storage.blobs import QUEUE_WORKING, CachedState
from realize.storage.unrealview import FileVersion

ARENA = ArenaName("docs")
INODE = 1234
DIGEST = b"\7" * 32
SIZE = 3 * PIECE_SIZE + 100


class FakeView:
    def __init__(self) -> None:
        self.complete = False
        self.digest = DIGEST
        self.blob: dict[int, bytes] = {}  # offset -> bytes present there
        self.read_cached_calls = 0
        self.version_calls = 0
        self.size = SIZE
        self.after: list[FileVersion] = []
        self.after_of: dict[int, list[FileVersion]] = {}

    def getattr(self, inode: int) -> Entry | None:
        return Entry(inode, KIND_FILE, self.size, 10, self.digest, 1)

    def locate(self, inode: int) -> tuple[ArenaName, str]:
        return ARENA, "f"

    def arena_of(self, inode: int) -> ArenaName:
        return ARENA

    def cached(self, arena: str, inode: int, digest: bytes) -> CachedState:
        return CachedState(SIZE if self.complete else 0, SIZE, QUEUE_WORKING)

    def read_cached(
        self, arena: str, inode: int, digest: bytes, start: int, end: int
    ) -> bytes | None:
        self.read_cached_calls += 1
        data = self.blob.get(start)
        return None if data is None else data[: end - start]

    def version(self, inode: int) -> FileVersion:
        self.version_calls += 1
        return FileVersion(ARENA, inode, "f", self.size, 10, DIGEST, (PeerId("b"),))

    def small_files_after(
        self, inode: int, max_size: int, count: int
    ) -> list[FileVersion]:
        return self.after_of.get(inode, self.after)[:count]

    def query(self, arena: str, f: Callable[..., Any], *args: Any) -> Any:
        return None


class FakeBridge:
    def __init__(self) -> None:
        self.calls = 0
        self.posted: list[tuple[Any, ...]] = []

    def call(self, f: Callable[[], Deferred[bytes]]) -> bytes:
        self.calls += 1
        result: list[bytes] = []
        f().addCallback(result.append)
        return result[0]

    def post(self, f: Callable[..., object], *args: Any) -> None:
        self.posted.append((f, *args))


class FakeDownloader:
    def __init__(self, view: FakeView) -> None:
        self.view = view
        self.memory: dict[int, bytes] = {}
        self.reads: list[tuple[Any, ...]] = []
        self.unwritten = False

    def writing(self, inode: int, digest: bytes) -> bool:
        return self.unwritten

    async def written(self, inode: int, digest: bytes) -> None:
        self.unwritten = False
        self.view.complete = True

    def verified(self, inode: int, digest: bytes, start: int, end: int) -> bytes | None:
        data = self.memory.get(start)
        return None if data is None else data[: end - start]

    def advance(self, inode: int, digest: bytes, offset: int, end: int) -> None:
        raise AssertionError("posted, not called")

    def prefetch(self, versions: list[FileVersion]) -> None:
        raise AssertionError("posted, not called")

    async def read(
        self,
        inode: int,
        offset: int,
        size: int,
        digest: bytes | None,
        version: FileVersion | None,
    ) -> bytes:
        self.reads.append((inode, offset, size, digest, version))
        return b"n" * size


class ReadPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.view = FakeView()
        self.bridge = FakeBridge()
        self.downloader = FakeDownloader(self.view)
        self.now = 100.0
        self.backend = UnrealBackend(
            self.view,  # type: ignore[arg-type]
            self.bridge,  # type: ignore[arg-type]
            {ARENA: self.downloader},  # type: ignore[dict-item]
            monotonic=lambda: self.now,
        )

    def open(self) -> int:
        return self.backend.open(INODE).handle

    def test_status_waits_for_the_writes(self) -> None:
        """
        The status of a file whose verified bytes are still being written
        to its blob waits for the writes (through the bridge): it says what
        the cache holds once a read returned.  Otherwise no reactor call.
        """
        self.assertEqual(self.backend.status(INODE), "remote")
        self.assertEqual(self.bridge.calls, 0)
        self.downloader.unwritten = True
        self.assertEqual(self.backend.status(INODE), "cached verified")
        self.assertEqual(self.bridge.calls, 1)

    def test_from_memory(self) -> None:
        """
        Bytes among the downloader's verified pieces are served at once:
        no bridge call, no blob lookup.
        """
        self.downloader.memory[PIECE_SIZE] = b"m" * 4096
        handle = self.open()
        self.assertEqual(
            self.backend.read(INODE, handle, PIECE_SIZE, 4096), b"m" * 4096
        )
        self.assertEqual((self.bridge.calls, self.view.read_cached_calls), (0, 0))

    def test_from_blob(self) -> None:
        """
        Bytes recorded in the blob are served from it: no bridge call.
        """
        self.view.blob[0] = b"c" * 100
        handle = self.open()
        self.assertEqual(self.backend.read(INODE, handle, 0, 100), b"c" * 100)
        self.assertEqual(self.bridge.calls, 0)

    def test_advance_posted_once_per_piece(self) -> None:
        """
        Of a file not complete, the first read served locally in a piece
        tells the downloader (without waiting) so that the read-ahead moves
        on; later reads in that piece do not.  Of a complete file, none.
        """
        step = 128 << 10
        for offset in range(0, 2 * PIECE_SIZE, step):
            self.view.blob[offset] = b"c" * step
        handle = self.open()
        for offset in range(0, 2 * PIECE_SIZE, step):
            self.backend.read(INODE, handle, offset, step)
        advance = self.downloader.advance
        self.assertEqual(
            self.bridge.posted,
            [
                (advance, INODE, DIGEST, 0, step),
                (advance, INODE, DIGEST, PIECE_SIZE, PIECE_SIZE + step),
            ],
        )
        self.view.complete = True
        handle = self.open()
        self.backend.read(INODE, handle, 0, step)
        self.assertEqual(len(self.bridge.posted), 2)
        self.assertEqual(self.bridge.calls, 0)

    def test_end_of_file(self) -> None:
        """
        A read at or after the end answers no bytes, asking nothing.
        """
        handle = self.open()
        self.assertEqual(self.backend.read(INODE, handle, SIZE, 4096), b"")
        self.assertEqual(self.backend.read(INODE, handle, SIZE + 5, 10), b"")
        self.assertEqual((self.bridge.calls, self.view.read_cached_calls), (0, 0))
        self.assertEqual(self.downloader.reads, [])

    def test_miss(self) -> None:
        """
        Bytes neither in memory nor in the blob are read through the
        bridge, with the version the FUSE thread just looked up.
        """
        handle = self.open()
        self.assertEqual(self.backend.read(INODE, handle, 10, 20), b"n" * 20)
        self.assertEqual(self.bridge.calls, 1)
        [(inode, offset, size, digest, version)] = self.downloader.reads
        self.assertEqual((inode, offset, size, digest), (INODE, 10, 20, DIGEST))
        self.assertEqual(version, self.view.version(INODE))
        self.assertEqual(self.view.version_calls, 2)

    def test_version_looked_up_once_a_second(self) -> None:
        """
        The version given to the downloader is read from sqlite at the first
        miss of an open file, then at most once per L{VERSION_REFRESH}.
        """
        handle = self.open()
        for offset in (0, PIECE_SIZE, 2 * PIECE_SIZE):
            self.backend.read(INODE, handle, offset, 10)
        self.assertEqual(self.view.version_calls, 1)
        self.now += VERSION_REFRESH
        self.backend.read(INODE, handle, 0, 10)
        self.assertEqual(self.view.version_calls, 2)
        self.assertEqual(self.bridge.calls, 4)

    def test_keep_cache(self) -> None:
        """
        The kernel keeps a file's pages across opens when the file is
        complete, or when the last bytes served of it were of the version
        opened (a re-read of a file read to its end before its last pieces
        were written); not for a file never read, nor after another
        version was read.
        """
        self.view.blob[0] = b"c" * 100
        self.assertFalse(self.backend.open(INODE).keep_cache)
        handle = self.open()
        self.backend.read(INODE, handle, 0, 100)
        self.assertTrue(self.backend.open(INODE).keep_cache)
        self.view.digest = b"\2" * 32  # another version, read
        self.backend.read(INODE, self.open(), 0, 100)
        self.view.digest = DIGEST
        self.assertFalse(self.backend.open(INODE).keep_cache)
        self.view.complete = True
        self.assertTrue(self.backend.open(INODE).keep_cache)

    def test_small_files_streak(self) -> None:
        """
        A second small file missed within L{SMALL_STREAK} of the first,
        that follows it in its directory, asks the downloader (without
        waiting) to fetch it with the small files after it; a first one
        alone, a large one, or one missed later, does not.
        """
        self.view.size = 4096
        sibling = FileVersion(ARENA, 99, "g", 10, 10, b"\3" * 32, (PeerId("b"),))
        following = FileVersion(
            ARENA, INODE + 1, "f2", 10, 10, b"\4" * 32, (PeerId("b"),)
        )
        self.view.after = [sibling]
        self.view.after_of[INODE] = [following, sibling]
        self.backend.read(INODE, self.open(), 0, 4096)
        self.assertEqual(self.bridge.posted, [])
        self.now += SMALL_STREAK / 2
        self.backend.read(INODE + 1, self.backend.open(INODE + 1).handle, 0, 4096)
        [(f, batch)] = self.bridge.posted
        self.assertEqual(f, self.downloader.prefetch)
        self.assertEqual([v.inode for v in batch], [INODE + 1, 99])
        self.now += SMALL_STREAK * 2
        self.backend.read(INODE + 2, self.backend.open(INODE + 2).handle, 0, 4096)
        self.assertEqual(len(self.bridge.posted), 1)
        self.view.size = SIZE
        self.now += SMALL_STREAK / 2
        self.backend.read(INODE + 3, self.backend.open(INODE + 3).handle, 0, 4096)
        self.assertEqual(len(self.bridge.posted), 1)

    def test_small_files_random(self) -> None:
        """
        Small files missed in quick succession but not one after the other
        in their directory (random reads) fetch no batch: it would bring
        files nobody asked for into the cache.
        """
        self.view.size = 4096
        sibling = FileVersion(ARENA, 99, "g", 10, 10, b"\3" * 32, (PeerId("b"),))
        self.view.after = [sibling]
        for n in range(4):
            self.now += SMALL_STREAK / 4
            self.backend.read(INODE + n, self.backend.open(INODE + n).handle, 0, 4096)
        self.assertEqual(self.bridge.posted, [])
