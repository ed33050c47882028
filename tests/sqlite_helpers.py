"""
A synchronous stand-in for an arena db's C{adbapi} pool, for tests that
run under C{SynchronousTestCase}: the same pragmas, schema upgrade and
commit/rollback per interaction as the real pool, on a real temporary
file, in the calling thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

from realize.storage.pool import configure
from realize.storage.schema import upgrade

T = TypeVar("T")


class SyncPool:
    """
    Runs interactions at once on one connection; commits after each, rolls
    back on error (as C{adbapi.ConnectionPool._runInteraction}).

    @ivar interactions: how many interactions ran.
    @ivar closed: whether L{close} was called.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.connection = sqlite3.connect(path, check_same_thread=False)
        configure(self.connection)
        upgrade(self.connection, path)
        self.interactions = 0
        self.closed = False

    def runInteraction(
        self, interaction: Callable[..., T], *args: Any, **kwargs: Any
    ) -> Deferred[T]:
        if self.closed:
            return fail(RuntimeError("pool closed"))
        self.interactions += 1
        cursor = self.connection.cursor()
        try:
            result = interaction(cursor, *args, **kwargs)
            cursor.close()
            self.connection.commit()
        except BaseException as e:
            self.connection.rollback()
            return fail(e)
        return succeed(result)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.connection.close()
