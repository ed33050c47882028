"""
The watcher (DESIGN.md section 9): keeps each arena's index equal to its
datadir, recording every change in the history.

How a change reaches the index:

    1. inotify (one watch per directory, added as directories appear)
       names a path; the path waits until nothing happened to it for
       L{STABILITY_DELAY} seconds.
    2. The path is looked at (C{lstat}, in a thread): a regular file whose
       size and mtime differ from the index is queued for hashing; one at
       least L{UNHASHED_NOTICE_SIZE} bytes long is recorded at once with no
       version (#musthash), so that peers see it before it is hashed.  A
       path that is gone (or is a symlink, device, socket: never indexed)
       is recorded as a Remove whose mtime is that of its nearest existing
       ancestor directory (#unlinktime); a path that exists again is not
       removed.  A directory is scanned.
    3. Hashing runs in the thread pool, in batches, and re-stats each file:
       a file whose size or mtime changed while it was hashed is not
       recorded, it waits for the delay again.  A batch hashed is recorded
       while the next ones hash (at most L{RECORD_BACKLOG} batches wait for
       the db).
    4. A file the store just finished (L{StoreListener.file_finished},
       with its Merkle root) is recorded with that root, without hashing
       and without looking at it, when nothing but the store's own rename
       of its partial file into place (or a scan's sight of that very
       size and mtime) named it since: the store set that size and mtime
       before the rename, and any later change to the file is an event
       (or, in a directory not watched yet, the scan's sight) that makes
       it looked at as usual.  A file named by another event is looked
       at, and recorded with the store's root if its size and mtime on
       disk are the ones the store gave.

Renames are resolved by stat: the old path is gone (Remove), the new one
is there (Add); a directory renamed is a scan of both places, so a Remove
and an Add per file.  A scan walks a tree in path order and merges it with
the index (L{realize.storage.scan.scan_tree}): it runs at start (the
catch-up: what changed while the daemon was down is recorded once, nothing
else), after an inotify queue overflow, and for directories that appear,
move or go.  When inotify watches run out (C{ENOSPC}:
C{fs.inotify.max_user_watches}), a warning is logged once and the
directories left unwatched are rescanned every L{RESCAN_INTERVAL}
seconds.  Permission errors are logged once per path; the rest of the
arena is still watched.

Twisted's L{twisted.internet.inotify.INotify} is used through
L{KernelNotifier}, which keeps its file descriptor handling but dispatches
raw events: Twisted's own dispatch closes the whole inotify descriptor
when any watched directory is deleted (C{IN_DELETE_SELF}), keys watches by
path (stale after a directory rename), and drops C{errno} (C{ENOSPC} must
be told from C{EACCES}).
"""

from __future__ import annotations

import collections
import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet import inotify
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from realize.config import Config
from realize.interfaces import RunInThread, StoreListener
from realize.metrics import HistoryMetrics
from realize.model import RESERVED_NAME, ArenaName
from realize.services.notifier import WATCH_MASK, KernelNotifier, Notifier
from realize.storage import scan
from realize.storage.index import ArenaIndex, Version
from realize.storage.whiteouts import _txn_record_hidden

__all__ = [
    "NEW_DIRECTORY_DELAY",
    "RENAME_EVENT_WAIT",
    "RESCAN_INTERVAL",
    "STABILITY_DELAY",
    "UNHASHED_NOTICE_SIZE",
    "WATCH_MASK",
    "ArenaWatcher",
    "KernelNotifier",
    "Notifier",
    "WatcherService",
]

#: Seconds a path must stay unchanged before it is looked at.
STABILITY_DELAY = 1.0

#: Seconds between rescans of the directories that could not be watched.
RESCAN_INTERVAL = 60.0

#: Files at least this large are recorded with no version as soon as they
#: are stable, before hashing them (#musthash); smaller ones hash in a few
#: milliseconds and are recorded once, with their version.
UNHASHED_NOTICE_SIZE = 1 << 20

#: Paths looked at per thread call.
CHECK_BATCH = 2000

#: Hashing batches: at most this many files or bytes per thread call, and
#: this many batches at once.
HASH_BATCH_FILES = 512
HASH_BATCH_BYTES = 16 << 20
HASH_CONCURRENCY = 2

#: Hashed batches waiting to be recorded at most: hashing goes on while
#: the db records (new batches start only below this many).
RECORD_BACKLOG = 2

#: Hints from the store kept at most (the oldest go first).
MAX_HINTS = 100_000

#: Files recorded from hints remembered at most, for the scans under way
#: (L{ArenaWatcher._covered}; the oldest go first).
MAX_STORED = 10_000

#: Directories that appeared (or went) scanned in one thread call at most.
SCAN_BATCH = 64

#: Seconds between a directory's appearance and its watch, then its scan.
#: A directory a move fills is full by then (a batch of files takes a few
#: milliseconds), so that the one scan after the watch sees all its files,
#: and none of them gives an event.  Watched at once, each file the store
#: wrote in it gave six events; watched after a first scan, it took a
#: second scan for what came between the walk and the watch (issue 15).
NEW_DIRECTORY_DELAY = 0.2

#: Seconds a file recorded from the store's word waits for the event of
#: its rename into place, which then is not news (it arrives within
#: milliseconds, unless the directory was not watched yet).
RENAME_EVENT_WAIT = 30.0

#: Cookies of partial files' C{IN_MOVED_FROM} kept, for the C{IN_MOVED_TO}
#: that follows (renames in several directories at once may interleave).
MAX_PARTIAL_COOKIES = 64

_ROOT_GONE = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_UNMOUNT


def _trim(entries: collections.OrderedDict[Any, Any], limit: int) -> None:
    """
    Forget the oldest entries of a bounded bookkeeping dict beyond
    C{limit} (the first ones: entries are moved to the end as they are
    renewed).
    """
    while len(entries) > limit:
        entries.popitem(last=False)


@define(eq=False)
class ArenaWatcher:
    """
    Watches one arena's datadir and records its changes in its index.

    @ivar arena: the arena.
    @ivar root: its datadir.
    @ivar exclude: a top-level name never indexed (the workdir inside the
        datadir), or C{None}.
    @ivar index: the arena's index.
    @ivar clock: for the stability delay and rescans.
    @ivar run_in_thread: runs the blocking work (stat, scans, hashing).
    @ivar notifier_factory: makes the inotify descriptor.
    @ivar metrics: where to count, or C{None}.
    @ivar delay: the stability delay, seconds.
    @ivar unhashed_notice_size: see L{UNHASHED_NOTICE_SIZE}.
    @ivar rescan_interval: see L{RESCAN_INTERVAL}.
    @ivar on_attributes: called with a path whose attributes changed
        (C{IN_ATTRIB}: extended attributes such as C{user.realize.mark},
        permissions, times), or C{None}: the hook for marks (issue 12).
    @ivar mountpoint: the arena's overlay mountpoint (C{[[arena]]
        mountpoint}), or C{None}: directories renamed through it with
        C{redirect_dir=on} are copied up through it.
    """

    log = Logger(namespace="realize.watcher")

    arena: ArenaName
    root: str
    exclude: str | None
    index: ArenaIndex
    clock: IReactorTime
    run_in_thread: RunInThread
    notifier_factory: Callable[[], Notifier]
    metrics: HistoryMetrics | None = None
    delay: float = STABILITY_DELAY
    unhashed_notice_size: int = UNHASHED_NOTICE_SIZE
    rescan_interval: float = RESCAN_INTERVAL
    on_attributes: Callable[[str], None] | None = None
    mountpoint: str | None = None

    _notifier: Notifier | None = field(default=None, init=False)
    _running: bool = field(default=False, init=False)
    _wd_dir: dict[int, str] = field(factory=dict, init=False)
    _dir_wd: dict[str, int] = field(factory=dict, init=False)
    _children: dict[str, set[str]] = field(factory=dict, init=False)
    _unwatched: set[str] = field(factory=set, init=False)
    _warned: set[str] = field(factory=set, init=False)
    _warned_watches: bool = field(default=False, init=False)
    _pending: collections.OrderedDict[str, float] = field(
        factory=collections.OrderedDict, init=False
    )
    _due: dict[str, None] = field(factory=dict, init=False)
    _busy: set[str] = field(factory=set, init=False)
    _again: set[str] = field(factory=set, init=False)
    _hints: collections.OrderedDict[str, tuple[int, int, bytes]] = field(
        factory=collections.OrderedDict, init=False
    )
    #: Files recorded from the store's hints, with the size and mtime
    #: recorded, until an event or a look names them again (L{_covered}).
    _stored: collections.OrderedDict[str, tuple[int, int]] = field(
        factory=collections.OrderedDict, init=False
    )
    _hash_queue: collections.deque[tuple[str, int, int]] = field(
        factory=collections.deque, init=False
    )
    _hash_backlog: int = field(default=0, init=False)
    _hashing: int = field(default=0, init=False)
    _recording: int = field(default=0, init=False)
    _checking: bool = field(default=False, init=False)
    _timer: IDelayedCall | None = field(default=None, init=False)
    _rescan_timer: IDelayedCall | None = field(default=None, init=False)
    _scans: list[tuple[str, str]] = field(factory=list, init=False)
    _scanning: bool = field(default=False, init=False)
    _work: set[Deferred[Any]] = field(factory=set, init=False)
    _idle: list[Deferred[None]] = field(factory=list, init=False)
    _copying: list[str] = field(factory=list, init=False)
    _after_copy_up: list[tuple[str, int]] = field(factory=list, init=False)
    #: For files that appeared in the datadir of an arena with an overlay:
    #: the Unreal's default hash then (L{ArenaIndex.origins}), by path.
    _seen: collections.OrderedDict[str, bytes | None] = field(
        factory=collections.OrderedDict, init=False
    )
    #: Paths whose origin is looked up at the next turn of the reactor.
    _unseen: dict[str, None] = field(factory=dict, init=False)
    #: Paths waiting (in C{_pending} or C{_due}) only because of the
    #: store's rename of their partial file into place (C{None}) or a
    #: new directory's scan that saw this size and mtime: the store's
    #: word for the same file makes their look needless (L{known}).
    _renamed: dict[str, tuple[int, int] | None] = field(factory=dict, init=False)
    #: Files recorded from the store's word before the event of their
    #: rename came, with the time of the word: that event is not news.
    _expected: collections.OrderedDict[str, float] = field(
        factory=collections.OrderedDict, init=False
    )
    #: Cookies of the partial files' renames seen last (L{_event}).
    _partial_cookies: collections.OrderedDict[int, None] = field(
        factory=collections.OrderedDict, init=False
    )
    #: Files to record from the store's word at the next turn of the
    #: reactor, and how many such recordings are under way.
    _from_store: list[Version] = field(factory=list, init=False)
    _storing: int = field(default=0, init=False)
    #: Directories that appeared, to watch then scan (L{NEW_DIRECTORY_DELAY}).
    _new_directories: dict[str, None] = field(factory=dict, init=False)
    _new_timer: IDelayedCall | None = field(default=None, init=False)
    #: The index's connection of the scans (one at a time), once one ran.
    _reader: scan.IndexReader | None = field(default=None, init=False)

    # -- life ----------------------------------------------------------------

    async def start(self) -> None:
        """
        Watch the tree, then catch up: compare it with the index and
        record what changed while nobody watched.  Returns once the
        catch-up scan is done and its changes queued (L{wait_idle} waits
        for them to be recorded).

        @raise OSError: if the datadir cannot be opened.
        """
        self._running = True
        notifier = self._notifier = self.notifier_factory()
        notifier.start(self._event)
        directories = await self._track(
            self.run_in_thread(scan.list_directories, self.root, self.exclude)
        )
        if not self._running:
            return
        if "" not in directories:
            raise FileNotFoundError(
                errno.ENOENT, f"arena {self.arena}: datadir is missing", self.root
            )
        for directory in directories:
            self._watch(directory)
        self._report()
        self.log.info(
            "arena {arena}: watching {root} ({watches} directories)",
            arena=self.arena,
            root=self.root,
            watches=len(self._dir_wd),
        )
        self._scans.append(("", "start"))
        await self._run_scans()

    def stop(self) -> Deferred[None]:
        """
        Stop watching; waits for the thread work under way (its results
        are recorded no more).  What was still waiting is found again by
        the next start's catch-up.
        """
        self._running = False
        for timer in (self._timer, self._rescan_timer, self._new_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._rescan_timer = self._new_timer = None
        self._new_directories.clear()
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None
        self._pending.clear()
        self._due.clear()
        self._hash_queue.clear()
        self._scans.clear()
        self._renamed.clear()
        self._expected.clear()
        self._from_store.clear()
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)
        work = list(self._work)
        done = DeferredList(work, consumeErrors=True)
        reader, self._reader = self._reader, None
        if reader is not None:
            done.addCallback(lambda _: self.run_in_thread(reader.close))
        return done.addCallback(lambda _: None)

    def wait_idle(self) -> Deferred[None]:
        """
        @return: fires once nothing is waiting, being looked at, hashed or
            scanned (for tests and benchmarks; the delay still applies).
        """
        if self._is_idle():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def _is_idle(self) -> bool:
        return not (
            self._pending
            or self._due
            or self._busy
            or self._hash_queue
            or self._hashing
            or self._recording
            or self._checking
            or self._scans
            or self._scanning
            or self._from_store
            or self._storing
            or self._new_directories
        )

    def _maybe_idle(self) -> None:
        if self._idle and self._is_idle():
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        self._work.add(d)

        def done(result: object) -> object:
            self._work.discard(d)
            return result

        return d.addBoth(done)

    def _report(self) -> None:
        if self.metrics is not None:
            queued = (
                len(self._pending)
                + len(self._due)
                + len(self._hash_queue)
                + len(self._busy)
            )
            self.metrics.watcher_state(
                self.arena,
                queued,
                self._hash_backlog,
                len(self._dir_wd),
                len(self._unwatched),
            )

    def _warn_once(self, key: str, message: str, **fields: Any) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        self.log.warn(message, arena=self.arena, **fields)

    # -- watches ---------------------------------------------------------------

    def _watch(self, directory: str) -> None:
        if self._notifier is None or directory in self._dir_wd:
            return
        path = os.fsencode(
            os.path.join(self.root, directory) if directory else self.root
        )
        try:
            wd = self._notifier.add_watch(path, WATCH_MASK)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                if not self._warned_watches:
                    self._warned_watches = True
                    self.log.warn(
                        "arena {arena}: out of inotify watches at {watches} "
                        "(raise fs.inotify.max_user_watches); directories not "
                        "watched are rescanned every {interval} s",
                        arena=self.arena,
                        watches=len(self._dir_wd),
                        interval=self.rescan_interval,
                    )
                self._unwatched.add(directory)
                self._schedule_rescan()
            elif e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                self._warn_once(
                    directory,
                    "arena {arena}: cannot watch {path}: {error}",
                    path=directory or ".",
                    error=e.strerror,
                )
            return
        old = self._wd_dir.get(wd)
        if old is not None and old != directory:
            # The kernel's watch followed a renamed directory.
            self._forget(old, remove=False)
        self._wd_dir[wd] = directory
        self._dir_wd[directory] = wd
        self._unwatched.discard(directory)
        if directory:
            parent = directory.rpartition("/")[0]
            self._children.setdefault(parent, set()).add(directory)

    def _forget(self, directory: str, remove: bool = True) -> None:
        """
        Drop the watches of a directory and everything beneath it.
        """
        stack = [directory]
        while stack:
            d = stack.pop()
            stack.extend(self._children.pop(d, ()))
            self._unwatched.discard(d)
            wd = self._dir_wd.pop(d, None)
            if wd is None:
                continue
            if self._wd_dir.get(wd) == d:
                del self._wd_dir[wd]
                if remove and self._notifier is not None:
                    self._notifier.remove_watch(wd)
        if directory:
            parent = directory.rpartition("/")[0]
            siblings = self._children.get(parent)
            if siblings is not None:
                siblings.discard(directory)

    def _schedule_rescan(self) -> None:
        if self._running and self._rescan_timer is None:
            self._rescan_timer = self.clock.callLater(
                self.rescan_interval, self._rescan_unwatched
            )

    def _rescan_unwatched(self) -> None:
        self._rescan_timer = None
        tops = sorted(self._unwatched)
        outermost = [
            d
            for d in tops
            if not any(d.startswith(t + "/") for t in tops if t and t != d)
        ]
        for directory in outermost:
            self._unwatched.discard(directory)
            self._queue_scan(directory, "unwatched")

    # -- events ----------------------------------------------------------------

    def _event(self, wd: int, mask: int, cookie: int, name: bytes) -> None:
        if (
            name.endswith(b".part")
            and name[:1] == b"."
            and len(name) > 6
            and not mask & inotify.IN_ISDIR
        ):
            # A partial file (realize.model.is_partial_name, on the
            # bytes): never looked at.  Five of the six events of each
            # file a store writes are its partial's (issue 15).  The
            # cookie of its rename tells the sixth, its final name's.
            if mask & inotify.IN_MOVED_FROM:
                cookies = self._partial_cookies
                cookies[cookie] = None
                _trim(cookies, MAX_PARTIAL_COOKIES)
            return
        if not self._running:
            return
        if mask & inotify.IN_Q_OVERFLOW:
            self.log.warn(
                "arena {arena}: inotify queue overflowed; rescanning", arena=self.arena
            )
            self._stored.clear()
            self._expected.clear()
            self._renamed.clear()
            self._queue_scan("", "overflow")
            return
        directory = self._wd_dir.get(wd)
        if directory is None:
            return
        if mask & inotify.IN_IGNORED:
            if self._dir_wd.get(directory) == wd:
                self._forget(directory, remove=False)
            return
        if not name:
            if directory == "" and mask & inotify.IN_ATTRIB and self.on_attributes:
                self.on_attributes("")
            if directory == "" and mask & _ROOT_GONE:
                self.log.error(
                    "arena {arena}: the datadir {root} was moved, deleted or "
                    "unmounted; its index is left as it was",
                    arena=self.arena,
                    root=self.root,
                )
            return
        text = os.fsdecode(name)
        if not directory and text in (self.exclude, RESERVED_NAME):
            return
        path = f"{directory}/{text}" if directory else text
        is_dir = bool(mask & inotify.IN_ISDIR)
        if not (scan.valid_directory(path) if is_dir else scan.valid_file(path)):
            self._warn_once(
                path,
                "arena {arena}: not indexing {path!r}: not a valid path",
                path=path,
            )
            return
        if mask & inotify.IN_ATTRIB and self.on_attributes is not None:
            self.on_attributes(path)
        if is_dir:
            if mask & (inotify.IN_DELETE | inotify.IN_MOVED_FROM):
                self._new_directories.pop(path, None)
                self._forget(path)
                self._queue_scan(path, "directory")
                # An overlay renaming or deleting a peer's directory puts a
                # whiteout in its place without an event of its own; it is
                # looked at after the delay, once the scan of a renamed
                # directory's new place found its redirect (whose copy-up
                # must read the files before their Remove).
                self.touch(path, self.delay)
            elif mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
                # Watched, then scanned, NEW_DIRECTORY_DELAY later (see
                # there): the scan after the watch sees all that came
                # before it.
                if not self._new_directories:
                    self._new_timer = self.clock.callLater(
                        NEW_DIRECTORY_DELAY, self._watch_new_directories
                    )
                self._new_directories[path] = None
            return
        if self.mountpoint is not None and mask & (
            inotify.IN_CREATE | inotify.IN_MOVED_TO
        ):
            self._see(path)
        if (
            mask & inotify.IN_MOVED_TO
            and self._partial_cookies
            and self._partial_cookies.pop(cookie, False) is None
        ):
            # A partial file renamed into place: the store finishing it.
            self._finished(path)
            return
        self._stored.pop(path, None)
        self._expected.pop(path, None)
        self.touch(path, self.delay)

    def _watch_new_directories(self) -> None:
        self._new_timer = None
        directories = list(self._new_directories)
        self._new_directories.clear()
        for directory in directories:
            if directory in self._dir_wd:
                # Watched by a scan of its parent, which scans it again.
                continue
            self._watch(directory)
            self._queue_scan(directory, "directory", start=False)
        self._start_scans()

    def _finished(self, path: str) -> None:
        """
        The event of a partial file renamed to C{path}: a store finished
        it.  Not news if the store's word for it came first (L{known});
        else it is looked at after the delay, unless the store's word
        comes meanwhile.
        """
        expected = self._expected.pop(path, None)
        if (
            expected is not None
            and self.clock.seconds() - expected <= RENAME_EVENT_WAIT
        ):
            return
        self._stored.pop(path, None)
        waiting = self._waiting(path) or path in self._busy
        self.touch(path, self.delay)
        if not waiting:
            self._renamed[path] = None

    # -- origins of copy-ups -----------------------------------------------------

    def _see(self, path: str) -> None:
        """
        A file appeared in the datadir (an overlay's copy-up lands as a
        create or a rename into it, once its bytes are copied): note now
        which version the Unreal shows there.  That is the version the
        copy-up read, and the one its Replace names when it is recorded a
        stability delay later, whatever peer's Replace arrives meanwhile
        (docs/real.md, Conflicts).
        """
        if path in self._seen:
            return
        if not self._unseen:
            self.clock.callLater(0, self._look_at_unseen)
        self._unseen[path] = None

    def _look_at_unseen(self) -> None:
        paths = list(self._unseen)
        self._unseen.clear()
        if not self._running or not paths:
            return

        def found(origins: dict[str, bytes | None]) -> None:
            for path, origin in origins.items():
                self._seen.setdefault(path, origin)
            _trim(self._seen, MAX_HINTS)

        d = Deferred.fromCoroutine(self.index.origins(paths))
        self._track(d.addCallback(found)).addErrback(
            self._failed, "looking up what new files replace"
        )

    def _take_seen(self, paths: Iterable[str]) -> dict[str, bytes | None] | None:
        """
        @return: the origins noted for these paths (forgotten here), or
            C{None} if none.
        """
        if not self._seen:
            return None
        taken = {p: self._seen.pop(p) for p in paths if p in self._seen}
        return taken or None

    # -- the queue of paths ------------------------------------------------------

    def touch(self, path: str, delay: float) -> None:
        """
        Look at a path after C{delay} seconds of quiet (0: as soon as
        possible).  A new touch restarts a delay under way; a path the
        store finished is looked at at once.
        """
        if not self._running:
            return
        self._renamed.pop(path, None)
        if delay <= 0 or path in self._hints:
            self._pending.pop(path, None)
            self._due[path] = None
        else:
            self._due.pop(path, None)
            self._pending[path] = self.clock.seconds() + delay
            self._pending.move_to_end(path)
        self._schedule()

    def _waiting(self, path: str) -> bool:
        """
        @return: whether a look at C{path} is queued (pending its delay,
            or due).
        """
        return path in self._pending or path in self._due

    def known(self, path: str, size: int, mtime_ns: int, root: bytes) -> None:
        """
        The store finished a file with this size, mtime and Merkle root
        (it renamed its partial file into place, with that size and mtime,
        just before): it is recorded with that root, without hashing.

        If nothing else named the file since (only the event of that
        rename, or a scan that saw this size and mtime), it is recorded at
        the next turn of the reactor without being looked at.  Otherwise
        (another event, a look under way, an arena with an overlay whose
        new files' origins are looked up) it is looked at first, and
        recorded with that root if the disk shows that size and mtime.
        """
        if not self._running:
            return
        waiting = self._waiting(path)
        cause = self._renamed.get(path, False)
        if (
            self.mountpoint is None
            and path not in self._busy
            and (not waiting or cause is None or cause == (size, mtime_ns))
        ):
            if waiting:
                self._pending.pop(path, None)
                self._due.pop(path, None)
                del self._renamed[path]
            elif path.rpartition("/")[0] in self._dir_wd:
                # The rename's event is on its way.  In a directory not
                # watched yet (a new one, NEW_DIRECTORY_DELAY), none can
                # come: nothing is waited for, so that a later rename
                # onto the path is news.
                self._expected[path] = self.clock.seconds()
                self._expected.move_to_end(path)
                _trim(self._expected, MAX_HINTS)
            self._stored[path] = (size, mtime_ns)
            self._stored.move_to_end(path)
            if not self._from_store:
                self.clock.callLater(0, self._record_from_store)
            self._from_store.append(Version(path, size, mtime_ns, root))
            return
        self._hints[path] = (size, mtime_ns, root)
        self._hints.move_to_end(path)
        _trim(self._hints, MAX_HINTS)
        self.touch(path, 0)

    def _record_from_store(self) -> None:
        versions, self._from_store = self._from_store, []
        if not self._running or not versions:
            return
        self._storing += 1

        async def record() -> None:
            try:
                await self._record_stored(versions)
            except BaseException:
                self._not_recorded(versions)
                raise
            finally:
                self._storing -= 1
                _trim(self._stored, MAX_STORED)
                if self._running:
                    self._schedule()

        self._track(Deferred.fromCoroutine(record())).addErrback(
            self._failed, "recording the files the store finished"
        )

    def _not_recorded(self, versions: list[Version]) -> None:
        """
        Files the store finished whose recording failed: scans no longer
        take them as accounted for, and they are looked at again.
        """
        for version in versions:
            self._expected.pop(version.path, None)
            if self._stored.pop(version.path, None) is not None:
                self.touch(version.path, self.delay)

    async def _record_stored(self, versions: list[Version]) -> None:
        """
        Record files the store finished, with the roots it gave.
        """
        await self.index.record_versions(
            versions, self._take_seen(v.path for v in versions)
        )
        if self.metrics is not None:
            self.metrics.from_store(self.arena, len(versions))
        # One event per batch, as for the files hashed: a move
        # finishes thousands of files a second, and an info event
        # per file cost the daemon ~35 us each (issue 15).
        self.log.debug(
            "arena {arena}: {files} files finished by the store, "
            "recorded without hashing",
            arena=self.arena,
            files=len(versions),
            size=sum(version.size for version in versions),
            source="store",
        )

    def _covered(self, path: str, size: int, mtime_ns: int) -> bool:
        """
        Whether a scan's sight of a file is one the store's hint already
        accounts for: the hint waiting for it, or the version recorded from
        one (since then, no event named the file and no look found it
        otherwise), has this size and mtime.
        """
        hint = self._hints.get(path)
        if hint is not None and hint[:2] == (size, mtime_ns):
            return True
        return self._stored.get(path) == (size, mtime_ns)

    def _schedule(self) -> None:
        if not self._running or self._checking:
            return
        if self._due:
            when = 0.0
        elif self._pending:
            head = next(iter(self._pending.values()))
            when = max(0.0, head - self.clock.seconds())
        else:
            self._report()
            self._maybe_idle()
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + when:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if not self._running or self._checking:
            return
        now = self.clock.seconds()
        batch: list[str] = []
        while self._due and len(batch) < CHECK_BATCH:
            path = next(iter(self._due))
            del self._due[path]
            self._take(path, batch)
        while self._pending and len(batch) < CHECK_BATCH:
            path, when = next(iter(self._pending.items()))
            if when > now:
                break
            del self._pending[path]
            self._take(path, batch)
        if not batch:
            self._schedule()
            return
        self._checking = True
        self._track(Deferred.fromCoroutine(self._check(batch))).addErrback(
            self._failed, "looking at changed files"
        )

    def _take(self, path: str, batch: list[str]) -> None:
        self._renamed.pop(path, None)
        if path in self._busy:
            self._again.add(path)
        else:
            self._busy.add(path)
            batch.append(path)

    def _release(self, paths: Iterable[str]) -> None:
        if not self._again:
            # Nothing touched while busy (a first indexing: thousands of
            # paths a batch): one set operation.
            self._busy.difference_update(paths)
            return
        for path in paths:
            self._busy.discard(path)
            if path in self._again:
                self._again.discard(path)
                self.touch(path, 0)

    def _failed(self, failure: Failure, what: str) -> None:
        self.log.failure(
            "arena {arena}: {what} failed", failure, arena=self.arena, what=what
        )

    async def _check(self, paths: list[str]) -> None:
        from_store: list[Version] = []
        try:
            results = await self.run_in_thread(scan.check_paths, self.root, paths)
            if not self._running:
                return
            entries = await self.index.lookup(paths)
            removals: list[tuple[str, int]] = []
            whiteouts: list[tuple[str, int]] = []
            cleared: list[str] = []
            unhashed: list[tuple[str, int, int]] = []
            to_hash: list[tuple[str, int, int]] = []
            done: list[str] = []
            for result in results:
                path = result.path
                hint = self._hints.pop(path, None)
                self._stored.pop(path, None)
                if result.kind == scan.ERROR:
                    self._warn_once(
                        path,
                        "arena {arena}: cannot look at {path}: {error}",
                        path=path,
                        error=result.error,
                    )
                    done.append(path)
                    continue
                if result.kind == scan.WHITEOUT:
                    # Deleted through the overlay: what it hid is removed.
                    whiteouts.append((path, result.mtime_ns))
                elif path not in entries and result.kind != scan.DIRECTORY:
                    # Perhaps made over a whiteout: no longer hidden.
                    cleared.append(path)
                if result.kind in (scan.GONE, scan.DIRECTORY, scan.WHITEOUT):
                    if path in entries:
                        removals.append((path, result.mtime_ns))
                    if result.kind == scan.DIRECTORY:
                        self._queue_scan(path, "directory")
                    done.append(path)
                    continue
                if hint is not None and hint[:2] == (result.size, result.mtime_ns):
                    # The store knows what it wrote, even when size and
                    # mtime equal the index's (a move keeps the mtime).
                    from_store.append(
                        Version(path, result.size, result.mtime_ns, hint[2])
                    )
                    self._stored[path] = hint[:2]
                    done.append(path)
                    continue
                entry = entries.get(path)
                if (
                    entry is not None
                    and entry.hash is not None
                    and (entry.size, entry.mtime_ns) == (result.size, result.mtime_ns)
                ):
                    done.append(path)
                    continue
                if result.size >= self.unhashed_notice_size:
                    unhashed.append((path, result.size, result.mtime_ns))
                to_hash.append((path, result.size, result.mtime_ns))
            if whiteouts or cleared:
                # Before the removals: a real file deleted through the
                # overlay is the index's Remove, not one more.
                await self._record_hidden(whiteouts, [], [], cleared, None)
            await self.index.record_removals(removals)
            await self.index.record_unhashed(
                unhashed, self._take_seen(p for p, _, _ in unhashed)
            )
            if from_store:
                await self._record_stored(from_store)
            self._release(done)
            for item in to_hash:
                self._hash_queue.append(item)
                self._hash_backlog += item[1]
        except BaseException:
            self._release(paths)
            self._not_recorded(from_store)
            raise
        finally:
            _trim(self._stored, MAX_STORED)
            self._checking = False
            if self._running:
                self._pump_hashing()
                self._schedule()

    # -- the overlay -------------------------------------------------------------

    async def _record_hidden(
        self,
        whiteouts: list[tuple[str, int]],
        opaques: list[tuple[str, int]],
        present: list[str],
        cleared: list[str],
        scope: str | None,
    ) -> None:
        """
        Record the Removes of the peers' files that overlay whiteouts and
        opaque directories hide (L{realize.storage.whiteouts}).  The
        whiteout of a directory renamed with C{redirect_dir=on} waits
        until its files are copied up: its Remove would have the owner
        delete the files whose bytes the copy-up reads from it.
        """
        waiting = [w for w in whiteouts if self._copying_from(w[0])]
        if waiting:
            self._after_copy_up.extend(waiting)
            whiteouts = [w for w in whiteouts if w not in waiting]
            if not (whiteouts or opaques or cleared or scope is not None):
                return
        notes = await self.index.record_with(
            _txn_record_hidden, whiteouts, opaques, present, cleared, scope
        )
        for note in notes:
            self.log.info(
                "arena {arena}: {path} deleted through the overlay",
                arena=self.arena,
                path=note.path,
                source="overlay",
            )

    def _redirected(self, redirects: list[tuple[str, str]]) -> None:
        """
        Directories renamed through an overlay mounted with
        C{redirect_dir=on}: their lower files show under the new name but
        are not in the datadir.  They are copied up (opened for writing
        through the overlay, in a thread), so that they become real files
        the watcher records (an Add each; the old names' whiteout, a
        Remove each).
        """
        if self.mountpoint is None:
            self._warn_once(
                "redirect",
                "arena {arena}: directories renamed through an overlay "
                "({paths}) but no mountpoint is configured: their files are "
                "not recorded under the new name",
                paths=", ".join(d for d, _ in redirects),
            )
            return
        targets = [target for _, target in redirects]
        self._copying.extend(targets)

        def done(result: object) -> object:
            for target in targets:
                self._copying.remove(target)
            waiting = [w for w in self._after_copy_up if not self._copying_from(w[0])]
            if waiting and self._running:
                self._after_copy_up = [
                    w for w in self._after_copy_up if w not in waiting
                ]
                self._track(
                    Deferred.fromCoroutine(
                        self._record_hidden(waiting, [], [], [], None)
                    )
                ).addErrback(self._failed, "recording whiteouts")
            return result

        self._track(
            self.run_in_thread(
                scan.copy_up_redirected,
                self.root,
                self.mountpoint,
                self.index.path,
                redirects,
            )
        ).addBoth(done).addCallbacks(
            self._copied_up, self._failed, errbackArgs=("copying up",)
        )

    def _copying_from(self, path: str) -> bool:
        """
        Whether a copy-up under way reads from a lower path at, above or
        beneath C{path}.
        """
        return any(
            t == path or t.startswith(path + "/") or path.startswith(t + "/")
            for t in self._copying
        )

    def _copied_up(self, result: list[tuple[str, str]]) -> None:
        for path, error in result:
            self._warn_once(
                path,
                "arena {arena}: cannot copy up {path} (renamed through the "
                "overlay): {error}",
                path=path,
                error=error,
            )

    # -- hashing -----------------------------------------------------------------

    def _pump_hashing(self) -> None:
        while (
            self._running
            and self._hash_queue
            and self._hashing < HASH_CONCURRENCY
            and self._recording < RECORD_BACKLOG
        ):
            batch: list[tuple[str, int, int]] = []
            size = 0
            while self._hash_queue and len(batch) < HASH_BATCH_FILES:
                item = self._hash_queue[0]
                if batch and size + item[1] > HASH_BATCH_BYTES:
                    break
                self._hash_queue.popleft()
                batch.append(item)
                size += item[1]
            self._hash_backlog -= size
            self._hashing += 1
            self._track(Deferred.fromCoroutine(self._hash(batch))).addErrback(
                self._failed, "hashing"
            )
        self._report()

    async def _hash(self, batch: list[tuple[str, int, int]]) -> None:
        paths = [item[0] for item in batch]
        recording = False
        try:
            try:
                result = await self.run_in_thread(scan.hash_files, self.root, batch)
            finally:
                self._hashing -= 1
            if not self._running:
                return
            # The thread is free: the next batch hashes while this one is
            # recorded (the db's thread writes while ours hash; at most
            # RECORD_BACKLOG batches wait for it).
            self._recording += 1
            recording = True
            self._pump_hashing()
            notes = await self.index.record_versions(
                result.versions, self._take_seen(v.path for v in result.versions)
            )
            if self.metrics is not None:
                self.metrics.hashed(
                    self.arena, result.seconds, result.size, len(result.versions)
                )
            if notes:
                self.log.debug(
                    "arena {arena}: hashed {files} files ({size} bytes) in "
                    "{seconds:.3f} s",
                    arena=self.arena,
                    files=len(result.versions),
                    size=result.size,
                    seconds=result.seconds,
                    source="hashed",
                )
            for path, message in result.errors:
                self._warn_once(
                    path,
                    "arena {arena}: cannot read {path}: {error}",
                    path=path,
                    error=message,
                )
            self._release(paths)
            for path in result.changed:
                self.touch(path, self.delay)
            for path in result.gone:
                self.touch(path, 0)
        except BaseException:
            self._release(paths)
            raise
        finally:
            if recording:
                self._recording -= 1
            if self._running:
                self._pump_hashing()
                self._schedule()

    # -- scans -------------------------------------------------------------------

    def _queue_scan(self, prefix: str, reason: str, start: bool = True) -> None:
        """
        Scan C{prefix} after the scans queued (unless one of them covers
        it).

        @param start: start the scans now if none is under way (C{False}:
            the caller queues more, then calls L{_start_scans}).
        """
        if not self._running:
            return
        for queued, _ in self._scans:
            if queued == "" or prefix == queued or prefix.startswith(queued + "/"):
                return
        if prefix == "":
            self._scans.clear()
        self._scans.append((prefix, reason))
        if start:
            self._start_scans()

    def _start_scans(self) -> None:
        if self._running and self._scans and not self._scanning:
            self._track(Deferred.fromCoroutine(self._run_scans())).addErrback(
                self._failed, "scanning"
            )

    async def _run_scans(self) -> None:
        self._scanning = True
        try:
            while self._running and self._scans:
                prefix, reason = self._scans.pop(0)
                if reason != "directory":
                    await self._scan_now(prefix, reason)
                    continue
                # The new directories of a turn of the watch timer, in one
                # call of a thread (a move makes ~30 a second).
                prefixes = [prefix]
                while (
                    self._scans
                    and self._scans[0][1] == "directory"
                    and len(prefixes) < SCAN_BATCH
                ):
                    prefixes.append(self._scans.pop(0)[0])
                await self._scan_directories(prefixes)
        finally:
            self._scanning = False
            self._schedule()

    async def _scan(
        self, prefixes: list[str], reason: str
    ) -> list[scan.ScanResult | Exception]:
        if self.metrics is not None:
            for _ in prefixes:
                self.metrics.rescanned(self.arena, reason)
        if self._reader is None:
            self._reader = scan.IndexReader(self.index.path)
        results: list[scan.ScanResult | Exception] = await self._track(
            self.run_in_thread(
                scan.scan_trees, self.root, prefixes, self.exclude, self._reader
            )
        )
        return results

    async def _scan_now(self, prefix: str, reason: str) -> None:
        """
        Compare the tree beneath C{prefix} with the index and queue what
        differs (L{_scanned}).
        """
        (result,) = await self._scan([prefix], reason)
        if isinstance(result, Exception):
            raise result
        if self._running:
            await self._scanned(prefix, reason, result)

    async def _scan_directories(self, prefixes: list[str]) -> None:
        """
        Scan directories that appeared or went, in one thread call; a scan
        that failed is logged, the others go on.
        """
        results = await self._scan(prefixes, "directory")
        for prefix, result in zip(prefixes, results, strict=True):
            if not self._running:
                return
            if isinstance(result, Exception):
                self._failed(Failure(result), f"scanning {prefix}")
            else:
                await self._scanned(prefix, "directory", result)

    async def _scanned(self, prefix: str, reason: str, result: scan.ScanResult) -> None:
        """
        Queue what a scan of the tree beneath C{prefix} found different
        from the index; watch the directories found (and scan again those
        that were not watched yet, for what changed before their watch).
        """
        for path, message in result.errors:
            self._warn_once(
                path,
                "arena {arena}: cannot read {path}: {error}; the rest of the "
                "arena is still watched",
                path=path,
                error=message,
            )
        for directory in result.directories:
            if directory not in self._dir_wd:
                self._watch(directory)
                if directory in self._dir_wd:
                    # Watched only now: what changed in it after the walk
                    # went unseen; look again (once: it is watched now).
                    self._queue_scan(directory, "directory")
        for path in result.missing:
            self.touch(path, 0)
        if result.redirects:
            self._redirected(result.redirects)
        if result.whiteouts or result.opaques or not prefix:
            await self._record_hidden(
                result.whiteouts,
                result.opaques,
                result.present,
                [],
                "" if not prefix else None,
            )
            if not self._running:
                return
        # The scan saw these files' size and mtime: they go straight to
        # hashing (which checks them again), unless something else is
        # under way for them.  Those of a directory that just appeared
        # are new files: they wait for the stability delay like any other
        # (a store writing into it tells of each file it finishes
        # meanwhile, which then needs no hashing).
        unhashed = []
        direct: list[tuple[str, int, int]] = []
        # A file the store finished (its hint waits, or it was recorded
        # since the scan read the index) with the size and mtime the scan
        # saw is not looked at again: a directory the store fills is
        # scanned while it writes (issue 15: most files of a move were
        # looked at twice).
        changed = [i for i in result.changed if not self._covered(*i)]
        if reason == "directory":
            for path, size, mtime_ns in changed:
                if path in self._busy:
                    self.touch(path, 0)
                else:
                    waiting = self._waiting(path)
                    cause = self._renamed.get(path, False)
                    self.touch(path, self.delay)
                    if not waiting:
                        # Perhaps the store's, its word on the way.
                        self._renamed[path] = (size, mtime_ns)
                    elif cause is None or cause == (size, mtime_ns):
                        # Seen again as it was (a directory's second scan).
                        self._renamed[path] = cause
        elif not (self._busy or self._pending or self._due or self._hints):
            # Nothing under way (the catch-up at start): all of them, in
            # set and list operations rather than a test per file.
            direct = changed
            self._busy.update(item[0] for item in direct)
            unhashed = [i for i in direct if i[1] >= self.unhashed_notice_size]
        else:
            for item in changed:
                path = item[0]
                if (
                    path in self._busy
                    or path in self._pending
                    or path in self._due
                    or path in self._hints
                ):
                    self.touch(path, 0)
                    continue
                self._busy.add(path)
                direct.append(item)
                if item[1] >= self.unhashed_notice_size:
                    unhashed.append(item)
        try:
            await self.index.record_unhashed(unhashed)
        finally:
            self._hash_queue.extend(direct)
            self._hash_backlog += sum(item[1] for item in direct)
            if self._running:
                self._pump_hashing()
        # A scan that found nothing to do (a directory a move is filling:
        # the store told of its files) is not news, and a move makes one
        # per directory.
        quiet = reason != "start" and not changed and not result.missing
        (self.log.debug if quiet else self.log.info)(
            "arena {arena}: scanned {prefix} ({reason}): {files} files, "
            "{changed} changed, {missing} gone",
            arena=self.arena,
            prefix=prefix or ".",
            reason=reason,
            files=result.files,
            changed=len(changed),
            missing=len(result.missing),
        )
        self._report()


@define(eq=False)
class WatcherService(Service):
    """
    The watchers of a daemon's arenas: started once the history service's
    indexes are open, stopped before it closes them.  It is also the
    L{StoreListener} of the daemon's local store: files the store finished
    are recorded without hashing them again.

    @ivar config: the config in force.
    @ivar indexes: the open indexes by arena (L{HistoryService.indexes}).
    @ivar ready: fires when the history is open (L{HistoryService.ready}).
    @ivar clock: for delays.
    @ivar run_in_thread: the CPU/IO thread pool runner.
    @ivar notifier_factory: makes an inotify descriptor (C{lambda:
        KernelNotifier(reactor)}).
    @ivar metrics: where to count, or C{None}.
    @ivar attributes: told C{(arena, path)} when the attributes of a real
        file or directory changed (C{IN_ATTRIB}; the datadir itself is
        C{""}): the marks (L{realize.services.marks.MarkKeeper}); set
        after the watchers are made, read at each event.
    @ivar watchers: the running watchers by arena.
    @ivar started: fires once every watcher did its catch-up scan.
    """

    log = Logger(namespace="realize.watcher")

    config: Config
    indexes: dict[ArenaName, ArenaIndex]
    ready: Deferred[None]
    clock: IReactorTime
    run_in_thread: RunInThread
    notifier_factory: Callable[[], Notifier]
    metrics: HistoryMetrics | None = None
    attributes: Callable[[ArenaName, str], None] | None = None
    watchers: dict[ArenaName, ArenaWatcher] = field(factory=dict, init=False)
    started: Deferred[None] = field(factory=Deferred, init=False)
    _workdirs: dict[ArenaName, Path] = field(factory=dict, init=False)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        d = Deferred.fromCoroutine(self._start())
        d.chainDeferred(self.started)

    async def _start(self) -> None:
        await _observe(self.ready)
        await self._start_new()

    async def _start_new(self) -> None:
        starts = []
        for name in list(self.indexes):
            if name in self.watchers or not self.running:
                continue
            watcher = self.make_watcher(name)
            if watcher is not None:
                starts.append(Deferred.fromCoroutine(self._start_one(watcher)))
        await DeferredList(starts)

    async def reconfigure(self, config: Config) -> None:
        """
        Apply a new config (SIGHUP): watchers of arenas gone (or whose
        datadir, workdir or index changed) stop, arenas whose index is open
        and not watched get a watcher.  Call it before the history
        service's C{reconfigure} (so that no watcher writes to an index
        being closed) and again after it (to watch the arenas it opened).
        """
        self.config = config
        stops = []
        for name, watcher in list(self.watchers.items()):
            arena = config.arenas.get(name)
            if (
                arena is None
                or arena.datadir is None
                or str(arena.datadir) != watcher.root
                or arena.workdir != self._workdirs.get(name)
                or self.indexes.get(name) is not watcher.index
            ):
                del self.watchers[name]
                stops.append(watcher.stop())
        await DeferredList(stops)
        await self._start_new()

    async def _start_one(self, watcher: ArenaWatcher) -> None:
        self.watchers[watcher.arena] = watcher
        try:
            await watcher.start()
        except Exception:
            self.log.failure(
                "arena {arena}: cannot watch {root}",
                arena=watcher.arena,
                root=watcher.root,
            )
            self.watchers.pop(watcher.arena, None)
            await watcher.stop()

    def make_watcher(self, name: ArenaName) -> ArenaWatcher | None:
        """
        @return: a watcher for an arena with a datadir and an open index
            in its workdir, or C{None}.
        """
        arena = self.config.arenas.get(name)
        index = self.indexes.get(name)
        if arena is None or arena.datadir is None or index is None:
            return None
        if Path(index.path).parent != arena.workdir:
            # The index of the old workdir, about to be closed by the
            # history service's reload.
            return None
        exclude = None
        try:
            relative = arena.workdir.relative_to(arena.datadir)
        except ValueError:
            pass
        else:
            exclude = relative.parts[0] if relative.parts else None
        self._workdirs[name] = arena.workdir
        return ArenaWatcher(
            name,
            str(arena.datadir),
            exclude,
            index,
            self.clock,
            self.run_in_thread,
            self.notifier_factory,
            self.metrics,
            on_attributes=lambda path: self._attributes(name, path),
            mountpoint=None if arena.mountpoint is None else str(arena.mountpoint),
        )

    def _attributes(self, arena: ArenaName, path: str) -> None:
        if self.attributes is not None:
            self.attributes(arena, path)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        watchers = list(self.watchers.values())
        self.watchers.clear()
        return DeferredList([w.stop() for w in watchers]).addCallback(lambda _: None)

    # StoreListener

    def file_finished(
        self, arena: ArenaName, path: str, size: int, mtime_ns: int, root: bytes
    ) -> None:
        watcher = self.watchers.get(arena)
        if watcher is not None:
            watcher.known(path, size, mtime_ns, root)

    def file_deleted(self, arena: ArenaName, path: str) -> None:
        watcher = self.watchers.get(arena)
        if watcher is not None:
            watcher.touch(path, 0)


def _as_listener(service: WatcherService) -> StoreListener:
    # mypy checks here that WatcherService is a StoreListener.
    return service


def _observe(d: Deferred[None]) -> Deferred[None]:
    """
    A new Deferred with the result of C{d}, leaving C{d}'s own result (and
    failure) to its other consumers.
    """
    copy: Deferred[None] = Deferred()

    def passed(result: object) -> object:
        if isinstance(result, Failure):
            copy.errback(result)
        else:
            copy.callback(None)
        return result

    d.addBoth(passed)
    return copy
