"""
The file work of the consensus jobs (DESIGN.md section 11), blocking: run
every function here in a thread.

    - L{realize_blob}: a complete, verified blob becomes the real file of
      a path in the datadir (rename on the same filesystem, a copy and a
      rename otherwise), never leaving a half-written file there: the
      content is complete and synced before its name appears.
    - L{unrealize_file}: a real file moves into its blob (rename), only if
      its size and mtime are those expected and no process has it open
      for writing; checked again after the move, and moved back if it
      changed.
    - L{remove_file}: a real file a peer deleted is removed, with the same
      checks (moved aside, checked, then unlinked).
    - L{verify_file}: the Merkle root of a file.
    - The mark of real files and directories: L{read_real_mark},
      L{write_real_mark}, L{walk_real_marks} (the xattr
      C{user.realize.mark}).

Paths are resolved beneath the datadir by L{realize.storage.arena.ArenaDir}
(no symlink followed); the blob side is a plain path in C{workdir/blobs}.

"Open for writing" is seen by walking C{/proc/*/fd} and reading the flags in
C{/proc/*/fdinfo} (L{open_for_writing}), as C{fuser} does: only processes
this one may inspect are seen (all of them as root; those of the same user
otherwise), and a file written through a shared writable C{mmap} without
a descriptor open is not seen; the size and mtime checks before and after
remain.

Under a live overlay (the datadir is the upper layer of an arena's
mounted overlay, docs/real.md), the kernel keeps the overlay's dentries
of the files changed underneath: an edit through the overlay after a
file was moved away lands in the moved inode (an unrealized file's blob,
a replaced file unlinked).  Given a L{LiveOverlay}, the functions here
also refuse a file open for writing through the overlay, and once the
file is out of the way drop the kernel's unused dentries
(L{drop_dentries}, root only), then check the old file again: an edit
made meanwhile through a stale dentry is seen, and the file put back.

Renames that must not replace a file, or must swap two files, use Linux's
C{renameat2} (C{RENAME_NOREPLACE}, C{RENAME_EXCHANGE}); where the
filesystem refuses them, a link and an unlink, or a check and a plain
rename, take their place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from typing import Final

from attrs import frozen

from realize.errors import BadRequest, Conflict, IOFailure, NotFound, RealizeError
from realize.hashing import hash_fd_range, merkle_root
from realize.model import is_partial_name, partial_name
from realize.storage.arena import ArenaDir
from realize.storage.fs import copy_file
from realize.storage.marks import parse_mark

__all__ = [
    "XATTR_MARK",
    "LiveOverlay",
    "drop_dentries",
    "open_for_writing",
    "read_real_mark",
    "realize_blob",
    "remove_file",
    "unrealize_file",
    "verify_file",
    "walk_real_marks",
    "write_real_mark",
]

#: The extended attribute of a mark, on real files and on the FUSE view.
XATTR_MARK: Final = "user.realize.mark"

RENAME_NOREPLACE: Final = 1
RENAME_EXCHANGE: Final = 2

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_ENTRY = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def _rename2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> None:
    """
    C{renameat2(2)}.

    @raise OSError: its errno; C{ENOSYS} if the C library has none,
        C{EINVAL} if the filesystem does not support C{flags}.
    """
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if _renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src)


def _rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """
    Rename, failing with C{EEXIST} rather than replacing a file.
    """
    try:
        _rename2(src_dir, src, dst_dir, dst, RENAME_NOREPLACE)
        return
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
    os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    os.unlink(src, dir_fd=src_dir)


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _stamp(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


@frozen
class LiveOverlay:
    """
    The overlay mounted over a datadir now.

    @ivar mountpoint: where it is mounted.
    @ivar can_drop: whether this process may drop the kernel's dentries
        (L{drop_dentries}: root); without it, only a realize (a file made
        where there was none: an edit through a stale dentry then fails
        with C{EEXIST}, nothing is lost) is done under it.
    """

    mountpoint: str
    can_drop: bool

    def path_of(self, path: str) -> str:
        """
        @return: a datadir path as seen through the overlay.
        """
        return os.path.join(self.mountpoint, path)


#: Where the kernel's caches are dropped (C{2}: dentries and inodes).
DROP_CACHES: Final = "/proc/sys/vm/drop_caches"


def drop_dentries(path: str = DROP_CACHES) -> bool:
    """
    Drop the kernel's unused dentries and inodes (all filesystems), so
    that an overlay looks its upper layer up again: measured on Linux
    6.18, a file realized, replaced or moved away underneath a live
    overlay then shows as it is at its next lookup (docs/real.md).
    Dentries in use (open files, working directories) stay.

    @return: whether it was done (root only).
    """
    try:
        with open(path, "w") as f:
            f.write("2\n")
    except OSError:
        return False
    return True


def open_for_writing() -> set[tuple[int, int]]:
    """
    @return: C{(st_dev, st_ino)} of every regular file some process this
        one can inspect has open for writing (see the module docstring).
    """
    return _writers()[0]


def paths_open_for_writing(prefix: str) -> set[str]:
    """
    @param prefix: a directory (an overlay's mountpoint).
    @return: the paths beneath it of the regular files some process this
        one can inspect has open for writing (as C{/proc/PID/fd} links
        show them: through an overlay, the overlay's path).
    """
    return {p for p in _writers()[1] if p.startswith(prefix.rstrip("/") + "/")}


def _writers() -> tuple[set[tuple[int, int]], set[str]]:
    found: set[tuple[int, int]] = set()
    paths: set[str] = set()
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return found, paths
    for pid in pids:
        base = f"/proc/{pid}"
        try:
            fds = os.listdir(f"{base}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{base}/fd/{fd}")
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            try:
                with open(f"{base}/fdinfo/{fd}") as info:
                    flags = next(
                        (
                            int(line.split()[1], 8)
                            for line in info
                            if line.startswith("flags:")
                        ),
                        0,
                    )
            except (OSError, ValueError):
                continue
            if flags & os.O_ACCMODE != os.O_RDONLY:
                found.add((st.st_dev, st.st_ino))
                with contextlib.suppress(OSError):
                    paths.add(os.readlink(f"{base}/fd/{fd}"))
    return found, paths


def _check_still(
    st: os.stat_result,
    expected: tuple[int, int],
    where: str,
    what: str,
    through: str | None = None,
) -> None:
    """
    @param through: the file's path through a live overlay, or C{None}.
    """
    if not stat.S_ISREG(st.st_mode):
        raise Conflict(f"{where}: not a regular file any more; not {what}")
    if _stamp(st) != expected:
        raise Conflict(f"{where}: changed (size or mtime); not {what}")
    inodes, paths = _writers()
    if (st.st_dev, st.st_ino) in inodes:
        raise Conflict(f"{where}: open for writing; not {what}")
    if through is not None and through in paths:
        raise Conflict(f"{where}: open for writing through the overlay; not {what}")


def _through(overlay: LiveOverlay | None, path: str) -> str | None:
    return None if overlay is None else overlay.path_of(path)


def _refresh(overlay: LiveOverlay | None) -> None:
    """
    After a file of the upper layer moved: drop the stale dentries of a
    live overlay.
    """
    if overlay is not None and overlay.can_drop:
        drop_dentries()


def _need_drop(overlay: LiveOverlay | None, where: str, what: str) -> None:
    if overlay is not None and not overlay.can_drop:
        raise Conflict(
            f"{where}: not {what} while the arena's overlay is mounted (an edit "
            "through it could land in the file moved away); done once it is "
            "unmounted, or by a daemon running as root"
        )


def _fsync_dir(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EROFS):
            raise


def _os_failure(e: OSError, where: str) -> RealizeError:
    if e.errno == errno.ENOENT:
        return NotFound(f"{where}: {e.strerror}")
    return IOFailure(f"{where}: {e.strerror or e}")


def verify_file(path: str, size: int) -> bytes:
    """
    @param path: a file (a blob).
    @param size: the size it must have.
    @return: its Merkle root.
    @raise IOFailure: if it cannot be read or its size differs.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != size:
                raise IOFailure(f"{path}: {os.fstat(fd).st_size} bytes, not {size}")
            return merkle_root(hash_fd_range(fd, 0, size))
        finally:
            os.close(fd)
    except OSError as e:
        raise _os_failure(e, path) from e


def realize_blob(
    arena: ArenaDir,
    path: str,
    blob: str,
    size: int,
    mtime_ns: int,
    replacing: tuple[int, int] | None,
    mark: str | None = None,
    overlay: LiveOverlay | None = None,
) -> tuple[int, int]:
    """
    Make a complete, verified blob the real file of a path.

    The blob gets the version's mtime, the permissions of the file it
    replaces (or C{0666} less the umask) and, if given, the path's own mark
    as C{user.realize.mark}; it is synced, then renamed into place: with
    nothing at the path (C{RENAME_NOREPLACE}), or swapped with the real
    file it replaces (C{RENAME_EXCHANGE}) whose size and mtime are checked
    once it is out of the way (and swapped back if it changed).  Across
    filesystems, the blob is first copied next to the path as its partial
    file (C{.name.part}, which the watcher ignores).  The directories are
    created as needed and synced.

    @param arena: the datadir.
    @param path: the path.
    @param blob: the blob's file.
    @param size: the version's size, bytes.
    @param mtime_ns: the version's mtime.
    @param replacing: C{(size, mtime_ns)} of the real file replaced, as the
        index holds it, or C{None} if there must be none.
    @param mark: the mark set on this very path, or C{None}.
    @param overlay: the arena's overlay if it is mounted: a file replaced
        must not be open for writing through it either, and the kernel's
        dentries are dropped once the new file is in place (before the
        old one is checked again).
    @return: C{(size, mtime_ns)} of the real file now.
    @raise Conflict: if a file appeared at the path, or the file replaced
        changed or is open for writing (nothing changed).
    @raise IOFailure: on an I/O error (the blob is kept).
    """
    where = f"{arena.name}/{path}"
    if replacing is not None:
        _need_drop(overlay, where, "replaced")
    dir_fd, name = arena.parent(path, create=True)
    blob_dir = os.open(os.path.dirname(blob) or ".", _O_DIR)
    try:
        try:
            fd = os.open(blob, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if st.st_size != size:
                    raise IOFailure(f"{where}: the blob has {st.st_size} bytes")
                os.fchmod(fd, _mode(dir_fd, name, replacing))
                if mark is not None:
                    try:
                        os.setxattr(fd, XATTR_MARK, mark.encode())
                    except OSError as e:
                        if e.errno not in (errno.ENOTSUP, errno.EPERM):
                            raise
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            source_dir, source = blob_dir, os.path.basename(blob)
            if os.fstat(dir_fd).st_dev != os.fstat(blob_dir).st_dev:
                source_dir, source = dir_fd, partial_name(name)
                _copy_beside(blob, dir_fd, source, mtime_ns)
                st = os.stat(source, dir_fd=dir_fd, follow_symlinks=False)
            _into_place(
                source_dir, source, dir_fd, name, replacing, where, overlay, path
            )
            if source_dir != blob_dir:
                os.unlink(blob)
            _fsync_dir(dir_fd)
            _fsync_dir(blob_dir)
            return _stamp(st)
        except OSError as e:
            raise _os_failure(e, where) from e
    finally:
        os.close(blob_dir)
        os.close(dir_fd)


def _mode(dir_fd: int, name: str, replacing: tuple[int, int] | None) -> int:
    """
    @return: the permissions of a realized file: those of the file it
        replaces, else C{0666} less the umask.
    """
    if replacing is not None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode & 0o7777
        except OSError:
            pass
    return 0o666 & ~_umask()


def _copy_beside(blob: str, dir_fd: int, name: str, mtime_ns: int) -> None:
    source = os.open(blob, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _new_file(dir_fd, name) as target:
            copy_file(source, target, os.fstat(source).st_size)
            os.utime(target, ns=(mtime_ns, mtime_ns))
            os.fsync(target)
    finally:
        os.close(source)


class _new_file:
    def __init__(self, dir_fd: int, name: str) -> None:
        self.dir_fd, self.name = dir_fd, name

    def __enter__(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name, dir_fd=self.dir_fd)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.name, flags, 0o666, dir_fd=self.dir_fd)
        return self.fd

    def __exit__(self, kind: object, *rest: object) -> None:
        os.close(self.fd)
        if kind is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self.dir_fd)


def _into_place(
    source_dir: int,
    source: str,
    dir_fd: int,
    name: str,
    replacing: tuple[int, int] | None,
    where: str,
    overlay: LiveOverlay | None = None,
    path: str = "",
) -> None:
    """
    Rename C{source} to C{name}, not replacing anything (C{replacing} is
    C{None}) or swapping with the file replaced, checked once out of the
    way (after the stale dentries of a live overlay are dropped).
    """
    if replacing is None:
        try:
            _rename_noreplace(source_dir, source, dir_fd, name)
        except FileExistsError:
            raise Conflict(f"{where}: a file appeared there; not replaced") from None
        _refresh(overlay)
        return
    through = _through(overlay, path)
    _check_still(
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False),
        replacing,
        where,
        "replaced",
        through,
    )
    try:
        _rename2(source_dir, source, dir_fd, name, RENAME_EXCHANGE)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        if overlay is not None:
            raise
        # No exchange here: the check above is the last one.
        os.rename(source, name, src_dir_fd=source_dir, dst_dir_fd=dir_fd)
        return
    _refresh(overlay)
    old = os.stat(source, dir_fd=source_dir, follow_symlinks=False)
    try:
        _check_still(old, replacing, where, "replaced", through)
    except Conflict:
        _rename2(source_dir, source, dir_fd, name, RENAME_EXCHANGE)
        raise
    os.unlink(source, dir_fd=source_dir)


def unrealize_file(
    arena: ArenaDir,
    path: str,
    blob: str,
    size: int,
    mtime_ns: int,
    overlay: LiveOverlay | None = None,
) -> int:
    """
    Move a real file into its blob (replacing the blob's file).

    @param size: the size the file must have (the index's).
    @param mtime_ns: the mtime it must have.
    @param overlay: the arena's overlay if it is mounted (see
        L{realize_blob}; without the right to drop dentries, nothing is
        done under it).
    @return: the blob's disk usage, bytes (C{st_blocks * 512}).
    @raise Conflict: if the file changed, is not a regular file, or is
        open for writing, before or during the move (then it is back at
        its path, or, if a new file took that path meanwhile, beside it as
        C{NAME.realize-conflict-INODE}).
    @raise NotFound: if it is gone.
    @raise IOFailure: on another error.
    """
    where = f"{arena.name}/{path}"
    _need_drop(overlay, where, "unrealized")
    through = _through(overlay, path)
    dir_fd, name = arena.parent(path, create=False)
    blob_dir = os.open(os.path.dirname(blob) or ".", _O_DIR)
    base = os.path.basename(blob)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            _check_still(st, (size, mtime_ns), where, "unrealized", through)
            if st.st_dev != os.fstat(blob_dir).st_dev:
                return _unrealize_by_copy(dir_fd, name, blob, st, where, overlay)
            os.rename(name, base, src_dir_fd=dir_fd, dst_dir_fd=blob_dir)
            _refresh(overlay)
            after = os.stat(base, dir_fd=blob_dir, follow_symlinks=False)
            try:
                if after.st_ino != st.st_ino or _stamp(after) != (size, mtime_ns):
                    raise Conflict(f"{where}: changed while unrealized; put back")
                if overlay is not None:
                    _check_still(after, (size, mtime_ns), where, "unrealized", through)
            except Conflict:
                _put_back(blob_dir, base, dir_fd, name, after.st_ino)
                raise
            _fsync_dir(blob_dir)
            _fsync_dir(dir_fd)
            return int(after.st_blocks) * 512
        except OSError as e:
            raise _os_failure(e, where) from e
    finally:
        os.close(blob_dir)
        os.close(dir_fd)


def _put_back(src_dir: int, src: str, dir_fd: int, name: str, ino: int) -> None:
    try:
        _rename_noreplace(src_dir, src, dir_fd, name)
    except FileExistsError:
        _rename_noreplace(src_dir, src, dir_fd, f"{name}.realize-conflict-{ino}")
    _fsync_dir(dir_fd)


def _unrealize_by_copy(
    dir_fd: int,
    name: str,
    blob: str,
    st: os.stat_result,
    where: str,
    overlay: LiveOverlay | None = None,
) -> int:
    source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        target = os.open(
            blob, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
        )
        try:
            copy_file(source, target, st.st_size)
            os.fsync(target)
            usage = int(os.fstat(target).st_blocks) * 512
        finally:
            os.close(target)
        after = os.fstat(source)
    finally:
        os.close(source)
    again = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if (
        again.st_ino != st.st_ino
        or _stamp(after) != _stamp(st)
        or _stamp(again) != (_stamp(st))
    ):
        raise Conflict(f"{where}: changed while copied into the cache; kept")
    os.unlink(name, dir_fd=dir_fd)
    _refresh(overlay)
    _fsync_dir(dir_fd)
    return usage


def remove_file(
    arena: ArenaDir,
    path: str,
    size: int,
    mtime_ns: int,
    aside: str,
    overlay: LiveOverlay | None = None,
) -> None:
    """
    Remove a real file that a peer deleted, if it is still the version
    expected: it is moved aside (to C{aside}, on the same filesystem),
    checked again, then unlinked; if it changed, it is put back.

    @param aside: a free path beside the blobs.
    @param overlay: the arena's overlay if it is mounted (see
        L{realize_blob}).
    @raise Conflict: if the file changed or is open for writing (kept).
    @raise NotFound: if it is gone already.
    @raise IOFailure: on another error.
    """
    where = f"{arena.name}/{path}"
    _need_drop(overlay, where, "removed")
    through = _through(overlay, path)
    dir_fd, name = arena.parent(path, create=False)
    aside_dir = os.open(os.path.dirname(aside) or ".", _O_DIR)
    base = os.path.basename(aside)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            _check_still(st, (size, mtime_ns), where, "removed", through)
            if st.st_dev != os.fstat(aside_dir).st_dev:
                if overlay is not None:
                    raise Conflict(
                        f"{where}: not removed under a live overlay across "
                        "filesystems (it could not be checked once moved)"
                    )
                os.unlink(name, dir_fd=dir_fd)
            else:
                _rename_noreplace(dir_fd, name, aside_dir, base)
                _refresh(overlay)
                after = os.stat(base, dir_fd=aside_dir, follow_symlinks=False)
                try:
                    if after.st_ino != st.st_ino or _stamp(after) != _stamp(st):
                        raise Conflict(f"{where}: changed while removed; put back")
                    if overlay is not None:
                        _check_still(after, _stamp(st), where, "removed", through)
                except Conflict:
                    _put_back(aside_dir, base, dir_fd, name, after.st_ino)
                    raise
                os.unlink(base, dir_fd=aside_dir)
            _fsync_dir(dir_fd)
        except OSError as e:
            raise _os_failure(e, where) from e
    finally:
        os.close(aside_dir)
        os.close(dir_fd)


# -- marks on real files ----------------------------------------------------------


def _open_entry(root: str, path: str) -> int:
    """
    Open a real file or directory of a datadir for its attributes, not
    following symlinks anywhere beneath the datadir.

    @raise NotFound: if it is missing, or is not a file or directory.
    """
    arena = ArenaDir("datadir", root)
    if not path:
        try:
            return os.open(root, _O_DIR)
        except OSError as e:
            raise _os_failure(e, root) from None
    dir_fd, name = arena.parent(path, create=False)
    try:
        fd = os.open(name, _O_ENTRY, dir_fd=dir_fd)
    except OSError as e:
        raise _os_failure(e, path) from None
    finally:
        os.close(dir_fd)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        os.close(fd)
        raise NotFound(f"{path}: not a file or directory")
    return fd


def read_real_mark(root: str, path: str) -> tuple[bool, str | None]:
    """
    @param root: the datadir.
    @param path: a path in it (C{""}: the datadir itself).
    @return: whether that real file or directory exists, and its mark
        (C{None} if it has none).
    @raise BadRequest: if its C{user.realize.mark} is not a mark.
    """
    try:
        fd = _open_entry(root, path)
    except RealizeError:
        return False, None
    try:
        value = os.getxattr(fd, XATTR_MARK)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return True, None
        raise _os_failure(e, path) from e
    finally:
        os.close(fd)
    return True, parse_mark(value)


def write_real_mark(root: str, path: str, mark: str | None) -> bool:
    """
    Set or remove C{user.realize.mark} on a real file or directory, if it
    exists.

    @return: whether the entry exists (and now has that mark).
    @raise IOFailure: if the attribute cannot be written.
    """
    try:
        fd = _open_entry(root, path)
    except RealizeError:
        return False
    try:
        if mark is None:
            try:
                os.removexattr(fd, XATTR_MARK)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
        elif _mark_of(fd) != mark.encode():
            os.setxattr(fd, XATTR_MARK, mark.encode())
    except OSError as e:
        raise _os_failure(e, path) from e
    finally:
        os.close(fd)
    return True


def _mark_of(fd: int) -> bytes | None:
    try:
        return os.getxattr(fd, XATTR_MARK)
    except OSError:
        return None


def walk_real_marks(
    root: str, exclude: str | None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """
    Find the marks of a datadir's files and directories (the catch-up).

    @param exclude: a top-level name not walked (the workdir), or C{None}.
    @return: C{(found, bad)}: C{(path, mark)} of every file and directory
        with a mark (C{""}: the datadir), and C{(path, message)} of those
        whose attribute is not a mark.
    """
    found: list[tuple[str, str]] = []
    bad: list[tuple[str, str]] = []

    def look(full: str, path: str) -> None:
        try:
            value = os.getxattr(full, XATTR_MARK, follow_symlinks=False)
        except OSError:
            return
        try:
            found.append((path, parse_mark(value)))
        except BadRequest as e:
            bad.append((path, str(e)))

    look(root, "")
    for full, path in _entries(root, "", exclude):
        look(full, path)
    return found, bad


def _entries(root: str, prefix: str, exclude: str | None) -> Iterator[tuple[str, str]]:
    try:
        with os.scandir(os.path.join(root, prefix) if prefix else root) as it:
            children = list(it)
    except OSError:
        return
    for child in sorted(children, key=lambda c: c.name):
        if not prefix and child.name == exclude:
            continue
        path = f"{prefix}/{child.name}" if prefix else child.name
        if child.is_dir(follow_symlinks=False):
            yield child.path, path
            yield from _entries(root, path, exclude)
        elif child.is_file(follow_symlinks=False) and not is_partial_name(child.name):
            yield child.path, path
