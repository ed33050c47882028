"""
The wire schema: AMP commands of the store protocol (DESIGN.md section 5)
and of the history protocol (section 9); docs/protocol.md documents every
field.

Bulk data does not travel in AMP values (limited to 65,535 bytes and slow
to parse): a command that moves data names a I{stream id}, and the data
moves in raw frames of the connection's framing layer
(L{realize.net.framing}) before the answer (Read, List: responder to
caller) or between the command and the answer (Write: caller to
responder).  Every command maps the errors of L{realize.errors} to stable
codes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

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

if TYPE_CHECKING:
    from realize.model import FileInfo, SmallFile

__all__ = [
    "FEATURE_SPARSE",
    "OUTCOME",
    "ApplyDelta",
    "ArenaId",
    "Arenas",
    "BigBytes",
    "Delete",
    "DeleteFiles",
    "Diff",
    "Features",
    "Finish",
    "Hash",
    "List",
    "Notifications",
    "Packed",
    "Read",
    "ReadFiles",
    "Records",
    "SetCompression",
    "SetRateLimit",
    "Signature",
    "Subscribe",
    "Truncate",
    "Unsubscribe",
    "Write",
    "WriteFiles",
    "pack_delete_files",
    "pack_write_files",
]


class Text(Unicode):
    """
    A text argument whose invalid UTF-8 decodes with C{surrogateescape}:
    the store then refuses it like any malformed path (INVALID_PATH, or
    NOT_FOUND for an arena name) instead of AMP failing to parse the box.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def fromString(self, inString: bytes) -> str:
        return inString.decode("utf-8", "surrogateescape")


class BigBytes(Argument):
    """
    A bytes value of any length, split over the keys C{name}, C{name.1},
    C{name.2}, ... of at most 65,535 bytes each (AMP's value limit).

    Used for Merkle leaf lists, 32 bytes per MiB of file.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

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


class Records(Argument):
    """
    A list of records (dicts with the same fields), packed compactly: AMP's
    own C{AmpList} parses every record as a whole AMP box in Python, which
    costs more than the files of a batch of small files themselves.

    Each record is its fields in order: C{"text"} (UTF-8) and C{"blob"}
    (bytes) as a 2-byte big-endian length and the bytes, C{"uint"} as 8
    bytes unsigned, C{"int"} as 8 bytes signed, big-endian.  The packed
    list is carried like L{BigBytes}, so it may exceed AMP's 65,535-byte
    value limit.

    @ivar fields: C{(name, kind)} pairs.
    @ivar max_records: most records accepted, or C{None}: a longer list
        is refused while it is parsed, before it is all in memory.
    """

    def __init__(
        self, fields: list[tuple[str, str]], max_records: int | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        for _, kind in fields:
            if kind not in _KINDS:
                raise ValueError(f"unknown record field kind {kind!r}")
        self.fields = fields
        self.max_records = max_records
        self._big = BigBytes()
        self._plan = _plan(fields)

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        self._big.toBox(
            name,
            strings,
            {name.decode("ascii"): self.pack(objects[name.decode("ascii")])},
            proto,
        )

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        packed: dict[str, Any] = {}
        self._big.fromBox(name, strings, packed, proto)
        objects[name.decode("ascii")] = self.unpack(packed[name.decode("ascii")])

    def pack(self, records: list[dict[str, Any]] | Packed) -> bytes:
        """
        @param records: the records, or their packed form already
            (L{Packed}, which is sent as it is).
        @return: their packed form.
        @raise ValueError: if a text or blob field is longer than 65,535
            bytes, or a number is out of range.
        """
        if isinstance(records, Packed):
            return records.data
        parts: list[bytes] = []
        append = parts.append
        for record in records:
            for field, kind in self.fields:
                value = record[field]
                if kind == "text":
                    value = value.encode("utf-8")
                if kind in ("text", "blob"):
                    append(_LENGTH.pack(len(value)))
                    append(value)
                else:
                    append((_UINT if kind == "uint" else _INT).pack(value))
        return b"".join(parts)

    def count(self, data: bytes) -> int:
        """
        Count the records of a packed list without decoding them (so that a
        list over L{max_records} is refused before it is in memory).

        @raise ValueError: if the data is truncated.
        """
        count = 0
        offset = 0
        end = len(data)
        plan = self._plan
        try:
            while offset < end:
                for _, fixed, _ in plan:
                    if fixed is not None:
                        offset += fixed.size
                    else:
                        (length,) = _LENGTH.unpack_from(data, offset)
                        offset += 2 + length
                count += 1
        except struct.error as e:
            raise ValueError(f"malformed records: {e}") from None
        return count

    def unpack(self, data: bytes) -> list[dict[str, Any]]:
        """
        @param data: a packed list.
        @return: the records.
        @raise ValueError: if the data is malformed (truncated, not UTF-8)
            or holds more than L{max_records} records.
        """
        count = self.count(data) if self.max_records is not None else 0
        if self.max_records is not None and count > self.max_records:
            raise ValueError(
                f"batch of {count} files exceeds the limits ({self.max_records} files)"
            )
        records = []
        offset = 0
        end = len(data)
        plan = self._plan
        try:
            while offset < end:
                record: dict[str, Any] = {}
                for names, fixed, text in plan:
                    if fixed is not None:
                        values = fixed.unpack_from(data, offset)
                        offset += fixed.size
                        for name, number in zip(names, values, strict=True):
                            record[name] = number
                        continue
                    (length,) = _LENGTH.unpack_from(data, offset)
                    offset += 2
                    if offset + length > end:
                        raise ValueError("truncated record")
                    value: Any = data[offset : offset + length]
                    offset += length
                    record[names[0]] = (
                        value.decode("utf-8", "surrogateescape") if text else value
                    )
                records.append(record)
        except (struct.error, UnicodeDecodeError) as e:
            raise ValueError(f"malformed records: {e}") from None
        return records


def _plan(
    fields: list[tuple[str, str]],
) -> list[tuple[tuple[str, ...], struct.Struct | None, bool]]:
    """
    How L{Records.unpack} reads a record of C{fields}: steps of either a
    run of fixed fields (C{uint}, C{int}) read with one C{struct}, or one
    C{text} or C{blob} field (its 2-byte length, then its bytes).  A
    batch of 256 WriteFiles records unpacks in ~1.3 us a record instead of
    ~2.3 with a test of each field's kind.

    @return: the steps: C{(names, fixed, text)}, C{fixed} C{None} for a
        variable field (C{text}: whether it is decoded).
    """
    steps: list[tuple[tuple[str, ...], struct.Struct | None, bool]] = []
    run: list[str] = []
    codes = ""
    for name, kind in fields:
        if kind in ("uint", "int"):
            run.append(name)
            codes += "Q" if kind == "uint" else "q"
            continue
        if run:
            steps.append((tuple(run), struct.Struct("!" + codes), False))
            run, codes = [], ""
        steps.append(((name,), None, kind == "text"))
    if run:
        steps.append((tuple(run), struct.Struct("!" + codes), False))
    return steps


class Packed:
    """
    Records of a batch a caller packed itself, as L{Records.pack} would
    have (e.g. L{pack_write_files}): a L{Records} argument sends them as
    they are.  A batch of small files spares a dict per file and the
    generic packing, which cost more than the rest of its encoding.

    @ivar data: the packed records.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


#: The fixed fields of a WriteFiles record after its path: size (uint),
#: mtime_ns (int) and the length of the root (a blob's length).
_WRITE_FIXED = struct.Struct("!QqH")

#: The fields of a DeleteFiles record after its path: size and mtime_ns.
_DELETE_FIXED = struct.Struct("!Qq")


def pack_write_files(files: Sequence[SmallFile]) -> Packed:
    """
    The C{files} of a L{WriteFiles} call, packed as its L{Records} would
    pack their dicts (path, size, mtime_ns, root).

    @raise ValueError: as L{Records.pack} (C{struct.error} is one), or
        C{UnicodeEncodeError} for a path that is not valid text.
    """
    parts: list[bytes] = []
    append = parts.append
    length = _LENGTH.pack
    fixed = _WRITE_FIXED.pack
    for file in files:
        path = file.path.encode("utf-8")
        root = file.root
        append(length(len(path)))
        append(path)
        append(fixed(file.size, file.mtime_ns, len(root)))
        append(root)
    return Packed(b"".join(parts))


def pack_delete_files(files: Sequence[FileInfo]) -> Packed:
    """
    The C{files} of a L{DeleteFiles} call, packed as its L{Records} would
    pack their dicts (path, size, mtime_ns).

    @raise ValueError: as L{Records.pack}.
    """
    parts: list[bytes] = []
    append = parts.append
    length = _LENGTH.pack
    fixed = _DELETE_FIXED.pack
    for file in files:
        path = file.path.encode("utf-8")
        append(length(len(path)))
        append(path)
        append(fixed(file.size, file.mtime_ns))
    return Packed(b"".join(parts))


#: Largest batch a peer may send or ask for: files, and bytes of data.
MAX_BATCH_FILES = 1024
MAX_BATCH_BYTES = 16 << 20

_KINDS = ("text", "blob", "uint", "int")
_LENGTH = struct.Struct("!H")
_UINT = struct.Struct("!Q")
_INT = struct.Struct("!q")


#: The feature a Features answer names when the answering side moves
#: sparse files hole by hole: Read and Write take C{sparse}.
FEATURE_SPARSE = "sparse"


class _StoreCommand(Command):
    errors = WIRE_ERRORS


class Arenas(_StoreCommand):
    """
    The arenas the calling peer may use.
    """

    arguments: ClassVar[list[tuple[bytes, Argument]]] = []
    response = [(b"arenas", ListOf(Unicode()))]


class Features(_StoreCommand):
    """
    What the answering side can do beyond the commands every peer has
    (e.g. L{FEATURE_SPARSE}).  A peer older than this command answers it
    with AMP's C{UNHANDLED} error: it has none.
    """

    arguments: ClassVar[list[tuple[bytes, Argument]]] = []
    response = [(b"features", ListOf(Unicode()))]


class List(_StoreCommand):
    """
    The files of an arena.  The entries arrive as data frames on C{stream}
    before the answer, encoded by L{realize.net.codec.encode_entries}.
    """

    arguments = [(b"arena", Text()), (b"stream", Integer())]
    response = [(b"count", Integer())]


class Read(_StoreCommand):
    """
    Bytes C{[start, end)} of a file, as data frames on C{stream} before the
    answer; with C{hash_from}, the answer carries the Merkle leaves of
    C{[hash_from, end)} (32 bytes each, concatenated).  With C{sparse}
    (to a peer whose Features answer names C{sparse}), the
    holes of the file are not sent but described
    (L{realize.net.codec.SparseEncoder}).
    """

    arguments = [
        (b"arena", Text()),
        (b"path", Text()),
        (b"start", Integer()),
        (b"end", Integer()),
        (b"stream", Integer()),
        (b"hash_from", Integer(optional=True)),
        (b"sparse", Boolean(optional=True)),
    ]
    response = [
        (b"leaves", BigBytes()),
        (b"size", Integer()),
        (b"mtime_ns", Integer()),
    ]


class Write(_StoreCommand):
    """
    Write C{[start, end)} of the partial file from the data frames that
    follow the command on C{stream}, up to the stream's end frame.  With
    C{sparse} (to a peer whose Features answer names C{sparse}), the data
    describes holes (L{realize.net.codec.
    SparseEncoder}), which the peer leaves unallocated.
    """

    arguments = [
        (b"arena", Text()),
        (b"path", Text()),
        (b"start", Integer()),
        (b"end", Integer()),
        (b"file_size", Integer()),
        (b"stream", Integer()),
        (b"hash", Boolean()),
        (b"finish_root", String(optional=True)),
        (b"mtime_ns", Integer(optional=True)),
        (b"sparse", Boolean(optional=True)),
    ]
    response = [(b"leaves", BigBytes()), (b"finished", Boolean())]


class Truncate(_StoreCommand):
    """
    Truncate or extend the partial file.
    """

    arguments = [(b"arena", Text()), (b"path", Text()), (b"size", Integer())]
    response: ClassVar[list[tuple[bytes, Argument]]] = []


class Finish(_StoreCommand):
    """
    Partial file to final file, durably.
    """

    arguments = [
        (b"arena", Text()),
        (b"path", Text()),
        (b"mtime_ns", Integer(optional=True)),
    ]
    response: ClassVar[list[tuple[bytes, Argument]]] = []


class Delete(_StoreCommand):
    """
    Delete the final and partial files of a path (if the final file still
    has C{size} and C{mtime_ns}, when given).
    """

    arguments = [
        (b"arena", Text()),
        (b"path", Text()),
        (b"size", Integer(optional=True)),
        (b"mtime_ns", Integer(optional=True)),
    ]
    response: ClassVar[list[tuple[bytes, Argument]]] = []


class Hash(_StoreCommand):
    """
    Merkle leaves of C{[start, end)} of a file (partial if any).
    """

    arguments = [
        (b"arena", Text()),
        (b"path", Text()),
        (b"start", Integer()),
        (b"end", Integer()),
    ]
    response = [
        (b"leaves", BigBytes()),
        (b"size", Integer()),
        (b"mtime_ns", Integer()),
    ]


#: Per-file outcome in the answer of a batch command: an empty C{code} for
#: success, else an error code of L{realize.errors.WIRE_ERRORS} and its
#: message.
OUTCOME = [("code", "blob"), ("message", "text")]


class ReadFiles(_StoreCommand):
    """
    Whole small files (final, else partial), in one batch.  Their contents
    arrive as data frames on C{stream} before the answer, concatenated in
    order; each result gives the C{length} of its file's part (0 for a
    file larger than its C{limit} or in error).
    """

    arguments = [
        (b"arena", Text()),
        (b"stream", Integer()),
        (b"files", Records([("path", "text"), ("limit", "uint")], MAX_BATCH_FILES)),
    ]
    response = [
        (
            b"results",
            Records(
                [
                    *OUTCOME,
                    ("size", "uint"),
                    ("mtime_ns", "int"),
                    ("root", "blob"),
                    ("length", "uint"),
                ],
                MAX_BATCH_FILES,
            ),
        )
    ]


class WriteFiles(_StoreCommand):
    """
    Write, verify and finish whole small files, in one batch.  Their
    contents follow the command as data frames on C{stream}, concatenated
    in order, up to the stream's end frame.
    """

    arguments = [
        (b"arena", Text()),
        (b"stream", Integer()),
        (
            b"files",
            Records(
                [
                    ("path", "text"),
                    ("size", "uint"),
                    ("mtime_ns", "int"),
                    ("root", "blob"),
                ],
                MAX_BATCH_FILES,
            ),
        ),
    ]
    response = [(b"results", Records(OUTCOME, MAX_BATCH_FILES))]


class DeleteFiles(_StoreCommand):
    """
    Delete files in one batch, each only if it still has its size and
    mtime.  With C{partials} (one bit per file,
    L{realize.net.codec.encode_flags}), only the partial files of the
    files whose bit is set are deleted too; without it, every file's.
    """

    arguments = [
        (b"arena", Text()),
        (
            b"files",
            Records(
                [("path", "text"), ("size", "uint"), ("mtime_ns", "int")],
                MAX_BATCH_FILES,
            ),
        ),
        (b"partials", String(optional=True)),
    ]
    response = [(b"results", Records(OUTCOME, MAX_BATCH_FILES))]


class Signature(_StoreCommand):
    """
    rsync signature of C{[start, end)} of the file being received
    (docs/delta-format.md); C{present} is false if the file has no byte at
    C{start}.
    """

    arguments = [
        (b"arena", Text()),
        (b"path", Text()),
        (b"start", Integer()),
        (b"end", Integer()),
    ]
    response = [(b"signature", BigBytes()), (b"present", Boolean())]


class Diff(_StoreCommand):
    """
    Delta from the basis described by C{signature} to C{[start, end)} of
    the file; the delta arrives as data frames on C{stream} before the
    answer, which gives its C{length}.
    """

    arguments = [
        (b"arena", Text()),
        (b"path", Text()),
        (b"start", Integer()),
        (b"end", Integer()),
        (b"signature", BigBytes()),
        (b"stream", Integer()),
    ]
    response = [(b"length", Integer())]


class ApplyDelta(_StoreCommand):
    """
    Apply the delta that follows the command as data frames on C{stream}
    to C{[start, end)} of the partial file; answers the leaves of the
    range afterwards.
    """

    arguments = [
        (b"arena", Text()),
        (b"path", Text()),
        (b"start", Integer()),
        (b"end", Integer()),
        (b"file_size", Integer()),
        (b"stream", Integer()),
    ]
    response = [(b"leaves", BigBytes())]


class SetRateLimit(_StoreCommand):
    """
    Limit what the answering side sends on this connection to C{send}
    bytes per second (0: no limit of the caller's; the answering side's
    own configured limit, if any, still applies).  Answers the limits in
    force on the connection for what it sends and what it receives.
    """

    arguments = [(b"send", Integer())]
    response = [(b"send", Integer()), (b"receive", Integer())]


class SetCompression(_StoreCommand):
    """
    Compress the data chunks of this connection with C{algorithm} (only
    C{zstd}) at C{level}: the answering side compresses what it sends, and
    the caller may compress what it sends once answered.  Chunks that do
    not shrink travel as they are.
    """

    arguments = [(b"algorithm", Unicode()), (b"level", Integer())]
    response = [(b"algorithm", Unicode())]


# -- history commands (DESIGN.md section 9) ---------------------------------

#: Most notifications one Notifications answer carries.
MAX_NOTIFICATIONS = 1000

#: The fields of a notification on the wire; C{present} has one bit per
#: optional field (L{realize.net.codec.encode_notifications}).
NOTIFICATION_FIELDS = [
    ("kind", "text"),
    ("position", "uint"),
    ("present", "uint"),
    ("path", "text"),
    ("size", "uint"),
    ("mtime_ns", "int"),
    ("hash", "blob"),
    ("old_hash", "blob"),
    ("uuid", "text"),
]


class _HistoryCommand(Command):
    errors = WIRE_ERRORS


class Subscribe(_HistoryCommand):
    """
    Subscribe to an arena's history, from the caller's progress
    (C{uuid}, C{position}) for this peer and arena, or from nothing (both
    empty / 0).  Answers the subscription's id on this connection; pull
    its notifications with L{Notifications}.
    """

    arguments = [
        (b"arena", Text()),
        (b"uuid", Unicode(optional=True)),
        (b"position", Integer(optional=True)),
    ]
    response = [(b"subscription", Integer())]


class Notifications(_HistoryCommand):
    """
    Pull the next notifications of a subscription (at least one: waits
    for a change when the subscriber is caught up), at most C{max}.
    C{applied} is the last position the caller has applied (for trimming),
    if any.  Answers them, and whether they reach the end of the history
    as it was then (C{caught_up}).
    """

    arguments = [
        (b"subscription", Integer()),
        (b"max", Integer()),
        (b"applied", Integer(optional=True)),
    ]
    response = [
        (b"notifications", Records(NOTIFICATION_FIELDS, MAX_NOTIFICATIONS)),
        (b"caught_up", Boolean()),
    ]


class Unsubscribe(_HistoryCommand):
    """
    End a subscription (a waiting pull fails with CLOSED).
    """

    arguments = [(b"subscription", Integer())]
    response: ClassVar[list[tuple[bytes, Argument]]] = []


class ArenaId(_HistoryCommand):
    """
    The uuid of an arena's store on the answering peer (to refuse moving
    an arena onto itself under two names).
    """

    arguments = [(b"arena", Text())]
    response = [(b"uuid", Unicode())]
