"""
The consensus tables of an arena db (DESIGN.md section 11): the marks
(L{realize.storage.marks}), the persistent queue of dirty paths that the
consensus jobs work through, and the events the jobs need that the
Unreal's tables do not keep.  Schema upgrade 3 (L{create_consensus_tables}):

    - C{mark}: see L{realize.storage.marks}.
    - C{consensus_queue(path TEXT PRIMARY KEY, generation, attempts,
      not_before, action, step, error, blob)}: a path whose mark, default
      version or local copy changed and that a job must look at.
      C{generation} counts how often it became dirty (a job that ends
      removes the row only if no change came meanwhile); C{attempts} the
      failures since, C{not_before} (seconds since the epoch) when it may
      run again (the backoff); C{action} and C{step} what the job running
      or last run does (for C{user.realize.status}), C{error} why it last
      failed, C{blob} the blob an unrealize moves the file into (to
      finish it after a crash).
    - C{consensus_event(path, kind) -> (hash, mtime_ns)}: what happened to
      a path that the jobs decide on: C{superseded} (a peer replaced the
      local version: the default moved away from it), C{realized} (this
      peer realized that version), C{removed_remote} (a peer removed the
      version this peer has, with that mtime), C{removed_local} (this
      peer's copy of that version was deleted here).

A path becomes dirty (L{_txn_mark_dirty}) in the same transaction as the
change that made it so: a mark set (L{_txn_change_mark}), a batch of
notifications applied (L{_txn_apply_tracked}: the peer's and this peer's
own, fed as C{me}), so the queue survives a crash with nothing lost.  Only
paths a job may act on are queued: a local copy, an event, or an
effective mark C{own} or C{keep}.

L{_txn_situation} gathers what the decision (L{realize.services.consensus})
needs of one path.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from attrs import define, field, frozen

from realize.model import (
    ADD,
    CATCHUP,
    CATCHUP_COMPLETE,
    DROP,
    KIND_FILE,
    REMOVE,
    REPLACE,
    Notification,
    PeerId,
)
from realize.storage.blobs import QUEUE_DELETING, decode_ranges
from realize.storage.index import prefix_range
from realize.storage.marks import (
    MARK_KEEP,
    MARK_OWN,
    EffectiveMark,
    _txn_set_mark,
    all_marks,
    create_mark_table,
    effective_in,
)
from realize.storage.unreal import DEFAULT, ArenaTree, BatchResult, _apply_rules
from realize.storage.unrealpaths import files_beneath, resolve
from realize.storage.unrealview import file_path

__all__ = [
    "EVENT_REALIZED",
    "EVENT_REMOVED_LOCAL",
    "EVENT_REMOVED_REMOTE",
    "EVENT_SUPERSEDED",
    "Cached",
    "LocalCopy",
    "QueueRow",
    "Situation",
    "Version",
    "create_consensus_tables",
    "files_beneath",
    "queue_row",
    "resolve",
]

Cursor = sqlite3.Cursor
Connection = sqlite3.Connection | sqlite3.Cursor

EVENT_SUPERSEDED: Final = "superseded"
EVENT_REALIZED: Final = "realized"
EVENT_REMOVED_REMOTE: Final = "removed_remote"
EVENT_REMOVED_LOCAL: Final = "removed_local"

#: Settings (the C{settings} table of upgrade 1) holding the arena default
#: mark and copy count the queue was last filled for.
_SETTING_MARK = "consensus.mark"
_SETTING_COPIES = "consensus.copies"


def create_consensus_tables(cursor: Cursor) -> None:
    """
    Schema upgrade 3 of C{arena.db}: marks, the queue of dirty paths and
    the consensus events.
    """
    create_mark_table(cursor)
    cursor.execute(
        "CREATE TABLE consensus_queue ("
        " path TEXT PRIMARY KEY,"
        " generation INTEGER NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " not_before REAL NOT NULL DEFAULT 0,"
        " action TEXT,"
        " step TEXT,"
        " error TEXT,"
        " blob INTEGER"
        ") WITHOUT ROWID"
    )
    cursor.execute("CREATE INDEX consensus_due ON consensus_queue (not_before)")
    cursor.execute(
        "CREATE TABLE consensus_event ("
        " path TEXT NOT NULL,"
        " kind TEXT NOT NULL,"
        " hash BLOB,"
        " mtime_ns INTEGER,"
        " PRIMARY KEY (path, kind)) WITHOUT ROWID"
    )


# -- the Unreal's tree by path -----------------------------------------------


def _local_beneath(connection: Connection, path: str) -> list[str]:
    low, high = prefix_range(path)
    rows = connection.execute(
        "SELECT path FROM file_index WHERE path = ? OR (path >= ? AND path < ?)",
        (path, low, high),
    )
    return [str(row[0]) for row in rows]


# -- the queue ----------------------------------------------------------------


@frozen
class QueueRow:
    """
    One dirty path of the queue (the C{consensus_queue} table).
    """

    path: str
    generation: int
    attempts: int
    not_before: float
    action: str | None
    step: str | None
    error: str | None
    blob: int | None


_QUEUE_COLUMNS = "path, generation, attempts, not_before, action, step, error, blob"


def _queue_row(row: Sequence[object]) -> QueueRow:
    return QueueRow(
        str(row[0]),
        int(row[1]),  # type: ignore[call-overload]
        int(row[2]),  # type: ignore[call-overload]
        float(row[3]),  # type: ignore[arg-type]
        None if row[4] is None else str(row[4]),
        None if row[5] is None else str(row[5]),
        None if row[6] is None else str(row[6]),
        None if row[7] is None else int(row[7]),  # type: ignore[call-overload]
    )


def queue_row(connection: Connection, path: str) -> QueueRow | None:
    """
    @return: a path's row of the queue, or C{None} if it is not dirty.
    """
    row = connection.execute(
        f"SELECT {_QUEUE_COLUMNS} FROM consensus_queue WHERE path = ?", (path,)
    ).fetchone()
    return None if row is None else _queue_row(row)


def _txn_mark_dirty(cursor: Cursor, paths: Iterable[str]) -> int:
    """
    Queue paths: a new row, or one more generation of a queued one, due at
    once (a change cancels the backoff of an earlier failure).

    @return: how many paths were queued.
    """
    rows = [(path,) for path in dict.fromkeys(paths)]
    cursor.executemany(
        "INSERT INTO consensus_queue (path, generation) VALUES (?, 1)"
        " ON CONFLICT (path) DO UPDATE SET generation = generation + 1,"
        " attempts = 0, not_before = 0, error = NULL",
        rows,
    )
    return len(rows)


def _busy_clause(busy: Sequence[str]) -> str:
    return f" AND path NOT IN ({','.join('?' * len(busy))})" if busy else ""


def _txn_due(
    cursor: Cursor, now: float, limit: int, busy: Sequence[str] = ()
) -> list[QueueRow]:
    """
    @param now: the time, seconds since the epoch.
    @param limit: at most this many.
    @param busy: paths whose job runs now (not taken again).
    @return: the rows due (C{not_before <= now}), the longest due first.
    """
    rows = cursor.execute(
        f"SELECT {_QUEUE_COLUMNS} FROM consensus_queue WHERE not_before <= ?"
        f"{_busy_clause(busy)} ORDER BY not_before, path LIMIT ?",
        (now, *busy, limit),
    )
    return [_queue_row(row) for row in rows]


def _txn_next_due(cursor: Cursor, busy: Sequence[str] = ()) -> float | None:
    """
    @return: the earliest C{not_before} of the rows not busy, or C{None}
        if there are none.
    """
    row = cursor.execute(
        f"SELECT min(not_before) FROM consensus_queue WHERE 1{_busy_clause(busy)}",
        tuple(busy),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def _txn_step(
    cursor: Cursor, path: str, action: str | None, step: str, blob: int | None = None
) -> None:
    """
    Record what a job of a path does now (for C{user.realize.status}, and
    the blob of an unrealize, to finish it after a crash).
    """
    cursor.execute(
        "UPDATE consensus_queue SET action = ?, step = ?,"
        " blob = coalesce(?, blob) WHERE path = ?",
        (action, step, blob, path),
    )


def _txn_done(cursor: Cursor, path: str, generation: int) -> bool:
    """
    A job of a path ended well: the row goes, unless the path became dirty
    again meanwhile (then it stays, due at once).

    @param generation: the row's generation when the job took it.
    @return: whether the row went.
    """
    cursor.execute(
        "DELETE FROM consensus_queue WHERE path = ? AND generation = ?",
        (path, generation),
    )
    if cursor.rowcount:
        return True
    cursor.execute(
        "UPDATE consensus_queue SET action = NULL, step = NULL, blob = NULL"
        " WHERE path = ?",
        (path,),
    )
    return False


def _txn_failed(
    cursor: Cursor,
    path: str,
    generation: int,
    action: str,
    error: str,
    now: float,
    delay: Callable[[int], float],
) -> float:
    """
    A job of a path failed: it is tried again after a backoff.  If the
    path became dirty again meanwhile it is due at once instead.

    @param action: what the job was doing.
    @param error: why it failed.
    @param now: the time, seconds since the epoch.
    @param delay: seconds to wait after the n-th failure in a row (n >= 1).
    @return: when it may run again, seconds since the epoch.
    """
    row = cursor.execute(
        "SELECT generation, attempts FROM consensus_queue WHERE path = ?", (path,)
    ).fetchone()
    if row is None:
        return now
    if int(row[0]) != generation:
        attempts, when = int(row[1]), now
    else:
        attempts = int(row[1]) + 1
        when = now + delay(attempts)
    cursor.execute(
        "UPDATE consensus_queue SET attempts = ?, not_before = ?, error = ?,"
        " action = ?, step = 'failed' WHERE path = ?",
        (attempts, when, error, action, path),
    )
    return when


def _txn_queue_counts(cursor: Cursor, now: float) -> tuple[int, int]:
    """
    @return: C{(paths queued, of which waiting for a retry)}.
    """
    total, waiting = cursor.execute(
        "SELECT count(*), coalesce(sum(not_before > ?), 0) FROM consensus_queue",
        (now,),
    ).fetchone()
    return int(total), int(waiting)


# -- events -------------------------------------------------------------------


def _txn_set_event(
    cursor: Cursor, path: str, kind: str, digest: bytes | None, mtime_ns: int | None
) -> None:
    cursor.execute(
        "INSERT INTO consensus_event (path, kind, hash, mtime_ns) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (path, kind) DO UPDATE SET hash = excluded.hash,"
        " mtime_ns = excluded.mtime_ns",
        (path, kind, digest, mtime_ns),
    )


def _txn_clear_events(cursor: Cursor, path: str, kinds: Iterable[str]) -> None:
    cursor.executemany(
        "DELETE FROM consensus_event WHERE path = ? AND kind = ?",
        [(path, kind) for kind in kinds],
    )


def _events(connection: Connection, path: str) -> dict[str, tuple[bytes | None, int]]:
    rows = connection.execute(
        "SELECT kind, hash, mtime_ns FROM consensus_event WHERE path = ?", (path,)
    )
    return {
        str(kind): (None if digest is None else bytes(digest), int(mtime or 0))
        for kind, digest, mtime in rows
    }


# -- what the household applies -------------------------------------------------


def _default_hash(cursor: Cursor, root: int, path: str) -> tuple[bool, bytes | None]:
    found = resolve(cursor, root, path)
    if found is None or found[1] != KIND_FILE:
        return False, None
    row = cursor.execute(
        "SELECT hash FROM file WHERE inode = ? AND peer = ?", (found[0], DEFAULT)
    ).fetchone()
    if row is None:
        return False, None
    return True, None if row[0] is None else bytes(row[0])


def _index_of(
    cursor: Cursor, paths: Sequence[str]
) -> dict[str, tuple[int, int, bytes | None]]:
    found: dict[str, tuple[int, int, bytes | None]] = {}
    for i in range(0, len(paths), 500):
        chunk = paths[i : i + 500]
        rows = cursor.execute(
            "SELECT path, size, mtime_ns, hash FROM file_index"
            f" WHERE path IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for path, size, mtime, digest in rows:
            found[str(path)] = (
                int(size),
                int(mtime),
                None if digest is None else bytes(digest),
            )
    return found


@define
class _EventChanges:
    """
    The consensus events a batch sets and clears, in order, written at its
    end: each key C{(path, kind)} takes the last change made to it (a set
    overwrites the row, a clear deletes it, so the last one decides), and
    clearing a key that has no row writes nothing (a move's local feed
    cleared C{removed_local} of every file it added, one statement each).
    """

    _changes: dict[tuple[str, str], tuple[bytes | None, int | None] | None] = field(
        factory=dict
    )

    def set(
        self, path: str, kind: str, digest: bytes | None, mtime_ns: int | None
    ) -> None:
        self._changes[(path, kind)] = (digest, mtime_ns)

    def clear(self, path: str, kinds: Iterable[str]) -> None:
        for kind in kinds:
            self._changes[(path, kind)] = None

    def write(self, cursor: Cursor) -> None:
        cleared = sorted(
            {key[0] for key, value in self._changes.items() if value is None}
        )
        existing: set[tuple[str, str]] = set()
        for i in range(0, len(cleared), _IN_CHUNK):
            chunk = cleared[i : i + _IN_CHUNK]
            existing.update(
                (str(path), str(kind))
                for path, kind in cursor.execute(
                    "SELECT path, kind FROM consensus_event WHERE path IN"
                    f" ({','.join('?' * len(chunk))})",
                    chunk,
                )
            )
        cursor.executemany(
            "DELETE FROM consensus_event WHERE path = ? AND kind = ?",
            [key for key, v in self._changes.items() if v is None and key in existing],
        )
        for (path, kind), value in self._changes.items():
            if value is not None:
                _txn_set_event(cursor, path, kind, *value)
        self._changes.clear()


#: Paths per C{IN (...)} query (below sqlite's variable limit).
_IN_CHUNK = 500


def _txn_apply_tracked(
    cursor: Cursor,
    tree: ArenaTree,
    me: PeerId | None,
    default_mark: str,
    peer: str,
    notifications: Sequence[Notification],
) -> BatchResult:
    """
    Apply a batch of notifications (L{realize.storage.unreal._txn_apply_batch})
    and, in the same transaction, record the consensus events and queue the
    paths it made dirty.

    Events: from this peer's own feed (C{peer == me}), a Remove records
    C{removed_local} and an Add, Replace or Catchup clears it; a Remove or
    Drop clears the events of a local copy.  From another peer, a Remove of
    the version the index holds, with an mtime not older than the index's,
    records C{removed_remote}; a default that moved away from the version
    the index holds records C{superseded}.

    @param me: this peer's id (its own history is fed as that peer).
    @param default_mark: the arena's default mark.
    @return: the batch's result.
    @raise BadRequest: as L{realize.storage.unreal._txn_apply_batch}.
    @raise InvalidPath: likewise.
    """
    paths = sorted({n.path for n in notifications if n.path is not None})
    local = _index_of(cursor, paths)
    mine = me is not None and peer == me
    # Only another peer's batch can supersede what the index holds.
    before = (
        {} if mine else {path: _default_hash(cursor, tree.root, path) for path in local}
    )
    result, rules = _apply_rules(cursor, tree, peer, notifications, me)
    changes = _EventChanges()
    events: set[str] = set()
    for n in notifications:
        if n.path is None:
            continue
        entry = local.get(n.path)
        if mine:
            if n.kind in (ADD, REPLACE, CATCHUP):
                changes.clear(n.path, [EVENT_REMOVED_LOCAL])
            elif n.kind in (REMOVE, DROP):
                changes.clear(
                    n.path, [EVENT_SUPERSEDED, EVENT_REALIZED, EVENT_REMOVED_REMOTE]
                )
                if n.kind == REMOVE:
                    changes.set(n.path, EVENT_REMOVED_LOCAL, n.old_hash, n.mtime_ns)
        elif (
            n.kind == REMOVE
            and entry is not None
            and entry[2] is not None
            and entry[2] == n.old_hash
            and n.mtime_ns is not None
            and entry[1] <= n.mtime_ns
        ):
            changes.set(n.path, EVENT_REMOVED_REMOTE, entry[2], n.mtime_ns)
            events.add(n.path)
    if not mine:
        for path, entry in local.items():
            had, old = before[path]
            if not had or entry[2] is None or old != entry[2]:
                continue
            has, new = _default_hash(cursor, tree.root, path)
            if not has or new != entry[2]:
                changes.set(path, EVENT_SUPERSEDED, entry[2], None)
                events.add(path)
    changes.write(cursor)
    dirty = set(paths)
    # A CatchupComplete removes rows of files it does not name: their
    # defaults may have moved.
    swept = any(n.kind == CATCHUP_COMPLETE for n in notifications)
    for inode in result.inodes if swept else ():
        row = cursor.execute(
            "SELECT kind FROM directory WHERE inode = ?", (inode,)
        ).fetchone()
        if row is not None and row[0] == KIND_FILE:
            found = file_path(cursor.connection, tree.root, inode)
            if found:
                dirty.add(found)
    _queue_relevant(
        cursor,
        dirty,
        default_mark,
        events,
        tree.root,
        me,
        # The index did not change: the batch wrote the Unreal's tables.
        local if dirty == set(paths) else None,
        rules.inode_of,
    )
    return result


def _queue_relevant(
    cursor: Cursor,
    paths: Iterable[str],
    default_mark: str,
    events: set[str],
    root: int | None = None,
    me: str | None = None,
    local: dict[str, tuple[int, int, bytes | None]] | None = None,
    inode_of: Callable[[str], int | None] | None = None,
) -> int:
    """
    Queue those of C{paths} a job may act on: an event, an effective mark
    C{own} or C{keep}, already queued, or a local copy (in the index).
    With C{root} and C{me}, a local copy marked C{watch} only if another
    peer has its version: the one thing a job may do about it is
    unrealize it once enough peers hold it (L{realize.services.decisions}),
    and the batch that brings a peer's copy queues it then.  (A move of
    10,000 files into a datadir queued 10,000 jobs that each decided
    nothing.)

    @param local: the index entries of C{paths} if already read.
    @param inode_of: finds a path's file inode in the Unreal's tree (the
        batch's rules, which know it), else it is looked up.
    """
    wanted = sorted(set(paths))
    if not wanted:
        return 0
    marks = all_marks(cursor)
    if local is None:
        local = _index_of(cursor, wanted)
    queued = {
        str(row[0])
        for i in range(0, len(wanted), _IN_CHUNK)
        for row in cursor.execute(
            "SELECT path FROM consensus_queue WHERE path IN "
            f"({','.join('?' * len(wanted[i : i + _IN_CHUNK]))})",
            wanted[i : i + _IN_CHUNK],
        )
    }
    relevant = []
    candidates = []
    for path in wanted:
        if (
            path in events
            or path in queued
            or (
                marks
                and effective_in(marks, path, default_mark).mark
                in (MARK_OWN, MARK_KEEP)
            )
            or (not marks and default_mark in (MARK_OWN, MARK_KEEP))
        ):
            relevant.append(path)
        elif path in local:
            if root is None or me is None:
                relevant.append(path)
            else:
                candidates.append(path)
    if candidates:
        assert root is not None and me is not None
        held = _held_elsewhere(cursor, root, me, candidates, local, inode_of)
        relevant.extend(path for path in candidates if path in held)
    return _txn_mark_dirty(cursor, relevant)


def _held_elsewhere(
    cursor: Cursor,
    root: int,
    me: str,
    paths: Sequence[str],
    local: dict[str, tuple[int, int, bytes | None]],
    inode_of: Callable[[str], int | None] | None = None,
) -> set[str]:
    """
    @param local: the index entry of each path (its version).
    @param inode_of: finds a path's file inode, or C{None} to look it up.
    @return: those of C{paths} whose index version a peer other than
        C{me} has in the Unreal's tables.
    """
    inodes: dict[int, str] = {}
    for path in paths:
        if local[path][2] is None:
            continue
        if inode_of is not None:
            inode = inode_of(path)
        else:
            found = resolve(cursor, root, path)
            inode = None if found is None or found[1] != KIND_FILE else found[0]
        if inode is not None:
            inodes[inode] = path
    held = set()
    numbers = list(inodes)
    for i in range(0, len(numbers), _IN_CHUNK):
        chunk = numbers[i : i + _IN_CHUNK]
        for inode, digest in cursor.execute(
            "SELECT inode, hash FROM file WHERE peer NOT IN (?, ?) AND inode IN"
            f" ({','.join('?' * len(chunk))})",
            (DEFAULT, me, *chunk),
        ):
            path = inodes[int(inode)]
            if digest is not None and bytes(digest) == local[path][2]:
                held.add(path)
    return held


def _txn_change_mark(
    cursor: Cursor,
    root: int,
    path: str,
    mark: str | None,
    source: str,
    now_ns: int,
) -> int:
    """
    Set or remove the mark of a path, and queue every file at or beneath
    it (in the Unreal's tree or the index) when it changed.

    @return: how many paths were queued (0: the mark did not change).
    @raise BadRequest: for a value not in L{realize.storage.marks.MARKS}.
    """
    if not _txn_set_mark(cursor, path, mark, source, now_ns):
        return 0
    paths = set(files_beneath(cursor, root, path)) | set(_local_beneath(cursor, path))
    return _txn_mark_dirty(cursor, sorted(paths))


def _txn_set_found_marks(
    cursor: Cursor, root: int, found: Sequence[tuple[str, str]], now_ns: int
) -> int:
    """
    Set the marks found on real files and directories at a catch-up (the
    others are left as they are, #marksxattrs).

    @param found: C{(path, mark)} pairs.
    @return: how many paths were queued.
    """
    queued = 0
    for path, mark in found:
        queued += _txn_change_mark(cursor, root, path, mark, "real", now_ns)
    return queued


def _txn_sweep(cursor: Cursor, root: int, default_mark: str, copies: int) -> int:
    """
    Queue every path a job may act on if the arena's default mark or copy
    count differ from those the queue was last filled for (the first start
    included); then remember them.

    @return: how many paths were queued.
    """
    stored = dict(
        cursor.execute(
            "SELECT key, value FROM settings WHERE key IN (?, ?)",
            (_SETTING_MARK, _SETTING_COPIES),
        ).fetchall()
    )
    if stored.get(_SETTING_MARK) == default_mark and stored.get(_SETTING_COPIES) == str(
        copies
    ):
        return 0
    cursor.executemany(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [(_SETTING_MARK, default_mark), (_SETTING_COPIES, str(copies))],
    )
    marks = all_marks(cursor)
    paths = {str(row[0]) for row in cursor.execute("SELECT path FROM file_index")}
    for path in files_beneath(cursor, root, ""):
        if effective_in(marks, path, default_mark).mark in (MARK_OWN, MARK_KEEP):
            paths.add(path)
    return _txn_mark_dirty(cursor, sorted(paths))


# -- what a job decides on --------------------------------------------------------


@frozen
class LocalCopy:
    """
    The real file of a path, as the index holds it.
    """

    size: int
    mtime_ns: int
    hash: bytes | None


@frozen
class Version:
    """
    The default version of a path in the Unreal.
    """

    inode: int
    size: int
    mtime_ns: int
    hash: bytes | None


@frozen
class Cached:
    """
    The blob of the default version.

    @ivar present: bytes present (verified).
    @ivar queue: its cache queue (L{realize.storage.blobs}).
    """

    blob: int
    present: int
    size: int
    queue: str

    @property
    def complete(self) -> bool:
        return self.present >= self.size


@frozen
class Situation:
    """
    Everything a consensus job decides on, for one path, read in one
    transaction (L{_txn_situation}).

    @ivar path: the path.
    @ivar mark: its effective mark.
    @ivar local: the real file (index entry), or C{None}.
    @ivar default: the Unreal's default version, or C{None}.
    @ivar mine: whether the Unreal has a row of this peer (C{me}) for it.
    @ivar mine_hash: that row's hash.
    @ivar holders: the other peers whose row has the local version (or the
        default one when there is no local copy), sorted.
    @ivar fork: whether this peer's version is recorded as a fork.
    @ivar superseded: the local version a peer replaced, or C{None}.
    @ivar realized: the version this peer last realized here, or C{None}.
    @ivar removed_remote: C{(hash, mtime)} of a peer's Remove of the local
        version, or C{None}.
    @ivar removed_local: the version deleted here, or C{None}.
    @ivar cached: the default version's blob, or C{None}.
    @ivar queued: the path's queue row, or C{None}.
    """

    path: str
    mark: EffectiveMark
    local: LocalCopy | None
    default: Version | None
    mine: bool
    mine_hash: bytes | None
    holders: tuple[PeerId, ...]
    fork: bool = False
    superseded: bytes | None = None
    realized: bytes | None = None
    removed_remote: tuple[bytes | None, int] | None = None
    removed_local: bytes | None = None
    cached: Cached | None = None
    queued: QueueRow | None = None


def _txn_situation(
    cursor: Cursor, root: int, me: PeerId | None, default_mark: str, path: str
) -> Situation:
    """
    @param root: the arena root's inode.
    @param me: this peer's id, or C{None}.
    @param default_mark: the arena's default mark.
    @return: the path's situation.
    """
    from realize.storage.marks import ancestors, marks_of

    mark = effective_in(marks_of(cursor, ancestors(path)), path, default_mark)
    entry = _index_of(cursor, [path]).get(path)
    local = None if entry is None else LocalCopy(*entry)
    default = None
    mine = False
    mine_hash = None
    holders: tuple[PeerId, ...] = ()
    fork = False
    cached = None
    found = resolve(cursor, root, path)
    if found is not None and found[1] == KIND_FILE:
        inode = found[0]
        rows = {
            str(peer): (int(size), int(mtime), None if h is None else bytes(h))
            for peer, size, mtime, h in cursor.execute(
                "SELECT peer, size, mtime_ns, hash FROM file WHERE inode = ?",
                (inode,),
            )
        }
        if DEFAULT in rows:
            size, mtime, digest = rows[DEFAULT]
            default = Version(inode, size, mtime, digest)
        if me is not None and me in rows:
            mine, mine_hash = True, rows[me][2]
        wanted = (
            local.hash
            if local is not None
            else (None if default is None else default.hash)
        )
        if wanted is not None:
            holders = tuple(
                sorted(
                    PeerId(peer)
                    for peer, row in rows.items()
                    if peer not in (DEFAULT, me) and row[2] == wanted
                )
            )
        if local is not None and local.hash is not None and me is not None:
            fork = (
                cursor.execute(
                    "SELECT 1 FROM fork WHERE inode = ? AND hash = ? AND peer = ?",
                    (inode, local.hash, me),
                ).fetchone()
                is not None
            )
        if default is not None and default.hash is not None:
            blob = cursor.execute(
                "SELECT id, size, ranges, queue FROM blob"
                " WHERE inode = ? AND hash = ? AND queue != ?",
                (inode, default.hash, QUEUE_DELETING),
            ).fetchone()
            if blob is not None:
                cached = Cached(
                    int(blob[0]),
                    decode_ranges(bytes(blob[2])).total(),
                    int(blob[1]),
                    str(blob[3]),
                )
    events = _events(cursor, path)

    def event_hash(kind: str) -> bytes | None:
        found = events.get(kind)
        return None if found is None else found[0]

    removed = events.get(EVENT_REMOVED_REMOTE)
    return Situation(
        path,
        mark,
        local,
        default,
        mine,
        mine_hash,
        holders,
        fork,
        event_hash(EVENT_SUPERSEDED),
        event_hash(EVENT_REALIZED),
        removed,
        event_hash(EVENT_REMOVED_LOCAL),
        cached,
        queue_row(cursor, path),
    )
