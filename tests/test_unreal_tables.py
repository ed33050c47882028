"""
Tests for L{realize.storage.unreal}: the Unreal's cache tables and the
notification rules of DESIGN.md section 10, on bare sqlite3 connections.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.trial.unittest import SynchronousTestCase

from realize.errors import BadRequest, InvalidPath
from realize.hashing import EMPTY_ROOT
from realize.model import ArenaName, Notification, PeerId
from realize.storage.blobs import QUEUE_PENDING_REMOVAL, QUEUE_WORKING
from realize.storage.globaldb import GlobalDb, InodeRange
from realize.storage.unreal import (
    APPLIED,
    CONFLICT,
    DEFAULT,
    FORK,
    IGNORED,
    ArenaTree,
    _txn_add,
    _txn_alloc_inode,
    _txn_apply_batch,
    _txn_catchup,
    _txn_catchup_complete,
    _txn_catchup_start,
    _txn_connected,
    _txn_drop,
    _txn_remove,
    _txn_replace,
    create_superseded_table,
    create_unreal_tables,
    forks,
    peer_progress,
)

T = TypeVar("T")

ARENA = ArenaName("docs")
ROOT = 50
P = PeerId("p")
Q = PeerId("q")
R = PeerId("r")


def h(n: int) -> bytes:
    """
    A distinct 32-byte Merkle root.
    """
    return bytes([n]) * 32


def add(
    path: str, size: int, mtime: int, digest: bytes | None, pos: int = 1
) -> Notification:
    return Notification(
        "add", ARENA, pos, path=path, size=size, mtime_ns=mtime, hash=digest
    )


def replace(
    path: str,
    size: int,
    mtime: int,
    digest: bytes | None,
    old: bytes | None,
    pos: int = 1,
) -> Notification:
    return Notification(
        "replace",
        ARENA,
        pos,
        path=path,
        size=size,
        mtime_ns=mtime,
        hash=digest,
        old_hash=old,
    )


def remove(path: str, mtime: int, old: bytes | None, pos: int = 1) -> Notification:
    return Notification("remove", ARENA, pos, path=path, mtime_ns=mtime, old_hash=old)


def drop(path: str, old: bytes | None, pos: int = 1) -> Notification:
    return Notification("drop", ARENA, pos, path=path, old_hash=old)


def catchup(path: str, size: int, mtime: int, digest: bytes | None) -> Notification:
    return Notification(
        "catchup", ARENA, 9, path=path, size=size, mtime_ns=mtime, hash=digest
    )


#: Tables to skip when comparing states: ignored notifications still move
#: the progress.
PROGRESS = ("peer_progress",)

START = Notification("catchup_start", ARENA, 9)


def complete(pos: int) -> Notification:
    return Notification("catchup_complete", ARENA, pos)


def connected(uuid: str) -> Notification:
    return Notification("connected", ARENA, 0, uuid=uuid)


class Ranges:
    """
    A fake global db: hands out small consecutive ranges and records what
    it was asked.
    """

    def __init__(self, start: int = 100, size: int = 1000) -> None:
        self.next = start
        self.size = size
        self.asked: list[int] = []

    def __call__(self, exhausted_end: int) -> InodeRange:
        self.asked.append(exhausted_end)
        given = InodeRange(self.next, self.next + self.size)
        self.next = given.end
        return given


def arena_db(case: SynchronousTestCase) -> sqlite3.Connection:
    """
    A bare sqlite3 connection on a temporary file with the Unreal's tables.
    """
    connection = sqlite3.connect(os.path.join(case.mktemp() + ".db"))
    create_unreal_tables(connection.cursor())
    create_superseded_table(connection.cursor())
    connection.commit()
    case.addCleanup(connection.close)
    return connection


def run(connection: sqlite3.Connection, f: Callable[..., T], *args: Any) -> T:
    """
    Run a C{_txn_*} function in one transaction, as C{runInteraction} does:
    commit on success, roll back on error.
    """
    try:
        result = f(connection.cursor(), *args)
    except BaseException:
        connection.rollback()
        raise
    connection.commit()
    return result


def make_tree(
    alloc: Callable[[int], InodeRange] | None = None, clock: list[int] | None = None
) -> ArenaTree:
    ticks = itertools.count(1000)

    def now() -> int:
        return clock[0] if clock is not None else next(ticks)

    return ArenaTree(ARENA, ROOT, alloc or Ranges(), now)


def dump(
    connection: sqlite3.Connection, skip: tuple[str, ...] = ()
) -> dict[str, list[tuple[Any, ...]]]:
    """
    Every row of every table but C{skip}, to compare whole db states.
    """
    tables = [
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%'"
        )
        if name not in skip
    ]
    return {
        t: sorted(connection.execute(f"SELECT * FROM {t}").fetchall()) for t in tables
    }


def paths(connection: sqlite3.Connection) -> dict[int, str]:
    """
    Every entry's path by inode.
    """
    rows = connection.execute("SELECT parent, name, inode FROM directory").fetchall()
    by_inode = {inode: (parent, name) for parent, name, inode in rows}

    def path(inode: int) -> str:
        parent, name = by_inode[inode]
        return name if parent == ROOT else f"{path(parent)}/{name}"

    return {inode: path(inode) for inode in by_inode}


def files(
    connection: sqlite3.Connection,
) -> dict[str, dict[str, tuple[int, int, bytes | None]]]:
    """
    The file table as C{{path: {peer or "": (size, mtime, hash)}}}.
    """
    names = paths(connection)
    out: dict[str, dict[str, tuple[int, int, bytes | None]]] = {}
    for inode, peer, size, mtime, digest in connection.execute(
        "SELECT inode, peer, size, mtime_ns, hash FROM file"
    ):
        out.setdefault(names[inode], {})[peer] = (size, mtime, digest)
    return out


def dirs(connection: sqlite3.Connection) -> list[str]:
    names = paths(connection)
    return sorted(
        names[inode]
        for (inode,) in connection.execute(
            "SELECT inode FROM directory WHERE kind = 'dir'"
        )
    )


def inode_of(connection: sqlite3.Connection, path: str) -> int:
    return {p: i for i, p in paths(connection).items()}[path]


def dir_mtime(connection: sqlite3.Connection, inode: int) -> int | None:
    row = connection.execute(
        "SELECT mtime_ns FROM dir_mtime WHERE inode = ?", (inode,)
    ).fetchone()
    return None if row is None else int(row[0])


class AddTests(SynchronousTestCase):
    """
    The Add rule.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.tree = make_tree()

    def test_creates(self) -> None:
        """
        An Add creates the directories and the file, the peer's row and
        the default row.
        """
        outcome = run(self.db, _txn_add, self.tree, P, add("a/b/f", 3, 10, h(1)))
        self.assertEqual(outcome, APPLIED)
        self.assertEqual(dirs(self.db), ["a", "a/b"])
        self.assertEqual(
            files(self.db), {"a/b/f": {P: (3, 10, h(1)), DEFAULT: (3, 10, h(1))}}
        )
        self.assertIsNotNone(dir_mtime(self.db, inode_of(self.db, "a/b")))
        self.assertIsNotNone(dir_mtime(self.db, ROOT))

    def test_second_peer(self) -> None:
        """
        An Add of another version by another peer writes its row; the
        default stays the first one.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 3, 10, h(1)))
        run(self.db, _txn_add, self.tree, Q, add("f", 4, 20, h(2)))
        self.assertEqual(
            files(self.db)["f"],
            {P: (3, 10, h(1)), Q: (4, 20, h(2)), DEFAULT: (3, 10, h(1))},
        )

    def test_repeat_not_newer(self) -> None:
        """
        A repeated Add from the same peer whose mtime is not newer is
        ignored.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 3, 10, h(1)))
        before = dump(self.db, PROGRESS)
        self.assertEqual(
            run(self.db, _txn_add, self.tree, P, add("f", 5, 10, h(2))), IGNORED
        )
        self.assertEqual(
            run(self.db, _txn_add, self.tree, P, add("f", 5, 9, h(2))), IGNORED
        )
        self.assertEqual(dump(self.db, PROGRESS), before)

    def test_newer_only_copy(self) -> None:
        """
        A newer Add from the only peer that had the default version moves
        the default to it.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 3, 10, h(1)))
        self.assertEqual(
            run(self.db, _txn_add, self.tree, P, add("f", 5, 11, h(2))), APPLIED
        )
        self.assertEqual(
            files(self.db)["f"], {P: (5, 11, h(2)), DEFAULT: (5, 11, h(2))}
        )

    def test_newer_other_copies(self) -> None:
        """
        A newer Add from a peer whose previous version another peer also
        has leaves the default alone.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 3, 10, h(1)))
        run(self.db, _txn_add, self.tree, Q, add("f", 3, 10, h(1)))
        run(self.db, _txn_add, self.tree, P, add("f", 5, 11, h(2)))
        self.assertEqual(files(self.db)["f"][DEFAULT], (3, 10, h(1)))

    def test_no_version(self) -> None:
        """
        A file without a hash yet (#musthash) is added with hash C{None}.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 3, 10, None))
        self.assertEqual(files(self.db)["f"][DEFAULT], (3, 10, None))

    def test_conflict(self) -> None:
        """
        A path through a file, or a file where a directory is, is a
        conflict that changes nothing.
        """
        run(self.db, _txn_add, self.tree, P, add("a", 1, 10, h(1)))
        run(self.db, _txn_add, self.tree, P, add("d/e", 1, 10, h(1)))
        before = dump(self.db, PROGRESS)
        self.assertEqual(
            run(self.db, _txn_add, self.tree, Q, add("a/b", 1, 10, h(2))), CONFLICT
        )
        self.assertEqual(
            run(self.db, _txn_add, self.tree, Q, add("a/b/c", 1, 10, h(2))), CONFLICT
        )
        self.assertEqual(
            run(self.db, _txn_add, self.tree, Q, add("d", 1, 10, h(2))), CONFLICT
        )
        self.assertEqual(
            run(self.db, _txn_replace, self.tree, Q, replace("d", 1, 10, h(2), h(1))),
            CONFLICT,
        )
        self.assertEqual(
            run(self.db, _txn_catchup, self.tree, Q, catchup("a/x", 1, 1, h(2))),
            CONFLICT,
        )
        self.assertEqual(dump(self.db, PROGRESS), before)

    def test_dir_mtime(self) -> None:
        """
        A directory's mtime changes when an entry is added to it, not when
        a file in it changes.
        """
        clock = [100]
        tree = make_tree(clock=clock)
        run(self.db, _txn_add, tree, P, add("d/f", 1, 10, h(1)))
        d = inode_of(self.db, "d")
        self.assertEqual(dir_mtime(self.db, d), 100)
        clock[0] = 200
        run(self.db, _txn_replace, tree, P, replace("d/f", 2, 20, h(2), h(1)))
        self.assertEqual(dir_mtime(self.db, d), 100)
        run(self.db, _txn_add, tree, P, add("d/g", 1, 10, h(1)))
        self.assertEqual(dir_mtime(self.db, d), 200)
        self.assertEqual(dir_mtime(self.db, ROOT), 100)


class ReplaceTests(SynchronousTestCase):
    """
    The Replace rule: chains and forks.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.tree = make_tree()
        run(self.db, _txn_add, self.tree, P, add("f", 1, 10, h(1)))
        run(self.db, _txn_add, self.tree, Q, add("f", 1, 10, h(1)))

    def test_chain(self) -> None:
        """
        A Replace of the default version moves the default; the other
        peer's row keeps the old version until it replaces it too.
        """
        self.assertEqual(
            run(self.db, _txn_replace, self.tree, P, replace("f", 2, 20, h(2), h(1))),
            APPLIED,
        )
        self.assertEqual(
            files(self.db)["f"],
            {P: (2, 20, h(2)), Q: (1, 10, h(1)), DEFAULT: (2, 20, h(2))},
        )
        run(self.db, _txn_replace, self.tree, P, replace("f", 3, 30, h(3), h(2)))
        self.assertEqual(files(self.db)["f"][DEFAULT], (3, 30, h(3)))
        # Q follows the chain late: the default is already past h(2), a
        # version it superseded: no fork (no conflict listed).
        self.assertEqual(
            run(self.db, _txn_replace, self.tree, Q, replace("f", 2, 20, h(2), h(1))),
            APPLIED,
        )
        self.assertEqual(files(self.db)["f"][DEFAULT], (3, 30, h(3)))
        self.assertEqual(forks(self.db, inode_of(self.db, "f")), [])

    def test_chain_reaches_default(self) -> None:
        """
        A Replace to the version already the default is no fork.
        """
        run(self.db, _txn_replace, self.tree, P, replace("f", 2, 20, h(2), h(1)))
        self.assertEqual(
            run(self.db, _txn_replace, self.tree, Q, replace("f", 2, 20, h(2), h(1))),
            APPLIED,
        )
        self.assertEqual(forks(self.db, inode_of(self.db, "f")), [])

    def test_fork(self) -> None:
        """
        Two peers replacing the same version: the first one's becomes the
        default, the second one's row takes its own version and the fork
        is recorded.
        """
        run(self.db, _txn_replace, self.tree, P, replace("f", 2, 20, h(2), h(1)))
        outcome = run(
            self.db, _txn_replace, self.tree, Q, replace("f", 5, 21, h(5), h(1))
        )
        self.assertEqual(outcome, FORK)
        self.assertEqual(
            files(self.db)["f"],
            {P: (2, 20, h(2)), Q: (5, 21, h(5)), DEFAULT: (2, 20, h(2))},
        )
        self.assertEqual(forks(self.db, inode_of(self.db, "f")), [(Q, h(5))])

    def test_repeat(self) -> None:
        """
        The same Replace twice changes nothing the second time.
        """
        run(self.db, _txn_replace, self.tree, P, replace("f", 2, 20, h(2), h(1)))
        before = dump(self.db, PROGRESS)
        self.assertEqual(
            run(self.db, _txn_replace, self.tree, P, replace("f", 2, 20, h(2), h(1))),
            IGNORED,
        )
        self.assertEqual(dump(self.db, PROGRESS), before)

    def test_unknown_file(self) -> None:
        """
        A Replace of a file not known yet adds it.
        """
        run(self.db, _txn_replace, self.tree, R, replace("new/g", 2, 20, h(2), h(1)))
        self.assertEqual(
            files(self.db)["new/g"], {R: (2, 20, h(2)), DEFAULT: (2, 20, h(2))}
        )

    def test_hashed_later(self) -> None:
        """
        A file added without a version and replaced by its hashed version
        (old hash C{None}) follows the chain.
        """
        run(self.db, _txn_add, self.tree, P, add("n", 1, 10, None))
        run(self.db, _txn_replace, self.tree, P, replace("n", 1, 10, h(7), None))
        self.assertEqual(files(self.db)["n"][DEFAULT], (1, 10, h(7)))


class RemoveTests(SynchronousTestCase):
    """
    The Remove and Drop rules.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.clock = [100]
        self.tree = make_tree(clock=self.clock)

    def test_last_copy(self) -> None:
        """
        Removing the only peer's row removes the file and the directories
        left empty, and the parent's mtime changes.
        """
        run(self.db, _txn_add, self.tree, P, add("a/b/f", 1, 10, h(1)))
        run(self.db, _txn_add, self.tree, P, add("a/g", 1, 10, h(1)))
        a = inode_of(self.db, "a")
        self.clock[0] = 200
        self.assertEqual(
            run(self.db, _txn_remove, self.tree, P, remove("a/b/f", 30, h(1))), APPLIED
        )
        self.assertEqual(
            files(self.db), {"a/g": {P: (1, 10, h(1)), DEFAULT: (1, 10, h(1))}}
        )
        self.assertEqual(dirs(self.db), ["a"])
        self.assertEqual(dir_mtime(self.db, a), 200)
        run(self.db, _txn_remove, self.tree, P, remove("a/g", 30, h(1)))
        self.assertEqual(files(self.db), {})
        self.assertEqual(dirs(self.db), [])
        self.assertEqual(
            self.db.execute("SELECT inode FROM dir_mtime").fetchall(), [(ROOT,)]
        )

    def test_conditions(self) -> None:
        """
        A Remove whose old hash is not the peer's version, or whose mtime
        is older than the peer's row, or from a peer without a row, or of
        an unknown path, is ignored.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 1, 10, h(1)))
        before = dump(self.db, PROGRESS)
        for peer, notification in [
            (P, remove("f", 30, h(2))),
            (P, remove("f", 9, h(1))),
            (Q, remove("f", 30, h(1))),
            (P, remove("g", 30, h(1))),
            (P, remove("f/x", 30, h(1))),
            (P, drop("f", h(2))),
            (Q, drop("f", h(1))),
        ]:
            self.assertEqual(
                run(
                    self.db, _txn_apply_batch, self.tree, peer, [notification]
                ).outcomes,
                (IGNORED,),
            )
        self.assertEqual(dump(self.db, PROGRESS), before)
        self.assertEqual(
            run(self.db, _txn_remove, self.tree, P, remove("f", 10, h(1))), APPLIED
        )
        self.assertEqual(files(self.db), {})

    def test_others_keep_default(self) -> None:
        """
        When another peer still has the default version, the file stays
        with its default.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 1, 10, h(1)))
        run(self.db, _txn_add, self.tree, Q, add("f", 1, 10, h(1)))
        run(self.db, _txn_remove, self.tree, P, remove("f", 30, h(1)))
        self.assertEqual(
            files(self.db)["f"], {Q: (1, 10, h(1)), DEFAULT: (1, 10, h(1))}
        )

    def test_newest_remaining(self) -> None:
        """
        When no remaining peer has the default version, the default becomes
        the newest remaining version.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 1, 30, h(1)))
        run(self.db, _txn_add, self.tree, Q, add("f", 2, 20, h(2)))
        run(self.db, _txn_add, self.tree, R, add("f", 3, 25, h(3)))
        run(self.db, _txn_remove, self.tree, P, remove("f", 40, h(1)))
        self.assertEqual(files(self.db)["f"][DEFAULT], (3, 25, h(3)))

    def test_drop(self) -> None:
        """
        A Drop takes the peer's row only: the file stays, with its default,
        even when no other known peer has it.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 1, 10, h(1)))
        run(self.db, _txn_add, self.tree, Q, add("f", 1, 10, h(1)))
        self.assertEqual(
            run(self.db, _txn_drop, self.tree, P, drop("f", h(1))), APPLIED
        )
        self.assertEqual(
            files(self.db)["f"], {Q: (1, 10, h(1)), DEFAULT: (1, 10, h(1))}
        )
        run(self.db, _txn_drop, self.tree, Q, drop("f", h(1)))
        self.assertEqual(files(self.db)["f"], {DEFAULT: (1, 10, h(1))})


class CatchupTests(SynchronousTestCase):
    """
    Catch-up: mark and sweep, and the progress stored.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.tree = make_tree()

    def batch(self, peer: str, *notifications: Notification) -> tuple[str, ...]:
        return run(
            self.db, _txn_apply_batch, self.tree, peer, list(notifications)
        ).outcomes

    def test_mark_and_sweep(self) -> None:
        """
        CatchupStart marks the peer's rows, Catchup unmarks the files
        listed, CatchupComplete removes the others as Remove would (the
        file goes if no other peer has it) and stores the position.
        """
        self.batch(
            P,
            add("keep", 1, 10, h(1)),
            add("gone", 1, 10, h(2)),
            add("shared", 1, 10, h(3)),
            add("changed", 1, 10, h(4)),
        )
        self.batch(Q, add("shared", 1, 10, h(3)))
        run(self.db, _txn_catchup_start, self.tree, P, START)
        marked = self.db.execute("SELECT count(*) FROM pending_catchup").fetchone()[0]
        self.assertEqual(marked, 4)
        run(self.db, _txn_catchup, self.tree, P, catchup("keep", 1, 10, h(1)))
        run(self.db, _txn_catchup, self.tree, P, catchup("changed", 2, 20, h(5)))
        run(self.db, _txn_catchup, self.tree, P, catchup("new", 1, 10, h(6)))
        run(self.db, _txn_catchup_complete, self.tree, P, complete(77))
        self.assertEqual(
            files(self.db),
            {
                "keep": {P: (1, 10, h(1)), DEFAULT: (1, 10, h(1))},
                "changed": {P: (2, 20, h(5)), DEFAULT: (2, 20, h(5))},
                "new": {P: (1, 10, h(6)), DEFAULT: (1, 10, h(6))},
                "shared": {Q: (1, 10, h(3)), DEFAULT: (1, 10, h(3))},
            },
        )
        self.assertEqual(
            self.db.execute("SELECT count(*) FROM pending_catchup").fetchone()[0], 0
        )
        self.assertEqual(peer_progress(self.db, P), (None, 77))

    def test_notifications_before_catchup(self) -> None:
        """
        Notifications of a peer applied before its catch-up: a row newer
        than the listing's entry is kept (and unmarked); a file that the
        listing does not name goes at CatchupComplete.
        """
        self.batch(P, add("f", 1, 20, h(2)), add("g", 1, 20, h(3)))
        self.batch(P, START, catchup("f", 1, 10, h(1)), complete(5))
        self.assertEqual(
            files(self.db), {"f": {P: (1, 20, h(2)), DEFAULT: (1, 20, h(2))}}
        )

    def test_live_during_catchup(self) -> None:
        """
        A live Add between CatchupStart and CatchupComplete unmarks the
        file: it is not swept.
        """
        self.batch(P, add("f", 1, 10, h(1)))
        self.batch(P, START, add("f", 2, 30, h(2), pos=8), complete(9))
        self.assertEqual(files(self.db)["f"][P], (2, 30, h(2)))

    def test_catchup_of_other_peer_row(self) -> None:
        """
        A catch-up of P touches only P's rows.
        """
        self.batch(Q, add("f", 1, 10, h(1)))
        self.batch(P, START, complete(3))
        self.assertEqual(
            files(self.db)["f"], {Q: (1, 10, h(1)), DEFAULT: (1, 10, h(1))}
        )

    def test_progress(self) -> None:
        """
        Connected records the store uuid; history entries store their
        position as they are applied, but not during a catch-up (a catch-up
        cut short must not move the progress); a new uuid restarts at 0.
        """
        self.assertIsNone(peer_progress(self.db, P))
        self.batch(
            P,
            connected("u1"),
            add("f", 1, 10, h(1), pos=4),
            add("g", 1, 10, h(1), pos=6),
        )
        self.assertEqual(peer_progress(self.db, P), ("u1", 6))
        self.batch(P, START, catchup("f", 1, 10, h(1)), add("h", 1, 10, h(1), pos=12))
        self.assertEqual(peer_progress(self.db, P), ("u1", 6))
        self.batch(P, complete(12))
        self.assertEqual(peer_progress(self.db, P), ("u1", 12))
        self.batch(P, connected("u1"))
        self.assertEqual(peer_progress(self.db, P), ("u1", 12))
        self.batch(P, connected("u2"))
        self.assertEqual(peer_progress(self.db, P), ("u2", 0))

    def test_connected_abandons_catchup(self) -> None:
        """
        A new subscription (Connected) abandons a catch-up that did not
        complete: its marks are dropped and history entries store their
        position again.
        """
        self.batch(P, connected("u1"), add("f", 1, 10, h(1), pos=4))
        self.batch(P, START)
        self.batch(P, connected("u1"), add("g", 1, 10, h(1), pos=5))
        self.assertEqual(peer_progress(self.db, P), ("u1", 5))
        self.assertEqual(
            self.db.execute("SELECT count(*) FROM pending_catchup").fetchone()[0], 0
        )


class HostileTests(SynchronousTestCase):
    """
    Hostile or broken notifications are refused before anything is written.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.tree = make_tree()
        run(self.db, _txn_add, self.tree, P, add("f", 1, 10, h(1)))

    def assertRefused(self, error: type[Exception], notification: Notification) -> None:
        before = dump(self.db)
        cursor = self.db.cursor()
        batch = [add("ok", 1, 10, h(2)), notification, add("ok2", 1, 10, h(2))]
        raised = self.assertRaises(error, _txn_apply_batch, cursor, self.tree, P, batch)
        self.assertTrue(str(raised))
        # Nothing was written, even before a rollback.
        self.assertFalse(self.db.in_transaction)
        self.assertEqual(dump(self.db), before)

    def test_paths(self) -> None:
        """
        Absolute, C{..}, empty-segment, NUL, partial-file and over-long
        paths are refused.
        """
        for path in [
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "",
            "a\0b",
            ".f.part",
            "x" * 300,
            "a/" * 3000 + "b",
        ]:
            self.assertRefused(InvalidPath, add(path, 1, 10, h(1)))

    def test_sizes(self) -> None:
        """
        Negative and absurd sizes are refused.
        """
        self.assertRefused(BadRequest, add("g", -1, 10, h(1)))
        self.assertRefused(BadRequest, add("g", 1 << 63, 10, h(1)))
        self.assertRefused(BadRequest, replace("f", 10**30, 10, h(1), h(2)))

    def test_hashes(self) -> None:
        """
        A hash that is not a 32-byte root is refused.
        """
        self.assertRefused(BadRequest, add("g", 1, 10, b"short"))
        self.assertRefused(BadRequest, replace("f", 1, 10, h(2), b"x" * 33))
        self.assertRefused(BadRequest, remove("f", 10, b""))

    def test_fields(self) -> None:
        """
        Missing fields, out-of-range mtimes and positions, another arena
        and malformed uuids are refused.
        """
        self.assertRefused(
            BadRequest, Notification("add", ARENA, 1, path="g", mtime_ns=1)
        )
        self.assertRefused(BadRequest, add("g", 1, 1 << 64, h(1)))
        self.assertRefused(BadRequest, add("g", 1, 10, h(1), pos=-1))
        self.assertRefused(
            BadRequest,
            Notification("add", ArenaName("other"), 1, path="g", size=1, mtime_ns=1),
        )
        self.assertRefused(BadRequest, connected("x" * 100))
        self.assertRefused(BadRequest, connected("bad\nuuid"))

    def test_peer(self) -> None:
        """
        An empty peer id (the default row's) is refused.
        """
        self.assertRaises(
            BadRequest, _txn_add, self.db.cursor(), self.tree, "", add("g", 1, 1, h(1))
        )
        self.assertRaises(
            BadRequest,
            _txn_remove,
            self.db.cursor(),
            self.tree,
            P,
            add("g", 1, 1, h(1)),
        )


class AllocatorTests(SynchronousTestCase):
    """
    The arena's inode allocator.
    """

    def test_exhaust(self) -> None:
        """
        When the current range is used up the allocator asks for a new one
        with the end of the old one; inodes are never given twice, even
        after files are removed.
        """
        db = arena_db(self)
        ranges = Ranges(start=100, size=3)
        tree = make_tree(alloc=ranges)
        seen = []
        for i in range(5):
            run(db, _txn_add, tree, P, add(f"f{i}", 1, 10, h(1)))
            seen.append(inode_of(db, f"f{i}"))
            run(db, _txn_remove, tree, P, remove(f"f{i}", 10, h(1)))
        self.assertEqual(seen, [100, 101, 102, 103, 104])
        self.assertEqual(ranges.asked, [0, 103])

    def test_refuses_backwards(self) -> None:
        """
        A range that does not follow the current one is refused.
        """
        db = arena_db(self)
        cursor = db.cursor()
        _txn_alloc_inode(cursor, lambda end: InodeRange(100, 101))
        self.assertRaises(
            BadRequest, _txn_alloc_inode, cursor, lambda end: InodeRange(50, 60)
        )

    def test_forgotten_range(self) -> None:
        """
        With the real global db: an arena transaction that took a new range
        and was rolled back asks again and gets the same range, so the
        global db does not hand out a range nobody uses; an arena db
        deleted and made again gets its old range back.
        """
        global_db = GlobalDb.open(self.mktemp() + ".db")
        self.addCleanup(global_db.close)
        db = arena_db(self)
        tree = make_tree(alloc=lambda end: global_db.alloc_range(ARENA, end))
        cursor = db.cursor()
        _txn_alloc_inode(cursor, tree.alloc_range)
        db.rollback()
        run(db, _txn_add, tree, P, add("f", 1, 10, h(1)))
        first = inode_of(db, "f")
        other = global_db.alloc_range(ArenaName("other"), 0)
        self.assertLess(first, other.start)
        fresh = arena_db(self)
        run(fresh, _txn_add, tree, P, add("g", 1, 10, h(1)))
        self.assertEqual(inode_of(fresh, "g"), first)


class BlobMarkTests(SynchronousTestCase):
    """
    Blobs of versions that stop being the default are marked for deletion.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.tree = make_tree()

    def blob(self, path: str, digest: bytes) -> int:
        cursor = self.db.execute(
            "INSERT INTO blob (inode, hash, size) VALUES (?, ?, 1)",
            (inode_of(self.db, path), digest),
        )
        self.db.commit()
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def queue(self, blob_id: int) -> str:
        return str(
            self.db.execute(
                "SELECT queue FROM blob WHERE id = ?", (blob_id,)
            ).fetchone()[0]
        )

    def test_replaced(self) -> None:
        """
        A chain Replace moves the old default's blob to the pending removal
        queue; a fork moves nothing.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 1, 10, h(1)))
        run(self.db, _txn_add, self.tree, Q, add("f", 1, 10, h(1)))
        old = self.blob("f", h(1))
        run(self.db, _txn_replace, self.tree, Q, replace("f", 1, 10, h(3), h(9)))
        self.assertEqual(self.queue(old), QUEUE_WORKING)
        run(self.db, _txn_replace, self.tree, P, replace("f", 1, 20, h(2), h(1)))
        self.assertEqual(self.queue(old), QUEUE_PENDING_REMOVAL)

    def test_removed(self) -> None:
        """
        A file that disappears has its blobs moved to pending removal; a
        Remove that leaves the default with another peer moves nothing.
        """
        run(self.db, _txn_add, self.tree, P, add("f", 1, 10, h(1)))
        run(self.db, _txn_add, self.tree, Q, add("f", 1, 10, h(1)))
        blob = self.blob("f", h(1))
        run(self.db, _txn_remove, self.tree, P, remove("f", 10, h(1)))
        self.assertEqual(self.queue(blob), QUEUE_WORKING)
        run(self.db, _txn_remove, self.tree, Q, remove("f", 10, h(1)))
        self.assertEqual(self.queue(blob), QUEUE_PENDING_REMOVAL)

    def test_empty_root(self) -> None:
        """
        The empty file's root is an ordinary version.
        """
        run(self.db, _txn_add, self.tree, P, add("e", 0, 10, EMPTY_ROOT))
        self.assertEqual(files(self.db)["e"][DEFAULT], (0, 10, EMPTY_ROOT))


class BatchTests(SynchronousTestCase):
    """
    L{_txn_apply_batch}: what the FUSE layer must invalidate.
    """

    def test_invalidations(self) -> None:
        """
        The result names the entries added or removed and the inodes whose
        attributes changed; a change to a non-default row names nothing.
        """
        db = arena_db(self)
        tree = make_tree()
        result = run(db, _txn_apply_batch, tree, P, [add("d/f", 1, 10, h(1))])
        d, f = inode_of(db, "d"), inode_of(db, "d/f")
        self.assertEqual(result.outcomes, (APPLIED,))
        self.assertEqual(result.entries, {(ROOT, "d"), (d, "f")})
        self.assertEqual(result.inodes, {ROOT, d, f})
        result = run(db, _txn_apply_batch, tree, Q, [add("d/f", 1, 11, h(2))])
        self.assertEqual((result.entries, result.inodes), (frozenset(), frozenset()))
        result = run(db, _txn_apply_batch, tree, P, [replace("d/f", 2, 12, h(3), h(1))])
        self.assertEqual((result.entries, result.inodes), (frozenset(), {f}))
        result = run(db, _txn_apply_batch, tree, P, [remove("d/f", 20, h(3))])
        self.assertEqual(result.inodes, {f})
        result = run(db, _txn_apply_batch, tree, Q, [remove("d/f", 20, h(2))])
        self.assertEqual(result.entries, {(ROOT, "d"), (d, "f")})
        self.assertEqual(result.inodes, {ROOT, d, f})

    def test_connected_kinds(self) -> None:
        """
        L{_txn_connected} refuses another kind of notification.
        """
        db = arena_db(self)
        self.assertRaises(
            BadRequest, _txn_connected, db.cursor(), make_tree(), P, START
        )

    def test_batch_as_one_by_one(self) -> None:
        """
        A batch leaves the tables as its notifications applied one batch
        each would (the batch writes the inode range, the directories'
        mtimes and the progress once, at its end): with a range running
        out within the batch, directories made and emptied, a catch-up and
        a new subscription amid history entries.
        """
        notifications = [
            add("d/a", 1, 10, h(1), pos=1),
            add("d/e/b", 1, 10, h(2), pos=2),
            add("x/y/z", 1, 10, h(3), pos=3),
            replace("d/a", 2, 20, h(4), h(1), pos=4),
            remove("x/y/z", 30, h(3), pos=5),
            add("d/e", 1, 10, h(5), pos=6),
            START,
            catchup("d/a", 2, 20, h(4)),
            catchup("n/m", 1, 10, h(6)),
            complete(7),
            add("x/w", 1, 10, h(7), pos=8),
            connected("u2"),
            add("x/v", 1, 10, h(8), pos=9),
            drop("d/a", h(4), pos=10),
            add("q", 3, 40, h(9), pos=11),
            START,
        ]
        clock = [5000]
        one = arena_db(self)
        tree = make_tree(alloc=Ranges(size=2), clock=clock)
        outcomes = [
            run(one, _txn_apply_batch, tree, P, [n]).outcomes[0] for n in notifications
        ]
        batched = arena_db(self)
        tree = make_tree(alloc=Ranges(size=2), clock=clock)
        result = run(batched, _txn_apply_batch, tree, P, notifications)
        self.assertEqual(list(result.outcomes), outcomes)
        self.assertIn(CONFLICT, outcomes)
        self.assertEqual(dump(batched), dump(one))
        self.assertEqual(peer_progress(batched, P), ("u2", 11))
        # The directories emptied (x/y, d/e) have no mtime left.
        directories = {
            inode
            for (inode,) in batched.execute(
                "SELECT inode FROM directory WHERE kind = 'dir'"
            )
        }
        mtimes = {inode for (inode,) in batched.execute("SELECT inode FROM dir_mtime")}
        self.assertEqual(mtimes, directories | {ROOT})
