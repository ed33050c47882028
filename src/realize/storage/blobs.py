"""
The blob store of an arena (#blobstore; DESIGN.md section 10):
C{workdir/blobs/} holds one sparse file per blob (the content of one
version of one file), named by the blob's counter id; the C{blob} table of
C{arena.db} records which byte ranges each file holds, its disk usage, its
queue and its last access.

Write order, so that a crash at any step leaves nothing wrong served (and
what is left over is found by the consistency job,
L{realize.storage.cache.inspect_blob_files}):

    - create: the row first (committed), then the file;
    - write: the data, C{fdatasync}, then the ranges in the db;
    - outdated: the transaction that changes the default version moves the
      old version's blob to L{QUEUE_PENDING_REMOVAL} (kept for offline
      reads and delta repair, evicted first: L{realize.storage.cache});
    - delete: the row is marked (L{QUEUE_DELETING}), the file is removed
      after that commit, then the row (L{BlobStore.delete}).

The quota, the queues and eviction are L{realize.storage.cache}'s and
L{realize.services.cache}'s.

The C{_txn_*} functions run in the arena db's writer (the adbapi pool);
the file functions are blocking and run in a thread (L{RunInThread});
L{read_cached} is blocking and may run in a FUSE thread on a read-only
connection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple, Protocol, TypeVar

from attrs import define, evolve, frozen
from twisted.internet.defer import Deferred

from realize.errors import IOFailure, NoSpace, NotFound
from realize.interfaces import RunInThread
from realize.model import ByteRanges

__all__ = [
    "QUEUE_DELETING",
    "QUEUE_PENDING_REMOVAL",
    "QUEUE_PROTECTED",
    "QUEUE_WORKING",
    "Blob",
    "BlobStore",
    "CachedState",
    "RunInteraction",
    "blob_path",
    "create_blob_tables",
    "decode_ranges",
    "delete_blob_files",
    "encode_ranges",
    "ensure_blob_file",
    "read_blob_range",
    "read_cached",
    "write_blob_range",
]

T = TypeVar("T")

Cursor = sqlite3.Cursor

#: Queues of the blob table (L{realize.storage.cache}).  Every blob enters
#: L{QUEUE_WORKING}; L{QUEUE_PROTECTED} keeps what is marked or used
#: often; L{QUEUE_PENDING_REMOVAL} holds versions that stopped being the
#: default.
QUEUE_WORKING: Final = "working"
QUEUE_PROTECTED: Final = "protected"
QUEUE_PENDING_REMOVAL: Final = "pending_removal"
#: Marked for deletion (evicted): the file goes first, then the row.
QUEUE_DELETING: Final = "deleting"

_PAIR = struct.Struct("<QQ")


def create_blob_tables(cursor: Cursor) -> None:
    """
    Create the C{blob} table (part of the Unreal's schema upgrade,
    L{realize.storage.unreal.create_unreal_tables}).

    Columns: C{id} (the file's name in C{blobs/}, never reused), C{inode}
    and C{hash} (the version), C{size} (bytes), C{ranges} (bytes present,
    L{encode_ranges}), C{disk_usage} (C{st_blocks * 512} of the file),
    C{queue} and C{last_access_ns}.  One live (not deleting) blob per
    version.

    @param cursor: a cursor on the arena db, in a transaction.
    """
    cursor.execute(
        "CREATE TABLE blob ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " inode INTEGER NOT NULL,"
        " hash BLOB NOT NULL,"
        " size INTEGER NOT NULL,"
        " ranges BLOB NOT NULL DEFAULT x'',"
        " disk_usage INTEGER NOT NULL DEFAULT 0,"
        f" queue TEXT NOT NULL DEFAULT '{QUEUE_WORKING}',"
        " last_access_ns INTEGER NOT NULL DEFAULT 0)"
    )
    cursor.execute(
        "CREATE UNIQUE INDEX blob_version ON blob (inode, hash)"
        f" WHERE queue != '{QUEUE_DELETING}'"
    )
    cursor.execute("CREATE INDEX blob_queue ON blob (queue, last_access_ns)")


def encode_ranges(ranges: ByteRanges) -> bytes:
    """
    @return: the ranges as the C{blob.ranges} column holds them: C{(start,
        end)} pairs of little-endian unsigned 64-bit integers.
    """
    return b"".join(_PAIR.pack(start, end) for start, end in ranges)


def decode_ranges(data: bytes) -> ByteRanges:
    """
    @param data: a C{blob.ranges} value.
    @return: the ranges.
    @raise IOFailure: if the value is malformed.
    """
    if len(data) % _PAIR.size:
        raise IOFailure(f"blob ranges of {len(data)} bytes are malformed")
    try:
        return ByteRanges(tuple(_PAIR.iter_unpack(data)))
    except ValueError as e:
        raise IOFailure(f"blob ranges are malformed: {e}") from None


@frozen
class Blob:
    """
    One blob's row.

    @ivar id: its id, the name of its file in C{blobs/}.
    @ivar inode: the file it holds a version of.
    @ivar hash: that version's Merkle root.
    @ivar size: the version's size in bytes.
    @ivar ranges: the bytes present (written, synced, verified).
    @ivar disk_usage: bytes its file uses on disk (C{st_blocks * 512}).
    @ivar queue: L{QUEUE_WORKING}, ..., L{QUEUE_DELETING}.
    """

    id: int
    inode: int
    hash: bytes
    size: int
    ranges: ByteRanges
    disk_usage: int
    queue: str


_COLUMNS = "id, inode, hash, size, ranges, disk_usage, queue"


def _blob(row: tuple[Any, ...]) -> Blob:
    return Blob(
        int(row[0]),
        int(row[1]),
        bytes(row[2]),
        int(row[3]),
        decode_ranges(bytes(row[4])),
        int(row[5]),
        str(row[6]),
    )


def _txn_mark_outdated(cursor: Cursor, inode: int, keep: bytes | None) -> None:
    """
    Move the blobs of a file's versions other than C{keep} to the pending
    removal queue (called by the notification rules when the default
    version changes or the file goes); the block cache deletes them later,
    in batches, or first when it needs room.

    @param keep: the new default version, or C{None} for all of them.
    """
    cursor.execute(
        f"UPDATE blob SET queue = '{QUEUE_PENDING_REMOVAL}'"
        " WHERE inode = ? AND hash IS NOT ?"
        f" AND queue NOT IN ('{QUEUE_DELETING}', '{QUEUE_PENDING_REMOVAL}')",
        (inode, keep),
    )


def _txn_open_blob(
    cursor: Cursor, inode: int, digest: bytes, now_ns: int
) -> tuple[Blob, bool]:
    """
    The blob of a file's default version, made if there is none.  A blob
    pending removal whose version is the default again goes back to
    working.

    @param inode: the file.
    @param digest: the version the caller wants: it must be the default.
    @param now_ns: the access time to record, in ns.
    @return: the blob, and whether its row is new (its file is to be made).
    @raise NotFound: if the file does not exist or C{digest} is not its
        default version (any more).
    """
    default = cursor.execute(
        "SELECT size, hash FROM file WHERE inode = ? AND peer = ''", (inode,)
    ).fetchone()
    if default is None or default[1] != digest:
        raise NotFound(f"inode {inode}: version is not the default one")
    row = cursor.execute(
        f"SELECT {_COLUMNS} FROM blob WHERE inode = ? AND hash = ?"
        f" AND queue != '{QUEUE_DELETING}'",
        (inode, digest),
    ).fetchone()
    if row is not None:
        blob = _blob(row)
        if blob.queue == QUEUE_PENDING_REMOVAL:
            blob = evolve(blob, queue=QUEUE_WORKING)
        cursor.execute(
            "UPDATE blob SET last_access_ns = max(last_access_ns, ?), queue = ?"
            " WHERE id = ?",
            (now_ns, blob.queue, blob.id),
        )
        return blob, False
    cursor.execute(
        "INSERT INTO blob (inode, hash, size, last_access_ns) VALUES (?, ?, ?, ?)",
        (inode, digest, default[0], now_ns),
    )
    row = cursor.execute(
        f"SELECT {_COLUMNS} FROM blob WHERE id = last_insert_rowid()"
    ).fetchone()
    return _blob(row), True


def _txn_add_ranges(
    cursor: Cursor, blob_id: int, added: ByteRanges, disk_usage: int
) -> ByteRanges | None:
    """
    Record ranges written and synced to a blob's file (and verified).

    @param added: the bytes written.
    @param disk_usage: the file's C{st_blocks * 512} after the write.
    @return: all the ranges now present, or C{None} if the blob is gone
        or marked for deletion (nothing recorded).
    """
    row = cursor.execute(
        "SELECT ranges, size FROM blob WHERE id = ? AND queue != ?",
        (blob_id, QUEUE_DELETING),
    ).fetchone()
    if row is None:
        return None
    ranges = (decode_ranges(bytes(row[0])) | added) & ByteRanges.of((0, int(row[1])))
    cursor.execute(
        "UPDATE blob SET ranges = ?, disk_usage = ? WHERE id = ?",
        (encode_ranges(ranges), disk_usage, blob_id),
    )
    return ranges


def _txn_reset_ranges(cursor: Cursor, blob_id: int) -> None:
    """
    Forget a blob's ranges (its file was found missing).
    """
    cursor.execute(
        "UPDATE blob SET ranges = x'', disk_usage = 0 WHERE id = ?", (blob_id,)
    )


def _txn_deleting(cursor: Cursor) -> list[int]:
    """
    Mark for deletion every blob pending removal.

    @return: the ids of the blobs marked for deletion.
    """
    cursor.execute(
        "UPDATE blob SET queue = ? WHERE queue = ?",
        (QUEUE_DELETING, QUEUE_PENDING_REMOVAL),
    )
    return [
        int(row[0])
        for row in cursor.execute(
            "SELECT id FROM blob WHERE queue = ? ORDER BY id", (QUEUE_DELETING,)
        )
    ]


def _txn_forget(cursor: Cursor, ids: Iterable[int]) -> None:
    """
    Delete the rows of blobs marked for deletion whose files are gone.
    """
    cursor.executemany(
        "DELETE FROM blob WHERE id = ? AND queue = ?",
        [(blob_id, QUEUE_DELETING) for blob_id in ids],
    )


def _txn_forget_blob(cursor: Cursor, blob_id: int) -> None:
    """
    Delete the row of a blob whose file was taken away whole (realized:
    renamed into the datadir by L{realize.storage.realfiles.realize_blob}).
    The file went first: a crash between the two leaves a row whose file
    is missing, which L{BlobStore.open} resets.
    """
    cursor.execute("DELETE FROM blob WHERE id = ?", (blob_id,))


def _txn_blob(cursor: Cursor, blob_id: int) -> Blob | None:
    row = cursor.execute(
        f"SELECT {_COLUMNS} FROM blob WHERE id = ?", (blob_id,)
    ).fetchone()
    return None if row is None else _blob(row)


def _txn_release(
    cursor: Cursor, blob_id: int, released: ByteRanges
) -> ByteRanges | None:
    """
    Take ranges out of a blob's row, before their bytes leave the file
    (L{punch_hole}): the row never claims bytes the file does not hold.

    @return: the ranges left, or C{None} if the blob is gone or being
        deleted.
    """
    row = cursor.execute(
        "SELECT ranges FROM blob WHERE id = ? AND queue != ?",
        (blob_id, QUEUE_DELETING),
    ).fetchone()
    if row is None:
        return None
    ranges = decode_ranges(bytes(row[0])) - released
    cursor.execute(
        "UPDATE blob SET ranges = ? WHERE id = ?", (encode_ranges(ranges), blob_id)
    )
    return ranges


def _txn_set_disk_usage(cursor: Cursor, blob_id: int, usage: int) -> None:
    cursor.execute("UPDATE blob SET disk_usage = ? WHERE id = ?", (usage, blob_id))


def blob_path(directory: str, blob_id: int) -> str:
    """
    @param directory: the arena's C{workdir/blobs}.
    @return: the path of a blob's file.
    """
    return os.path.join(directory, str(blob_id))


def _os_error(error: OSError, what: str) -> Exception:
    # To be replaced by storage/fs.py's error mapping once merged.
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: {error.strerror}")
    if error.errno == errno.ENOENT:
        return NotFound(f"{what}: {error.strerror}")
    return IOFailure(f"{what}: {error.strerror or error}")


def ensure_blob_file(directory: str, blob_id: int, size: int) -> bool:
    """
    Make a blob's sparse file if it is missing (blocking).

    @param size: the version's size in bytes: the file's length.
    @return: whether the file already existed.
    @raise NoSpace: if the disk is full.
    @raise IOFailure: on another error.
    """
    path = blob_path(directory, blob_id)
    try:
        os.makedirs(directory, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return True
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    except OSError as e:
        raise _os_error(e, f"blob {path}") from e
    return False


def write_blob_range(directory: str, blob_id: int, offset: int, data: bytes) -> int:
    """
    Write bytes into a blob's file and sync them (blocking): the caller
    records the range only after this returns.

    @param offset: where the bytes go, in bytes.
    @param data: the bytes (verified against the version's leaves).
    @return: the file's disk usage afterwards (C{st_blocks * 512}).
    @raise NotFound: if the file is gone (the blob was deleted): nothing
        is written.
    @raise NoSpace: if the disk is full.
    @raise IOFailure: on another error.
    """
    path = blob_path(directory, blob_id)
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)
            os.fdatasync(fd)
            return os.fstat(fd).st_blocks * 512
        finally:
            os.close(fd)
    except OSError as e:
        raise _os_error(e, f"blob {path}") from e


def read_blob_range(directory: str, blob_id: int, start: int, end: int) -> bytes:
    """
    Read bytes of a blob's file (blocking).

    @return: the bytes C{[start, end)}, shorter only if the file is.
    @raise NotFound: if the file is gone.
    @raise IOFailure: on another error.
    """
    path = blob_path(directory, blob_id)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return _pread(fd, start, end)
        finally:
            os.close(fd)
    except OSError as e:
        raise _os_error(e, f"blob {path}") from e


def _pread(fd: int, start: int, end: int) -> bytes:
    # To be replaced by storage/fs.py's pread helper once merged.
    parts = []
    offset = start
    while offset < end:
        data = os.pread(fd, end - offset, offset)
        if not data:
            break
        parts.append(data)
        offset += len(data)
    return b"".join(parts)


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _load_fallocate() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):  # pragma: no cover (not Linux)
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


_fallocate = _load_fallocate()


def punch_hole(directory: str, blob_id: int, ranges: ByteRanges) -> int | None:
    """
    Give the bytes of ranges back to the filesystem (blocking;
    C{fallocate(FALLOC_FL_PUNCH_HOLE)}: the file keeps its length).  The
    ranges must have left the row first (L{_txn_release}).

    @return: the file's C{st_blocks * 512} afterwards, or C{None} if the
        file is gone.
    @raise IOFailure: if the filesystem cannot punch holes, or on another
        error.
    """
    path = blob_path(directory, blob_id)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _os_error(e, f"blob {path}") from e
    try:
        for start, end in ranges:
            if _fallocate is None:  # pragma: no cover (not Linux)
                raise IOFailure(f"blob {path}: cannot punch holes here")
            flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if _fallocate(fd, flags, start, end - start) != 0:
                code = ctypes.get_errno()
                raise IOFailure(
                    f"blob {path}: cannot release bytes: {os.strerror(code)}"
                )
        return os.fstat(fd).st_blocks * 512
    except OSError as e:
        raise _os_error(e, f"blob {path}") from e
    finally:
        os.close(fd)


def delete_blob_files(directory: str, ids: Iterable[int]) -> None:
    """
    Remove blob files (blocking); a file already gone is fine.

    @raise IOFailure: if a file cannot be removed.
    """
    for blob_id in ids:
        path = blob_path(directory, blob_id)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _os_error(e, f"blob {path}") from e


def read_cached(
    connection: sqlite3.Connection,
    directory: str,
    inode: int,
    digest: bytes,
    start: int,
    end: int,
) -> bytes | None:
    """
    Read a range of a version straight from its blob if it is all there:
    the FUSE thread's fast path (blocking; a read-only connection of that
    thread).

    @param connection: a connection on the arena db.
    @param directory: the arena's C{workdir/blobs}.
    @param digest: the version (the default one, as the caller saw it).
    @param start: first byte.
    @param end: end of the range, exclusive; clipped to the version's size.
    @return: the bytes, or C{None} if some of them are not in the blob (or
        it has none, or it is being deleted): ask the downloader.
    @raise IOFailure: on a read error other than a vanished file.
    """
    row = connection.execute(
        "SELECT id, size, ranges FROM blob WHERE inode = ? AND hash = ? AND queue != ?",
        (inode, digest, QUEUE_DELETING),
    ).fetchone()
    if row is None:
        return None
    end = min(end, int(row[1]))
    if start >= end:
        return b""
    if not decode_ranges(bytes(row[2])).contains(start, end):
        return None
    try:
        data = read_blob_range(directory, int(row[0]), start, end)
    except NotFound:
        return None
    if len(data) != end - start:
        return None
    # Ranges of a large file are released behind its reader: the row first,
    # then the bytes (realize.storage.cache.punch_hole).  Still in the row
    # after the read means they were still in the file during it.
    again = connection.execute(
        "SELECT ranges FROM blob WHERE id = ? AND queue != ?",
        (row[0], QUEUE_DELETING),
    ).fetchone()
    if again is None or not decode_ranges(bytes(again[0])).contains(start, end):
        return None
    return data


class CachedState(NamedTuple):
    """
    How much of a version its blob holds.

    @ivar present: bytes present.
    @ivar size: the version's size in bytes.
    @ivar queue: the blob's queue.
    """

    present: int
    size: int
    queue: str


def cached_state(
    connection: sqlite3.Connection, inode: int, digest: bytes
) -> CachedState | None:
    """
    How much of a version is in its blob (blocking; any thread's
    read-only connection): for C{user.realize.status} and C{keep_cache}.

    @return: C{(bytes present, size, queue)}, or C{None} if it has no
        blob.
    """
    row = connection.execute(
        "SELECT size, ranges, queue FROM blob WHERE inode = ? AND hash = ?"
        " AND queue != ?",
        (inode, digest, QUEUE_DELETING),
    ).fetchone()
    if row is None:
        return None
    return CachedState(decode_ranges(bytes(row[1])).total(), int(row[0]), str(row[2]))


class RunInteraction(Protocol):
    """
    Run a C{_txn_*(cursor, *args)} function in one transaction of the arena
    db's writer, e.g. an adbapi C{ConnectionPool.runInteraction}.
    """

    def __call__(
        self, f: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Deferred[T]: ...


@define(eq=False)
class BlobStore:
    """
    The reactor side of one arena's blobs: every method returns at once
    and does its sqlite work through C{run_interaction} and its file work
    through C{run_in_thread}, in the write order of the module docstring.

    @ivar directory: the arena's C{workdir/blobs}.
    @ivar run_in_thread: for file I/O.
    @ivar run_interaction: for the arena db's transactions.
    @ivar now_ns: the current time in ns (last access).
    """

    directory: str
    run_in_thread: RunInThread
    run_interaction: RunInteraction
    now_ns: Callable[[], int]

    async def open(self, inode: int, digest: bytes) -> Blob:
        """
        The blob of a file's default version, its row and file made if
        needed.  A row whose file vanished (a crash, a hand) loses its
        ranges.

        @raise NotFound: if C{digest} is not the file's default version.
        @raise NoSpace: if the file cannot be made for lack of space.
        @raise IOFailure: on another error.
        """
        blob, _new = await self.run_interaction(
            _txn_open_blob, inode, digest, self.now_ns()
        )
        existed = await self.run_in_thread(
            ensure_blob_file, self.directory, blob.id, blob.size
        )
        if not existed and blob.ranges:
            await self.run_interaction(_txn_reset_ranges, blob.id)
            blob = Blob(
                blob.id,
                blob.inode,
                blob.hash,
                blob.size,
                ByteRanges(),
                0,
                blob.queue,
            )
        return blob

    async def write(self, blob: Blob, offset: int, data: bytes) -> ByteRanges | None:
        """
        Write verified bytes into a blob, sync them, then record them.

        @param offset: where they go, in bytes.
        @return: the ranges now present, or C{None} if the blob was deleted
            meanwhile (nothing recorded; the caller may still serve the
            bytes, which match the version it asked for).
        @raise NoSpace: if the disk is full.
        @raise IOFailure: on another error.
        """
        written = await self.write_measured(blob, offset, data)
        return None if written is None else written[0]

    async def write_measured(
        self, blob: Blob, offset: int, data: bytes
    ) -> tuple[ByteRanges, int] | None:
        """
        L{write}, also giving the file's disk usage afterwards.

        @return: C{(ranges now present, st_blocks * 512)}, or C{None} if
            the blob was deleted meanwhile.
        """
        try:
            usage = await self.run_in_thread(
                write_blob_range, self.directory, blob.id, offset, data
            )
        except NotFound:
            return None
        ranges = await self.run_interaction(
            _txn_add_ranges,
            blob.id,
            ByteRanges.of((offset, offset + len(data))),
            usage,
        )
        return None if ranges is None else (ranges, usage)

    async def ranges(self, blob: Blob) -> ByteRanges | None:
        """
        @return: the ranges a blob holds now, or C{None} if it is gone or
            being deleted.
        """
        row = await self.run_interaction(_txn_blob, blob.id)
        if row is None or row.queue == QUEUE_DELETING:
            return None
        return row.ranges

    async def read(self, blob: Blob, start: int, end: int) -> bytes:
        """
        Read bytes of a blob (present ones: see L{Blob.ranges}).

        @raise NotFound: if its file is gone.
        @raise IOFailure: on another error.
        """
        return await self.run_in_thread(
            read_blob_range, self.directory, blob.id, start, end
        )

    async def release(self, blob: Blob, ranges: ByteRanges) -> ByteRanges | None:
        """
        Give back the disk space of ranges of a blob (a large file read
        through a window, #largedl): out of the row first, then out of the
        file.

        @return: the ranges left, or C{None} if the blob is gone.
        @raise IOFailure: if the bytes cannot be released (they are out of
            the row all the same: never served).
        """
        released = await self.release_measured(blob, ranges)
        return None if released is None else released[0]

    async def release_measured(
        self, blob: Blob, ranges: ByteRanges
    ) -> tuple[ByteRanges, int] | None:
        """
        L{release}, also giving the file's disk usage afterwards.

        @return: C{(ranges left, st_blocks * 512 of the file)}, or C{None}
            if the blob is gone.
        @raise IOFailure: if the bytes cannot be released (they are out of
            the row all the same: never served).
        """
        left = await self.run_interaction(_txn_release, blob.id, ranges)
        if left is None:
            return None
        usage = await self.run_in_thread(punch_hole, self.directory, blob.id, ranges)
        if usage is None:
            return None
        await self.run_interaction(_txn_set_disk_usage, blob.id, usage)
        return left, usage

    def working_area(self) -> int | None:
        """
        @return: C{None}: without a block cache there is no limit (see
            L{realize.services.cache.BlobCache.working_area}).
        """
        return None

    async def delete_outdated(self) -> int:
        """
        Delete every outdated blob now (pending removal, or marked for
        deletion): their rows marked, their files, then their rows.  The
        block cache does it in batches instead (L{delete}).

        @return: how many were deleted.
        @raise IOFailure: if a file cannot be removed (its row stays).
        """
        ids = await self.run_interaction(_txn_deleting)
        if not ids:
            return 0
        await self.delete(ids)
        return len(ids)

    async def delete(self, ids: list[int]) -> None:
        """
        Delete blobs whose rows are marked for deletion: their files, then
        their rows.

        @raise IOFailure: if a file cannot be removed (its row stays).
        """
        if ids:
            await self.run_in_thread(delete_blob_files, self.directory, ids)
            await self.run_interaction(_txn_forget, ids)
