"""
Arena identity for C{realize-move} (issue 9 item 6): every arena store has
a uuid (made once with its db, DESIGN.md section 9), so a move of an arena
onto itself under two names (a local directory and a daemon on this
machine serving the same datadir) is refused by comparing the uuids, the
way rsync could not (rsync #359 destroyed data exactly that way).

A side without a db (a directory never served by a daemon) has no uuid:
such a move is not refused on this ground (the resolved paths are
compared too, L{realize.tap.move}).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from realize.config import Config
from realize.errors import NotFound, RealizeError
from realize.interfaces import Store
from realize.model import ArenaName
from realize.net.client import RemoteStore
from realize.net.history import RemoteHistory

__all__ = ["arena_uuid", "local_uuid"]

#: The arena db's name in a workdir (L{realize.services.history.DB_NAME}).
ARENA_DB = "arena.db"


def local_uuid(workdir: Path) -> str | None:
    """
    The store uuid of an arena db on this machine (blocking: a read-only
    look into C{workdir/arena.db}).

    @return: the uuid, or C{None} if there is no such db.
    """
    path = workdir / ARENA_DB
    if not path.is_file():
        return None
    # Imported here: a move from a directory without a db (most) need not
    # load the db code (~18 ms of start-up).
    from realize.storage.index import _txn_store_uuid
    from realize.storage.pool import open_reader

    try:
        connection = open_reader(path)
        try:
            return _txn_store_uuid(connection.cursor())
        finally:
            connection.close()
    except (sqlite3.Error, LookupError):
        return None


def default_workdir(datadir: str) -> Path:
    """
    @return: the workdir a config gives a datadir by default
        (C{<parent>/.<basename>.realize}, DESIGN.md section 3).
    """
    path = Path(os.path.abspath(datadir))
    return path.parent / f".{path.name}.realize"


async def arena_uuid(
    store: Store, peer: str, arena: ArenaName, config: Config | None
) -> str | None:
    """
    The uuid of one side's store of an arena.

    @param store: the side's store.
    @param peer: the side as given (C{local}, C{local:/path}, a peer id).
    @param config: the config, if any.
    @return: the uuid, or C{None} if that side has none.
    """
    if isinstance(store, RemoteStore):
        try:
            return await RemoteHistory(store.connection, store.describe()).arena_id(
                arena
            )
        except NotFound:
            return None
        except RealizeError:
            # A daemon without the history commands: nothing to compare.
            return None
    if peer.startswith("local:"):
        return local_uuid(default_workdir(peer[len("local:") :]))
    if config is not None and arena in config.arenas:
        return local_uuid(config.arenas[arena].workdir)
    return None
