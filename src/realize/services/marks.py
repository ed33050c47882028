"""
Marks set from both sides (DESIGN.md section 11, #marksxattrs): on the
FUSE view (C{setfattr -n user.realize.mark -v own DIR}, through
L{realize.services.unreal.UnrealBackend}) and on the real files and
directories of a datadir (the watcher's C{IN_ATTRIB}, and a walk at
start).  A path has one mark, kept in the arena db
(L{realize.storage.marks}); the last one set wins.

Both sides show it: a mark set on the view is also written onto the real
file or directory of that path when there is one (and onto the real
directories a realize makes), so C{getfattr} on either shows it.  A mark
found on a real entry (at start, or when its attributes change) is set in
the db; an attribute removed from a real entry removes the mark.  At
start, marks the db has and the disk has not stay (the view may have set
them on paths with no real entry).  A real entry whose attribute is not a
mark is logged and ignored (the kernel accepted it; only the view can
refuse it with C{EINVAL}).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from realize.errors import BadRequest, NotFound, RealizeError
from realize.errors import describe as describe_error
from realize.interfaces import RunInThread
from realize.model import ArenaName
from realize.storage.arena import ArenaDir
from realize.storage.consensus import _txn_change_mark, _txn_set_found_marks
from realize.storage.marks import SOURCE_REAL, SOURCE_VIEW, mark_at
from realize.storage.realfiles import read_real_mark, walk_real_marks, write_real_mark

__all__ = ["MarkKeeper", "MarkedArena"]

log = Logger(namespace="realize.marks")


class MarkedArena(Protocol):
    """
    What marks need of an arena (L{realize.services.consensus.ArenaConsensus}
    has it).
    """

    @property
    def root(self) -> int: ...

    @property
    def run_interaction(self) -> Callable[..., Deferred[Any]]: ...

    @property
    def datadir(self) -> ArenaDir | None: ...


@define(eq=False)
class MarkKeeper:
    """
    Sets marks, from the view and from real files.

    @ivar arenas: the arenas by name (shared with the consensus service).
    @ivar run_io: file I/O threads.
    @ivar changed: called when paths were queued (the consensus looks).
    """

    arenas: Mapping[ArenaName, MarkedArena]
    run_io: RunInThread
    changed: Callable[[], None]

    async def set_mark(
        self, arena: ArenaName, path: str, mark: str | None, source: str = SOURCE_VIEW
    ) -> None:
        """
        Set or remove the mark of a path (the FUSE view's C{setfattr}, or a
        real file's attribute).  Set on the view, it is also written onto
        the real file or directory of that path if there is one, so that
        C{getfattr} shows it on either side.

        @param mark: C{own}, C{keep}, C{watch}, or C{None} to remove it.
        @raise NotFound: if the arena is not one of these.
        @raise BadRequest: for another value.
        """
        parts = self.arenas.get(arena)
        if parts is None:
            raise NotFound(f"arena {arena!r} is not configured here")
        queued = await parts.run_interaction(
            _txn_change_mark, parts.root, path, mark, source, time.time_ns()
        )
        log.info(
            "arena {arena}: mark of {path} {change} ({source})",
            arena=arena,
            path=path or ".",
            change="removed" if mark is None else f"set to {mark}",
            source=source,
            mark=mark,
            queued=queued,
        )
        if source == SOURCE_VIEW and parts.datadir is not None:
            try:
                await self.run_io(write_real_mark, parts.datadir.directory, path, mark)
            except RealizeError as e:
                log.warn(
                    "arena {arena}: cannot write the mark of {path} on the real "
                    "file: {error}",
                    arena=arena,
                    path=path,
                    error=describe_error(e),
                )
        if queued:
            self.changed()

    def attributes_changed(self, arena: ArenaName, path: str) -> None:
        """
        The watcher saw the attributes of a real file or directory change
        (C{IN_ATTRIB}): its mark is read again and set, updated or removed.
        """
        Deferred.fromCoroutine(self._attributes_changed(arena, path)).addErrback(
            lambda f: log.failure(
                "arena {arena}: reading the mark of {path} failed",
                f,
                arena=arena,
                path=path,
            )
        )

    async def _attributes_changed(self, arena: ArenaName, path: str) -> None:
        parts = self.arenas.get(arena)
        if parts is None or parts.datadir is None:
            return
        try:
            exists, mark = await self.run_io(
                read_real_mark, parts.datadir.directory, path
            )
        except BadRequest as e:
            log.warn(
                "arena {arena}: {path}: user.realize.mark ignored: {error}",
                arena=arena,
                path=path or ".",
                error=str(e),
            )
            return
        if not exists:
            return
        current = await parts.run_interaction(mark_at, path)
        if current != mark:
            await self.set_mark(arena, path, mark, SOURCE_REAL)

    async def catch_up(self, name: ArenaName) -> None:
        """
        Set the marks found on the real files and directories of an
        arena's datadir (those the db has and the disk has not stay:
        #marksxattrs).
        """
        arena = self.arenas.get(name)
        if arena is None or arena.datadir is None:
            return
        try:
            found, bad = await self.run_io(
                walk_real_marks, arena.datadir.directory, arena.datadir.exclude
            )
            for path, error in bad:
                log.warn(
                    "arena {arena}: {path}: user.realize.mark ignored: {error}",
                    arena=name,
                    path=path or ".",
                    error=error,
                )
            await arena.run_interaction(
                _txn_set_found_marks, arena.root, found, time.time_ns()
            )
        except Exception:
            log.failure("arena {arena}: cannot read the real marks", arena=name)
