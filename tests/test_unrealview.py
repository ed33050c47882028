"""
Tests for L{realize.storage.unrealview}: the Unreal view read from sqlite,
and a contract for every L{realize.interfaces.UnrealView}.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence

from twisted.trial.unittest import SynchronousTestCase

from realize.errors import IOFailure
from realize.interfaces import UnrealView
from realize.model import KIND_DIR, KIND_FILE, ArenaName, Entry, Notification, PeerId
from realize.storage.globaldb import ROOT_INODE, GlobalDb
from realize.storage.unreal import (
    ArenaTree,
    _txn_apply_batch,
    create_superseded_table,
    create_unreal_tables,
)
from realize.storage.unrealview import ArenaFiles, FileVersion, SqliteUnrealView

#: A file to show: path, size, mtime in ns, hash.
Spec = tuple[str, int, int, bytes | None]

P = PeerId("p")
Q = PeerId("q")


def h(n: int) -> bytes:
    return bytes([n]) * 32


class UnrealViewContractMixin:
    """
    What every L{UnrealView} does.  Mix into a L{SynchronousTestCase} with
    a L{build} for the implementation.
    """

    def build(self, arenas: Mapping[str, Sequence[Spec]]) -> UnrealView:
        """
        @param arenas: arena name to the files it holds.
        @return: a view showing exactly these arenas and files.
        """
        raise NotImplementedError

    def example(self) -> UnrealView:
        return self.build(
            {
                "home/docs": [("a.txt", 3, 10, h(1)), ("sub/b.bin", 5, 20, h(2))],
                "home/music": [("x/y/z", 0, 30, None)],
                "photos": [
                    ("p1", 7, 40, h(3)),
                    ("d1/f", 1, 1, h(4)),
                    ("d2/f", 1, 1, h(4)),
                ],
            }
        )

    def path_entry(self, view: UnrealView, path: str) -> Entry:
        entry = view.getattr(ROOT_INODE)
        assert entry is not None
        for name in path.split("/"):
            found = view.lookup(entry.inode, name)
            assert found is not None, f"{name} of {path}"
            entry = found
        return entry

    def test_root(self) -> None:
        """
        The mount root is inode 1, a directory listing the first segments
        of the arena names.
        """
        view = self.example()
        root = view.getattr(ROOT_INODE)
        assert root is not None
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual(
            (root.inode, root.kind, root.hash), (ROOT_INODE, KIND_DIR, None)
        )
        listing = view.readdir(ROOT_INODE)
        assert listing is not None
        case.assertEqual([name for name, _ in listing], ["home", "photos"])
        case.assertEqual(root.nlink, 4)

    def test_files(self) -> None:
        """
        Files show their size, mtime and hash (C{None}: no version), with
        one link; lookup, getattr and readdir agree.
        """
        view = self.example()
        case: SynchronousTestCase = self  # type: ignore[assignment]
        a = self.path_entry(view, "home/docs/a.txt")
        case.assertEqual(
            (a.kind, a.size, a.mtime_ns, a.hash, a.nlink), (KIND_FILE, 3, 10, h(1), 1)
        )
        case.assertEqual(view.getattr(a.inode), a)
        z = self.path_entry(view, "home/music/x/y/z")
        case.assertEqual((z.size, z.hash), (0, None))
        docs = self.path_entry(view, "home/docs")
        listing = view.readdir(docs.inode)
        assert listing is not None
        case.assertEqual([n for n, _ in listing], ["a.txt", "sub"])
        for name, entry in listing:
            case.assertEqual(view.lookup(docs.inode, name), entry)
            case.assertEqual(view.getattr(entry.inode), entry)

    def test_directories(self) -> None:
        """
        Directories have size 0, no hash, and 2 + subdirectories links.
        """
        view = self.example()
        case: SynchronousTestCase = self  # type: ignore[assignment]
        photos = self.path_entry(view, "photos")
        case.assertEqual(
            (photos.kind, photos.size, photos.hash, photos.nlink),
            (KIND_DIR, 0, None, 4),
        )
        home = self.path_entry(view, "home")
        case.assertEqual(home.nlink, 4)
        d1 = self.path_entry(view, "photos/d1")
        case.assertEqual(d1.nlink, 2)

    def test_missing(self) -> None:
        """
        Unknown names and inodes, names in files and listings of files
        give C{None}.
        """
        view = self.example()
        case: SynchronousTestCase = self  # type: ignore[assignment]
        a = self.path_entry(view, "home/docs/a.txt")
        case.assertIsNone(view.lookup(ROOT_INODE, "nope"))
        case.assertIsNone(view.lookup(self.path_entry(view, "home").inode, "docs2"))
        case.assertIsNone(view.lookup(self.path_entry(view, "photos").inode, "nope"))
        case.assertIsNone(view.lookup(a.inode, "x"))
        case.assertIsNone(view.readdir(a.inode))
        case.assertIsNone(view.readdir(10**9))
        case.assertIsNone(view.getattr(10**9))
        case.assertIsNone(view.locate(10**9))

    def test_locate(self) -> None:
        """
        Files and directories are located in their arena; arena roots have
        path C{""}; the mount root and compound directories have none.
        """
        view = self.example()
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertIsNone(view.locate(ROOT_INODE))
        case.assertIsNone(view.locate(self.path_entry(view, "home").inode))
        case.assertEqual(
            view.locate(self.path_entry(view, "home/docs").inode), ("home/docs", "")
        )
        case.assertEqual(
            view.locate(self.path_entry(view, "home/docs/sub/b.bin").inode),
            ("home/docs", "sub/b.bin"),
        )
        case.assertEqual(
            view.locate(self.path_entry(view, "photos/d2").inode), ("photos", "d2")
        )

    def test_arena_of(self) -> None:
        """
        The arena of an inode, as L{locate} gives it, without its path; none
        for the mount root, compound directories and unknown inodes.
        """
        view = self.example()
        case: SynchronousTestCase = self  # type: ignore[assignment]
        for path in ("home/docs", "home/docs/sub/b.bin", "photos/d2"):
            inode = self.path_entry(view, path).inode
            located = view.locate(inode)
            assert located is not None
            case.assertEqual(view.arena_of(inode), located[0])
        case.assertIsNone(view.arena_of(ROOT_INODE))
        case.assertIsNone(view.arena_of(self.path_entry(view, "home").inode))
        case.assertIsNone(view.arena_of(10**9))

    def test_unique_inodes(self) -> None:
        """
        Every entry has its own inode.
        """
        view = self.example()
        seen: list[int] = []

        def walk(inode: int) -> None:
            seen.append(inode)
            for _, entry in view.readdir(inode) or []:
                if entry.kind == KIND_DIR:
                    walk(entry.inode)
                else:
                    seen.append(entry.inode)

        walk(ROOT_INODE)
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual(len(seen), len(set(seen)))
        case.assertEqual(len(seen), 16)


class SqliteViewMixin:
    """
    Builds L{SqliteUnrealView}s on temporary files.
    """

    def build_sqlite(
        self, arenas: Mapping[str, Sequence[Spec]]
    ) -> tuple[SqliteUnrealView, GlobalDb, dict[str, sqlite3.Connection]]:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        base = case.mktemp()
        os.makedirs(base)
        global_path = os.path.join(base, "realize.db")
        global_db = GlobalDb.open(global_path)
        case.addCleanup(global_db.close)
        roots = global_db.set_arenas([ArenaName(a) for a in arenas], now_ns=5)
        files = {}
        writers = {}
        for i, (name, specs) in enumerate(arenas.items()):
            arena = ArenaName(name)
            db = os.path.join(base, f"arena{i}.db")
            writer = sqlite3.connect(db)
            writer.execute("PRAGMA journal_mode = WAL")
            create_unreal_tables(writer.cursor())
            create_superseded_table(writer.cursor())
            tree = ArenaTree(
                arena,
                roots[arena],
                lambda end, arena=arena: global_db.alloc_range(arena, end),
                time.time_ns,
            )
            notifications = [
                Notification(
                    "add", arena, 1, path=path, size=size, mtime_ns=mtime, hash=digest
                )
                for path, size, mtime, digest in specs
            ]
            _txn_apply_batch(writer.cursor(), tree, P, notifications)
            writer.commit()
            case.addCleanup(writer.close)
            writers[name] = writer
            files[arena] = ArenaFiles(db, os.path.join(base, f"blobs{i}"))
        view = SqliteUnrealView(global_path, files)
        case.addCleanup(view.close)
        return view, global_db, writers


class SqliteUnrealViewContractTests(
    SqliteViewMixin, UnrealViewContractMixin, SynchronousTestCase
):
    """
    L{SqliteUnrealView} fulfils the contract.
    """

    def build(self, arenas: Mapping[str, Sequence[Spec]]) -> UnrealView:
        return self.build_sqlite(arenas)[0]


class SqliteUnrealViewTests(SqliteViewMixin, SynchronousTestCase):
    """
    What L{SqliteUnrealView} does beyond the contract.
    """

    def test_version(self) -> None:
        """
        L{SqliteUnrealView.version} gives a file's default version and the
        peers that have that hash.
        """
        view, _, writers = self.build_sqlite({"a": [("d/f", 3, 10, h(1))]})
        a = view.lookup(ROOT_INODE, "a")
        assert a is not None
        d = view.lookup(a.inode, "d")
        assert d is not None
        f = view.lookup(d.inode, "f")
        assert f is not None
        writers["a"].execute(
            "INSERT INTO file VALUES (?, ?, 3, 10, ?)", (f.inode, Q, h(1))
        )
        writers["a"].execute(
            "INSERT INTO file VALUES (?, 'r', 3, 10, ?)", (f.inode, h(2))
        )
        writers["a"].commit()
        self.assertEqual(
            view.version(f.inode),
            FileVersion(ArenaName("a"), f.inode, "d/f", 3, 10, h(1), (P, Q)),
        )
        self.assertIsNone(view.version(ROOT_INODE))
        self.assertIsNone(view.version(10**9))

    def test_sees_writes(self) -> None:
        """
        The read-only connections see what the writer commits later
        (WAL): new files, and new inode ranges.
        """
        view, global_db, writers = self.build_sqlite({"a": [("f", 3, 10, h(1))]})
        root = view.lookup(ROOT_INODE, "a")
        assert root is not None
        self.assertEqual([n for n, _ in view.readdir(root.inode) or []], ["f"])
        far = global_db.alloc_range(ArenaName("a"), 10**6)
        writers["a"].execute(
            "INSERT INTO directory VALUES (?, 'g', ?, 'file')", (root.inode, far.start)
        )
        writers["a"].execute(
            "INSERT INTO file VALUES (?, '', 1, 2, NULL)", (far.start,)
        )
        writers["a"].commit()
        self.assertEqual([n for n, _ in view.readdir(root.inode) or []], ["f", "g"])
        self.assertEqual(
            view.getattr(far.start), Entry(far.start, KIND_FILE, 1, 2, None, 1)
        )

    def test_arena_without_db(self) -> None:
        """
        An arena whose db does not exist yet shows as an empty directory.
        """
        base = self.mktemp()
        os.makedirs(base)
        global_path = os.path.join(base, "realize.db")
        global_db = GlobalDb.open(global_path)
        self.addCleanup(global_db.close)
        global_db.set_arenas([ArenaName("a")], now_ns=5)
        view = SqliteUnrealView(
            global_path,
            {ArenaName("a"): ArenaFiles(os.path.join(base, "none.db"), base)},
        )
        self.addCleanup(view.close)
        root = view.lookup(ROOT_INODE, "a")
        assert root is not None
        self.assertEqual(view.readdir(root.inode), [])
        self.assertIsNone(view.lookup(root.inode, "x"))

    def test_threads(self) -> None:
        """
        Many threads read at once, each through its own connection.
        """
        view, _, _ = self.build_sqlite(
            {"a": [(f"d{i}/f{j}", i, j, h(1)) for i in range(5) for j in range(20)]}
        )
        errors: list[BaseException] = []
        counts: list[int] = []

        def walk() -> None:
            try:
                total = 0
                for _ in range(5):
                    root = view.lookup(ROOT_INODE, "a")
                    assert root is not None
                    for _, d in view.readdir(root.inode) or []:
                        total += len(view.readdir(d.inode) or [])
                counts.append(total)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=walk) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(counts, [500] * 8)

    def test_closed(self) -> None:
        """
        A closed view refuses reads with L{IOFailure}.
        """
        view, _, _ = self.build_sqlite({"a": []})
        view.close()
        self.assertRaises(IOFailure, view.getattr, ROOT_INODE)

    def test_arena_root_mtime(self) -> None:
        """
        An arena root's mtime follows the entries added to it in the arena
        db.
        """
        view, _, _ = self.build_sqlite({"a": [("f", 1, 1, h(1))]})
        root = view.lookup(ROOT_INODE, "a")
        assert root is not None
        self.assertGreater(root.mtime_ns, 5)
