"""
What overlayfs leaves in its upper layer (the datadir of an arena mounted
with C{realized mountall}, DESIGN.md section 11), recognised so that the
watcher records edits made through the overlay and never indexes the
overlay's own metadata.  Blocking (xattr and stat calls): run it in a
thread.

What the kernel writes there (measured on Linux 6.18, docs/real.md):

    - a B{whiteout}: a character device 0/0 (or, for layers made by hand
      with xattr whiteouts, an empty regular file with C{overlay.whiteout}):
      the lower entry of that name, file or directory, was deleted;
    - an B{opaque} directory (C{overlay.opaque} = C{y}): a directory made
      where a lower one was deleted; nothing of the lower directory shows
      beneath it;
    - a B{redirect} (C{overlay.redirect}): a lower directory renamed with
      C{redirect_dir=on}; its lower content shows under the new name
      without being in the upper layer;
    - a B{metacopy} file (C{overlay.metacopy}, only with C{metacopy=on}):
      a copied-up inode whose data is still in the lower layer: it has no
      data here, and is never indexed;
    - C{overlay.origin}, C{overlay.impure}, C{overlay.uuid}: bookkeeping.

The xattrs are C{trusted.overlay.*} for a privileged mount and
C{user.overlay.*} with C{userxattr}; both are read (the C{trusted} ones only
as root: for anyone else they read as absent).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

__all__ = [
    "OVERLAY_PREFIXES",
    "is_metacopy",
    "is_opaque",
    "is_overlay_xattr",
    "is_whiteout",
    "overlay_xattr",
    "redirect_target",
]

#: The namespaces of overlayfs's own xattrs (privileged, C{userxattr}).
OVERLAY_PREFIXES: Final = ("trusted.overlay.", "user.overlay.")

_ABSENT = (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES)


def is_overlay_xattr(name: str) -> bool:
    """
    @return: whether an xattr name is overlayfs's (never copied to peers,
        never shown as a mark).
    """
    return name.startswith(OVERLAY_PREFIXES)


def overlay_xattr(path: str | int, name: str) -> bytes | None:
    """
    Read an overlay xattr in either namespace, without following a
    symlink.

    @param path: a path, or an open file descriptor.
    @param name: the name after the prefix (C{"opaque"}, C{"redirect"}).
    @return: the value of C{trusted.overlay.NAME}, else of
        C{user.overlay.NAME}, else C{None}.
    @raise OSError: if the entry cannot be read (not for an absent xattr,
        or one this process may not read).
    """
    for prefix in OVERLAY_PREFIXES:
        try:
            if isinstance(path, int):
                return os.getxattr(path, prefix + name)
            return os.getxattr(path, prefix + name, follow_symlinks=False)
        except OSError as e:
            if e.errno not in _ABSENT:
                raise
    return None


def is_whiteout(path: str, st: os.stat_result) -> bool:
    """
    @param path: the entry (for an xattr whiteout).
    @param st: its C{lstat}.
    @return: whether the entry is an overlay whiteout: a character device
        0/0, or an empty regular file with C{overlay.whiteout}.
    """
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        try:
            return overlay_xattr(path, "whiteout") is not None
        except OSError:
            return False
    return False


def is_opaque(path: str | int) -> bool:
    """
    @param path: a directory, or an open descriptor of one.
    @return: whether it is opaque (C{overlay.opaque} = C{y}): nothing of a
        lower directory of that name shows beneath it.
    """
    try:
        return overlay_xattr(path, "opaque") == b"y"
    except OSError:
        return False


def is_metacopy(path: str, st: os.stat_result) -> bool:
    """
    @param path: a regular file.
    @param st: its C{lstat}.
    @return: whether it is a metacopy (its data is still in the lower
        layer).  Only sparse files (fewer blocks than their size needs)
        are asked, so a file with data costs no xattr call.
    """
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return False
    if st.st_blocks * 512 >= st.st_size:
        return False
    try:
        return overlay_xattr(path, "metacopy") is not None
    except OSError:
        return False


def redirect_target(path: str | int, directory: str) -> str | None:
    """
    Where a renamed lower directory came from (C{redirect_dir=on}).

    @param path: the upper directory, or a descriptor of it.
    @param directory: its path in the arena (C{"a/b"}).
    @return: the arena path its lower content comes from: an absolute
        redirect (C{/x/y}) is taken from the arena root, a relative one
        (C{y}) from the directory's parent; C{None} if it has none, or one
        that is not a valid name.
    """
    try:
        value = overlay_xattr(path, "redirect")
    except OSError:
        return None
    if not value:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith("/"):
        target = text.strip("/")
    else:
        if "/" in text:
            return None
        parent = directory.rpartition("/")[0]
        target = f"{parent}/{text}" if parent else text
    segments = target.split("/")
    if not target or any(s in ("", ".", "..") for s in segments):
        return None
    return target
