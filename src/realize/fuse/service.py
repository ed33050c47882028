"""
The FUSE mount as a Twisted service (C{realized --fuse MOUNTPOINT}).

Start: a stale mount at the mountpoint (a FUSE mount whose daemon died
answers C{ENOTCONN}) is cleared with C{fusermount3 -uz}; a live one is
refused.  Then C{FUSE(ops, mountpoint, foreground=True)} runs in a thread
of its own, multi-threaded (libfuse 3.14 serves with at most 10 worker
threads); L{FuseService.when_mounted} fires once the kernel connection is
up.

Stop: the L{Bridge} is shut down first, so reads waiting on the reactor
answer C{EIO} at once; then C{fusermount3 -u}, and if the mount is busy
(an application holds a file open) C{fusermount3 -uz}: the mount leaves
the namespace, and libfuse returns once the last file is closed.  The
unmount and the join of the FUSE thread run in a thread of their own,
never the reactor thread (and not a shared pool, which may already be
stopping).  No FUSE callback waits on anything the unmount waits for:
the kernel ends the requests in flight when the connection goes away.

Invalidation: L{FuseService.invalidate} drops what the kernel caches of a
path (attributes and page cache), for the daemon to call when a
notification changed an entry: entries and attributes are otherwise
cached for L{realize.fuse.ops.ENTRY_TIMEOUT} seconds.  libfuse 3.14's
high-level API has only C{fuse_invalidate_path} (C{notify_inval_inode});
so after a remote removal the name's dentry stays cached, but its
attributes are gone and the next C{stat} or C{open} asks the daemon, which
answers C{ENOENT}; listings always ask (3.14 cannot cache them), and
negative lookups are not cached, so additions show at once.  (The
kernel also asks for an entry's attributes again after the file was read:
reading invalidates the cached atime of a mount that is not C{ro}.)
Measured over the memory backend: 10,000 invalidations take 0.17 s.

Read-ahead: once mounted, the kernel's read-ahead of the mount
(C{/sys/class/bdi/MAJ:MIN/read_ahead_kb}, found through
C{/proc/self/mountinfo}) is raised to L{READ_AHEAD_KB} when the daemon
may write it (root): the kernel then sends reads of up to 1 MiB, one
Merkle leaf, instead of 128 KiB, eight times fewer requests through
Python for the same bytes (libfuse 3.14 already offers 1 MiB requests,
C{max_pages} 256; C{-o max_read} alone changes nothing).  Otherwise the
kernel's default stays, and the log says so.

Process-wide side effects of libfuse, undone here: it changes the
working directory to C{/} (the service changes it back when the mount is
up; until then, use absolute paths), and it installs its own handlers for
SIGHUP, SIGINT and SIGTERM where the handler was the default (the service
puts the default back, in the reactor thread).  The serving process never
touches its own mount (that would deadlock the threads serving it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from realize.errors import ConfigError, IOFailure, describe
from realize.fuse.backend import FuseBackend
from realize.fuse.bridge import Bridge
from realize.fuse.ops import RealizeOperations

__all__ = [
    "FUSERMOUNT",
    "READ_AHEAD_KB",
    "FuseService",
    "mount_device",
    "mounted_filesystem",
]

T = TypeVar("T")

#: The unmount helper of libfuse 3 (Debian package C{fuse3}).
FUSERMOUNT: Final = "fusermount3"

#: Seconds one C{fusermount3} run may take.
UNMOUNT_TIMEOUT: Final = 10.0

#: Where fusectl shows each FUSE connection (kernel doc
#: filesystems/fuse.rst, "Control filesystem").
FUSECTL: Final = "/sys/fs/fuse/connections"

#: Seconds libfuse gets to return after the unmount before the mount is
#: taken as still held (it returns at once when nothing holds it).
HELD_WAIT: Final = 1.0

#: Seconds to wait for libfuse to return after the unmount.
JOIN_TIMEOUT: Final = 10.0

#: Worker threads of libfuse 3.14's multi-threaded loop (its fixed maximum:
#: C{fuse_main_real} does not apply C{-o max_threads}).  Reads blocked on
#: downloads hold one each, for at most the bridge's deadline.
MAX_THREADS: Final = 10

#: KiB of kernel read-ahead set on the mount when permitted: one Merkle
#: leaf (L{realize.hashing.LEAF_SIZE}), the largest request libfuse 3.14
#: takes.
READ_AHEAD_KB: Final = 1024

#: L{FuseService}'s mount outcome while it is not known yet.
_PENDING: Final = object()

#: The signals libfuse takes over where their handler is the default.
_LIBFUSE_SIGNALS: Final = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)


def mounted_filesystem(mountpoint: str) -> str | None:
    """
    The filesystem type mounted at a path, from C{/proc/self/mountinfo}
    (reading it does not touch the mount).

    @param mountpoint: an absolute path.
    @return: e.g. C{"fuse.realize"}, or C{None} if nothing is mounted
        there (the topmost mount wins).
    """
    found = _mount_entry(mountpoint)
    return None if found is None else found[1]


def mount_device(mountpoint: str) -> str | None:
    """
    The device of the filesystem mounted at a path, from
    C{/proc/self/mountinfo} (reading it does not touch the mount).

    @param mountpoint: an absolute path.
    @return: C{"MAJOR:MINOR"} (also the name of its C{/sys/class/bdi}
        entry), or C{None} if nothing is mounted there.
    """
    found = _mount_entry(mountpoint)
    return None if found is None else found[0]


def _mount_entry(mountpoint: str) -> tuple[str, str] | None:
    # (device, type) of the topmost mount at mountpoint.
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            separator = fields.index("-")
            point = _unescape(fields[4])
            if point == mountpoint:
                found = (fields[2], fields[separator + 1])
    return found


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if "\\" not in text:
        return text
    return text.encode().decode("unicode_escape").encode("latin-1").decode()


def _fusermount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FUSERMOUNT, *args],
        capture_output=True,
        text=True,
        timeout=UNMOUNT_TIMEOUT,
        check=False,
    )


def _in_thread(
    reactor: IReactorFromThreads, name: str, f: Callable[[], T]
) -> Deferred[T]:
    """
    Run C{f} in a new daemon thread; its result fires in the reactor.
    """
    d: Deferred[T] = Deferred()

    def run() -> None:
        try:
            result = f()
        except BaseException:
            failure = Failure()
            reactor.callFromThread(d.errback, failure)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return d


@define(eq=False)
class FuseService(Service):
    """
    Mounts a L{FuseBackend} at a mountpoint while running.

    @ivar backend: what the view shows.
    @ivar mountpoint: an absolute path to an existing directory.
    @ivar reactor: the reactor (C{callFromThread}).
    @ivar bridge: the bridge the backend waits on for the reactor; shut
        down first on stop, so that no FUSE thread waits on the reactor
        while it unmounts.
    @ivar options: more mount options (C{{"allow_other": True}}).
    @ivar read_ahead_kb: the kernel read-ahead to set on the mount, if
        permitted (L{READ_AHEAD_KB}); C{None} keeps the kernel's default.
    @ivar ops: the operations served (built from the backend).
    """

    log = Logger()

    backend: FuseBackend
    mountpoint: str
    reactor: IReactorFromThreads
    bridge: Bridge | None = None
    options: Mapping[str, str | bool] = field(factory=dict)
    read_ahead_kb: int | None = READ_AHEAD_KB
    ops: RealizeOperations = field(init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _fuse: int | None = field(default=None, init=False)
    _fuse_lock: threading.Lock = field(factory=threading.Lock, init=False)
    _cwd: str = field(default="/", init=False)
    _signals: list[int] = field(factory=list, init=False)
    _mounted: Deferred[None] | None = field(default=None, init=False)
    _starting: Deferred[None] | None = field(default=None, init=False)
    _outcome: object = field(default=None, init=False)
    _waiting: list[Deferred[None]] = field(factory=list, init=False)
    _stopping: bool = field(default=False, init=False)
    _invalidations: queue.SimpleQueue[tuple[str, Deferred[None]] | None] = field(
        factory=queue.SimpleQueue, init=False
    )

    def __attrs_post_init__(self) -> None:
        if not os.path.isabs(self.mountpoint):
            raise ConfigError(f"--fuse {self.mountpoint}: must be an absolute path")
        self.mountpoint = os.path.normpath(self.mountpoint)
        self.ops = RealizeOperations(
            self.backend,
            os.getuid(),
            os.getgid(),
            on_init=self._fuse_up,
            on_destroy=self._fuse_down,
        )

    # -- start ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._stopping = False
        # In the reactor's (main) thread, before libfuse looks at them.
        self._signals = [
            s for s in _LIBFUSE_SIGNALS if signal.getsignal(s) == signal.SIG_DFL
        ]
        self._cwd = os.getcwd()
        self._outcome = _PENDING
        self._mounted = Deferred()
        threading.Thread(
            target=self._invalidator, name="fuse invalidate", daemon=True
        ).start()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addBoth(self._started)

    def when_mounted(self) -> Deferred[None]:
        """
        @return: fires once the mount serves; fails with L{IOFailure} (or
            L{ConfigError}) if it could not be mounted.
        """
        if self._outcome is _PENDING:
            d: Deferred[None] = Deferred()
            self._waiting.append(d)
            return d
        if isinstance(self._outcome, Failure):
            return fail(self._outcome)
        return succeed(None)

    async def _start(self) -> None:
        await _in_thread(self.reactor, "fuse prepare", self._prepare)
        thread = threading.Thread(
            target=self._serve, name=f"fuse {self.mountpoint}", daemon=True
        )
        self._thread = thread
        thread.start()
        assert self._mounted is not None
        await self._mounted
        if self.read_ahead_kb is not None:
            await _in_thread(self.reactor, "fuse read-ahead", self._set_read_ahead)

    def _set_read_ahead(self) -> None:
        # In a thread of its own (sysfs is a file): after libfuse answered
        # the kernel's init, which sets the mount's read-ahead itself.
        device = mount_device(self.mountpoint)
        if device is None:
            return
        path = f"/sys/class/bdi/{device}/read_ahead_kb"
        try:
            with open(path, "w") as f:
                f.write(f"{self.read_ahead_kb}\n")
        except OSError as e:
            self.log.info(
                "kept the kernel's read-ahead of {mountpoint} ({error}): "
                "reads come in 128 KiB requests",
                mountpoint=self.mountpoint,
                error=e.strerror,
            )
        else:
            self.log.info(
                "read-ahead of {mountpoint} set to {kb} KiB",
                mountpoint=self.mountpoint,
                kb=self.read_ahead_kb,
            )

    def _started(self, result: Failure | None) -> None:
        if isinstance(result, Failure):
            self.log.error(
                "cannot mount {mountpoint}: {error}",
                mountpoint=self.mountpoint,
                error=result.getErrorMessage(),
            )
        self._outcome = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _prepare(self) -> None:
        # In a thread of its own: stat may block on a mount.
        mountpoint = self.mountpoint
        kind = mounted_filesystem(mountpoint)
        if kind is not None:
            try:
                os.stat(mountpoint)
            except OSError as e:
                if e.errno != errno.ENOTCONN:
                    raise IOFailure(f"{mountpoint}: {e.strerror}") from e
                result = _fusermount("-uz", mountpoint)
                if result.returncode != 0:
                    raise IOFailure(
                        f"cannot clear the stale mount at {mountpoint}: "
                        f"{result.stderr.strip()}"
                    ) from e
                self.log.warn(
                    "cleared a stale mount ({kind}) at {mountpoint}",
                    kind=kind,
                    mountpoint=mountpoint,
                )
            else:
                raise IOFailure(f"{mountpoint} is already mounted ({kind})")
        if not os.path.isdir(mountpoint):
            raise ConfigError(f"--fuse {mountpoint}: not a directory")

    def _serve(self) -> None:
        # The FUSE thread: returns when the filesystem is unmounted.
        from realize.fuse.libfuse import RealizeFUSE

        error: BaseException | None = None
        try:
            RealizeFUSE(
                self.ops,
                self.mountpoint,
                raw_fi=True,
                foreground=True,
                fsname="realize",
                subtype="realize",
                default_permissions=True,
                # libfuse 3.14 at most runs 10 threads; saying so silences
                # its warning about the default (-1) it sets itself.
                max_idle_threads=MAX_THREADS,
                **self.options,
            )
        except BaseException as e:
            error = e
        finally:
            self.reactor.callFromThread(self._served, error)

    def _fuse_up(self) -> None:
        # libfuse's init, in a FUSE thread: the connection is up.
        from realize.fuse.libfuse import current_fuse

        with self._fuse_lock:
            self._fuse = current_fuse()
        try:
            os.chdir(self._cwd)  # libfuse went to /
        except OSError as e:
            self.log.warn(
                "cannot go back to {directory}: {error}",
                directory=self._cwd,
                error=e.strerror,
            )
        self.reactor.callFromThread(self._mounted_now)

    def _mounted_now(self) -> None:
        for s in self._signals:
            try:
                if signal.getsignal(s) == signal.SIG_DFL:
                    signal.signal(s, signal.SIG_DFL)  # undo libfuse's handler
            except ValueError:  # not the main thread: nothing to undo
                break
        self.log.info("mounted {mountpoint}", mountpoint=self.mountpoint)
        if self._mounted is not None and not self._mounted.called:
            self._mounted.callback(None)

    def _fuse_down(self) -> None:
        # libfuse's destroy, in the FUSE thread: no invalidation may use
        # the struct fuse from now on.
        with self._fuse_lock:
            self._fuse = None

    def _served(self, error: BaseException | None) -> None:
        # In the reactor: libfuse returned.
        self._thread_done()
        self._thread = None
        if self._mounted is not None and not self._mounted.called:
            reason = describe(error) if error is not None else "libfuse returned"
            self._mounted.errback(
                IOFailure(f"cannot mount {self.mountpoint}: {reason}")
            )
            return
        if self._stopping:
            self.log.info("unmounted {mountpoint}", mountpoint=self.mountpoint)
        else:
            self.log.error(
                "{mountpoint} was unmounted while the daemon runs",
                mountpoint=self.mountpoint,
            )

    # -- invalidation ----------------------------------------------------------

    def invalidate(self, path: str) -> Deferred[None]:
        """
        Drop what the kernel caches of an entry: call it after a change
        of the entry's attributes or content, its removal, and for a
        directory whose entries were added or removed.

        The kernel call blocks while reads in flight hold the file's
        pages, so it runs in a thread of the service, one at a time.

        @param path: the entry's path in the view, without a leading
            C{/}: C{"<arena>/<path in the arena>"}, C{""} for the root.
        @return: fires when the kernel has dropped it (at once if the
            mount is not served, or the kernel has nothing cached).
        """
        path = "/" + path.strip("/")
        self.ops.forget(path)
        if not self.running:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._invalidations.put((path, d))
        return d

    def _invalidator(self) -> None:
        from realize.fuse.libfuse import invalidate_path

        while True:
            item = self._invalidations.get()
            if item is None:
                break
            path, d = item
            result = 0
            with self._fuse_lock:
                if self._fuse is not None:
                    result = invalidate_path(self._fuse, path)
            if result not in (0, -errno.ENOENT):
                self.log.warn(
                    "cannot invalidate {path}: {error}",
                    path=path,
                    error=os.strerror(-result),
                )
            self.reactor.callFromThread(d.callback, None)
        # Stopped: what was asked after the stop has nothing to invalidate.
        while not self._invalidations.empty():
            item = self._invalidations.get()
            if item is not None:
                self.reactor.callFromThread(item[1].callback, None)

    # -- stop --------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        if self.bridge is not None:
            self.bridge.shutdown()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._outcome is _PENDING:
            with contextlib.suppress(Exception):  # logged by _started
                await self.when_mounted()
        thread = self._thread
        if thread is not None:
            await _in_thread(
                self.reactor, "fuse unmount", lambda: self._unmount(thread)
            )
        self._invalidations.put(None)

    def _unmount(self, thread: threading.Thread) -> None:
        # In a thread of its own, never the reactor's nor a FUSE thread.
        if thread.is_alive():
            device = mount_device(self.mountpoint)
            result = _fusermount("-u", self.mountpoint)
            if result.returncode != 0 and thread.is_alive():
                self.log.warn(
                    "unmounting {mountpoint} lazily: {error}",
                    mountpoint=self.mountpoint,
                    error=result.stderr.strip(),
                )
                _fusermount("-uz", self.mountpoint)
            thread.join(HELD_WAIT)
            # Still held (an overlay over the view keeps it even after a
            # clean unmount; open files): libfuse would serve it until
            # they go.  Ending the connection makes them fail at once
            # (ENOTCONN), as they would once this process exits, instead
            # of after JOIN_TIMEOUT.
            if device is not None and thread.is_alive():
                self._abort(device)
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            self.log.error(
                "{mountpoint} is detached, but files are still open in it",
                mountpoint=self.mountpoint,
            )

    def _abort(self, device: str) -> None:
        """
        Abort the FUSE connection of a detached mount, through fusectl
        (the C{abort} file of C{/sys/fs/fuse/connections/<minor>}, kernel
        doc filesystems/fuse.rst), mounting fusectl first if it is not
        (as systemd does at boot) and this process may.
        """
        connection = os.path.join(FUSECTL, device.split(":")[-1])
        if not os.path.isdir(connection) and mounted_filesystem(FUSECTL) is None:
            result = subprocess.run(
                ["mount", "-t", "fusectl", "fusectl", FUSECTL],
                capture_output=True,
                text=True,
                timeout=UNMOUNT_TIMEOUT,
                check=False,
            )
            if result.returncode != 0:
                self.log.info(
                    "cannot mount fusectl at {fusectl}: {error}",
                    fusectl=FUSECTL,
                    error=result.stderr.strip(),
                )
        try:
            with open(os.path.join(connection, "abort"), "w") as f:
                f.write("1")
        except OSError as e:
            self.log.info(
                "cannot abort the FUSE connection {connection}: {error}",
                connection=connection,
                error=e.strerror or str(e),
            )
            return
        self.log.info(
            "{mountpoint} was still held (an overlay over it, or open files): "
            "its connection is ended, they now fail with ENOTCONN",
            mountpoint=self.mountpoint,
        )

    def _thread_done(self) -> None:
        # The cwd goes back even if libfuse failed after changing it.
        try:
            if os.getcwd() != self._cwd:
                os.chdir(self._cwd)
        except OSError:
            pass

    def is_serving(self) -> bool:
        """
        @return: whether the FUSE thread runs.
        """
        return self._thread is not None and self._thread.is_alive()
