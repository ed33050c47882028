"""
The index and the history of one arena (DESIGN.md section 9), in its
arena db (schema: L{realize.storage.schema}, upgrade 1).

Every transaction is a plain synchronous C{_txn_*(cursor, ...)} function,
run by the db's pool (C{runInteraction}) and tested on a bare connection.
L{ArenaIndex} runs them for the services and tells its listeners what was
recorded.

Recording (the watcher's side):

    - L{_txn_record_unhashed}: files seen but not hashed yet: an Add with
      no version (hash C{NULL}) for a new file, a Replace to no version for
      a file whose size or mtime changed; nothing if the index already has
      this size and mtime.
    - L{_txn_record_versions}: hashed files (or files whose root the store
      gave): an Add, or a Replace whose old hash is the index's previous
      hash; nothing if size, mtime and hash are those of the index.  A
      file the index does not hold but the Unreal shows (another peer's,
      edited through the overlay: a copy-up) is a Replace whose old hash
      is the Unreal's default version (docs/real.md).
    - L{_txn_record_removals}: files gone (the caller computed each mtime by
      the #unlinktime rule): a Remove whose old hash is the index's; nothing
      for a path the index does not hold.
    - L{_txn_record_drops}: local copies unrealized: a Drop.

Reading (the subscriptions' side):

    - L{_txn_history_after}: entries after a position, re-derived from the
      current index: entries name a path, and size, mtime and hash are the
      index's now (old versions are not kept), so a Replace of a file
      removed since comes out as a Remove, and an Add of a file gone since
      is skipped.
    - L{_txn_index_after}: the index in path order, a page at a time, for
      a catch-up.
    - L{_txn_positions}: the first position still available and the last
      one recorded.

Trimming (L{_txn_trim}) drops the oldest entries and remembers the highest
position dropped (C{settings.trimmed_through}), so that a subscriber whose
position is older gets a catch-up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from realize.model import (
    ADD,
    CATCHUP,
    DROP,
    KIND_DIR,
    KIND_FILE,
    REMOVE,
    REPLACE,
    ArenaName,
    Notification,
    NotificationKind,
    PeerId,
)
from realize.storage.unrealpaths import resolve, unreal_root

__all__ = [
    "ArenaIndex",
    "IndexEntry",
    "Interactions",
    "Positions",
    "Version",
    "prefix_range",
]

T = TypeVar("T")

#: Entries deleted per transaction when trimming: a trim of a million
#: entries does not hold the writer for long at once.
TRIM_BATCH = 10_000

_TRIMMED = "trimmed_through"


@frozen
class IndexEntry:
    """
    One file of the index.

    @ivar path: its path.
    @ivar size: its size in bytes.
    @ivar mtime_ns: its mtime, ns since the epoch.
    @ivar hash: its Merkle root, or C{None} for "no version" (seen, not
        hashed yet; #musthash).
    @ivar position: history position of its last change.
    """

    path: str
    size: int
    mtime_ns: int
    hash: bytes | None
    position: int


@frozen
class Version:
    """
    A file as hashed: what L{_txn_record_versions} records.

    @ivar path: its path.
    @ivar size: its size in bytes.
    @ivar mtime_ns: its mtime in ns.
    @ivar hash: its Merkle root.
    """

    path: str
    size: int
    mtime_ns: int
    hash: bytes


@frozen
class Positions:
    """
    What part of a history is available.

    @ivar first: the first position still held (after trimming; 1 for a
        history never trimmed).
    @ivar last: the last position recorded, 0 for an empty history (it
        stays after its entry is trimmed: positions are never reused).
    """

    first: int
    last: int

    def can_replay_after(self, position: int) -> bool:
        """
        @param position: the last position a subscriber applied.
        @return: whether every entry after it is still held, so that a
            replay from C{position + 1} is complete.
        """
        return self.first - 1 <= position <= self.last


def prefix_range(prefix: str) -> tuple[str, str]:
    """
    The range of paths beneath a directory, for C{path >= ? AND path < ?}.

    @param prefix: a directory path, or C{""} for the arena root.
    @return: C{(low, high)}: C{("dir/", "dir0")} (C{"0"} follows C{"/"}),
        or C{("", "\\U0010ffff")} for the root.
    """
    if not prefix:
        return "", "\U0010ffff"
    return prefix + "/", prefix + "0"


# -- settings ------------------------------------------------------------


def _txn_get_setting(cursor: sqlite3.Cursor, key: str) -> str | None:
    """
    @return: the value of a setting, or C{None}.
    """
    row = cursor.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _txn_set_setting(cursor: sqlite3.Cursor, key: str, value: str) -> None:
    """
    Set a setting.
    """
    cursor.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _txn_store_uuid(cursor: sqlite3.Cursor) -> str:
    """
    @return: the store uuid (made when the db was created).
    @raise LookupError: if the db has none (not an arena db).
    """
    value = _txn_get_setting(cursor, "uuid")
    if value is None:
        raise LookupError("the arena db has no store uuid")
    return value


# -- positions -----------------------------------------------------------


def _last_position(cursor: sqlite3.Cursor) -> int:
    row = cursor.execute(
        "SELECT seq FROM sqlite_sequence WHERE name = 'history'"
    ).fetchone()
    return 0 if row is None else int(row[0])


def _txn_positions(cursor: sqlite3.Cursor) -> Positions:
    """
    @return: the first position held and the last recorded.
    """
    trimmed = int(_txn_get_setting(cursor, _TRIMMED) or 0)
    return Positions(trimmed + 1, _last_position(cursor))


# -- recording -----------------------------------------------------------


def _append(
    cursor: sqlite3.Cursor,
    kind: NotificationKind,
    path: str,
    old_hash: bytes | None,
    mtime_ns: int | None,
    time_ns: int,
) -> int:
    cursor.execute(
        "INSERT INTO history (kind, path, old_hash, mtime_ns, time_ns) "
        "VALUES (?, ?, ?, ?, ?)",
        (kind, path, old_hash, mtime_ns, time_ns),
    )
    position = cursor.lastrowid
    assert position is not None
    return position


#: Paths per C{IN (...)} query (below sqlite's variable limit).
_LOOKUP_CHUNK = 500

_State = tuple[int, int, bytes | None]

#: The peer of a file's default row in the Unreal's tables
#: (L{realize.storage.unreal.DEFAULT}).
_UNREAL_DEFAULT = ""


def _currents(cursor: sqlite3.Cursor, paths: Sequence[str]) -> dict[str, _State]:
    found: dict[str, _State] = {}
    unique = list(dict.fromkeys(paths))
    for i in range(0, len(unique), _LOOKUP_CHUNK):
        chunk = unique[i : i + _LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = cursor.execute(
            "SELECT path, size, mtime_ns, hash FROM file_index "
            f"WHERE path IN ({marks})",
            chunk,
        )
        for path, size, mtime_ns, hash in rows:
            found[path] = (size, mtime_ns, hash)
    return found


def _origins(cursor: sqlite3.Cursor, paths: Sequence[str]) -> dict[str, bytes]:
    """
    The Unreal's default versions of paths the index does not hold (the
    versions an overlay edit replaces), if an Unreal stored its root here
    (L{realize.storage.unrealpaths.UNREAL_ROOT}).

    Looked up a directory at a time (a move records thousands of new files
    in few directories, issue 15): each directory once, then its names in
    one query, then their default rows in one.

    @return: the default hash by path, for those with a hashed default.
    """
    if not paths:
        return {}
    root = unreal_root(cursor)
    if root is None:
        return {}
    by_directory: dict[str, list[str]] = {}
    for path in dict.fromkeys(paths):
        directory, _, name = path.rpartition("/")
        by_directory.setdefault(directory, []).append(name)
    inodes: dict[int, str] = {}
    for directory, names in by_directory.items():
        parent = _unreal_directory(cursor, root, directory)
        if parent is None:
            continue
        prefix = f"{directory}/" if directory else ""
        for i in range(0, len(names), _LOOKUP_CHUNK):
            chunk = names[i : i + _LOOKUP_CHUNK]
            rows = cursor.execute(
                "SELECT name, inode FROM directory WHERE parent = ? AND kind = ?"
                f" AND name IN ({','.join('?' * len(chunk))})",
                (parent, KIND_FILE, *chunk),
            )
            for name, inode in rows:
                inodes[int(inode)] = prefix + str(name)
    found = {}
    numbers = list(inodes)
    for i in range(0, len(numbers), _LOOKUP_CHUNK):
        group = numbers[i : i + _LOOKUP_CHUNK]
        rows = cursor.execute(
            "SELECT inode, hash FROM file WHERE peer = ? AND hash IS NOT NULL"
            f" AND inode IN ({','.join('?' * len(group))})",
            (_UNREAL_DEFAULT, *group),
        )
        for inode, digest in rows:
            found[inodes[int(inode)]] = bytes(digest)
    return found


def _txn_origins(
    cursor: sqlite3.Cursor, paths: Sequence[str]
) -> dict[str, bytes | None]:
    """
    @return: for each path the index does not hold, the Unreal's default
        hash (C{None}: no hashed default).
    """
    held = _currents(cursor, paths)
    new = [path for path in paths if path not in held]
    found = _origins(cursor, new)
    return {path: found.get(path) for path in new}


def _unreal_directory(cursor: sqlite3.Cursor, root: int, path: str) -> int | None:
    """
    @return: the inode of a directory of the Unreal's tree, or C{None}.
    """
    found = resolve(cursor, root, path)
    return None if found is None or found[1] != KIND_DIR else found[0]


def _record_many(
    cursor: sqlite3.Cursor,
    arena: ArenaName,
    files: Sequence[tuple[str, int, int, bytes | None]],
    time_ns: int,
    unhashed: bool,
    seen: Mapping[str, bytes | None] | None = None,
) -> list[Notification]:
    """
    Record files as Add or Replace in one pass: one lookup per chunk of
    paths, the positions counted from the last one, and one C{executemany}
    each for the history and the index.

    @param seen: for paths new in the datadir, the Unreal's default hash
        when the file appeared (L{ArenaIndex.origins}; C{None}: none
        then), which the file's Replace names rather than the default now.
    """
    current = _currents(cursor, [f[0] for f in files])
    seen = seen or {}
    origins = _origins(
        cursor, [f[0] for f in files if f[0] not in current and f[0] not in seen]
    )
    origins.update((path, hash) for path, hash in seen.items() if hash is not None)
    position = _last_position(cursor)
    history_rows = []
    index_rows = []
    notes = []
    for path, size, mtime_ns, hash in files:
        old = current.get(path)
        if old is not None:
            if unhashed:
                if old[0] == size and old[1] == mtime_ns:
                    continue
            elif old == (size, mtime_ns, hash):
                continue
        old_hash = None if old is None else old[2]
        kind: NotificationKind = ADD if old is None else REPLACE
        if old is None and path in origins:
            # A file new here where the Unreal shows another peer's
            # version: an edit through the overlay (a copy-up) or a file
            # made in its place; the peers follow the chain from that
            # version.  The same content is only a new copy (an Add).
            origin = origins[path]
            if hash is None or origin != hash:
                kind, old_hash = REPLACE, origin
        position += 1
        current[path] = (size, mtime_ns, hash)
        history_rows.append((position, kind, path, old_hash, mtime_ns, time_ns))
        index_rows.append((path, size, mtime_ns, hash, position))
        notes.append(
            Notification(
                kind,
                arena,
                position,
                path=path,
                size=size,
                mtime_ns=mtime_ns,
                hash=hash,
                old_hash=old_hash,
            )
        )
    if history_rows:
        insert_rows(cursor, _INSERT_HISTORY, history_rows)
        insert_rows(
            cursor,
            "INSERT OR REPLACE INTO file_index (path, size, mtime_ns, hash, position)",
            index_rows,
        )
    return notes


#: History entries with their positions, as L{insert_rows} takes them.
_INSERT_HISTORY = (
    "INSERT INTO history (position, kind, path, old_hash, mtime_ns, time_ns)"
)

#: Rows of one multi-row C{INSERT} (L{insert_rows}) at most: 128 rows of 6
#: columns stay below sqlite's oldest limit of 999 parameters a statement.
INSERT_CHUNK = 128


def insert_rows(
    cursor: sqlite3.Cursor, insert: str, rows: Sequence[tuple[object, ...]]
) -> None:
    """
    Insert rows with multi-row C{INSERT ... VALUES (...), (...)} statements
    of up to L{INSERT_CHUNK} rows, not C{executemany}.

    C{executemany} steps sqlite once a row, and the sqlite3 module gives
    the GIL up at each step.  In the daemon, whose reactor thread wants
    the GIL all the time, each step was a turn of the GIL between the db
    thread and the reactor: 256 rows into two tables took 1.4 s with a busy
    thread beside it, against 34 ms in four multi-row statements (issue 15).

    @param insert: the statement up to C{VALUES}, naming the columns.
    @param rows: the rows, all of as many values as the columns named.
    """
    if not rows:
        return
    marks = "(" + ", ".join("?" * len(rows[0])) + ")"
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start : start + INSERT_CHUNK]
        cursor.execute(
            f"{insert} VALUES {', '.join([marks] * len(chunk))}",
            [value for row in chunk for value in row],
        )


def _txn_record_unhashed(
    cursor: sqlite3.Cursor,
    arena: ArenaName,
    files: Iterable[tuple[str, int, int]],
    time_ns: int,
    seen: Mapping[str, bytes | None] | None = None,
) -> list[Notification]:
    """
    Record files seen but not hashed yet, with no version (#musthash).

    @param files: C{(path, size, mtime_ns)} of each file.
    @param time_ns: now, ns since the epoch.
    @param seen: see L{_record_many}.
    @return: the entries recorded: an Add (hash C{None}) per file not in
        the index; a Replace (hash C{None}, old hash the index's) per file
        whose size or mtime differ from the index's; nothing for the others.
    """
    rows = [(path, size, mtime_ns, None) for path, size, mtime_ns in files]
    return _record_many(cursor, arena, rows, time_ns, unhashed=True, seen=seen)


def _txn_record_versions(
    cursor: sqlite3.Cursor,
    arena: ArenaName,
    versions: Iterable[Version],
    time_ns: int,
    seen: Mapping[str, bytes | None] | None = None,
) -> list[Notification]:
    """
    Record hashed files.

    @param versions: each file's size, mtime and Merkle root.
    @param time_ns: now, ns since the epoch.
    @param seen: see L{_record_many}.
    @return: the entries recorded: an Add per file not in the index, a
        Replace (old hash: the index's, C{None} for no version) per file
        whose size, mtime or hash differ; nothing for the others.
    """
    rows = [(v.path, v.size, v.mtime_ns, v.hash) for v in versions]
    return _record_many(cursor, arena, rows, time_ns, unhashed=False, seen=seen)


def _remove_many(
    cursor: sqlite3.Cursor,
    arena: ArenaName,
    kind: NotificationKind,
    removals: Iterable[tuple[str, int | None]],
    time_ns: int,
) -> list[Notification]:
    """
    Take files out of the index, each with a history entry of C{kind}: one
    lookup per chunk of paths, one multi-row C{INSERT} per chunk of
    entries and one C{DELETE} per chunk of paths, not three statements a
    file (each gives the GIL up: see L{insert_rows}).

    @param removals: C{(path, mtime_ns)}; a path the index does not hold
        (or named twice) records nothing.
    @return: the entries recorded, in order.
    """
    removals = list(removals)
    current = _currents(cursor, [path for path, _ in removals])
    position = _last_position(cursor)
    rows = []
    gone = []
    notes = []
    for path, mtime_ns in removals:
        old = current.pop(path, None)
        if old is None:
            continue
        position += 1
        rows.append((position, kind, path, old[2], mtime_ns, time_ns))
        gone.append(path)
        notes.append(
            Notification(
                kind, arena, position, path=path, mtime_ns=mtime_ns, old_hash=old[2]
            )
        )
    insert_rows(cursor, _INSERT_HISTORY, rows)
    for start in range(0, len(gone), _LOOKUP_CHUNK):
        chunk = gone[start : start + _LOOKUP_CHUNK]
        cursor.execute(
            f"DELETE FROM file_index WHERE path IN ({','.join('?' * len(chunk))})",
            chunk,
        )
    return notes


def _txn_record_removals(
    cursor: sqlite3.Cursor,
    arena: ArenaName,
    removals: Iterable[tuple[str, int]],
    time_ns: int,
) -> list[Notification]:
    """
    Record files deleted.

    @param removals: C{(path, mtime_ns)}, the mtime by the #unlinktime rule
        (the mtime of the nearest existing ancestor directory).
    @param time_ns: now, ns since the epoch.
    @return: a Remove (old hash: the index's) per path the index held;
        nothing for the others.
    """
    return _remove_many(cursor, arena, REMOVE, removals, time_ns)


def _txn_record_drops(
    cursor: sqlite3.Cursor,
    arena: ArenaName,
    paths: Iterable[str],
    time_ns: int,
) -> list[Notification]:
    """
    Record local copies unrealized (moved into the cache): they leave the
    index, and peers must not mirror them as deletions.

    @param paths: the files dropped.
    @param time_ns: now, ns since the epoch.
    @return: a Drop (old hash: the index's) per path the index held.
    """
    return _remove_many(cursor, arena, DROP, [(path, None) for path in paths], time_ns)


# -- reading -------------------------------------------------------------


def _txn_lookup(cursor: sqlite3.Cursor, paths: Iterable[str]) -> dict[str, IndexEntry]:
    """
    @param paths: paths to look up.
    @return: the index entries of those the index holds.
    """
    found = {}
    unique = list(dict.fromkeys(paths))
    for i in range(0, len(unique), _LOOKUP_CHUNK):
        chunk = unique[i : i + _LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = cursor.execute(
            "SELECT path, size, mtime_ns, hash, position FROM file_index "
            f"WHERE path IN ({marks})",
            chunk,
        )
        for row in rows:
            found[row[0]] = IndexEntry(*row)
    return found


def _txn_index_after(
    cursor: sqlite3.Cursor, after: str | None, limit: int, prefix: str = ""
) -> list[IndexEntry]:
    """
    A page of the index in path order (sqlite's binary order of UTF-8,
    which is Python's order of C{str}).

    @param after: the last path of the previous page, or C{None} to start.
    @param limit: at most this many entries.
    @param prefix: only paths beneath this directory (C{""}: all).
    @return: the entries.
    """
    low, high = prefix_range(prefix)
    if after is not None and after >= low:
        rows = cursor.execute(
            "SELECT path, size, mtime_ns, hash, position FROM file_index "
            "WHERE path > ? AND path < ? ORDER BY path LIMIT ?",
            (after, high, limit),
        )
    else:
        rows = cursor.execute(
            "SELECT path, size, mtime_ns, hash, position FROM file_index "
            "WHERE path >= ? AND path < ? ORDER BY path LIMIT ?",
            (low, high, limit),
        )
    return [IndexEntry(*row) for row in rows]


def _txn_index_stats(cursor: sqlite3.Cursor) -> tuple[int, int]:
    """
    @return: C{(files, total size in bytes)} of the index.
    """
    files, size = cursor.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM file_index"
    ).fetchone()
    return int(files), int(size)


def _replayed(arena: ArenaName, row: tuple[Any, ...]) -> Notification | None:
    position, kind, path, old_hash, mtime_ns, present, size, now_mtime, now_hash = row
    if kind == ADD:
        if not present:
            return None
        return Notification(
            ADD,
            arena,
            position,
            path=path,
            size=size,
            mtime_ns=now_mtime,
            hash=now_hash,
        )
    if kind == REPLACE:
        if not present:
            return Notification(
                REMOVE, arena, position, path=path, mtime_ns=mtime_ns, old_hash=old_hash
            )
        return Notification(
            REPLACE,
            arena,
            position,
            path=path,
            size=size,
            mtime_ns=now_mtime,
            hash=now_hash,
            old_hash=old_hash,
        )
    if kind == REMOVE:
        return Notification(
            REMOVE, arena, position, path=path, mtime_ns=mtime_ns, old_hash=old_hash
        )
    return Notification(DROP, arena, position, path=path, old_hash=old_hash)


def _txn_history_after(
    cursor: sqlite3.Cursor, arena: ArenaName, position: int, limit: int
) -> tuple[list[Notification], int]:
    """
    Read history entries after a position, re-derived from the current
    index (DESIGN.md section 9): an Add or Replace carries the file's size,
    mtime and hash as they are now; a Replace of a file no longer in the
    index is a Remove (with the mtime and old hash of the Replace); an Add
    of a file no longer in the index is skipped; Remove and Drop are as
    recorded.

    @param position: the last position already read.
    @param limit: read at most this many entries (skipped ones count).
    @return: the notifications, and the last position read (C{position}
        if there was nothing after it).
    """
    rows = cursor.execute(
        "SELECT h.position, h.kind, h.path, h.old_hash, h.mtime_ns,"
        " f.path IS NOT NULL, f.size, f.mtime_ns, f.hash "
        "FROM history AS h LEFT JOIN file_index AS f ON f.path = h.path "
        "WHERE h.position > ? ORDER BY h.position LIMIT ?",
        (position, limit),
    ).fetchall()
    notes = []
    for row in rows:
        note = _replayed(arena, row)
        if note is not None:
            notes.append(note)
    return notes, (rows[-1][0] if rows else position)


def _txn_replay_after(
    cursor: sqlite3.Cursor, arena: ArenaName, position: int, limit: int
) -> tuple[list[Notification], int, Positions] | None:
    """
    L{_txn_history_after}, in the same transaction as the check that the
    history still reaches back to C{position} (trimming cannot slip in
    between).

    @return: the notifications, the last position read and the positions
        held; or C{None} if entries after C{position} were trimmed away or
        C{position} is beyond the last one (the subscriber needs a
        catch-up).
    """
    positions = _txn_positions(cursor)
    if not positions.can_replay_after(position):
        return None
    notes, last = _txn_history_after(cursor, arena, position, limit)
    return notes, last, positions


def _txn_history_count(cursor: sqlite3.Cursor) -> int:
    """
    @return: how many entries the history holds.
    """
    (count,) = cursor.execute("SELECT count(*) FROM history").fetchone()
    return int(count)


# -- subscribers and trimming ---------------------------------------------


def _txn_acknowledge(cursor: sqlite3.Cursor, peer: str, position: int) -> None:
    """
    Remember that a peer applied this history up to a position (only ever
    raised: an older acknowledgement is ignored).
    """
    cursor.execute(
        "INSERT INTO acknowledgement (peer, position) VALUES (?, ?) "
        "ON CONFLICT (peer) DO UPDATE SET position = "
        "max(position, excluded.position)",
        (peer, position),
    )


def _txn_acknowledgements(cursor: sqlite3.Cursor) -> dict[str, int]:
    """
    @return: the position each peer acknowledged.
    """
    rows = cursor.execute("SELECT peer, position FROM acknowledgement")
    return {str(peer): int(position) for peer, position in rows}


def _txn_trim(
    cursor: sqlite3.Cursor,
    peers: Iterable[str],
    max_entries: int,
    oldest_ns: int,
    limit: int = TRIM_BATCH,
) -> int:
    """
    Drop the oldest history entries (#trimhistory): those every peer
    acknowledged, those beyond the newest C{max_entries}, and those
    recorded before C{oldest_ns}.  Only a prefix of the history is ever
    dropped, so positions held stay contiguous; the highest position
    dropped is remembered (L{_txn_positions}).

    @param peers: the peers that may subscribe (the arena's ACL); with
        none, no entry is kept for acknowledgements' sake.
    @param max_entries: keep at most this many entries.
    @param oldest_ns: drop entries recorded before this time (ns since the
        epoch).
    @param limit: drop at most this many entries in this transaction.
    @return: how many entries were dropped (C{limit} means there may be
        more to drop).
    """
    positions = _txn_positions(cursor)
    trimmed, last = positions.first - 1, positions.last
    acks = _txn_acknowledgements(cursor)
    acked = min((acks.get(peer, 0) for peer in peers), default=last)
    through = max(acked, last - max_entries)
    row = cursor.execute(
        "SELECT position FROM history WHERE position > ? AND time_ns >= ? "
        "ORDER BY position LIMIT 1",
        (trimmed, oldest_ns),
    ).fetchone()
    through = max(through, last if row is None else row[0] - 1)
    through = min(through, last, trimmed + limit)
    if through <= trimmed:
        return 0
    cursor.execute("DELETE FROM history WHERE position <= ?", (through,))
    dropped = cursor.rowcount
    _txn_set_setting(cursor, _TRIMMED, str(through))
    return max(0, dropped)


# -- the async facade ------------------------------------------------------


class Interactions(Protocol):
    """
    What L{ArenaIndex} needs of its pool: an L{adbapi.ConnectionPool}, or a
    synchronous stand-in in tests.
    """

    def runInteraction(
        self, interaction: Callable[..., T], *args: Any, **kwargs: Any
    ) -> Deferred[T]: ...

    def close(self) -> None: ...


#: Told of what was just recorded: C{listener(index, notifications)}.
RecordListener = Callable[["ArenaIndex", list[Notification]], None]


@define(eq=False)
class ArenaIndex:
    """
    The index and history of one arena, over its db's pool: the
    transactions of this module as Deferred-returning methods.  Each method
    that records calls the listeners with what it recorded, in the reactor
    thread, in order.

    @ivar arena: the arena.
    @ivar path: the db file (for read-only readers, L{realize.storage.pool}).
    @ivar pool: the writer pool.
    @ivar clock: gives the time of entries (for C{max_age}).
    @ivar uuid: the store uuid.
    @ivar listeners: called after each recording transaction that recorded
        something.
    """

    log = Logger(namespace="realize.history")

    arena: ArenaName
    path: str
    pool: Interactions
    clock: IReactorTime
    uuid: str
    listeners: list[RecordListener] = field(factory=list)
    closed: bool = field(default=False, init=False)

    @classmethod
    async def open(
        cls, arena: ArenaName, path: str, pool: Interactions, clock: IReactorTime
    ) -> ArenaIndex:
        """
        Open the index over a pool (its first interaction upgrades the
        schema, L{realize.storage.pool.open_pool}).

        @raise realize.storage.schema.SchemaTooNew: if the db is newer than
            this code (the pool is closed).
        @raise sqlite3.Error: if it cannot be opened (the pool is closed).
        """
        try:
            uuid = await pool.runInteraction(_txn_store_uuid)
        except BaseException:
            pool.close()
            raise
        return cls(arena, path, pool, clock, uuid)

    def close(self) -> None:
        """
        Close the pool (after its queued transactions); a second call does
        nothing.
        """
        if not self.closed:
            self.closed = True
            self.pool.close()

    def now_ns(self) -> int:
        """
        @return: the clock's time in ns since the epoch.
        """
        return int(self.clock.seconds() * 1e9)

    def _told(self, notes: list[Notification]) -> list[Notification]:
        if notes:
            for listener in list(self.listeners):
                try:
                    listener(self, notes)
                except Exception:
                    self.log.failure(
                        "arena {arena}: history listener failed", arena=self.arena
                    )
        return notes

    async def record_unhashed(
        self,
        files: Sequence[tuple[str, int, int]],
        seen: Mapping[str, bytes | None] | None = None,
    ) -> list[Notification]:
        """
        L{_txn_record_unhashed}: files seen, not hashed yet.

        @param files: C{(path, size, mtime_ns)}.
        @param seen: the origins found when new files appeared
            (L{origins}), by path.
        @return: the entries recorded.
        """
        if not files:
            return []
        notes = await self.pool.runInteraction(
            _txn_record_unhashed, self.arena, list(files), self.now_ns(), seen
        )
        return self._told(notes)

    async def record_versions(
        self,
        versions: Sequence[Version],
        seen: Mapping[str, bytes | None] | None = None,
    ) -> list[Notification]:
        """
        L{_txn_record_versions}: hashed files.

        @param seen: as for L{record_unhashed}.
        @return: the entries recorded.
        """
        if not versions:
            return []
        notes = await self.pool.runInteraction(
            _txn_record_versions, self.arena, list(versions), self.now_ns(), seen
        )
        return self._told(notes)

    async def origins(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        """
        The versions that files just made in the datadir would replace:
        for each path the index does not hold, the Unreal's default hash
        now (C{None}: none).  Asked when a file appears (an overlay's
        copy-up) and given to L{record_versions} later, so that its
        Replace names the version the copy-up read even if a peer's
        Replace arrived in between (docs/real.md).

        @param paths: paths in the datadir.
        @return: by path, for those the index does not hold.
        """
        return await self.pool.runInteraction(_txn_origins, list(paths))

    async def record_removals(
        self, removals: Sequence[tuple[str, int]]
    ) -> list[Notification]:
        """
        L{_txn_record_removals}: files gone.

        @param removals: C{(path, mtime_ns)} by the #unlinktime rule.
        @return: the entries recorded.
        """
        if not removals:
            return []
        notes = await self.pool.runInteraction(
            _txn_record_removals, self.arena, list(removals), self.now_ns()
        )
        return self._told(notes)

    async def record_drops(self, paths: Sequence[str]) -> list[Notification]:
        """
        L{_txn_record_drops}: local copies unrealized.

        @return: the entries recorded.
        """
        if not paths:
            return []
        notes = await self.pool.runInteraction(
            _txn_record_drops, self.arena, list(paths), self.now_ns()
        )
        return self._told(notes)

    async def record_with(
        self, interaction: Callable[..., list[Notification]], *args: Any
    ) -> list[Notification]:
        """
        Run a recording transaction of another module (called as
        C{interaction(cursor, arena, *args, now_ns)}; e.g.
        L{realize.storage.whiteouts._txn_record_hidden}) and tell the
        listeners what it recorded.

        @return: the entries recorded.
        """
        notes = await self.pool.runInteraction(
            interaction, self.arena, *args, self.now_ns()
        )
        return self._told(notes)

    async def lookup(self, paths: Sequence[str]) -> dict[str, IndexEntry]:
        """
        @return: the index entries of the paths it holds.
        """
        return await self.pool.runInteraction(_txn_lookup, list(paths))

    async def history_after(
        self, position: int, limit: int
    ) -> tuple[list[Notification], int]:
        """
        L{_txn_history_after}: entries after C{position}, re-derived.

        @return: the notifications and the last position read.
        """
        return await self.pool.runInteraction(
            _txn_history_after, self.arena, position, limit
        )

    async def replay_after(
        self, position: int, limit: int
    ) -> tuple[list[Notification], int, Positions] | None:
        """
        L{_txn_replay_after}: entries after C{position}, re-derived, or
        C{None} if the history no longer reaches back to it.
        """
        return await self.pool.runInteraction(
            _txn_replay_after, self.arena, position, limit
        )

    async def index_after(
        self, after: str | None, limit: int, prefix: str = ""
    ) -> list[IndexEntry]:
        """
        L{_txn_index_after}: a page of the index in path order.
        """
        return await self.pool.runInteraction(_txn_index_after, after, limit, prefix)

    async def catchup_page(
        self, after: str | None, limit: int, position: int
    ) -> list[Notification]:
        """
        A page of the index as C{catchup} notifications.

        @param after: the last path of the previous page, or C{None}.
        @param limit: at most this many.
        @param position: the position they carry (the history's last one
            when the catch-up started).
        """
        entries = await self.index_after(after, limit)
        return [
            Notification(
                CATCHUP,
                self.arena,
                position,
                path=e.path,
                size=e.size,
                mtime_ns=e.mtime_ns,
                hash=e.hash,
            )
            for e in entries
        ]

    async def positions(self) -> Positions:
        """
        L{_txn_positions}.
        """
        return await self.pool.runInteraction(_txn_positions)

    async def count(self) -> int:
        """
        @return: how many entries the history holds.
        """
        return await self.pool.runInteraction(_txn_history_count)

    async def stats(self) -> tuple[int, int]:
        """
        @return: C{(files, bytes)} of the index.
        """
        return await self.pool.runInteraction(_txn_index_stats)

    async def acknowledge(self, peer: PeerId, position: int) -> None:
        """
        L{_txn_acknowledge}.
        """
        await self.pool.runInteraction(_txn_acknowledge, peer, position)

    async def acknowledgements(self) -> dict[str, int]:
        """
        L{_txn_acknowledgements}.
        """
        return await self.pool.runInteraction(_txn_acknowledgements)

    async def trim(
        self, peers: Iterable[str], max_entries: int, max_age_s: float
    ) -> int:
        """
        Trim the history (L{_txn_trim}) until nothing more is due, a batch
        of L{TRIM_BATCH} entries per transaction.

        @param peers: the arena's ACL peers.
        @param max_entries: keep at most this many entries.
        @param max_age_s: drop entries older than this many seconds.
        @return: how many entries were dropped.
        """
        peers = list(peers)
        oldest = self.now_ns() - int(max_age_s * 1e9)
        total = 0
        while True:
            dropped = await self.pool.runInteraction(
                _txn_trim, peers, max_entries, oldest, TRIM_BATCH
            )
            total += dropped
            if dropped < TRIM_BATCH:
                return total
