"""
Frozen value types shared by every layer: peer ids, arena names, paths,
file entries.

Paths (DESIGN.md section 1) are relative to an arena root, C{/}-separated,
without C{.}, C{..} or empty segments, without NUL; C{:} is allowed.  They
are plain C{str} values checked by L{check_path}, because a move handles
millions of them and a wrapper object per path would cost more than it
protects.
"""

from __future__ import annotations

from typing import NewType

from attrs import frozen

from realize.errors import BadRequest, InvalidPath

__all__ = [
    "CHUNK_SIZE",
    "MAX_DELTA_RANGE",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "ArenaName",
    "FileInfo",
    "PeerId",
    "check_arena_name",
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
