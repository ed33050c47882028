"""
Connections to an arena db (C{workdir/arena.db}): one writer through an
C{adbapi} pool, any number of read-only readers in other threads (DESIGN.md
section 9, STYLE.md practice 23).

The writer is an L{adbapi.ConnectionPool} with exactly one connection
(C{cp_min=1, cp_max=1}) and so one thread: every transaction of the db runs
there, in order, and none blocks the reactor.  Its connection is set up by
L{configure} (WAL journal, C{synchronous=NORMAL}, foreign keys, a busy
timeout) and the schema is brought up to date (L{realize.storage.schema})
when it is first opened, in that thread.

Readers (the FUSE threads, the watcher's catch-up scan) open their own
connection with L{open_reader}: read-only (C{mode=ro}), so that a bug in a
reader cannot write, and WAL lets them read while the writer writes.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from typing import Any

from twisted.enterprise import adbapi

from realize.storage.schema import upgrade

__all__ = ["BUSY_TIMEOUT_MS", "configure", "open_pool", "open_reader"]

#: How long a connection waits for another one's lock before failing with
#: C{database is locked}, in milliseconds.
BUSY_TIMEOUT_MS = 10_000


def configure(connection: sqlite3.Connection, *, readonly: bool = False) -> None:
    """
    Set the pragmas of a new connection.

    @param connection: a connection just opened.
    @param readonly: whether it is a reader (no journal mode change, and
        C{query_only} on).
    """
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    connection.execute("PRAGMA foreign_keys = ON")
    if readonly:
        connection.execute("PRAGMA query_only = ON")
    else:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")


def _open_writer(path: str) -> Any:
    def openfun(connection: sqlite3.Connection) -> None:
        try:
            configure(connection)
            upgrade(connection, path)
        except BaseException:
            # adbapi keeps no reference to a connection whose openfun
            # failed: close it here, or its file descriptors leak.
            connection.close()
            raise

    return openfun


def _reader_uri(path: str) -> str:
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"


def open_pool(
    path: str | os.PathLike[str], *, reactor: Any, readonly: bool = False
) -> adbapi.ConnectionPool:
    """
    Make the pool of an arena db.  Nothing is opened until its first
    interaction, which runs the schema upgrade first: await one (e.g.
    L{realize.storage.index.ArenaIndex.open} reads the store uuid) to learn
    whether the db could be opened.

    @param path: the db file; created (with its schema) if absent, unless
        C{readonly}.
    @param reactor: the reactor whose thread pool machinery runs the pool.
    @param readonly: open it read-only (C{mode=ro}), without upgrading it:
        for a process that only reads another's db (C{realize-history
        --peer local}).
    @return: the pool; call its C{close()} when done.  Its first interaction
        fails with L{realize.storage.schema.SchemaTooNew} if the db is
        newer than this code, with C{sqlite3.Error} if it cannot be
        opened.
    """
    name = os.fspath(path)
    if readonly:
        return adbapi.ConnectionPool(
            "sqlite3",
            _reader_uri(name),
            uri=True,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=lambda c: configure(c, readonly=True),
            cp_reactor=reactor,
        )
    return adbapi.ConnectionPool(
        "sqlite3",
        name,
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_openfun=_open_writer(name),
        cp_reactor=reactor,
    )


def open_reader(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """
    Open a read-only connection to an arena db, for one thread (blocking).

    Transactions are explicit: run C{BEGIN} before several statements that
    must see one snapshot, and C{COMMIT} (or C{ROLLBACK}) after, so that the
    writer's WAL can be checkpointed.

    @param path: the db file, which must exist.
    @return: the connection (C{isolation_level=None}).
    @raise sqlite3.OperationalError: if the db cannot be opened.
    """
    connection = sqlite3.connect(
        _reader_uri(os.fspath(path)),
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        configure(connection, readonly=True)
    except BaseException:
        connection.close()
        raise
    return connection
