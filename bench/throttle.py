"""
Benchmark: achieved rate under a limit, realize-move against rsync
--bwlimit, on loopback, in one run.

For each limit (1 MiB/s and 10 MiB/s by default) and each direction:

    - up: realize-move from a local arena into a realized with
      C{--throttle-up RATE}; C{rsync -a --bwlimit RATE -e ssh} pushing to a
      loopback sshd (started and stopped by this script);
    - down: realize-move from the realized into a local arena with
      C{--throttle-down RATE} (the daemon is asked to send at most RATE);
      rsync pulling with C{--bwlimit}.

The file is large enough for the transfer to last about 14 s.  The rate is
measured on the wire: the bytes crossing the loopback interface
(/proc/net/dev, TLS or ssh included) are sampled every 0.1 s, and the
rate is taken over 10 s of steady transfer, starting 1 s after data began
to flow.  Printed: the achieved rate as a share of the limit for each
tool.  Target for realize: 97-101% of the limit.

Usage: python bench/throttle.py [--rates 1,10] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from move_throughput import Realize, Sshd, ensure_tools, fresh
from repair import loopback_bytes

MiB = 1 << 20


class Sampler:
    """
    Samples the loopback byte counter in a thread while a command runs.
    """

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), loopback_bytes()))
            time.sleep(0.1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def steady_rate(self, seconds: float) -> float:
        """
        @return: bytes per second over C{seconds} of transfer, starting 1 s
            after bytes began to flow.
        """
        base = self.samples[0][1]
        start = next(
            (t for t, b in self.samples if b - base > 256 << 10), self.samples[0][0]
        )
        window = [
            (t, b) for t, b in self.samples if start + 1 <= t <= start + 1 + seconds
        ]
        if len(window) < 2 or window[-1][0] - window[0][0] < seconds * 0.9:
            raise SystemExit("the transfer was too short to measure; use a bigger file")
        (t0, b0), (t1, b1) = window[0], window[-1]
        return (b1 - b0) / (t1 - t0)


def measure(run: Callable[[], object], seconds: float) -> float:
    os.sync()
    with Sampler() as sampler:
        run()
    return sampler.steady_rate(seconds)


def one_limit(
    work: str, sshd: Sshd, realize: Realize, rate_mib: int, seconds: float
) -> list[float]:
    """
    Measures all four transfers under one limit.

    @return: the achieved rates in bytes/s: realize up, realize down, rsync
        push, rsync pull.
    """
    rate = rate_mib * MiB
    master = fresh(os.path.join(work, "master"))
    with open(os.path.join(master, "data.bin"), "wb") as f:
        for _ in range(int(rate * (seconds + 4)) // MiB):
            f.write(os.urandom(MiB))

    def linked(name: str) -> str:
        path = fresh(os.path.join(work, name))
        os.link(os.path.join(master, "data.bin"), os.path.join(path, "data.bin"))
        return path

    bwlimit = f"--bwlimit={rate_mib * 1024}"  # KiB/s
    runs: list[Callable[[], object]] = [
        lambda: realize.move(
            linked("up-source"),
            fresh(os.path.join(work, "up-dst")),
            ["--throttle-up", f"{rate_mib}M"],
        ),
        lambda: realize.move_down(
            linked("down-source"),
            fresh(os.path.join(work, "down-dst")),
            ["--throttle-down", f"{rate_mib}M"],
        ),
        lambda: sshd.rsync(master, fresh(os.path.join(work, "rsync-up")), [bwlimit]),
        lambda: sshd.rsync_pull(
            master, fresh(os.path.join(work, "rsync-down")), [bwlimit]
        ),
    ]
    return [measure(run, seconds) for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1,10", help="limits in MiB/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    ensure_tools()
    work = tempfile.mkdtemp(prefix="realize-throttle-")
    sshd = Sshd(work)
    realize = Realize(work)
    columns = ["realize up", "realize down", "rsync up", "rsync down"]
    try:
        sshd.start()
        rows = [
            (rate, one_limit(work, sshd, realize, rate, args.seconds))
            for rate in (int(r) for r in args.rates.split(","))
        ]
        print(f"\nachieved rate on the wire over {args.seconds:g} s, % of the limit")
        print(f"  {'limit':<10}" + "".join(f"{c:>14}" for c in columns))
        for rate_mib, rates in rows:
            shares = [r / (rate_mib * MiB) for r in rates]
            limit = f"{rate_mib} MiB/s"
            print(f"  {limit:<10}" + "".join(f"{s:>14.1%}" for s in shares))
        print("  target for realize: 97-101%")
    finally:
        realize.stop()
        sshd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
