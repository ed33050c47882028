"""
What a move tells about itself: the outcome of each file (L{FileResult}),
of the whole move (L{MoveReport}), its running totals (L{MoveStats}), the
one place they are counted (L{Ledger}), and the observer that follows its
progress (L{MoveObserver}).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from attrs import define, field, frozen

from realize.errors import is_retryable
from realize.model import ArenaName, FileInfo

__all__ = [
    "FileResult",
    "FileStatus",
    "Ledger",
    "MoveObserver",
    "MoveReport",
    "MoveStats",
    "NullObserver",
]


class FileStatus(enum.StrEnum):
    """
    How a file ended.  The values are the C{status} label of the
    C{realize_move_files_total} metric.
    """

    #: Verified and durable at the destination, deleted at the source.
    MOVED = "moved"
    #: Kept at the source; the result says why.
    FAILED = "failed"


@frozen
class FileResult:
    """
    The outcome of one file.

    @ivar arena: its arena.
    @ivar path: its path.
    @ivar size: its size in bytes.
    @ivar status: moved or failed.
    @ivar copied: bytes sent to the destination for it: plain copies,
        signatures and deltas, over every attempt of this move.
    @ivar root: its Merkle root when moved.
    @ivar error: why it failed.
    """

    arena: ArenaName
    path: str
    size: int
    status: FileStatus
    copied: int = 0
    root: bytes | None = None
    error: BaseException | None = None


@define
class MoveReport:
    """
    The outcome of a move.

    @ivar results: one per file attempted.
    @ivar errors: errors that stopped a whole arena (listing failed, the
        connection was lost).
    """

    results: list[FileResult] = field(factory=list)
    errors: list[BaseException] = field(factory=list)

    @property
    def moved(self) -> list[FileResult]:
        return [r for r in self.results if r.status is FileStatus.MOVED]

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status is FileStatus.FAILED]

    @property
    def ok(self) -> bool:
        """
        @return: whether every file moved and no arena failed.
        """
        return not self.errors and not self.failed

    @property
    def retryable(self) -> bool:
        """
        @return: whether everything that went wrong was a network error.
        """
        failures = [*self.errors, *(r.error for r in self.failed)]
        return bool(failures) and all(
            e is not None and is_retryable(e) for e in failures
        )


class MoveObserver(Protocol):
    """
    Receives the progress of a move (for progress bars, logs, metrics).
    """

    def listed(self, arena: ArenaName, files: int, size: int) -> None:
        """
        The files to move of an arena are known.

        @param files: number of files.
        @param size: their total size in bytes.
        """

    def file_started(self, arena: ArenaName, path: str, size: int) -> None: ...

    def transferred(self, arena: ArenaName, path: str, size: int) -> None:
        """
        @param size: bytes just sent to the destination for this file.
        """

    def file_done(self, result: FileResult) -> None: ...


class NullObserver:
    """
    An observer that ignores everything.
    """

    def listed(self, arena: ArenaName, files: int, size: int) -> None:
        pass

    def file_started(self, arena: ArenaName, path: str, size: int) -> None:
        pass

    def transferred(self, arena: ArenaName, path: str, size: int) -> None:
        pass

    def file_done(self, result: FileResult) -> None:
        pass


@define
class MoveStats:
    """
    What a move sent, for reports and metrics (#rsync).  Only a L{Ledger}
    changes it.

    @ivar copied_bytes: file bytes sent as plain copies.
    @ivar streamed_bytes: bytes read from the source and handed to the
        destination's write, even if the write then failed (the
        destination keeps what it received): a job's sign of progress.
    @ivar delta_bytes: bytes of signatures and deltas exchanged.
    @ivar saved_bytes: bytes of ranges repaired by delta, less the
        signature and delta bytes it took.
    @ivar files_repaired: files whose destination had ranges that differed
        and were repaired.
    @ivar fallbacks: ranges a delta did not repair, copied instead.
    """

    copied_bytes: int = 0
    streamed_bytes: int = 0
    delta_bytes: int = 0
    saved_bytes: int = 0
    files_repaired: int = 0
    fallbacks: int = 0


@define(eq=False)
class Ledger:
    """
    The one place where a move counts what it sends: the running totals
    (L{MoveStats}, shared by the attempts of a job), the bytes shown to the
    observer, and the bytes sent for each file in flight (what becomes its
    L{FileResult.copied}).

    @ivar stats: the running totals.
    @ivar observer: told about bytes as they stream.
    """

    stats: MoveStats
    observer: MoveObserver
    _files: dict[tuple[ArenaName, str], int] = field(factory=dict, init=False)

    def streamed(self, arena: ArenaName, path: str, size: int) -> None:
        """
        Bytes of a source stream just went to the destination's write (not
        yet known to be written).

        @param size: bytes.
        """
        self.stats.streamed_bytes += size
        self.observer.transferred(arena, path, size)

    def skipped(self, arena: ArenaName, path: str, size: int) -> None:
        """
        A hole of a sparse source file was passed on (not sent: the
        destination leaves it unallocated): shown as transferred, not
        counted as sent.

        @param size: bytes.
        """
        self.observer.transferred(arena, path, size)

    def handed(self, arena: ArenaName, infos: Sequence[FileInfo]) -> None:
        """
        Small files go whole to the destination in a batch: each is shown
        as transferred and counted as copied.

        @param infos: the files.
        """
        transferred = self.observer.transferred
        files = self._files
        total = 0
        for info in infos:
            path, size = info.path, info.size
            transferred(arena, path, size)
            key = (arena, path)
            files[key] = files.get(key, 0) + size
            total += size
        self.stats.copied_bytes += total

    def copied(self, arena: ArenaName, path: str, size: int) -> None:
        """
        Bytes of a file were sent as a plain copy.

        @param size: bytes.
        """
        self.stats.copied_bytes += size
        self._add(arena, path, size)

    def exchanged(self, arena: ArenaName, path: str, size: int) -> None:
        """
        Bytes of signatures and deltas were exchanged for a file.

        @param size: bytes.
        """
        self.stats.delta_bytes += size
        self._add(arena, path, size)

    def saved(self, size: int) -> None:
        """
        A delta repaired a range for C{size} bytes fewer than a copy.
        """
        self.stats.saved_bytes += max(0, size)

    def fell_back(self) -> None:
        """
        A range a delta did not repair is copied instead.
        """
        self.stats.fallbacks += 1

    def repaired(self) -> None:
        """
        A file whose destination had differing ranges is repaired.
        """
        self.stats.files_repaired += 1

    def settle(self, arena: ArenaName, path: str) -> int:
        """
        A file is done: forget what was sent for it.

        @return: bytes sent for it (copies, signatures and deltas).
        """
        return self._files.pop((arena, path), 0)

    def _add(self, arena: ArenaName, path: str, size: int) -> None:
        key = (arena, path)
        self._files[key] = self._files.get(key, 0) + size
