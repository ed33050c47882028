"""
The blocking file system work of the watcher (L{realize.services.watcher}):
walking an arena tree in path order and comparing it with the index,
looking at changed paths, hashing files with the re-stat check, and the
#unlinktime rule.  Everything here blocks: run it in a thread.

What is indexed (DESIGN.md section 9): regular files with a valid path
(L{realize.model.check_path}), not partial files (C{.name.part}), not
beneath the excluded top-level name (the workdir when it lies inside the
datadir) nor beneath a top-level C{.realize}
(L{realize.model.RESERVED_NAME}).  Symlinks, devices, FIFOs and sockets
are never indexed, and no symlink is followed: directories are opened one
component at a time with C{O_NOFOLLOW}.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
from collections.abc import Iterator, Sequence
from typing import Final

from attrs import define, field, frozen

from realize.errors import InvalidPath
from realize.hashing import (
    EMPTY_ROOT,
    LEAF_SIZE,
    hash_fd_range,
    leaf_hash,
    merkle_root,
)
from realize.model import (
    MAX_INT64 as _MAX_INT64,
)
from realize.model import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    RESERVED_NAME,
    check_path,
    clamp_mtime,
    is_partial_name,
)
from realize.storage.index import Version, prefix_range
from realize.storage.overlaymeta import (
    is_metacopy,
    is_opaque,
    is_whiteout,
    redirect_target,
)
from realize.storage.pool import open_reader

__all__ = [
    "CheckResult",
    "HashResult",
    "IndexReader",
    "ScanResult",
    "check_paths",
    "hash_files",
    "list_directories",
    "scan_tree",
    "scan_trees",
    "unlink_mtime",
    "valid_directory",
    "valid_file",
]

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

#: Errors that mean "not there" (as opposed to "cannot look").
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)

FILE: Final = "file"
DIRECTORY: Final = "directory"
GONE: Final = "gone"
ERROR: Final = "error"
WHITEOUT: Final = "whiteout"


@frozen
class CheckResult:
    """
    What a path is now (L{check_paths}).

    @ivar path: the path.
    @ivar kind: L{FILE} (a regular file to index), L{DIRECTORY}, L{GONE}
        (absent, or something never indexed: a symlink, device, FIFO,
        socket, an overlay metacopy file), L{WHITEOUT} (an overlay
        whiteout: a lower entry deleted through the overlay) or L{ERROR}
        (could not look: permission, I/O).
    @ivar size: a file's size.
    @ivar mtime_ns: a file's mtime; for L{GONE} and L{DIRECTORY}, the
        #unlinktime mtime the path would have as a Remove.
    @ivar error: the error's message, for L{ERROR}.
    """

    path: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    error: str | None = None


@define
class HashResult:
    """
    The outcome of L{hash_files}.

    @ivar versions: the files hashed and found unchanged by the re-stat.
    @ivar changed: files whose size or mtime was not the expected one, or
        changed while being hashed: to look at again after the delay.
    @ivar gone: files that are no longer regular files at their path.
    @ivar errors: C{(path, message)} of files that could not be read.
    @ivar size: bytes hashed.
    @ivar seconds: time spent.
    """

    versions: list[Version]
    changed: list[str]
    gone: list[str]
    errors: list[tuple[str, str]]
    size: int
    seconds: float


@define
class ScanResult:
    """
    The differences between the disk and the index beneath a directory
    (L{scan_tree}).

    @ivar changed: files on disk that the index lacks, or holds with
        another size or mtime, or with no version.
    @ivar missing: paths the index holds that are not files on disk.
    @ivar directories: every directory found, the scanned one first, in
        walk order (parents before children).
    @ivar errors: C{(path, message)} of directories or files that could
        not be read; the index entries beneath them are left alone.
    @ivar files: regular files seen.
    @ivar whiteouts: C{(path, mtime_ns)} of the overlay whiteouts found
        (L{realize.storage.overlaymeta}; the mtime by the #unlinktime
        rule).
    @ivar opaques: C{(directory, mtime_ns)} of the opaque directories.
    @ivar present: the regular files beneath opaque directories.
    @ivar redirects: C{(directory, arena path)} of the directories that
        an overlay rename redirects to a lower directory.
    """

    changed: list[tuple[str, int, int]] = field(factory=list)
    missing: list[str] = field(factory=list)
    directories: list[str] = field(factory=list)
    errors: list[tuple[str, str]] = field(factory=list)
    files: int = 0
    whiteouts: list[tuple[str, int]] = field(factory=list)
    opaques: list[tuple[str, int]] = field(factory=list)
    present: list[str] = field(factory=list)
    redirects: list[tuple[str, str]] = field(factory=list)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def valid_file(path: str) -> bool:
    """
    @return: whether C{path} may be indexed as a file (a valid path, not a
        partial file's).
    """
    try:
        check_path(path)
        path.encode("utf-8")
    except (InvalidPath, UnicodeEncodeError):
        return False
    return True


def valid_directory(path: str) -> bool:
    """
    @return: whether C{path} may hold indexed files (a directory may have a
        partial-looking name).
    """
    return valid_file(path + "/x")


def _open_dir(root: str, path: str) -> int:
    """
    Open a directory beneath the root without following any symlink.

    @raise OSError: if it cannot be opened (C{ELOOP}/C{ENOTDIR} for a
        symlink or a file on the way).
    """
    fd = os.open(root, _O_DIR)
    if not path:
        return fd
    try:
        for segment in path.split("/"):
            child = os.open(segment, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlink_mtime(root: str, path: str) -> int:
    """
    The mtime of a Remove (#unlinktime): that of the nearest existing
    ancestor directory of C{path}, up to the arena root.

    @param root: the arena root.
    @param path: the removed file's path.
    @return: ns since the epoch; the current time if even the root is gone.
    """
    segments = path.split("/")[:-1]
    while True:
        try:
            st = os.lstat(os.path.join(root, *segments))
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            return clamp_mtime(st.st_mtime_ns)
        if not segments:
            return time.time_ns()
        segments.pop()


def check_paths(root: str, paths: Sequence[str]) -> list[CheckResult]:
    """
    Look at paths (after their stability delay, or named by a scan or the
    store).

    @param root: the arena root.
    @param paths: valid paths.
    @return: one result per path.
    """
    results = []
    for path in paths:
        try:
            st = os.lstat(os.path.join(root, path))
        except OSError as e:
            if e.errno in _GONE:
                results.append(CheckResult(path, GONE, 0, unlink_mtime(root, path)))
            else:
                results.append(CheckResult(path, ERROR, error=e.strerror or str(e)))
            continue
        full = os.path.join(root, path)
        if stat.S_ISREG(st.st_mode) and not (
            is_metacopy(full, st) or (st.st_size == 0 and is_whiteout(full, st))
        ):
            results.append(
                CheckResult(path, FILE, st.st_size, clamp_mtime(st.st_mtime_ns))
            )
        elif is_whiteout(full, st):
            results.append(CheckResult(path, WHITEOUT, 0, unlink_mtime(root, path)))
        elif stat.S_ISDIR(st.st_mode):
            results.append(CheckResult(path, DIRECTORY, 0, unlink_mtime(root, path)))
        else:
            results.append(CheckResult(path, GONE, 0, unlink_mtime(root, path)))
    return results


class _DirFds:
    """
    Directory descriptors of one batch, opened without following symlinks
    and kept for the files of the same directory.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: dict[str, int] = {}

    def __enter__(self) -> _DirFds:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def get(self, directory: str) -> int:
        fd = self.fds.get(directory)
        if fd is None:
            fd = self.fds[directory] = _open_dir(self.root, directory)
        return fd


def hash_files(root: str, files: Sequence[tuple[str, int, int]]) -> HashResult:
    """
    Hash files, each only if it still has the size and mtime expected, and
    still has them (at the same path, same inode) after hashing.

    The loop runs once per file of a first indexing: names are bound
    locally, and a file of one leaf is read whole and hashed in one call
    (issue 9's benchmark, C{bench/history.py}).

    @param root: the arena root.
    @param files: C{(path, size, mtime_ns)} as last seen.
    @return: what was hashed, what changed, what went.
    """
    started = time.perf_counter()
    result = HashResult([], [], [], [], 0, 0.0)
    versions = result.versions
    changed = result.changed
    gone = result.gone
    errors = result.errors
    hashed = 0
    open_ = os.open
    fstat = os.fstat
    stat_ = os.stat
    pread = os.pread
    close = os.close
    is_reg = stat.S_ISREG
    with _DirFds(root) as dirs:
        for path, size, mtime_ns in files:
            directory, _, name = path.rpartition("/")
            try:
                dir_fd = dirs.get(directory)
                fd = open_(name, _O_READ, dir_fd=dir_fd)
            except OSError as e:
                if e.errno in _GONE:
                    gone.append(path)
                else:
                    errors.append((path, e.strerror or str(e)))
                continue
            try:
                before = fstat(fd)
                if not is_reg(before.st_mode):
                    gone.append(path)
                    continue
                if (
                    before.st_size != size
                    or clamp_mtime(before.st_mtime_ns) != mtime_ns
                ):
                    changed.append(path)
                    continue
                if size <= LEAF_SIZE:
                    # One leaf: read it whole (hash_fd_range allocates a
                    # leaf-sized buffer per call, costly for small files).
                    data = pread(fd, size, 0)
                    root_hash = leaf_hash(data) if data else EMPTY_ROOT
                else:
                    root_hash = merkle_root(hash_fd_range(fd, 0, size))
                hashed += size
                after = stat_(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as e:
                if e.errno in _GONE:
                    gone.append(path)
                else:
                    errors.append((path, e.strerror or str(e)))
                continue
            finally:
                close(fd)
            if (
                after.st_mtime_ns != before.st_mtime_ns
                or after.st_size != size
                or after.st_ino != before.st_ino
                or after.st_dev != before.st_dev
            ):
                changed.append(path)
                continue
            versions.append(Version(path, size, mtime_ns, root_hash))
    result.size = hashed
    result.seconds = time.perf_counter() - started
    return result


#: A walk item: C{(sort key, path, size, mtime_ns)}; size C{-1} marks a
#: directory or file that could not be read (its index entries are left
#: alone), whose key is its path plus C{"/"} for a directory.
_Item = tuple[str, str, int, int]


def _name_ok(name: str, parent_bytes: int) -> int:
    """
    Check a name read from a directory (never empty, C{.}, C{..}, nor
    holding C{/} or NUL): it must be UTF-8 and short enough.

    @param parent_bytes: the length in bytes of the parent's path (0 for
        the root).
    @return: the length in bytes of the whole path, or -1 if invalid.
    """
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return -1
    total = parent_bytes + size + (1 if parent_bytes else 0)
    if size > MAX_NAME_BYTES or total > MAX_PATH_BYTES:
        return -1
    return total


def _listing(
    fd: int, at_root: bool, exclude: str | None
) -> list[tuple[str, str, bool]]:
    """
    A directory's entries as C{(sort key, name, is_dir)}, sorted: a
    directory's key is its name plus C{"/"}.
    """
    items: list[tuple[str, str, bool]] = []
    append = items.append
    with os.scandir(fd) as entries:
        for entry in entries:
            name = entry.name
            if at_root and name in (exclude, RESERVED_NAME):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            append((name + "/", name, True) if is_dir else (name, name, False))
    items.sort()
    return items


def _walk(
    root: str, prefix: str, exclude: str | None, out: ScanResult
) -> Iterator[_Item]:
    """
    The regular files beneath C{prefix}, in the index's path order: each
    directory's entries sorted by name, a directory sorting as its name
    plus C{"/"} (so C{a.txt} comes before C{a/x}, as in the index).

    This loop runs once per file of the arena (the catch-up at start):
    it avoids calls and attribute lookups where it can (issue 9's
    benchmark, C{bench/history.py}).
    """
    try:
        top = _open_dir(root, prefix)
        try:
            top_items = _listing(top, not prefix, exclude)
        except BaseException:
            os.close(top)
            raise
    except OSError as e:
        if not prefix:
            # The arena root itself: never take a missing or unreadable
            # root (an unmounted disk) for a tree whose files all went.
            raise
        if e.errno not in _GONE:
            out.errors.append((prefix, e.strerror or str(e)))
            yield (prefix + "/", prefix, -1, 0)
        return
    out.directories.append(prefix)
    # Whether each directory of the stack is, or is beneath, an opaque one.
    inside = [_overlay_dir(top, prefix, out, False)]
    # (fd, path, its length in bytes, its entries)
    stack: list[tuple[int, str, int, list[tuple[str, str, bool]]]] = [
        (top, prefix, len(prefix.encode("utf-8")), top_items)
    ]
    positions = [0]
    lstat = os.lstat
    is_reg = stat.S_ISREG
    files = 0
    try:
        while stack:
            fd, directory, directory_bytes, items = stack[-1]
            i = positions[-1]
            if i == len(items):
                stack.pop()
                positions.pop()
                inside.pop()
                os.close(fd)
                continue
            # The files of this directory up to its next subdirectory, in
            # one inner loop.
            opaque = inside[-1]
            count = len(items)
            while i < count:
                _, name, is_dir = items[i]
                if is_dir:
                    break
                i += 1
                path = f"{directory}/{name}" if directory else name
                if name.isascii():
                    # One byte per character (a name has no NUL or "/").
                    path_bytes = (
                        directory_bytes + len(name) + (1 if directory_bytes else 0)
                    )
                    if len(name) > MAX_NAME_BYTES or path_bytes > MAX_PATH_BYTES:
                        path_bytes = -1
                else:
                    path_bytes = _name_ok(name, directory_bytes)
                if name[0] == "." and is_partial_name(name):
                    continue
                try:
                    st = lstat(name, dir_fd=fd)
                except OSError as e:
                    if e.errno not in _GONE:
                        out.errors.append((path, e.strerror or str(e)))
                        yield (path, path, -1, 0)
                    continue
                size = st.st_size
                if not is_reg(st.st_mode) or (
                    (size == 0 or st.st_blocks * 512 < size)
                    and _overlay_file(root, path, st)
                ):
                    if path_bytes >= 0 and is_whiteout(os.path.join(root, path), st):
                        mtime = clamp_mtime(os.fstat(fd).st_mtime_ns)
                        out.whiteouts.append((path, mtime))
                    continue
                if path_bytes < 0:
                    out.errors.append((path, "not a valid path"))
                    continue
                files += 1
                if opaque:
                    out.present.append(path)
                mtime_ns = st.st_mtime_ns
                if not -_MAX_INT64 <= mtime_ns <= _MAX_INT64:
                    mtime_ns = clamp_mtime(mtime_ns)
                yield (path, path, size, mtime_ns)
            if i == count:
                positions[-1] = i
                continue
            positions[-1] = i + 1
            _, name, _ = items[i]
            path = f"{directory}/{name}" if directory else name
            path_bytes = _name_ok(name, directory_bytes)
            if path_bytes < 0 or path_bytes + 2 > MAX_PATH_BYTES:
                out.errors.append((path, "not a valid path"))
                yield (path + "/", path, -1, 0)
                continue
            try:
                child = os.open(name, _O_DIR, dir_fd=fd)
            except OSError as e:
                if e.errno not in _GONE:
                    out.errors.append((path, e.strerror or str(e)))
                    yield (path + "/", path, -1, 0)
                continue
            try:
                children = _listing(child, False, exclude)
            except OSError as e:
                os.close(child)
                out.errors.append((path, e.strerror or str(e)))
                yield (path + "/", path, -1, 0)
                continue
            out.directories.append(path)
            inside.append(_overlay_dir(child, path, out, inside[-1]))
            stack.append((child, path, path_bytes, children))
            positions.append(0)
    finally:
        out.files += files
        for fd, _, _, _ in stack:
            os.close(fd)


def _overlay_dir(fd: int, path: str, out: ScanResult, beneath: bool) -> bool:
    """
    Note an opaque or redirected directory of the overlay's upper layer.

    @return: whether it is opaque or beneath an opaque one.
    """
    if not path:
        return False
    opaque = is_opaque(fd)
    if opaque:
        out.opaques.append((path, clamp_mtime(os.fstat(fd).st_mtime_ns)))
    target = redirect_target(fd, path)
    if target is not None:
        out.redirects.append((path, target))
    return beneath or opaque


def _overlay_file(root: str, path: str, st: os.stat_result) -> bool:
    """
    @return: whether a regular file is the overlay's (a metacopy file, or
        an xattr whiteout), never indexed.
    """
    full = os.path.join(root, path)
    return is_metacopy(full, st) or is_whiteout(full, st)


#: An index row as the scan reads it: C{(path, size, mtime_ns, hashed)}.
_Row = tuple[str, int, int, int]


def _index_rows(cursor: sqlite3.Cursor, prefix: str) -> Iterator[_Row]:
    """
    The index beneath C{prefix} in path order, as plain rows (no
    L{IndexEntry} per file), streamed by one statement: sqlite steps it a
    row at a time, so memory stays bounded.
    """
    low, high = prefix_range(prefix)
    return iter(
        cursor.execute(
            "SELECT path, size, mtime_ns, hash IS NOT NULL FROM file_index "
            "WHERE path >= ? AND path < ? ORDER BY path",
            (low, high),
        )
    )


@define
class IndexReader:
    """
    A read-only connection to an arena db for a series of scans, one at a
    time (from any thread): opened at the first, kept for the next ones.
    A new connection for each scan of a directory of 100 files cost half
    of its ~1 ms, most of it sqlite parsing the schema at its first
    statement; a move scans each directory it fills (issue 15).

    @ivar path: the db file.
    """

    path: str
    _connection: sqlite3.Connection | None = field(default=None, init=False)

    def connection(self) -> sqlite3.Connection:
        """
        @return: the connection, opened now if it is not (blocking).
        @raise sqlite3.OperationalError: if the db cannot be opened.
        """
        if self._connection is None:
            self._connection = open_reader(self.path)
        return self._connection

    def close(self) -> None:
        """
        Close the connection, if open (blocking); the next scan opens
        another.
        """
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def scan_tree(
    root: str, prefix: str, exclude: str | None, db: str | IndexReader
) -> ScanResult:
    """
    Compare the disk beneath a directory with the index (the catch-up at
    start, after an overflow, after a directory appeared or went): one walk
    in path order merged with the index read in path order, in one
    read-only transaction.

    @param root: the arena root.
    @param prefix: the directory, C{""} for the whole arena.
    @param exclude: a top-level name never indexed (the workdir), or
        C{None}.
    @param db: the arena db: its path (a connection is opened and closed
        for this scan), or an L{IndexReader} whose connection is used (and
        closed if the scan fails).
    @return: the differences.
    @raise OSError: if the arena root cannot be opened or listed (nothing
        is taken as removed then).
    @raise sqlite3.Error: if the db cannot be read.
    """
    (result,) = scan_trees(root, [prefix], exclude, db)
    if isinstance(result, Exception):
        raise result
    return result


def scan_trees(
    root: str, prefixes: Sequence[str], exclude: str | None, db: str | IndexReader
) -> list[ScanResult | Exception]:
    """
    L{scan_tree} of several directories, one after the other, through one
    connection (one call of a thread for a turn of the watcher's new
    directories: a call cost the reactor more than the scan of a small
    directory cost its thread, issue 15).

    @return: per prefix, its result or what its scan raised.
    """
    reader = IndexReader(db) if isinstance(db, str) else db
    results: list[ScanResult | Exception] = []
    try:
        for prefix in prefixes:
            try:
                results.append(_scan_tree(root, prefix, exclude, reader.connection()))
            except BaseException as e:
                # The connection of a failed scan is not used again.
                reader.close()
                if not isinstance(e, OSError | sqlite3.Error):
                    raise
                results.append(e)
    finally:
        if reader is not db:
            reader.close()
    return results


def _scan_tree(
    root: str, prefix: str, exclude: str | None, connection: sqlite3.Connection
) -> ScanResult:
    out = ScanResult()
    changed = out.changed
    missing = out.missing
    cursor = connection.cursor()
    cursor.execute("BEGIN")
    disk = _walk(root, prefix, exclude, out)
    index = _index_rows(cursor, prefix)
    d = next(disk, None)
    i = next(index, None)
    while d is not None:
        key, path, size, mtime_ns = d
        while i is not None and i[0] < key:
            missing.append(i[0])
            i = next(index, None)
        if size < 0:
            # Unreadable: leave the index entries beneath it alone.
            while i is not None and (
                i[0].startswith(key) if key.endswith("/") else i[0] == key
            ):
                i = next(index, None)
            d = next(disk, None)
            continue
        if i is not None and i[0] == key:
            if i[1] != size or i[2] != mtime_ns or not i[3]:
                changed.append((path, size, mtime_ns))
            i = next(index, None)
        else:
            changed.append((path, size, mtime_ns))
        d = next(disk, None)
    while i is not None:
        missing.append(i[0])
        i = next(index, None)
    cursor.execute("COMMIT")
    return out


def list_directories(root: str, exclude: str | None) -> list[str]:
    """
    Every directory of the arena, parents first (to watch them before the
    catch-up scan).

    @param root: the arena root.
    @param exclude: a top-level name skipped, or C{None}.
    @return: relative paths, C{""} (the root) first; unreadable directories
        are left out (the scan reports them).
    """
    found = []
    stack = [""]
    while stack:
        path = stack.pop()
        try:
            fd = _open_dir(root, path)
        except OSError:
            continue
        found.append(path)
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if not path and entry.name in (exclude, RESERVED_NAME):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            child = _join(path, entry.name)
                            if valid_directory(child):
                                stack.append(child)
                    except OSError:
                        continue
        except OSError:
            pass
        finally:
            os.close(fd)
    return found


def copy_up_redirected(
    root: str, mountpoint: str, db_path: str, redirects: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """
    Copy up, through the overlay, the lower files of directories renamed
    with C{redirect_dir=on} (they show under the new name without being
    in the datadir): each is opened for writing through the overlay, and
    closed, which makes the kernel copy it whole into the datadir (no
    byte changes; the data comes through the FUSE view, from the cache
    where it is there).  Files the datadir already has at the new place
    (real files, whiteouts, beneath an opaque directory) are left alone.

    @param root: the datadir (the upper layer).
    @param mountpoint: the overlay.
    @param db_path: the arena db (the Unreal's tree: the lower files).
    @param redirects: C{(directory, the arena path it came from)}.
    @return: C{(path, message)} of the files that could not be copied up.
    """
    from realize.storage.unrealpaths import files_beneath, unreal_root

    connection = open_reader(db_path)
    try:
        tree_root = unreal_root(connection)
        if tree_root is None:
            return []
        wanted = []
        for directory, target in redirects:
            for lower in files_beneath(connection, tree_root, target):
                if lower == target:
                    continue
                wanted.append(f"{directory}/{lower[len(target) + 1 :]}")
    finally:
        connection.close()
    errors = []
    for path in wanted:
        if _in_upper(root, path):
            continue
        try:
            fd = os.open(
                os.path.join(mountpoint, path),
                os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
            )
        except OSError as e:
            if e.errno not in _GONE:
                errors.append((path, e.strerror or str(e)))
            continue
        os.close(fd)
    return errors


def _in_upper(root: str, path: str) -> bool:
    """
    Whether the upper layer has the path, or hides it (a whiteout or an
    opaque directory on the way).
    """
    segments = path.split("/")
    for i in range(1, len(segments) + 1):
        full = os.path.join(root, *segments[:i])
        try:
            st = os.lstat(full)
        except OSError:
            return False
        if i == len(segments) or not stat.S_ISDIR(st.st_mode):
            return True
        if is_opaque(full):
            return True
    return True
