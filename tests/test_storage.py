"""
Contract tests of L{realize.interfaces.Store}, run against both
L{realize.storage.local.LocalStore} (on a temporary directory, with a
synchronous thread runner) and L{realize.storage.memory.MemoryStore}.

The tests that only make sense on a real filesystem (symlinks, FIFOs,
group commit) are in L{tests.test_storage_real}.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from realize.config import parse_config
from realize.errors import BadDelta, BadRequest, Conflict, InvalidPath, NotFound
from realize.hashing import EMPTY_ROOT, LEAF_SIZE, leaf_hash, merkle_root
from realize.interfaces import Store
from realize.model import (
    ArenaName,
    FileInfo,
    FileState,
    PeerId,
    SmallFile,
    SmallRead,
    WriteResult,
    partial_name,
)
from realize.services.store import PeerView, StoreService
from realize.storage.arena import ArenaDir
from realize.storage.local import LocalStore
from realize.storage.memory import MemoryFile, MemoryStore
from tests.faults import FaultyStore
from tests.helpers import failure_of, make_key, result_of, sync_run_in_thread

A = ArenaName("a")
B = ArenaName("b")

#: An mtime with nanoseconds, to see that the stores keep all of them.
MTIME = 1_600_000_000_123_456_789

#: A file of more than two leaves, the last one short.
BIG = 2 * LEAF_SIZE + LEAF_SIZE // 2

#: Paths that L{realize.model.check_path} rejects.
INVALID_PATHS = ["../x", "/abs", "a//b", ".x.part", "d/.x.part", "x\0", "", "a/./b"]


if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object


def random_bytes(size: int, seed: int = 0) -> bytes:
    """
    @return: C{size} deterministic pseudo-random bytes.
    """
    return random.Random(seed).randbytes(size)


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    """
    @return: an async iterator of the given chunks.
    """
    for chunk in chunks:
        yield chunk


def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    """
    @return: an async iterator of C{data} cut into chunks of C{size} bytes.
    """
    return stream(*(data[i : i + size] for i in range(0, len(data), size)))


def expected_leaves(data: bytes, start: int = 0) -> tuple[bytes, ...]:
    """
    The Merkle leaves of C{data[start:]}, computed one leaf at a time with
    L{realize.hashing.leaf_hash} (not with the stores' incremental hasher).

    @param start: a multiple of L{LEAF_SIZE}.
    """
    assert start % LEAF_SIZE == 0
    return tuple(
        leaf_hash(data[i : i + LEAF_SIZE]) for i in range(start, len(data), LEAF_SIZE)
    )


async def read_all(
    store: Store,
    arena: ArenaName,
    path: str,
    start: int,
    end: int,
    hash_from: int | None = None,
) -> tuple[bytes, FileState]:
    """
    Read a range of a file to the end of its stream.

    @return: the bytes read and the stream's result.
    """
    read = store.read(arena, path, start, end, hash_from=hash_from)
    chunks = [chunk async for chunk in read]
    return b"".join(chunks), await read.result()


class StoreContractMixin(_Base):
    """
    The semantics every L{Store} has.  A concrete test case sets
    C{self.store} (serving the empty arenas C{a} and C{b}) in C{setUp} and
    implements the fixture methods below, which look at the store's files
    without going through the store.
    """

    store: Store

    def put(
        self,
        path: str,
        data: bytes,
        partial: bool = False,
        mtime_ns: int | None = None,
    ) -> None:
        """
        Create the final (or partial) file of a path in arena C{a}.
        """
        raise NotImplementedError

    def stored(self, path: str, partial: bool = False) -> bytes | None:
        """
        @return: the content of the final (or partial) file of a path in
            arena C{a}, or C{None} if there is none.
        """
        raise NotImplementedError

    def stored_mtime(self, path: str, partial: bool = False) -> int:
        """
        @return: the mtime in ns of the final (or partial) file of a path.
        """
        raise NotImplementedError

    def assert_empty(self) -> None:
        """
        Fail unless both arenas hold nothing at all.
        """
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------

    def write(
        self,
        path: str,
        start: int,
        file_size: int,
        data: bytes,
        chunk_size: int = 256 * 1024,
        **kwargs: Any,
    ) -> WriteResult:
        """
        Write C{data} at C{start} of a file of arena C{a}, in chunks.

        @return: the write's result.
        """
        return result_of(
            self,
            self.store.write(
                A,
                path,
                start,
                start + len(data),
                file_size,
                chunked(data, chunk_size),
                **kwargs,
            ),
        )

    def read(
        self, path: str, start: int, end: int, hash_from: int | None = None
    ) -> tuple[bytes, FileState]:
        return result_of(self, read_all(self.store, A, path, start, end, hash_from))

    def fails(self, coro: Any, *types: type[BaseException]) -> BaseException:
        return failure_of(self, coro, *types)

    def listing(self, arena: ArenaName = A) -> list[FileInfo]:
        files = result_of(self, self.store.list_files(arena))
        return sorted(files, key=lambda f: (f.path, f.partial))

    # -- arenas ------------------------------------------------------------

    def test_arenas(self) -> None:
        """
        C{arenas} returns the names of the arenas served.
        """
        self.assertEqual(
            result_of(self, self.store.arenas()),
            ["a", "b"],
        )

    def test_unknown_arena(self) -> None:
        """
        Every command on an arena the store does not have fails with
        L{NotFound} naming the arena, and creates nothing.
        """
        nope = ArenaName("nope")
        coros = [
            self.store.list_files(nope),
            read_all(self.store, nope, "x", 0, 10),
            self.store.write(nope, "x", 0, 1, 1, stream(b"x")),
            self.store.truncate(nope, "x", 0),
            self.store.finish(nope, "x"),
            self.store.delete(nope, "x"),
            self.store.hash(nope, "x", 0, 10),
        ]
        for coro in coros:
            error = self.fails(coro, NotFound)
            self.assertIn("nope", str(error))
        self.assert_empty()

    # -- list_files --------------------------------------------------------

    def test_list_empty(self) -> None:
        """
        An empty arena lists no files.
        """
        self.assertEqual(self.listing(), [])

    def test_list_finals_and_partials(self) -> None:
        """
        C{list_files} lists final and partial files of all directories with
        their sizes and mtimes; a partial file has C{partial=True} and the
        path of its final file; a path with both is listed twice.
        """
        self.put("x", b"abc", mtime_ns=MTIME)
        self.put("d/e/y", b"hello", partial=True, mtime_ns=MTIME + 1)
        self.put("z", b"final", mtime_ns=MTIME + 2)
        self.put("z", b"partial!", partial=True, mtime_ns=MTIME + 3)
        self.put("empty", b"", mtime_ns=MTIME + 4)
        self.assertEqual(
            self.listing(),
            [
                FileInfo("d/e/y", 5, MTIME + 1, True),
                FileInfo("empty", 0, MTIME + 4, False),
                FileInfo("x", 3, MTIME, False),
                FileInfo("z", 5, MTIME + 2, False),
                FileInfo("z", 8, MTIME + 3, True),
            ],
        )
        self.assertEqual(self.listing(B), [])

    # -- write -------------------------------------------------------------

    def test_write_fresh_file(self) -> None:
        """
        Writing a path that does not exist creates its directories and its
        partial file, not the final one.
        """
        result = self.write("d/e/f", 0, 5, b"hello")
        self.assertEqual(result.leaves, ())
        self.assertFalse(result.finished)
        self.assertEqual(self.stored("d/e/f", partial=True), b"hello")
        self.assertIsNone(self.stored("d/e/f"))
        self.assertEqual(
            [(f.path, f.size, f.partial) for f in self.listing()],
            [("d/e/f", 5, True)],
        )

    def test_write_single_chunk(self) -> None:
        """
        A range given as one chunk of exactly its length is written.
        """
        self.write("f", 0, 8, b"abcd", chunk_size=4)
        self.write("f", 4, 8, b"efgh", chunk_size=4)
        self.assertEqual(self.stored("f", partial=True), b"abcdefgh")

    def test_write_past_end_extends_with_zeros(self) -> None:
        """
        Writing at an offset past the end of the file fills the gap with
        zeros; the file is not cut to C{file_size} when the range does not
        end there.
        """
        self.put("f", b"abc", partial=True)
        self.write("f", 10, 20, b"xyz")
        self.assertEqual(self.stored("f", partial=True), b"abc" + bytes(7) + b"xyz")

    def test_write_at_end_truncates(self) -> None:
        """
        A write whose range ends at C{file_size} truncates a longer file to
        C{file_size}.
        """
        self.put("f", b"0123456789" * 10, partial=True)
        self.write("f", 5, 10, b"ABCDE")
        self.assertEqual(self.stored("f", partial=True), b"01234ABCDE")

    def test_write_inside_keeps_tail(self) -> None:
        """
        A write whose range ends before C{file_size} keeps the bytes after
        it.
        """
        self.put("f", b"0123456789", partial=True)
        self.write("f", 2, 10, b"ab")
        self.assertEqual(self.stored("f", partial=True), b"01ab456789")

    def test_write_final_builds_partial(self) -> None:
        """
        Writing to a final file builds the new version in the partial file,
        from the final's bytes around the written range; the final file
        stays as it was (issue 14, item 13) until the partial is finished.
        """
        self.put("d/f", b"hello world", mtime_ns=MTIME)
        self.write("d/f", 0, 11, b"HELLO")
        self.assertEqual(self.stored("d/f"), b"hello world")
        self.assertEqual(self.stored_mtime("d/f"), MTIME)
        self.assertEqual(self.stored("d/f", partial=True), b"HELLO world")
        self.assertEqual(
            [(f.path, f.size, f.partial) for f in self.listing()],
            [("d/f", 11, False), ("d/f", 11, True)],
        )
        result_of(self, self.store.finish(A, "d/f", MTIME + 1))
        self.assertEqual(self.stored("d/f"), b"HELLO world")
        self.assertIsNone(self.stored("d/f", partial=True))

    def test_write_final_whole(self) -> None:
        """
        A write of a whole new content over a final file starts an empty
        partial file (nothing of the final is needed) and leaves the final
        alone.
        """
        self.put("f", b"old content", mtime_ns=MTIME)
        self.write("f", 0, 3, b"new")
        self.assertEqual(self.stored("f"), b"old content")
        self.assertEqual(self.stored("f", partial=True), b"new")

    def test_write_final_resume(self) -> None:
        """
        A write of the end of a file over a final file keeps the final's
        bytes before the range in the partial (the resume of a move whose
        destination was final).
        """
        self.put("f", b"0123456789", mtime_ns=MTIME)
        self.write("f", 4, 8, b"abcd")
        self.assertEqual(self.stored("f"), b"0123456789")
        self.assertEqual(self.stored("f", partial=True), b"0123abcd")

    def test_write_prefers_partial(self) -> None:
        """
        When both a final and a partial file exist, a write goes to the
        partial one and leaves the final one alone.
        """
        self.put("f", b"final", mtime_ns=MTIME)
        self.put("f", b"partial", partial=True)
        self.write("f", 0, 7, b"P")
        self.assertEqual(self.stored("f", partial=True), b"Partial")
        self.assertEqual(self.stored("f"), b"final")
        self.assertEqual(self.stored_mtime("f"), MTIME)

    def test_write_short_stream(self) -> None:
        """
        A write stream with fewer bytes than announced fails with
        L{Conflict}, whether it is empty, one short chunk or several.
        """
        for chunks in [(), (b"abcd",), (b"ab", b"cd")]:
            self.fails(self.store.write(A, "f", 0, 10, 10, stream(*chunks)), Conflict)
        self.assertIsNone(self.stored("f"))

    def test_write_long_stream(self) -> None:
        """
        A write stream with more bytes than announced fails with
        L{Conflict}, whether the excess is in the first chunk or in a later
        one.
        """
        for chunks in [(b"abcdefgh",), (b"abcd", b"e"), (b"ab", b"cd", b"ef")]:
            self.fails(self.store.write(A, "f", 0, 4, 4, stream(*chunks)), Conflict)
        self.assertIsNone(self.stored("f"))

    def test_write_empty_file(self) -> None:
        """
        An empty write stream for an empty file creates it, and finishes it
        with the root of the empty file.
        """
        result = result_of(
            self,
            self.store.write(
                A, "e", 0, 0, 0, stream(), finish_root=EMPTY_ROOT, mtime_ns=MTIME
            ),
        )
        self.assertTrue(result.finished)
        self.assertEqual(self.stored("e"), b"")
        self.assertIsNone(self.stored("e", partial=True))
        self.assertEqual(self.stored_mtime("e"), MTIME)

    def test_write_hash_leaves(self) -> None:
        """
        With C{hash=True} a write returns the leaves of
        C{[align_down(start), end)} of the file after the write, including
        the existing bytes before C{start} in the first leaf; the leaves
        stop at C{end} even if the file goes on.
        """
        base = random_bytes(BIG, seed=1)
        self.put("f", base, partial=True)
        start, end = 300_000, 2 * LEAF_SIZE + 200_000
        new = random_bytes(end - start, seed=2)
        result = self.write("f", start, BIG, new, hash=True)
        content = base[:start] + new + base[end:]
        self.assertEqual(self.stored("f", partial=True), content)
        self.assertEqual(len(result.leaves), 3)
        self.assertEqual(result.leaves, expected_leaves(content[:end]))

    def test_write_hash_unaligned_start(self) -> None:
        """
        A hashed write starting inside a later leaf returns leaves from
        that leaf's start.
        """
        base = random_bytes(BIG, seed=3)
        self.put("f", base)
        start = LEAF_SIZE + 12_345
        new = random_bytes(BIG - start, seed=4)
        result = self.write("f", start, BIG, new, hash=True)
        content = base[:start] + new
        self.assertEqual(self.stored("f", partial=True), content)
        self.assertEqual(result.leaves, expected_leaves(content, LEAF_SIZE))
        self.assertEqual(len(result.leaves), 2)

    def test_write_hash_past_end(self) -> None:
        """
        The leaves of a hashed write past the end of the file count the
        zeros that fill the gap.
        """
        self.put("f", b"head", partial=True)
        start = LEAF_SIZE + 10
        new = random_bytes(LEAF_SIZE, seed=5)
        end = start + len(new)
        result = self.write("f", start, end, new, hash=True)
        content = b"head" + bytes(start - 4) + new
        self.assertEqual(self.stored("f", partial=True), content)
        self.assertEqual(result.leaves, expected_leaves(content, LEAF_SIZE))

    def test_write_finish_root_matches(self) -> None:
        """
        A write ending at the end of the file with the file's Merkle root
        as C{finish_root} finishes it: the final file exists with the
        given mtime and the partial one is gone.  This holds when the write
        only brings the end of a file whose start was written before.
        """
        data = random_bytes(BIG, seed=6)
        root = merkle_root(expected_leaves(data))
        split = LEAF_SIZE + 10
        self.write("d/f", 0, BIG, data[:split])
        result = self.write(
            "d/f", split, BIG, data[split:], finish_root=root, mtime_ns=MTIME
        )
        self.assertTrue(result.finished)
        self.assertEqual(result.leaves, ())
        self.assertEqual(self.stored("d/f"), data)
        self.assertIsNone(self.stored("d/f", partial=True))
        self.assertEqual(self.stored_mtime("d/f"), MTIME)
        self.assertEqual(self.listing(), [FileInfo("d/f", BIG, MTIME, False)])

    def test_write_finish_root_and_hash(self) -> None:
        """
        A finishing write asked for its hash returns its leaves too.
        """
        data = random_bytes(LEAF_SIZE + 7, seed=7)
        leaves = expected_leaves(data)
        result = self.write(
            "f", 0, len(data), data, hash=True, finish_root=merkle_root(leaves)
        )
        self.assertTrue(result.finished)
        self.assertEqual(result.leaves, leaves)
        self.assertEqual(self.stored("f"), data)

    def test_write_one_chunk_hash_and_finish(self) -> None:
        """
        A write of a whole file in one chunk, asked for its hash and to
        finish, returns its leaves and finishes it.
        """
        data = random_bytes(100_000, seed=18)
        leaves = expected_leaves(data)
        result = self.write(
            "f",
            0,
            len(data),
            data,
            chunk_size=len(data),
            hash=True,
            finish_root=merkle_root(leaves),
            mtime_ns=MTIME,
        )
        self.assertEqual(result.leaves, leaves)
        self.assertTrue(result.finished)
        self.assertEqual(self.stored("f"), data)
        self.assertEqual(self.stored_mtime("f"), MTIME)

    def test_write_finish_root_mismatch(self) -> None:
        """
        A write whose file does not have the given C{finish_root} does not
        finish: the partial file stays, no final file appears.
        """
        data = random_bytes(LEAF_SIZE + 7, seed=8)
        wrong = merkle_root(expected_leaves(data[:-1] + b"?"))
        result = self.write("f", 0, len(data), data, finish_root=wrong, mtime_ns=MTIME)
        self.assertFalse(result.finished)
        self.assertIsNone(self.stored("f"))
        self.assertEqual(self.stored("f", partial=True), data)

    def test_write_finish_root_not_at_end(self) -> None:
        """
        A C{finish_root} is ignored by a write that does not end at the end
        of the file, even if the bytes so far have that root.
        """
        result = self.write(
            "f", 0, 10, b"abc", finish_root=merkle_root(expected_leaves(b"abc"))
        )
        self.assertFalse(result.finished)
        self.assertIsNone(self.stored("f"))
        self.assertEqual(self.stored("f", partial=True), b"abc")

    def test_write_bad_range(self) -> None:
        """
        A reversed range or one beyond C{file_size} is a L{BadRequest} and
        creates nothing.
        """
        self.fails(self.store.write(A, "f", 5, 4, 10, stream()), BadRequest)
        self.fails(self.store.write(A, "f", 0, 4, 3, stream(b"abcd")), BadRequest)
        self.assert_empty()

    # -- read --------------------------------------------------------------

    def test_read_final_preferred(self) -> None:
        """
        A read reads the final file when there is also a partial one, and
        reports the final file's size and mtime.
        """
        self.put("f", b"final", mtime_ns=MTIME)
        self.put("f", b"partial!", partial=True, mtime_ns=MTIME + 1)
        data, state = self.read("f", 0, 100)
        self.assertEqual(data, b"final")
        self.assertEqual(state, FileState((), 5, MTIME))

    def test_read_partial_alone(self) -> None:
        """
        A read of a path with only a partial file reads the partial file.
        """
        self.put("d/f", b"partial!", partial=True, mtime_ns=MTIME)
        data, state = self.read("d/f", 0, 8)
        self.assertEqual(data, b"partial!")
        self.assertEqual(state, FileState((), 8, MTIME))

    def test_read_ranges(self) -> None:
        """
        A read returns the bytes of its range, clipped at the end of the
        file; a range past the end returns nothing.
        """
        self.put("f", b"0123456789")
        self.assertEqual(self.read("f", 2, 5)[0], b"234")
        self.assertEqual(self.read("f", 7, 100)[0], b"789")
        self.assertEqual(self.read("f", 4, 4)[0], b"")
        self.assertEqual(self.read("f", 20, 30)[0], b"")

    def test_read_multi_chunk(self) -> None:
        """
        A read of several chunks returns the bytes of its range.
        """
        data = random_bytes(BIG, seed=9)
        self.put("f", data)
        self.assertEqual(self.read("f", 100, BIG - 100)[0], data[100:-100])

    def test_read_hash_from_zero(self) -> None:
        """
        With C{hash_from=0} a read returns only the bytes of its range but
        the leaves of the whole file, with its size and mtime.
        """
        data = random_bytes(BIG, seed=10)
        self.put("f", data, mtime_ns=MTIME)
        start = LEAF_SIZE + 5
        got, state = self.read("f", start, BIG, hash_from=0)
        self.assertEqual(got, data[start:])
        self.assertEqual(state, FileState(expected_leaves(data), BIG, MTIME))

    def test_read_hash_from_leaf(self) -> None:
        """
        With C{hash_from} a later leaf boundary the leaves start there.
        """
        data = random_bytes(BIG, seed=11)
        self.put("f", data)
        got, state = self.read("f", LEAF_SIZE, BIG, hash_from=LEAF_SIZE)
        self.assertEqual(got, data[LEAF_SIZE:])
        self.assertEqual(state.leaves, expected_leaves(data, LEAF_SIZE))

    def test_read_hash_from_invalid(self) -> None:
        """
        A C{hash_from} that is not a leaf boundary, or is after C{start},
        is a L{BadRequest}.
        """
        self.put("f", random_bytes(BIG, seed=12))
        self.fails(read_all(self.store, A, "f", 10, 20, hash_from=5), BadRequest)
        self.fails(
            read_all(self.store, A, "f", 10, 20, hash_from=LEAF_SIZE), BadRequest
        )

    def test_read_missing(self) -> None:
        """
        A read of a path with no file, or in a missing directory, fails
        with L{NotFound}.
        """
        self.fails(read_all(self.store, A, "f", 0, 10), NotFound)
        self.fails(read_all(self.store, A, "d/f", 0, 10), NotFound)

    def test_read_cancel(self) -> None:
        """
        Cancelling a read after its first chunk ends its stream.
        """
        data = random_bytes(BIG, seed=13)
        self.put("f", data)

        async def first_then_cancel() -> tuple[bytes, list[bytes]]:
            read = self.store.read(A, "f", 0, BIG)
            iterator = aiter(read)
            first = await anext(iterator)
            read.cancel()
            return first, [chunk async for chunk in iterator]

        first, rest = result_of(self, first_then_cancel())
        self.assertTrue(0 < len(first) < BIG)
        self.assertEqual(first, data[: len(first)])
        self.assertEqual(rest, [])

    # -- truncate ----------------------------------------------------------

    def test_truncate_shrinks(self) -> None:
        """
        Truncating a final file makes a partial file of its first bytes;
        the final file stays as it was (issue 14, item 13).
        """
        self.put("f", b"0123456789")
        result_of(self, self.store.truncate(A, "f", 4))
        self.assertEqual(self.stored("f"), b"0123456789")
        self.assertEqual(self.stored("f", partial=True), b"0123")

    def test_truncate_final_extends(self) -> None:
        """
        Truncating a final file to a larger size makes a partial file of
        all of it and zeros.
        """
        self.put("f", b"abc")
        result_of(self, self.store.truncate(A, "f", 5))
        self.assertEqual(self.stored("f"), b"abc")
        self.assertEqual(self.stored("f", partial=True), b"abc\0\0")

    def test_truncate_extends(self) -> None:
        """
        Truncating a partial file to a larger size extends it with zeros.
        """
        self.put("f", b"abc", partial=True)
        result_of(self, self.store.truncate(A, "f", 8))
        self.assertEqual(self.stored("f", partial=True), b"abc" + bytes(5))

    def test_truncate_prefers_partial(self) -> None:
        """
        Truncation acts on the partial file when both exist.
        """
        self.put("f", b"final")
        self.put("f", b"partial", partial=True)
        result_of(self, self.store.truncate(A, "f", 2))
        self.assertEqual(self.stored("f", partial=True), b"pa")
        self.assertEqual(self.stored("f"), b"final")

    def test_truncate_missing(self) -> None:
        """
        Truncating a path with no file fails with L{NotFound} and creates
        nothing.
        """
        self.fails(self.store.truncate(A, "f", 4), NotFound)
        self.fails(self.store.truncate(A, "d/f", 4), NotFound)
        self.assert_empty()

    # -- finish ------------------------------------------------------------

    def test_finish_partial(self) -> None:
        """
        Finishing renames the partial file to the final one and sets its
        mtime.
        """
        self.put("d/f", b"data", partial=True)
        result_of(self, self.store.finish(A, "d/f", MTIME))
        self.assertEqual(self.stored("d/f"), b"data")
        self.assertIsNone(self.stored("d/f", partial=True))
        self.assertEqual(self.listing(), [FileInfo("d/f", 4, MTIME, False)])

    def test_finish_without_mtime(self) -> None:
        """
        Finishing without an mtime still makes the file final.
        """
        self.put("f", b"data", partial=True)
        result_of(self, self.store.finish(A, "f"))
        self.assertEqual(self.stored("f"), b"data")
        self.assertIsNone(self.stored("f", partial=True))

    def test_finish_replaces_final(self) -> None:
        """
        Finishing a path with both files replaces the final one with the
        partial one.
        """
        self.put("f", b"old")
        self.put("f", b"new!", partial=True)
        result_of(self, self.store.finish(A, "f", MTIME))
        self.assertEqual(self.stored("f"), b"new!")
        self.assertIsNone(self.stored("f", partial=True))

    def test_finish_already_final(self) -> None:
        """
        Finishing a final file is a no-op on its content that sets its
        mtime.
        """
        self.put("f", b"data", mtime_ns=MTIME)
        result_of(self, self.store.finish(A, "f", MTIME + 5))
        self.assertEqual(self.stored("f"), b"data")
        self.assertEqual(self.stored_mtime("f"), MTIME + 5)
        result_of(self, self.store.finish(A, "f"))
        self.assertEqual(self.stored_mtime("f"), MTIME + 5)
        self.assertIsNone(self.stored("f", partial=True))

    def test_finish_missing(self) -> None:
        """
        Finishing a path with neither file fails with L{NotFound}.
        """
        self.fails(self.store.finish(A, "f"), NotFound)
        self.fails(self.store.finish(A, "d/f", MTIME), NotFound)
        self.assert_empty()

    # -- delete ------------------------------------------------------------

    def test_delete_both(self) -> None:
        """
        Deleting a path removes its final and its partial file.
        """
        self.put("d/f", b"final")
        self.put("d/f", b"partial", partial=True)
        self.put("g", b"other")
        result_of(self, self.store.delete(A, "d/f"))
        self.assertIsNone(self.stored("d/f"))
        self.assertIsNone(self.stored("d/f", partial=True))
        self.assertEqual([f.path for f in self.listing()], ["g"])

    def test_delete_partial_only(self) -> None:
        """
        Deleting a path with only a partial file removes it.
        """
        self.put("f", b"partial", partial=True)
        result_of(self, self.store.delete(A, "f"))
        self.assertEqual(self.listing(), [])

    def test_delete_absent(self) -> None:
        """
        Deleting a path that has no file, even in a missing directory,
        succeeds, also with a precondition.
        """
        result_of(self, self.store.delete(A, "f"))
        result_of(self, self.store.delete(A, "d/e/f"))
        result_of(self, self.store.delete(A, "f", size=3, mtime_ns=MTIME))
        self.assert_empty()

    def test_delete_unchanged(self) -> None:
        """
        A delete with the final file's current size and mtime deletes it.
        """
        self.put("f", b"abc", mtime_ns=MTIME)
        result_of(self, self.store.delete(A, "f", size=3, mtime_ns=MTIME))
        self.assertIsNone(self.stored("f"))

    def test_delete_changed_size(self) -> None:
        """
        A delete whose size differs from the final file's fails with
        L{Conflict} and keeps the file (and its partial).
        """
        self.put("f", b"abcd", mtime_ns=MTIME)
        self.put("f", b"part", partial=True)
        self.fails(self.store.delete(A, "f", size=3, mtime_ns=MTIME), Conflict)
        self.assertEqual(self.stored("f"), b"abcd")
        self.assertEqual(self.stored("f", partial=True), b"part")

    def test_delete_changed_mtime(self) -> None:
        """
        A delete whose mtime differs from the final file's fails with
        L{Conflict} and keeps the file.
        """
        self.put("f", b"abc", mtime_ns=MTIME)
        self.fails(self.store.delete(A, "f", size=3, mtime_ns=MTIME + 1), Conflict)
        self.assertEqual(self.stored("f"), b"abc")

    # -- hash --------------------------------------------------------------

    def test_hash_prefers_partial(self) -> None:
        """
        C{hash} hashes the partial file when both exist, and reports its
        size and mtime.
        """
        final = random_bytes(BIG, seed=14)
        partial = random_bytes(LEAF_SIZE + 3, seed=15)
        self.put("f", final, mtime_ns=MTIME)
        self.put("f", partial, partial=True, mtime_ns=MTIME + 1)
        state = result_of(self, self.store.hash(A, "f", 0, BIG))
        self.assertEqual(
            state, FileState(expected_leaves(partial), LEAF_SIZE + 3, MTIME + 1)
        )

    def test_hash_final(self) -> None:
        """
        C{hash} of a path with only a final file hashes that file.
        """
        data = random_bytes(BIG, seed=16)
        self.put("f", data, mtime_ns=MTIME)
        state = result_of(self, self.store.hash(A, "f", 0, BIG))
        self.assertEqual(state, FileState(expected_leaves(data), BIG, MTIME))

    def test_hash_ranges(self) -> None:
        """
        C{hash} returns the leaves of its range clipped at the file's size:
        a middle leaf, the short last leaf, nothing past the end.
        """
        data = random_bytes(BIG, seed=17)
        self.put("f", data)
        leaves = expected_leaves(data)

        def hash_range(start: int, end: int) -> tuple[bytes, ...]:
            state = result_of(self, self.store.hash(A, "f", start, end))
            self.assertEqual(state.size, BIG)
            return state.leaves

        self.assertEqual(hash_range(LEAF_SIZE, 2 * LEAF_SIZE), leaves[1:2])
        self.assertEqual(hash_range(LEAF_SIZE, 100 * LEAF_SIZE), leaves[1:])
        self.assertEqual(hash_range(0, 10), (leaf_hash(data[:10]),))
        self.assertEqual(hash_range(3 * LEAF_SIZE, 4 * LEAF_SIZE), ())

    def test_hash_unaligned(self) -> None:
        """
        A C{hash} range not starting on a leaf boundary is a L{BadRequest}.
        """
        self.put("f", b"data")
        self.fails(self.store.hash(A, "f", 1, LEAF_SIZE), BadRequest)
        self.fails(self.store.hash(A, "f", LEAF_SIZE + 1, BIG), BadRequest)

    def test_hash_missing(self) -> None:
        """
        C{hash} of a path with no file fails with L{NotFound}.
        """
        self.fails(self.store.hash(A, "f", 0, 10), NotFound)
        self.fails(self.store.hash(A, "d/f", 0, 10), NotFound)

    # -- invalid paths -----------------------------------------------------

    def test_invalid_paths(self) -> None:
        """
        Every command given a malformed path ('..', absolute, empty
        segment, a partial file's name, NUL...) fails with L{InvalidPath}
        and creates nothing.
        """
        for path in INVALID_PATHS:
            coros = [
                read_all(self.store, A, path, 0, 10),
                self.store.write(A, path, 0, 1, 1, stream(b"x")),
                self.store.truncate(A, path, 0),
                self.store.finish(A, path),
                self.store.delete(A, path),
                self.store.hash(A, path, 0, 10),
            ]
            for coro in coros:
                self.fails(coro, InvalidPath)
        self.assert_empty()

    # -- repair by delta ---------------------------------------------------

    def test_signature_diff_apply(self) -> None:
        """
        The destination's signature of a range, the source's delta against
        it and the destination's apply turn the destination's range into
        the source's; the leaves returned are those of the new range.
        """
        source = random.Random(3).randbytes(2 * LEAF_SIZE + 500)
        basis = bytearray(source)
        basis[LEAF_SIZE + 7] ^= 0xFF
        self.put("src", source)
        self.put("dst", bytes(basis), partial=True)
        signature = result_of(
            self, self.store.signature(A, "dst", LEAF_SIZE, len(source))
        )
        assert signature is not None
        change = result_of(
            self, self.store.diff(A, "src", LEAF_SIZE, len(source), signature)
        )
        self.assertLess(len(change), 8192)
        leaves = result_of(
            self,
            self.store.apply_delta(
                A, "dst", LEAF_SIZE, len(source), len(source), change
            ),
        )
        self.assertEqual(self.stored("dst", partial=True), source)
        self.assertEqual(
            leaves,
            (
                leaf_hash(source[LEAF_SIZE : 2 * LEAF_SIZE]),
                leaf_hash(source[2 * LEAF_SIZE :]),
            ),
        )

    def test_signature_missing_range(self) -> None:
        """
        A file with no byte at the range's start has no signature.
        """
        self.put("short", b"x" * 10, partial=True)
        self.assertIsNone(
            result_of(self, self.store.signature(A, "short", LEAF_SIZE, 2 * LEAF_SIZE))
        )

    def test_apply_extends_and_truncates(self) -> None:
        """
        Applying to a shorter basis extends the file; applying on the last
        range truncates it at the file size.
        """
        source = random.Random(4).randbytes(3000)
        self.put("src", source)
        self.put("dst", source[:1000] + b"trailing garbage" * 500, partial=True)
        signature = result_of(self, self.store.signature(A, "dst", 0, 3000))
        assert signature is not None
        change = result_of(self, self.store.diff(A, "src", 0, 3000, signature))
        result_of(self, self.store.apply_delta(A, "dst", 0, 3000, 3000, change))
        self.assertEqual(self.stored("dst", partial=True), source)

    def test_apply_bad_delta(self) -> None:
        """
        A malformed delta, or one that produces the wrong length, is
        refused with BadDelta and the file is unchanged.
        """
        self.put("dst", b"original", partial=True)
        self.fails(self.store.apply_delta(A, "dst", 0, 8, 8, b"garbage"), BadDelta)
        self.assertEqual(self.stored("dst", partial=True), b"original")

    def test_apply_bad_delta_final(self) -> None:
        """
        A bad delta for a path with only a final file makes no partial file
        and leaves the final as it was (issue 14, item 9).
        """
        self.put("dst", b"original", mtime_ns=MTIME)
        self.fails(self.store.apply_delta(A, "dst", 0, 8, 8, b"garbage"), BadDelta)
        self.assertEqual(self.stored("dst"), b"original")
        self.assertEqual(self.stored_mtime("dst"), MTIME)
        self.assertIsNone(self.stored("dst", partial=True))

    def test_apply_to_final(self) -> None:
        """
        A delta applied to a path with only a final file goes to a partial
        made from the final (the basis); the final stays as it was.
        """
        source = random.Random(5).randbytes(3000)
        basis = bytearray(source)
        basis[100] ^= 0xFF
        self.put("src", source)
        self.put("dst", bytes(basis), mtime_ns=MTIME)
        signature = result_of(self, self.store.signature(A, "dst", 0, 3000))
        assert signature is not None
        change = result_of(self, self.store.diff(A, "src", 0, 3000, signature))
        result_of(self, self.store.apply_delta(A, "dst", 0, 3000, 3000, change))
        self.assertEqual(self.stored("dst", partial=True), source)
        self.assertEqual(self.stored("dst"), bytes(basis))

    def test_diff_bad_signature(self) -> None:
        """
        A malformed signature is refused with BadDelta.
        """
        self.put("src", b"content")
        self.fails(self.store.diff(A, "src", 0, 7, b"not a signature"), BadDelta)

    # -- batches of small files ------------------------------------------

    def test_read_files(self) -> None:
        """
        read_files reads whole files (final preferred, else partial) with
        their size, mtime and root; a missing file or an invalid path is an
        error entry; a file over its limit is not read.
        """
        self.put("d/one", b"first", mtime_ns=MTIME)
        self.put("d/two", b"partial only", partial=True)
        self.put("big", b"x" * 100)
        reads = result_of(
            self,
            self.store.read_files(
                A,
                [("d/one", 10), ("d/two", 100), ("gone", 5), ("../x", 5), ("big", 99)],
            ),
        )
        one, two, gone, bad, big = reads
        self.assertEqual(
            (one.data, one.size, one.mtime_ns, one.root),  # type: ignore[union-attr]
            (b"first", 5, MTIME, leaf_hash(b"first")),
        )
        self.assertEqual(two.data, b"partial only")  # type: ignore[union-attr]
        self.assertIsInstance(gone, NotFound)
        self.assertIsInstance(bad, InvalidPath)
        self.assertEqual((big.data, big.size), (b"", 100))  # type: ignore[union-attr]

    def test_read_files_empty(self) -> None:
        """
        An empty file reads as no data with the empty root.
        """
        self.put("empty", b"")
        [read] = result_of(self, self.store.read_files(A, [("empty", 0)]))
        self.assertEqual((read.data, read.root), (b"", EMPTY_ROOT))  # type: ignore[union-attr]

    def test_write_files(self) -> None:
        """
        write_files writes, verifies and finishes each file with its mtime,
        replacing a final or partial file; a file whose root differs stays
        partial with a Conflict; bad entries fail alone.
        """
        self.put("old", b"old final")
        self.put("half", b"old partial", partial=True)
        contents = {
            "new/a": b"alpha",
            "old": b"replaced",
            "half": b"completed",
            "empty": b"",
        }
        files = [
            SmallFile(
                path,
                len(data),
                MTIME,
                merkle_root([leaf_hash(data)]) if data else EMPTY_ROOT,
            )
            for path, data in contents.items()
        ]
        files.append(SmallFile("wrong", 3, MTIME, leaf_hash(b"not this")))
        files.append(SmallFile("../bad", 3, MTIME, leaf_hash(b"bad")))
        files.append(SmallFile("short", 10, MTIME, leaf_hash(b"short")))
        data = [*contents.values(), b"abc", b"bad", b"short"]
        outcomes = result_of(self, self.store.write_files(A, files, data))
        self.assertEqual(outcomes[:4], [None, None, None, None])
        self.assertIsInstance(outcomes[4], Conflict)
        self.assertIsInstance(outcomes[5], InvalidPath)
        self.assertIsInstance(outcomes[6], Conflict)
        for path, content in contents.items():
            self.assertEqual(self.stored(path), content)
            self.assertIsNone(self.stored(path, partial=True))
            self.assertEqual(self.stored_mtime(path), MTIME)
        self.assertIsNone(self.stored("wrong"))
        self.assertEqual(self.stored("wrong", partial=True), b"abc")

    def test_write_files_views(self) -> None:
        """
        write_files takes each content as a view of one buffer (as the
        daemon's WriteFiles responder passes them) and keeps none of it:
        the buffer changed afterwards changes no file.
        """
        contents = {"v/one": b"first file", "v/two": b"second", "v/three": b"3"}
        buffer = bytearray(b"".join(contents.values()))
        views, offset = [], 0
        for content in contents.values():
            views.append(memoryview(buffer)[offset : offset + len(content)])
            offset += len(content)
        files = [
            SmallFile(path, len(data), MTIME, merkle_root([leaf_hash(data)]))
            for path, data in contents.items()
        ]
        outcomes = result_of(self, self.store.write_files(A, files, views))
        self.assertEqual(outcomes, [None, None, None])
        buffer[:] = bytes(len(buffer))
        for path, content in contents.items():
            self.assertEqual(self.stored(path), content)

    def test_delete_files(self) -> None:
        """
        delete_files deletes each file that still has its size and mtime,
        with its partial; a changed file is a Conflict and stays; a missing
        one is fine.
        """
        self.put("d/keep", b"changed", mtime_ns=MTIME)
        self.put("d/go", b"going", mtime_ns=MTIME)
        self.put("d/go", b"stale", partial=True)
        outcomes = result_of(
            self,
            self.store.delete_files(
                A,
                [
                    FileInfo("d/go", 5, MTIME),
                    FileInfo("d/keep", 3, MTIME),
                    FileInfo("missing", 1, MTIME),
                ],
            ),
        )
        self.assertIsNone(outcomes[0])
        self.assertIsInstance(outcomes[1], Conflict)
        self.assertIsNone(outcomes[2])
        self.assertIsNone(self.stored("d/go"))
        self.assertIsNone(self.stored("d/go", partial=True))
        self.assertEqual(self.stored("d/keep"), b"changed")

    def test_delete_files_listed_partials(self) -> None:
        """
        delete_files given the paths whose partial the caller listed
        deletes those partials with their files and leaves the partial of
        any other path (made after the listing) as it is.
        """
        for path in ("d/listed", "d/unlisted"):
            self.put(path, b"final", mtime_ns=MTIME)
            self.put(path, b"part", partial=True)
        outcomes = result_of(
            self,
            self.store.delete_files(
                A,
                [FileInfo("d/listed", 5, MTIME), FileInfo("d/unlisted", 5, MTIME)],
                {"d/listed"},
            ),
        )
        self.assertEqual(outcomes, [None, None])
        self.assertIsNone(self.stored("d/listed"))
        self.assertIsNone(self.stored("d/listed", partial=True))
        self.assertIsNone(self.stored("d/unlisted"))
        self.assertEqual(self.stored("d/unlisted", partial=True), b"part")


class LocalStoreContractTests(StoreContractMixin, SynchronousTestCase):
    """
    The L{Store} contract for L{LocalStore} on a temporary directory.
    """

    def setUp(self) -> None:
        self.base = self.mktemp()
        self.directories = {
            A: os.path.join(self.base, "a"),
            B: os.path.join(self.base, "b"),
        }
        for directory in self.directories.values():
            os.makedirs(directory)
        self.store = LocalStore(
            {name: ArenaDir(name, path) for name, path in self.directories.items()},
            sync_run_in_thread,
        )

    def file_path(self, path: str, partial: bool) -> str:
        directory, _, name = path.rpartition("/")
        if partial:
            name = partial_name(name)
        return os.path.join(self.directories[A], directory, name)

    def put(
        self,
        path: str,
        data: bytes,
        partial: bool = False,
        mtime_ns: int | None = None,
    ) -> None:
        full = self.file_path(path, partial)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        if mtime_ns is not None:
            os.utime(full, ns=(mtime_ns, mtime_ns))

    def stored(self, path: str, partial: bool = False) -> bytes | None:
        try:
            with open(self.file_path(path, partial), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def stored_mtime(self, path: str, partial: bool = False) -> int:
        return os.stat(self.file_path(path, partial)).st_mtime_ns

    def assert_empty(self) -> None:
        self.assertEqual(sorted(os.listdir(self.base)), ["a", "b"])
        for directory in self.directories.values():
            self.assertEqual(os.listdir(directory), [])

    def test_describe(self) -> None:
        """
        A local store describes itself by its label.
        """
        self.assertEqual(self.store.describe(), "local")
        single = LocalStore.single(A, self.directories[A], sync_run_in_thread)
        self.assertEqual(single.describe(), f"local:{self.directories[A]}")


def pickled_runner(calls: list[str]) -> Any:
    """
    A synchronous runner that treats a call as L{realize.processes.
    WorkerService} does: the function, its arguments, its result and its
    error go through pickle (a worker process gets copies).

    @param calls: gets the name of each function run.
    """

    def run(f: Any, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        f, args, kwargs = pickle.loads(pickle.dumps((f, args, kwargs)))
        calls.append(f.__name__)
        try:
            result = f(*args, **kwargs)
        except Exception as e:
            return fail(pickle.loads(pickle.dumps(e)))
        return succeed(pickle.loads(pickle.dumps(result)))

    return run


class WorkerBatchContractTests(LocalStoreContractTests):
    """
    The L{Store} contract for a L{LocalStore} whose small-file batches run
    as in the daemon's worker process (L{pickled_runner}).
    """

    def setUp(self) -> None:
        super().setUp()
        self.batches: list[str] = []
        self.store = LocalStore(
            self.store.arena_dirs,
            sync_run_in_thread,
            run_batch=pickled_runner(self.batches),
        )

    def test_batch_in_worker(self) -> None:
        """
        write_files runs its batch with C{run_batch}, its arena directory
        pickled as its name, directory and exclude.
        """
        files = [SmallFile("x/y", 2, MTIME, leaf_hash(b"xy"))]
        self.assertEqual(
            result_of(self, self.store.write_files(A, files, [b"xy"])), [None]
        )
        self.assertEqual(self.batches, ["write_packed"])
        self.batches.clear()
        self.assertEqual(self.stored("x/y"), b"xy")
        # A file whose bytes are short, between two others, fails alone.
        contents = [b"first", b"shor", b"last"]
        files = [
            SmallFile("one", 5, MTIME, leaf_hash(b"first")),
            SmallFile("two", 5, MTIME, leaf_hash(b"short")),
            SmallFile("three", 4, MTIME, leaf_hash(b"last")),
        ]
        outcomes = result_of(self, self.store.write_files(A, files, contents))
        self.assertIsNone(outcomes[0])
        self.assertIsInstance(outcomes[1], Conflict)
        self.assertIsNone(outcomes[2])
        self.assertEqual(
            (self.stored("one"), self.stored("three")), (b"first", b"last")
        )
        # Reads and deletions of batches go there too.
        self.batches.clear()
        [read, missing] = result_of(
            self, self.store.read_files(A, [("one", 100), ("nothing", 100)])
        )
        assert isinstance(read, SmallRead)
        self.assertEqual((read.data, read.size, read.mtime_ns), (b"first", 5, MTIME))
        self.assertIsInstance(missing, NotFound)
        result_of(self, self.store.delete_files(A, [FileInfo("one", 5, MTIME)]))
        self.assertIsNone(self.stored("one"))
        self.assertEqual(self.batches, ["read_packed", "delete_files"])
        arena_dir = ArenaDir(A, self.directories[A], "work")
        copy = pickle.loads(pickle.dumps(arena_dir))
        self.assertEqual(
            (copy.name, copy.directory, copy.exclude), (A, self.directories[A], "work")
        )
        self.assertIsNot(copy.partials, arena_dir.partials)


class PeerViewContractTests(LocalStoreContractTests):
    """
    The L{Store} contract for the L{realize.services.store.PeerView} of a
    peer that may use both arenas: the local store behind its ACL-checked
    arena resolver.
    """

    def setUp(self) -> None:
        super().setUp()
        config = parse_config(
            {
                "peers": {"p": {"pubkey": make_key()[1]}},
                "arena": [
                    {"name": name, "datadir": path}
                    for name, path in self.directories.items()
                ],
            },
            "realize.toml",
            Path.cwd(),
        )
        self.store = StoreService(config, sync_run_in_thread).view(PeerId("p"))

    def test_describe(self) -> None:
        """
        A view describes itself as the daemon seen by its peer.
        """
        self.assertEqual(self.store.describe(), "daemon (as seen by p)")

    def test_batch_runners(self) -> None:
        """
        A view runs small-file batches with its connection's batch runner
        if it has one, else with the daemon's.
        """
        daemon: list[str] = []
        connection: list[str] = []
        assert isinstance(self.store, PeerView)
        service = StoreService(
            self.store.service.config,
            sync_run_in_thread,
            run_batch=pickled_runner(daemon),
        )
        files = [SmallFile("f", 1, MTIME, leaf_hash(b"f"))]
        for view, calls in [
            (service.view(PeerId("p")), daemon),
            (
                service.view(
                    PeerId("p"),
                    sync_run_in_thread,
                    run_batch=pickled_runner(connection),
                ),
                connection,
            ),
            (service.view(PeerId("p"), sync_run_in_thread), daemon),
        ]:
            before = len(calls)
            self.assertEqual(
                result_of(self, view.write_files(A, files, [b"f"])), [None]
            )
            self.assertEqual(len(calls), before + 1)
        self.assertEqual((len(daemon), len(connection)), (2, 1))


class FaultyStoreContractTests(LocalStoreContractTests):
    """
    The L{Store} contract for a L{tests.faults.FaultyStore} without faults
    around a L{LocalStore}: the double changes nothing by itself.
    """

    def setUp(self) -> None:
        super().setUp()
        self.store = FaultyStore(self.store)

    def test_describe(self) -> None:
        """
        It describes itself as the store it wraps.
        """
        self.assertEqual(self.store.describe(), "local")


class MemoryStoreContractTests(StoreContractMixin, SynchronousTestCase):
    """
    The L{Store} contract for L{MemoryStore}.
    """

    def setUp(self) -> None:
        self.memory = MemoryStore()
        self.memory.add_arena(A)
        self.memory.add_arena(B)
        self.store = self.memory

    def put(
        self,
        path: str,
        data: bytes,
        partial: bool = False,
        mtime_ns: int | None = None,
    ) -> None:
        files = (self.memory.partials if partial else self.memory.finals)[A]
        files[path] = MemoryFile(bytearray(data), mtime_ns or self.memory.tick())

    def stored(self, path: str, partial: bool = False) -> bytes | None:
        return self.memory.content(A, path, partial)

    def stored_mtime(self, path: str, partial: bool = False) -> int:
        return (self.memory.partials if partial else self.memory.finals)[A][
            path
        ].mtime_ns

    def assert_empty(self) -> None:
        self.assertEqual(self.memory.finals, {A: {}, B: {}})
        self.assertEqual(self.memory.partials, {A: {}, B: {}})

    def test_with_files(self) -> None:
        """
        L{MemoryStore.with_files} builds a one-arena store of final and
        partial files.
        """
        store = MemoryStore.with_files("x", {"f": b"final"}, {"g": b"part"})
        files = result_of(self, store.list_files(ArenaName("x")))
        self.assertEqual(
            sorted((f.path, f.size, f.partial) for f in files),
            [("f", 5, False), ("g", 4, True)],
        )
        self.assertEqual(store.content("x", "g", partial=True), b"part")


class _Pumped:
    """
    A store over an in-memory TLS link whose every call moves the link's
    bytes until both sides are idle, so that it completes synchronously
    (what L{StoreContractMixin} expects of a store).
    """

    def __init__(self, remote: Any, flush: Any) -> None:
        self._remote = remote
        self._flush = flush

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._remote, name)
        if name == "read":

            def read(*args: Any, **kwargs: Any) -> Any:
                stream = attribute(*args, **kwargs)
                self._flush()
                return _PumpedStream(stream, self._flush)

            return read
        if not callable(attribute) or name == "describe":
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            d = Deferred.fromCoroutine(attribute(*args, **kwargs))
            self._flush()
            return await d

        return call


class _PumpedStream:
    def __init__(self, stream: Any, flush: Any) -> None:
        self._stream = stream
        self._iterator = aiter(stream)
        self._flush = flush

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> bytes:
        d = Deferred.fromCoroutine(_next(self._iterator))
        self._flush()
        return await d

    async def result(self) -> FileState:
        d = Deferred.fromCoroutine(self._stream.result())
        self._flush()
        return await d

    def cancel(self) -> None:
        self._stream.cancel()
        self._flush()


async def _next(iterator: Any) -> bytes:
    chunk: bytes = await iterator.__anext__()
    return chunk


class RemoteStoreContractTests(LocalStoreContractTests):
    """
    The L{Store} contract for L{realize.net.client.RemoteStore} over a real
    TLS link in memory (the real client and server stacks of
    L{realize.net.factory}) to the local store behind a peer's view: what a
    mover gets from a daemon.
    """

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from tests.test_net import identity, link

        super().setUp()
        config = parse_config(
            {
                "peers": {"a": {"pubkey": make_key()[1]}},
                "arena": [
                    {"name": name, "datadir": path}
                    for name, path in self.directories.items()
                ],
            },
            "realize.toml",
            Path.cwd(),
        )
        service = StoreService(config, sync_run_in_thread)
        clock = Clock()
        client, server = identity("a"), identity("b")
        self.link = link(clock, server, client, service.view)
        self.store = _Pumped(self.link.remote(), self.link.flush)  # type: ignore[assignment]
        self.addCleanup(self.link.close)

    def test_describe(self) -> None:
        """
        It describes itself as the peer and address it calls.
        """
        self.assertEqual(self.store.describe(), "b (192.0.2.2:9771)")
