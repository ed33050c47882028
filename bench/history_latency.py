"""
Benchmark (issue 9, part a): latency from a file's close on disk to its
notification printed by a subscribed C{realize-history --follow} on
loopback, p50 and p99 over C{--changes} changes.

A C{realized} with one arena is started on 127.0.0.1 with generated keys in
a temporary directory, then C{realize-history --follow} as another peer;
the script writes one new file at a time (C{--gap} seconds apart) and
notes when each one's C{add} line comes out of the subscriber.  The
watcher's stability delay (1 s, DESIGN.md section 9) is most of the
latency by design; the anchors are the defaults of the tools users know:
Syncthing's watcher delay of 10 s, lsyncd's 15 s (not measured: they are
configuration defaults).  Target: p50 <= 1.5 s, p99 <= 3 s.

Usage: python bench/history_latency.py [--changes 200] [--gap 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
sys.path.insert(0, SRC)

from realize.tap.keygen import write_key_pair  # noqa: E402

SYNCTHING_DELAY = 10.0
LSYNCD_DELAY = 15.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05)
    options = parser.parse_args()
    root = tempfile.mkdtemp(prefix="realize-bench-history-")
    env = {**os.environ, "PYTHONPATH": SRC}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        keys = os.path.join(root, "keys")
        os.makedirs(keys)
        for name in ("a", "b"):
            write_key_pair(keys, name)
        pub = {}
        for name in ("a", "b"):
            with open(os.path.join(keys, f"{name}.pub")) as f:
                pub[name] = f.read()
        data = os.path.join(root, "data")
        os.makedirs(data)
        port_probe = __import__("socket").socket()
        port_probe.bind(("127.0.0.1", 0))
        port = port_probe.getsockname()[1]
        port_probe.close()
        config = os.path.join(root, "realize.toml")
        with open(config, "w") as f:
            f.write(
                f'[peers.a]\npubkey = """{pub["a"]}"""\n'
                f'[peers.b]\naddress = "127.0.0.1:{port}"\npubkey = """{pub["b"]}"""\n'
                f'[[arena]]\nname = "bench"\ndatadir = "{data}"\n'
            )
        log = open(os.path.join(root, "realized.log"), "wb")  # noqa: SIM115
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "realize.tap.realized",
                "--config",
                config,
                "--privkey",
                os.path.join(keys, "b.key"),
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--log-level",
                "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        processes.append(daemon)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                __import__("socket").create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.1)
        follower = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "realize.tap.history",
                "--config",
                config,
                "--privkey",
                os.path.join(keys, "a.key"),
                "--peer",
                "b",
                "--follow",
                "bench",
            ],
            stdout=subprocess.PIPE,
            env=env,
        )
        processes.append(follower)
        seen: dict[str, float] = {}
        ready = threading.Event()

        def read() -> None:
            assert follower.stdout is not None
            for line in follower.stdout:
                now = time.monotonic()
                note = json.loads(line)
                if note["kind"] == "catchup_complete":
                    ready.set()
                if note["kind"] == "add":
                    seen.setdefault(note["path"], now)

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            raise SystemExit("realize-history did not catch up")
        closed: dict[str, float] = {}
        for i in range(options.changes):
            name = f"f{i:04d}.txt"
            with open(os.path.join(data, name), "wb") as f:
                f.write(os.urandom(4096))
            closed[name] = time.monotonic()
            time.sleep(options.gap)
        deadline = time.monotonic() + 30
        while len(seen) < options.changes and time.monotonic() < deadline:
            time.sleep(0.05)
        latencies = [seen[n] - closed[n] for n in closed if n in seen]
        if len(latencies) < options.changes:
            print(f"only {len(latencies)} of {options.changes} changes arrived")
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(f"{len(latencies)} changes, one every {options.gap} s")
        print(f"{'':24} {'p50':>8} {'p99':>8}")
        print(f"{'realize (1 s delay)':24} {p50:8.2f} {p99:8.2f}  s  (<= 1.5 / 3)")
        print(f"{'Syncthing default':24} {SYNCTHING_DELAY:8.2f}  s  (watcher delay)")
        print(f"{'lsyncd default':24} {LSYNCD_DELAY:8.2f}  s  (its delay)")
        print(f"ratio p50 to Syncthing's delay: {p50 / SYNCTHING_DELAY:.2f}")
        print(f"load average: {os.getloadavg()[0]:.1f}")
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
