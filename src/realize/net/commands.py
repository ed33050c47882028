"""
The wire schema: AMP commands of the store protocol (DESIGN.md section 5;
docs/protocol.md).

Bulk data does not travel in AMP values (limited to 65,535 bytes and slow
to parse): a command that moves data names a I{stream id}, and the data
moves in raw frames of the connection's framing layer
(L{realize.net.protocol}) before the answer (Read, List: responder to
caller) or between the command and the answer (Write: caller to
responder).  Every command maps the errors of L{realize.errors} to stable
codes.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.amp import (
    MAX_VALUE_LENGTH,
    Argument,
    Boolean,
    Command,
    Integer,
    ListOf,
    String,
    Unicode,
)

from realize.errors import WIRE_ERRORS

__all__ = [
    "Arenas",
    "BigBytes",
    "Delete",
    "Finish",
    "Hash",
    "List",
    "Read",
    "Truncate",
    "Write",
]


class BigBytes(Argument):
    """
    A bytes value of any length, split over the keys C{name}, C{name.1},
    C{name.2}, ... of at most 65,535 bytes each (AMP's value limit).

    Used for Merkle leaf lists, 32 bytes per MiB of file.
    """

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        value: bytes = objects[name.decode("ascii")]
        strings[name] = value[:MAX_VALUE_LENGTH]
        for index, offset in enumerate(
            range(MAX_VALUE_LENGTH, len(value), MAX_VALUE_LENGTH), 1
        ):
            strings[b"%s.%d" % (name, index)] = value[
                offset : offset + MAX_VALUE_LENGTH
            ]

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        parts = [strings.get(name, b"")]
        index = 1
        while (key := b"%s.%d" % (name, index)) in strings:
            parts.append(strings[key])
            index += 1
        objects[name.decode("ascii")] = b"".join(parts)


class _StoreCommand(Command):
    errors = WIRE_ERRORS  # type: ignore[assignment]


class Arenas(_StoreCommand):
    """
    The arenas the calling peer may use.
    """

    arguments: list[tuple[bytes, Argument]] = []
    response = [(b"arenas", ListOf(Unicode()))]


class List(_StoreCommand):
    """
    The files of an arena.  The entries arrive as data frames on C{stream}
    before the answer, encoded by L{realize.net.protocol.encode_entries}.
    """

    arguments = [(b"arena", Unicode()), (b"stream", Integer())]
    response = [(b"count", Integer())]


class Read(_StoreCommand):
    """
    Bytes C{[start, end)} of a file, as data frames on C{stream} before the
    answer; with C{hash_from}, the answer carries the Merkle leaves of
    C{[hash_from, end)} (32 bytes each, concatenated).
    """

    arguments = [
        (b"arena", Unicode()),
        (b"path", Unicode()),
        (b"start", Integer()),
        (b"end", Integer()),
        (b"stream", Integer()),
        (b"hash_from", Integer(optional=True)),
    ]
    response = [
        (b"leaves", BigBytes()),
        (b"size", Integer()),
        (b"mtime_ns", Integer()),
    ]


class Write(_StoreCommand):
    """
    Write C{[start, end)} of the partial file from the data frames that
    follow the command on C{stream}, up to the stream's end frame.
    """

    arguments = [
        (b"arena", Unicode()),
        (b"path", Unicode()),
        (b"start", Integer()),
        (b"end", Integer()),
        (b"file_size", Integer()),
        (b"stream", Integer()),
        (b"hash", Boolean()),
        (b"finish_root", String(optional=True)),
        (b"mtime_ns", Integer(optional=True)),
    ]
    response = [(b"leaves", BigBytes()), (b"finished", Boolean())]


class Truncate(_StoreCommand):
    """
    Truncate or extend the partial file.
    """

    arguments = [(b"arena", Unicode()), (b"path", Unicode()), (b"size", Integer())]
    response: list[tuple[bytes, Argument]] = []


class Finish(_StoreCommand):
    """
    Partial file to final file, durably.
    """

    arguments = [
        (b"arena", Unicode()),
        (b"path", Unicode()),
        (b"mtime_ns", Integer(optional=True)),
    ]
    response: list[tuple[bytes, Argument]] = []


class Delete(_StoreCommand):
    """
    Delete the final and partial files of a path (if the final file still
    has C{size} and C{mtime_ns}, when given).
    """

    arguments = [
        (b"arena", Unicode()),
        (b"path", Unicode()),
        (b"size", Integer(optional=True)),
        (b"mtime_ns", Integer(optional=True)),
    ]
    response: list[tuple[bytes, Argument]] = []


class Hash(_StoreCommand):
    """
    Merkle leaves of C{[start, end)} of a file (partial if any).
    """

    arguments = [
        (b"arena", Unicode()),
        (b"path", Unicode()),
        (b"start", Integer()),
        (b"end", Integer()),
    ]
    response = [
        (b"leaves", BigBytes()),
        (b"size", Integer()),
        (b"mtime_ns", Integer()),
    ]
