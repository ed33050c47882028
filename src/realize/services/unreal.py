"""
The Unreal of a daemon (DESIGN.md section 10), glued together: each
arena's cache tables as the household feeds them (L{ArenaCache}), and the
FUSE backend that shows them (L{UnrealBackend}): metadata from sqlite in
the FUSE thread, data from the blob store in the FUSE thread when it is
there, from the downloader (in the reactor, through the bridge, with its
deadline) when it is not.

The read path (L{UnrealBackend.read}), in a FUSE thread, costs no
reactor round trip when the bytes are local: they come from the blob (a
range recorded there) or from the downloader's verified pieces not yet
written (L{Downloader.verified}); the reactor is then only told, without
waiting, once per piece of a file not complete, so that a sequential
reader keeps the read-ahead ahead (L{Downloader.advance} through
L{Bridge.post}).  Only bytes in neither place go through the bridge, with
the file's version read here (sqlite, in this thread) so that the
downloader does not look it up again.  A reader going through small
files (two misses within L{SMALL_STREAK}) gets the next ones of the
directory fetched with the one it reads, in one batch
(L{Downloader.prefetch}), and then served from memory.

What a notification batch changed reaches the rest (L{ArenaCache.apply}
returns it; L{UnrealBackend.applied} acts on it): outdated blobs join
the block cache's pending removal queue, reads waiting for a version
look again, and the kernel's caches of the entries concerned are
dropped.  With marks (issue 12), a batch also
queues, in its own transaction, the paths the consensus jobs must look at
(L{realize.storage.consensus._txn_apply_tracked}).

Marks on the view (DESIGN.md section 11): C{user.realize.mark} reads the
mark set on the entry's path (in the arena db, L{realize.storage.marks}),
C{user.realize.mark.effective} the one that applies; setting one calls
the consensus service's L{realize.services.marks.MarkKeeper.set_mark} in
the reactor (through the bridge), which also writes it onto the real file
or directory of that path if there is one.  C{user.realize.status} adds
what a consensus job does or did about the file (C{remote; realize:
download}, C{local; unrealize failed: ...; retry in 30 s}).

The block cache (L{realize.services.cache.BlobCache}) learns from the
backend which files are open (their blobs are not evicted), which cached
bytes are read (LRU, frequency) and the hits and misses.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, cast

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from realize.errors import (
    BadRequest,
    IOFailure,
    IsADirectory,
    NotADirectory,
    NotFound,
)
from realize.fuse.backend import Opened, SpaceInfo
from realize.fuse.bridge import Bridge
from realize.hashing import format_hash
from realize.model import KIND_DIR, ArenaName, Entry, Notification, PeerId
from realize.services.cache import BlobCache
from realize.services.downloader import PIECE_SIZE, PREFETCH_FILES, Downloader
from realize.storage import unreal
from realize.storage.blobs import QUEUE_PROTECTED, BlobStore
from realize.storage.consensus import QueueRow, _txn_apply_tracked, queue_row
from realize.storage.globaldb import ROOT_INODE
from realize.storage.marks import SOURCE_VIEW, effective_mark, mark_at
from realize.storage.unreal import ArenaTree, BatchResult
from realize.storage.unrealview import FileVersion, SqliteUnrealView

__all__ = ["SMALL_STREAK", "VERSION_REFRESH", "ArenaCache", "UnrealBackend"]

#: Seconds between two reads of small files that missed the cache within
#: which the second fetches the small files after it in its directory too
#: (L{realize.services.downloader.Downloader.prefetch}).
SMALL_STREAK: Final = 1.0

#: Seconds an open file's version (its path and the peers that have it,
#: for the downloader) is used before it is read again from sqlite.
VERSION_REFRESH: Final = 1.0

log = Logger(namespace="realize.unreal")


@define(eq=False)
class ArenaCache:
    """
    The cache tables of one arena, fed by the household
    (L{realize.services.household.UnrealCache}).

    @ivar tree: what the rules need of the arena (root, inode ranges).
    @ivar run_interaction: the arena db's writer.
    @ivar blobs: the arena's blob store, without a block cache: outdated
        blobs are deleted after each batch.
    @ivar cache: the arena's block cache: outdated blobs join its pending
        removal queue after each batch.
    @ivar default_mark: the arena's default mark: with one, each batch
        also queues the paths the consensus jobs must look at; C{None}
        for none.
    @ivar me: this peer's id (its own history is fed as this peer).
    """

    tree: ArenaTree
    run_interaction: Callable[..., Deferred[Any]]
    blobs: BlobStore | None = None
    default_mark: str | None = None
    me: PeerId | None = None
    cache: BlobCache | None = None

    async def progress(self, peer: PeerId) -> tuple[str, int] | None:
        result: tuple[str, int] | None = await self.run_interaction(
            unreal.peer_progress, peer
        )
        return result

    async def apply(
        self, peer: PeerId, notifications: Sequence[Notification]
    ) -> BatchResult:
        result: BatchResult
        if self.default_mark is None:
            result = await self.run_interaction(
                unreal._txn_apply_batch, self.tree, peer, list(notifications)
            )
        else:
            result = await self.run_interaction(
                _txn_apply_tracked,
                self.tree,
                self.me,
                self.default_mark,
                peer,
                list(notifications),
            )
        if self.cache is not None:
            await self.cache.outdated()
        elif self.blobs is not None:
            await self.blobs.delete_outdated()
        return result


@define(eq=False)
class _Handle:
    arena: ArenaName
    inode: int
    digest: bytes | None
    size: int
    complete: bool
    version: FileVersion | None = None
    version_at: float = 0.0


@define(eq=False)
class UnrealBackend:
    """
    L{realize.fuse.backend.FuseBackend} over the Unreal's tables, blobs and
    downloaders.  Called from FUSE threads.

    @ivar view: the tables, read from any thread.
    @ivar bridge: waits on the reactor with a deadline.
    @ivar downloaders: each arena's downloader (used in the reactor).
    @ivar me: this peer's id: files it has itself show as C{local}.
    @ivar space_path: a directory on the filesystem of the cache, for
        C{df}.
    @ivar marks: sets marks (in the reactor), or C{None}: marks cannot be
        set.
    @ivar default_mark: an arena's default mark.
    @ivar caches: each arena's block cache (told of opens, releases, hits
        and misses; its thread-safe methods only).
    @ivar monotonic: the time in seconds, for L{VERSION_REFRESH}.
    """

    view: SqliteUnrealView
    bridge: Bridge
    downloaders: Mapping[ArenaName, Downloader]
    me: PeerId | None = None
    space_path: str = "/"
    marks: MarkSetter | None = None
    default_mark: Callable[[ArenaName], str] = lambda arena: "watch"
    caches: Mapping[ArenaName, BlobCache] = field(factory=dict)
    monotonic: Callable[[], float] = time.monotonic
    _handles: dict[int, _Handle] = field(factory=dict, init=False)
    #: The version of the last read of each inode, for L{Opened.keep_cache}.
    _served: dict[int, bytes] = field(factory=dict, init=False)
    _last_small_miss: dict[ArenaName, float] = field(factory=dict, init=False)
    _numbers: Any = field(factory=lambda: itertools.count(1), init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)

    @property
    def root_inode(self) -> int:
        return ROOT_INODE

    def lookup(self, parent: int, name: str) -> Entry | None:
        return self.view.lookup(parent, name)

    def getattr(self, inode: int) -> Entry | None:
        return self.view.getattr(inode)

    def _entry(self, inode: int) -> Entry:
        entry = self.view.getattr(inode)
        if entry is None:
            raise NotFound(f"inode {inode} no longer exists")
        return entry

    def readdir(self, inode: int) -> Sequence[tuple[str, Entry]]:
        listing = self.view.readdir(inode)
        if listing is None:
            self._entry(inode)
            raise NotADirectory(f"inode {inode} is not a directory")
        return listing

    def _file(self, inode: int) -> tuple[Entry, ArenaName]:
        entry = self._entry(inode)
        if entry.kind == KIND_DIR:
            raise IsADirectory(f"inode {inode} is a directory")
        arena = self.view.arena_of(inode)
        if arena is None:
            raise NotFound(f"inode {inode} belongs to no arena")
        return entry, arena

    def _complete(self, arena: ArenaName, entry: Entry) -> bool:
        if entry.hash is None:
            return False
        state = self.view.cached(arena, entry.inode, entry.hash)
        return state is not None and state.present >= state.size

    def open(self, inode: int) -> Opened:
        entry, arena = self._file(inode)
        cache = self.caches.get(arena)
        if cache is not None:
            cache.opened(inode, entry.hash)
        try:
            complete = self._complete(arena, entry)
        except BaseException:
            if cache is not None:
                cache.closed(inode)
            raise
        # The kernel's pages of this inode, if any, hold bytes this backend
        # served; if the last version served is the one opened, they are
        # bytes of it (a version that changed gives another digest here).
        keep = complete or (
            entry.hash is not None and self._served.get(inode) == entry.hash
        )
        with self._lock:
            number = next(self._numbers)
            self._handles[number] = _Handle(
                arena, inode, entry.hash, entry.size, complete
            )
        return Opened(number, keep)

    def read(self, inode: int, handle: int, offset: int, size: int) -> bytes:
        opened = self._handles.get(handle)
        if opened is None:
            raise BadRequest(f"no open file {handle}")
        downloader = self.downloaders.get(opened.arena)
        cache = self.caches.get(opened.arena)
        digest = opened.digest
        if digest is not None:
            self._served[inode] = digest
            end = min(offset + size, opened.size)
            if offset >= end:
                return b""
            data = (
                None
                if downloader is None
                else downloader.verified(inode, digest, offset, end)
            )
            if data is None:
                data = self.view.read_cached(opened.arena, inode, digest, offset, end)
            if data is not None:
                if cache is not None:
                    cache.read_hit(inode, digest, len(data))
                if (
                    downloader is not None
                    and not opened.complete
                    and offset % PIECE_SIZE < size
                ):
                    # The first read in this piece: the read-ahead moves on.
                    self.bridge.post(downloader.advance, inode, digest, offset, end)
                return data
        if cache is not None:
            cache.read_miss(size)
        if downloader is None:
            raise IOFailure(f"arena {opened.arena}: no downloader")
        now = self.monotonic()
        version = opened.version
        if version is None or now - opened.version_at >= VERSION_REFRESH:
            # Looked up once a second at most per open file: the peers that
            # have the version change as notifications come.
            version = self.view.version(inode)
            opened.version, opened.version_at = version, now
        if version is not None and self._small_miss(opened.arena, version, now):
            # Going through small files: this one and those after it in
            # its directory in one batch (the read below waits for it).
            batch = [version]
            batch.extend(
                self.view.small_files_after(inode, PIECE_SIZE, PREFETCH_FILES - 1)
            )
            self.bridge.post(downloader.prefetch, batch)

        def fetch() -> Deferred[bytes]:
            return Deferred.fromCoroutine(
                downloader.read(inode, offset, size, digest, version)
            )

        # The bridge's type cannot tell a Deferred's result from a value.
        return cast(bytes, self.bridge.call(cast(Callable[[], Any], fetch)))

    def _small_miss(self, arena: ArenaName, version: FileVersion, now: float) -> bool:
        """
        A read of a small file (one leaf) missed: is it the second within
        L{SMALL_STREAK} seconds in this arena (a reader going through small
        files, not one file opened alone)?
        """
        if version.hash is None or not 0 < version.size <= PIECE_SIZE:
            return False
        last = self._last_small_miss.get(arena)
        self._last_small_miss[arena] = now
        return last is not None and now - last <= SMALL_STREAK

    def release(self, inode: int, handle: int) -> None:
        with self._lock:
            opened = self._handles.pop(handle, None)
        if opened is not None:
            cache = self.caches.get(opened.arena)
            if cache is not None:
                cache.closed(opened.inode)

    def _arena_path(self, inode: int) -> tuple[ArenaName, str] | None:
        self._entry(inode)
        return self.view.locate(inode)

    def mark(self, inode: int) -> str | None:
        located = self._arena_path(inode)
        if located is None:
            return None
        return self.view.query(located[0], mark_at, located[1])

    def effective_mark(self, inode: int) -> str | None:
        located = self._arena_path(inode)
        if located is None:
            return None
        arena, path = located
        found = self.view.query(arena, effective_mark, path, self.default_mark(arena))
        return None if found is None else found.describe()

    def set_mark(self, inode: int, mark: str | None) -> None:
        located = self._arena_path(inode)
        if located is None:
            raise BadRequest(
                f"inode {inode}: marks are set on arenas and what they hold"
            )
        marks = self.marks
        if marks is None:
            raise BadRequest("marks cannot be set: no consensus service")
        arena, path = located

        def set_it() -> Deferred[None]:
            assert marks is not None
            return Deferred.fromCoroutine(
                marks.set_mark(arena, path, mark, SOURCE_VIEW)
            )

        self.bridge.call(cast(Callable[[], Any], set_it))

    def version(self, inode: int) -> str | None:
        entry = self._entry(inode)
        if entry.kind == KIND_DIR:
            return None
        return "none" if entry.hash is None else format_hash(entry.hash)

    def status(self, inode: int) -> str | None:
        base = self._where(inode)
        if base is None:
            return None
        located = self.view.locate(inode)
        row = (
            None
            if located is None
            else self.view.query(located[0], queue_row, located[1])
        )
        return base if row is None else f"{base}; {_job_status(row)}"

    def _where(self, inode: int) -> str | None:
        entry = self._entry(inode)
        if entry.kind == KIND_DIR:
            return None
        if entry.hash is None:
            return "remote"
        version = self.view.version(inode)
        if version is not None and self.me is not None and self.me in version.peers:
            return "local"
        located = self.view.locate(inode)
        if located is not None:
            self._settle(located[0], inode, entry.hash)
        state = (
            None if located is None else self.view.cached(located[0], inode, entry.hash)
        )
        if state is None or state.present == 0:
            return "remote"
        if state.present >= state.size:
            return "protected" if state.queue == QUEUE_PROTECTED else "cached verified"
        return f"cached {state.present * 100 // max(state.size, 1)}%"

    def _settle(self, arena: ArenaName, inode: int, digest: bytes) -> None:
        """
        Wait for the verified bytes of a version still being written to
        its blob (reads return before: L{Downloader.written}), so that the
        status says what the cache holds once a read returned.
        """
        downloader = self.downloaders.get(arena)
        if downloader is None or not downloader.writing(inode, digest):
            return

        def written() -> Deferred[None]:
            assert downloader is not None
            return Deferred.fromCoroutine(downloader.written(inode, digest))

        self.bridge.call(cast(Callable[[], Any], written))

    def statfs(self) -> SpaceInfo:
        try:
            st = os.statvfs(self.space_path)
        except OSError as e:
            raise IOFailure(f"statfs of {self.space_path}: {e.strerror}") from None
        return SpaceInfo(
            st.f_blocks * st.f_frsize,
            st.f_bavail * st.f_frsize,
            st.f_files - st.f_ffree,
        )

    # -- what a batch changed ---------------------------------------------------

    def paths(self, result: BatchResult) -> list[str]:
        """
        The paths under the mount whose kernel caches a batch made stale:
        the entries added, removed or changed (by their parent's path and
        their name), and the files and directories whose attributes
        changed.

        @return: paths relative to the mount root, e.g. C{"docs/a/b.txt"}.
        """
        paths: set[str] = set()
        for parent, name in result.entries:
            where = self._mount_path(parent)
            if where is not None:
                paths.add(f"{where}/{name}" if where else name)
        for inode in result.inodes:
            where = self._mount_path(inode)
            if where is not None:
                paths.add(where)
        return sorted(paths)

    def _mount_path(self, inode: int) -> str | None:
        located = self.view.locate(inode)
        if located is None:
            return None
        arena, path = located
        return f"{arena}/{path}" if path else arena


class MarkSetter(Protocol):
    """
    Sets marks (L{realize.services.marks.MarkKeeper}), in the reactor.
    """

    async def set_mark(
        self, arena: ArenaName, path: str, mark: str | None, source: str = ...
    ) -> None: ...


def _job_status(row: QueueRow) -> str:
    """
    @return: what a queue row says of the job of a file, for
        C{user.realize.status}: C{pending}, C{realize: download},
        C{realize failed: why; retry in 30 s}.
    """
    if row.step == "failed":
        wait = max(0.0, row.not_before - time.time())
        return f"{row.action or 'job'} failed: {row.error}; retry in {wait:.0f} s"
    if row.action is None:
        return "pending"
    return f"{row.action}: {row.step}"
