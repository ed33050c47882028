"""
Tests for L{realize.services.mover}, with in-memory stores.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import (
    BadDelta,
    Conflict,
    IOFailure,
    NetworkError,
    NoSpace,
    NotFound,
    SideError,
)
from realize.hashing import LEAF_SIZE, LeafHasher, merkle_root
from realize.model import MAX_DELTA_RANGE, ArenaName, FileInfo
from realize.services.budget import ByteBudget
from realize.services.mover import BATCH_FILE, BATCH_FILES, BATCHES_IN_FLIGHT, Mover
from realize.services.repair import CopyRepairer
from realize.services.report import FileResult, FileStatus
from realize.storage.memory import MemoryStore
from tests.faults import Fault, FaultyStore

from .helpers import result_of

A = ArenaName("a")
MOVED = FileStatus.MOVED
FAILED = FileStatus.FAILED


def data(size: int, seed: int = 0) -> bytes:
    """
    Deterministic pseudo-random bytes.
    """
    return random.Random(seed).randbytes(size)


def root_of(content: bytes) -> bytes:
    hasher = LeafHasher()
    hasher.update(content)
    return merkle_root(hasher.finish())


class RecordingObserver:
    """
    A L{MoveObserver} that records what it is told.
    """

    def __init__(self) -> None:
        self.listed_calls: list[tuple[str, int, int]] = []
        self.started: list[str] = []
        self.transferred_bytes = 0
        self.done: list[FileResult] = []

    def listed(self, arena: ArenaName, files: int, size: int) -> None:
        self.listed_calls.append((arena, files, size))

    def file_started(self, arena: ArenaName, path: str, size: int) -> None:
        self.started.append(path)

    def transferred(self, arena: ArenaName, path: str, size: int) -> None:
        self.transferred_bytes += size

    def file_done(self, result: FileResult) -> None:
        self.done.append(result)


class MoverTestsMixin:
    """
    Helpers for mover tests.
    """

    def move(self, source: Any, destination: Any, **kwargs: Any) -> Any:
        mover = Mover(source, destination, **kwargs)
        return result_of(self, mover.move([A]))  # type: ignore[arg-type]


class FreshMoveTests(MoverTestsMixin, SynchronousTestCase):
    """
    Moving files the destination does not have.
    """

    def test_moves_everything(self) -> None:
        """
        Every final file arrives identical with the source's mtime, the
        source is emptied, and each result says moved with its root.
        """
        files = {
            "small": b"hello",
            "empty": b"",
            "dir/sub/big": data(2 * LEAF_SIZE + 12345),
            "name with spaces: and é": data(1000, 1),
        }
        source = MemoryStore.with_files("a", files, label="src")
        source.chunk_size = 300_000
        mtimes = {f.path: f.mtime_ns for f in result_of(self, source.list_files(A))}
        destination = MemoryStore.with_files("a", label="dst")
        observer = RecordingObserver()
        report = self.move(source, destination, observer=observer)
        self.assertTrue(report.ok)
        self.assertEqual(
            sorted((r.path, r.status) for r in report.results),
            sorted((path, MOVED) for path in files),
        )
        for path, content in files.items():
            self.assertEqual(destination.content("a", path), content)
            self.assertEqual(destination.finals[A][path].mtime_ns, mtimes[path])
        self.assertEqual(source.finals[A], {})
        self.assertEqual(destination.partials[A], {})
        roots = {r.path: r.root for r in report.results}
        self.assertEqual(roots["dir/sub/big"], root_of(files["dir/sub/big"]))
        self.assertEqual(
            observer.listed_calls,
            [("a", 4, sum(len(c) for c in files.values()))],
        )
        self.assertEqual(
            observer.transferred_bytes, sum(len(c) for c in files.values())
        )
        self.assertEqual(len(observer.done), 4)

    def test_source_hashed_once(self) -> None:
        """
        The source is read once per file, with hashing, and never asked to
        hash separately (#hasverification).
        """
        source = MemoryStore.with_files(
            "a", {"big": data(3 * LEAF_SIZE), "small": b"x"}, label="src"
        )
        destination = MemoryStore.with_files("a", label="dst")
        self.move(source, destination)
        self.assertEqual(source.calls.count("read"), 1)
        self.assertEqual(source.calls.count("read_files"), 1)
        self.assertNotIn("hash", source.calls)

    def test_source_partials_ignored(self) -> None:
        """
        Partial files at the source are not moved.
        """
        source = MemoryStore.with_files(
            "a", {"done": b"1"}, partials={"incoming": b"half"}, label="src"
        )
        destination = MemoryStore.with_files("a", label="dst")
        report = self.move(source, destination)
        self.assertEqual([r.path for r in report.results], ["done"])
        self.assertEqual(source.content("a", "incoming", partial=True), b"half")
        self.assertIsNone(destination.content("a", "incoming"))


class LogTests(MoverTestsMixin, SynchronousTestCase):
    """
    The mover's log events.
    """

    def events(self, **kwargs: Any) -> list[dict[str, Any]]:
        source = MemoryStore.with_files(
            "a", {"big": data(BATCH_FILE + 1), "small": b"x"}, label="src"
        )
        destination = FaultyStore(MemoryStore.with_files("a", label="dst")).add(
            Fault("write", "error", path="big", error=NoSpace("disk full"))
        )
        with capturedLogs() as events:
            self.move(source, destination, **kwargs)
        return [e for e in events if e.get("log_namespace") == "realize.move"]

    def test_moved_and_failed(self) -> None:
        """
        By default each moved file is an info event and each failed one
        an error.
        """
        events = self.events()
        self.assertEqual(
            [(e["log_level"], e.get("path")) for e in events],
            [(LogLevel.error, "big"), (LogLevel.info, "small")],
        )

    def test_without_moves(self) -> None:
        """
        With C{log_moves=False} (nobody would see them), no event is built
        for moved files; failures are still logged.
        """
        events = self.events(log_moves=False)
        self.assertEqual(
            [(e["log_level"], e.get("path")) for e in events],
            [(LogLevel.error, "big")],
        )


class HashRecordingStore(MemoryStore):
    """
    Records the ranges it is asked to hash.
    """

    hashed: list[tuple[int, int]]

    async def hash(self, arena: ArenaName, path: str, start: int, end: int) -> Any:
        if not hasattr(self, "hashed"):
            self.hashed = []
        self.hashed.append((start, end))
        return await super().hash(arena, path, start, end)


class PartialsRecordingStore(MemoryStore):
    """
    Records the partial files each delete_files is told of.
    """

    asked: list[set[str] | None]

    async def delete_files(
        self, arena: ArenaName, files: Any, partials: Any = None
    ) -> Any:
        if not hasattr(self, "asked"):
            self.asked = []
        self.asked.append(None if partials is None else set(partials))
        return await super().delete_files(arena, files, partials)


class BatchTests(MoverTestsMixin, SynchronousTestCase):
    """
    Small files move in batches.
    """

    def test_batches(self) -> None:
        """
        Many small files take one read, one write and one delete call per
        batch of at most BATCH_FILES files, and all arrive.
        """
        files = {f"d{i % 7}/f{i}": data(i % 5000, i) for i in range(300)}
        source = MemoryStore.with_files("a", files, label="src")
        destination = MemoryStore.with_files("a", label="dst")
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        batches = -(-300 // BATCH_FILES)
        self.assertEqual(source.calls.count("read_files"), batches)
        self.assertEqual(source.calls.count("delete_files"), batches)
        self.assertEqual(destination.calls.count("write_files"), batches)
        for path, content in files.items():
            self.assertEqual(destination.content("a", path), content)
        self.assertEqual(source.finals[A], {})

    def test_source_partials_deleted_where_listed(self) -> None:
        """
        A batch's delete at the source names the partial files the source
        listed: the partial of a moved file goes with it, and no other
        partial is looked for.
        """
        source = PartialsRecordingStore.with_files(
            "a",
            {"plain": b"1", "with-partial": b"2"},
            partials={"with-partial": b"old", "only-partial": b"half"},
            label="src",
        )
        destination = MemoryStore.with_files("a", label="dst")
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(source.asked, [{"with-partial", "only-partial"}])
        self.assertIsNone(source.content("a", "with-partial", partial=True))
        self.assertEqual(source.content("a", "only-partial", partial=True), b"half")
        self.assertEqual(source.finals[A], {})

    def test_replaces_existing(self) -> None:
        """
        Small files whose destination has a stale final or partial file are
        sent again whole and replace it.
        """
        source = MemoryStore.with_files(
            "a", {"final": b"new 1", "partial": b"new 2"}, label="src"
        )
        destination = MemoryStore.with_files(
            "a", {"final": b"old"}, partials={"partial": b"old old old"}, label="dst"
        )
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(destination.content("a", "final"), b"new 1")
        self.assertEqual(destination.content("a", "partial"), b"new 2")
        self.assertEqual(destination.partials[A], {})

    def test_write_error_fails_batch_only(self) -> None:
        """
        A destination that fails a whole batch fails its files, keeps their
        sources, and the larger files still move.
        """
        source = MemoryStore.with_files(
            "a", {"small": b"s", "big": data(BATCH_FILE + 1)}, label="src"
        )
        destination = FaultyStore(MemoryStore.with_files("a", label="dst")).add(
            Fault("write_files", "error", error=NoSpace("disk full"))
        )
        report = self.move(source, destination)
        self.assertEqual(
            sorted((r.path, r.status) for r in report.results),
            [("big", MOVED), ("small", FAILED)],
        )
        self.assertEqual(source.content("a", "small"), b"s")


class ResumeTests(MoverTestsMixin, SynchronousTestCase):
    """
    Destination files left by an earlier run, in every state.
    """

    def test_shorter_partial_appended(self) -> None:
        """
        A partial shorter than the source is resumed by appending: only
        the missing bytes are sent, and the destination hashes only the
        whole leaves it held (#sizebeforehash).
        """
        content = data(3 * LEAF_SIZE + 500)
        have = LEAF_SIZE + 777
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = HashRecordingStore.with_files(
            "a", partials={"f": content[:have]}, label="dst"
        )
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(report.results[0].copied, len(content) - have)
        self.assertEqual(destination.content("a", "f"), content)
        self.assertEqual(destination.hashed, [(0, LEAF_SIZE)])

    def test_longer_partial_truncated(self) -> None:
        """
        A partial longer than the source is truncated, then verified.
        """
        content = data(LEAF_SIZE + 10)
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = MemoryStore.with_files(
            "a", partials={"f": content + b"garbage" * 1000}, label="dst"
        )
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(report.results[0].copied, 0)
        self.assertEqual(destination.content("a", "f"), content)
        self.assertIn("truncate", destination.calls)

    def test_same_size_corrupted_repaired(self) -> None:
        """
        A partial of the right size with a corrupted leaf is repaired by
        sending that leaf only.
        """
        content = data(4 * LEAF_SIZE)
        corrupted = bytearray(content)
        corrupted[2 * LEAF_SIZE + 5] ^= 0xFF
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = MemoryStore.with_files(
            "a", partials={"f": bytes(corrupted)}, label="dst"
        )
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        # A signature of the leaf (256 blocks of 20 bytes) and a delta of
        # one literal block: a few KiB instead of the 1 MiB leaf.
        self.assertLess(report.results[0].copied, 16_384)
        self.assertEqual(destination.content("a", "f"), content)

    def test_same_size_corrupted_copy_repairer(self) -> None:
        """
        With the copy repairer, the corrupted leaf is sent whole.
        """
        content = data(4 * LEAF_SIZE)
        corrupted = bytearray(content)
        corrupted[2 * LEAF_SIZE + 5] ^= 0xFF
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = MemoryStore.with_files(
            "a", partials={"f": bytes(corrupted)}, label="dst"
        )
        report = self.move(source, destination, repairer=CopyRepairer())
        self.assertTrue(report.ok)
        self.assertEqual(report.results[0].copied, LEAF_SIZE)
        self.assertEqual(destination.content("a", "f"), content)

    def test_shifted_partial(self) -> None:
        """
        A partial with bytes inserted near its start differs from there on:
        it is repaired and ends up identical.
        """
        content = data(3 * LEAF_SIZE)
        shifted = content[:100] + b"inserted" + content[100 : 2 * LEAF_SIZE]
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = MemoryStore.with_files("a", partials={"f": shifted}, label="dst")
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(destination.content("a", "f"), content)

    def test_identical_final_not_copied(self) -> None:
        """
        A destination final file identical to the source (a run that
        stopped before deleting the source) costs no copy; the source is
        deleted.
        """
        content = data(LEAF_SIZE * 2 + 1)
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = MemoryStore.with_files("a", {"f": content}, label="dst")
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(report.results[0].copied, 0)
        self.assertEqual(source.finals[A], {})
        self.assertEqual(destination.content("a", "f"), content)

    def test_different_final_replaced(self) -> None:
        """
        A destination final file with other content is replaced by the
        source's (move semantics: the source wins).
        """
        content = data(LEAF_SIZE + 3, seed=1)
        for old in (data(LEAF_SIZE + 3, seed=2), b"short", data(5 * LEAF_SIZE)):
            source = MemoryStore.with_files("a", {"f": content}, label="src")
            destination = MemoryStore.with_files("a", {"f": old}, label="dst")
            report = self.move(source, destination)
            self.assertTrue(report.ok)
            self.assertEqual(destination.content("a", "f"), content)
            self.assertEqual(destination.partials[A], {})

    def test_small_file_over_old_partial(self) -> None:
        """
        A small file whose destination has a stale partial is verified
        through the general path and arrives identical.
        """
        source = MemoryStore.with_files("a", {"f": b"new content"}, label="src")
        destination = MemoryStore.with_files("a", partials={"f": b"old"}, label="dst")
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(destination.content("a", "f"), b"new content")


class LyingHash(MemoryStore):
    """
    A destination whose hash of the first leaf is wrong, although its
    bytes are right.
    """

    async def hash(self, arena: ArenaName, path: str, start: int, end: int) -> Any:
        state = await super().hash(arena, path, start, end)
        if start == 0 and state.leaves:
            flipped = bytes([state.leaves[0][0] ^ 1]) + state.leaves[0][1:]
            return attrs.evolve(state, leaves=(flipped, *state.leaves[1:]))
        return state


class DeltaTests(MoverTestsMixin, SynchronousTestCase):
    """
    Repair by rsync delta (#rsync, #emptydelta).
    """

    def test_scattered_corruption(self) -> None:
        """
        A full-size partial with a corrupted byte in every leaf is repaired
        with deltas: what is sent is a small fraction of the file, and the
        stats say so.
        """
        content = data(8 * LEAF_SIZE)
        corrupted = bytearray(content)
        for leaf in range(8):
            corrupted[leaf * LEAF_SIZE + 777] ^= 0x55
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = MemoryStore.with_files(
            "a", partials={"f": bytes(corrupted)}, label="dst"
        )
        mover = Mover(source, destination)
        report = result_of(self, mover.move([A]))
        self.assertTrue(report.ok)
        self.assertEqual(destination.content("a", "f"), content)
        self.assertLess(report.results[0].copied, len(content) // 50)
        self.assertEqual(mover.stats.copied_bytes, 0)
        self.assertEqual(mover.stats.files_repaired, 1)
        self.assertGreater(mover.stats.saved_bytes, len(content) * 9 // 10)
        self.assertEqual(mover.stats.delta_bytes, report.results[0].copied)

    def test_insertion_repaired_cheaply(self) -> None:
        """
        A partial whose data is shifted by an insertion near its start is
        repaired by delta with little data: the rolling match finds the
        shifted blocks.
        """
        content = data(3 * LEAF_SIZE)
        shifted = content[:5000] + b"INSERTED" + content[5000:]
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = MemoryStore.with_files(
            "a", partials={"f": shifted[: len(content)]}, label="dst"
        )
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(destination.content("a", "f"), content)
        self.assertLess(report.results[0].copied, 100_000)

    def test_large_range_in_pieces(self) -> None:
        """
        A differing run longer than MAX_DELTA_RANGE is repaired in pieces
        of at most that size.
        """
        size = 2 * MAX_DELTA_RANGE + 3 * LEAF_SIZE
        content = data(size)
        corrupted = bytearray(content)
        for leaf in range(size // LEAF_SIZE):
            corrupted[leaf * LEAF_SIZE] ^= 1
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = MemoryStore.with_files(
            "a", partials={"f": bytes(corrupted)}, label="dst"
        )
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(destination.calls.count("signature"), 3)
        self.assertEqual(destination.content("a", "f"), content)

    def test_apply_error_falls_back_to_copy(self) -> None:
        """
        A destination that refuses the delta (BadDelta): the range is
        copied instead, and the fallback is counted.
        """
        content = data(2 * LEAF_SIZE)
        corrupted = bytearray(content)
        corrupted[10] ^= 1
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        inner = MemoryStore.with_files(
            "a", partials={"f": bytes(corrupted)}, label="dst"
        )
        destination = FaultyStore(inner).add(
            Fault("apply_delta", "error", error=BadDelta("malformed"))
        )
        mover = Mover(source, destination)
        report = result_of(self, mover.move([A]))
        self.assertTrue(report.ok)
        self.assertEqual(inner.content("a", "f"), content)
        self.assertEqual(mover.stats.fallbacks, 1)
        self.assertEqual(mover.stats.copied_bytes, LEAF_SIZE)

    def test_wrong_apply_falls_back_to_copy(self) -> None:
        """
        A delta that lands on the wrong bytes is caught by the leaves the
        destination returns, and the range is copied instead.
        """
        content = data(2 * LEAF_SIZE)
        corrupted = bytearray(content)
        corrupted[LEAF_SIZE + 10] ^= 1
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        inner = MemoryStore.with_files(
            "a", partials={"f": bytes(corrupted)}, label="dst"
        )
        destination = FaultyStore(inner).add(Fault("apply_delta", "corrupt"))
        mover = Mover(source, destination)
        report = result_of(self, mover.move([A]))
        self.assertTrue(report.ok)
        self.assertEqual(inner.content("a", "f"), content)
        self.assertEqual(mover.stats.fallbacks, 1)

    def test_identity_delta_skips_apply(self) -> None:
        """
        When the delta only copies the basis, ApplyDelta is not called
        (#emptydelta); a range the hashes still say differs is copied.
        """
        content = data(LEAF_SIZE + 100)
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = LyingHash.with_files("a", partials={"f": content}, label="dst")
        mover = Mover(source, destination)
        report = result_of(self, mover.move([A]))
        self.assertTrue(report.ok)
        self.assertIn("signature", destination.calls)
        self.assertNotIn("apply_delta", destination.calls)
        self.assertEqual(mover.stats.fallbacks, 1)

    def test_signature_failure(self) -> None:
        """
        A destination that cannot make a signature fails the file as a
        destination error; the source is kept.
        """
        content = data(2 * LEAF_SIZE)
        corrupted = bytearray(content)
        corrupted[0] ^= 1
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = FaultyStore(
            MemoryStore.with_files("a", partials={"f": bytes(corrupted)}, label="dst")
        ).add(Fault("signature", "error", error=IOFailure("read error")))
        report = self.move(source, destination)
        [result] = report.failed
        self.assertEqual(str(result.error), "destination dst: read error")
        self.assertEqual(source.content("a", "f"), content)

    def test_diff_disconnect(self) -> None:
        """
        A source lost while computing the delta fails the file as a
        retryable source error.
        """
        content = data(2 * LEAF_SIZE)
        corrupted = bytearray(content)
        corrupted[0] ^= 1
        source = FaultyStore(MemoryStore.with_files("a", {"f": content}, label="src"))
        source.add(Fault("diff", "disconnect"))
        destination = MemoryStore.with_files(
            "a", partials={"f": bytes(corrupted)}, label="dst"
        )
        report = self.move(source, destination)
        [result] = report.failed
        self.assertIn("source src", str(result.error))
        self.assertTrue(report.retryable)


class FaultTests(MoverTestsMixin, SynchronousTestCase):
    """
    Injected faults are repaired or reported, and the source is kept.
    """

    def test_corrupted_write_repaired(self) -> None:
        """
        A write that corrupts a byte once is caught by the hash comparison
        and repaired.
        """
        content = data(3 * LEAF_SIZE)
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        inner = MemoryStore.with_files("a", label="dst")
        destination = FaultyStore(inner).add(
            Fault("write", "corrupt", offset=LEAF_SIZE + 10)
        )
        mover = Mover(source, destination)
        report = result_of(self, mover.move([A]))
        self.assertTrue(report.ok)
        self.assertEqual(inner.content("a", "f"), content)
        # The copy, then a signature and a small delta for the bad block.
        self.assertLess(report.results[0].copied, len(content) + 16_384)
        self.assertEqual(mover.stats.files_repaired, 1)
        self.assertEqual(mover.stats.fallbacks, 0)

    def test_always_corrupted_fails_and_keeps_source(self) -> None:
        """
        A destination that always corrupts what it is sent: the file is
        reported failed, not finished, and the source is kept.
        """
        content = data(2 * LEAF_SIZE)
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        inner = MemoryStore.with_files("a", label="dst")
        destination = FaultyStore(inner).add(
            Fault("write", "corrupt", times=-1),
            Fault("apply_delta", "corrupt", times=-1),
        )
        report = self.move(source, destination)
        self.assertFalse(report.ok)
        [result] = report.failed
        self.assertIsInstance(result.error, SideError)
        self.assertIn("destination dst", str(result.error))
        self.assertIn("still differs", str(result.error))
        self.assertEqual(source.content("a", "f"), content)
        self.assertIsNone(inner.content("a", "f"))

    def test_small_file_corrupted_once(self) -> None:
        """
        A small file corrupted on its first write is copied again and
        moves.
        """
        source = MemoryStore.with_files("a", {"f": b"small file"}, label="src")
        inner = MemoryStore.with_files("a", label="dst")
        destination = FaultyStore(inner).add(Fault("write_files", "corrupt"))
        report = self.move(source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(inner.content("a", "f"), b"small file")
        self.assertEqual(report.results[0].copied, 2 * len(b"small file"))
        self.assertEqual(inner.calls, ["list", "write_files", "write", "finish"])

    def test_small_file_always_corrupted(self) -> None:
        """
        A small file whose writes are always corrupted fails after two
        tries; the source is kept and nothing is finished.
        """
        source = MemoryStore.with_files("a", {"f": b"small file"}, label="src")
        inner = MemoryStore.with_files("a", label="dst")
        destination = FaultyStore(inner).add(
            Fault("write_files", "corrupt", times=-1),
            Fault("write", "corrupt", times=-1),
        )
        report = self.move(source, destination)
        self.assertEqual([r.status for r in report.results], [FAILED])
        self.assertIn("still differs", str(report.results[0].error))
        self.assertEqual(source.content("a", "f"), b"small file")
        self.assertIsNone(inner.content("a", "f"))

    def test_truncated_stream(self) -> None:
        """
        A read stream that stops early fails that file (the write sees
        fewer bytes than announced); the source is kept and the partial
        stays for the next run.
        """
        content = data(2 * LEAF_SIZE)
        inner_source = MemoryStore.with_files("a", {"f": content}, label="src")
        source = FaultyStore(inner_source).add(Fault("read", "short", offset=LEAF_SIZE))
        destination = MemoryStore.with_files("a", label="dst")
        report = self.move(source, destination)
        [result] = report.failed
        self.assertIsInstance(result.error, SideError)
        self.assertEqual(inner_source.content("a", "f"), content)
        self.assertIsNone(destination.content("a", "f"))
        # The next run resumes and completes.
        report = self.move(inner_source, destination)
        self.assertTrue(report.ok)
        self.assertEqual(destination.content("a", "f"), content)

    def test_write_error_names_destination(self) -> None:
        """
        A destination that is full: the file fails with an error naming
        the destination and the cause; the source is kept.
        """
        source = MemoryStore.with_files("a", {"f": data(LEAF_SIZE * 2)}, label="src")
        destination = FaultyStore(MemoryStore.with_files("a", label="dst")).add(
            Fault("write", "error", times=-1, error=NoSpace("disk full"))
        )
        report = self.move(source, destination)
        [result] = report.failed
        self.assertEqual(str(result.error), "destination dst: disk full")
        self.assertIsInstance(result.error.cause, NoSpace)  # type: ignore[union-attr]
        self.assertIsNotNone(source.content("a", "f"))

    def test_finish_error_keeps_source(self) -> None:
        """
        If the destination cannot finish the file, the source is kept.
        """
        source = MemoryStore.with_files("a", {"f": data(LEAF_SIZE * 2)}, label="src")
        destination = FaultyStore(MemoryStore.with_files("a", label="dst")).add(
            Fault("finish", "error", times=-1)
        )
        report = self.move(source, destination)
        self.assertEqual(len(report.failed), 1)
        self.assertIsNotNone(source.content("a", "f"))

    def test_missing_source_file(self) -> None:
        """
        A source file that vanished after the listing fails alone, named
        as a source error; the others of its batch move.
        """
        source = PhantomSource.with_files("a", {"here": b"2"}, label="src")
        destination = MemoryStore.with_files("a", label="dst")
        report = self.move(source, destination)
        self.assertEqual(
            sorted((r.path, r.status) for r in report.results),
            [("gone", FAILED), ("here", MOVED)],
        )
        [failed] = report.failed
        self.assertEqual(str(failed.error), "source src: arena 'a': no file 'gone'")

    def test_network_error_stops_scheduling(self) -> None:
        """
        A lost connection fails the file and stops starting new ones; the
        report is retryable.
        """
        source = MemoryStore.with_files(
            "a", {f"f{i}": data(BATCH_FILE + 1, i) for i in range(5)}, label="src"
        )
        destination = FaultyStore(MemoryStore.with_files("a", label="dst")).add(
            Fault("write", "disconnect", times=-1)
        )
        mover = Mover(source, destination)
        mover.budget = ByteBudget(1 << 30, 1)
        report = result_of(self, mover.move([A]))
        self.assertEqual(len(report.results), 1)
        self.assertIsInstance(report.failed[0].error.cause, NetworkError)  # type: ignore[union-attr]
        self.assertTrue(report.retryable)
        self.assertEqual(len(source.finals[A]), 5)

    def test_listing_error(self) -> None:
        """
        A listing that fails is an arena error naming the side.
        """
        source = FaultyStore(MemoryStore.with_files("a", label="src")).add(
            Fault("list", "error", error=NotFound("no arena 'a'"))
        )
        report = self.move(source, MemoryStore.with_files("a", label="dst"))
        self.assertEqual([str(e) for e in report.errors], ["source src: no arena 'a'"])
        self.assertFalse(report.ok)


class ChangingSource(MemoryStore):
    """
    A source whose file changes while it is being read (or, for a batch,
    between the listing and the read).
    """

    def _change(self, arena: ArenaName, path: str) -> None:
        self.finals[arena][path].data[0:1] = b"X"
        self.finals[arena][path].mtime_ns = self.tick()

    def read(self, arena: ArenaName, path: str, start: int, end: int, **kw: Any) -> Any:
        stream = super().read(arena, path, start, end, **kw)
        self._change(arena, path)
        return stream

    async def read_files(self, arena: ArenaName, files: Any) -> Any:
        for path, _ in files:
            self._change(arena, path)
        return await super().read_files(arena, files)


class PhantomSource(MemoryStore):
    """
    A source that lists a file C{gone} it does not have.
    """

    async def list_files(self, arena: ArenaName) -> Any:
        return [*await super().list_files(arena), FileInfo("gone", 5, 1)]


class ChangeOnFinish(MemoryStore):
    """
    A destination that changes the source file right after finishing.
    """

    source: MemoryStore

    async def finish(self, arena: ArenaName, path: str, mtime_ns: Any = None) -> None:
        await super().finish(arena, path, mtime_ns)
        self.source.finals[arena][path].data += b"appended"
        self.source.finals[arena][path].mtime_ns = self.source.tick()


class ChangedSourceTests(MoverTestsMixin, SynchronousTestCase):
    """
    A source file that changes during the move is not deleted.
    """

    def test_changed_during_read(self) -> None:
        """
        The file changed while read: not finished, not deleted, reported
        failed; its destination copy stays partial.
        """
        source = ChangingSource.with_files("a", {"f": data(LEAF_SIZE * 2)}, label="src")
        destination = MemoryStore.with_files("a", label="dst")
        report = self.move(source, destination)
        [result] = report.failed
        self.assertIsInstance(result.error.cause, Conflict)  # type: ignore[union-attr]
        self.assertIn("changed during the move", str(result.error))
        self.assertIsNotNone(source.content("a", "f"))
        self.assertIsNone(destination.content("a", "f"))

    def test_changed_small_file(self) -> None:
        """
        Same for a small file: nothing finished at the destination.
        """
        source = ChangingSource.with_files("a", {"f": b"abc"}, label="src")
        destination = MemoryStore.with_files("a", label="dst")
        report = self.move(source, destination)
        self.assertEqual(len(report.failed), 1)
        self.assertIsNone(destination.content("a", "f"))
        self.assertEqual(source.content("a", "f"), b"Xbc")

    def test_changed_before_delete(self) -> None:
        """
        A source changed after the destination finished its verified copy
        is not deleted (the conditional delete refuses).
        """
        content = data(LEAF_SIZE * 2)
        source = MemoryStore.with_files("a", {"f": content}, label="src")
        destination = ChangeOnFinish.with_files("a", label="dst")
        destination.source = source
        report = self.move(source, destination)
        [result] = report.failed
        self.assertIsInstance(result.error.cause, Conflict)  # type: ignore[union-attr]
        self.assertEqual(source.content("a", "f"), content + b"appended")
        self.assertEqual(destination.content("a", "f"), content)


class WaitingStore(MemoryStore):
    """
    A destination whose writes wait until the test lets them go.
    """

    waiting: list[Deferred[None]]

    async def write(self, *args: Any, **kwargs: Any) -> Any:
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        await d
        return await super().write(*args, **kwargs)


class WaitingBatchStore(MemoryStore):
    """
    A destination whose batch writes wait until the test lets them go.
    """

    waiting: list[Deferred[None]]

    async def write_files(self, *args: Any, **kwargs: Any) -> Any:
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        await d
        return await super().write_files(*args, **kwargs)


class ConcurrencyTests(SynchronousTestCase):
    """
    Files move concurrently within the budget.
    """

    def test_batches_in_flight(self) -> None:
        """
        At most BATCHES_IN_FLIGHT batches of small files are in flight at
        once; the others start as they finish.
        """
        count = BATCH_FILES * (BATCHES_IN_FLIGHT + 3)
        source = MemoryStore.with_files(
            "a", {f"d/{i}": data(10, i) for i in range(count)}, label="src"
        )
        destination = WaitingBatchStore.with_files("a", label="dst")
        waiting = destination.waiting = []
        done = Deferred.fromCoroutine(Mover(source, destination).move([A]))
        self.assertEqual(len(waiting), BATCHES_IN_FLIGHT)
        released = 0
        while waiting:
            waiting.pop(0).callback(None)
            released += 1
            self.assertLessEqual(len(waiting), BATCHES_IN_FLIGHT)
        self.assertEqual(released, BATCHES_IN_FLIGHT + 3)
        report = self.successResultOf(done)
        self.assertEqual(len(report.moved), count)

    def test_batches_beside_large_file(self) -> None:
        """
        Small files keep moving in batches while a large file holds the
        whole byte budget: each kind has its own bound.
        """
        size = BATCH_FILE * 4
        files = {"a-big": data(size), **{f"b/{i}": data(100, i) for i in range(5)}}
        source = MemoryStore.with_files("a", files, label="src")
        destination = WaitingStore.with_files("a", label="dst")
        waiting = destination.waiting = []
        mover = Mover(source, destination)
        mover.budget = ByteBudget(size, 100)
        done = Deferred.fromCoroutine(mover.move([A]))
        self.assertEqual(len(waiting), 1)
        for i in range(5):
            self.assertEqual(destination.content("a", f"b/{i}"), files[f"b/{i}"])
        self.assertNoResult(done)
        waiting.pop().callback(None)
        self.assertTrue(self.successResultOf(done).ok)
        self.assertEqual(destination.content("a", "a-big"), files["a-big"])

    def test_in_flight(self) -> None:
        """
        With writes that wait, as many files are in flight as the budget
        allows, no more.
        """
        size = BATCH_FILE + 100
        source = MemoryStore.with_files(
            "a", {f"f{i}": data(size, i) for i in range(10)}, label="src"
        )
        destination = WaitingStore.with_files("a", label="dst")
        waiting = destination.waiting = []
        mover = Mover(source, destination)
        mover.budget = ByteBudget(size * 2 + size // 2, 100)
        done = Deferred.fromCoroutine(mover.move([A]))
        self.assertEqual(len(waiting), 2)
        while waiting:
            waiting.pop(0).callback(None)
        report = self.successResultOf(done)
        self.assertTrue(report.ok)
        self.assertEqual(len(report.moved), 10)
