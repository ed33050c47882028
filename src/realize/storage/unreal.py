"""
The Unreal's cache tables in an arena's C{workdir/arena.db} and the rules
that apply peers' notifications to them (DESIGN.md section 10).

Tables (created by L{create_unreal_tables}; docs/unreal-schema.md):

    - C{directory(parent, name) -> (inode, kind)}: every file and
      directory of the arena below its root (whose inode is in the global
      db, L{realize.storage.globaldb}).
    - C{dir_mtime(inode) -> mtime_ns}: each directory's own mtime (the
      arena root's included), set when an entry is added or removed.
    - C{file(inode, peer) -> (size, mtime_ns, hash)}: one row per peer that
      has the file, plus the peer-less default row (C{peer = ""},
      L{DEFAULT}): the version shown.
    - C{fork(inode, hash) -> (peer, old_hash, mtime_ns)}: versions made by
      a Replace of a version that was not the default (conflicts, see
      L{_Rules.replace} for when they go).
    - C{superseded(inode, hash) -> time_ns}: versions that were the default
      and were replaced along the chain (the last L{SUPERSEDED_KEPT} of a
      file): a late Replace to one of them is no fork (schema upgrade 5,
      L{create_superseded_table}).
    - C{peer_progress(peer) -> (uuid, position, catchup)}: where each
      peer's history was applied up to; C{catchup} is 1 between
      CatchupStart and CatchupComplete.
    - C{pending_catchup(peer, inode)}: the rows marked by CatchupStart.
    - C{inode_alloc(id = 1) -> (start, end, next)}: the arena's current
      inode range and its next free inode.
    - C{blob}: see L{realize.storage.blobs}.

Every rule is a C{_txn_*} function on a cursor, run in one transaction by
the caller (the adbapi pool's C{runInteraction}, or a bare connection in
tests).  A notification is validated (L{check_notification}) before any
write, so a refused one leaves the db unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Final

from attrs import define, field, frozen

from realize.errors import BadRequest
from realize.model import (
    ADD,
    CATCHUP,
    CATCHUP_COMPLETE,
    CATCHUP_START,
    CONNECTED,
    DROP,
    KIND_DIR,
    KIND_FILE,
    REMOVE,
    REPLACE,
    RESERVED_NAME,
    ArenaName,
    Notification,
    PeerId,
    check_notification,
)
from realize.storage.blobs import _txn_mark_outdated, create_blob_tables
from realize.storage.globaldb import InodeRange

__all__ = [
    "APPLIED",
    "CONFLICT",
    "DEFAULT",
    "FORK",
    "IGNORED",
    "RESERVED",
    "RESERVED_NAME",
    "SUPERSEDED_KEPT",
    "ArenaTree",
    "BatchResult",
    "Conflict",
    "count_conflicts",
    "create_superseded_table",
    "create_unreal_tables",
    "open_conflicts",
]

Cursor = sqlite3.Cursor

#: The C{peer} of a file's default row (not a valid peer id).
DEFAULT: Final = ""

#: Outcomes of a notification (L{BatchResult.outcomes}).
#: It changed the tables.
APPLIED: Final = "applied"
#: It changed nothing: a repeat, older than what is known, or about a
#: version or file that the peer's row does not have.
IGNORED: Final = "ignored"
#: Its path needs a directory where a file is, or a file where a directory
#: is (two peers disagree); nothing changed.
CONFLICT: Final = "conflict"
#: A Replace of a version that is not the default: the peer's row took the
#: new version, the default stayed, the fork was recorded.
FORK: Final = "fork"
#: Its path lies under L{RESERVED_NAME}: nothing changed (a warning is
#: logged by the caller).
RESERVED: Final = "reserved"

#: Superseded versions kept per file (table C{superseded}).
SUPERSEDED_KEPT: Final = 32

#: The open forks: those whose version a peer still has.
_OPEN_FORK: Final = (
    "EXISTS (SELECT 1 FROM file f WHERE f.inode = fork.inode"
    " AND f.peer != '' AND f.hash IS fork.hash)"
)


def create_unreal_tables(cursor: Cursor) -> None:
    """
    Create the Unreal's tables and the blob table (schema upgrade 2 of
    C{arena.db}).

    @param cursor: a cursor on the arena db, in a transaction.
    """
    cursor.execute(
        "CREATE TABLE directory ("
        " parent INTEGER NOT NULL,"
        " name TEXT NOT NULL,"
        " inode INTEGER NOT NULL UNIQUE,"
        " kind TEXT NOT NULL CHECK (kind IN ('file', 'dir')),"
        " PRIMARY KEY (parent, name)) WITHOUT ROWID"
    )
    cursor.execute(
        "CREATE TABLE dir_mtime (inode INTEGER PRIMARY KEY, mtime_ns INTEGER NOT NULL)"
    )
    cursor.execute(
        "CREATE TABLE file ("
        " inode INTEGER NOT NULL,"
        " peer TEXT NOT NULL,"
        " size INTEGER NOT NULL,"
        " mtime_ns INTEGER NOT NULL,"
        " hash BLOB,"
        " PRIMARY KEY (inode, peer)) WITHOUT ROWID"
    )
    cursor.execute("CREATE INDEX file_peer ON file (peer, inode)")
    cursor.execute(
        "CREATE TABLE fork ("
        " inode INTEGER NOT NULL,"
        " hash BLOB NOT NULL,"
        " peer TEXT NOT NULL,"
        " old_hash BLOB,"
        " mtime_ns INTEGER NOT NULL,"
        " PRIMARY KEY (inode, hash)) WITHOUT ROWID"
    )
    cursor.execute(
        "CREATE TABLE peer_progress ("
        " peer TEXT PRIMARY KEY,"
        " uuid TEXT,"
        " position INTEGER NOT NULL,"
        " catchup INTEGER NOT NULL DEFAULT 0)"
    )
    cursor.execute(
        "CREATE TABLE pending_catchup ("
        " peer TEXT NOT NULL,"
        " inode INTEGER NOT NULL,"
        " PRIMARY KEY (peer, inode)) WITHOUT ROWID"
    )
    cursor.execute(
        "CREATE TABLE inode_alloc ("
        " id INTEGER PRIMARY KEY CHECK (id = 1),"
        " start INTEGER NOT NULL,"
        " end INTEGER NOT NULL,"
        " next INTEGER NOT NULL)"
    )
    create_blob_tables(cursor)


def create_superseded_table(cursor: Cursor) -> None:
    """
    Create the table of superseded versions (schema upgrade 5 of
    C{arena.db}): the versions each file's default moved away from along
    the chain, so that a peer following the chain late (a Replace to a
    version already replaced) is not taken for a fork.

    @param cursor: a cursor on the arena db, in a transaction.
    """
    cursor.execute(
        "CREATE TABLE superseded ("
        " inode INTEGER NOT NULL,"
        " hash BLOB NOT NULL,"
        " time_ns INTEGER NOT NULL,"
        " PRIMARY KEY (inode, hash)) WITHOUT ROWID"
    )


@frozen
class ArenaTree:
    """
    What the rules need to know of an arena beyond its db.

    @ivar arena: the arena's name; notifications for another arena are
        refused.
    @ivar root: the arena root's inode (from the global db).
    @ivar alloc_range: blocking; gives the arena a new inode range when its
        current one is exhausted, called with the end of its last known
        range (0 if none): L{realize.storage.globaldb.GlobalDb.alloc_range}
        bound to the arena.  Called inside the arena's transaction; the
        global db commits first (#inoderange).
    @ivar now_ns: the current time in ns, for directory mtimes.
    """

    arena: ArenaName
    root: int
    alloc_range: Callable[[int], InodeRange]
    now_ns: Callable[[], int]


@frozen
class BatchResult:
    """
    What a batch of notifications did.

    @ivar outcomes: per notification, L{APPLIED}, L{IGNORED}, L{CONFLICT},
        L{FORK} or L{RESERVED}.
    @ivar inodes: inodes whose attributes changed (a file whose default
        version changed, a directory whose listing or mtime changed): the
        FUSE layer invalidates their cached attributes.
    @ivar entries: C{(parent inode, name)} of the names added, removed or
        whose entry changed: the FUSE layer invalidates these entries.
    @ivar conflicts: the arena's open conflicts after the batch (forks
        that a peer still has, L{open_conflicts}).
    @ivar forked: files whose conflicts changed (a fork recorded or gone).
    """

    outcomes: tuple[str, ...]
    inodes: frozenset[int]
    entries: frozenset[tuple[int, str]]
    conflicts: int = 0
    forked: frozenset[int] = frozenset()


@frozen
class _Row:
    size: int
    mtime_ns: int
    hash: bytes | None


def _txn_alloc_inode(cursor: Cursor, alloc_range: Callable[[int], InodeRange]) -> int:
    """
    Allocate one inode in the arena's current range, asking for a new range
    (through C{alloc_range}) when it is exhausted.

    @param alloc_range: see L{ArenaTree.alloc_range}.
    @return: a new inode number, never given before by this db.
    """
    row = cursor.execute(
        "SELECT start, end, next FROM inode_alloc WHERE id = 1"
    ).fetchone()
    current = _usable_range(None if row is None else list(row), alloc_range)
    _store_range(cursor, [current[0], current[1], current[2] + 1])
    return current[2]


def _usable_range(
    current: list[int] | None, alloc_range: Callable[[int], InodeRange]
) -> list[int]:
    """
    @param current: C{[start, end, next]} of the arena's range, or C{None}.
    @return: C{current} if it has a free inode, else a new range from
        C{alloc_range}, as C{[start, end, next]}.
    @raise BadRequest: if the new range does not follow the current one.
    """
    if current is not None and current[2] < current[1]:
        return current
    given = alloc_range(0 if current is None else current[1])
    if current is not None and given.start < current[1]:
        raise BadRequest(
            f"inode range [{given.start}, {given.end}) does not follow "
            f"[{current[0]}, {current[1]})"
        )
    return [given.start, given.end, given.start]


def _store_range(cursor: Cursor, current: list[int]) -> None:
    cursor.execute(
        "INSERT INTO inode_alloc (id, start, end, next) VALUES (1, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET"
        " start = excluded.start, end = excluded.end, next = excluded.next",
        current,
    )


def _check_peer(peer: str) -> PeerId:
    if not peer or not peer.isprintable() or len(peer) > 64:
        raise BadRequest(f"peer id {peer!r} is malformed")
    return PeerId(peer)


def _validate(tree: ArenaTree, notification: Notification) -> None:
    check_notification(notification)
    if notification.arena != tree.arena:
        raise BadRequest(
            f"notification for arena {notification.arena!r} applied to arena "
            f"{tree.arena!r}"
        )


@define
class _Rules:
    """
    The notification rules for one peer, within one transaction.

    The entries of the C{directory} table looked up are remembered for the
    batch (a batch names the same directories again and again), kept
    right by the
    rules' own inserts and deletes, the only writers of the table during
    the transaction.

    What only the end of a batch needs is written once, at L{flush}
    (the caller's last step, in the same transaction; issue 15: a move's
    local feed applied ~15 statements per new file): the inode range's
    next free inode (allocated here, from the range read once), the
    directories' mtimes (the last one set wins, as when each was written
    at once) and the peer's progress (the position of the last history
    entry of a run of them: each would overwrite the one before).  No rule
    reads them back within the batch.
    """

    cursor: Cursor
    tree: ArenaTree
    peer: PeerId
    me: PeerId | None = None
    inodes: set[int] = field(factory=set)
    entries: set[tuple[int, str]] = field(factory=set)
    _children: dict[tuple[int, str], tuple[int, str] | None] = field(factory=dict)
    forked: set[int] = field(factory=set)
    #: C{[start, end, next]} of the inode range once read (C{None} inside
    #: when the db has none yet); whether C{next} moved since.
    _alloc: list[list[int] | None] = field(factory=list)
    _alloc_moved: bool = False
    #: Directory mtimes to write, by inode.
    _mtimes: dict[int, int] = field(factory=dict)
    #: The position of the last history entry applied, not written yet.
    _position: int | None = None

    # Reading.

    def _child(self, parent: int, name: str) -> tuple[int, str] | None:
        key = (parent, name)
        try:
            return self._children[key]
        except KeyError:
            pass
        row = self.cursor.execute(
            "SELECT inode, kind FROM directory WHERE parent = ? AND name = ?",
            key,
        ).fetchone()
        found = None if row is None else (int(row[0]), str(row[1]))
        self._children[key] = found
        return found

    def _row(self, inode: int, peer: str) -> _Row | None:
        row = self.cursor.execute(
            "SELECT size, mtime_ns, hash FROM file WHERE inode = ? AND peer = ?",
            (inode, peer),
        ).fetchone()
        return None if row is None else _Row(row[0], row[1], row[2])

    def _resolve(self, path: str, create: bool) -> tuple[int, str, int | None] | None:
        """
        Find a file's directory, creating the directories it needs.

        A conflict is found before anything is created: directories are
        created only below the first missing one, where nothing can cross
        a file or name a directory.

        @param path: a path already checked (L{_validate}).
        @param create: create missing directories.
        @return: C{(parent inode, name, file inode or None)}; C{None} if
            a directory is missing (and C{create} is false) or if the path
            crosses a file or names a directory (a conflict: nothing was
            created).
        """
        segments = path.split("/")
        parent = self.tree.root
        for segment in segments[:-1]:
            child = self._child(parent, segment)
            if child is None:
                if not create:
                    return None
                parent = self._create_entry(parent, segment, KIND_DIR)
            elif child[1] != KIND_DIR:
                return None
            else:
                parent = child[0]
        name = segments[-1]
        child = self._child(parent, name)
        if child is None:
            return parent, name, None
        if child[1] != KIND_FILE:
            return None
        return parent, name, child[0]

    def inode_of(self, path: str) -> int | None:
        """
        @param path: a path already checked.
        @return: the inode of the file at C{path} now, or C{None} (from
            the entries this batch looked up, else from the table).
        """
        resolved = self._resolve(path, create=False)
        return None if resolved is None else resolved[2]

    # Writing.

    def _touch_dir(self, inode: int) -> None:
        self._mtimes[inode] = self.tree.now_ns()
        self.inodes.add(inode)

    def _alloc_inode(self) -> int:
        """
        L{_txn_alloc_inode}, with the range read once per batch and its
        next free inode written at L{flush}.
        """
        if not self._alloc:
            row = self.cursor.execute(
                "SELECT start, end, next FROM inode_alloc WHERE id = 1"
            ).fetchone()
            self._alloc.append(None if row is None else [int(x) for x in row])
        current = self._alloc[0] = _usable_range(self._alloc[0], self.tree.alloc_range)
        inode = current[2]
        current[2] += 1
        self._alloc_moved = True
        return inode

    def _store_position(self) -> None:
        if self._position is not None:
            self.cursor.execute(
                "INSERT INTO peer_progress (peer, uuid, position, catchup)"
                " VALUES (?, NULL, ?, 0) ON CONFLICT (peer) DO UPDATE SET"
                " position = excluded.position WHERE catchup = 0",
                (self.peer, self._position),
            )
            self._position = None

    def flush(self) -> None:
        """
        Write what the batch left for its end (see the class docstring).
        Call it once the batch is applied, before anything else in the
        transaction reads these tables.
        """
        self._store_position()
        if self._mtimes:
            self.cursor.executemany(
                "INSERT INTO dir_mtime (inode, mtime_ns) VALUES (?, ?)"
                " ON CONFLICT (inode) DO UPDATE SET mtime_ns = excluded.mtime_ns",
                list(self._mtimes.items()),
            )
            self._mtimes.clear()
        if self._alloc_moved:
            current = self._alloc[0]
            assert current is not None
            _store_range(self.cursor, current)
            self._alloc_moved = False

    def _create_entry(self, parent: int, name: str, kind: str) -> int:
        inode = self._alloc_inode()
        self.cursor.execute(
            "INSERT INTO directory (parent, name, inode, kind) VALUES (?, ?, ?, ?)",
            (parent, name, inode, kind),
        )
        self._children[(parent, name)] = (inode, kind)
        if kind == KIND_DIR:
            self._touch_dir(inode)
        self._touch_dir(parent)
        self.entries.add((parent, name))
        return inode

    def _set_row(self, inode: int, peer: str, value: _Row | Notification) -> None:
        assert value.size is not None and value.mtime_ns is not None
        self.cursor.execute(
            "INSERT INTO file (inode, peer, size, mtime_ns, hash)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (inode, peer) DO UPDATE SET"
            " size = excluded.size, mtime_ns = excluded.mtime_ns,"
            " hash = excluded.hash",
            (inode, peer, value.size, value.mtime_ns, value.hash),
        )

    def _set_default(self, inode: int, value: _Row | Notification) -> None:
        """
        Make a version the default one; a blob of another version is
        marked for deletion.
        """
        assert value.size is not None and value.mtime_ns is not None
        old = self._row(inode, DEFAULT)
        self._set_row(inode, DEFAULT, value)
        if old != _Row(value.size, value.mtime_ns, value.hash):
            self.inodes.add(inode)
        if old is not None and old.hash != value.hash:
            _txn_mark_outdated(self.cursor, inode, value.hash)
        self._delete_forks("hash IS ?", inode, value.hash)
        self.cursor.execute(
            "DELETE FROM superseded WHERE inode = ? AND hash IS ?", (inode, value.hash)
        )

    # Conflicts.

    def _delete_forks(self, where: str, inode: int, *args: object) -> None:
        if self.cursor.execute(
            f"DELETE FROM fork WHERE inode = ? AND {where}", (inode, *args)
        ).rowcount:
            self.forked.add(inode)

    def _supersede(self, inode: int, digest: bytes | None) -> None:
        """
        Record that the default moved away from C{digest} along the chain;
        only the newest L{SUPERSEDED_KEPT} of a file are kept.
        """
        if digest is None:
            return
        self.cursor.execute(
            "INSERT INTO superseded (inode, hash, time_ns) VALUES (?, ?, ?)"
            " ON CONFLICT (inode, hash) DO UPDATE SET time_ns = excluded.time_ns",
            (inode, digest, self.tree.now_ns()),
        )
        self.cursor.execute(
            "DELETE FROM superseded WHERE inode = ? AND hash NOT IN"
            " (SELECT hash FROM superseded WHERE inode = ?"
            " ORDER BY time_ns DESC, hash LIMIT ?)",
            (inode, inode, SUPERSEDED_KEPT),
        )

    def _was_superseded(self, inode: int, digest: bytes | None) -> bool:
        return (
            self.cursor.execute(
                "SELECT 1 FROM superseded WHERE inode = ? AND hash IS ?",
                (inode, digest),
            ).fetchone()
            is not None
        )

    def _is_open_fork(self, inode: int, digest: bytes | None) -> bool:
        return (
            self.cursor.execute(
                f"SELECT 1 FROM fork WHERE inode = ? AND hash IS ? AND {_OPEN_FORK}",
                (inode, digest),
            ).fetchone()
            is not None
        )

    def _drop_dead_forks(self, inode: int) -> None:
        """
        Forget the forks no peer has any more (their version cannot be
        read: the peer that made it replaced or removed it).
        """
        self._delete_forks(
            "NOT EXISTS (SELECT 1 FROM file f WHERE f.inode = fork.inode"
            " AND f.peer != '' AND f.hash IS fork.hash)",
            inode,
        )

    def _others_have(self, inode: int, digest: bytes | None) -> bool:
        """
        Whether a peer other than this one has a version.
        """
        return (
            self.cursor.execute(
                "SELECT 1 FROM file WHERE inode = ? AND peer NOT IN (?, ?)"
                " AND hash IS ? LIMIT 1",
                (inode, DEFAULT, self.peer, digest),
            ).fetchone()
            is not None
        )

    def _unmark(self, inode: int) -> None:
        self.cursor.execute(
            "DELETE FROM pending_catchup WHERE peer = ? AND inode = ?",
            (self.peer, inode),
        )

    def _create_file(self, parent: int, name: str, value: Notification) -> str:
        """
        A new file: the peer's row and the default, in one statement (a
        new inode has no rows, forks, superseded versions or blobs for
        L{_set_default} to look at).
        """
        inode = self._create_entry(parent, name, KIND_FILE)
        self.cursor.execute(
            "INSERT INTO file (inode, peer, size, mtime_ns, hash)"
            " VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)"
            " ON CONFLICT (inode, peer) DO UPDATE SET"
            " size = excluded.size, mtime_ns = excluded.mtime_ns,"
            " hash = excluded.hash",
            (
                *(inode, self.peer, value.size, value.mtime_ns, value.hash),
                *(inode, DEFAULT, value.size, value.mtime_ns, value.hash),
            ),
        )
        self.inodes.add(inode)
        return APPLIED

    def _remove_file(self, inode: int) -> None:
        """
        Remove a file that no peer has: its rows, its blobs (marked), its
        name, and the directories left empty above it.
        """
        where = self.cursor.execute(
            "SELECT parent, name FROM directory WHERE inode = ?", (inode,)
        ).fetchone()
        self._delete_forks("1", inode)
        for table in ("file", "pending_catchup", "superseded"):
            self.cursor.execute(f"DELETE FROM {table} WHERE inode = ?", (inode,))
        _txn_mark_outdated(self.cursor, inode, None)
        self.inodes.add(inode)
        if where is None:
            return
        self._remove_entry(inode, where[0], where[1])
        parent = int(where[0])
        while parent != self.tree.root:
            if self.cursor.execute(
                "SELECT 1 FROM directory WHERE parent = ? LIMIT 1", (parent,)
            ).fetchone():
                break
            above = self.cursor.execute(
                "SELECT parent, name FROM directory WHERE inode = ?", (parent,)
            ).fetchone()
            if above is None:
                break
            self._mtimes.pop(parent, None)
            self.cursor.execute("DELETE FROM dir_mtime WHERE inode = ?", (parent,))
            self._remove_entry(parent, above[0], above[1])
            parent = int(above[0])

    def _remove_entry(self, inode: int, parent: int, name: str) -> None:
        self.cursor.execute("DELETE FROM directory WHERE inode = ?", (inode,))
        self._children[(int(parent), str(name))] = None
        self.entries.add((parent, name))
        self.inodes.add(inode)
        self._touch_dir(parent)

    def _after_row_removed(self, inode: int) -> None:
        """
        A peer's row went (Remove, CatchupComplete): the file goes if no
        peer has it; else if no peer has the default version, the newest
        remaining version (largest mtime) becomes the default.
        """
        rows = self.cursor.execute(
            "SELECT size, mtime_ns, hash FROM file WHERE inode = ? AND peer != ?"
            " ORDER BY mtime_ns DESC, peer",
            (inode, DEFAULT),
        ).fetchall()
        if not rows:
            self._remove_file(inode)
            return
        remaining = [_Row(*row) for row in rows]
        default = self._row(inode, DEFAULT)
        if default is None or all(r.hash != default.hash for r in remaining):
            self._set_default(inode, remaining[0])
        self._drop_dead_forks(inode)

    # The rules.

    def add(self, value: Notification) -> str:
        """
        Add: create directories and the inode as needed, write the peer's
        row, and the default row if there is none.  A repeated Add whose
        mtime is not newer than the peer's row is ignored.  If the peer's
        previous version was the default and no other peer has it, the
        default follows (the peer replaced the only copy).
        """
        assert value.path is not None and value.mtime_ns is not None
        resolved = self._resolve(value.path, create=True)
        if resolved is None:
            return CONFLICT
        parent, name, inode = resolved
        if inode is None:
            return self._create_file(parent, name, value)
        row = self._row(inode, self.peer)
        self._unmark(inode)
        if row is not None and value.mtime_ns <= row.mtime_ns:
            return IGNORED
        self._set_row(inode, self.peer, value)
        default = self._row(inode, DEFAULT)
        if default is None or (
            row is not None
            and default.hash == row.hash
            and not self._others_have(inode, default.hash)
        ):
            if default is not None and default.hash != value.hash:
                self._supersede(inode, default.hash)
            self._set_default(inode, value)
        self._drop_dead_forks(inode)
        return APPLIED

    def replace(self, value: Notification) -> str:
        """
        Replace(old hash): the peer's row takes the new version; the default
        follows if its hash is the old hash (the chain); if the default is
        a third version, it stays and the fork is recorded, unless the new
        version is one the default already moved past (a peer following
        the chain late: table C{superseded}).  A file not known yet is
        added.

        Conflicts go (docs/real.md, Conflicts): a Replace along the chain,
        or one from this peer itself (C{me}) of its own version listed as
        a conflict, makes its version the default and settles every fork
        of the file whose mtime is not newer than its own (the writer saw
        them listed beside the version it replaced);
        a fork goes as soon as no peer has its version (its peer replaced
        or removed it); a fork that becomes the default is no conflict.
        """
        assert value.path is not None and value.mtime_ns is not None
        resolved = self._resolve(value.path, create=True)
        if resolved is None:
            return CONFLICT
        parent, name, inode = resolved
        if inode is None:
            return self._create_file(parent, name, value)
        row = self._row(inode, self.peer)
        self._unmark(inode)
        if (
            row is not None
            and row.hash == value.hash
            and value.mtime_ns <= row.mtime_ns
        ):
            return IGNORED
        forked_before = self._is_open_fork(inode, value.old_hash)
        self._set_row(inode, self.peer, value)
        default = self._row(inode, DEFAULT)
        # This peer's own edit of its version listed as a conflict: the
        # user wrote over it with the default shown beside it.
        mine = self.me is not None and self.peer == self.me and forked_before
        if default is None or default.hash == value.old_hash or mine:
            if default is not None and default.hash != value.hash:
                self._supersede(inode, default.hash)
            self._set_default(inode, value)
            # Resolving: the writer replaced the version shown, with the
            # conflicts listed beside it; those no newer than its write
            # (by mtime) are settled.  A newer one it cannot have seen.
            self._delete_forks("mtime_ns <= ?", inode, value.mtime_ns)
            self._drop_dead_forks(inode)
            return APPLIED
        if default.hash == value.hash or self._was_superseded(inode, value.hash):
            # Following the chain (late): no conflict.
            self._drop_dead_forks(inode)
            return APPLIED
        if self.cursor.execute(
            "INSERT OR IGNORE INTO fork (inode, hash, peer, old_hash, mtime_ns)"
            " VALUES (?, ?, ?, ?, ?)",
            (inode, value.hash, self.peer, value.old_hash, value.mtime_ns),
        ).rowcount:
            self.forked.add(inode)
        self._drop_dead_forks(inode)
        return FORK

    def remove(self, value: Notification) -> str:
        """
        Remove(old hash, mtime): the peer's row goes if its hash is the old
        hash and its mtime is not newer than the Remove's; then as
        L{_after_row_removed}.
        """
        assert value.path is not None and value.mtime_ns is not None
        resolved = self._resolve(value.path, create=False)
        if resolved is None or resolved[2] is None:
            return IGNORED
        inode = resolved[2]
        row = self._row(inode, self.peer)
        if row is None or row.hash != value.old_hash or row.mtime_ns > value.mtime_ns:
            return IGNORED
        self.cursor.execute(
            "DELETE FROM file WHERE inode = ? AND peer = ?", (inode, self.peer)
        )
        self._unmark(inode)
        self._after_row_removed(inode)
        return APPLIED

    def drop(self, value: Notification) -> str:
        """
        Drop(old hash): the peer's row goes if it has that version; nothing
        else changes (another peer keeps a copy).
        """
        assert value.path is not None
        resolved = self._resolve(value.path, create=False)
        if resolved is None or resolved[2] is None:
            return IGNORED
        inode = resolved[2]
        row = self._row(inode, self.peer)
        if row is None or row.hash != value.old_hash:
            return IGNORED
        self.cursor.execute(
            "DELETE FROM file WHERE inode = ? AND peer = ?", (inode, self.peer)
        )
        self._unmark(inode)
        self._drop_dead_forks(inode)
        return APPLIED

    def connected(self, value: Notification) -> str:
        """
        Connected(uuid): a subscription begins.  A new store uuid restarts
        the progress at 0; an unfinished catch-up is abandoned.
        """
        row = self.cursor.execute(
            "SELECT uuid FROM peer_progress WHERE peer = ?", (self.peer,)
        ).fetchone()
        if row is None or row[0] != value.uuid:
            self.cursor.execute(
                "INSERT INTO peer_progress (peer, uuid, position, catchup)"
                " VALUES (?, ?, 0, 0) ON CONFLICT (peer) DO UPDATE SET"
                " uuid = excluded.uuid, position = 0, catchup = 0",
                (self.peer, value.uuid),
            )
        else:
            self.cursor.execute(
                "UPDATE peer_progress SET catchup = 0 WHERE peer = ?", (self.peer,)
            )
        self.cursor.execute("DELETE FROM pending_catchup WHERE peer = ?", (self.peer,))
        return APPLIED

    def catchup_start(self, value: Notification) -> str:
        """
        CatchupStart: mark every row of the peer.
        """
        self.cursor.execute("DELETE FROM pending_catchup WHERE peer = ?", (self.peer,))
        self.cursor.execute(
            "INSERT INTO pending_catchup (peer, inode)"
            " SELECT peer, inode FROM file WHERE peer = ?",
            (self.peer,),
        )
        self.cursor.execute(
            "INSERT INTO peer_progress (peer, uuid, position, catchup)"
            " VALUES (?, NULL, 0, 1)"
            " ON CONFLICT (peer) DO UPDATE SET catchup = 1",
            (self.peer,),
        )
        return APPLIED

    def catchup(self, value: Notification) -> str:
        """
        Catchup: write the peer's row and unmark it.  A row with a newer
        mtime than the listing's (a notification applied before the
        catch-up) is kept.  If the peer's previous version was the default,
        the default follows (as a Replace of it would).
        """
        assert value.path is not None and value.mtime_ns is not None
        resolved = self._resolve(value.path, create=True)
        if resolved is None:
            return CONFLICT
        parent, name, inode = resolved
        if inode is None:
            return self._create_file(parent, name, value)
        row = self._row(inode, self.peer)
        self._unmark(inode)
        assert value.size is not None
        if row is not None and (
            value.mtime_ns < row.mtime_ns
            or row == _Row(value.size, value.mtime_ns, value.hash)
        ):
            return IGNORED
        self._set_row(inode, self.peer, value)
        default = self._row(inode, DEFAULT)
        if default is None or (
            row is not None and default.hash == row.hash != value.hash
        ):
            if default is not None:
                self._supersede(inode, default.hash)
            self._set_default(inode, value)
        self._drop_dead_forks(inode)
        return APPLIED

    def catchup_complete(self, value: Notification) -> str:
        """
        CatchupComplete(position): the peer's rows still marked go, as a
        Remove would take them; then the peer's progress is stored.
        """
        marked = self.cursor.execute(
            "SELECT inode FROM pending_catchup WHERE peer = ?", (self.peer,)
        ).fetchall()
        for (inode,) in marked:
            self.cursor.execute(
                "DELETE FROM file WHERE inode = ? AND peer = ?", (inode, self.peer)
            )
            self._after_row_removed(inode)
        self.cursor.execute("DELETE FROM pending_catchup WHERE peer = ?", (self.peer,))
        self.cursor.execute(
            "INSERT INTO peer_progress (peer, uuid, position, catchup)"
            " VALUES (?, NULL, ?, 0) ON CONFLICT (peer) DO UPDATE SET"
            " position = excluded.position, catchup = 0",
            (self.peer, value.position),
        )
        return APPLIED

    def apply(self, value: Notification) -> str:
        """
        Apply one validated notification; store the peer's progress after a
        history entry (not during a catch-up: only CatchupComplete stores
        it then).  A path under L{RESERVED_NAME} changes nothing
        (L{RESERVED}).
        """
        history = value.kind in _HISTORY_KINDS
        if not history:
            # Connected and the catch-up's rules write the progress.
            self._store_position()
        if value.path is not None and value.path.split("/")[0] == RESERVED_NAME:
            outcome = RESERVED
        else:
            outcome = _RULES[value.kind](self, value)
        if history:
            self._position = value.position
        return outcome


#: The kinds of history entries (each stores the peer's progress).
_HISTORY_KINDS: Final = frozenset((ADD, REPLACE, REMOVE, DROP))

_RULES: dict[str, Callable[[_Rules, Notification], str]] = {
    ADD: _Rules.add,
    REPLACE: _Rules.replace,
    REMOVE: _Rules.remove,
    DROP: _Rules.drop,
    CONNECTED: _Rules.connected,
    CATCHUP_START: _Rules.catchup_start,
    CATCHUP: _Rules.catchup,
    CATCHUP_COMPLETE: _Rules.catchup_complete,
}


def _txn_apply_batch(
    cursor: Cursor,
    tree: ArenaTree,
    peer: str,
    notifications: Sequence[Notification],
    me: PeerId | None = None,
) -> BatchResult:
    """
    Apply notifications from one peer, in order, in the caller's
    transaction; the peer's progress is stored as they go (see
    L{peer_progress}), so it commits with them.

    Every notification is validated first: if one is refused, nothing is
    written (the caller drops the subscription and logs it).

    @param tree: the arena.
    @param peer: the peer that sent them.
    @param notifications: in the order received.
    @param me: this peer's id (its own history is fed as C{me}), or
        C{None}.
    @return: what each did, and what the FUSE layer must invalidate.
    @raise BadRequest: a notification or the peer id is malformed (bad
        size, mtime, position, hash or uuid, missing field, another arena).
    @raise InvalidPath: a notification's path is malformed.
    """
    return _apply_rules(cursor, tree, peer, notifications, me)[0]


def _apply_rules(
    cursor: Cursor,
    tree: ArenaTree,
    peer: str,
    notifications: Sequence[Notification],
    me: PeerId | None = None,
) -> tuple[BatchResult, _Rules]:
    """
    L{_txn_apply_batch}, also returning the rules it applied (whose
    L{_Rules.inode_of} finds the batch's files without asking the db
    again).
    """
    checked = _check_peer(peer)
    for notification in notifications:
        _validate(tree, notification)
    rules = _Rules(cursor, tree, checked, me)
    outcomes = tuple(rules.apply(n) for n in notifications)
    rules.flush()
    result = BatchResult(
        outcomes,
        frozenset(rules.inodes),
        frozenset(rules.entries),
        count_conflicts(cursor),
        frozenset(rules.forked),
    )
    return result, rules


def _txn_apply(
    cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> BatchResult:
    """
    Apply one notification (L{_txn_apply_batch} of one).
    """
    return _txn_apply_batch(cursor, tree, peer, [notification])


def _txn_rule(
    kind: str, cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> str:
    if notification.kind != kind:
        raise BadRequest(f"a {notification.kind} notification is not {kind}")
    return _txn_apply(cursor, tree, peer, notification).outcomes[0]


def _txn_add(
    cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> str:
    """
    Apply one Add from C{peer} (L{_Rules.add}).

    @return: its outcome.
    @raise BadRequest: as L{_txn_apply_batch}, or for another kind.
    @raise InvalidPath: as L{_txn_apply_batch}.
    """
    return _txn_rule(ADD, cursor, tree, peer, notification)


def _txn_replace(
    cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> str:
    """
    Apply one Replace from C{peer} (L{_Rules.replace}); errors as L{_txn_add}.
    """
    return _txn_rule(REPLACE, cursor, tree, peer, notification)


def _txn_remove(
    cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> str:
    """
    Apply one Remove from C{peer} (L{_Rules.remove}); errors as L{_txn_add}.
    """
    return _txn_rule(REMOVE, cursor, tree, peer, notification)


def _txn_drop(
    cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> str:
    """
    Apply one Drop from C{peer} (L{_Rules.drop}); errors as L{_txn_add}.
    """
    return _txn_rule(DROP, cursor, tree, peer, notification)


def _txn_connected(
    cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> str:
    """
    Apply one Connected from C{peer} (L{_Rules.connected}); errors as
    L{_txn_add}.
    """
    return _txn_rule(CONNECTED, cursor, tree, peer, notification)


def _txn_catchup_start(
    cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> str:
    """
    Apply one CatchupStart from C{peer} (L{_Rules.catchup_start}); errors
    as L{_txn_add}.
    """
    return _txn_rule(CATCHUP_START, cursor, tree, peer, notification)


def _txn_catchup(
    cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> str:
    """
    Apply one Catchup from C{peer} (L{_Rules.catchup}); errors as
    L{_txn_add}.
    """
    return _txn_rule(CATCHUP, cursor, tree, peer, notification)


def _txn_catchup_complete(
    cursor: Cursor, tree: ArenaTree, peer: str, notification: Notification
) -> str:
    """
    Apply one CatchupComplete from C{peer} (L{_Rules.catchup_complete});
    errors as L{_txn_add}.
    """
    return _txn_rule(CATCHUP_COMPLETE, cursor, tree, peer, notification)


def peer_progress(
    cursor: Cursor | sqlite3.Connection, peer: str
) -> tuple[str | None, int] | None:
    """
    Where a peer's history was applied up to, to subscribe from.

    @return: C{(uuid, position)}: the uuid is C{None} if no Connected was
        seen; C{None} if nothing from this peer was ever applied.  During
        an unfinished catch-up, the position is the one stored before it.
    """
    row = cursor.execute(
        "SELECT uuid, position FROM peer_progress WHERE peer = ?", (peer,)
    ).fetchone()
    return None if row is None else (row[0], int(row[1]))


def forks(cursor: Cursor | sqlite3.Connection, inode: int) -> list[tuple[str, bytes]]:
    """
    The forks recorded for a file (conflicts, DESIGN.md section 11).

    @return: C{(peer, hash)} of each version made by a Replace of a version
        other than the default, sorted by hash.
    """
    return [
        (str(peer), bytes(digest))
        for peer, digest in cursor.execute(
            "SELECT peer, hash FROM fork WHERE inode = ? ORDER BY hash", (inode,)
        )
    ]


def count_conflicts(cursor: Cursor | sqlite3.Connection) -> int:
    """
    @return: the arena's open conflicts: forks whose version a peer still
        has (what C{realize_unreal_conflicts} shows).
    """
    (count,) = cursor.execute(
        f"SELECT count(*) FROM fork WHERE {_OPEN_FORK}"
    ).fetchone()
    return int(count)


@frozen
class Conflict:
    """
    One open conflict of a file: a version beside the default.

    @ivar inode: the file.
    @ivar peer: the peer whose Replace made the fork.
    @ivar hash: the version's Merkle root.
    @ivar size: its size in bytes.
    @ivar mtime_ns: its mtime.
    @ivar peers: the peers whose row has this version, sorted (where it is
        read from).
    """

    inode: int
    peer: PeerId
    hash: bytes
    size: int
    mtime_ns: int
    peers: tuple[PeerId, ...]


def open_conflicts(
    cursor: Cursor | sqlite3.Connection, inode: int | None = None
) -> list[Conflict]:
    """
    The open conflicts of one file, or of the whole arena.

    @param inode: the file, or C{None} for every file.
    @return: sorted by inode, then peer, then hash.
    """
    where = f"WHERE {_OPEN_FORK}" + ("" if inode is None else " AND fork.inode = ?")
    rows = cursor.execute(
        f"SELECT inode, peer, hash, mtime_ns FROM fork {where}"
        " ORDER BY inode, peer, hash",
        () if inode is None else (inode,),
    ).fetchall()
    out = []
    for file_inode, peer, digest, mtime_ns in rows:
        holders = cursor.execute(
            "SELECT peer, size FROM file WHERE inode = ? AND peer != ?"
            " AND hash IS ? ORDER BY peer",
            (file_inode, DEFAULT, digest),
        ).fetchall()
        out.append(
            Conflict(
                int(file_inode),
                PeerId(str(peer)),
                bytes(digest),
                int(holders[0][1]),
                int(mtime_ns),
                tuple(PeerId(str(p)) for p, _ in holders),
            )
        )
    return out
