"""
Overlay mounts of the Real (DESIGN.md section 11, #overlayfs): for each
arena with a C{mountpoint}, an overlayfs with the arena's FUSE view as its
lower layer, the datadir as its upper layer and C{<workdir>/work} as its
work directory, so one directory shows every file of the household and
edits land in the datadir.

Two option sets, as this kernel accepts them (measured on Linux 6.18,
DESIGN.md section 11):

    - I{trusted} (privileged): C{redirect_dir=on,metacopy=off}; overlay
      keeps its metadata in C{trusted.overlay.*} xattrs, which only root
      may read or write.  The kernel would accept C{metacopy=on} too, but
      a metacopy file in the datadir has no data (a chmod or a rename of a
      peer's file copies up its metadata only): the store would serve it,
      the watcher index it and an unrealize move it as if it were the
      file, so metacopy is off, explicitly (whatever the module's
      default): every file in the datadir holds its bytes (docs/real.md);
    - I{user} (C{userxattr}, Linux >= 5.11, unprivileged mounts):
      C{redirect_dir=nofollow} and no metacopy (the kernel refuses
      C{redirect_dir=on} and C{metacopy=on} with C{userxattr}:
      "conflicting options"); metadata in C{user.overlay.*}; a renamed
      lower directory is then copied up whole by C{mv}.

The mounts go through the C{mount}/C{umount} commands of util-linux
(blocking: call from a thread or a command, never the reactor).  Every
check is made before anything is mounted, and a mount that fails leaves
nothing half-mounted; errors name the arena, the path and, when the kernel
refuses an option, the option.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Sequence
from typing import Literal

from attrs import frozen

from realize.config import ArenaConfig, Config
from realize.errors import ConfigError, RealizeError

__all__ = [
    "OVERLAY_WORK",
    "Mode",
    "OverlayError",
    "choose_mode",
    "mount_all",
    "mount_overlay",
    "mounted",
    "overlay_options",
    "remount_stale",
    "unmount_all",
    "unmount_overlay",
]

#: The overlay's work directory under an arena's workdir.
OVERLAY_WORK = "work"

Mode = Literal["trusted", "user"]

_OPTIONS: dict[str, tuple[str, ...]] = {
    "trusted": ("redirect_dir=on", "metacopy=off"),
    "user": ("userxattr", "redirect_dir=nofollow"),
}


class OverlayError(RealizeError):
    """
    An overlay could not be mounted or unmounted; the message names the
    arena and the path (and the option the kernel refused).
    """

    code = b"OVERLAY"


@frozen
class Planned:
    """
    One overlay to mount.

    @ivar arena: its arena's name.
    @ivar lower: the arena's directory in the FUSE view.
    @ivar upper: the datadir.
    @ivar work: the overlay's work directory.
    @ivar mountpoint: where it is mounted.
    """

    arena: str
    lower: str
    upper: str
    work: str
    mountpoint: str


def choose_mode(setting: str, euid: int | None = None) -> Mode:
    """
    @param setting: C{[overlay] xattrs}: C{auto}, C{trusted} or C{user}.
    @param euid: the effective uid (default: this process's).
    @return: the mode: C{trusted} when C{auto} and root, else C{user}.
    """
    if setting == "trusted":
        return "trusted"
    if setting == "user":
        return "user"
    return "trusted" if (os.geteuid() if euid is None else euid) == 0 else "user"


def overlay_options(plan: Planned, mode: Mode) -> str:
    """
    @return: the C{-o} value of the mount.
    """
    for path in (plan.lower, plan.upper, plan.work):
        if "," in path or ":" in path:
            raise OverlayError(
                f"arena {plan.arena!r}: path {path!r} contains ',' or ':', which "
                "overlayfs options cannot carry"
            )
    return ",".join(
        [
            f"lowerdir={plan.lower}",
            f"upperdir={plan.upper}",
            f"workdir={plan.work}",
            *_OPTIONS[mode],
        ]
    )


def mounted(path: str, mounts: str = "/proc/self/mounts") -> str | None:
    """
    @return: the filesystem type mounted at C{path}, or C{None}.
    """
    found = _mount_line(path, mounts)
    return None if found is None else found[0]


def _mount_line(path: str, mounts: str) -> tuple[str, str] | None:
    """
    @return: the type and options of the topmost mount at C{path}, or
        C{None}.
    """
    target = os.path.abspath(path)
    try:
        with open(mounts) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and _unescape(fields[1]) == target:
            found = (fields[2], _unescape(fields[3]))
    return found


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _lower(fuse: str, arena: str) -> str:
    """
    @return: an arena's directory in the FUSE view mounted at C{fuse}.
    """
    return os.path.join(os.path.abspath(fuse), *arena.split("/"))


def plan(arena: ArenaConfig, fuse: str) -> Planned:
    """
    Check one arena's overlay before anything is mounted.

    @param fuse: the FUSE view's mountpoint.
    @raise OverlayError: naming the arena and the path, if the arena has
        no mountpoint or datadir, the mountpoint is missing, not a
        directory or not empty, the datadir and workdir are on different
        filesystems, or the arena is not in the FUSE view.
    """
    name = arena.name
    if arena.mountpoint is None or arena.datadir is None:
        raise OverlayError(f"arena {name!r}: no mountpoint, or no datadir")
    mountpoint = str(arena.mountpoint)
    upper = str(arena.datadir)
    work = str(arena.workdir / OVERLAY_WORK)
    lower = _lower(fuse, name)
    if not os.path.isdir(mountpoint):
        raise OverlayError(
            f"arena {name!r}: mountpoint {mountpoint} does not exist or is not a "
            "directory"
        )
    if mounted(mountpoint) is None and os.listdir(mountpoint):
        raise OverlayError(f"arena {name!r}: mountpoint {mountpoint} is not empty")
    if not os.path.isdir(upper):
        raise OverlayError(f"arena {name!r}: datadir {upper} does not exist")
    os.makedirs(work, exist_ok=True)
    if os.stat(upper).st_dev != os.stat(work).st_dev:
        raise OverlayError(
            f"arena {name!r}: datadir {upper} and workdir {arena.workdir} are on "
            "different filesystems (overlayfs needs its upper and work "
            "directories on one)"
        )
    if mounted(fuse) is None:
        raise OverlayError(
            f"arena {name!r}: nothing is mounted at {fuse}: start realized with "
            f"--fuse {fuse} first"
        )
    if not os.path.isdir(lower):
        raise OverlayError(f"arena {name!r}: {lower} is not in the FUSE view")
    return Planned(name, lower, upper, work, mountpoint)


def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


def _kernel_says() -> str:
    """
    @return: the kernel's last overlayfs complaint, if the log can be read.
    """
    result = _run(["dmesg", "--notime"])
    lines = [line for line in result.stdout.splitlines() if "overlay" in line.lower()]
    return lines[-1].strip() if lines else ""


def mount_overlay(planned: Planned, mode: Mode) -> None:
    """
    Mount one overlay: first force-unmount a stale one at its mountpoint.

    @raise OverlayError: naming the arena, the mountpoint and what the
        kernel refused (an option named in its log), if the mount fails.
    """
    if mounted(planned.mountpoint) is not None:
        unmount_overlay(planned.arena, planned.mountpoint, force=True)
    options = overlay_options(planned, mode)
    result = _run(
        ["mount", "-t", "overlay", "overlay", "-o", options, planned.mountpoint]
    )
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip()
        kernel = _kernel_says()
        refused = [o for o in _OPTIONS[mode] if o.split("=")[0] in kernel]
        hint = f"; the kernel refused {', '.join(refused)}" if refused else ""
        if "unknown filesystem type" in said:
            hint = "; this kernel has no overlayfs (modprobe overlay)"
        raise OverlayError(
            f"arena {planned.arena!r}: cannot mount the overlay at "
            f"{planned.mountpoint} ({mode} mode, -o {options}): {said}"
            f"{' [' + kernel + ']' if kernel else ''}{hint}"
        )


def unmount_overlay(arena: str, mountpoint: str, force: bool = False) -> bool:
    """
    Unmount one overlay cleanly; with C{force}, lazily if it is busy.

    @return: whether something was unmounted.
    @raise OverlayError: if it is busy (files open) and not C{force}.
    """
    if mounted(mountpoint) is None:
        return False
    result = _run(["umount", mountpoint])
    if result.returncode == 0:
        return True
    said = (result.stderr or result.stdout).strip()
    if not force:
        raise OverlayError(
            f"arena {arena!r}: cannot unmount {mountpoint}: {said} (files open "
            "there? close them, or use --force to unmount lazily)"
        )
    result = _run(["umount", "-l", mountpoint])
    if result.returncode != 0:
        raise OverlayError(
            f"arena {arena!r}: cannot unmount {mountpoint} even lazily: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return True


def _with_mountpoint(config: Config) -> list[ArenaConfig]:
    return [a for _, a in sorted(config.arenas.items()) if a.mountpoint is not None]


def mount_all(config: Config, fuse: str, mode: Mode) -> list[str]:
    """
    Mount the overlay of every arena with a mountpoint: all are checked
    first, and if one mount fails, those mounted by this call are
    unmounted again (nothing half-mounted).

    @return: the mountpoints mounted.
    @raise OverlayError: the first problem.
    @raise ConfigError: if no arena has a mountpoint.
    """
    arenas = _with_mountpoint(config)
    if not arenas:
        raise ConfigError(f"{config.source}: no arena has a mountpoint")
    planned = [plan(arena, fuse) for arena in arenas]
    done: list[Planned] = []
    try:
        for one in planned:
            mount_overlay(one, mode)
            done.append(one)
    except OverlayError:
        for one in reversed(done):
            unmount_overlay(one.arena, one.mountpoint, force=True)
        raise
    return [one.mountpoint for one in done]


def unmount_all(config: Config, force: bool = False) -> list[str]:
    """
    Unmount the overlay of every arena with a mountpoint.

    @return: the mountpoints unmounted.
    @raise OverlayError: if one is busy and not C{force} (the others are
        still unmounted).
    """
    done = []
    errors = []
    for arena in _with_mountpoint(config):
        assert arena.mountpoint is not None
        try:
            if unmount_overlay(arena.name, str(arena.mountpoint), force):
                done.append(str(arena.mountpoint))
        except OverlayError as e:
            errors.append(e)
    if errors:
        raise errors[0]
    return done


def remount_stale(
    config: Config, fuse: str, mounts: str = "/proc/self/mounts"
) -> list[str]:
    """
    Mount again, over a FUSE view just mounted, the overlays that
    C{mountall} mounted over the previous one (a restarted daemon).  The
    kernel keeps an overlay's lower layer by reference: after a restart it
    is the old view's dead connection, and every file of a peer reads
    C{ENOTCONN} through it until the overlay is mounted again.  Only
    overlays whose C{lowerdir} is this view's directory of the arena, and
    that do answer C{ENOTCONN}, are mounted again, in the mode they had
    (C{userxattr} or not); files open in the old overlay keep failing,
    new opens work.

    @param fuse: the FUSE view's mountpoint.
    @return: the mountpoints mounted again.
    @raise OverlayError: the first that could not be mounted again (the
        others are still tried).
    """
    done = []
    errors = []
    for arena in _with_mountpoint(config):
        mountpoint = str(arena.mountpoint)
        found = _mount_line(mountpoint, mounts)
        if found is None or found[0] != "overlay":
            continue
        options = found[1].split(",")
        if f"lowerdir={_lower(fuse, arena.name)}" not in options:
            continue
        try:
            os.listdir(mountpoint)
            continue
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                continue
        mode: Mode = "user" if "userxattr" in options else "trusted"
        try:
            mount_overlay(plan(arena, fuse), mode)
        except OverlayError as e:
            errors.append(e)
            continue
        done.append(mountpoint)
    if errors:
        raise errors[0]
    return done
