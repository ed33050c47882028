"""
Frozen value types shared by every layer: peer ids, arena names, paths,
file entries, and what store commands answer (L{FileState},
L{SmallRead}, L{WriteResult}) or take (L{SmallFile}).

Paths (DESIGN.md section 1) are relative to an arena root, C{/}-separated,
without C{.}, C{..} or empty segments, without NUL; C{:} is allowed.  They
are plain C{str} values checked by L{check_path}, because a move handles
millions of them and a wrapper object per path would cost more than it
protects.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from typing import Final, Literal, NewType

from attrs import field as attrs_field
from attrs import frozen

from realize.errors import BadRequest, InvalidPath

__all__ = [
    "CHUNK_SIZE",
    "KIND_DIR",
    "KIND_FILE",
    "MAX_DELTA_RANGE",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MIN_HOLE",
    "NOTIFICATION_KINDS",
    "RESERVED_NAME",
    "ArenaName",
    "ByteRanges",
    "Entry",
    "EntryKind",
    "FileInfo",
    "FileState",
    "Hole",
    "Notification",
    "PeerId",
    "SmallFile",
    "SmallRead",
    "WriteResult",
    "check_arena_name",
    "check_notification",
    "check_path",
    "check_range",
    "is_partial_name",
    "partial_name",
]

#: A peer's short id from the config (C{a}, C{laptop}).
PeerId = NewType("PeerId", str)

#: An arena's name; may contain C{/}.
ArenaName = NewType("ArenaName", str)

#: Bytes per chunk of a data stream (a read, a write): the unit of disk I/O
#: and of data frames on the wire.  Equal to the Merkle leaf size, so that a
#: stream that starts on a leaf boundary hashes without copying.
CHUNK_SIZE = 1 << 20

#: Shortest hole of a sparse file that a sparse read stream gives as a
#: L{Hole} rather than as zeros: shorter ones cost less to send than to
#: describe (issue 15).
MIN_HOLE = 64 << 10

#: Largest byte range of one delta command (Signature, Diff, ApplyDelta):
#: the range, its basis and the delta are held in memory while it runs, so
#: callers repair larger ranges in pieces of this size.
MAX_DELTA_RANGE = 16 << 20

#: Longest path accepted, in bytes of UTF-8 (Linux C{PATH_MAX}).
MAX_PATH_BYTES = 4096

#: Longest path segment accepted, in bytes of UTF-8 (Linux C{NAME_MAX}),
#: leaving room for the C{.<name>.part} decoration of partial files.
MAX_NAME_BYTES = 255 - len("..part")

_PARTIAL_PREFIX = "."
_PARTIAL_SUFFIX = ".part"


def partial_name(name: str) -> str:
    """
    Name of the partial file of a final file name (DESIGN.md section 1).

    @param name: a final file name, one path segment.
    @return: C{".<name>.part"}.
    """
    return f"{_PARTIAL_PREFIX}{name}{_PARTIAL_SUFFIX}"


#: The top-level name of each arena that the FUSE view keeps for itself
#: (C{.realize/conflicts/}): no peer's file is shown there, and no file
#: of a datadir there is indexed (a conflict file opened for writing
#: through the overlay is copied up there: docs/real.md).
RESERVED_NAME: Final = ".realize"


def is_partial_name(name: str) -> bool:
    """
    Whether a file name is a partial file's name.

    @param name: one path segment.
    @return: C{True} for C{.<something>.part}.
    """
    return (
        name.startswith(_PARTIAL_PREFIX)
        and name.endswith(_PARTIAL_SUFFIX)
        and len(name) > len(_PARTIAL_PREFIX) + len(_PARTIAL_SUFFIX)
    )


def final_name(name: str) -> str:
    """
    Final file name of a partial file name.

    @param name: a name for which L{is_partial_name} is true.
    @return: the C{<name>} of C{.<name>.part}.
    """
    return name[len(_PARTIAL_PREFIX) : -len(_PARTIAL_SUFFIX)]


#: Largest file size or offset, and largest mtime in nanoseconds: the
#: kernel's C{off_t} and the wire's mtimes are signed 64-bit integers.
MAX_INT64 = (1 << 63) - 1


def check_range(start: int, end: int, file_size: int | None = None) -> None:
    """
    Validate a byte range.

    @param start: first byte.
    @param end: end of the range, exclusive.
    @param file_size: if given, the range must lie within C{[0, file_size]}.
    @raise BadRequest: if the range is negative, reversed, beyond
        C{file_size} or beyond L{MAX_INT64}.
    """
    if not 0 <= start <= end <= MAX_INT64:
        raise BadRequest(f"bad byte range [{start}, {end})")
    if file_size is not None and not end <= file_size <= MAX_INT64:
        raise BadRequest(f"byte range [{start}, {end}) beyond file size {file_size}")


def check_mtime(mtime_ns: int | None) -> None:
    """
    Validate a modification time from the wire.

    @param mtime_ns: nanoseconds since the epoch, or C{None}.
    @raise BadRequest: if it does not fit a signed 64-bit integer.
    """
    if mtime_ns is not None and not -MAX_INT64 - 1 <= mtime_ns <= MAX_INT64:
        raise BadRequest(f"mtime {mtime_ns} ns is out of range")


def clamp_mtime(mtime_ns: int) -> int:
    """
    A file's mtime as the protocol carries it: clamped to a signed 64-bit
    count of nanoseconds (years 1677 to 2262).  ext4 and XFS store times
    up to 2446, which C{os.stat} gives beyond that range; such a file moves
    with the mtime clamped, and compares equal to itself.

    @param mtime_ns: C{st_mtime_ns}.
    @return: the clamped value.
    """
    return min(max(mtime_ns, -MAX_INT64 - 1), MAX_INT64)


def _check_segments(value: str, what: str) -> list[str]:
    if not value:
        raise InvalidPath(f"{what} is empty")
    if "\0" in value:
        raise InvalidPath(f"{what} {value!r} contains NUL")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath(f"{what} {value!r} is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidPath(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    if value.startswith("/"):
        raise InvalidPath(f"{what} {value!r} is absolute")
    segments = value.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidPath(f"{what} {value!r} has an empty, '.' or '..' segment")
        if len(segment.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidPath(
                f"{what} {value!r} has a segment longer than {MAX_NAME_BYTES} bytes"
            )
    return segments


def check_path(value: str) -> list[str]:
    """
    Validate a file path from the wire or the command line.

    @param value: the path, relative to an arena root.
    @return: its segments, e.g. C{["dir", "file.txt"]}.
    @raise InvalidPath: if the path is empty, absolute, has an empty, C{.}
        or C{..} segment, contains NUL, is not valid UTF-8 (a string
        holding surrogates), is too long, or names a partial file.
    """
    segments = _check_segments(value, "path")
    if is_partial_name(segments[-1]):
        raise InvalidPath(f"path {value!r} names a partial file")
    return segments


def check_arena_name(value: str) -> ArenaName:
    """
    Validate an arena name.

    @param value: the name, e.g. C{"documents"} or C{"home/photos"}.
    @return: the name.
    @raise InvalidPath: if the name breaks the path rules of L{check_path}.
    """
    _check_segments(value, "arena name")
    return ArenaName(value)


@frozen
class FileInfo:
    """
    One file of an arena, as listed.

    @ivar path: path relative to the arena root (the final path, also for a
        partial file).
    @ivar size: size in bytes.
    @ivar mtime_ns: modification time, nanoseconds since the epoch.
    @ivar partial: whether this is the partial file of C{path}.
    """

    path: str
    size: int
    mtime_ns: int
    partial: bool = False


@frozen
class FileState:
    """
    What a read or hash saw of a file.

    @ivar leaves: Merkle leaf digests (L{realize.hashing}) of the hashed
        range, starting at its leaf-aligned start; empty if no hash was
        asked for.
    @ivar size: the file's size in bytes when the operation ended.
    @ivar mtime_ns: the file's mtime in ns when the operation ended.
    """

    leaves: tuple[bytes, ...]
    size: int
    mtime_ns: int


@frozen
class SmallFile:
    """
    A whole small file to write in a batch (L{Store.write_files}).

    @ivar path: its path.
    @ivar size: its size in bytes (the length of its data).
    @ivar mtime_ns: the mtime to give it.
    @ivar root: the Merkle root its data must have.
    """

    path: str
    size: int
    mtime_ns: int
    root: bytes


@frozen
class Hole:
    """
    A run of zero bytes in a data stream that is not sent as zeros: a hole
    of a sparse file (C{SEEK_HOLE}), which the writing side leaves
    unallocated (issue 15).  Sparse streams (L{realize.interfaces.
    SparseStore}) yield these between their chunks of C{bytes}.

    @ivar length: bytes of zeros, at least 1.
    """

    length: int


@frozen
class SmallRead:
    """
    A whole small file read in a batch (L{Store.read_files}).

    @ivar data: its content (empty if it was larger than the limit).
    @ivar size: its size in bytes when read.
    @ivar mtime_ns: its mtime when read.
    @ivar root: the Merkle root of C{data}.
    """

    data: bytes
    size: int
    mtime_ns: int
    root: bytes


@frozen
class WriteResult:
    """
    The outcome of L{Store.write}.

    @ivar leaves: Merkle leaves of C{[align_down(start), end)} of the
        partial file after the write, if asked for.
    @ivar finished: whether the file was verified and finished (only when
        a C{finish_root} was given).
    """

    leaves: tuple[bytes, ...]
    finished: bool = False


#: Kinds of notification (DESIGN.md sections 9 and 10).  The first four are
#: history entries; the others frame a subscription.
ADD: Final = "add"
REPLACE: Final = "replace"
REMOVE: Final = "remove"
DROP: Final = "drop"
CONNECTED: Final = "connected"
CATCHUP_START: Final = "catchup_start"
CATCHUP: Final = "catchup"
CATCHUP_COMPLETE: Final = "catchup_complete"

NotificationKind = Literal[
    "add",
    "replace",
    "remove",
    "drop",
    "connected",
    "catchup_start",
    "catchup",
    "catchup_complete",
]

#: Kinds that a history table stores.
HISTORY_KINDS: tuple[NotificationKind, ...] = (ADD, REPLACE, REMOVE, DROP)

NOTIFICATION_KINDS: tuple[NotificationKind, ...] = (
    ADD,
    REPLACE,
    REMOVE,
    DROP,
    CONNECTED,
    CATCHUP_START,
    CATCHUP,
    CATCHUP_COMPLETE,
)

#: Largest file size a notification may claim: 2**62 bytes (4 EiB), far
#: beyond any disk, far below overflow in sums of a few of them.
MAX_NOTIFIED_SIZE = 1 << 62


@frozen
class Notification:
    """
    A change in an arena reported by a peer, or a message framing a
    subscription (DESIGN.md section 9, table of notifications).

    Fields that do not apply to a kind are C{None}:

        - C{add}: path, size, mtime_ns, hash (C{None}: no version yet).
        - C{replace}: path, size, mtime_ns, hash, old_hash.
        - C{remove}: path, mtime_ns (the #unlinktime rule), old_hash.
        - C{drop}: path, old_hash.
        - C{connected}: uuid (the store uuid of the publisher).
        - C{catchup_start}: nothing but the position.
        - C{catchup}: path, size, mtime_ns, hash.
        - C{catchup_complete}: position (what the subscriber stores).

    @ivar kind: one of L{NOTIFICATION_KINDS}.
    @ivar arena: the arena.
    @ivar position: the history position of the entry (for C{catchup}
        entries and C{connected}, the position the publisher's history has
        reached).
    @ivar path: the file's path.
    @ivar size: its size in bytes.
    @ivar mtime_ns: its mtime in ns since the epoch.
    @ivar hash: its Merkle root (L{realize.hashing}), or C{None} for a file
        not yet hashed (#musthash).
    @ivar old_hash: the version it replaces or removes, or C{None} if that
        version was never hashed.
    @ivar uuid: the publisher's store uuid (C{connected} only).
    """

    kind: NotificationKind
    arena: ArenaName
    position: int
    path: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    hash: bytes | None = None
    old_hash: bytes | None = None
    uuid: str | None = None


_FIELDS: dict[str, tuple[str, ...]] = {
    ADD: ("path", "size", "mtime_ns"),
    REPLACE: ("path", "size", "mtime_ns"),
    REMOVE: ("path", "mtime_ns"),
    DROP: ("path",),
    CONNECTED: ("uuid",),
    CATCHUP_START: (),
    CATCHUP: ("path", "size", "mtime_ns"),
    CATCHUP_COMPLETE: (),
}


def check_notification(value: Notification) -> Notification:
    """
    Validate a notification received from a peer, as strictly as a store
    command's arguments: a hostile or buggy peer cannot make us create
    C{..}, absurd sizes or huge names.

    @param value: the notification.
    @return: C{value}.
    @raise BadRequest: if its kind is unknown, a field it needs is missing,
        a size is negative or over L{MAX_NOTIFIED_SIZE}, an mtime or
        position is out of range, a hash is not 32 bytes, or a uuid is not
        a short printable string.
    @raise InvalidPath: if its path breaks the rules of L{check_path}.
    """
    if value.kind not in _FIELDS:
        raise BadRequest(f"unknown notification kind {value.kind!r}")
    for name in _FIELDS[value.kind]:
        if getattr(value, name) is None:
            raise BadRequest(f"{value.kind} notification without {name}")
    check_arena_name(value.arena)
    if not 0 <= value.position <= MAX_INT64:
        raise BadRequest(f"notification position {value.position} is out of range")
    if value.path is not None:
        check_path(value.path)
    if value.size is not None and not 0 <= value.size <= MAX_NOTIFIED_SIZE:
        raise BadRequest(
            f"notification for {value.path!r}: size {value.size} is out of range"
        )
    check_mtime(value.mtime_ns)
    for name in ("hash", "old_hash"):
        digest = getattr(value, name)
        if digest is not None and len(digest) != 32:
            raise BadRequest(
                f"notification for {value.path!r}: {name} of {len(digest)} "
                "bytes is not a Merkle root"
            )
    if value.uuid is not None and not (
        0 < len(value.uuid) <= 64 and value.uuid.isprintable()
    ):
        raise BadRequest(f"notification uuid {value.uuid!r} is malformed")
    return value


#: Kinds of entry in the Unreal view (L{Entry.kind}).
KIND_FILE: Final = "file"
KIND_DIR: Final = "dir"

EntryKind = Literal["file", "dir"]


@frozen
class Entry:
    """
    One file or directory of the Unreal view (DESIGN.md section 10), as the
    FUSE layer shows it: what C{lookup}, C{getattr} and C{readdir} answer.

    @ivar inode: its inode number, C{>= 1}; the mount root is inode 1.
        Inodes are never reused while the global db lives.
    @ivar kind: L{KIND_FILE} or L{KIND_DIR}.
    @ivar size: a file's size in bytes (of the default version); 0 for a
        directory.
    @ivar mtime_ns: modification time in ns since the epoch: a file's is
        the default version's, a directory's is when an entry was last
        added to or removed from it (local clock).
    @ivar hash: a file's default version, its Merkle root (32 bytes), or
        C{None} for a file not hashed yet ("no version", #musthash) and
        for every directory.
    @ivar nlink: link count: 1 for a file; 2 plus the number of
        subdirectories for a directory.
    """

    inode: int
    kind: EntryKind
    size: int
    mtime_ns: int
    hash: bytes | None
    nlink: int


def _normalized(pairs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """
    Sort and merge ranges, dropping empty ones and joining those that
    overlap or touch.
    """
    out: list[tuple[int, int]] = []
    for start, end in sorted(p for p in pairs if p[0] < p[1]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return tuple(out)


def _check_normalized(
    instance: object, attribute: object, value: tuple[tuple[int, int], ...]
) -> None:
    previous_end = -1
    for start, end in value:
        if not 0 <= start < end <= MAX_INT64 or start <= previous_end:
            raise ValueError(
                f"byte ranges {value!r} are not sorted, disjoint, non-adjacent "
                "and non-empty"
            )
        previous_end = end


@frozen
class ByteRanges:
    """
    A set of byte offsets, held as sorted, disjoint, non-adjacent, non-empty
    half-open ranges C{[start, end)} (e.g. the bytes of a blob present on
    disk).  Build one with L{of}; the constructor only checks.

    @ivar ranges: the ranges, in bytes, C{0 <= start < end <= 2**63 - 1}.
    """

    ranges: tuple[tuple[int, int], ...] = attrs_field(
        default=(), validator=_check_normalized
    )

    @classmethod
    def of(cls, *pairs: tuple[int, int]) -> ByteRanges:
        """
        @param pairs: C{(start, end)} ranges in any order; empty ones are
            ignored, overlapping and touching ones merged.
        @return: their union.
        @raise ValueError: if an offset is negative or beyond L{MAX_INT64}.
        """
        for start, end in pairs:
            if not (0 <= start <= MAX_INT64 and 0 <= end <= MAX_INT64):
                raise ValueError(f"bad byte range [{start}, {end})")
        return cls(_normalized(list(pairs)))

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return len(self.ranges)

    def total(self) -> int:
        """
        @return: the number of bytes in the set.
        """
        return sum(end - start for start, end in self.ranges)

    def __or__(self, other: ByteRanges) -> ByteRanges:
        return ByteRanges(_normalized([*self.ranges, *other.ranges]))

    def __and__(self, other: ByteRanges) -> ByteRanges:
        out: list[tuple[int, int]] = []
        i = j = 0
        a, b = self.ranges, other.ranges
        while i < len(a) and j < len(b):
            start = max(a[i][0], b[j][0])
            end = min(a[i][1], b[j][1])
            if start < end:
                out.append((start, end))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return ByteRanges(tuple(out))

    def __sub__(self, other: ByteRanges) -> ByteRanges:
        out: list[tuple[int, int]] = []
        b = other.ranges
        j = 0
        for start, end in self.ranges:
            while j < len(b) and b[j][1] <= start:
                j += 1
            k = j
            cursor = start
            while k < len(b) and b[k][0] < end:
                if b[k][0] > cursor:
                    out.append((cursor, b[k][0]))
                cursor = max(cursor, b[k][1])
                k += 1
            if cursor < end:
                out.append((cursor, end))
        return ByteRanges(tuple(out))

    def contains(self, start: int, end: int) -> bool:
        """
        @param start: first byte of a range.
        @param end: its end, exclusive.
        @return: whether every byte of C{[start, end)} is in the set (an
            empty range is always contained).
        """
        if start >= end:
            return True
        index = bisect_right(self.ranges, (start, MAX_INT64 + 1)) - 1
        return index >= 0 and self.ranges[index][1] >= end

    def __contains__(self, offset: object) -> bool:
        return isinstance(offset, int) and self.contains(offset, offset + 1)
