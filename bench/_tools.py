"""
What several benchmarks share: installing the anchors they compare
against, and a free loopback port.  The benchmarks run as scripts
(C{python bench/NAME.py}), so this directory is on C{sys.path}.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence


def ensure_tools(
    needed: Sequence[tuple[str, str]],
    also: Sequence[str] = (),
    say: Callable[[str], object] = lambda line: print(line, flush=True),
) -> None:
    """
    Install with apt-get the packages whose command is missing.

    @param needed: C{(command, Debian package)} pairs; a command is a name
        on C{PATH} or an absolute path.
    @param also: packages installed with them when any is missing.
    @param say: where the line naming what is installed goes.
    @raise subprocess.CalledProcessError: if apt-get cannot install them.
    """
    missing = [package for command, package in needed if shutil.which(command) is None]
    if missing:
        say(f"installing {' '.join(missing)} ...")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *also, *missing], check=True)


def free_port() -> int:
    """
    @return: a TCP port free on 127.0.0.1 now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
