"""
An in-memory L{FuseBackend}, for tests and the FUSE benchmark.

A tree of directories and files held in dicts under one lock.  A file's
content is either in memory (read at once, like cached data) or remote:
its reads then call L{MemoryBackend.fetch}, which a test sets to wait on
the reactor through a L{realize.fuse.bridge.Bridge} (a download).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from attrs import define, field

from realize.errors import IOFailure, IsADirectory, NotADirectory, NotFound
from realize.fuse.backend import Entry, Kind, Opened, SpaceInfo

__all__ = ["MemoryBackend"]

#: The root's inode (like the global tree's first inode).
ROOT_INODE = 1


@define(eq=False)
class _Node:
    inode: int
    kind: Kind
    mtime_ns: int
    size: int = 0
    content: bytes | None = None
    version: str | None = None
    verified: bool = True
    children: dict[str, int] = field(factory=dict)


@define(eq=False)
class MemoryBackend:
    """
    A L{FuseBackend} over dicts.

    @ivar fetch: reads the data of a file whose content is remote:
        C{fetch(inode, offset, size) -> bytes}; by default it fails with
        L{IOFailure} (no peer).
    @ivar opened: the handles open now, C{handle -> inode} (for tests).
    @ivar calls: how many times each L{FuseBackend} method was called
        (for tests).
    @ivar space: what L{statfs} answers.
    """

    fetch: Callable[[int, int, int], bytes] | None = None
    space: SpaceInfo = field(
        factory=lambda: SpaceInfo(total_bytes=1 << 40, free_bytes=1 << 39, files=0)
    )
    opened: dict[int, int] = field(factory=dict, init=False)
    calls: Counter[str] = field(factory=Counter, init=False)
    _nodes: dict[int, _Node] = field(init=False)
    _marks: dict[int, str] = field(factory=dict, init=False)
    _parents: dict[int, int] = field(factory=dict, init=False)
    #: What L{effective_mark} answers where no mark is set up the tree.
    default_mark: str = field(default="watch", kw_only=True)
    _inodes: Iterator[int] = field(
        factory=lambda: itertools.count(ROOT_INODE + 1), init=False
    )
    _handles: Iterator[int] = field(factory=lambda: itertools.count(100), init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)

    def __attrs_post_init__(self) -> None:
        self._nodes = {ROOT_INODE: _Node(ROOT_INODE, "dir", 0)}

    # -- building the tree (tests) ------------------------------------------

    def mkdir(self, parent: int, name: str, mtime_ns: int = 0) -> int:
        """
        Add a directory.

        @return: its inode.
        """
        return self._add(parent, name, _Node(next(self._inodes), "dir", mtime_ns))

    def add_file(
        self,
        parent: int,
        name: str,
        content: bytes | None,
        *,
        size: int | None = None,
        mtime_ns: int = 0,
        version: str = "none",
        verified: bool = True,
    ) -> int:
        """
        Add a file.

        @param content: its bytes, or C{None} if remote (then C{size} is
            required and reads go to L{fetch}).
        @param verified: whether the content is complete and verified
            (opened with C{keep_cache}).
        @return: its inode.
        """
        if content is not None:
            size = len(content)
        if size is None:
            raise ValueError("a remote file needs a size")
        node = _Node(
            next(self._inodes),
            "file",
            mtime_ns,
            size=size,
            content=content,
            version=version,
            verified=verified and content is not None,
        )
        return self._add(parent, name, node)

    def _add(self, parent: int, name: str, node: _Node) -> int:
        with self._lock:
            directory = self._nodes[parent]
            directory.children[name] = node.inode
            self._nodes[node.inode] = node
            self._parents[node.inode] = parent
        return node.inode

    def remove(self, parent: int, name: str) -> None:
        """
        Remove an entry (and what is under it).
        """
        with self._lock:
            inode = self._nodes[parent].children.pop(name)
            pending = [inode]
            while pending:
                node = self._nodes.pop(pending.pop())
                pending.extend(node.children.values())

    def replace(
        self, inode: int, content: bytes, *, mtime_ns: int, version: str
    ) -> None:
        """
        Show a new version of a file.
        """
        with self._lock:
            node = self._nodes[inode]
            node.content = content
            node.size = len(content)
            node.mtime_ns = mtime_ns
            node.version = version
            node.verified = True

    # -- FuseBackend ----------------------------------------------------------

    @property
    def root_inode(self) -> int:
        return ROOT_INODE

    @staticmethod
    def _entry(node: _Node) -> Entry:
        return Entry(node.inode, node.kind, node.size, node.mtime_ns, None, 1)

    def lookup(self, parent: int, name: str) -> Entry | None:
        with self._lock:
            self.calls["lookup"] += 1
            directory = self._nodes.get(parent)
            if directory is None:
                return None
            inode = directory.children.get(name)
            if inode is None:
                return None
            return self._entry(self._nodes[inode])

    def getattr(self, inode: int) -> Entry | None:
        with self._lock:
            self.calls["getattr"] += 1
            node = self._nodes.get(inode)
            return None if node is None else self._entry(node)

    def readdir(self, inode: int) -> Sequence[tuple[str, Entry]]:
        with self._lock:
            self.calls["readdir"] += 1
            node = self._nodes.get(inode)
            if node is None:
                raise NotFound(f"directory {inode} is gone")
            if node.kind != "dir":
                raise NotADirectory(f"inode {inode} is a file")
            return [
                (name, self._entry(self._nodes[child]))
                for name, child in node.children.items()
            ]

    def _file(self, inode: int) -> _Node:
        node = self._nodes.get(inode)
        if node is None:
            raise NotFound(f"file {inode} is gone")
        if node.kind != "file":
            raise IsADirectory(f"inode {inode} is a directory")
        return node

    def open(self, inode: int) -> Opened:
        with self._lock:
            self.calls["open"] += 1
            node = self._file(inode)
            handle = next(self._handles)
            self.opened[handle] = inode
            return Opened(handle, keep_cache=node.verified)

    def read(self, inode: int, handle: int, offset: int, size: int) -> bytes:
        with self._lock:
            self.calls["read"] += 1
            node = self._file(inode)
            content = node.content
            length = node.size
        if offset >= length:
            return b""
        size = min(size, length - offset)
        if content is not None:
            return content[offset : offset + size]
        if self.fetch is None:
            raise IOFailure(f"file {inode}: no connected peer has the data")
        return self.fetch(inode, offset, size)

    def release(self, inode: int, handle: int) -> None:
        with self._lock:
            self.calls["release"] += 1
            self.opened.pop(handle, None)

    def mark(self, inode: int) -> str | None:
        with self._lock:
            self.calls["mark"] += 1
            if inode not in self._nodes:
                raise NotFound(f"inode {inode} is gone")
            return self._marks.get(inode)

    def set_mark(self, inode: int, mark: str | None) -> None:
        with self._lock:
            self.calls["set_mark"] += 1
            if inode not in self._nodes:
                raise NotFound(f"inode {inode} is gone")
            if mark is None:
                self._marks.pop(inode, None)
            else:
                self._marks[inode] = mark

    def effective_mark(self, inode: int) -> str | None:
        with self._lock:
            self.calls["effective_mark"] += 1
            if inode not in self._nodes:
                raise NotFound(f"inode {inode} is gone")
            current: int | None = inode
            while current is not None:
                mark = self._marks.get(current)
                if mark is not None:
                    return mark if current == inode else f"{mark} (inherited)"
                current = self._parents.get(current)
            return f"{self.default_mark} (default)"

    def version(self, inode: int) -> str | None:
        with self._lock:
            self.calls["version"] += 1
            node = self._nodes.get(inode)
            if node is None:
                raise NotFound(f"inode {inode} is gone")
            return node.version

    def status(self, inode: int) -> str | None:
        with self._lock:
            self.calls["status"] += 1
            node = self._nodes.get(inode)
            if node is None:
                raise NotFound(f"inode {inode} is gone")
            if node.kind == "dir":
                return None
            return "cached verified" if node.content is not None else "remote"

    def statfs(self) -> SpaceInfo:
        with self._lock:
            self.calls["statfs"] += 1
            return SpaceInfo(
                self.space.total_bytes, self.space.free_bytes, len(self._nodes)
            )
