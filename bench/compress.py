"""
Benchmark: realize-move with and without --compress (zstd), in one run.

Moves, from a local arena into a realized on 127.0.0.1:

    - compressible text (lines of words, the kind of files logs and
      source trees are), and random bytes (photos, videos, archives are
      like it: already compressed);
    - over bare loopback (the network is not the limit) and over a link
      limited to 20 MiB/s with --throttle-up (a fast LAN or a WAN is);
    - without compression and with --compress at levels 1 and 3.

Printed: wall time, MB/s of file data, bytes on the wire (from
/proc/net/dev), and each run's time relative to the uncompressed run of
the same data and link.  The figures decide whether compression is on by
default (docs/compression.md).

Usage: python bench/compress.py [--size-mib 256] [--link-mib 20]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from move_throughput import Realize, fresh
from repair import timed


def write_text(path: str, size_mib: int) -> None:
    rng = random.Random(1)
    words = [f"word{i}" for i in range(2000)]
    with open(path, "w") as f:
        for _ in range(size_mib):
            lines = []
            total = 0
            while total < 1 << 20:
                line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
                lines.append(line)
                total += len(line)
            f.write("".join(lines))


def write_random(path: str, size_mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--link-mib", type=int, default=20)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="realize-compress-")
    realize = Realize(work)
    try:
        masters = {}
        for kind, make in (("text", write_text), ("random", write_random)):
            master = fresh(os.path.join(work, f"master-{kind}"))
            make(os.path.join(master, f"{kind}.dat"), args.size_mib)
            masters[kind] = master
        size = args.size_mib << 20
        print(
            f"{args.size_mib} MiB of each kind; link: loopback, and loopback "
            f"limited to {args.link_mib} MiB/s"
        )
        print(
            f"\n  {'data':<7}{'link':<10}{'compress':<10}{'seconds':>9}"
            f"{'MB/s':>9}{'wire MB':>10}{'time vs off':>13}"
        )
        for kind, master in masters.items():
            for link in ("loopback", f"{args.link_mib} MiB/s"):
                baseline = None
                for level in (None, 1, 3):
                    source = os.path.join(work, "source")
                    if os.path.exists(source):
                        shutil.rmtree(source)
                    os.makedirs(source)
                    for name in os.listdir(master):
                        os.link(os.path.join(master, name), os.path.join(source, name))
                    destination = fresh(os.path.join(work, "destination"))
                    extra = []
                    if level is not None:
                        extra += ["--compress", str(level)]
                    if link != "loopback":
                        extra += ["--throttle-up", f"{args.link_mib}M"]
                    seconds, wire = timed(realize.move, source, destination, extra)
                    baseline = baseline or seconds
                    print(
                        f"  {kind:<7}{link:<10}{level or 'off'!s:<10}"
                        f"{seconds:>9.2f}{size / seconds / 1e6:>9.1f}"
                        f"{wire / 1e6:>10.1f}{seconds / baseline:>12.2f}x"
                    )
    finally:
        realize.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
