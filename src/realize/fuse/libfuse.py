"""
The mfusepy glue of the view: what mfusepy's high-level wrapper does not
do by itself.

    - L{RealizeFUSE.fgetattr} fills C{struct stat} from an L{Entry}
      directly (L{RealizeOperations.fill_stat}), not through a dict.
    - L{RealizeFUSE.getxattr} answers C{ENODATA} for names that are not
      the view's before anything else (no decoding, no db): C{ls -l}
      (coreutils 9.1) asks for C{security.selinux} and
      C{system.posix_acl_access} of every file, two FUSE requests per file
      the kernel does not cache (only C{ENOSYS} stops them, and for every
      name).  Measured over the memory backend (kernel 6.18, libfuse
      3.14), C{ls -lR} of 10,000 files: 20,303 getxattr requests cold and
      warm alike, 0.52-0.77 s cold and 0.41-0.53 s warm; with getxattr
      missing (C{ENOSYS}) 0.20-0.27 s and 0.10-0.25 s.  Asking for
      C{FUSE_CAP_POSIX_ACL} in C{init} changes nothing (the kernel still
      forwards every ACL read: same counts), and no mount option stops
      them.  Decided: C{ENODATA} as early as possible, because
      C{user.realize.status}, C{.version} and C{.mark} need getxattr;
      C{ls -lR} cold still beats sshfs's and rclone's (bench/fuse.py).
    - L{RealizeFUSE.readdir_fuse_3} sends listings B{with attributes}
      (readdirplus): mfusepy's own readdir copies only the mode and inode
      of each entry and never sets C{FUSE_FILL_DIR_PLUS}.  libfuse 3.14
      passes attributes to the kernel only for entries filled with a
      non-zero offset (C{fill_dir_plus}; with offset 0 it sends C{ino=0},
      which the kernel ignores), so each entry carries its index + 1.
      C{ls -lR} then needs no lookup per file.
    - B{Thread states kept}: ctypes gives each callback from a libfuse
      worker thread a fresh Python thread state (created and destroyed
      per call: C{threading.local()} is empty every time, and it costs
      about 14 µs of the ~24 µs of CPU a request takes here).
      L{RealizeFUSE} takes one more C{PyGILState_Ensure} in each worker
      thread's first callback, so that its thread state lives on; once
      libfuse has returned (its workers joined) they are deleted.
      Measured: C{ls -lR} of 10,000 files took 0.19-0.21 s of daemon CPU
      instead of 0.49-0.57 s.
    - L{invalidate_path}: C{fuse_invalidate_path}, which sends the kernel
      C{FUSE_NOTIFY_INVAL_INODE} for a path libfuse knows (attributes and
      page cache dropped); libfuse 3.14's high-level API offers nothing
      finer (C{notify_inval_entry} needs libfuse's own node ids, which it
      does not expose).

Importing this module loads libfuse (mfusepy raises C{OSError} if it is
missing), so only L{realize.fuse.service} imports it, when it mounts.
"""

from __future__ import annotations

import ctypes
import errno
import threading
from typing import Any, Final

import mfusepy

from realize.fuse.ops import (
    DIR_MODE,
    XATTR_CONFLICTS,
    XATTR_MARK,
    XATTR_MARK_EFFECTIVE,
    XATTR_STATUS,
    XATTR_VERSION,
    RealizeOperations,
)

__all__ = ["RealizeFUSE", "current_fuse", "invalidate_path"]

#: C{enum fuse_readdir_flags}: the kernel asked for readdirplus.
FUSE_READDIR_PLUS: Final = 1 << 0

#: C{enum fuse_fill_dir_flags}: this entry's attributes are complete.
FUSE_FILL_DIR_PLUS: Final = 1 << 1


#: The attributes the view has; C{ls -l} asks two others of every file.
_XATTRS: Final = frozenset(
    name.encode()
    for name in (
        XATTR_MARK,
        XATTR_MARK_EFFECTIVE,
        XATTR_VERSION,
        XATTR_STATUS,
        XATTR_CONFLICTS,
    )
)

#: The C API, with our own function objects (their restype is set here).
_python = ctypes.PyDLL(None)
_python.PyGILState_Ensure.restype = ctypes.c_int
_python.PyThreadState_Get.restype = ctypes.c_void_p
_python.PyThreadState_Clear.argtypes = [ctypes.c_void_p]
_python.PyThreadState_Delete.argtypes = [ctypes.c_void_p]


class RealizeFUSE(mfusepy.FUSE):  # type: ignore[misc]
    """
    C{mfusepy.FUSE} for L{RealizeOperations}: mounts and serves until
    unmounted (the constructor returns then).  Use C{raw_fi=True}.
    """

    operations: RealizeOperations

    def __init__(self, operations: RealizeOperations, mountpoint: str, **kwargs: Any):
        self._serving_thread = threading.get_ident()
        self._thread_states: dict[int, int] = {}
        try:
            super().__init__(operations, mountpoint, **kwargs)
        finally:
            self._delete_thread_states()

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        ident = threading.get_ident()
        if ident not in self._thread_states and ident != self._serving_thread:
            # A libfuse worker's first callback: keep its thread state.
            _python.PyGILState_Ensure()
            self._thread_states[ident] = _python.PyThreadState_Get()
        return super()._wrapper(func, *args, **kwargs)

    def _delete_thread_states(self) -> None:
        # libfuse has joined its workers: their kept thread states are
        # those of threads that are gone.
        states, self._thread_states = self._thread_states, {}
        for state in states.values():
            _python.PyThreadState_Clear(state)
            _python.PyThreadState_Delete(state)

    def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        fh = fip.contents.fh if fip else None
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        entry = self.operations.getattr(decoded, fh)
        self.operations.fill_stat(buf.contents, entry)
        return 0

    def getxattr(
        self, path: bytes, name: bytes, value: Any, size: int, *args: Any
    ) -> int:
        if name not in _XATTRS:
            return -errno.ENODATA  # before any decoding, path or exception
        result: int = mfusepy.FUSE.getxattr(self, path, name, value, size, *args)
        return result

    def readdir_fuse_3(
        self,
        path: bytes | None,
        buf: Any,
        filler: Any,
        offset: int,
        fip: Any,
        flags: int,
    ) -> int:
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        items = self.operations.readdir_with_offset(decoded, offset, fip.contents.fh)
        plus = FUSE_FILL_DIR_PLUS if flags & FUSE_READDIR_PLUS else 0
        st = mfusepy.c_stat()
        fill = self.operations.fill_stat
        encoding, errors = self.encoding, self.errors
        for name, entry, next_offset in items:
            if entry is None:
                ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
                st.st_mode = DIR_MODE
                entry_flags = 0
            else:
                fill(st, entry)
                entry_flags = plus
            if filler(buf, name.encode(encoding, errors), st, next_offset, entry_flags):
                break
        return 0


def current_fuse() -> int:
    """
    The C{struct fuse *} of the filesystem being served, from the context
    of a FUSE callback (call it from C{init}).

    @return: the pointer, as an integer.
    """
    context = mfusepy._libfuse.fuse_get_context().contents
    return int(context.fuse)


def invalidate_path(fuse: int, path: str) -> int:
    """
    Tell the kernel to drop what it caches of a path (attributes and page
    cache).  Blocks while the kernel drops pages that reads in flight
    hold, so never call it from a FUSE thread or the reactor thread.

    @param fuse: L{current_fuse} of a mount still served.
    @param path: C{/}-rooted path in the view.
    @return: 0, or C{-ENOENT} if libfuse has not seen the path (nothing
        cached: nothing to do), or another negative errno.
    """
    result: int = mfusepy._libfuse.fuse_invalidate_path(
        ctypes.c_void_p(fuse), path.encode("utf-8", "surrogateescape")
    )
    return result
