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
files (a miss within L{SMALL_STREAK} of the last one, and among the
L{SMALL_FOLLOW} small files after it in its directory: readers going
through a directory, not random reads) gets the next ones of the
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

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
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
from realize.model import KIND_DIR, KIND_FILE, ArenaName, Entry, Notification, PeerId
from realize.services.cache import BlobCache
from realize.services.downloader import (
    PIECE_SIZE,
    PREFETCH_BYTES,
    PREFETCH_FILES,
    Downloader,
)
from realize.storage import unreal
from realize.storage.blobs import QUEUE_PROTECTED, BlobStore
from realize.storage.consensus import QueueRow, _txn_apply_tracked, queue_row
from realize.storage.globaldb import ROOT_INODE
from realize.storage.marks import SOURCE_VIEW, effective_mark, mark_at
from realize.storage.unreal import (
    RESERVED,
    RESERVED_NAME,
    ArenaTree,
    BatchResult,
    Conflict,
    count_conflicts,
)
from realize.storage.unrealview import FileVersion, SqliteUnrealView

__all__ = [
    "CONFLICTS_DIR",
    "SHORT_HASH",
    "SMALL_FOLLOW",
    "SMALL_STREAK",
    "VERSION_REFRESH",
    "VIRTUAL_BASE",
    "ArenaCache",
    "ConflictMetrics",
    "UnrealBackend",
    "conflict_name",
]

#: Seconds between two reads of small files that missed the cache within
#: which the second fetches the small files after it in its directory too
#: (L{realize.services.downloader.Downloader.prefetch}).
SMALL_STREAK: Final = 1.0

#: A small file missed is a reader's next one if it is among this many
#: small files not cached after the last one in its directory.
SMALL_FOLLOW: Final = 2

#: Seconds an open file's version (its path and the peers that have it,
#: for the downloader) is used before it is read again from sqlite.
VERSION_REFRESH: Final = 1.0

log = Logger(namespace="realize.unreal")

#: The directory of C{.realize} that lists each arena's conflicts.
CONFLICTS_DIR: Final = "conflicts"

#: Hex digits of a version's hash in a conflict's name.
SHORT_HASH: Final = 12

#: Inodes of the view's own entries (C{.realize/conflicts/...}) are given
#: from here up, far above any range of the global db.
VIRTUAL_BASE: Final = 1 << 62


def conflict_name(conflict: Conflict) -> str:
    """
    @return: a conflict's name in C{.realize/conflicts/<path>/} and in
        C{user.realize.conflicts}: C{<peer>-<first 12 hex digits of its
        hash>} (a C{/} in the peer id shows as C{%2F}).
    """
    peer = conflict.peer.replace("%", "%25").replace("/", "%2F")
    return f"{peer}-{conflict.hash.hex()[:SHORT_HASH]}"


class ConflictMetrics(Protocol):
    """
    Where the open conflicts are counted
    (L{realize.metrics.ConsensusMetrics.conflicts_open}).
    """

    def conflicts_open(self, arena: str, count: int) -> None: ...


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
    metrics: ConflictMetrics | None = None

    async def count_conflicts(self) -> int:
        """
        Count the arena's open conflicts, into the metrics too (at start;
        each batch counts them afterwards).
        """
        count: int = await self.run_interaction(count_conflicts)
        if self.metrics is not None:
            self.metrics.conflicts_open(self.tree.arena, count)
        return count

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
                unreal._txn_apply_batch,
                self.tree,
                peer,
                list(notifications),
                self.me,
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
        for notification, outcome in zip(notifications, result.outcomes, strict=False):
            if outcome == RESERVED:
                log.warn(
                    "ignored {kind} of {peer} for {arena}/{path}: {name} is the "
                    "view's own name, no file of a peer is shown under it",
                    kind=notification.kind,
                    peer=peer,
                    arena=self.tree.arena,
                    path=notification.path,
                    name=RESERVED_NAME,
                )
        if self.metrics is not None:
            self.metrics.conflicts_open(self.tree.arena, result.conflicts)
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
    #: For a conflict's file: its inode in the view (the handle's C{inode}
    #: is the real file's).
    fork: int | None = None


#: Kinds of the view's own entries.
_REALIZE = "realize"
_CONFLICTS = "conflicts"
_DIR = "dir"
_FORK = "fork"


@frozen
class _Node:
    """
    One of the view's own entries: C{.realize} or C{.realize/conflicts} of
    an arena, a directory beneath it (the one of the real directory or
    file C{inode}), or a conflict's file (C{inode}'s version C{digest}).
    """

    kind: str
    arena: ArenaName
    inode: int = 0
    digest: bytes = b""


@define(eq=False)
class _VirtualInodes:
    """
    Inode numbers of the view's own entries, given on first sight from
    L{VIRTUAL_BASE} up and kept while the daemon runs (thread-safe).
    """

    _numbers: dict[_Node, int] = field(factory=dict)
    _nodes: dict[int, _Node] = field(factory=dict)
    _lock: threading.Lock = field(factory=threading.Lock)

    def number(self, node: _Node) -> int:
        with self._lock:
            found = self._numbers.get(node)
            if found is None:
                found = VIRTUAL_BASE + len(self._numbers)
                self._numbers[node] = found
                self._nodes[found] = node
            return found

    def node(self, inode: int) -> _Node | None:
        return self._nodes.get(inode)


@define(eq=False)
class _ReadThrough:
    """
    The blob access of the conflicts' downloaders: a conflict's version is
    read through from its peers, never kept in a blob (the blob store
    keeps default versions only).
    """

    async def open(self, inode: int, digest: bytes) -> Any:
        raise NotFound("a conflict's version is read through, not kept")

    async def write(self, blob: Any, offset: int, data: bytes) -> Any:
        raise NotFound("no blob")  # pragma: no cover

    async def read(self, blob: Any, start: int, end: int) -> bytes:
        raise NotFound("no blob")  # pragma: no cover

    async def release(self, blob: Any, ranges: Any) -> Any:
        raise NotFound("no blob")  # pragma: no cover

    def working_area(self) -> int | None:
        return None


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
    _last_small_miss: dict[ArenaName, tuple[float, int]] = field(
        factory=dict, init=False
    )
    _numbers: Any = field(factory=lambda: itertools.count(1), init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)
    _virtual: _VirtualInodes = field(factory=_VirtualInodes, init=False)
    _fork_downloaders: dict[ArenaName, Downloader] = field(factory=dict, init=False)
    _fork_versions: dict[int, FileVersion] = field(factory=dict, init=False)

    @property
    def root_inode(self) -> int:
        return ROOT_INODE

    def lookup(self, parent: int, name: str) -> Entry | None:
        if parent >= VIRTUAL_BASE:
            return self._virtual_lookup(parent, name)
        if name == RESERVED_NAME:
            arena = self.view.root_arena(parent)
            if arena is not None:
                return self._virtual_entry(_Node(_REALIZE, arena))
        return self.view.lookup(parent, name)

    def getattr(self, inode: int) -> Entry | None:
        if inode >= VIRTUAL_BASE:
            node = self._virtual.node(inode)
            return None if node is None else self._virtual_entry(node)
        return self.view.getattr(inode)

    def _entry(self, inode: int) -> Entry:
        entry = self.getattr(inode)
        if entry is None:
            raise NotFound(f"inode {inode} no longer exists")
        return entry

    def readdir(self, inode: int) -> Sequence[tuple[str, Entry]]:
        if inode >= VIRTUAL_BASE:
            return self._virtual_readdir(inode)
        listing = self.view.readdir(inode)
        if listing is None:
            self._entry(inode)
            raise NotADirectory(f"inode {inode} is not a directory")
        arena = self.view.root_arena(inode)
        if arena is not None and self.view.conflicted(arena):
            # .realize is listed while the arena has conflicts (it is
            # always there by name).
            entry = self._virtual_entry(_Node(_REALIZE, arena))
            if entry is not None:
                listing = sorted([*listing, (RESERVED_NAME, entry)])
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
        if inode >= VIRTUAL_BASE:
            return self._open_conflict(inode)
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
        if opened.fork is not None:
            return self._read_conflict(opened, offset, size)
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
            # The reader's next miss is the file after the last one the
            # batch fetches (it stops at PREFETCH_BYTES).
            total = 0
            for item in batch:
                total += item.size
                if total > PREFETCH_BYTES:
                    break
                self._last_small_miss[opened.arena] = (now, item.inode)

        def fetch() -> Deferred[bytes]:
            return Deferred.fromCoroutine(
                downloader.read(inode, offset, size, digest, version)
            )

        # The bridge's type cannot tell a Deferred's result from a value.
        return cast(bytes, self.bridge.call(cast(Callable[[], Any], fetch)))

    def _small_miss(self, arena: ArenaName, version: FileVersion, now: float) -> bool:
        """
        A read of a small file (one leaf) missed: does it follow the last
        one missed (or fetched by a batch) in this arena, within
        L{SMALL_STREAK} seconds, as one of the L{SMALL_FOLLOW} small files
        not cached after it in its directory (a reader going through the
        directory)?  Random reads
        of small files (a skewed workload over many) are not: a batch for
        them would fetch files nobody asked for and evict the ones asked
        for (measured: bench/cache.py's Zipf hit ratio fell from 0.75 to
        0).
        """
        if version.hash is None or not 0 < version.size <= PIECE_SIZE:
            return False
        last = self._last_small_miss.get(arena)
        self._last_small_miss[arena] = (now, version.inode)
        if last is None or now - last[0] > SMALL_STREAK:
            return False
        following = self.view.small_files_after(last[1], PIECE_SIZE, SMALL_FOLLOW)
        return any(v.inode == version.inode for v in following)

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

    # -- conflicts (DESIGN.md section 11) ---------------------------------------

    def conflicts(self, inode: int) -> str | None:
        """
        C{user.realize.conflicts}: the open conflicts of a file, one
        L{conflict_name} per line, sorted.

        @return: C{None} if it has none (or is a directory, or one of the
            view's own entries).
        @raise NotFound: if the entry no longer exists.
        """
        entry = self._entry(inode)
        if entry.kind == KIND_DIR or inode >= VIRTUAL_BASE:
            return None
        located = self.view.locate(inode)
        if located is None:
            return None
        names = sorted(conflict_name(c) for c in self.view.conflicts(located[0], inode))
        return "\n".join(names) if names else None

    def _tree(
        self, arena: ArenaName
    ) -> tuple[dict[int | None, dict[str, int]], set[int]]:
        """
        The tree of C{.realize/conflicts}: the children of each real
        directory that lead to conflicted files (the arena root's under
        C{None}), and the conflicted files.
        """
        children: dict[int | None, dict[str, int]] = {}
        files: set[int] = set()
        for chain in self.view.conflicted(arena):
            parent: int | None = None
            for name, inode in chain:
                children.setdefault(parent, {})[name] = inode
                parent = inode
            files.add(chain[-1][1])
        return children, files

    def _virtual_children(self, node: _Node) -> dict[str, _Node] | None:
        """
        @return: the entries of one of the view's own directories, or
            C{None} if it is gone (or is a file).
        """
        if node.kind == _REALIZE:
            return {CONFLICTS_DIR: _Node(_CONFLICTS, node.arena)}
        if node.kind == _FORK:
            return None
        children, files = self._tree(node.arena)
        if node.kind == _DIR and node.inode in files:
            return {
                conflict_name(c): _Node(_FORK, node.arena, node.inode, c.hash)
                for c in self.view.conflicts(node.arena, node.inode)
            }
        below = children.get(None if node.kind == _CONFLICTS else node.inode)
        if below is None:
            return {} if node.kind == _CONFLICTS else None
        return {name: _Node(_DIR, node.arena, inode) for name, inode in below.items()}

    def _virtual_entry(self, node: _Node) -> Entry | None:
        """
        @return: the entry of one of the view's own nodes, or C{None} if
            it is gone (a conflict settled).
        """
        number = self._virtual.number(node)
        if node.kind == _FORK:
            for c in self.view.conflicts(node.arena, node.inode):
                if c.hash == node.digest:
                    return Entry(number, KIND_FILE, c.size, c.mtime_ns, c.hash, 1)
            return None
        children = self._virtual_children(node)
        if children is None:
            return None
        subdirs = sum(1 for child in children.values() if child.kind != _FORK)
        return Entry(number, KIND_DIR, 0, self._mtime(node), None, 2 + subdirs)

    def _mtime(self, node: _Node) -> int:
        real = node.inode
        if node.kind in (_REALIZE, _CONFLICTS):
            root = self.view.root_inode_of(node.arena)
            real = 0 if root is None else root
        entry = self.view.getattr(real) if real else None
        return 0 if entry is None else entry.mtime_ns

    def _virtual_lookup(self, parent: int, name: str) -> Entry | None:
        node = self._virtual.node(parent)
        children = None if node is None else self._virtual_children(node)
        child = None if children is None else children.get(name)
        return None if child is None else self._virtual_entry(child)

    def _virtual_readdir(self, inode: int) -> Sequence[tuple[str, Entry]]:
        node = self._virtual.node(inode)
        if node is None:
            raise NotFound(f"inode {inode} no longer exists")
        children = self._virtual_children(node)
        if children is None:
            if node.kind == _FORK:
                raise NotADirectory(f"inode {inode} is not a directory")
            raise NotFound(f"inode {inode} no longer exists")
        listing = []
        for name, child in sorted(children.items()):
            entry = self._virtual_entry(child)
            if entry is not None:
                listing.append((name, entry))
        return listing

    def _open_conflict(self, inode: int) -> Opened:
        """
        Open a conflict's file: its version is read from the peers that
        have it (L{_read_conflict}).
        """
        node = self._virtual.node(inode)
        if node is None or self._virtual_entry(node) is None:
            raise NotFound(f"inode {inode} no longer exists")
        if node.kind != _FORK:
            raise IsADirectory(f"inode {inode} is a directory")
        cache = self.caches.get(node.arena)
        if cache is not None:
            cache.opened(node.inode, node.digest)
        with self._lock:
            number = next(self._numbers)
            # (Size and completeness are the default version's business.)
            self._handles[number] = _Handle(
                node.arena, node.inode, node.digest, 0, False, fork=inode
            )
        return Opened(number, False)

    def _read_conflict(self, opened: _Handle, offset: int, size: int) -> bytes:
        """
        Read a conflict's version: fetched from a peer that has it and
        verified against its hash (a downloader of the arena's that reads
        this version rather than the default, through, never kept).
        """
        assert opened.digest is not None and opened.fork is not None
        version = self.view.fork_version(opened.arena, opened.inode, opened.digest)
        if version is None:
            raise IOFailure(
                f"arena {opened.arena}, inode {opened.inode}: the conflict "
                "was settled; its version is no longer listed"
            )
        downloader = self._fork_downloader(opened.arena)
        self._fork_versions[opened.fork] = version
        fork = opened.fork

        def fetch() -> Deferred[bytes]:
            return Deferred.fromCoroutine(
                downloader.read(fork, offset, size, version.hash)
            )

        return cast(bytes, self.bridge.call(cast(Callable[[], Any], fetch)))

    def _fork_downloader(self, arena: ArenaName) -> Downloader:
        with self._lock:
            found = self._fork_downloaders.get(arena)
            if found is not None:
                return found
            main = self.downloaders.get(arena)
            if main is None:
                raise IOFailure(f"arena {arena}: no downloader")
            found = Downloader(
                arena=arena,
                blobs=_ReadThrough(),
                versions=lambda inode: succeed(self._fork_versions.get(inode)),
                stores=main.stores,
                clock=main.clock,
                fetched=main.fetched,
            )
            self._fork_downloaders[arena] = found
            return found

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
