"""
What the FUSE view asks of the daemon: L{FuseBackend}, in domain terms.

The FUSE layer (L{realize.fuse.ops}) turns kernel requests into calls of
this Protocol and its answers into POSIX attributes and errnos; it knows
nothing of sqlite, blobs or peers.  The daemon implements it over the
cache tables, the blob store and the downloader (DESIGN.md section 10);
L{realize.fuse.memory.MemoryBackend} implements it over dicts, for tests
and benchmarks.

Threads: every method is called from FUSE worker threads (up to 10 at
once, libfuse 3.14's limit), never from the reactor thread, so methods may
block, must be thread-safe, and must not call into the reactor except
through a L{realize.fuse.bridge.Bridge} (which bounds the wait).  A
worker thread keeps its Python thread state from one call to the next
(L{realize.fuse.libfuse}), so a per-thread resource (a read-only sqlite
connection) may live in a C{threading.local()} or a dict keyed by
C{threading.get_ident()}.  Metadata
methods (L{FuseBackend.lookup}, L{FuseBackend.getattr},
L{FuseBackend.readdir}, L{FuseBackend.statfs}) read local state and
should answer in microseconds; L{FuseBackend.read} of data already cached
should too (no reactor round trip).

Errors are those of L{realize.errors}; L{realize.fuse.ops} maps them to
errnos in one table (e.g. L{realize.errors.NotFound} to C{ENOENT},
L{realize.errors.IOFailure} and L{realize.errors.NetworkError} to C{EIO}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from attrs import frozen

from realize.model import Entry, EntryKind

__all__ = [
    "MARKS",
    "Entry",
    "FuseBackend",
    "Kind",
    "Opened",
    "SpaceInfo",
]

#: What an entry is: a regular file or a directory (nothing else is shown).
Kind = EntryKind

#: The values of a mark (DESIGN.md section 11), as set with
#: C{setfattr -n user.realize.mark -v keep FILE}.
MARKS: Final = ("own", "keep", "watch")


@frozen
class Opened:
    """
    What L{FuseBackend.open} answers.

    @ivar handle: the backend's handle of this open file, given back to
        L{FuseBackend.read} and L{FuseBackend.release}.
    @ivar keep_cache: C{True} when whatever the kernel may hold in the
        file's page cache is bytes of the version opened (the content is
        complete and verified against the version's hash, or every byte
        read of this inode since the kernel last dropped its pages came
        from this version): the kernel then keeps the page cache across
        opens (re-reads do not reach the daemon).  With C{False} the
        kernel drops the file's pages at open.  The daemon invalidates the
        page cache when the version changes
        (L{realize.fuse.service.FuseService.invalidate}).
    """

    handle: int
    keep_cache: bool


@frozen
class SpaceInfo:
    """
    What C{df} shows for the view (L{FuseBackend.statfs}).

    @ivar total_bytes: the size of the view's storage (e.g. the cache
        quota), bytes.
    @ivar free_bytes: bytes left in it.
    @ivar files: the number of inodes in use.
    """

    total_bytes: int
    free_bytes: int
    files: int


class FuseBackend(Protocol):
    """
    The daemon's view of every arena, by inode (see the module docstring
    for threads and errors).

    The tree: L{root_inode} is the mount's top directory; it holds the
    arena roots (an arena named C{a/b} is directory C{b} in directory
    C{a}).  Names are single path segments (no C{/}, not C{.} or C{..}).
    """

    @property
    def root_inode(self) -> int:
        """
        The inode of the mount's top directory (constant).
        """

    def lookup(self, parent: int, name: str) -> Entry | None:
        """
        An entry of a directory, by name.

        @param parent: a directory's inode.
        @param name: one path segment.
        @return: the entry, or C{None} if C{parent} has no such entry (or
            C{parent} no longer exists or is not a directory).
        """

    def getattr(self, inode: int) -> Entry | None:
        """
        An entry by inode.

        @param inode: any inode.
        @return: the entry, or C{None} if it no longer exists.
        """

    def readdir(self, inode: int) -> Sequence[tuple[str, Entry]]:
        """
        The entries of a directory, with their attributes (the FUSE layer
        sends both at once: readdirplus).

        @param inode: a directory's inode.
        @return: C{(name, entry)} pairs, in a stable order (the kernel may
            ask for the rest of a listing later; the FUSE layer keeps the
            list it got for an open directory until it is read from the
            start again).
        @raise NotFound: if the directory no longer exists.
        @raise NotADirectory: if C{inode} is a file.
        """

    def open(self, inode: int) -> Opened:
        """
        Open a file for reading.

        @param inode: a file's inode.
        @return: the handle and whether the content is complete and
            verified (L{Opened.keep_cache}).
        @raise NotFound: if the file no longer exists.
        @raise IsADirectory: if C{inode} is a directory.
        """

    def read(self, inode: int, handle: int, offset: int, size: int) -> bytes:
        """
        Read verified bytes of an open file.

        Data already cached is read in the calling thread.  Data that is
        not is downloaded: the call then blocks this FUSE thread while the
        reactor fetches and verifies it (through a
        L{realize.fuse.bridge.Bridge}, bounded by its deadline).  A byte
        that does not match the version's hash is never returned.

        @param inode: the inode given to L{open}.
        @param handle: L{Opened.handle}.
        @param offset: first byte, C{>= 0}.
        @param size: bytes wanted, C{> 0} (the kernel asks up to 128 KiB,
            or 1 MiB with a larger read-ahead).
        @return: exactly C{size} bytes, fewer only at the end of the file
            (C{b""} at or after it).
        @raise IOFailure: if the data cannot be read or verified, or no
            connected peer has it within the deadline.
        @raise NetworkError: if the peers having the data were lost.
        """

    def release(self, inode: int, handle: int) -> None:
        """
        Close an open file (the last close of this handle).

        @param inode: the inode given to L{open}.
        @param handle: L{Opened.handle}; not used again.
        """

    def mark(self, inode: int) -> str | None:
        """
        The mark set on this entry itself (not the inherited one).

        @param inode: any inode.
        @return: one of L{MARKS}, or C{None} if none is set here.
        @raise NotFound: if the entry no longer exists.
        """

    def set_mark(self, inode: int, mark: str | None) -> None:
        """
        Set or remove the mark of an entry (may block on the reactor, as
        the cache tables' writer lives there).

        @param inode: any inode.
        @param mark: one of L{MARKS} (the FUSE layer checks it), or
            C{None} to remove it.
        @raise NotFound: if the entry no longer exists.
        @raise BadRequest: if this entry cannot have a mark (the mount's
            root, a directory that only compounds arena names).
        """

    def effective_mark(self, inode: int) -> str | None:
        """
        The mark that applies to an entry (C{user.realize.mark.effective}):
        its own, else the nearest one up the tree, else the arena's
        default.

        @param inode: any inode.
        @return: e.g. C{"own"} (set on the entry), C{"own (inherited)"}
            (set on a directory above it), C{"watch (default)"} (the
            arena's default); C{None} for an entry outside the arenas.
        @raise NotFound: if the entry no longer exists.
        """

    def version(self, inode: int) -> str | None:
        """
        The version shown of a file (C{user.realize.version}).

        @param inode: any inode.
        @return: the hash shown (as the daemon writes hashes, e.g. hex), or
            C{"none"} for a file with no version yet; C{None} for a
            directory.
        @raise NotFound: if the entry no longer exists.
        """

    def status(self, inode: int) -> str | None:
        """
        Where a file's data is (C{user.realize.status}).

        @param inode: any inode.
        @return: C{"remote"}, C{"cached N%"}, C{"cached verified"} or
            C{"local"}; C{None} for a directory.
        @raise NotFound: if the entry no longer exists.
        """

    def conflicts(self, inode: int) -> str | None:
        """
        The other versions of a file (C{user.realize.conflicts}): its open
        conflicts, one C{<peer>-<12 hex digits of the hash>} per line,
        each also readable as C{.realize/conflicts/<path>/<name>} under the
        arena's root (docs/real.md, Conflicts).

        @param inode: any inode.
        @return: the list, or C{None} if the file has none (and for a
            directory).
        @raise NotFound: if the entry no longer exists.
        """

    def statfs(self) -> SpaceInfo:
        """
        The space of the view, for C{df}.
        """
