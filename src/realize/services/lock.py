"""
Advisory locks on the local arena directories a move reads from.

Two C{realize-move} runs over one arena (a timer or a cron job firing
during a manual run is enough) would race: each lists the same files, and
one can delete at the source a file the other is still moving.  So a move
holds an exclusive C{flock(2)} on each local source arena directory
(C{--src local}: the datadir of each arena; C{--src local:/path}: that
directory) for as long as it runs.  A second run waits a little for the
lock (C{--wait}, default L{LOCK_WAIT} seconds: a run that is about to end
does not make it fail), then refuses, as C{flock -w} would in a cron line.

The lock belongs to the open directory: it goes when the process ends,
however it ends.  It is advisory: only movers take it; C{realized} and
other programs are not stopped by it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Mapping

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from realize.errors import Conflict
from realize.interfaces import RunInThread
from realize.model import ArenaName

__all__ = ["LOCK_POLL", "LOCK_WAIT", "SourceLocks"]

log = Logger(namespace="realize.move")

#: Seconds a move waits by default for another one to release a source.
LOCK_WAIT = 10.0

#: Seconds between two attempts to take a lock while waiting.
LOCK_POLL = 0.2


def _open_directory(path: str) -> int:
    """
    @return: a descriptor of the directory, not inherited by children.
    @raise OSError: if it cannot be opened.
    """
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _try_lock(fd: int) -> bool:
    """
    @return: whether the exclusive lock of C{fd} is now held (C{False} if
        another open file holds it).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@define(eq=False)
class SourceLocks:
    """
    The locks of the local directories a move reads from.

    @ivar clock: for the wait.
    @ivar run_in_thread: where the directories are opened and locked.
    @ivar waiting: told, once per directory, a message for the user when
        a move starts to wait for another.
    """

    clock: IReactorTime
    run_in_thread: RunInThread
    waiting: Callable[[str], None] = lambda message: None
    _held: list[int] = field(factory=list, init=False)

    async def acquire(self, directories: Mapping[ArenaName, str], wait: float) -> None:
        """
        Lock each directory, in the order of the arena names (two moves
        over the same arenas never each hold what the other waits for).

        A directory that cannot be opened is not locked: opening the side
        of the move says what is wrong with it.

        @param directories: arena name to its directory at the source.
        @param wait: seconds to wait in all for locks another process
            holds; 0 to refuse at once.
        @raise Conflict: a lock is still held by another process after
            C{wait} seconds; no lock is held then.
        @raise twisted.internet.defer.CancelledError: the wait was
            cancelled; no lock is held then.
        """
        deadline = self.clock.seconds() + wait
        try:
            for arena in sorted(directories):
                await self._acquire(arena, directories[arena], wait, deadline)
        except BaseException:
            self.release()
            raise

    async def _acquire(
        self, arena: ArenaName, directory: str, wait: float, deadline: float
    ) -> None:
        try:
            fd = await self.run_in_thread(_open_directory, directory)
        except OSError:
            return
        self._held.append(fd)
        announced = False
        while not await self.run_in_thread(_try_lock, fd):
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                raise Conflict(
                    f"another realize-move is moving from arena {arena!r} "
                    f"({directory}); still there after {wait:g} s, refused "
                    "(--wait DURATION waits longer)"
                )
            if not announced:
                log.warn(
                    "another realize-move is moving from arena {arena} "
                    "({directory}); waiting up to {wait} s",
                    arena=arena,
                    directory=directory,
                    wait=wait,
                )
                self.waiting(
                    f"another realize-move is moving from arena {arena!r} "
                    f"({directory}); waiting up to {wait:g} s"
                )
                announced = True
            await deferLater(self.clock, min(LOCK_POLL, remaining))

    def release(self) -> None:
        """
        Release every lock held (closing a directory descriptor does not
        block: done here, not in a thread).
        """
        held, self._held = self._held, []
        for fd in held:
            os.close(fd)
