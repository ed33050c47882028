"""
Benchmark: repairing a damaged partial file, realize-move against rsync
over ssh, on loopback, in one run.

A random file (1 GiB by default) and a copy of it with 1% of its 4 KiB
blocks corrupted (random positions, fixed seed) are generated once.  Then,
for each tool, from the same starting state:

    - realize-move from a local arena into a realized on 127.0.0.1 whose
      arena holds the corrupted copy as the partial file (C{.big.bin.part}):
      it is verified leaf by leaf and repaired with rsync deltas;
    - C{rsync -a -e ssh} of the same file to a loopback sshd (started and
      stopped by this script) whose destination holds the corrupted copy
      as the file itself, which rsync uses as its basis.

Printed: wall time, bytes that crossed the loopback interface during the
run (TLS or ssh included, read from /proc/net/dev), both as a share of the
file size, and the ratios ours/rsync.  Targets: wire bytes at most 2% of
the file, time at most rsync's.

Usage: python bench/repair.py [--size-mib 1024] [--repeat 1]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from move_throughput import Realize, Sshd, ensure_tools

BLOCK = 4096


def loopback_bytes() -> int:
    """
    @return: bytes received so far on the loopback interface.
    """
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    raise SystemExit("no loopback interface in /proc/net/dev")


def make_files(directory: str, size_mib: int, corrupt: float) -> tuple[str, str]:
    """
    @return: the paths of the original and of its corrupted copy.
    """
    original = os.path.join(directory, "original.bin")
    damaged = os.path.join(directory, "damaged.bin")
    rng = random.Random(42)
    blocks = size_mib * (1 << 20) // BLOCK
    bad = set(rng.sample(range(blocks), int(blocks * corrupt)))
    with open(original, "wb") as good, open(damaged, "wb") as broken:
        for mib in range(size_mib):
            chunk = os.urandom(1 << 20)
            good.write(chunk)
            damaged_chunk = bytearray(chunk)
            first = mib * (1 << 20) // BLOCK
            for block in range(first, first + (1 << 20) // BLOCK):
                if block in bad:
                    offset = (block - first) * BLOCK + rng.randrange(BLOCK)
                    damaged_chunk[offset] ^= 0xFF
            broken.write(damaged_chunk)
    return original, damaged


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def timed(run: Callable[..., object], *args: object) -> tuple[float, int]:
    """
    @return: wall time of C{run(*args)} and the loopback bytes it caused.
    """
    os.sync()
    before = loopback_bytes()
    started = time.perf_counter()
    run(*args)
    return time.perf_counter() - started, loopback_bytes() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--corrupt", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    ensure_tools()
    work = tempfile.mkdtemp(prefix="realize-repair-")
    sshd = Sshd(work)
    realize = Realize(work)
    try:
        sshd.start()
        original, damaged = make_files(work, args.size_mib, args.corrupt)
        expected = digest(original)
        size = os.path.getsize(original)
        print(
            f"{args.size_mib} MiB file, {args.corrupt:.0%} of its 4 KiB blocks "
            f"corrupted; work directory {work}"
        )
        ours: list[tuple[float, int]] = []
        theirs: list[tuple[float, int]] = []
        for _ in range(args.repeat):
            source = os.path.join(work, "source")
            destination = os.path.join(work, "dst-realize")
            for path in (source, destination):
                shutil.rmtree(path, ignore_errors=True)
                os.makedirs(path)
            os.link(original, os.path.join(source, "big.bin"))
            shutil.copyfile(damaged, os.path.join(destination, ".big.bin.part"))
            ours.append(timed(realize.move, source, destination))
            if digest(os.path.join(destination, "big.bin")) != expected:
                raise SystemExit("realize-move did not repair the file")

            rsync_source = os.path.join(work, "rsync-source")
            rsync_destination = os.path.join(work, "dst-rsync")
            for path in (rsync_source, rsync_destination):
                shutil.rmtree(path, ignore_errors=True)
                os.makedirs(path)
            os.link(original, os.path.join(rsync_source, "big.bin"))
            shutil.copyfile(damaged, os.path.join(rsync_destination, "big.bin"))
            theirs.append(timed(sshd.rsync, rsync_source, rsync_destination))
            if digest(os.path.join(rsync_destination, "big.bin")) != expected:
                raise SystemExit("rsync did not repair the file")
        best_ours = min(ours)
        best_theirs = min(theirs)
        print(f"\n  {'tool':<18}{'seconds':>9}{'wire bytes':>14}{'of file':>9}")
        for name, (seconds, wire) in (
            ("realize-move", best_ours),
            ("rsync -a -e ssh", best_theirs),
        ):
            print(f"  {name:<18}{seconds:>9.2f}{wire:>14,}{wire / size:>9.2%}")
        print(
            f"  ratio ours/rsync: time {best_ours[0] / best_theirs[0]:.2f}x "
            f"(target <= 1.0x), wire {best_ours[1] / best_theirs[1]:.2f}x; "
            f"ours on the wire {best_ours[1] / size:.2%} of the file (target <= 2%)"
        )
    finally:
        realize.stop()
        sshd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
