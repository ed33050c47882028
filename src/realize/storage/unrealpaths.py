"""
The Unreal's tree by path (DESIGN.md section 10): a path's entry, the
files beneath a directory and a file's default version, read from the
cache tables of an arena db on any connection or cursor (the writer's
transactions and read-only connections alike).

The cache tables know the arena root only by its inode, which the global
db gives; the Unreal stores it in the arena db's C{settings}
(L{UNREAL_ROOT}) when it opens the arena, so that the index's
transactions (the watcher's side, L{realize.storage.index}) can find the
version an overlay edit replaces without the global db.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from realize.errors import InvalidPath
from realize.model import KIND_DIR, KIND_FILE, check_path

__all__ = [
    "UNREAL_ROOT",
    "default_version",
    "files_beneath",
    "resolve",
    "set_unreal_root",
    "unreal_root",
]

Connection = sqlite3.Connection | sqlite3.Cursor

#: The C{settings} key of the arena root's inode.
UNREAL_ROOT: Final = "unreal.root"

#: The peer of a file's default row (L{realize.storage.unreal.DEFAULT}).
_DEFAULT: Final = ""


def resolve(connection: Connection, root: int, path: str) -> tuple[int, str] | None:
    """
    Find a path in the Unreal's tree.

    @param root: the arena root's inode.
    @param path: a path, or C{""} for the root.
    @return: C{(inode, kind)}, or C{None} if the tree has no such entry.
    """
    if not path:
        return root, KIND_DIR
    try:
        segments = check_path(path)
    except InvalidPath:
        return None
    inode, kind = root, KIND_DIR
    for segment in segments:
        if kind != KIND_DIR:
            return None
        row = connection.execute(
            "SELECT inode, kind FROM directory WHERE parent = ? AND name = ?",
            (inode, segment),
        ).fetchone()
        if row is None:
            return None
        inode, kind = int(row[0]), str(row[1])
    return inode, kind


def files_beneath(connection: Connection, root: int, path: str) -> list[str]:
    """
    @return: the files of the Unreal's tree at or beneath a path (the path
        itself if it is a file), with their paths.
    """
    return [found for _, found in walk_files(connection, root, path)]


def walk_files(connection: Connection, root: int, path: str) -> list[tuple[int, str]]:
    """
    The files of the Unreal's tree at or beneath a path (one recursive
    query over the C{directory} table).

    @return: C{(inode, path)} of each (the path itself if it is a file).
    """
    found = resolve(connection, root, path)
    if found is None:
        return []
    inode, kind = found
    if kind == KIND_FILE:
        return [(inode, path)]
    prefix = f"{path}/" if path else ""
    rows = connection.execute(
        "WITH RECURSIVE walk(inode, path, kind) AS ("
        " SELECT inode, ? || name, kind FROM directory WHERE parent = ?"
        " UNION ALL"
        " SELECT d.inode, walk.path || '/' || d.name, d.kind"
        " FROM directory d JOIN walk ON d.parent = walk.inode"
        " WHERE walk.kind = 'dir')"
        " SELECT inode, path FROM walk WHERE kind = 'file'",
        (prefix, inode),
    )
    return [(int(row[0]), str(row[1])) for row in rows]


def default_version(
    connection: Connection, root: int, path: str
) -> tuple[int, int, int, bytes | None] | None:
    """
    @return: C{(inode, size, mtime_ns, hash)} of a file's default row (the
        version the view shows), or C{None} if the tree has no such file.
    """
    found = resolve(connection, root, path)
    if found is None or found[1] != KIND_FILE:
        return None
    row = connection.execute(
        "SELECT size, mtime_ns, hash FROM file WHERE inode = ? AND peer = ?",
        (found[0], _DEFAULT),
    ).fetchone()
    if row is None:
        return None
    digest = None if row[2] is None else bytes(row[2])
    return found[0], int(row[0]), int(row[1]), digest


def unreal_root(connection: Connection) -> int | None:
    """
    @return: the arena root's inode as the Unreal stored it, or C{None}
        (no Unreal opened this db: nothing is known of other peers).
    """
    try:
        row = connection.execute(
            "SELECT value FROM settings WHERE key = ?", (UNREAL_ROOT,)
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else int(row[0])


def set_unreal_root(cursor: sqlite3.Cursor, root: int) -> None:
    """
    Store the arena root's inode (L{UNREAL_ROOT}).
    """
    cursor.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (UNREAL_ROOT, str(root)),
    )
