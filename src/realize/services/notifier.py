"""
inotify for the watcher (L{realize.services.watcher}): the L{Notifier}
seam and L{KernelNotifier}, Twisted's L{twisted.internet.inotify.INotify}
descriptor with raw event dispatch.

Twisted's own dispatch does not fit a recursive watcher: it closes the
whole inotify descriptor when any watched directory is deleted
(C{IN_DELETE_SELF}), keys watches by path (stale after a directory
rename), and drops C{errno} (C{ENOSPC}, out of watches, must be told from
C{EACCES}).  L{KernelNotifier} keeps its file descriptor handling and
hands every event, as read, to one callback.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import inotify

__all__ = [
    "IN_EXCL_UNLINK",
    "WATCH_MASK",
    "EventCallback",
    "KernelNotifier",
    "Notifier",
]

IN_EXCL_UNLINK = 0x04000000

#: What each directory watch asks for.
WATCH_MASK = (
    inotify.IN_MODIFY
    | inotify.IN_ATTRIB
    | inotify.IN_CLOSE_WRITE
    | inotify.IN_CREATE
    | inotify.IN_DELETE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
    | inotify.IN_ONLYDIR
    | inotify.IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)


#: Called with C{(wd, mask, cookie, name)} for each inotify event; C{name}
#: is C{b""} for an event on the watched directory itself.
EventCallback = Callable[[int, int, int, bytes], None]


class Notifier(Protocol):
    """
    What the watcher needs of inotify (L{KernelNotifier}, or a fake in
    tests).
    """

    def start(self, callback: EventCallback) -> None:
        """
        Start delivering events to C{callback}, in the reactor thread.
        """

    def add_watch(self, path: bytes, mask: int) -> int:
        """
        Watch a directory (C{inotify_add_watch}).

        @return: the watch descriptor (the same for a directory already
            watched, even under another path after a rename).
        @raise OSError: with the C{errno} (C{ENOSPC}: no watch left).
        """

    def remove_watch(self, wd: int) -> None:
        """
        Stop a watch (C{inotify_rm_watch}); an unknown one is ignored.
        """

    def close(self) -> None:
        """
        Close the descriptor; no event is delivered after.
        """


_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_add_watch.restype = ctypes.c_int
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.inotify_rm_watch.restype = ctypes.c_int

_EVENT = struct.Struct("=iIII")


class KernelNotifier(inotify.INotify):
    """
    Twisted's inotify descriptor, with raw event dispatch (see the module
    docstring) and watch errors that keep their C{errno}.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)  # type: ignore[no-untyped-call]
        self._callback: EventCallback | None = None

    def start(self, callback: EventCallback) -> None:
        self._callback = callback
        self.startReading()  # type: ignore[no-untyped-call]

    def add_watch(self, path: bytes, mask: int) -> int:
        wd = int(_libc.inotify_add_watch(self._fd, path, mask))
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return wd

    def remove_watch(self, wd: int) -> None:
        _libc.inotify_rm_watch(self._fd, wd)

    def close(self) -> None:
        self._callback = None
        self.loseConnection()  # type: ignore[no-untyped-call]

    def _doRead(self, in_: bytes) -> None:
        self._buffer += in_
        buffer = self._buffer
        offset = 0
        size = _EVENT.size
        while len(buffer) - offset >= size:
            wd, mask, cookie, length = _EVENT.unpack_from(buffer, offset)
            if len(buffer) - offset < size + length:
                break
            name = buffer[offset + size : offset + size + length].rstrip(b"\0")
            offset += size + length
            if self._callback is not None:
                self._callback(wd, mask, cookie, name)
        self._buffer = buffer[offset:]
