"""
The seams between layers, as C{typing.Protocol}s.

The mover (L{realize.services.mover}) talks to a L{Store}: a local arena
store served in-process (L{realize.storage.local.LocalStore}), an in-memory
fake (L{realize.storage.memory.MemoryStore}) or a remote daemon over AMP
(L{realize.net.client.RemoteStore}).  All of them implement the same
methods with the same errors (L{realize.errors}), so the mover does not
know which it talks to.

Bulk data moves as async iterables of chunks (C{bytes}, at most
L{realize.model.CHUNK_SIZE} long): the consumer pulls, so
back-pressure is the consumer not asking for more.  Between two stores
that both are L{SparseStore}s, the streams of large files also carry
L{realize.model.Hole}s: the holes of sparse files, neither read nor sent
as zeros nor written.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Sequence,
)
from typing import Any, Protocol, TypeVar, runtime_checkable

from twisted.internet.defer import Deferred

from realize.errors import RealizeError
from realize.model import (
    ArenaName,
    Entry,
    FileInfo,
    FileState,
    Hole,
    Notification,
    PeerId,
    SmallFile,
    SmallRead,
    WriteResult,
)

__all__ = [
    "ChunkList",
    "ReadStream",
    "RunInThread",
    "SparseReadStream",
    "SparseStore",
    "Store",
    "StoreListener",
    "UnrealView",
]

T = TypeVar("T")


class ChunkList:
    """
    An async iterator over chunks already in memory, for the C{data} of
    L{Store.write}.
    """

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None


class RunInThread(Protocol):
    """
    Run a blocking function in a thread pool and get its result in the
    reactor thread (e.g. C{functools.partial(deferToThreadPool, reactor,
    pool)}).
    """

    def __call__(
        self, f: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Deferred[T]: ...


class ReadStream(Protocol):
    """
    Data of a L{Store.read}: iterate for chunks, then await L{result}.

    Iteration raises the store's error if reading fails.  Call L{cancel}
    to stop early (e.g. because the consumer failed); the stream then ends
    and frees what it holds.
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def result(self) -> FileState:
        """
        @return: hashes and state of the file at the end of the read;
            only valid after the iteration ended.
        """

    def cancel(self) -> None: ...


class Store(Protocol):
    """
    The store commands of DESIGN.md section 5, for one peer.

    L{read} acts on the final file of a path if there is one, else on the
    partial; L{hash}, L{write} and L{truncate} act on the partial if there
    is one, else on the final.  A final file is never changed: writing
    builds the new version in the partial (made from the final's bytes
    where they are needed) and L{finish} renames it over the final.

    Paths are final paths (L{realize.model.check_path}); the partial file
    of a path is an implementation detail of the store.  Methods raise the
    errors of L{realize.errors}: L{NotFound}, L{InvalidPath},
    L{Unauthorized}, L{PermissionDenied}, L{NoSpace}, L{IOFailure},
    L{Conflict}, L{NetworkError}.
    """

    def describe(self) -> str:
        """
        @return: the peer for messages, e.g. C{"b (10.0.0.2:9771)"} or
            C{"local:/srv/data"}.
        """

    async def arenas(self) -> list[ArenaName]:
        """
        @return: the arenas the caller may use.
        """

    async def list_files(self, arena: ArenaName) -> list[FileInfo]:
        """
        @return: the regular files of the arena, finals and partials (a
            partial has C{partial=True} and the path of its final file).
            Symlinks, devices, sockets and empty directories are not
            listed.
        """

    def read(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> ReadStream:
        """
        Stream the bytes C{[start, end)} of a file: the final file if there
        is one, else the partial.

        @param hash_from: if given, a multiple of
            L{realize.hashing.LEAF_SIZE} not above C{start}: the store also
            computes the Merkle leaves of C{[hash_from, end)} while reading,
            in one sequential pass (the bytes before C{start} are read and
            hashed, not sent).  The source of a move passes 0, so that it
            reads and hashes each file exactly once.
        """

    async def write(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes],
        *,
        hash: bool = False,
        finish_root: bytes | None = None,
        mtime_ns: int | None = None,
    ) -> WriteResult:
        """
        Write C{[start, end)} of the partial file from C{data}.

        A path with only a final file gets a partial made from the final's
        bytes outside the range (the final stays as it is); writing past the
        end extends with zeros; when C{end == file_size} the file is
        truncated to C{file_size}.

        @param data: exactly C{end - start} bytes in chunks; fewer raises
            L{Conflict}.
        @param hash: return the leaves of C{[align_down(start), end)}.
        @param finish_root: if given and C{end == file_size}, the store
            hashes the whole file and, if its Merkle root equals this one,
            finishes it (as L{finish}, durably, with C{mtime_ns}) before
            answering.
        @param mtime_ns: mtime to give the file when finishing it.
        """

    async def truncate(self, arena: ArenaName, path: str, size: int) -> None:
        """
        Truncate or extend the partial file (made from the final's first
        C{size} bytes if there is none; the final stays as it is).
        """

    async def finish(
        self, arena: ArenaName, path: str, mtime_ns: int | None = None
    ) -> None:
        """
        Turn the partial file into the final one, durably: its data is on
        disk before the rename and the rename before this returns.  A no-op
        if the file is already final.

        @param mtime_ns: mtime to set before the rename, or C{None}.
        @raise NotFound: if there is neither a partial nor a final file.
        """

    async def delete(
        self,
        arena: ArenaName,
        path: str,
        *,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        """
        Delete the final and the partial file of a path; succeeds if there
        is none.  Directories left empty are removed, up to the arena root.

        @param size: if given with C{mtime_ns}, delete the final file only
            if it still has this size and mtime.
        @raise Conflict: if the final file changed.
        """

    async def hash(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> FileState:
        """
        Merkle leaves of C{[start, min(end, size))} of the file (the
        partial if it exists, else the final).

        @param start: a multiple of L{realize.hashing.LEAF_SIZE}.
        """

    async def signature(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> bytes | None:
        """
        rsync signature (L{realize.delta.signature}) of C{[start, min(end,
        size))} of the file being received (partial, else final).

        @param start: a leaf boundary; C{end - start} at most
            L{realize.model.MAX_DELTA_RANGE}.
        @return: the signature, or C{None} if the file has no byte at
            C{start}.
        """

    async def diff(
        self, arena: ArenaName, path: str, start: int, end: int, signature: bytes
    ) -> bytes:
        """
        Delta (L{realize.delta.diff}) that turns the basis described by
        C{signature} into C{[start, end)} of the file (final, else
        partial).

        @raise BadDelta: if the signature is malformed.
        """

    async def apply_delta(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        change: bytes,
    ) -> tuple[bytes, ...]:
        """
        Apply a delta to C{[start, end)} of the partial file, whose bytes
        from C{start} on are the basis; truncate at C{file_size} if C{end}
        is the end of the file.

        @return: the Merkle leaves of C{[start, end)} afterwards.
        @raise BadDelta: if the delta is malformed or does not produce
            exactly C{end - start} bytes.
        """

    async def read_files(
        self, arena: ArenaName, files: Sequence[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        """
        Read whole small files (final, else partial) in one batch.

        @param files: C{(path, limit)}: a file larger than C{limit} bytes is
            not read (its L{SmallRead} has its size and no data).
        @return: per file, what was read or its error.
        """

    async def write_files(
        self,
        arena: ArenaName,
        files: Sequence[SmallFile],
        data: Sequence[bytes | memoryview],
    ) -> list[RealizeError | None]:
        """
        Write whole small files in one batch: each goes to a new partial
        file, is hashed and, if its root is the expected one, is finished
        durably with its mtime (replacing the final file, if any).

        @param data: the content of each file (a view is only read during
            the call, never kept).
        @return: per file, C{None} if it is finished, else its error
            (L{Conflict} if its hash differs: it stays partial).
        """

    async def delete_files(
        self,
        arena: ArenaName,
        files: Sequence[FileInfo],
        partials: Collection[str] | None = None,
    ) -> list[RealizeError | None]:
        """
        Delete files in one batch, each only if it still has the size and
        mtime given (as L{delete} with both); directories left empty are
        removed.

        @param partials: the paths whose partial file the caller listed:
            only their partials are deleted (a partial made since the
            listing stays); C{None} for every path's.
        @return: per file, C{None} or its error.
        """

    async def close(self, abort: bool = False) -> None:
        """
        Release connections and threads.

        @param abort: drop the connection at once, without flushing what
            is still queued (the move was stopped).
        """


class SparseReadStream(Protocol):
    """
    Data of a L{SparseStore.read_sparse}: as a L{ReadStream}, but a hole
    of the file comes as a L{Hole} (as many zero bytes, not sent).
    """

    def __aiter__(self) -> AsyncIterator[bytes | Hole]: ...

    async def result(self) -> FileState: ...

    def cancel(self) -> None: ...


@runtime_checkable
class SparseStore(Protocol):
    """
    What a L{Store} may also do: move sparse files hole by hole (issue
    15).  The mover uses it for large files when both sides do; a hole is
    then found at the source with C{SEEK_DATA}/C{SEEK_HOLE}, hashed from
    the digest of zeros, sent as its length, and left unallocated at the
    destination.
    """

    async def sparse(self) -> bool:
        """
        @return: whether L{read_sparse} and L{write_sparse} work (a remote
            store: whether its peer has them).
        """

    def read_sparse(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> SparseReadStream:
        """
        As L{Store.read}, giving the holes of the file (at least
        L{realize.model.MIN_HOLE} long) as L{Hole} items.
        """

    async def write_sparse(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes | Hole],
        *,
        hash: bool = False,
    ) -> WriteResult:
        """
        As L{Store.write}, from data whose L{Hole}s become zeros that take
        no room: past the end of the partial file nothing is written, over
        bytes it holds they are deallocated (punched).
        """


class StoreListener(Protocol):
    """
    Told by a local store when it finished or deleted a file, with what it
    already knows of it, so that the index records a file the store
    received without hashing it again (#musthash).  Called in the reactor
    thread, after the change is durable on disk.
    """

    def file_finished(
        self, arena: ArenaName, path: str, size: int, mtime_ns: int, root: bytes
    ) -> None:
        """
        A partial file became final (Finish, a verified Write or
        WriteFiles, the last range of an ApplyDelta then Finish).

        @param size: its size in bytes.
        @param mtime_ns: its mtime as set, in ns.
        @param root: its Merkle root (L{realize.hashing}).
        """

    def file_deleted(self, arena: ArenaName, path: str) -> None:
        """
        A final file was deleted (Delete, DeleteFiles).
        """


class UnrealView(Protocol):
    """
    The metadata of the Unreal view (DESIGN.md section 10), read by the
    FUSE layer: the mount root (inode 1), the directories that compound
    arena names need (C{a/b} shows as C{a} holding C{b}), the arena roots,
    and every arena's files and directories as the peers reported them.

    Every method is blocking, reads local sqlite only (never the network),
    and may be called from any thread, concurrently (each FUSE thread gets
    its own read-only connection).  Inode numbers are C{int}s C{>= 1};
    names are single path segments (no C{/}); C{.} and C{..} are never
    listed nor looked up (the FUSE layer answers them).

    Methods raise L{realize.errors.IOFailure} if a database cannot be read.
    """

    def lookup(self, parent: int, name: str) -> Entry | None:
        """
        @param parent: a directory's inode.
        @param name: a name in it.
        @return: the entry named C{name} in directory C{parent}, or C{None}
            if there is none (also when C{parent} is unknown or a file).
        """

    def getattr(self, inode: int) -> Entry | None:
        """
        @param inode: any inode.
        @return: its entry, or C{None} if no file or directory has it.
        """

    def readdir(self, inode: int) -> list[tuple[str, Entry]] | None:
        """
        @param inode: a directory's inode.
        @return: its entries as C{(name, entry)}, sorted by name (without
            C{.} and C{..}); C{None} if C{inode} is not a directory (a file
            or unknown: use L{getattr} to tell them apart).
        """

    def locate(self, inode: int) -> tuple[ArenaName, str] | None:
        """
        @param inode: a file's or directory's inode.
        @return: the arena it belongs to and its path in that arena
            (L{realize.model.check_path} rules); the path is C{""} for an
            arena root.  C{None} for the mount root, a compound arena-name
            directory or an unknown inode.
        """


class Subscription(Protocol):
    """
    One subscriber's view of one arena's history (DESIGN.md section 9),
    pulled: each L{next_batch} gives the next notifications, the first
    being C{connected}, then a replay or a catch-up, then live changes
    (waiting for them when caught up).  Served by
    L{realize.services.history.HistoryService} locally and by
    L{realize.net.history.RemoteHistory} from a peer.
    """

    def next_batch(self, max_count: int = ...) -> Deferred[list[Notification]]:
        """
        @param max_count: at most this many notifications.
        @return: at least one notification, in order.
        @raise SubscriptionClosed: once the subscription is closed.
        """

    @property
    def caught_up(self) -> bool:
        """
        Whether the last batch reached the end of the history as it was
        then (no catch-up under way).
        """

    def close(self) -> None:
        """
        End the subscription; a waiting pull fails with
        L{realize.errors.SubscriptionClosed}.
        """


class History(Protocol):
    """
    The histories of this peer's arenas, as subscribers use them.
    """

    def subscribe(
        self, arena: ArenaName, peer: PeerId | None, progress: tuple[str, int] | None
    ) -> Subscription:
        """
        @param peer: the subscriber, checked against the arena's ACL
            (C{None}: a local reader).
        @param progress: the subscriber's C{(uuid, position)}, or C{None}.
        @raise NotFound: if the arena has no history here.
        @raise Unauthorized: if the ACL does not admit C{peer}.
        """

    async def acknowledge(self, arena: ArenaName, peer: PeerId, position: int) -> None:
        """
        The subscriber applied the history up to C{position} (trimming).
        """

    def uuid(self, arena: ArenaName) -> str:
        """
        @return: the arena store's uuid.
        @raise NotFound: if the arena has no history here.
        """
