"""
The global db, C{realize.db} (DESIGN.md section 10): the top of the Unreal
view and the allocation of inode numbers.

Inode numbers are handed out in ranges: L{GLOBAL_RANGE_SIZE} at a time for
the global tree (the mount root, the directories that compound arena names
need, the arena roots) and L{ARENA_RANGE_SIZE} at a time for each arena,
whose own db (L{realize.storage.unreal}) allocates its files' and
directories' inodes within its current range.  Ranges only grow: each new
range starts where the highest one ended, and the global db records
C{range end -> owner}.  Inodes are never reused.

Tables (see docs/unreal-schema.md):

    - C{inode_range(end, start, owner)}: every range given, C{[start,
      end)}; C{owner} is an arena name, or L{GLOBAL_TREE} for the global
      tree's ranges.
    - C{tree_alloc(id = 1, next, end)}: the next free inode of the global
      tree and the end of its current range.
    - C{tree(inode, parent, name, arena, mtime_ns)}: the global tree: the
      mount root (inode L{ROOT_INODE}, parent 0, name C{""}), compound
      directories (C{arena} NULL) and arena roots (C{arena} = the name).
      It holds exactly the arenas last given to L{_txn_set_arenas}.
    - C{arena(name, root)}: every arena ever seen and its root inode, kept
      when an arena leaves the config so that it gets the same root back.

The recovery rule (#inoderange): the two dbs cannot commit together, so an
arena db may forget a range the global db gave it (a crash between the two
commits, or the arena db deleted).  The arena asks with the end of its last
known range (0 the first time); the global db first looks for a range of
that arena ending after that, and returns it again if there is one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from attrs import define, frozen

from realize.errors import BadRequest, IOFailure
from realize.model import ArenaName, check_arena_name

__all__ = [
    "ARENA_RANGE_SIZE",
    "GLOBAL_RANGE_SIZE",
    "GLOBAL_TREE",
    "ROOT_INODE",
    "GlobalDb",
    "InodeRange",
    "TreeNode",
    "create_global_tables",
    "range_owner",
    "tree_child",
    "tree_children",
    "tree_node",
]

#: Inodes per range given to an arena.
ARENA_RANGE_SIZE: Final = 10_000

#: Inodes per range of the global tree.
GLOBAL_RANGE_SIZE: Final = 100

#: The mount root's inode (FUSE's C{FUSE_ROOT_ID}).
ROOT_INODE: Final = 1

#: Owner recorded for the global tree's ranges (not a valid arena name).
GLOBAL_TREE: Final = ""

#: Schema version of C{realize.db} written by L{create_global_tables}.
GLOBAL_SCHEMA_VERSION: Final = 1

Cursor = sqlite3.Cursor


@frozen
class InodeRange:
    """
    A range of inode numbers C{[start, end)}.

    @ivar start: first inode of the range.
    @ivar end: one past the last inode.
    """

    start: int
    end: int


def create_global_tables(cursor: Cursor) -> None:
    """
    Create the tables of C{realize.db} (schema upgrade 1 of that db).

    @param cursor: a cursor on the global db, in a transaction.
    """
    cursor.execute(
        "CREATE TABLE inode_range ("
        " end INTEGER PRIMARY KEY,"
        " start INTEGER NOT NULL,"
        " owner TEXT NOT NULL)"
    )
    cursor.execute("CREATE INDEX inode_range_owner ON inode_range (owner, end)")
    cursor.execute(
        "CREATE TABLE tree_alloc ("
        " id INTEGER PRIMARY KEY CHECK (id = 1),"
        " next INTEGER NOT NULL,"
        " end INTEGER NOT NULL)"
    )
    cursor.execute(
        "CREATE TABLE tree ("
        " inode INTEGER PRIMARY KEY,"
        " parent INTEGER NOT NULL,"
        " name TEXT NOT NULL,"
        " arena TEXT UNIQUE,"
        " mtime_ns INTEGER NOT NULL,"
        " UNIQUE (parent, name))"
    )
    cursor.execute(
        "CREATE TABLE arena (name TEXT PRIMARY KEY, root INTEGER NOT NULL UNIQUE)"
    )
    # The mount root takes the first inode of the first range, before any
    # arena asks for one; its mtime is set by the first _txn_set_arenas.
    first = _txn_alloc_range(cursor, GLOBAL_TREE, 0)
    cursor.execute(
        "INSERT INTO tree_alloc (id, next, end) VALUES (1, ?, ?)",
        (ROOT_INODE + 1, first.end),
    )
    cursor.execute(
        "INSERT INTO tree (inode, parent, name, arena, mtime_ns)"
        " VALUES (?, 0, '', NULL, 0)",
        (ROOT_INODE,),
    )


def _txn_alloc_range(cursor: Cursor, owner: str, exhausted_end: int) -> InodeRange:
    """
    Give an inode range to an arena (or to the global tree).

    If a range of C{owner} ends after C{exhausted_end}, the first such range
    is returned again (the owner forgot it, #inoderange); otherwise a new
    range starts at the end of the highest range given so far.

    @param cursor: a cursor on the global db, in a transaction.
    @param owner: an arena name, or L{GLOBAL_TREE}.
    @param exhausted_end: the end of the owner's last known range, or 0 if
        it knows none.
    @return: the range.
    @raise BadRequest: if C{exhausted_end} is negative.
    """
    if exhausted_end < 0:
        raise BadRequest(f"inode range end {exhausted_end} is negative")
    row = cursor.execute(
        "SELECT start, end FROM inode_range WHERE owner = ? AND end > ?"
        " ORDER BY end LIMIT 1",
        (owner, exhausted_end),
    ).fetchone()
    if row is not None:
        return InodeRange(row[0], row[1])
    (highest,) = cursor.execute("SELECT max(end) FROM inode_range").fetchone()
    start = ROOT_INODE if highest is None else highest
    size = GLOBAL_RANGE_SIZE if owner == GLOBAL_TREE else ARENA_RANGE_SIZE
    cursor.execute(
        "INSERT INTO inode_range (end, start, owner) VALUES (?, ?, ?)",
        (start + size, start, owner),
    )
    return InodeRange(start, start + size)


def _tree_inode(cursor: Cursor) -> int:
    """
    Allocate an inode of the global tree.
    """
    row = cursor.execute("SELECT next, end FROM tree_alloc WHERE id = 1").fetchone()
    if row is None:
        given = _txn_alloc_range(cursor, GLOBAL_TREE, 0)
        inode = given.start
    elif row[0] >= row[1]:
        given = _txn_alloc_range(cursor, GLOBAL_TREE, row[1])
        inode = given.start
    else:
        inode = row[0]
        given = InodeRange(inode, row[1])
    cursor.execute(
        "INSERT INTO tree_alloc (id, next, end) VALUES (1, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET next = excluded.next, end = excluded.end",
        (inode + 1, given.end),
    )
    return inode


def _txn_ensure_root(cursor: Cursor, now_ns: int) -> None:
    """
    Give the mount root an mtime if it has none yet.

    @param now_ns: its mtime, in ns.
    """
    cursor.execute(
        "UPDATE tree SET mtime_ns = ? WHERE inode = ? AND mtime_ns = 0",
        (now_ns, ROOT_INODE),
    )


def _touch(cursor: Cursor, inode: int, now_ns: int) -> None:
    cursor.execute(
        "UPDATE tree SET mtime_ns = max(mtime_ns, ?) WHERE inode = ?", (now_ns, inode)
    )


def _txn_set_arenas(
    cursor: Cursor, names: Iterable[ArenaName], now_ns: int
) -> dict[ArenaName, int]:
    """
    Make the global tree show exactly these arenas: create the compound
    directories and arena roots they need, and remove the tree entries of
    arenas no longer given (their root inode is kept in C{arena}, and
    given back if they return).

    @param names: the configured arena names.  No name plus C{/} may
        prefix another (DESIGN.md section 1).
    @param now_ns: the time for directory mtimes, in ns.
    @return: each arena's root inode.
    @raise InvalidPath: if a name is malformed.
    @raise BadRequest: if a name plus C{/} prefixes another.
    """
    wanted = sorted({check_arena_name(name) for name in names})
    for i, name in enumerate(wanted[:-1]):
        if wanted[i + 1].startswith(name + "/"):
            raise BadRequest(f"arena {name!r} is a prefix of arena {wanted[i + 1]!r}")
    _txn_ensure_root(cursor, now_ns)
    # Drop the entries of arenas that left, then compound directories that
    # no longer lead to an arena, deepest first.
    for inode, arena in cursor.execute(
        "SELECT inode, arena FROM tree WHERE arena IS NOT NULL"
    ).fetchall():
        if arena not in wanted:
            _remove_tree_entry(cursor, inode, now_ns)
    roots: dict[ArenaName, int] = {}
    for name in wanted:
        parent = ROOT_INODE
        segments = name.split("/")
        for segment in segments[:-1]:
            parent = _tree_dir(cursor, parent, segment, now_ns)
        roots[name] = _tree_arena_root(cursor, parent, segments[-1], name, now_ns)
    return roots


def _remove_tree_entry(cursor: Cursor, inode: int, now_ns: int) -> None:
    """
    Remove a tree entry and the compound directories left empty above it.
    """
    while inode != ROOT_INODE:
        row = cursor.execute(
            "SELECT parent FROM tree WHERE inode = ?", (inode,)
        ).fetchone()
        if row is None:
            return
        if cursor.execute("SELECT 1 FROM tree WHERE parent = ?", (inode,)).fetchone():
            return
        cursor.execute("DELETE FROM tree WHERE inode = ?", (inode,))
        _touch(cursor, row[0], now_ns)
        inode = row[0]


def _tree_dir(cursor: Cursor, parent: int, name: str, now_ns: int) -> int:
    row = cursor.execute(
        "SELECT inode, arena FROM tree WHERE parent = ? AND name = ?", (parent, name)
    ).fetchone()
    if row is not None:
        if row[1] is not None:
            raise BadRequest(f"arena {row[1]!r} is a prefix of another arena")
        return int(row[0])
    inode = _tree_inode(cursor)
    cursor.execute(
        "INSERT INTO tree (inode, parent, name, arena, mtime_ns)"
        " VALUES (?, ?, ?, NULL, ?)",
        (inode, parent, name, now_ns),
    )
    _touch(cursor, parent, now_ns)
    return inode


def _tree_arena_root(
    cursor: Cursor, parent: int, name: str, arena: ArenaName, now_ns: int
) -> int:
    row = cursor.execute("SELECT root FROM arena WHERE name = ?", (arena,)).fetchone()
    if row is None:
        root = _tree_inode(cursor)
        cursor.execute("INSERT INTO arena (name, root) VALUES (?, ?)", (arena, root))
    else:
        root = int(row[0])
    present = cursor.execute(
        "SELECT parent, name FROM tree WHERE inode = ?", (root,)
    ).fetchone()
    if present is None:
        clash = cursor.execute(
            "SELECT 1 FROM tree WHERE parent = ? AND name = ?", (parent, name)
        ).fetchone()
        if clash:
            raise BadRequest(f"arena {arena!r} is a prefix of another arena")
        cursor.execute(
            "INSERT INTO tree (inode, parent, name, arena, mtime_ns)"
            " VALUES (?, ?, ?, ?, ?)",
            (root, parent, name, arena, now_ns),
        )
        _touch(cursor, parent, now_ns)
    return root


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA busy_timeout = 10000")
    return connection


@define(eq=False)
class GlobalDb:
    """
    Blocking access to C{realize.db}, for the arenas' writer threads: an
    arena's inode allocator asks L{alloc_range} from inside its own
    transaction (rarely: once per L{ARENA_RANGE_SIZE} inodes), so this
    cannot go through a reactor-side pool.  One connection, serialised by
    a lock; every method commits its own transaction before returning.

    @ivar connection: the connection, opened by L{open}, in autocommit mode
        (transactions are explicit).
    @ivar lock: serialises the users of C{connection}.
    """

    connection: sqlite3.Connection
    lock: threading.Lock

    @classmethod
    def open(cls, path: str) -> GlobalDb:
        """
        Open (creating if needed) the global db, in WAL mode, and upgrade
        its schema.

        @param path: the file, e.g. C{<statedir>/realize.db}.
        @raise IOFailure: if the file cannot be opened, or has a schema
            newer than this code knows.
        """
        # To be replaced by storage/schema.py's runner once merged.
        try:
            connection = _connect(path)
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            if version > GLOBAL_SCHEMA_VERSION:
                connection.close()
                raise IOFailure(
                    f"{path}: schema version {version} is newer than this "
                    f"realize ({GLOBAL_SCHEMA_VERSION})"
                )
            if version < GLOBAL_SCHEMA_VERSION:
                connection.execute("BEGIN IMMEDIATE")
                create_global_tables(connection.cursor())
                connection.execute(f"PRAGMA user_version = {GLOBAL_SCHEMA_VERSION}")
                connection.execute("COMMIT")
        except sqlite3.Error as e:
            raise IOFailure(f"{path}: cannot open the global db: {e}") from e
        return cls(connection, threading.Lock())

    def _run(self, f: Callable[..., object], *args: object) -> object:
        with self.lock:
            try:
                self.connection.execute("BEGIN IMMEDIATE")
                try:
                    result = f(self.connection.cursor(), *args)
                except BaseException:
                    self.connection.execute("ROLLBACK")
                    raise
                self.connection.execute("COMMIT")
            except sqlite3.Error as e:
                raise IOFailure(f"global db: {e}") from e
            return result

    def alloc_range(self, arena: ArenaName, exhausted_end: int) -> InodeRange:
        """
        Blocking L{_txn_alloc_range} for an arena, committed on return.

        @param arena: the arena.
        @param exhausted_end: end of its last known range, 0 if none.
        @return: its next range (the one it was given before, if it forgot
            it).
        @raise IOFailure: on a database error.
        """
        result = self._run(_txn_alloc_range, check_arena_name(arena), exhausted_end)
        assert isinstance(result, InodeRange)
        return result

    def set_arenas(
        self, names: Iterable[ArenaName], now_ns: int
    ) -> Mapping[ArenaName, int]:
        """
        Blocking L{_txn_set_arenas}, committed on return.

        @return: each arena's root inode.
        @raise InvalidPath: if a name is malformed.
        @raise BadRequest: if a name plus C{/} prefixes another.
        @raise IOFailure: on a database error.
        """
        result = self._run(_txn_set_arenas, list(names), now_ns)
        assert isinstance(result, dict)
        return result

    def close(self) -> None:
        """
        Close the connection.
        """
        with self.lock:
            self.connection.close()


# Reading, for the Unreal view (any thread, a read-only connection).


@frozen
class TreeNode:
    """
    An entry of the global tree.

    @ivar inode: its inode.
    @ivar parent: its parent's inode (0 for the mount root).
    @ivar name: its name (C{""} for the mount root).
    @ivar arena: the arena whose root it is, or C{None} for the mount root
        and compound directories.
    @ivar mtime_ns: its mtime in ns.
    """

    inode: int
    parent: int
    name: str
    arena: ArenaName | None
    mtime_ns: int


_NODE = "SELECT inode, parent, name, arena, mtime_ns FROM tree"


def _node(row: tuple[int, int, str, str | None, int]) -> TreeNode:
    return TreeNode(
        int(row[0]),
        int(row[1]),
        str(row[2]),
        None if row[3] is None else ArenaName(row[3]),
        int(row[4]),
    )


def tree_node(connection: sqlite3.Connection, inode: int) -> TreeNode | None:
    """
    @return: the global tree's entry with this inode, or C{None}.
    """
    row = connection.execute(f"{_NODE} WHERE inode = ?", (inode,)).fetchone()
    return None if row is None else _node(row)


def tree_child(
    connection: sqlite3.Connection, parent: int, name: str
) -> TreeNode | None:
    """
    @return: the global tree's entry C{name} in C{parent}, or C{None}.
    """
    row = connection.execute(
        f"{_NODE} WHERE parent = ? AND name = ?", (parent, name)
    ).fetchone()
    return None if row is None else _node(row)


def tree_children(connection: sqlite3.Connection, parent: int) -> list[TreeNode]:
    """
    @return: the global tree's entries in C{parent}, sorted by name.
    """
    return [
        _node(row)
        for row in connection.execute(
            f"{_NODE} WHERE parent = ? AND inode != parent ORDER BY name", (parent,)
        )
    ]


def range_owner(connection: sqlite3.Connection, inode: int) -> str | None:
    """
    @return: the owner of the range holding an inode: an arena name, or
        L{GLOBAL_TREE}; C{None} if no range holds it.
    """
    row = connection.execute(
        "SELECT start, owner FROM inode_range WHERE end > ? ORDER BY end LIMIT 1",
        (inode,),
    ).fetchone()
    if row is None or row[0] > inode:
        return None
    return str(row[1])
