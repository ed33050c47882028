"""
What a local store keeps track of about the files being written, in the
reactor thread: who writes each path (L{WriterRegistry}), and the Merkle
leaves of the partial files that its own commands computed
(L{LeafBook}), so that finishing a file tells the store's listener its
root without reading it again (#musthash).

Both are shared by every view of one store (L{realize.storage.local.
LocalStore.with_runners}), that is by every connection of a daemon, and
both are bounded.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from attrs import define, field

from realize.errors import Conflict
from realize.hashing import LEAF_SIZE, merkle_root
from realize.model import MAX_INT64
from realize.storage.fs import Stamp
from realize.storage.paths import where

__all__ = ["FileKey", "LeafBook", "WriterRegistry"]

#: A file of a store: its arena's directory and its path.
FileKey = tuple[str, str]

_END = MAX_INT64 // LEAF_SIZE + 1


@define(eq=False)
class WriterRegistry:
    """
    At most one writer per path at a time (issue 14, item 13): a writer is
    an I{owner} (one view of the store: one connection, or the in-process
    store of C{realize-move}), which may run several writing commands on a
    path at once (a mover repairs ranges of one file in parallel); a
    writing command from another owner is refused with L{Conflict} while
    they run.  Entries exist only while commands run.
    """

    _writers: dict[FileKey, tuple[object, int]] = field(factory=dict)

    def enter(self, key: FileKey, owner: object, arena: str) -> None:
        """
        A writing command of C{owner} starts on a file.

        @raise Conflict: if another owner is writing it.
        """
        current = self._writers.get(key)
        if current is None:
            self._writers[key] = (owner, 1)
        elif current[0] is owner:
            self._writers[key] = (owner, current[1] + 1)
        else:
            raise Conflict(f"{where(arena, key[1])}: being written by another command")

    def leave(self, key: FileKey) -> None:
        """
        A writing command that L{enter}ed ended.
        """
        owner, count = self._writers[key]
        if count == 1:
            del self._writers[key]
        else:
            self._writers[key] = (owner, count - 1)

    def __len__(self) -> int:
        return len(self._writers)


@define(eq=False)
class _Op:
    """
    A command running on a file: the leaves it may change (modifying) or
    computes (a hash), and the ranges of the modifying commands that ran
    at the same time.
    """

    first: int
    last: int
    modifies: bool
    clashes: list[tuple[int, int]] = field(factory=list)


@define(eq=False)
class _Entry:
    """
    What is known of one partial file: its full leaves (C{digests}, 32
    bytes per leaf index, valid where C{known} holds 1) and its short last
    leaf C{(index, length, digest)}.
    """

    ino: int | None = None
    digests: bytearray = field(factory=bytearray)
    known: bytearray = field(factory=bytearray)
    tail: tuple[int, int, bytes] | None = None
    ops: dict[int, _Op] = field(factory=dict)
    stamps: deque[Stamp] = field(factory=lambda: deque(maxlen=4))

    def drop(self, first: int, last: int) -> None:
        """
        Forget the leaves C{[first, last)}.
        """
        if last >= len(self.known):
            del self.known[first:]
            del self.digests[first * 32 :]
        elif first < last:
            self.known[first:last] = bytes(last - first)
        if self.tail is not None and first <= self.tail[0] < last:
            self.tail = None

    def learn(self, index: int, digest: bytes) -> None:
        """
        Record the full leaf C{index}.
        """
        if index >= len(self.known):
            self.known.extend(bytes(index + 1 - len(self.known)))
            self.digests.extend(bytes(32 * len(self.known) - len(self.digests)))
        self.known[index] = 1
        self.digests[index * 32 : index * 32 + 32] = digest

    def reset(self) -> None:
        self.drop(0, _END)
        self.stamps.clear()
        self.ino = None


@define(eq=False)
class LeafBook:
    """
    The Merkle leaves of partial files as the store's own commands
    computed them: a write with C{hash}, an apply of a delta, a hash of the
    partial.  At finish, L{root} gives the file's root if the leaves of
    all of it are known and the file is as the last command left it (same
    inode, size and times: a file changed by another program, which the
    timestamps show, is hashed again).

    Commands that run at once on one file: a hash records only the leaves
    that no modifying command running meanwhile could change; two
    modifying commands at once leave nothing known of the file (they are
    rare: a mover repairing several ranges).

    Bounded: at most L{max_files} files and room for L{max_leaves} leaves
    in all (33 bytes each); the least recently used idle file is forgotten
    first, and a forgotten file is simply hashed again at finish.
    """

    max_files: int = 4096
    max_leaves: int = 1 << 20
    _entries: dict[FileKey, _Entry] = field(factory=dict)
    _ops: dict[int, FileKey] = field(factory=dict)
    _next: int = 0

    def begin(self, key: FileKey, start: int, end: int | None, modifies: bool) -> int:
        """
        A command starts on a file.

        @param start: first byte it reads or changes.
        @param end: end of that range, or C{None} for "to the end of the
            file" (a command that sets the file's size).
        @param modifies: whether it changes the file.
        @return: a token for L{end} or L{abort}.
        """
        entry = self._entries.pop(key, None) or _Entry()
        self._entries[key] = entry  # most recently used
        op = _Op(
            start // LEAF_SIZE,
            _END if end is None else -(-end // LEAF_SIZE),
            modifies,
        )
        for other in entry.ops.values():
            if modifies:
                other.clashes.append((op.first, op.last))
            if other.modifies:
                op.clashes.append((other.first, other.last))
        if modifies:
            entry.drop(op.first, op.last)
        token = self._next
        self._next += 1
        entry.ops[token] = op
        self._ops[token] = key
        return token

    @contextmanager
    def tracking(
        self, key: FileKey, start: int, end: int | None, modifies: bool
    ) -> Iterator[Callable[..., None]]:
        """
        L{begin} a command for the block; the block calls what it gets as
        L{end} without the token.  If it raises, or does not call it, the
        command is L{abort}ed.
        """
        token = self.begin(key, start, end, modifies)
        try:
            yield functools.partial(self.end, token)
        finally:
            if token in self._ops:
                self.abort(token)

    def abort(self, token: int) -> None:
        """
        A command failed: what it may have changed is unknown, so nothing
        is known of its file any more.
        """
        key = self._ops.pop(token, None)
        if key is not None:
            entry = self._entries[key]
            if entry.ops.pop(token).modifies:
                entry.reset()
            self._discard_idle(key, entry)

    def end(
        self,
        token: int,
        stamp: Stamp | None,
        start: int = 0,
        end: int = 0,
        leaves: tuple[bytes, ...] | None = None,
    ) -> None:
        """
        A command ended.

        @param stamp: the partial file after it, or C{None} if it acted on
            the final file (nothing is learnt then).
        @param start: with C{leaves}, a byte of the first leaf.
        @param end: with C{leaves}, where the bytes they hash end.
        @param leaves: the leaves of C{[align_down(start), end)} it
            computed, or C{None}: the last one is known only if C{end} is
            the end of the file.
        """
        key = self._ops.pop(token, None)
        if key is None:
            return
        entry = self._entries[key]
        op = entry.ops.pop(token)
        if stamp is None:
            self._discard_idle(key, entry)
            return
        if op.modifies and op.clashes:
            entry.reset()
            return
        if entry.ino != stamp.ino:
            entry.reset()
            entry.ino = stamp.ino
        size = stamp.size
        if op.modifies:
            # Whatever lies past the file's new end is gone, and its last
            # leaf is known only for its new length.
            entry.drop(size // LEAF_SIZE, _END)
            if entry.tail is not None and entry.tail[:2] != divmod(size, LEAF_SIZE):
                entry.tail = None
        if leaves is not None:
            first = start // LEAF_SIZE
            for offset, digest in enumerate(leaves):
                index = first + offset
                if any(a <= index < b for a, b in op.clashes):
                    continue
                length = min(LEAF_SIZE, end - index * LEAF_SIZE)
                if length == LEAF_SIZE and (index + 1) * LEAF_SIZE <= size:
                    entry.learn(index, digest)
                elif index * LEAF_SIZE + length == size and not op.clashes:
                    entry.tail = (index, length, digest)
        if not op.clashes:
            entry.stamps.append(stamp)
        self._trim()

    def root(self, key: FileKey, stamp: Stamp) -> bytes | None:
        """
        @param stamp: the partial file as it is being finished.
        @return: its Merkle root if every leaf of it is known and it is as
            a command of the store last left it, else C{None}.
        """
        entry = self._entries.get(key)
        if entry is None or entry.ops or entry.ino != stamp.ino:
            return None
        if stamp not in entry.stamps:
            return None
        count, rest = divmod(stamp.size, LEAF_SIZE)
        if len(entry.known) < count or entry.known.find(0, 0, count) >= 0:
            return None
        digests = entry.digests
        leaves = [bytes(digests[i * 32 : i * 32 + 32]) for i in range(count)]
        if rest:
            if entry.tail is None or entry.tail[:2] != (count, rest):
                return None
            leaves.append(entry.tail[2])
        return merkle_root(leaves)

    def forget(self, key: FileKey) -> None:
        """
        A file was finished or deleted: drop what is known of it (its
        running commands, if any, then learn nothing).
        """
        entry = self._entries.pop(key, None)
        if entry is not None:
            for token in entry.ops:
                self._ops.pop(token, None)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def leaves(self) -> int:
        """
        Room for leaves held in all.
        """
        return sum(len(e.known) for e in self._entries.values())

    def _discard_idle(self, key: FileKey, entry: _Entry) -> None:
        if not entry.ops and not entry.known and entry.tail is None:
            del self._entries[key]

    def _trim(self) -> None:
        """
        Forget idle files beyond the bounds, least recently used first.
        """
        if len(self._entries) <= self.max_files and self.leaves <= self.max_leaves:
            return
        held = self.leaves
        for key in list(self._entries):
            if len(self._entries) <= self.max_files and held <= self.max_leaves:
                break
            entry = self._entries[key]
            if not entry.ops:
                held -= len(entry.known)
                self.forget(key)
