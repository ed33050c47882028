"""
The local store against what a hostile peer (or an unlucky tree) can make
it do (issue 14, storage side): listings that never silently leave files
out, paths as deep as the limits allow, hard links, failed commands that
change nothing, special files, and file sizes that would cost more than
the disk has.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from realize.errors import (
    BadRequest,
    InvalidPath,
    IOFailure,
    NoSpace,
    PermissionDenied,
)
from realize.hashing import LEAF_SIZE, MAX_HASH_LEAVES, leaf_hash, merkle_root
from realize.model import MAX_INT64, MAX_NAME_BYTES, ArenaName, FileInfo, SmallFile
from realize.storage import partials
from realize.storage.local import LocalStore
from tests.helpers import failure_of, result_of, sync_run_in_thread
from tests.test_storage import MTIME, read_all, stream
from tests.test_storage_fs import remove_tree

A = ArenaName("a")
MiB = 1 << 20

#: A valid path of 1,501 segments (3,001 bytes).
DEEP = "d/" * 1500 + "f"


def run_limited(limit: int, code: str, *args: str) -> list[str]:
    """
    Run Python code in a fresh interpreter whose soft limit of open files
    is C{limit}.

    @return: the lines it printed.
    """
    prelude = textwrap.dedent(
        f"""
        import resource, sys
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, hard))
        from twisted.internet.defer import Deferred
        from realize.storage.local import LocalStore
        from tests.helpers import sync_run_in_thread
        def run(coro):
            results = []
            Deferred.fromCoroutine(coro).addBoth(results.append)
            [result] = results
            if isinstance(result, BaseException) or hasattr(result, "value"):
                print("error", getattr(result, "value", result))
                sys.exit(1)
            return result
        store = LocalStore.single("a", sys.argv[1], sync_run_in_thread)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if done.returncode:
        raise AssertionError(done.stdout + done.stderr)
    return done.stdout.split("\n")[:-1]


class _StoreCase(SynchronousTestCase):
    """
    A local store serving arena C{a} at C{self.root}, with C{self.outside}
    beside it.
    """

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.root = os.path.join(base, "root")
        self.outside = os.path.join(base, "outside")
        os.makedirs(self.root)
        os.makedirs(self.outside)
        self.store = LocalStore.single(A, self.root, sync_run_in_thread)

    def at(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def put(self, path: str, data: bytes, mtime_ns: int | None = None) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        if mtime_ns is not None:
            os.utime(path, ns=(mtime_ns, mtime_ns))

    def content(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def fail_opens(self, name: str, error: int) -> None:
        """
        From now on, opening a directory called C{name} fails with
        C{error}.
        """
        real: Callable[..., int] = os.open

        def failing(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if path == name and flags & os.O_DIRECTORY:
                raise OSError(error, os.strerror(error))
            return real(path, flags, *args, **kwargs)

        self.patch(os, "open", failing)


class ListingTests(_StoreCase):
    """
    A listing has every file or fails naming the directory it could not
    read (issue 14, item 1).
    """

    def test_many_directories_few_descriptors(self) -> None:
        """
        An arena with 1,100 directories in one directory lists all their
        files in a process allowed 64 open files: the walk holds a bounded
        number of directories open.
        """
        for index in range(1100):
            self.put(self.at("wide", f"d{index}", "f"), b"x")
        self.put(self.at("deep", *["e"] * 50, "g"), b"y")
        [count] = run_limited(64, "print(len(run(store.list_files('a'))))", self.root)
        self.assertEqual(int(count), 1101)

    def test_unopenable_directory(self) -> None:
        """
        A directory that cannot be opened (too many open files) fails the
        listing with L{IOFailure} naming it, instead of an answer without
        its files; one that may not be read fails with
        L{PermissionDenied}.
        """
        self.put(self.at("sub", "busy", "f"), b"x")
        self.put(self.at("sub", "g"), b"y")
        self.fail_opens("busy", errno.EMFILE)
        error = failure_of(self, self.store.list_files(A), IOFailure)
        self.assertIn("'sub/busy'", str(error))
        self.assertIn("Too many open files", str(error))
        self.fail_opens("sub", errno.EACCES)
        error = failure_of(self, self.store.list_files(A), PermissionDenied)
        self.assertIn("'sub'", str(error))

    def test_vanished_directory(self) -> None:
        """
        A directory removed while the listing runs is not an error.
        """
        self.put(self.at("gone", "f"), b"x")
        self.put(self.at("kept"), b"y")
        self.fail_opens("gone", errno.ENOENT)
        files = result_of(self, self.store.list_files(A))
        self.assertEqual([f.path for f in files], ["kept"])

    def test_invalid_names_one_warning(self) -> None:
        """
        Names that are not valid paths are left out with one warning per
        listing that counts them.
        """
        root = os.fsencode(self.root)
        for index in range(50):
            with open(os.path.join(root, b"bad\xff%d" % index), "wb"):
                pass
        os.makedirs(os.path.join(root, b"dir\xfe"))
        # Names longer than MAX_NAME_BYTES, a directory's and a file's.
        long = b"L" * (MAX_NAME_BYTES + 1)
        os.makedirs(os.path.join(root, long))
        for path in (os.path.join(root, long, b"f"), os.path.join(root, long + b"F")):
            with open(path, "wb"):
                pass
        self.put(self.at("ok"), b"ok")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        files = result_of(self, self.store.list_files(A))
        self.assertEqual([f.path for f in files], ["ok"])
        warnings = [e for e in events if e.get("arena") == "a"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["count"], 53)


class DeepPathTests(_StoreCase):
    """
    A valid path of 1,501 segments works in every command, iteratively
    and with a bounded number of open files (issue 14, item 6).
    """

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(remove_tree, self.at("d"))

    def test_batches(self) -> None:
        """
        WriteFiles, ReadFiles and DeleteFiles of a batch holding the deep
        path and a plain one handle both; the deleted deep path leaves no
        directory behind.
        """
        files = [
            SmallFile(DEEP, 4, MTIME, merkle_root([leaf_hash(b"deep")])),
            SmallFile("flat", 4, MTIME, merkle_root([leaf_hash(b"flat")])),
        ]
        written = result_of(self, self.store.write_files(A, files, [b"deep", b"flat"]))
        self.assertEqual(written, [None, None])
        reads = result_of(self, self.store.read_files(A, [(DEEP, 10), ("flat", 10)]))
        self.assertEqual([r.data for r in reads], [b"deep", b"flat"])  # type: ignore[union-attr]
        outcomes = result_of(
            self,
            self.store.delete_files(
                A, [FileInfo(DEEP, 4, MTIME), FileInfo("flat", 4, MTIME)]
            ),
        )
        self.assertEqual(outcomes, [None, None])
        self.assertEqual(os.listdir(self.root), [])

    def test_streams(self) -> None:
        """
        Write, Hash, Finish, Read and Delete of the deep path work.
        """
        result_of(self, self.store.write(A, DEEP, 0, 4, 4, stream(b"data")))
        state = result_of(self, self.store.hash(A, DEEP, 0, 4))
        self.assertEqual(state.leaves, (leaf_hash(b"data"),))
        result_of(self, self.store.finish(A, DEEP, MTIME))
        data, _ = result_of(self, read_all(self.store, A, DEEP, 0, 4))
        self.assertEqual(data, b"data")
        result_of(self, self.store.delete(A, DEEP))
        self.assertEqual(os.listdir(self.root), [])

    def test_few_descriptors(self) -> None:
        """
        In a process allowed 100 open files, the deep path is written,
        read and deleted (removing its 1,500 directories): no command
        holds one descriptor per segment.
        """
        lines = run_limited(
            100,
            """
            from realize.hashing import leaf_hash, merkle_root
            from realize.model import SmallFile
            from realize.interfaces import ChunkList
            deep = sys.argv[2]
            root = merkle_root([leaf_hash(b"deep")])
            print(run(store.write_files("a", [SmallFile(deep, 4, 1, root)], [b"deep"])))
            print(run(store.read_files("a", [(deep, 9)]))[0].data)
            run(store.delete("a", deep))
            run(store.write("a", deep, 0, 2, 2, ChunkList([b"xy"])))
            run(store.delete("a", deep))
            print(len(run(store.list_files("a"))))
            """,
            self.root,
            DEEP,
        )
        self.assertEqual(lines, ["[None]", "b'deep'", "0"])
        self.assertEqual(os.listdir(self.root), [])


class HardLinkTests(_StoreCase):
    """
    A file with a hard link outside the arena is never changed through the
    arena (issue 14, item 8).
    """

    def link(self, name: str, arena_name: str) -> str:
        outside = os.path.join(self.outside, name)
        self.put(outside, b"0123456789" * 10, MTIME)
        os.link(outside, self.at(arena_name))
        return outside

    def assert_unchanged(self, outside: str) -> None:
        self.assertEqual(self.content(outside), b"0123456789" * 10)
        self.assertEqual(os.stat(outside).st_mtime_ns, MTIME)

    def test_final(self) -> None:
        """
        Truncate, Write and ApplyDelta of a final file linked from outside
        go to a new partial file; Finish replaces the arena's name only.
        """
        outside = self.link("f", "h")
        result_of(self, self.store.truncate(A, "h", 3))
        self.assert_unchanged(outside)
        result_of(self, self.store.delete(A, "h", size=None))
        os.link(outside, self.at("h"))
        result_of(self, self.store.write(A, "h", 0, 4, 100, stream(b"new!")))
        self.assert_unchanged(outside)
        os.unlink(self.at(".h.part"))
        signature = result_of(self, self.store.signature(A, "h", 0, 100))
        assert signature is not None
        self.put(self.at("src"), b"9876543210" * 10)
        change = result_of(self, self.store.diff(A, "src", 0, 100, signature))
        result_of(self, self.store.apply_delta(A, "h", 0, 100, 100, change))
        self.assert_unchanged(outside)
        result_of(self, self.store.finish(A, "h"))
        self.assert_unchanged(outside)
        self.assertEqual(self.content(self.at("h")), b"9876543210" * 10)
        self.assertEqual(os.stat(outside).st_nlink, 1)

    def test_partial(self) -> None:
        """
        A partial file linked from outside is copied before it is written:
        the outside file keeps its content.
        """
        outside = self.link("g", ".p.part")
        result_of(self, self.store.write(A, "p", 0, 3, 100, stream(b"abc")))
        self.assert_unchanged(outside)
        self.assertEqual(
            self.content(self.at(".p.part")), b"abc" + (b"0123456789" * 10)[3:]
        )
        os.unlink(self.at(".p.part"))
        os.link(outside, self.at(".p.part"))
        result_of(self, self.store.truncate(A, "p", 5))
        self.assert_unchanged(outside)
        self.assertEqual(self.content(self.at(".p.part")), b"01234")
        os.unlink(self.at(".p.part"))
        os.link(outside, self.at(".p.part"))
        file = SmallFile("p", 2, MTIME, merkle_root([leaf_hash(b"ok")]))
        self.assertEqual(
            result_of(self, self.store.write_files(A, [file], [b"ok"])), [None]
        )
        self.assert_unchanged(outside)
        self.assertEqual(self.content(self.at("p")), b"ok")


class FailedCommandTests(_StoreCase):
    """
    A command that fails leaves the path as it was (issue 14, item 9).
    """

    def test_truncate_beyond_the_disk(self) -> None:
        """
        Truncating a final file to 2**63-1 bytes is refused (L{NoSpace})
        without making a partial file.
        """
        self.put(self.at("f"), b"final", MTIME)
        failure_of(self, self.store.truncate(A, "f", MAX_INT64), NoSpace)
        self.assertEqual(os.listdir(self.root), ["f"])
        self.assertEqual(self.content(self.at("f")), b"final")

    def test_truncate_too_large(self) -> None:
        """
        Where the free space is not known, the filesystem's own refusal
        (File too large) removes the partial file the command made.
        """
        self.patch(partials, "free_space", lambda fd: None)
        self.put(self.at("f"), b"final", MTIME)
        error = failure_of(self, self.store.truncate(A, "f", MAX_INT64), IOFailure)
        self.assertIn("too large", str(error))
        self.assertEqual(os.listdir(self.root), ["f"])
        self.assertEqual(os.stat(self.at("f")).st_mtime_ns, MTIME)


class SpecialFileTests(_StoreCase):
    """
    FIFOs and devices are never opened for writing, and every open is
    non-blocking, without a controlling terminal (issue 14, item 11).
    """

    def test_opens(self) -> None:
        """
        Write, Truncate, ApplyDelta, WriteFiles, Read and Hash of paths
        whose partial is a FIFO or whose final is a device are refused,
        and no open of those files asks for writing (only creating a new
        file, which fails).
        """
        os.mkfifo(self.at(".fifo.part"))
        paths = ["fifo"]
        try:
            os.mknod(self.at("null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except PermissionError:
            pass
        else:
            paths.append("null")
        opens: list[tuple[str, int]] = []
        real: Callable[..., int] = os.open

        def recording(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            opens.append((path, flags))
            return real(path, flags, *args, **kwargs)

        self.patch(os, "open", recording)
        for path in paths:
            coros = [
                self.store.write(A, path, 0, 3, 3, stream(b"new")),
                self.store.write(A, path, 1, 3, 9, stream(b"ne")),
                self.store.truncate(A, path, 0),
                self.store.truncate(A, path, 5),
                self.store.apply_delta(A, path, 0, 3, 3, b"x"),
                read_all(self.store, A, path, 0, 3),
                self.store.hash(A, path, 0, 3),
            ]
            for coro in coros:
                failure_of(self, coro, InvalidPath)
            file = SmallFile(path, 1, MTIME, merkle_root([leaf_hash(b"x")]))
            [outcome] = result_of(self, self.store.write_files(A, [file], [b"x"]))
            self.assertIsInstance(outcome, InvalidPath)
        special = {".fifo.part", "null"}
        for name, flags in opens:
            # O_CREAT | O_EXCL never opens an existing file.
            if name in special and not flags & os.O_EXCL:
                self.assertEqual(flags & os.O_ACCMODE, os.O_RDONLY, name)
                self.assertTrue(flags & os.O_NONBLOCK and flags & os.O_NOCTTY, name)
        self.assertTrue(stat.S_ISFIFO(os.lstat(self.at(".fifo.part")).st_mode))


class ClaimedSizeTests(_StoreCase):
    """
    A file size a peer claims costs no more than the disk has, and hashing
    a sparse giant costs its leaves, not its size (issue 14, item 2).
    """

    def test_write_beyond_free_space(self) -> None:
        """
        A one-byte Write at the end of a 1 PiB file is refused with
        L{NoSpace} before anything is written; also into an existing
        partial file that holds little.
        """
        size = 1 << 50
        error = failure_of(
            self, self.store.write(A, "f", size - 1, size, size, stream(b"x")), NoSpace
        )
        self.assertIn("'f'", str(error))
        self.assertEqual(os.listdir(self.root), [])
        self.put(self.at(".g.part"), b"little")
        failure_of(
            self, self.store.write(A, "g", size - 1, size, size, stream(b"x")), NoSpace
        )
        self.assertEqual(self.content(self.at(".g.part")), b"little")
        result_of(self, self.store.write(A, "g", 0, 2, 10 * MiB, stream(b"ok")))

    def sparse(self, name: str, size: int) -> None:
        with open(self.at(name), "wb") as f:
            f.truncate(size)
            f.seek(size - 1)
            f.write(b"x")

    def test_hash_sparse(self) -> None:
        """
        Hashing a 64 GiB sparse file of one byte reads one leaf.
        """
        size = 64 << 30
        self.sparse("big", size)
        read: list[int] = []
        preadv = os.preadv

        def counting(fd: int, buffers: Any, offset: int) -> int:
            n = preadv(fd, buffers, offset)
            read.append(n)
            return n

        self.patch(os, "preadv", counting)
        state = result_of(self, self.store.hash(A, "big", 0, size))
        self.assertEqual(len(state.leaves), size // LEAF_SIZE)
        self.assertEqual(state.leaves[-1], leaf_hash(bytes(LEAF_SIZE - 1) + b"x"))
        self.assertLessEqual(sum(read), LEAF_SIZE)

    def test_too_many_leaves(self) -> None:
        """
        A Hash (or a Read with C{hash_from}) whose answer would carry more
        than L{MAX_HASH_LEAVES} leaves is a L{BadRequest} that says to
        hash in pieces; a piece of that many is answered.
        """
        size = MAX_HASH_LEAVES * LEAF_SIZE + 1
        self.sparse("giant", size)
        error = failure_of(self, self.store.hash(A, "giant", 0, size), BadRequest)
        self.assertIn("in pieces", str(error))
        failure_of(
            self, read_all(self.store, A, "giant", size - 1, size, 0), BadRequest
        )
        state = result_of(self, self.store.hash(A, "giant", LEAF_SIZE, size))
        self.assertEqual(len(state.leaves), MAX_HASH_LEAVES)
