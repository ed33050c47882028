"""
Marks (DESIGN.md section 11): what this peer keeps of each path of an
arena, in the C{mark} table of the arena db (schema upgrade 3,
L{realize.storage.consensus.create_consensus_tables}).

    - C{mark(path TEXT PRIMARY KEY, mark, source, time_ns)}: a mark set on
      one path (a file or a directory; C{""} is the arena root), whether
      it was set on the FUSE view (C{view}) or found on a real file or
      directory of the datadir (C{real}), and when.

A path has one mark however it was set: the last one set wins.  The
I{effective} mark of a path is the nearest one up the tree (the path
itself, then its parent directories, then the arena root), or the arena's
default from the config (C{[[arena]] mark}) when none is set.  Marks are
kept by path, not by inode: a mark set on a directory stays when the
files in it come and go, and a mark found on a real file stays when the
file is unrealized into the cache.

The read functions take any connection (a FUSE thread's read-only one);
the C{_txn_*} functions run in the arena db's writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from typing import Final

from attrs import frozen

from realize.config import MARKS
from realize.errors import BadRequest
from realize.storage.unrealpaths import walk_files

__all__ = [
    "MARKS",
    "MARK_KEEP",
    "MARK_OWN",
    "MARK_WATCH",
    "ORIGIN_DEFAULT",
    "ORIGIN_INHERITED",
    "ORIGIN_SET",
    "SOURCE_REAL",
    "SOURCE_VIEW",
    "EffectiveMark",
    "all_marks",
    "ancestors",
    "create_mark_table",
    "effective_in",
    "effective_mark",
    "mark_at",
    "parse_mark",
    "protected_files",
]

Connection = sqlite3.Connection | sqlite3.Cursor

#: Keep a real copy in the datadir, following the peers' changes.
MARK_OWN: Final = "own"
#: Keep every version in the cache (downloaded in the background).
MARK_KEEP: Final = "keep"
#: Cache only what is read (the default).
MARK_WATCH: Final = "watch"

#: Where an effective mark comes from (L{EffectiveMark.origin}).
ORIGIN_SET: Final = "set"
ORIGIN_INHERITED: Final = "inherited"
ORIGIN_DEFAULT: Final = "default"

#: Where a mark was set (the C{source} column).
SOURCE_VIEW: Final = "view"
SOURCE_REAL: Final = "real"


def parse_mark(value: bytes | str) -> str:
    """
    Check the value of a C{user.realize.mark} attribute.

    @param value: the attribute's bytes (or text); surrounding whitespace
        and one trailing NUL (as some tools write) are ignored.
    @return: one of L{MARKS}.
    @raise BadRequest: for anything else.
    """
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"mark {value!r} is not UTF-8") from None
    else:
        text = value
    mark = text.rstrip("\0").strip()
    if mark not in MARKS:
        raise BadRequest(f"mark {text!r} is not one of {', '.join(MARKS)}")
    return mark


def ancestors(path: str) -> list[str]:
    """
    @param path: a path of an arena, or C{""} for its root.
    @return: the path and every directory above it, nearest first, the
        root (C{""}) last: C{"a/b/c"} gives C{["a/b/c", "a/b", "a", ""]}.
    """
    found = []
    while path:
        found.append(path)
        path = path.rpartition("/")[0]
    found.append("")
    return found


@frozen
class EffectiveMark:
    """
    The mark that applies to a path.

    @ivar mark: one of L{MARKS}.
    @ivar origin: L{ORIGIN_SET} (set on the path itself),
        L{ORIGIN_INHERITED} (set on a directory above it) or
        L{ORIGIN_DEFAULT} (none set: the arena's default).
    @ivar at: the path the mark is set on (C{""}: the arena root), or
        C{None} for the default.
    """

    mark: str
    origin: str
    at: str | None

    def describe(self) -> str:
        """
        @return: what C{user.realize.mark.effective} shows: C{own},
            C{own (inherited)} or C{watch (default)}.
        """
        if self.origin == ORIGIN_SET:
            return self.mark
        return f"{self.mark} ({self.origin})"


def effective_in(marks: Mapping[str, str], path: str, default: str) -> EffectiveMark:
    """
    The effective mark of a path, from marks already read.

    @param marks: marks by path (all of the arena's, or at least those of
        the path's ancestors).
    @param path: the path (C{""}: the arena root).
    @param default: the arena's default mark.
    """
    for index, candidate in enumerate(ancestors(path)):
        mark = marks.get(candidate)
        if mark is not None:
            return EffectiveMark(
                mark, ORIGIN_SET if index == 0 else ORIGIN_INHERITED, candidate
            )
    return EffectiveMark(default, ORIGIN_DEFAULT, None)


def create_mark_table(cursor: sqlite3.Cursor) -> None:
    """
    Create the C{mark} table (part of schema upgrade 3).
    """
    cursor.execute(
        "CREATE TABLE mark ("
        " path TEXT PRIMARY KEY,"
        " mark TEXT NOT NULL CHECK (mark IN ('own', 'keep', 'watch')),"
        " source TEXT NOT NULL,"
        " time_ns INTEGER NOT NULL"
        ") WITHOUT ROWID"
    )


def mark_at(connection: Connection, path: str) -> str | None:
    """
    @return: the mark set on this very path, or C{None}.
    """
    row = connection.execute("SELECT mark FROM mark WHERE path = ?", (path,)).fetchone()
    return None if row is None else str(row[0])


def marks_of(connection: Connection, paths: Iterable[str]) -> dict[str, str]:
    """
    @return: the marks set on these paths, by path.
    """
    wanted = list(dict.fromkeys(paths))
    found: dict[str, str] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        rows = connection.execute(
            f"SELECT path, mark FROM mark WHERE path IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        found.update((str(p), str(m)) for p, m in rows)
    return found


def all_marks(connection: Connection) -> dict[str, str]:
    """
    @return: every mark of the arena, by path.
    """
    return {
        str(p): str(m) for p, m in connection.execute("SELECT path, mark FROM mark")
    }


def effective_mark(connection: Connection, path: str, default: str) -> EffectiveMark:
    """
    The effective mark of a path (L{effective_in}), read from the db.
    """
    return effective_in(marks_of(connection, ancestors(path)), path, default)


def protected_files(
    connection: Connection, root: int, default: str, wanted: frozenset[str]
) -> dict[int, str]:
    """
    The files of an arena's Unreal tree whose effective mark is one of
    C{wanted} (the block cache protects those marked C{keep} or C{own}):
    one walk of the tree (L{realize.storage.unrealpaths.walk_files}), the
    marks applied in memory.  Nothing is walked when neither the default nor
    any mark set is wanted.

    @param connection: the arena db (any connection: this only reads).
    @param root: the arena's root inode in the Unreal tree.
    @param default: the arena's default mark.
    @param wanted: the marks looked for.
    @return: the effective mark of each such file, by inode.
    """
    marks = all_marks(connection)
    if default not in wanted and not wanted.intersection(marks.values()):
        return {}
    found: dict[int, str] = {}
    for inode, path in walk_files(connection, root, ""):
        mark = effective_in(marks, path, default).mark
        if mark in wanted:
            found[inode] = mark
    return found


def _txn_set_mark(
    cursor: sqlite3.Cursor, path: str, mark: str | None, source: str, now_ns: int
) -> bool:
    """
    Set or remove the mark of one path.

    @param mark: one of L{MARKS}, or C{None} to remove it.
    @param source: L{SOURCE_VIEW} or L{SOURCE_REAL}.
    @return: whether the mark changed.
    @raise BadRequest: for a value not in L{MARKS}.
    """
    old = mark_at(cursor, path)
    if mark is None:
        if old is None:
            return False
        cursor.execute("DELETE FROM mark WHERE path = ?", (path,))
        return True
    if mark not in MARKS:
        raise BadRequest(f"mark {mark!r} is not one of {', '.join(MARKS)}")
    cursor.execute(
        "INSERT INTO mark (path, mark, source, time_ns) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (path) DO UPDATE SET mark = excluded.mark,"
        " source = excluded.source, time_ns = excluded.time_ns",
        (path, mark, source, now_ns),
    )
    return old != mark
