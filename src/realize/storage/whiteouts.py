"""
Deletions made through an arena's overlay (DESIGN.md section 11,
docs/real.md): a file of another peer deleted through the overlay leaves
a whiteout in the datadir (or, beneath a directory deleted and made
again, an opaque directory), never a file of the index; the watcher
reports what they hide, and this module records it in the history as a
Remove whose old hash is the version the Unreal showed, so that a peer
that owns the file removes it (L{realize.storage.consensus}: a Remove of
the version it holds).

Schema upgrade 4 of C{arena.db} (L{create_whiteout_table}):
C{overlay_removed(path) -> (hash, position)}: each file hidden by a
whiteout or an opaque directory whose Remove was recorded, so that it is
recorded once, however often the datadir is scanned; the row goes when
the path is no longer hidden (a file was made there, the whiteout went).
A version the Unreal shows at a hidden path I{after} its Remove (another
peer edited it meanwhile) is not removed: that is a conflict, left
readable in the view.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from realize.model import REMOVE, ArenaName, Notification
from realize.storage.index import _append, prefix_range
from realize.storage.unrealpaths import default_version, files_beneath, unreal_root

__all__ = ["create_whiteout_table", "hidden_paths"]

Cursor = sqlite3.Cursor


def create_whiteout_table(cursor: Cursor) -> None:
    """
    Schema upgrade 4 of C{arena.db}: the C{overlay_removed} table.
    """
    cursor.execute(
        "CREATE TABLE overlay_removed ("
        " path TEXT PRIMARY KEY,"
        " hash BLOB,"
        " position INTEGER NOT NULL"
        ") WITHOUT ROWID"
    )


def hidden_paths(
    cursor: Cursor | sqlite3.Connection,
    root: int,
    whiteouts: Iterable[tuple[str, int]],
    opaques: Iterable[tuple[str, int]],
    present: Iterable[str],
) -> dict[str, int]:
    """
    The Unreal's files that the overlay hides.

    @param root: the arena root's inode.
    @param whiteouts: C{(path, mtime_ns)} of each whiteout (a file or a
        directory deleted).
    @param opaques: C{(directory, mtime_ns)} of each opaque directory.
    @param present: the real files (of the upper layer) beneath the
        opaque directories: those are not hidden, they replace.
    @return: the mtime of the Remove of each hidden file, by path.
    """
    real = set(present)
    hidden: dict[str, int] = {}
    for path, mtime_ns in whiteouts:
        for found in files_beneath(cursor, root, path):
            hidden.setdefault(found, mtime_ns)
    for path, mtime_ns in opaques:
        for found in files_beneath(cursor, root, path):
            if found != path and found not in real:
                hidden.setdefault(found, mtime_ns)
    return hidden


def _txn_record_hidden(
    cursor: Cursor,
    arena: ArenaName,
    whiteouts: Sequence[tuple[str, int]],
    opaques: Sequence[tuple[str, int]],
    present: Sequence[str],
    cleared: Sequence[str],
    scope: str | None,
    time_ns: int,
) -> list[Notification]:
    """
    Record the Removes of files hidden by whiteouts and opaque directories
    (each once), and forget those no longer hidden.

    @param whiteouts: see L{hidden_paths}.
    @param opaques: see L{hidden_paths}.
    @param present: see L{hidden_paths}.
    @param cleared: paths seen as something else than a whiteout (a file
        made over a whiteout, a path gone): their rows, and those beneath
        them, go unless they are hidden still.
    @param scope: a directory scanned whole (C{""}: the arena), or
        C{None}: the rows beneath it that are not hidden any more go.
    @param time_ns: now.
    @return: the Removes recorded (old hash: the Unreal's default version
        when it was hidden; the index is not changed).
    """
    root = unreal_root(cursor)
    if root is None:
        return []
    hidden = hidden_paths(cursor, root, whiteouts, opaques, present)
    stale: set[str] = set()
    # Nothing recorded as hidden (no overlay, or no deletion through it):
    # nothing to forget, no query per path (issue 15).
    anything = cursor.execute("SELECT 1 FROM overlay_removed LIMIT 1").fetchone()
    for prefix in [*cleared, *([] if scope is None else [scope])] if anything else []:
        low, high = prefix_range(prefix)
        rows = cursor.execute(
            "SELECT path FROM overlay_removed WHERE path = ? OR"
            " (path >= ? AND path < ?)",
            (prefix, low, high),
        )
        stale.update(str(row[0]) for row in rows if str(row[0]) not in hidden)
    cursor.executemany(
        "DELETE FROM overlay_removed WHERE path = ?", [(p,) for p in sorted(stale)]
    )
    notes = []
    for path in sorted(hidden):
        if cursor.execute(
            "SELECT 1 FROM overlay_removed WHERE path = ?", (path,)
        ).fetchone():
            continue
        if cursor.execute(
            "SELECT 1 FROM file_index WHERE path = ?", (path,)
        ).fetchone():
            # A real file here: the watcher's own Remove covers it.
            continue
        version = default_version(cursor, root, path)
        if version is None:
            continue
        digest = version[3]
        mtime_ns = hidden[path]
        position = _append(cursor, REMOVE, path, digest, mtime_ns, time_ns)
        cursor.execute(
            "INSERT INTO overlay_removed (path, hash, position) VALUES (?, ?, ?)",
            (path, digest, position),
        )
        notes.append(
            Notification(
                REMOVE, arena, position, path=path, mtime_ns=mtime_ns, old_hash=digest
            )
        )
    return notes
