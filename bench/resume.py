"""
Benchmark: resuming an interrupted move.

A realize-move of one large random file (1 GiB by default) from a local
arena into a realized on 127.0.0.1 is killed with SIGKILL once the
destination's partial file holds about half of it; a second realize-move
then finishes the job.  Printed per round: where the first run was
killed, the second run's wall time, and the bytes that crossed the
loopback interface during it (TLS included, /proc/net/dev) as a share of
what was left to send.  A resume should send little more than what was
missing, and verify the rest (one hash of the partial at the
destination, one read of the source).

Usage: python bench/resume.py [--size-mib 1024] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from move_throughput import ENV, Realize, compile_sources, load, make_big
from repair import loopback_bytes


def move_command(realize: Realize, source: str) -> list[str]:
    config = os.path.join(realize.work, "a.toml")
    with open(config, "w") as f:
        f.write(
            f'[peers.a]\npubkey = """{realize.pub("a")}"""\n'
            f'[peers.b]\naddress = "127.0.0.1:{realize.port}"\n'
            f'pubkey = """{realize.pub("b")}"""\n'
            f'[[arena]]\nname = "bench"\ndatadir = "{source}"\n'
        )
    return [
        sys.executable,
        "-m",
        "realize.tap.move",
        "--src",
        "local",
        "--dst",
        "b",
        "--config",
        config,
        "--privkey",
        os.path.join(realize.work, "a.key"),
        "--output",
        "quiet",
        "bench",
    ]


def one_round(
    realize: Realize, master: str, work: str, size: int
) -> tuple[float, float, int]:
    """
    @return: the share of the file the killed run had written, the second
        run's seconds, and the loopback bytes it caused.
    """
    source = os.path.join(work, "source")
    destination = os.path.join(work, "destination")
    for path in (source, destination):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    os.link(os.path.join(master, "big.bin"), os.path.join(source, "big.bin"))
    partial = os.path.join(destination, ".big.bin.part")
    realize.start(destination)
    try:
        first = subprocess.Popen(
            move_command(realize, source),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if os.path.exists(partial) and os.path.getsize(partial) >= size // 2:
                break
            if first.poll() is not None:
                raise SystemExit("the first move ended before it could be killed")
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait()
        written = os.path.getsize(partial) / size
        os.sync()
        before = loopback_bytes()
        started = time.perf_counter()
        subprocess.run(
            move_command(realize, source),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        seconds = time.perf_counter() - started
        wire = loopback_bytes() - before
    finally:
        realize.stop()
    if os.path.exists(os.path.join(source, "big.bin")):
        raise SystemExit("the second move left the source")
    if os.path.getsize(os.path.join(destination, "big.bin")) != size:
        raise SystemExit("the second move did not finish the file")
    return written, seconds, wire


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where to put the data (default: $TMPDIR)")
    args = parser.parse_args()
    compile_sources()
    work = tempfile.mkdtemp(prefix="realize-resume-", dir=args.dir)
    realize = Realize(work)
    size = args.size_mib << 20
    try:
        master = os.path.join(work, "master")
        os.makedirs(master)
        make_big(os.path.join(master, "big.bin"), args.size_mib)
        print(f"{args.size_mib} MiB file in {work}, {load()}")
        results = []
        for number in range(args.rounds):
            written, seconds, wire = one_round(realize, master, work, size)
            left = size * (1 - written)
            results.append((seconds, wire / left))
            print(
                f"  round {number + 1}: killed at {written:.0%}; resumed in "
                f"{seconds:.2f} s, {wire / 1e6:,.0f} MB on the wire "
                f"({wire / left:.0%} of what was left); {load()}",
                flush=True,
            )
        print(
            f"  median: {statistics.median(r[0] for r in results):.2f} s, "
            f"{statistics.median(r[1] for r in results):.0%} of what was left sent"
        )
    finally:
        realize.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
