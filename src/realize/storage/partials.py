"""
Making the partial file a command writes (DESIGN.md sections 1 and 5,
issue 14, items 8, 9 and 13).

A final file is never opened for writing: the new version is built in the
partial file C{.name.part}, which starts as a copy of the final's bytes
where the command needs them (a reflink or C{copy_file_range}, holes kept:
L{realize.storage.fs.copy_file}), and Finish renames it over the final.
A partial file with another link is never written through: it is copied
first.  A file size a command claims is checked against the free space
before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator

from attrs import define, field

from realize.errors import NoSpace, RealizeError
from realize.hashing import LEAF_SIZE
from realize.model import partial_name
from realize.storage.fs import (
    O_CREATE,
    O_READ,
    O_WRITE,
    copy_file,
    free_space,
    open_regular,
)
from realize.storage.paths import not_found, not_regular, os_error, where

__all__ = ["RESERVE_ABOVE", "Partials"]

#: File sizes above this are checked against the free space before a
#: write; smaller files simply fail with ENOSPC when the disk is full.
RESERVE_ABOVE = LEAF_SIZE


@define(eq=False)
class Partials:
    """
    The partial files of one arena, as commands make them.  Call from
    threads.

    @ivar arena: the arena's name, for messages.
    """

    arena: str
    _making: threading.Lock = field(factory=threading.Lock, init=False)

    def _error(self, e: OSError, path: str) -> RealizeError:
        return os_error(e, self.arena, path)

    def reserve(self, fd: int, path: str, size: int, held: int) -> None:
        """
        Refuse a file size the filesystem has no room for.

        @param fd: any descriptor on the filesystem.
        @param size: the size the file will have, in bytes.
        @param held: bytes the file already occupies.
        @raise NoSpace: if C{size - held} exceeds the free space.
        """
        if size <= RESERVE_ABOVE or size <= held:
            return
        free = free_space(fd)
        if free is not None and size - held > free:
            raise NoSpace(
                f"{where(self.arena, path)}: a {size}-byte file needs "
                f"{size - held} more bytes, {free} are free"
            )

    def writable(
        self,
        dir_fd: int,
        name: str,
        path: str,
        *,
        keep: int | None,
        create: bool,
        reserve: int,
    ) -> tuple[int, bool]:
        """
        Open the partial file of a name to change it: the existing one if
        it has no other link; else a new one holding the first C{keep}
        bytes of the old partial or of the final file; else, with
        C{create}, an empty one.

        @param dir_fd: the directory holding the file.
        @param name: the file's (final) name.
        @param path: its path, for messages.
        @param keep: bytes of the final file the new version needs (all
            with C{None}, none with 0).
        @param create: make an empty partial if there is no file at all.
        @param reserve: the size the command makes the file (L{reserve}).
        @return: the descriptor (read-write) and whether this call made
            the file (remove it if the command fails).
        @raise NotFound: if there is neither file and not C{create}.
        @raise InvalidPath: if either file is not a regular file.
        @raise NoSpace: if the filesystem lacks room for C{reserve}.
        """
        partial = partial_name(name)
        while True:
            try:
                fd, st = open_regular(partial, dir_fd, O_WRITE)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise self._error(e, path) from None
            else:
                if st.st_nlink <= 1:
                    try:
                        self.reserve(fd, path, reserve, st.st_blocks * 512)
                    except BaseException:
                        os.close(fd)
                        raise
                    return fd, False
                # Linked elsewhere: go on in a copy of our own.
                try:
                    self.reserve(dir_fd, path, reserve, 0)
                    os.unlink(partial, dir_fd=dir_fd)
                    return self._new(dir_fd, partial, fd, None), True
                except OSError as e:
                    raise self._error(e, path) from None
                finally:
                    os.close(fd)
            # One thread at a time makes a partial of this arena, so that
            # none opens a copy still being made.
            with self._making:
                made = self._from_final(dir_fd, name, path, keep, create, reserve)
            if made is not None:
                return made, True

    @contextlib.contextmanager
    def changing(
        self,
        dir_fd: int,
        name: str,
        path: str,
        *,
        keep: int | None,
        create: bool,
        reserve: int,
    ) -> Iterator[int]:
        """
        L{writable} for a block that changes the partial file, closed
        after it.  If the block fails, a partial file made for it is
        removed (the command leaves the path as it was), and an
        C{OSError} becomes the store's error.
        """
        fd, made = self.writable(
            dir_fd, name, path, keep=keep, create=create, reserve=reserve
        )
        try:
            yield fd
        except BaseException as e:
            if made:
                self.remove(dir_fd, name)
            if isinstance(e, OSError):
                raise self._error(e, path) from None
            raise
        finally:
            os.close(fd)

    def _from_final(
        self,
        dir_fd: int,
        name: str,
        path: str,
        keep: int | None,
        create: bool,
        reserve: int,
    ) -> int | None:
        """
        Make a new partial file from the final one, or empty.

        @return: its descriptor, or C{None} if a partial appeared meanwhile.
        """
        source = -1
        try:
            if keep == 0:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise not_regular(self.arena, path)
            else:
                source, _ = open_regular(name, dir_fd, O_READ)
        except FileNotFoundError:
            if not create:
                raise not_found(self.arena, path) from None
        except OSError as e:
            raise self._error(e, path) from None
        try:
            self.reserve(dir_fd, path, reserve, 0)
            return self._new(dir_fd, partial_name(name), source, keep)
        except FileExistsError:
            return None
        except OSError as e:
            raise self._error(e, path) from None
        finally:
            if source >= 0:
                os.close(source)

    def _new(self, dir_fd: int, partial: str, source: int, keep: int | None) -> int:
        """
        Create a partial file holding the first C{keep} bytes (all with
        C{None}) of C{source}, or empty if C{source} is -1.

        @raise FileExistsError: if the partial exists.
        """
        fd = os.open(partial, O_CREATE, 0o666, dir_fd=dir_fd)
        try:
            if source >= 0:
                size = os.fstat(source).st_size
                copy_file(source, fd, size if keep is None else min(keep, size))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(partial, dir_fd=dir_fd)
            raise
        return fd

    def fresh(
        self, dir_fd: int, name: str, path: str, new_directory: bool = False
    ) -> int:
        """
        A new, empty partial file for a whole new content (WriteFiles): an
        existing regular partial is replaced, never truncated (it may have
        other links); the final, if any, must be a regular file.

        @param new_directory: the directory was just made (by this batch):
            it has no final file to look at (a move into a new tree spares
            a C{stat} per file).
        @raise InvalidPath: if the final or the partial is not a regular
            file.
        """
        partial = partial_name(name)
        try:
            if not new_directory:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        raise not_regular(self.arena, path)
            try:
                return os.open(partial, O_CREATE, 0o666, dir_fd=dir_fd)
            except FileExistsError:
                st = os.stat(partial, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise not_regular(self.arena, path) from None
                os.unlink(partial, dir_fd=dir_fd)
                return os.open(partial, O_CREATE, 0o666, dir_fd=dir_fd)
        except OSError as e:
            raise self._error(e, path) from None

    def remove(self, dir_fd: int, name: str) -> None:
        """
        Remove the partial file a failed command made.
        """
        with contextlib.suppress(OSError):
            os.unlink(partial_name(name), dir_fd=dir_fd)
