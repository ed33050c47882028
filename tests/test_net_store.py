"""
Tests for the store commands end to end: L{realize.net.client.RemoteStore}
calling L{realize.net.server.StoreResponders} over real TLS in memory
(L{twisted.test.iosim}), served by a L{StoreService} whose L{PeerView}
applies the arena ACLs of a real config, or by a L{MemoryStore}.

The L{LocalStore} of the service runs its "threads" synchronously
(L{sync_run_in_thread}), so everything completes within L{Link.flush}.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from realize.config import Config, parse_config
from realize.errors import (
    BadDelta,
    BadRequest,
    Conflict,
    InvalidPath,
    IOFailure,
    NetworkError,
    NotFound,
    Unauthorized,
)
from realize.hashing import LEAF_SIZE, leaf_hash, merkle_root
from realize.interfaces import ReadStream, Store
from realize.model import ArenaName, FileInfo, FileState, SmallFile
from realize.net import codec as client_module
from realize.net import server as server_module
from realize.net.client import RemoteStore
from realize.net.codec import MAX_DATA_FRAME
from realize.net.streams import Inbox
from realize.services.store import StoreService
from realize.storage.memory import MemoryFile, MemoryStore
from tests.helpers import sync_run_in_thread
from tests.test_net import Identity, Link, NetTestCase, link

KiB = 1 << 10
MiB = 1 << 20

DOCS = ArenaName("docs")
PHOTOS = ArenaName("photos")
SHARED = ArenaName("shared")


def leaves_of(data: bytes, start: int = 0) -> tuple[bytes, ...]:
    """
    @return: the Merkle leaves of C{data[start:]}, by L{realize.hashing}.
    """
    return tuple(
        leaf_hash(data[i : i + LEAF_SIZE]) for i in range(start, len(data), LEAF_SIZE)
    )


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    """
    @return: the parts as the chunks of a write stream.
    """
    for part in parts:
        yield part


async def read_all(stream: ReadStream) -> tuple[bytes, FileState]:
    """
    @return: the data of a read stream and its final state.
    """
    data = [chunk async for chunk in stream]
    return b"".join(data), await stream.result()


def content(size: int, seed: int = 1) -> bytes:
    """
    @return: C{size} bytes that differ from one MiB to the next.
    """
    block = bytes((i * seed + i // 251) % 256 for i in range(64 * KiB))
    out = bytearray()
    n = 0
    while len(out) < size:
        out += bytes([n % 256]) + block[1:]
        n += 1
    return bytes(out[:size])


class RemoteTestCase(NetTestCase):
    """
    Runs coroutines against a L{Link}'s remote store.
    """

    link: Link

    def setUp(self) -> None:
        super().setUp()
        self.links: list[Link] = []

    def open_link(self, client: Identity, view: Any, **kwargs: Any) -> Link:
        """
        Connect a client to peer b; closed at the end of the test.
        """
        link_ = link(self.clock, self.b, client, view, **kwargs)
        self.links.append(link_)
        self.addCleanup(link_.close)
        return link_

    def run_remote(self, coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        """
        @return: a Deferred of a coroutine, after flushing every link.
        """
        d = Deferred.fromCoroutine(coro)
        for link_ in self.links:
            link_.flush()
        return d

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """
        @return: the result of a coroutine that completes once the link is
            flushed.
        """
        return self.successResultOf(self.run_remote(coro))

    def error(
        self, coro: Coroutine[Any, Any, Any], *types: type[BaseException]
    ) -> BaseException:
        """
        @return: the exception of a coroutine that fails once the link is
            flushed, checking its type.
        """
        return self.failureResultOf(self.run_remote(coro), *types).value


class ServiceTests(RemoteTestCase):
    """
    Peer a calls the store service of peer b, whose config lets a use the
    arenas C{docs} and C{shared} (no ACL) but not C{photos} (only c), and
    has an arena C{ghost} without a datadir.
    """

    def setUp(self) -> None:
        super().setUp()
        self.base = Path(self.mktemp())
        for name in ("docs", "photos", "shared"):
            (self.base / name).mkdir(parents=True)
        peers = {p.id: {"pubkey": p.pem} for p in (self.a, self.b, self.c)}
        self.config: Config = parse_config(
            {
                "peers": peers,
                "arena": [
                    {"name": "docs", "datadir": "docs", "peers": ["a"]},
                    {"name": "photos", "datadir": "photos", "peers": ["c"]},
                    {"name": "shared", "datadir": "shared"},
                    {"name": "ghost", "workdir": "ghost", "peers": ["a"]},
                ],
            },
            "realize.toml",
            self.base,
        )
        self.service = StoreService(self.config, sync_run_in_thread)
        self.link = self.connect(self.a)
        self.remote = self.link.remote()

    def connect(self, client: Identity) -> Link:
        return self.open_link(
            client, self.service.view, server_lookup=self.config.peer_by_spki().get
        )

    def put(self, arena: str, path: str, data: bytes) -> Path:
        """
        Make a final file on the server's disk.
        """
        target = self.base / arena / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def on_disk(self, arena: str) -> dict[str, bytes]:
        """
        @return: every file under an arena's datadir, partials included,
            by relative path.
        """
        root = self.base / arena
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    def test_delta_round_trip(self) -> None:
        """
        Signature, Diff and ApplyDelta over the wire repair the server's
        partial file, and the leaves answered match its new content.
        """
        source = content(3 * LEAF_SIZE)
        corrupted = bytearray(source)
        corrupted[LEAF_SIZE + 99] ^= 0xFF
        self.put("docs", "src", source)
        self.put("docs", ".dst.part", bytes(corrupted))
        signature = self.call(self.remote.signature(DOCS, "dst", 0, len(source)))
        change = self.call(self.remote.diff(DOCS, "src", 0, len(source), signature))
        self.assertLess(len(change), 8192)
        leaves = self.call(
            self.remote.apply_delta(DOCS, "dst", 0, len(source), len(source), change)
        )
        self.assertEqual(self.on_disk("docs")[".dst.part"], source)
        self.assertEqual(leaves, leaves_of(source))
        self.assertIsNone(
            self.call(self.remote.signature(DOCS, "src", 4 * LEAF_SIZE, 5 * LEAF_SIZE))
        )

    def test_delta_acl(self) -> None:
        """
        The delta commands are refused for an arena the peer may not use.
        """
        photos = ArenaName("photos")
        self.error(self.remote.signature(photos, "x", 0, 1), Unauthorized)
        self.error(self.remote.diff(photos, "x", 0, 1, b""), Unauthorized)
        self.error(self.remote.apply_delta(photos, "x", 0, 1, 1, b"d"), Unauthorized)

    def test_delta_too_large(self) -> None:
        """
        A delta far larger than its range is refused before it is applied.
        """
        self.put("docs", ".dst.part", b"old")
        error = self.error(
            self.remote.apply_delta(DOCS, "dst", 0, 3, 3, b"x" * 100_000), BadDelta
        )
        self.assertIn("larger than", str(error))
        self.assertEqual(self.on_disk("docs")[".dst.part"], b"old")

    def test_batches_round_trip(self) -> None:
        """
        write_files, read_files and delete_files over the wire, split into
        several calls, act on the server's disk and carry per-file
        outcomes back as the right error classes.
        """
        self.patch(client_module, "BATCH_CALL_FILES", 3)
        contents = {f"batch/{i} é:x": bytes([i]) * (i * 100) for i in range(8)}
        files = [
            SmallFile(
                path, len(data), 1_700_000_000_000_000_000, merkle_root(leaves_of(data))
            )
            for path, data in contents.items()
        ]
        files.append(SmallFile("batch/wrong", 2, 1, b"\0" * 32))
        outcomes = self.call(
            self.remote.write_files(DOCS, files, [*contents.values(), b"no"])
        )
        self.assertEqual(outcomes[:-1], [None] * 8)
        self.assertIsInstance(outcomes[-1], Conflict)
        disk = self.on_disk("docs")
        for path, data in contents.items():
            self.assertEqual(disk[path], data)
        self.assertEqual(disk["batch/.wrong.part"], b"no")
        reads = self.call(
            self.remote.read_files(
                DOCS, [(path, 10_000) for path in contents] + [("batch/none", 5)]
            )
        )
        self.assertEqual([r.data for r in reads[:-1]], list(contents.values()))
        self.assertEqual([r.root for r in reads[:-1]], [f.root for f in files[:-1]])
        self.assertIsInstance(reads[-1], NotFound)
        infos = [
            FileInfo(path, len(data), 1_700_000_000_000_000_000)
            for path, data in contents.items()
        ]
        infos[0] = FileInfo(infos[0].path, infos[0].size + 1, infos[0].mtime_ns)
        deleted = self.call(self.remote.delete_files(DOCS, infos))
        self.assertIsInstance(deleted[0], Conflict)
        self.assertEqual(deleted[1:], [None] * 7)
        self.assertEqual(
            sorted(self.on_disk("docs")),
            sorted([next(iter(contents)), "batch/.wrong.part"]),
        )

    def test_delete_files_listed_partials(self) -> None:
        """
        DeleteFiles with the paths whose partial the caller listed (a bit
        per file on the wire) deletes only those partials; without them,
        every file's partial goes.
        """
        mtime = 1_700_000_000_000_000_000
        for name in ("a", "b", "c"):
            os.utime(self.put("docs", f"d/{name}", b"final"), ns=(mtime, mtime))
            self.put("docs", f"d/.{name}.part", b"part")
        infos = [FileInfo(f"d/{name}", 5, mtime) for name in ("a", "b")]
        self.assertEqual(
            self.call(self.remote.delete_files(DOCS, infos, {"d/b"})), [None, None]
        )
        self.assertEqual(
            self.on_disk("docs"),
            {"d/.a.part": b"part", "d/c": b"final", "d/.c.part": b"part"},
        )
        infos = [FileInfo("d/c", 5, mtime)]
        self.assertEqual(self.call(self.remote.delete_files(DOCS, infos)), [None])
        self.assertEqual(self.on_disk("docs"), {"d/.a.part": b"part"})

    def test_batches_acl(self) -> None:
        """
        The batch commands are refused for an arena the peer may not use.
        """
        photos = ArenaName("photos")
        self.error(self.remote.read_files(photos, [("x", 1)]), Unauthorized)
        self.error(
            self.remote.write_files(photos, [SmallFile("x", 1, 1, b"r")], [b"x"]),
            Unauthorized,
        )
        self.error(
            self.remote.delete_files(photos, [FileInfo("x", 1, 1)]), Unauthorized
        )
        self.assertEqual(self.on_disk("photos"), {})

    def test_batch_too_large(self) -> None:
        """
        A batch over the server's limits is refused as a bad request and
        nothing is written.
        """
        self.patch(client_module, "BATCH_CALL_FILES", 5000)
        count = server_module.MAX_BATCH_FILES + 1
        files = [SmallFile(f"f{i}", 0, 1, b"r") for i in range(count)]
        error = self.error(
            self.remote.write_files(DOCS, files, [b""] * count), BadRequest
        )
        self.assertIn("exceeds the limits", str(error))
        self.assertEqual(self.on_disk("docs"), {})

    def test_arenas_filtered_by_acl(self) -> None:
        """
        Each peer is told only the arenas whose ACL admits it and that have
        a datadir here.
        """
        self.assertEqual(self.call(self.remote.arenas()), ["docs", "shared"])
        other = self.connect(self.c).remote()
        self.assertEqual(self.call(other.arenas()), ["photos", "shared"])

    def test_list_files(self) -> None:
        """
        The listing holds the final and partial files of the arena with
        their sizes and mtimes.
        """
        self.put("docs", "a.txt", b"alpha")
        self.put("docs", "sub dir/b:c é.txt", b"beta!")
        self.put("docs", "sub dir/.d.part", b"partial")
        listing = self.call(self.remote.list_files(DOCS))
        expected = []
        for path, name, partial in [
            ("a.txt", "a.txt", False),
            ("sub dir/b:c é.txt", "sub dir/b:c é.txt", False),
            ("sub dir/d", "sub dir/.d.part", True),
        ]:
            st = os.stat(self.base / "docs" / name)
            expected.append(FileInfo(path, st.st_size, st.st_mtime_ns, partial))
        self.assertEqual(sorted(listing, key=lambda e: e.path), expected)

    def test_read_with_hash(self) -> None:
        """
        Reading a 3 MiB file from 0 with C{hash_from=0} gives its content,
        its Merkle leaves as L{realize.hashing} computes them, its size and
        mtime; every byte crosses once.
        """
        data = content(3 * MiB)
        target = self.put("docs", "big.bin", data)
        got, state = self.call(
            read_all(self.remote.read(DOCS, "big.bin", 0, len(data), hash_from=0))
        )
        self.assertEqual(got, data)
        self.assertEqual(state.leaves, leaves_of(data))
        self.assertEqual(len(state.leaves), 3)
        self.assertEqual(state.size, len(data))
        self.assertEqual(state.mtime_ns, target.stat().st_mtime_ns)
        self.assertEqual(self.link.client.bytes_received, len(data))
        self.assertEqual(self.link.server.bytes_sent, len(data))

    def test_read_range(self) -> None:
        """
        A read of a range sends only that range, and hashes from
        C{hash_from} to its end.
        """
        data = content(3 * MiB + 12345, seed=3)
        self.put("docs", "big.bin", data)
        start, end = LEAF_SIZE + 100, 3 * MiB + 10
        got, state = self.call(
            read_all(self.remote.read(DOCS, "big.bin", start, end, hash_from=LEAF_SIZE))
        )
        self.assertEqual(got, data[start:end])
        self.assertEqual(state.leaves, leaves_of(data[:end], LEAF_SIZE))
        self.assertEqual(state.size, len(data))
        self.assertEqual(self.link.client.bytes_received, end - start)

    def test_read_missing(self) -> None:
        """
        Reading a file that does not exist raises L{NotFound} on the client,
        naming the arena and the path.
        """
        error = self.error(
            read_all(self.remote.read(DOCS, "nowhere.txt", 0, 10)), NotFound
        )
        self.assertIn("docs", str(error))
        self.assertIn("nowhere.txt", str(error))

    def test_write_then_finish(self) -> None:
        """
        A write of a stream of many chunks (some larger than a data frame)
        fills the partial file and answers its leaves; finishing it makes
        it the final file with the given mtime.
        """
        data = content(2 * MiB + 300 * KiB, seed=5)
        parts = [data[:100], data[100 : 1 * MiB], data[1 * MiB : 2 * MiB + 200 * KiB]]
        parts.append(data[len(b"".join(parts)) :])
        self.assertGreater(len(parts[2]), MAX_DATA_FRAME)
        result = self.call(
            self.remote.write(
                DOCS, "new/file.bin", 0, len(data), len(data), chunks(*parts), hash=True
            )
        )
        self.assertEqual(result.leaves, leaves_of(data))
        self.assertFalse(result.finished)
        self.assertEqual(self.on_disk("docs"), {"new/.file.bin.part": data})
        self.assertEqual(self.link.server.bytes_received, len(data))
        mtime = 1_600_000_000_123_456_789
        self.call(self.remote.finish(DOCS, "new/file.bin", mtime))
        self.assertEqual(self.on_disk("docs"), {"new/file.bin": data})
        self.assertEqual((self.base / "docs/new/file.bin").stat().st_mtime_ns, mtime)

    def test_write_into_range(self) -> None:
        """
        A write of a range in the middle of an existing file changes only
        that range (of the partial file made from the final one, which
        stays as it was) and answers the leaves from the range's
        leaf-aligned start.
        """
        data = bytearray(content(2 * MiB + 10, seed=7))
        self.put("docs", "f", bytes(data))
        original = bytes(data)
        start, end = LEAF_SIZE + 5, LEAF_SIZE + 5 + 1000
        result = self.call(
            self.remote.write(
                DOCS, "f", start, end, len(data), chunks(b"z" * 1000), hash=True
            )
        )
        data[start:end] = b"z" * 1000
        self.assertEqual(self.on_disk("docs"), {".f.part": bytes(data), "f": original})
        self.assertEqual(result.leaves, leaves_of(bytes(data[:end]), LEAF_SIZE))

    def test_write_finish_root(self) -> None:
        """
        A small file written whole with the right C{finish_root} is verified
        and finished by the server in the same command.
        """
        data = b"small file\n" * 100
        root = merkle_root(leaves_of(data))
        result = self.call(
            self.remote.write(
                SHARED,
                "small.txt",
                0,
                len(data),
                len(data),
                chunks(data),
                finish_root=root,
                mtime_ns=1_500_000_000_000_000_000,
            )
        )
        self.assertTrue(result.finished)
        self.assertEqual(result.leaves, ())
        self.assertEqual(self.on_disk("shared"), {"small.txt": data})
        self.assertEqual(
            (self.base / "shared/small.txt").stat().st_mtime_ns,
            1_500_000_000_000_000_000,
        )

    def test_write_wrong_root(self) -> None:
        """
        With a C{finish_root} the data does not match, the file is written
        but stays partial.
        """
        data = b"small file\n" * 100
        result = self.call(
            self.remote.write(
                SHARED,
                "small.txt",
                0,
                len(data),
                len(data),
                chunks(data),
                finish_root=merkle_root(leaves_of(b"other")),
            )
        )
        self.assertFalse(result.finished)
        self.assertEqual(self.on_disk("shared"), {".small.txt.part": data})

    def test_write_short_stream(self) -> None:
        """
        A write stream that ends (cleanly) before the announced end is
        answered with L{Conflict}.
        """
        error = self.error(
            self.remote.write(DOCS, "short", 0, 100, 100, chunks(b"x" * 60)), Conflict
        )
        self.assertIn("short", str(error))

    def test_truncate(self) -> None:
        """
        Truncating shortens or extends the file in its partial file (made
        from the final one, which stays as it was).
        """
        self.put("docs", "t.bin", b"0123456789")
        self.call(self.remote.truncate(DOCS, "t.bin", 4))
        final = {"t.bin": b"0123456789"}
        self.assertEqual(self.on_disk("docs"), {".t.bin.part": b"0123", **final})
        self.call(self.remote.truncate(DOCS, "t.bin", 6))
        self.assertEqual(self.on_disk("docs"), {".t.bin.part": b"0123\0\0", **final})

    def test_truncate_missing(self) -> None:
        """
        Truncating a file that does not exist raises L{NotFound}.
        """
        self.error(self.remote.truncate(DOCS, "none", 4), NotFound)

    def test_delete_precondition(self) -> None:
        """
        A conditional delete of a file that changed since it was listed
        raises L{Conflict} and keeps the file; with the listed size and
        mtime it deletes the file (and the directories it empties); deleting
        an absent file succeeds.
        """
        target = self.put("docs", "dir/d.txt", b"data")
        mtime = target.stat().st_mtime_ns
        error = self.error(
            self.remote.delete(DOCS, "dir/d.txt", size=3, mtime_ns=mtime), Conflict
        )
        self.assertIn("dir/d.txt", str(error))
        error = self.error(
            self.remote.delete(DOCS, "dir/d.txt", size=4, mtime_ns=mtime + 1), Conflict
        )
        self.assertEqual(self.on_disk("docs"), {"dir/d.txt": b"data"})
        self.call(self.remote.delete(DOCS, "dir/d.txt", size=4, mtime_ns=mtime))
        self.assertEqual(self.on_disk("docs"), {})
        self.assertFalse((self.base / "docs/dir").exists())
        self.call(self.remote.delete(DOCS, "dir/d.txt"))

    def test_hash(self) -> None:
        """
        Hashing answers the leaves of the range (clipped to the file), the
        size and the mtime.
        """
        data = content(2 * MiB + 7, seed=11)
        target = self.put("docs", "h.bin", data)
        state = self.call(self.remote.hash(DOCS, "h.bin", 0, 10 * MiB))
        self.assertEqual(state.leaves, leaves_of(data))
        self.assertEqual(state.size, len(data))
        self.assertEqual(state.mtime_ns, target.stat().st_mtime_ns)
        state = self.call(self.remote.hash(DOCS, "h.bin", LEAF_SIZE, 2 * LEAF_SIZE))
        self.assertEqual(state.leaves, leaves_of(data[: 2 * LEAF_SIZE], LEAF_SIZE))

    def every_command(self, arena: ArenaName, path: str) -> dict[str, Any]:
        """
        @return: a coroutine of each store command on a path, by name.
        """
        remote = self.remote
        return {
            "list": remote.list_files(arena),
            "read": read_all(remote.read(arena, path, 0, 4)),
            "write": remote.write(arena, path, 0, 4, 4, chunks(b"evil")),
            "truncate": remote.truncate(arena, path, 0),
            "finish": remote.finish(arena, path),
            "delete": remote.delete(arena, path),
            "hash": remote.hash(arena, path, 0, 4),
        }

    def test_unauthorized(self) -> None:
        """
        Every command on an arena whose ACL does not admit the caller raises
        L{Unauthorized} naming the peer and the arena, and leaves the arena
        alone; the arena is not listed either.
        """
        self.put("photos", "p.jpg", b"jpeg")
        for name, coro in self.every_command(PHOTOS, "p.jpg").items():
            error = self.error(coro, Unauthorized)
            self.assertIn("'photos'", str(error), name)
            self.assertIn("'a'", str(error), name)
        self.assertEqual(self.on_disk("photos"), {"p.jpg": b"jpeg"})
        self.assertNotIn("photos", self.call(self.remote.arenas()))

    def test_no_such_arena(self) -> None:
        """
        Every command on an arena that is not configured, or has no
        datadir here, raises L{NotFound} naming it.
        """
        for arena in [ArenaName("nowhere"), ArenaName("ghost")]:
            for name, coro in self.every_command(arena, "x").items():
                error = self.error(coro, NotFound)
                self.assertIn(repr(str(arena)), str(error), name)

    def test_invalid_path(self) -> None:
        """
        Every command that takes a path refuses one that could escape the
        arena or names a partial file, with L{InvalidPath}, and touches no
        file.
        """
        self.put("docs", "f", b"safe")
        for path in ["../photos/p.jpg", "/etc/passwd", "a/../../x", ".f.part", ""]:
            commands = self.every_command(DOCS, path)
            commands["list"].close()
            del commands["list"]
            for name, coro in commands.items():
                error = self.error(coro, InvalidPath)
                self.assertTrue(str(error), (path, name))
        self.assertEqual(self.on_disk("docs"), {"f": b"safe"})

    def test_write_source_fails(self) -> None:
        """
        When the data source of a write fails mid-stream, the client sends
        an aborted end frame and raises the source's error; the server
        answers L{Conflict} (the stream was aborted, not short) and keeps
        the data it received in the partial file.
        """
        answers: list[BaseException] = []
        call_remote = self.link.client.amp.callRemote

        def spy(command: Any, **arguments: Any) -> Deferred[Any]:
            d = call_remote(command, **arguments)

            def record(failure: Any) -> Any:
                answers.append(failure.value)
                return failure

            d.addErrback(record)
            return d

        self.link.client.amp.callRemote = spy  # type: ignore[method-assign]

        class SourceBroke(Exception):
            pass

        async def source() -> AsyncIterator[bytes]:
            yield b"a" * MiB
            yield b"b" * MiB
            raise SourceBroke("disk on fire")

        self.error(
            self.remote.write(DOCS, "w.bin", 0, 3 * MiB, 3 * MiB, source()),
            SourceBroke,
        )
        self.assertEqual(len(answers), 1)
        self.assertIsInstance(answers[0], Conflict)
        self.assertIn("aborted", str(answers[0]))
        self.assertEqual(self.on_disk("docs"), {".w.bin.part": b"a" * MiB + b"b" * MiB})
        # The connection still serves.
        self.assertEqual(self.call(self.remote.arenas()), ["docs", "shared"])

    def test_source_fails_after_answer(self) -> None:
        """
        When the server refused a write early and the data source then
        fails, the client raises the source's error and the refusal is not
        left as an unhandled error.
        """
        gate: Deferred[None] = Deferred()

        class SourceBroke(Exception):
            pass

        async def source() -> AsyncIterator[bytes]:
            yield b"x"
            await gate
            raise SourceBroke("disk on fire")

        d = self.run_remote(self.remote.write(PHOTOS, "p", 0, 2, 2, source()))
        self.assertNoResult(d)
        gate.callback(None)
        self.failureResultOf(d, SourceBroke)
        del d
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(Unauthorized), [])

    def test_refused_while_sending(self) -> None:
        """
        When the server refuses a write while the client is still sending
        (here: waiting on its source), the client stops sending and raises
        the server's error; the refusal is not treated as unhandled by AMP,
        which would log it and drop the connection.
        """
        gate: Deferred[None] = Deferred()
        pulled = []

        async def source() -> AsyncIterator[bytes]:
            for part in [b"x", b"y", b"z"]:
                pulled.append(part)
                yield part
                await gate

        d = self.run_remote(self.remote.write(PHOTOS, "p", 0, 3, 3, source()))
        self.assertNoResult(d)
        gate.callback(None)
        self.link.flush()
        error = self.failureResultOf(d, Unauthorized).value
        self.assertIn("'photos'", str(error))
        self.assertEqual(pulled, [b"x", b"y"])
        self.assertFalse(self.link.client.lost.called)
        self.assertEqual(self.call(self.remote.arenas()), ["docs", "shared"])

    def test_reconfigure(self) -> None:
        """
        A new config applies to the next command on an open connection:
        an arena the peer lost access to refuses it, one it gained serves
        it.
        """
        self.put("photos", "p.jpg", b"jpeg")
        self.put("docs", "d.txt", b"text")
        self.assertEqual(self.call(self.remote.arenas()), ["docs", "shared"])
        peers = {p.id: {"pubkey": p.pem} for p in (self.a, self.b, self.c)}
        self.service.reconfigure(
            parse_config(
                {
                    "peers": peers,
                    "arena": [
                        {"name": "docs", "datadir": "docs", "peers": ["c"]},
                        {"name": "photos", "datadir": "photos", "peers": ["a"]},
                    ],
                },
                "realize.toml",
                self.base,
            )
        )
        self.assertEqual(self.call(self.remote.arenas()), ["photos"])
        self.error(self.remote.hash(DOCS, "d.txt", 0, 4), Unauthorized)
        state = self.call(self.remote.hash(PHOTOS, "p.jpg", 0, 4))
        self.assertEqual(state.leaves, leaves_of(b"jpeg"))
        self.assertFalse(self.link.client.lost.called)


class Boom(Exception):
    """
    A bug in a store: not a L{realize.errors.RealizeError}.
    """


class BuggyStore(MemoryStore):
    """
    A store whose hash has a bug.
    """

    async def hash(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> FileState:
        raise Boom("division by zero somewhere")


class CountedStream:
    """
    A read stream that hands out the chunks of another one after waiting a
    second on a clock each, and records what its consumer did.
    """

    def __init__(self, inner: ReadStream, clock: Clock | None) -> None:
        self._inner = inner.__aiter__()
        self._stream = inner
        self._clock = clock
        self.pulled = 0
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._clock is not None:
            await deferLater(self._clock, 1, lambda: None)
        chunk = await self._inner.__anext__()
        self.pulled += 1
        return chunk

    async def result(self) -> FileState:
        return await self._stream.result()

    def cancel(self) -> None:
        self.cancelled = True
        self._stream.cancel()


class CountingStore(MemoryStore):
    """
    A memory store whose read streams are L{CountedStream}s, slowed down by
    a clock if it has one.
    """

    clock: Clock | None = None
    streams: list[CountedStream]

    def read(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> Any:
        stream = CountedStream(
            super().read(arena, path, start, end, hash_from=hash_from), self.clock
        )
        self.streams.append(stream)
        return stream


class MemoryServedTests(RemoteTestCase):
    """
    Peer a calls peer b serving a memory store as is.
    """

    def serve(self, store: Store) -> RemoteStore:
        self.link = self.open_link(self.a, lambda peer: store)
        return self.link.remote()

    def test_many_entries(self) -> None:
        """
        A listing of 30,000 files with long names needs several data frames
        and arrives whole and in order.
        """
        store = MemoryStore.with_files("big", {})
        finals = store.finals[ArenaName("big")]
        for i in range(30_000):
            path = f"dossier {i % 97}/é:{'n' * 150}-{i}.txt"
            finals[path] = MemoryFile(bytearray(i % 7), 1_000_000 + i)
        expected = self.successResultOf(
            Deferred.fromCoroutine(store.list_files(ArenaName("big")))
        )
        remote = self.serve(store)
        listing = self.call(remote.list_files(ArenaName("big")))
        self.assertEqual(listing, expected)
        self.assertEqual(len(listing), 30_000)
        self.assertGreater(self.link.client.bytes_received, 4 * MAX_DATA_FRAME)

    def test_unexpected_error(self) -> None:
        """
        An exception the store raises that is not a realize error is logged
        with its traceback on the server and answered as L{IOFailure}
        naming the command; the connection goes on serving.
        """
        remote = self.serve(BuggyStore.with_files("docs", {"f": b"x"}))
        error = self.error(remote.hash(DOCS, "f", 0, 1), IOFailure)
        self.assertIn("Hash", str(error))
        self.assertNotIn("division", str(error))
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.assertEqual(self.call(remote.arenas()), ["docs"])
        self.assertFalse(self.link.client.lost.called)

    def test_read_cancel(self) -> None:
        """
        Cancelling a read makes the server stop reading and sending: fewer
        bytes cross than the read asked for, and the server answers.
        """
        store = CountingStore.with_files("docs", {"f": b"q" * (10 * 64 * KiB)})
        store.chunk_size = 64 * KiB
        store.clock = self.clock
        store.streams = []
        remote = self.serve(store)
        stream = remote.read(DOCS, "f", 0, 10 * 64 * KiB)
        first = Deferred.fromCoroutine(stream.__aiter__().__anext__())
        self.link.flush()
        self.assertNoResult(first)
        self.clock.advance(1)
        self.link.flush()
        self.assertEqual(self.successResultOf(first), b"q" * 64 * KiB)
        stream.cancel()
        self.link.flush()
        for _ in range(12):
            self.clock.advance(1)
            self.link.flush()
        (served,) = store.streams
        self.assertTrue(served.cancelled)
        self.assertLessEqual(served.pulled, 2)
        self.assertLessEqual(self.link.server.bytes_sent, 64 * KiB)
        self.assertEqual(self.link.client.bytes_received, self.link.server.bytes_sent)
        self.successResultOf(Deferred.fromCoroutine(stream.result()))

    def test_cancel_after_answer(self) -> None:
        """
        Cancelling a read whose data all arrived (more than the inbox's high
        water mark, so reading from the transport was paused) frees that
        data and resumes reading, so the connection goes on serving.
        """
        data = b"r" * (6 * MiB)
        remote = self.serve(MemoryStore.with_files("docs", {"f": data}))
        stream = remote.read(DOCS, "f", 0, len(data))
        first = Deferred.fromCoroutine(stream.__aiter__().__anext__())
        self.link.flush()
        self.assertEqual(len(self.successResultOf(first)), MiB)
        self.assertTrue(self.link.client_wire.paused)
        stream.cancel()
        self.assertFalse(self.link.client_wire.paused)
        self.assertEqual(self.call(remote.arenas()), ["docs"])

    def test_back_pressure_on_read(self) -> None:
        """
        A read larger than the inbox's high water mark pauses the client's
        transport until the consumer has taken enough of it.
        """
        data = b"r" * (6 * MiB)
        remote = self.serve(MemoryStore.with_files("docs", {"f": data}))
        stream = remote.read(DOCS, "f", 0, len(data))
        iterator = stream.__aiter__()
        self.link.flush()
        self.assertTrue(self.link.client_wire.paused)
        taken = 0
        while self.link.client_wire.paused:
            taken += len(
                self.successResultOf(Deferred.fromCoroutine(iterator.__anext__()))
            )
        # Reading resumes once less than Inbox.LOW is held: 1 MiB left.
        self.assertEqual(taken, 6 * MiB - Inbox.LOW + MiB)
        got, _ = self.call(read_all(stream))
        self.assertEqual(taken + len(got), len(data))

    def test_lost_during_read(self) -> None:
        """
        When the connection is lost while the server waits to send more of
        a read, the server stops reading the file (its stream is cancelled
        and not read to the end), logs no error, and the client's read
        raises L{NetworkError}.
        """
        store = CountingStore.with_files("docs", {"f": b"q" * (10 * 64 * KiB)})
        store.chunk_size = 64 * KiB
        store.streams = []
        remote = self.serve(store)
        self.link.server.pauseProducing()
        d = self.run_remote(read_all(remote.read(DOCS, "f", 0, 10 * 64 * KiB)))
        self.assertNoResult(d)
        (served,) = store.streams
        self.assertEqual(served.pulled, 1)
        self.link.server_wire.loseConnection()
        self.link.flush()
        self.failureResultOf(d, NetworkError)
        self.assertTrue(served.cancelled)
        self.assertEqual(served.pulled, 1)

    def test_lost_during_call(self) -> None:
        """
        A call waiting for its answer when the connection is lost fails
        with the connection's own error, as its streams do: it names the
        peer and the reason.
        """
        remote = self.serve(MemoryStore.with_files("docs", {"f": b"x"}))
        # Not flushed: the question is still on its way.
        d = Deferred.fromCoroutine(remote.arenas())
        self.assertNoResult(d)
        self.link.client_wire.loseConnection()
        self.link.flush()
        error = self.failureResultOf(d, NetworkError).value
        self.assertRegex(str(error), r"^connection to \S+ lost: ")

    def test_lost_during_write(self) -> None:
        """
        When the connection is lost while a write waits to send more, the
        write raises L{NetworkError} without reading the rest of its
        source.
        """
        store = MemoryStore.with_files("docs", {})
        remote = self.serve(store)
        pulled = 0

        async def source() -> AsyncIterator[bytes]:
            nonlocal pulled
            for _ in range(10):
                pulled += 1
                yield b"w" * (64 * KiB)

        self.link.client.pauseProducing()
        d = self.run_remote(
            remote.write(DOCS, "f", 0, 10 * 64 * KiB, 10 * 64 * KiB, source())
        )
        self.assertNoResult(d)
        self.assertEqual(pulled, 1)
        self.link.client_wire.loseConnection()
        self.link.flush()
        self.failureResultOf(d, NetworkError)
        self.assertEqual(pulled, 1)
