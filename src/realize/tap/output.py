"""
What C{realize-move} shows the user: progress bars on a terminal
(C{--output progress}, with rate and ETA, drawn by rich), one line per
finished file (C{--output log}), or nothing but errors (C{--output quiet}).
Errors always go to stderr, whatever the output mode and whatever logging
is configured.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from realize.errors import describe
from realize.hashing import format_hash
from realize.model import ArenaName
from realize.services.report import FileResult, FileStatus, MoveReport, MoveStats

__all__ = ["Output", "make_output"]

#: Files at least this large get their own progress bar.
BIG_FILE = 16 << 20


def human_size(size: float) -> str:
    """
    @param size: bytes.
    @return: e.g. C{"1.5 MiB"}.
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _same_terminal(a: IO[str], b: IO[str]) -> bool:
    try:
        if not (a.isatty() and b.isatty()):
            return False
        return os.fstat(a.fileno()).st_rdev == os.fstat(b.fileno()).st_rdev
    except (OSError, ValueError, AttributeError):
        return False


class Output:
    """
    C{--output quiet}: errors only.  Base of the other modes.

    @ivar stderr: where errors go.
    """

    def __init__(self, stdout: IO[str], stderr: IO[str]) -> None:
        self.stdout = stdout
        self.stderr = stderr

    def start(self) -> None:
        """Called before the move starts."""

    def stop(self) -> None:
        """Called when the move is over, before the summary."""

    def error(self, message: str) -> None:
        """
        Show an error (one line, on stderr).
        """
        self.stderr.write(f"realize-move: error: {message}\n")
        self.stderr.flush()

    def warning(self, message: str) -> None:
        self.stderr.write(f"realize-move: warning: {message}\n")
        self.stderr.flush()

    def retrying(self, error: BaseException, delay: float, retry: int) -> None:
        self.warning(f"{describe(error)}; retrying in {delay:g} s (retry {retry})")

    def listed(self, arena: ArenaName, files: int, size: int) -> None:
        pass

    def file_started(self, arena: ArenaName, path: str, size: int) -> None:
        pass

    def transferred(self, arena: ArenaName, path: str, size: int) -> None:
        pass

    def file_done(self, result: FileResult) -> None:
        if result.status is FileStatus.FAILED:
            self.error(
                f"{result.arena}/{result.path}: {describe(result.error or Exception())}"
            )

    def summary(
        self, report: MoveReport, seconds: float, stats: MoveStats | None = None
    ) -> None:
        pass


class LogOutput(Output):
    """
    C{--output log}: one line per finished file on stdout, and a summary.
    """

    def file_done(self, result: FileResult) -> None:
        if result.status is FileStatus.FAILED:
            super().file_done(result)
            return
        self.stdout.write(
            f"moved {result.arena}/{result.path} {human_size(result.size)} "
            f"{format_hash(result.root or b'')}\n"
        )
        self.stdout.flush()

    def summary(
        self, report: MoveReport, seconds: float, stats: MoveStats | None = None
    ) -> None:
        moved = report.moved
        size = sum(r.size for r in moved)
        rate = size / seconds if seconds > 0 else 0.0
        line = (
            f"{len(moved)} file(s) moved, {human_size(size)} in {seconds:.1f}s "
            f"({human_size(rate)}/s)"
        )
        if report.failed:
            line += f", {len(report.failed)} failed"
        if stats is not None:
            line += (
                f"; sent {human_size(stats.copied_bytes)} by copy, "
                f"{human_size(stats.delta_bytes)} by delta"
            )
            if stats.files_repaired:
                line += (
                    f" ({stats.files_repaired} file(s) repaired, "
                    f"{human_size(stats.saved_bytes)} saved)"
                )
        self.stdout.write(line + "\n")
        self.stdout.flush()


class ProgressOutput(LogOutput):
    """
    C{--output progress}: an overall bar (bytes, rate, ETA), a files
    counter, and a bar per large file in flight; redrawn from the reactor
    a few times per second.
    """

    def __init__(self, stdout: IO[str], stderr: IO[str], clock: IReactorTime) -> None:
        # rich is imported only when bars are drawn: it costs start-up time.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        super().__init__(stdout, stderr)
        self.console = Console(file=stdout)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            auto_refresh=False,
            transient=False,
        )
        self._total: Any = None
        self._per_file: dict[tuple[str, str], Any] = {}
        self._refresh = LoopingCall(self._draw)
        self._refresh.clock = clock
        self._total_size = 0
        self._total_files = 0

    def start(self) -> None:
        self.progress.start()
        self._total = self.progress.add_task("total", total=None)
        self._refresh.start(0.2, now=False)

    def _draw(self) -> None:
        self.progress.refresh()

    def stop(self) -> None:
        if self._refresh.running:
            self._refresh.stop()
        self.progress.refresh()
        self.progress.stop()

    def error(self, message: str) -> None:
        if _same_terminal(self.stdout, self.stderr):
            # Printed above the live bars instead of through them.
            self.console.print(
                f"realize-move: error: {message}", highlight=False, markup=False
            )
        else:
            super().error(message)

    def listed(self, arena: ArenaName, files: int, size: int) -> None:
        self._total_size += size
        self._total_files += files
        assert self._total is not None
        self.progress.update(
            self._total,
            total=self._total_size,
            description=f"{self._total_files} file(s)",
        )

    def file_started(self, arena: ArenaName, path: str, size: int) -> None:
        if size >= BIG_FILE:
            self._per_file[(arena, path)] = self.progress.add_task(
                f"{arena}/{path}"[-40:], total=size
            )

    def transferred(self, arena: ArenaName, path: str, size: int) -> None:
        assert self._total is not None
        self.progress.advance(self._total, size)
        task = self._per_file.get((arena, path))
        if task is not None:
            self.progress.advance(task, size)

    def file_done(self, result: FileResult) -> None:
        task = self._per_file.pop((result.arena, result.path), None)
        if task is not None:
            self.progress.remove_task(task)
        if result.status is FileStatus.FAILED:
            Output.file_done(self, result)


def make_output(
    mode: str,
    clock: IReactorTime,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> Output:
    """
    Build the output of a mode.

    @param mode: C{progress}, C{log}, C{quiet}, or C{auto} (progress on a
        terminal, log otherwise).
    @param clock: drives progress redraws.
    @return: the output.
    @raise ValueError: for an unknown mode.
    """
    out: Any = stdout or sys.stdout
    err: Any = stderr or sys.stderr
    if mode == "auto":
        mode = "progress" if out.isatty() else "log"
    if mode == "progress":
        return ProgressOutput(out, err, clock)
    if mode == "log":
        return LogOutput(out, err)
    if mode == "quiet":
        return Output(out, err)
    raise ValueError(f"unknown output mode {mode!r}: use progress, log or quiet")
