"""
The schema of an arena db (C{workdir/arena.db}, DESIGN.md sections 9 and
10), and its upgrades.

The schema version is C{PRAGMA user_version}: 0 for an empty db, C{n}
once the first C{n} entries of L{UPGRADES} ran.  An upgrade is a plain
function of a cursor; L{upgrade} runs the missing ones in order, each in
its own transaction together with the new version number, so a crash in
the middle leaves the db at the last complete version.  A db whose version
is above C{len(UPGRADES)} was written by newer code: it is refused with
L{SchemaTooNew}, never changed.

Upgrade 1 (the history, L{realize.storage.index}):

    - C{settings(key TEXT PRIMARY KEY, value TEXT)}: C{uuid} (the store
      uuid, C{uuid4().hex}, made once when the db is created) and
      C{trimmed_through} (the highest history position trimmed away, 0 at
      first: positions up to it are no longer available).
    - C{file_index(path TEXT PRIMARY KEY, size, mtime_ns, hash BLOB NULL,
      position)}: every file of the datadir; C{hash} is C{NULL} while the
      file was seen but not hashed ("no version", #musthash); C{position}
      is the history position of its last change.
    - C{history(position INTEGER PRIMARY KEY AUTOINCREMENT, kind, path,
      old_hash BLOB NULL, mtime_ns, time_ns)}: the entries; C{AUTOINCREMENT}
      so that a position is never reused, even after trimming; C{mtime_ns}
      is the file's mtime at the change (for a Remove, the #unlinktime
      mtime); C{time_ns} is when the entry was recorded (for C{max_age}).
    - C{acknowledgement(peer TEXT PRIMARY KEY, position)}: the position up
      to which each peer applied this store's history (for trimming).

Upgrade 2: the Unreal's cache tables (L{realize.storage.unreal}).

Upgrade 3: the marks, the queue of dirty paths and the consensus events
(L{realize.storage.consensus}).

Later upgrades append to L{UPGRADES}; they never change an earlier one.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable

from realize.errors import ConfigError
from realize.storage.consensus import create_consensus_tables
from realize.storage.unreal import create_unreal_tables
from realize.storage.whiteouts import create_whiteout_table

__all__ = ["UPGRADES", "SchemaTooNew", "schema_version", "upgrade"]

#: A schema upgrade: runs inside a transaction on a cursor of the db.
Upgrade = Callable[[sqlite3.Cursor], None]


class SchemaTooNew(ConfigError):
    """
    An arena db was written by a newer version of realize than this one:
    its schema version is above the highest this code knows.  The db is
    left as it is.
    """

    def __init__(self, source: str, found: int, known: int) -> None:
        super().__init__(
            f"{source}: database schema version {found} is newer than this "
            f"realize supports ({known}); upgrade realize or use another workdir"
        )
        self.source = source
        self.found = found
        self.known = known


def _upgrade_1_history(cursor: sqlite3.Cursor) -> None:
    """
    Version 1: settings (with the store uuid), the index, the history and
    the acknowledgements of subscribers.
    """
    cursor.execute(
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) "
        "WITHOUT ROWID"
    )
    cursor.executemany(
        "INSERT INTO settings (key, value) VALUES (?, ?)",
        [("uuid", uuid.uuid4().hex), ("trimmed_through", "0")],
    )
    cursor.execute(
        "CREATE TABLE file_index ("
        " path TEXT PRIMARY KEY,"
        " size INTEGER NOT NULL,"
        " mtime_ns INTEGER NOT NULL,"
        " hash BLOB,"
        " position INTEGER NOT NULL"
        ") WITHOUT ROWID"
    )
    cursor.execute(
        "CREATE TABLE history ("
        " position INTEGER PRIMARY KEY AUTOINCREMENT,"
        " kind TEXT NOT NULL,"
        " path TEXT NOT NULL,"
        " old_hash BLOB,"
        " mtime_ns INTEGER,"
        " time_ns INTEGER NOT NULL"
        ")"
    )
    cursor.execute(
        "CREATE TABLE acknowledgement ("
        " peer TEXT PRIMARY KEY,"
        " position INTEGER NOT NULL"
        ") WITHOUT ROWID"
    )


#: The upgrades, in order: C{UPGRADES[i]} takes a db from version C{i} to
#: C{i + 1}.  Other modules append theirs (the Unreal's cache tables are
#: version 2, the marks and consensus queue version 3, the deletions
#: made through an overlay version 4) at import time,
#: before any db is opened.
UPGRADES: list[Upgrade] = [
    _upgrade_1_history,
    create_unreal_tables,
    create_consensus_tables,
    create_whiteout_table,
]


def schema_version(connection: sqlite3.Connection) -> int:
    """
    @param connection: an open db.
    @return: its C{PRAGMA user_version}.
    """
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    return int(version)


def upgrade(
    connection: sqlite3.Connection,
    source: str,
    upgrades: list[Upgrade] | None = None,
) -> int:
    """
    Bring a db up to the newest schema (blocking: run it in the db's
    thread).

    Each missing upgrade runs in its own C{BEGIN IMMEDIATE} transaction,
    which also sets the new C{user_version}; the version is read again
    inside it, so two processes opening the same db at once upgrade it
    once.

    @param connection: the db, not inside a transaction.
    @param source: the db's file name, for messages.
    @param upgrades: the upgrades to apply (default L{UPGRADES}).
    @return: the schema version reached, C{len(upgrades)}.
    @raise SchemaTooNew: if the db's version is above C{len(upgrades)}.
    @raise sqlite3.Error: if an upgrade fails (that upgrade is rolled
        back; the earlier ones stay).
    """
    if upgrades is None:
        upgrades = UPGRADES
    known = len(upgrades)
    version = schema_version(connection)
    if version > known:
        raise SchemaTooNew(source, version, known)
    while version < known:
        cursor = connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            version = schema_version(connection)
            if version > known:
                raise SchemaTooNew(source, version, known)
            if version < known:
                upgrades[version](cursor)
                version += 1
                cursor.execute(f"PRAGMA user_version = {version:d}")
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            cursor.close()
    return version
