"""
One arena directory on disk: the Real of DESIGN.md section 1.

L{ArenaDir} does the blocking work of the store commands on one arena
directory; every method blocks and must run in a thread
(L{realize.storage.local.LocalStore} does that).

Paths are checked by L{realize.model.check_path} and resolved beneath the
arena directory by L{realize.storage.paths}; files are opened by
L{realize.storage.fs.open_regular} (never a symlink, device or FIFO).

Partial files (DESIGN.md sections 1 and 5): the file being received for
C{dir/name} is C{dir/.name.part}.  A final file is never changed in place
and never renamed to its partial name (issue 14, items 8 and 13): Write,
Truncate and ApplyDelta build the new version in the partial, which starts
as a copy of the final where its bytes are needed (a reflink or
C{copy_file_range}, holes kept), and Finish renames the partial over the
final, as rsync does without C{--inplace}.  A hard link to a final file
elsewhere therefore never changes, and until the replacement is complete
the final file is there.  A partial file with other links is copied before
it is written.  A command that fails removes the partial it created, so
it leaves the path as it was.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from attrs import define, field, frozen

from realize.errors import BadRequest, InvalidPath, RealizeError
from realize.hashing import (
    LEAF_SIZE,
    MAX_HASH_LEAVES,
    LeafHasher,
    align_down,
    merkle_root,
    read_range,
)
from realize.model import (
    CHUNK_SIZE,
    MIN_HOLE,
    FileInfo,
    FileState,
    Hole,
    check_path,
    clamp_mtime,
    partial_name,
)
from realize.storage import fs
from realize.storage.fs import (
    O_READ,
    Stamp,
    hash_range,
    next_piece,
    open_regular,
    punch_hole,
    pwrite_all,
    start_writeback,
)
from realize.storage.listing import list_tree
from realize.storage.partials import Partials
from realize.storage.paths import DIR_CACHE_SIZE, DirCache, not_found, os_error, where

__all__ = ["ArenaDir", "ReadHandle", "WriteHandle", "Written"]


@define(eq=False)
class ReadHandle:
    """
    A file open for a read stream, with its leaf hasher.
    """

    fd: int
    hasher: LeafHasher | None
    #: Up to where the file is known to hold data (L{read_piece}).
    data_until: int = 0

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if self.hasher is not None:
            self.hasher.update(data)
        return data

    def read_piece(self, offset: int, end: int, limit: int) -> bytes | Hole:
        """
        The next piece of a sparse read stream: the hole that starts at
        C{offset} (at least L{MIN_HOLE} long, or reaching C{end}), not
        read, its leaves hashed from the digest of zeros; else at most
        C{limit} bytes of data, up to the next such hole.
        """
        if offset < self.data_until:
            return self.read(offset, min(limit, self.data_until - offset, end - offset))
        length, self.data_until = next_piece(self.fd, offset, end, limit, MIN_HOLE)
        if length < 0:
            if self.hasher is not None:
                self.hasher.update_zeros(-length)
            return Hole(-length)
        return self.read(offset, length)

    def close(self) -> None:
        os.close(self.fd)


@define(eq=False)
class WriteHandle:
    """
    A partial file open for a write stream.

    @ivar hash_start: where the leaves of the hasher start.
    """

    path: str
    fd: int
    hasher: LeafHasher | None
    hash_start: int
    writeback_from: int
    written_since_writeback: int = 0
    #: Whether a hole was written (the file may then end before the range).
    holes: bool = False

    def write(self, data: bytes, offset: int) -> None:
        pwrite_all(self.fd, data, offset)
        if self.hasher is not None:
            self.hasher.update(data)
        self.written_since_writeback += len(data)
        if self.written_since_writeback >= fs.WRITEBACK_STEP:
            end = offset + len(data)
            start_writeback(self.fd, self.writeback_from, end - self.writeback_from)
            self.writeback_from = end
            self.written_since_writeback = 0

    def hole(self, offset: int, length: int) -> None:
        """
        Make C{[offset, offset + length)} zeros without writing them: the
        part the file already holds is deallocated (punched), and past its
        end nothing is done (the file is extended, sparse, when the write
        ends); where the filesystem cannot punch holes, that part gets
        zeros written.
        """
        self.holes = True
        end = min(offset + length, os.fstat(self.fd).st_size)
        if end > offset and not punch_hole(self.fd, offset, end - offset):
            zeros = memoryview(bytes(min(end - offset, CHUNK_SIZE)))
            position = offset
            while position < end:
                piece = zeros[: end - position]
                pwrite_all(self.fd, piece, position)
                position += len(piece)
        if self.hasher is not None:
            self.hasher.update_zeros(length)

    def close(self) -> None:
        os.close(self.fd)


@frozen
class Written:
    """
    What a write left in a partial file.

    @ivar leaves: leaves of C{[align_down(start), end)} if asked.
    @ivar root: the whole file's Merkle root if asked.
    @ivar stamp: the partial file afterwards.
    """

    leaves: tuple[bytes, ...]
    root: bytes | None
    stamp: Stamp


def _leaf_count(start: int, end: int) -> int:
    return -(-(end - start) // LEAF_SIZE) if end > start else 0


@define(eq=False)
class ArenaDir:
    """
    Blocking operations on one arena directory.  Call from threads.

    @ivar name: the arena's name, for messages.
    @ivar directory: the arena's directory (the config's C{datadir}).
    @ivar exclude: a directory name at the top of the directory that is not
        part of the arena (a workdir inside the datadir), or C{None}.
    """

    name: str
    directory: str
    exclude: str | None = None
    partials: Partials = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.partials = Partials(self.name)

    def __reduce__(self) -> tuple[Any, tuple[str, str, str | None]]:
        """
        Pickled as its name, directory and exclude (a batch runs in a
        worker process, L{realize.processes}); the copy has partials of
        its own (their lock is per process).
        """
        return (ArenaDir, (self.name, self.directory, self.exclude))

    # -- resolution -----------------------------------------------------

    def key(self, path: str) -> tuple[str, str]:
        """
        @return: what identifies a file of this arena in a store's
            bookkeeping (L{realize.storage.tracking}).
        """
        return self.directory, path

    def error(self, e: OSError, path: str) -> RealizeError:
        return os_error(e, self.name, path)

    def segments(self, path: str) -> list[str]:
        """
        Validate a path of this arena.

        @return: its segments.
        @raise InvalidPath: if the path is malformed or in the excluded
            workdir.
        """
        segments = check_path(path)
        if self.exclude is not None and segments[0] == self.exclude:
            raise InvalidPath(f"{where(self.name, path)}: inside the arena's workdir")
        return segments

    def by_directory(
        self, paths: Sequence[str]
    ) -> list[tuple[int, list[str] | RealizeError]]:
        """
        Check the paths of a batch and order them by directory (keeping
        their order within one), so that the batch opens each directory
        once however few a L{DirCache} keeps.

        @return: each path's index and segments, or its error.
        """
        checked: list[tuple[int, list[str] | RealizeError]] = []
        for index, path in enumerate(paths):
            try:
                checked.append((index, self.segments(path)))
            except RealizeError as e:
                checked.append((index, e))
        checked.sort(key=_directory_of)
        return checked

    def dirs(self, limit: int = DIR_CACHE_SIZE) -> DirCache:
        """
        @param limit: directories it keeps open at most (L{DirCache}).
        @return: a cache of this arena's directories for one piece of work.
        """
        return DirCache(self.name, self.directory, limit)

    def parent(self, path: str, create: bool) -> tuple[int, str]:
        """
        Open the directory holding a file.

        @param create: create missing directories.
        @return: the directory's descriptor (the caller's to close) and
            the file's name in it.
        @raise InvalidPath: if the path is malformed or crosses a symlink
            or a non-directory.
        @raise NotFound: if a directory is missing and not C{create}.
        """
        segments = self.segments(path)
        with self.dirs() as dirs:
            return dirs.take(segments[:-1], path, create), segments[-1]

    def open_either(
        self,
        dir_fd: int,
        name: str,
        path: str,
        prefer_partial: bool,
        blocking: bool = True,
    ) -> tuple[int, bool, os.stat_result]:
        """
        Open the final or partial file of a name for reading.

        @param blocking: see L{realize.storage.fs.open_regular}.

        @return: the descriptor, whether it is the partial, and its status.
        @raise NotFound: if neither exists.
        """
        partial = partial_name(name)
        order = [(partial, True), (name, False)]
        if not prefer_partial:
            order.reverse()
        for candidate, is_partial in order:
            try:
                fd, st = open_regular(candidate, dir_fd, O_READ, blocking=blocking)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self.error(e, path) from None
            return fd, is_partial, st
        raise not_found(self.name, path)

    def open_for_reading(
        self, path: str, prefer_partial: bool
    ) -> tuple[int, bool, os.stat_result]:
        dir_fd, name = self.parent(path, create=False)
        try:
            return self.open_either(dir_fd, name, path, prefer_partial)
        finally:
            os.close(dir_fd)

    # -- listing and reading ----------------------------------------------

    def list_files(self) -> list[FileInfo]:
        """
        List the regular files of the arena, finals and partials
        (L{realize.storage.listing.list_tree}).
        """
        return list_tree(self.name, self.directory, self.exclude)

    def open_read(
        self, path: str, start: int, end: int, hash_from: int | None
    ) -> ReadHandle:
        """
        Open a file (final, else partial) for a read stream, hashing
        C{[hash_from, start)} first if asked.

        @raise BadRequest: if the leaves of C{[hash_from, end)} would be
            more than L{MAX_HASH_LEAVES}.
        @raise NotFound, InvalidPath, PermissionDenied, IOFailure: as usual.
        """
        fd, _, st = self.open_for_reading(path, prefer_partial=False)
        try:
            hasher = None
            if hash_from is not None:
                self._check_leaves(path, hash_from, min(end, st.st_size))
                hasher = LeafHasher()
                hasher.leaves.extend(hash_range(fd, hash_from, align_down(start)))
                for chunk in read_range(fd, align_down(start), start):
                    hasher.update(chunk)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError):
                raise self.error(e, path) from None
            raise
        return ReadHandle(fd, hasher)

    def read_chunk(
        self, handle: ReadHandle, path: str, offset: int, length: int
    ) -> bytes:
        """
        Read the next chunk of a read stream.
        """
        try:
            return handle.read(offset, length)
        except OSError as e:
            raise self.error(e, path) from None

    def read_piece(
        self, handle: ReadHandle, path: str, offset: int, end: int, limit: int
    ) -> bytes | Hole:
        """
        Read the next piece of a sparse read stream (L{ReadHandle.
        read_piece}): a L{Hole}, or at most C{limit} bytes.
        """
        try:
            return handle.read_piece(offset, end, limit)
        except OSError as e:
            raise self.error(e, path) from None

    def end_read(self, handle: ReadHandle) -> FileState:
        """
        Close a read stream's file.

        @return: its leaves and its size and mtime now.
        """
        try:
            st = os.fstat(handle.fd)
        finally:
            handle.close()
        leaves = tuple(handle.hasher.finish()) if handle.hasher else ()
        return FileState(leaves, st.st_size, clamp_mtime(st.st_mtime_ns))

    def read_all(
        self, path: str, start: int, end: int, hash_from: int | None
    ) -> tuple[bytes, FileState]:
        """
        Read a whole (small) range in one call.

        @return: the bytes of C{[start, end)} (fewer at end of file) and the
            file's state.
        """
        handle = self.open_read(path, start, end, hash_from)
        try:
            data = handle.read(start, end - start)
        except OSError as e:
            handle.close()
            raise self.error(e, path) from None
        return data, self.end_read(handle)

    def _check_leaves(self, path: str, start: int, end: int) -> None:
        count = _leaf_count(start, end)
        if count > MAX_HASH_LEAVES:
            raise BadRequest(
                f"{where(self.name, path)}: hashing [{start}, {end}) takes "
                f"{count} leaves, more than {MAX_HASH_LEAVES}: hash it in pieces"
            )

    def hash(self, path: str, start: int, end: int) -> tuple[FileState, Stamp | None]:
        """
        Leaves of C{[start, min(end, size))} of the file (partial if it
        exists, else final); holes of a sparse file are not read.

        @return: the leaves, size and mtime, and the partial's stamp if the
            partial was hashed.
        @raise BadRequest: if that is more than L{MAX_HASH_LEAVES} leaves.
        """
        fd, is_partial, st = self.open_for_reading(path, prefer_partial=True)
        try:
            self._check_leaves(path, start, min(end, st.st_size))
            leaves = hash_range(fd, start, end)
            st = os.fstat(fd)
        except OSError as e:
            raise self.error(e, path) from None
        finally:
            os.close(fd)
        state = FileState(tuple(leaves), st.st_size, clamp_mtime(st.st_mtime_ns))
        return state, Stamp.of(st) if is_partial else None

    def hash_final(self, path: str) -> tuple[bytes, int, int]:
        """
        Hash a whole final file.

        @return: its Merkle root, size and mtime.
        """
        fd, _, st = self.open_for_reading(path, prefer_partial=False)
        try:
            leaves = hash_range(fd, 0, st.st_size)
            st = os.fstat(fd)
        except OSError as e:
            raise self.error(e, path) from None
        finally:
            os.close(fd)
        return merkle_root(leaves), st.st_size, clamp_mtime(st.st_mtime_ns)

    # -- writing --------------------------------------------------------

    def open_write(
        self, path: str, start: int, end: int, file_size: int, hash: bool
    ) -> WriteHandle:
        """
        Open the partial file of a path for a write stream of C{[start,
        end)} of a C{file_size}-byte file, creating directories and the
        file as needed (from the final's bytes outside the range); with
        C{hash}, hash the existing bytes C{[align_down(start), start)}
        first.

        @raise NoSpace: if C{file_size} needs more room than is free.
        """
        if start == 0 and end == file_size:
            keep: int | None = 0
        else:
            keep = start if end == file_size else None
        dir_fd, name = self.parent(path, create=True)
        try:
            fd, _ = self.partials.writable(
                dir_fd, name, path, keep=keep, create=True, reserve=file_size
            )
        finally:
            os.close(dir_fd)
        handle = WriteHandle(path, fd, None, align_down(start), start)
        if hash:
            handle.hasher = LeafHasher()
            try:
                for chunk in read_range(fd, align_down(start), start):
                    handle.hasher.update(chunk)
                size = os.fstat(fd).st_size
                if size < start:
                    handle.hasher.update(bytes(start - max(size, align_down(start))))
            except OSError as e:
                handle.close()
                raise self.error(e, path) from None
        return handle

    def write_chunk(self, handle: WriteHandle, data: bytes, offset: int) -> None:
        """
        Write the next chunk of a write stream.
        """
        try:
            handle.write(data, offset)
        except OSError as e:
            raise self.error(e, handle.path) from None

    def write_hole(self, handle: WriteHandle, offset: int, length: int) -> None:
        """
        Write a hole of a sparse write stream: zeros that take no room
        (L{WriteHandle.hole}).
        """
        try:
            handle.hole(offset, length)
        except OSError as e:
            raise self.error(e, handle.path) from None

    def end_write(
        self, handle: WriteHandle, end: int, file_size: int, verify: bool
    ) -> Written:
        """
        Complete a write stream: truncate at C{file_size} if C{end} is the
        end of the file, close.

        @param verify: also compute the whole file's root, reading only
            the leaves before the written range (needs a hashing handle).
        """
        try:
            if end == file_size:
                os.ftruncate(handle.fd, file_size)
            elif handle.holes and os.fstat(handle.fd).st_size < end:
                # The range ended in a hole past the end of the file.
                os.ftruncate(handle.fd, end)
            leaves = handle.hasher.finish() if handle.hasher else []
            root = None
            if verify:
                root = merkle_root(hash_range(handle.fd, 0, handle.hash_start) + leaves)
            return Written(tuple(leaves), root, Stamp.of(os.fstat(handle.fd)))
        except OSError as e:
            raise self.error(e, handle.path) from None
        finally:
            handle.close()

    def write_all(
        self,
        path: str,
        start: int,
        data: bytes,
        end: int,
        file_size: int,
        hash: bool,
        verify: bool,
    ) -> Written:
        """
        A whole (small) write stream in one call: L{open_write},
        L{write_chunk}, L{end_write}.
        """
        handle = self.open_write(path, start, end, file_size, hash)
        try:
            handle.write(data, start)
        except OSError as e:
            handle.close()
            raise self.error(e, path) from None
        return self.end_write(handle, end, file_size, verify)

    def truncate(self, path: str, size: int) -> Stamp:
        """
        Truncate or extend the partial file (made from the final's first
        C{size} bytes if there is none).

        @return: the partial file afterwards.
        @raise NotFound: if there is no file.
        @raise NoSpace: if extending needs more room than is free.
        """
        dir_fd, name = self.parent(path, create=False)
        try:
            with self.partials.changing(
                dir_fd, name, path, keep=size, create=False, reserve=size
            ) as fd:
                os.ftruncate(fd, size)
                return Stamp.of(os.fstat(fd))
        finally:
            os.close(dir_fd)


def _directory_of(item: tuple[int, list[str] | RealizeError]) -> tuple[str, ...]:
    segments = item[1]
    return () if isinstance(segments, RealizeError) else tuple(segments[:-1])
