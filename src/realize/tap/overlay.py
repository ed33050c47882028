"""
C{realized mountall} and C{realized unmountall} (#overlayfs tasks 2-4;
L{realize.overlay}): mount, for each arena with a C{mountpoint}, the
overlay of its datadir over its FUSE view, or unmount them.  The daemon
itself neither mounts nor unmounts overlays: start it with C{--fuse} first,
then run C{mountall}; stop with C{unmountall}, then the daemon.

    realized mountall --config C --fuse MOUNTPOINT [--xattrs auto|trusted|user]
    realized unmountall --config C [--force]

Exit codes: 0 done, 1 an error (named on stderr, nothing half-mounted).
The same commands run as C{twistd -n realized mountall ...}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from twisted.logger import Logger
from twisted.python import usage

from realize.config import OVERLAY_XATTRS, load_config
from realize.errors import RealizeError, describe
from realize.overlay import choose_mode, mount_all, unmount_all
from realize.tap._common import EXIT_ERROR, EXIT_OK, GnuOptions

__all__ = ["MountAllOptions", "UnmountAllOptions", "run_mountall", "run_unmountall"]

log = Logger(namespace="realize.overlay")


class MountAllOptions(GnuOptions):
    """
    Command line of C{realized mountall}.
    """

    synopsis = "--config FILE --fuse MOUNTPOINT [--xattrs auto|trusted|user]"
    optParameters = [
        ["config", "c", None, "Config file (TOML)."],
        ["fuse", None, None, "Where realized --fuse mounted the view."],
        [
            "xattrs",
            None,
            None,
            "Overlay mode: auto, trusted or user (default: [overlay] xattrs).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def postOptions(self) -> None:
        for name in ("config", "fuse"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")
        if self["xattrs"] is not None and self["xattrs"] not in OVERLAY_XATTRS:
            raise usage.UsageError(
                f"--xattrs must be one of {', '.join(OVERLAY_XATTRS)}"
            )


class UnmountAllOptions(GnuOptions):
    """
    Command line of C{realized unmountall}.
    """

    synopsis = "--config FILE [--force]"
    optFlags = [["force", None, "Unmount lazily an overlay whose files are open."]]
    optParameters = [["config", "c", None, "Config file (TOML)."]]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")


def _error(message: str) -> int:
    sys.stderr.write(f"realized: error: {message}\n")
    return EXIT_ERROR


def run_mountall(options: MountAllOptions) -> int:
    """
    @return: the exit code.
    """
    try:
        config = load_config(options["config"])
        mode = choose_mode(options["xattrs"] or config.overlay.xattrs)
        print(f"realized: overlays in {mode} mode", flush=True)
        for mountpoint in mount_all(config, options["fuse"], mode):
            print(f"realized: mounted {mountpoint}", flush=True)
    except RealizeError as e:
        return _error(describe(e))
    return EXIT_OK


def run_unmountall(options: UnmountAllOptions) -> int:
    """
    @return: the exit code.
    """
    try:
        config = load_config(options["config"])
        for mountpoint in unmount_all(config, options["force"]):
            print(f"realized: unmounted {mountpoint}", flush=True)
    except RealizeError as e:
        return _error(describe(e))
    return EXIT_OK


def main(name: str, argv: Sequence[str]) -> int:
    """
    Run C{realized mountall} or C{realized unmountall}.

    @param name: C{"mountall"} or C{"unmountall"}.
    @param argv: the arguments after it.
    @return: the exit code.
    """
    options: MountAllOptions | UnmountAllOptions = (
        MountAllOptions() if name == "mountall" else UnmountAllOptions()
    )
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        return _error(f"{name}: {e}")
    return run(options)


def run(options: MountAllOptions | UnmountAllOptions) -> int:
    """
    @return: the exit code of the command these options are of.
    """
    if isinstance(options, MountAllOptions):
        return run_mountall(options)
    return run_unmountall(options)
