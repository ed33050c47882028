"""
Making partial files final, durably, in groups (Finish, a verified Write,
WriteFiles).

L{commit_group} renames a group of partial files over their final names
with one C{syncfs(2)} per filesystem before and after the renames (one
C{fdatasync} and a directory C{fsync} for a group of one), so that the
data is on disk before the renames and the renames before it returns.
L{Committer} forms the groups from whatever requests arrive while a
commit is running, the way databases group commits.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from attrs import define, field
from twisted.internet.defer import Deferred

from realize.errors import BadRequest, RealizeError
from realize.interfaces import RunInThread
from realize.model import clamp_mtime, partial_name
from realize.storage.fs import O_READ, Filesystems, Stamp, open_regular
from realize.storage.paths import DirCache, not_found, not_regular

if TYPE_CHECKING:
    from realize.storage.arena import ArenaDir

__all__ = ["COMMIT_DIRS", "CommitItem", "Committer", "commit_group"]

#: Directories a commit group keeps open at most: it opens them to get the
#: files ready, and again to rename them after the flush, so it keeps
#: those of a whole batch (a WriteFiles of 1,024 files rarely spans more).
COMMIT_DIRS = 256


@define(eq=False)
class CommitItem:
    """
    A partial file to make final.

    @ivar arena_dir: its arena.
    @ivar path: its (final) path.
    @ivar mtime_ns: mtime to set, or C{None}.
    @ivar prepared: the partial was just written whole with its mtime
        (WriteFiles): it is renamed without being opened again.
    @ivar synced: a prepared partial whose data is already on disk.
    @ivar seen: set by the commit: the partial file as it found it (before
        setting its mtime), or C{None} if it was already final.
    """

    arena_dir: ArenaDir
    path: str
    mtime_ns: int | None = None
    prepared: bool = False
    synced: bool = False
    seen: Stamp | None = field(default=None, init=False)


def commit_group(
    items: list[CommitItem], dirs_of: DirCache | None = None
) -> list[BaseException | None]:
    """
    Make a group of partial files final, durably: data on disk before the
    renames, renames on disk before returning.

    One file: C{fdatasync} it, rename, C{fsync} the directory.  Several:
    C{syncfs} each filesystem, rename them all, C{syncfs} again.  A file
    that is already final (no partial, final present) is left alone (its
    mtime is set if asked).  Blocking: call from a thread.

    @param items: the files.
    @param dirs_of: the directories of the items' arena already open (a
        batch that just wrote them), to use rather than open them again;
        all items must then be of that arena, in directory order.
    @return: for each item, C{None} or the error that failed it.
    """
    alone = len(items) == 1
    results: list[BaseException | None] = [None] * len(items)
    ready: list[tuple[int, list[str]]] = []
    caches: dict[int, DirCache] = {}
    if dirs_of is not None and items:
        caches[id(items[0].arena_dir)] = dirs_of

    def dirs(item: CommitItem) -> DirCache:
        cache = caches.get(id(item.arena_dir))
        if cache is None:
            cache = caches[id(item.arena_dir)] = item.arena_dir.dirs(COMMIT_DIRS)
        return cache

    with Filesystems() as filesystems:
        try:
            added = None  # the directory last added to filesystems
            for index, segments in _by_directory(items, dirs_of is None):
                item = items[index]
                try:
                    if isinstance(segments, RealizeError):
                        raise segments
                    dir_fd = dirs(item).open(segments[:-1], item.path, create=False)
                    if _prepare(item, dir_fd, segments[-1], alone):
                        if added != (item.arena_dir, segments[:-1]):
                            filesystems.add(dir_fd)
                            added = (item.arena_dir, segments[:-1])
                        ready.append((index, segments))
                except (RealizeError, OverflowError, ValueError) as e:
                    results[index] = _error(item, e)
                except OSError as e:
                    results[index] = item.arena_dir.error(e, item.path)
            if not ready:
                return results
            if not alone:
                filesystems.sync()
            for index, segments in ready:
                item = items[index]
                try:
                    dir_fd = dirs(item).open(segments[:-1], item.path, create=False)
                    name = segments[-1]
                    os.rename(
                        partial_name(name), name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd
                    )
                    if alone:
                        os.fsync(dir_fd)
                except RealizeError as e:
                    results[index] = e
                except OSError as e:
                    results[index] = item.arena_dir.error(e, item.path)
            if not alone:
                filesystems.sync()
        except OSError as e:
            for index, _ in ready:
                if results[index] is None:
                    results[index] = items[index].arena_dir.error(e, items[index].path)
        finally:
            for cache in caches.values():
                if cache is not dirs_of:
                    cache.close()
    return results


def _by_directory(
    items: list[CommitItem], sort: bool
) -> list[tuple[int, list[str] | RealizeError]]:
    """
    The items' indices and segments (or errors), ordered by arena and
    directory: a group opens each directory once.

    @param sort: C{False} if they are in that order already.
    """
    checked: list[tuple[int, list[str] | RealizeError]] = []
    for index, item in enumerate(items):
        try:
            # A prepared item's path was checked when it was written.
            segments = (
                item.path.split("/")
                if item.prepared
                else item.arena_dir.segments(item.path)
            )
        except RealizeError as e:
            checked.append((index, e))
        else:
            checked.append((index, segments))

    def key(entry: tuple[int, list[str] | RealizeError]) -> tuple[object, ...]:
        index, segments = entry
        if isinstance(segments, RealizeError):
            return (0,)
        return (1, id(items[index].arena_dir), *segments[:-1])

    if sort:
        checked.sort(key=key)
    return checked


def _error(item: CommitItem, e: Exception) -> BaseException:
    if isinstance(e, RealizeError):
        return e
    return BadRequest(f"path {item.path!r}: {e}")  # an mtime out of range


def _prepare(item: CommitItem, dir_fd: int, name: str, alone: bool) -> bool:
    """
    Get a partial file ready to be renamed: set its mtime, flush it if it
    is alone.

    @return: whether to rename it (C{False}: it was already final).
    @raise NotFound: if there is neither a partial nor a final file.
    """
    if item.prepared:
        if alone and not item.synced:
            fd, _ = open_regular(partial_name(name), dir_fd, O_READ)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        return True
    try:
        fd, st = open_regular(partial_name(name), dir_fd, O_READ)
    except FileNotFoundError:
        _finish_final(item, dir_fd, name)
        return False
    try:
        item.seen = Stamp.of(st)
        if item.mtime_ns is not None:
            os.utime(fd, ns=(item.mtime_ns, item.mtime_ns))
        if alone:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    return True


def _finish_final(item: CommitItem, dir_fd: int, name: str) -> None:
    """
    Finish of a file with no partial: fine if the final file exists (its
    mtime is set if asked), else L{NotFound}.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise not_found(item.arena_dir.name, item.path) from None
    if not stat.S_ISREG(st.st_mode):
        raise not_regular(item.arena_dir.name, item.path)
    if item.mtime_ns is not None and clamp_mtime(st.st_mtime_ns) != item.mtime_ns:
        os.utime(
            name,
            ns=(item.mtime_ns, item.mtime_ns),
            dir_fd=dir_fd,
            follow_symlinks=False,
        )


@define(eq=False)
class Committer:
    """
    Group commit of finished files (as databases group commits): while one
    L{commit_group} runs in a thread, new requests wait and then go
    together in the next one, so N concurrent finishes cost far fewer than
    N flushes, and a lone finish waits for nobody.  The files of one
    request (a WriteFiles batch) always go in the same group.

    @ivar run_in_thread: runs the blocking commit.
    """

    run_in_thread: RunInThread
    _queue: list[tuple[list[CommitItem], Deferred[list[BaseException | None]]]] = field(
        factory=list
    )
    _running: bool = False

    def commit(self, item: CommitItem) -> Deferred[None]:
        """
        Make a partial file final, durably.

        @param item: the file.
        @return: a Deferred that fires with C{None} once the file is final
            on disk, or fails with the file's error.
        """

        def one(results: list[BaseException | None]) -> None:
            [error] = results
            if error is not None:
                raise error

        return self.commit_all([item]).addCallback(one)

    def commit_all(
        self, items: list[CommitItem]
    ) -> Deferred[list[BaseException | None]]:
        """
        Make partial files final, durably, in one group.

        @param items: the files.
        @return: a Deferred that fires once they are final on disk with,
            per file, C{None} or its error; or fails if the commit itself
            failed.
        """
        d: Deferred[list[BaseException | None]] = Deferred()
        if not items:
            d.callback([])
            return d
        self._queue.append((items, d))
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        requests, self._queue = self._queue, []
        self._running = True
        items = [item for request, _ in requests for item in request]
        self.run_in_thread(commit_group, items).addBoth(self._done, requests)

    def _done(
        self,
        results: list[BaseException | None] | Any,
        requests: list[tuple[list[CommitItem], Deferred[list[BaseException | None]]]],
    ) -> None:
        self._running = False
        if self._queue:
            self._start()
        offset = 0
        for items, d in requests:
            if isinstance(results, list):
                d.callback(results[offset : offset + len(items)])
                offset += len(items)
            else:  # the whole commit failed (a Failure)
                d.errback(results.value)
