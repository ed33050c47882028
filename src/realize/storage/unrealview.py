"""
The read side of the Unreal (DESIGN.md section 10): what the FUSE layer
shows, read from sqlite in any thread, on read-only connections (no
adbapi, no reactor).

The mapping of inodes to tables:

    - the mount root (inode 1), the compound directories of arena names
      and the arena roots are rows of the global db's C{tree} table
      (L{realize.storage.globaldb}); a compound directory lists the tree
      rows below it;
    - an arena root lists the rows of its arena db's C{directory} table
      whose parent is the root's inode;
    - any other inode lies in an arena's range (the global db's
      C{inode_range}), and is a row of that arena's C{directory} table;
      a file's attributes are its default row in C{file}.

L{SqliteUnrealView} implements L{realize.interfaces.UnrealView} over them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote

from attrs import define, field, frozen

from realize.errors import IOFailure
from realize.interfaces import UnrealView
from realize.model import (
    KIND_DIR,
    KIND_FILE,
    MAX_PATH_BYTES,
    ArenaName,
    Entry,
    PeerId,
)
from realize.storage import blobs
from realize.storage.globaldb import (
    GLOBAL_TREE,
    TreeNode,
    tree_child,
    tree_children,
    tree_node,
)
from realize.storage.unreal import DEFAULT, Conflict, open_conflicts

__all__ = [
    "ArenaFiles",
    "FileVersion",
    "SqliteUnrealView",
    "arena_getattr",
    "arena_lookup",
    "arena_readdir",
    "arena_root",
    "arena_root_inode",
    "conflicted_files",
    "file_path",
    "file_version",
    "small_files_after",
]

Connection = sqlite3.Connection

T = TypeVar("T")

_ENTRY = (
    "SELECT d.name, d.inode, d.kind, f.size, f.mtime_ns, f.hash, m.mtime_ns"
    " FROM directory d"
    " LEFT JOIN file f ON f.inode = d.inode AND f.peer = ''"
    " LEFT JOIN dir_mtime m ON m.inode = d.inode"
)


def _subdirs(connection: Connection, inode: int) -> int:
    (count,) = connection.execute(
        "SELECT count(*) FROM directory WHERE parent = ? AND kind = ?",
        (inode, KIND_DIR),
    ).fetchone()
    return int(count)


def _entry(row: tuple[Any, ...], subdirs: int) -> Entry | None:
    _name, inode, kind, size, mtime_ns, digest, dir_mtime = row
    if kind == KIND_DIR:
        return Entry(int(inode), KIND_DIR, 0, int(dir_mtime or 0), None, 2 + subdirs)
    if size is None:
        # A name without a default row: never left by the rules.
        return None
    return Entry(
        int(inode),
        KIND_FILE,
        int(size),
        int(mtime_ns),
        None if digest is None else bytes(digest),
        1,
    )


def arena_lookup(connection: Connection, parent: int, name: str) -> Entry | None:
    """
    @param connection: a connection on an arena db.
    @param parent: a directory of that arena (its root included).
    @return: the entry C{name} in C{parent}, or C{None}.
    """
    row = connection.execute(
        f"{_ENTRY} WHERE d.parent = ? AND d.name = ?", (parent, name)
    ).fetchone()
    if row is None:
        return None
    subdirs = _subdirs(connection, row[1]) if row[2] == KIND_DIR else 0
    return _entry(row, subdirs)


def arena_getattr(connection: Connection, inode: int) -> Entry | None:
    """
    @param connection: a connection on an arena db.
    @param inode: a file or directory of that arena, not its root.
    @return: its entry, or C{None}.
    """
    row = connection.execute(f"{_ENTRY} WHERE d.inode = ?", (inode,)).fetchone()
    if row is None:
        return None
    subdirs = _subdirs(connection, inode) if row[2] == KIND_DIR else 0
    return _entry(row, subdirs)


def arena_root(connection: Connection | None, node: TreeNode) -> Entry:
    """
    @param connection: a connection on the arena's db, or C{None} if it has
        none yet.
    @param node: the arena root's row in the global tree.
    @return: the arena root's entry: its mtime is the later of the tree's
        and the arena db's.
    """
    if connection is None:
        return Entry(node.inode, KIND_DIR, 0, node.mtime_ns, None, 2)
    row = connection.execute(
        "SELECT mtime_ns FROM dir_mtime WHERE inode = ?", (node.inode,)
    ).fetchone()
    mtime_ns = max(node.mtime_ns, 0 if row is None else int(row[0]))
    return Entry(
        node.inode, KIND_DIR, 0, mtime_ns, None, 2 + _subdirs(connection, node.inode)
    )


def arena_readdir(connection: Connection, inode: int) -> list[tuple[str, Entry]]:
    """
    @param connection: a connection on an arena db.
    @param inode: a directory of that arena (its root included).
    @return: its entries, sorted by name (code point order).
    """
    rows = connection.execute(
        f"{_ENTRY} WHERE d.parent = ? ORDER BY d.name", (inode,)
    ).fetchall()
    counts = dict(
        connection.execute(
            "SELECT parent, count(*) FROM directory WHERE kind = ? AND parent IN"
            " (SELECT inode FROM directory WHERE parent = ? AND kind = ?)"
            " GROUP BY parent",
            (KIND_DIR, inode, KIND_DIR),
        ).fetchall()
    )
    out = []
    for row in rows:
        entry = _entry(row, counts.get(row[1], 0))
        if entry is not None:
            out.append((str(row[0]), entry))
    return out


def file_path(connection: Connection, root: int, inode: int) -> str | None:
    """
    @param connection: a connection on an arena db.
    @param root: the arena root's inode.
    @param inode: a file or directory of that arena.
    @return: its path in the arena (C{""} for the root), or C{None} if it
        is unknown.
    """
    segments: list[str] = []
    current = inode
    # A path has at most MAX_PATH_BYTES / 2 segments: a loop in a corrupt
    # table ends.
    for _ in range(MAX_PATH_BYTES // 2 + 1):
        if current == root:
            return "/".join(reversed(segments))
        row = connection.execute(
            "SELECT parent, name FROM directory WHERE inode = ?", (current,)
        ).fetchone()
        if row is None:
            return None
        segments.append(str(row[1]))
        current = int(row[0])
    raise IOFailure(f"inode {inode}: its directory chain loops")


@frozen
class FileVersion:
    """
    A file's default version, what the downloader fetches.

    @ivar arena: its arena.
    @ivar inode: the file's inode.
    @ivar path: its path in the arena.
    @ivar size: the version's size in bytes.
    @ivar mtime_ns: its mtime in ns.
    @ivar hash: its Merkle root, or C{None} if not hashed yet ("no
        version": there is nothing to fetch until it has one).
    @ivar peers: the peers whose row has this version (same hash), sorted.
    """

    arena: ArenaName
    inode: int
    path: str
    size: int
    mtime_ns: int
    hash: bytes | None
    peers: tuple[PeerId, ...]


def file_version(
    connection: Connection, arena: ArenaName, root: int, inode: int
) -> FileVersion | None:
    """
    @param connection: a connection on the arena's db.
    @param root: the arena root's inode.
    @param inode: a file's inode.
    @return: its default version and the peers that have it; C{None} if
        no such file.
    """
    row = connection.execute(
        "SELECT size, mtime_ns, hash FROM file WHERE inode = ? AND peer = ?",
        (inode, DEFAULT),
    ).fetchone()
    if row is None:
        return None
    path = file_path(connection, root, inode)
    if not path:
        return None
    digest = None if row[2] is None else bytes(row[2])
    peers = _holders(connection, inode, digest)
    return FileVersion(arena, inode, path, int(row[0]), int(row[1]), digest, peers)


def _holders(
    connection: Connection, inode: int, digest: bytes | None
) -> tuple[PeerId, ...]:
    """
    @return: the peers whose row of a file has version C{digest}, sorted.
    """
    return tuple(
        PeerId(peer)
        for (peer,) in connection.execute(
            "SELECT peer FROM file WHERE inode = ? AND peer != ? AND hash IS ?"
            " ORDER BY peer",
            (inode, DEFAULT, digest),
        )
    )


def conflicted_files(connection: Connection, root: int) -> list[list[tuple[str, int]]]:
    """
    The files with open conflicts (L{realize.storage.unreal.open_conflicts}).

    @param connection: a connection on an arena db.
    @param root: the arena root's inode.
    @return: for each file, the C{(name, inode)} of each segment of its
        path from the root down to the file itself; sorted by path.
    """
    out = []
    inodes = sorted({c.inode for c in open_conflicts(connection)})
    for inode in inodes:
        chain: list[tuple[str, int]] = []
        current = inode
        for _ in range(MAX_PATH_BYTES // 2 + 1):
            if current == root:
                out.append(list(reversed(chain)))
                break
            row = connection.execute(
                "SELECT parent, name FROM directory WHERE inode = ?", (current,)
            ).fetchone()
            if row is None:
                break
            chain.append((str(row[1]), current))
            current = int(row[0])
    out.sort(key=lambda chain: [name for name, _ in chain])
    return out


def _fork_version(
    connection: Connection, arena: ArenaName, root: int, inode: int, digest: bytes
) -> FileVersion | None:
    path = file_path(connection, root, inode)
    if not path:
        return None
    for conflict in open_conflicts(connection, inode):
        if conflict.hash == digest:
            return FileVersion(
                arena,
                inode,
                path,
                conflict.size,
                conflict.mtime_ns,
                digest,
                conflict.peers,
            )
    return None


def small_files_after(
    connection: Connection,
    arena: ArenaName,
    root: int,
    inode: int,
    max_size: int,
    count: int,
) -> list[FileVersion]:
    """
    The files that follow one in its directory (by name) whose default
    version is small and not in a blob: what a reader going through the
    directory asks next (for the downloader's small-file prefetch).

    @param connection: a connection on the arena's db.
    @param root: the arena root's inode.
    @param inode: a file of that arena.
    @param max_size: largest size wanted, bytes (empty files are left out).
    @param count: most files returned.
    @return: their versions, in name order (with a hash, and the peers
        that have it).
    """
    row = connection.execute(
        "SELECT parent, name FROM directory WHERE inode = ?", (inode,)
    ).fetchone()
    if row is None:
        return []
    parent, name = int(row[0]), str(row[1])
    where = file_path(connection, root, parent)
    if where is None:
        return []
    rows = connection.execute(
        "SELECT d.inode, d.name, f.size, f.mtime_ns, f.hash FROM directory d"
        " JOIN file f ON f.inode = d.inode AND f.peer = ?"
        " WHERE d.parent = ? AND d.name > ? AND d.kind = ?"
        " AND f.hash IS NOT NULL AND f.size > 0 AND f.size <= ?"
        " AND NOT EXISTS (SELECT 1 FROM blob b WHERE b.inode = d.inode"
        " AND b.hash = f.hash AND b.queue != 'deleting')"
        " ORDER BY d.name LIMIT ?",
        (DEFAULT, parent, name, KIND_FILE, max_size, count),
    ).fetchall()
    found = []
    for child, child_name, size, mtime_ns, digest in rows:
        digest = bytes(digest)
        peers = _holders(connection, child, digest)
        path = f"{where}/{child_name}" if where else str(child_name)
        found.append(
            FileVersion(
                arena, int(child), path, int(size), int(mtime_ns), digest, peers
            )
        )
    return found


@frozen
class ArenaFiles:
    """
    Where an arena's Unreal lives.

    @ivar db: its C{workdir/arena.db}.
    @ivar blobs: its C{workdir/blobs}.
    """

    db: str
    blobs: str


#: Read-only connections kept per database file, at most: as many as FUSE
#: threads run at once; more are closed when given back.
MAX_IDLE_CONNECTIONS: Final = 16


@define(eq=False)
class _ReadConnections:
    """
    Read-only connections on sqlite files, lent to one thread at a time.

    A thread borrows a connection for one call and gives it back, so each
    FUSE thread reads through its own connection while it runs, whatever
    its thread state (DESIGN.md section 10 pitfalls: C{threading.local} is
    empty in each mfusepy callback) and however often libfuse makes and
    ends threads (a dict keyed by thread ident would grow with them).
    """

    _idle: dict[str, list[Connection]] = field(factory=dict)
    _lock: threading.Lock = field(factory=threading.Lock)
    _closed: bool = False

    @contextmanager
    def borrow(self, path: str) -> Iterator[Connection | None]:
        """
        @param path: a database file.
        @return: a context giving a connection, or C{None} if the file
            does not exist (yet).
        @raise IOFailure: if it cannot be opened, or a query fails.
        """
        with self._lock:
            if self._closed:
                raise IOFailure("the Unreal view is closed")
            idle = self._idle.setdefault(path, [])
            connection = idle.pop() if idle else None
        if connection is None:
            if not os.path.exists(path):
                yield None
                return
            try:
                connection = sqlite3.connect(
                    f"file:{quote(path)}?mode=ro",
                    uri=True,
                    check_same_thread=False,
                    isolation_level=None,
                )
                connection.execute("PRAGMA query_only = 1")
            except sqlite3.Error as e:
                raise IOFailure(f"{path}: cannot open: {e}") from e
        try:
            yield connection
        except sqlite3.Error as e:
            connection.close()
            raise IOFailure(f"{path}: {e}") from e
        except BaseException:
            connection.close()
            raise
        with self._lock:
            idle = self._idle.setdefault(path, [])
            if self._closed or len(idle) >= MAX_IDLE_CONNECTIONS:
                connection.close()
            else:
                idle.append(connection)

    def close(self) -> None:
        """
        Close every idle connection; those lent are closed when given back.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


@define(eq=False)
class SqliteUnrealView:
    """
    L{realize.interfaces.UnrealView} over the global db and the arena dbs:
    blocking, callable from any thread.

    @ivar global_db: the path of C{realize.db}.
    @ivar arenas: each configured arena's files; an arena root shown by the
        global tree without an entry here is an empty directory.
    """

    global_db: str
    arenas: Mapping[ArenaName, ArenaFiles]
    _connections: _ReadConnections = field(factory=_ReadConnections)
    _ranges: tuple[list[int], list[tuple[int, str]]] = field(factory=lambda: ([], []))
    _roots: dict[ArenaName, int] = field(factory=dict)

    def set_arenas(self, arenas: Mapping[ArenaName, ArenaFiles]) -> None:
        """
        Replace the arenas (after a SIGHUP), atomically for readers.
        """
        self.arenas = dict(arenas)

    def close(self) -> None:
        """
        Close the connections (after unmount).
        """
        self._connections.close()

    def _range_owner(self, inode: int) -> str | None:
        """
        The owner of an inode's range, from a copy of the global db's
        ranges (a range never changes owner; the copy is read again when
        an inode lies beyond it).
        """
        for attempt in range(2):
            ends, ranges = self._ranges
            index = bisect_right(ends, inode)
            if index < len(ends):
                start, owner = ranges[index]
                return owner if start <= inode else None
            if attempt == 0:
                with self._connections.borrow(self.global_db) as connection:
                    if connection is None:
                        return None
                    rows = connection.execute(
                        "SELECT end, start, owner FROM inode_range ORDER BY end"
                    ).fetchall()
                self._ranges = (
                    [int(row[0]) for row in rows],
                    [(int(row[1]), str(row[2])) for row in rows],
                )
        return None

    def _owner(self, inode: int) -> tuple[TreeNode | None, ArenaName | None]:
        """
        @return: the global tree's node of an inode, if it is one, and the
            arena the inode belongs to (for a node, the arena it is the
            root of), if any.
        """
        owner = self._range_owner(inode)
        if owner is None:
            return None, None
        if owner != GLOBAL_TREE:
            return None, ArenaName(owner)
        node = self._global(tree_node, inode)
        return node, None if node is None else node.arena

    def _global(self, f: Callable[..., T], *args: Any) -> T:
        """
        Run a read function on the global db.

        @raise IOFailure: if the global db does not exist.
        """
        with self._connections.borrow(self.global_db) as connection:
            if connection is None:
                raise IOFailure(f"{self.global_db}: no such global db")
            return f(connection, *args)

    def _in_arena(
        self, arena: ArenaName | None, f: Callable[..., T], *args: Any
    ) -> T | None:
        """
        Run a read function on an arena's db.

        @return: its result, or C{None} if the arena is not configured or
            has no db yet.
        """
        files = None if arena is None else self.arenas.get(arena)
        if files is None:
            return None
        with self._connections.borrow(files.db) as connection:
            return None if connection is None else f(connection, *args)

    def query(self, arena: ArenaName, f: Callable[..., T], *args: Any) -> T | None:
        """
        Run a read function on an arena's db (blocking; any thread), e.g.
        one of L{realize.storage.marks}.

        @param f: called as C{f(connection, *args)}.
        @return: its result, or C{None} if the arena is not configured or
            has no db yet.
        @raise IOFailure: if the db cannot be read.
        """
        return self._in_arena(arena, f, *args)

    def _node_entry(self, node: TreeNode) -> Entry:
        if node.arena is None:
            children = len(self._global(tree_children, node.inode))
            return Entry(node.inode, KIND_DIR, 0, node.mtime_ns, None, 2 + children)
        entry = self._in_arena(node.arena, arena_root, node)
        return arena_root(None, node) if entry is None else entry

    def _root(self, arena: ArenaName) -> int | None:
        """
        @return: an arena root's inode (which never changes), or C{None}.
        """
        root = self._roots.get(arena)
        if root is None:
            root = self._global(arena_root_inode, arena)
            if root is not None:
                self._roots[arena] = root
        return root

    def lookup(self, parent: int, name: str) -> Entry | None:
        """
        See L{realize.interfaces.UnrealView.lookup}.
        """
        node, arena = self._owner(parent)
        if node is not None and node.arena is None:
            child = self._global(tree_child, parent, name)
            return None if child is None else self._node_entry(child)
        return self._in_arena(arena, arena_lookup, parent, name)

    def getattr(self, inode: int) -> Entry | None:
        """
        See L{realize.interfaces.UnrealView.getattr}.
        """
        node, arena = self._owner(inode)
        if node is not None:
            return self._node_entry(node)
        return self._in_arena(arena, arena_getattr, inode)

    def readdir(self, inode: int) -> list[tuple[str, Entry]] | None:
        """
        See L{realize.interfaces.UnrealView.readdir}.
        """
        node, arena = self._owner(inode)
        if node is not None and node.arena is None:
            children = self._global(tree_children, inode)
            return [(child.name, self._node_entry(child)) for child in children]
        if node is not None:
            listing = self._in_arena(arena, arena_readdir, inode)
            return [] if listing is None else listing
        return self._in_arena(arena, _readdir_if_dir, inode)

    def locate(self, inode: int) -> tuple[ArenaName, str] | None:
        """
        See L{realize.interfaces.UnrealView.locate}.
        """
        node, arena = self._owner(inode)
        if node is not None:
            return None if node.arena is None else (node.arena, "")
        root = None if arena is None else self._root(arena)
        if arena is None or root is None:
            return None
        path = self._in_arena(arena, file_path, root, inode)
        return None if path is None else (arena, path)

    def arena_of(self, inode: int) -> ArenaName | None:
        """
        The arena an inode belongs to, from the ranges (no path walk, unlike
        L{locate}): for the FUSE thread's opens.

        @return: the arena, or C{None} for the global tree's directories
            and unknown inodes.
        """
        return self._owner(inode)[1]

    def version(self, inode: int) -> FileVersion | None:
        """
        A file's default version and the peers that have it, for the
        downloader (blocking; run it in a thread).

        @return: C{None} if C{inode} is not a file of a configured arena.
        @raise IOFailure: if a db cannot be read.
        """
        node, arena = self._owner(inode)
        root = None if node is not None or arena is None else self._root(arena)
        if arena is None or root is None:
            return None
        return self._in_arena(arena, file_version, arena, root, inode)

    def root_inode_of(self, arena: ArenaName) -> int | None:
        """
        @return: an arena root's inode, or C{None} if it was never seen.
        """
        return self._root(arena)

    def root_arena(self, inode: int) -> ArenaName | None:
        """
        @return: the arena whose root C{inode} is, or C{None} (cheap for
            an arena's own inodes: no query).
        """
        node, _arena = self._owner(inode)
        return None if node is None else node.arena

    def conflicts(self, arena: ArenaName, inode: int) -> list[Conflict]:
        """
        A file's open conflicts (L{realize.storage.unreal.open_conflicts}).

        @return: empty if none, or if the arena has no db.
        """
        found = self._in_arena(arena, open_conflicts, inode)
        return [] if found is None else found

    def conflicted(self, arena: ArenaName) -> list[list[tuple[str, int]]]:
        """
        An arena's files with open conflicts (L{conflicted_files}).
        """
        root = self._root(arena)
        if root is None:
            return []
        found = self._in_arena(arena, conflicted_files, root)
        return [] if found is None else found

    def fork_version(
        self, arena: ArenaName, inode: int, digest: bytes
    ) -> FileVersion | None:
        """
        An open conflict's version of a file and the peers that have it,
        for the downloader.

        @return: C{None} if that version is no open conflict of the file.
        """
        root = self._root(arena)
        if root is None:
            return None
        return self._in_arena(arena, _fork_version, arena, root, inode, digest)

    def small_files_after(
        self, inode: int, max_size: int, count: int
    ) -> list[FileVersion]:
        """
        See L{small_files_after} (blocking; any thread).

        @return: C{[]} if C{inode} is not a file of a configured arena.
        """
        node, arena = self._owner(inode)
        root = None if node is not None or arena is None else self._root(arena)
        if arena is None or root is None:
            return []
        found = self._in_arena(
            arena, small_files_after, arena, root, inode, max_size, count
        )
        return [] if found is None else found

    def read_cached(
        self, arena: ArenaName, inode: int, digest: bytes, start: int, end: int
    ) -> bytes | None:
        """
        Bytes of a version straight from its blob, if they are all there:
        the FUSE thread's fast path (L{realize.storage.blobs.read_cached}).

        @param arena: the file's arena (L{locate}).
        @param digest: the version (L{Entry.hash}).
        @param end: end of the range, exclusive; clipped to the size.
        @return: the bytes, or C{None}: ask the downloader.
        @raise IOFailure: on a read error.
        """
        files = self.arenas.get(arena)
        if files is None:
            return None
        return self._in_arena(
            arena, blobs.read_cached, files.blobs, inode, digest, start, end
        )

    def cached(
        self, arena: ArenaName, inode: int, digest: bytes
    ) -> blobs.CachedState | None:
        """
        How much of a version its blob holds
        (L{realize.storage.blobs.cached_state}).

        @return: C{(bytes present, size, queue)}, or C{None} if it has no
            blob.
        """
        files = self.arenas.get(arena)
        if files is None:
            return None
        return self._in_arena(arena, blobs.cached_state, inode, digest)


def _readdir_if_dir(
    connection: Connection, inode: int
) -> list[tuple[str, Entry]] | None:
    row = connection.execute(
        "SELECT kind FROM directory WHERE inode = ?", (inode,)
    ).fetchone()
    if row is None or row[0] != KIND_DIR:
        return None
    return arena_readdir(connection, inode)


def arena_root_inode(connection: Connection, arena: ArenaName) -> int | None:
    """
    @param connection: a connection on the global db.
    @return: an arena root's inode, or C{None} if the arena was never seen.
    """
    row = connection.execute(
        "SELECT root FROM arena WHERE name = ?", (arena,)
    ).fetchone()
    return None if row is None else int(row[0])


if TYPE_CHECKING:

    def _is_an_unreal_view(view: SqliteUnrealView) -> UnrealView:
        return view
