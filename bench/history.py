"""
Benchmark the watcher and the index (issue 9) against C{find}, C{b3sum}
and C{sha256sum} on the same tree, in one run.

Run as C{python bench/history.py [--files 100000] [--dirs 1000]} (with
C{src} on the path).  In a temporary directory it writes C{--files} files
of 4 KiB in C{--dirs} directories, then measures, driving the watcher and
its index in-process (real inotify, a real adbapi pool, a thread pool of
two):

  - (c) the first indexing: an empty index, the watcher's start until
    every file is hashed and recorded, against C{b3sum} and C{sha256sum}
    over the same files (C{find -print0 | xargs -0}); target: at most 1.5
    times the faster of the two;
  - (b) the catch-up scan of the unchanged tree at a second start (nothing
    to record), against C{find DIR -type f -printf '%s %T@\\n'}; target: at
    most 3 times find's time;
  - (d) the resident memory of this process with that arena indexed;
    target: at most 150 MiB.

The page cache is warm for every program (each anchor runs once before it
is timed).  The latency part of the issue's benchmark (a file closed on
disk to its notification printed by C{realize-history --follow}) needs the
daemon and C{realize-history}; it is not measured here.

This is a benchmark, not a test: it takes about a minute and 400 MB of
disk at the default size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from realize.model import ArenaName
from realize.services.watcher import ArenaWatcher, KernelNotifier
from realize.storage.index import ArenaIndex
from realize.storage.pool import open_pool

ARENA = ArenaName("bench")
FILE_SIZE = 4096


def make_tree(root: str, files: int, dirs: int) -> None:
    data = os.urandom(FILE_SIZE)
    per_dir = max(1, files // dirs)
    made = 0
    for d in range(dirs):
        directory = os.path.join(root, f"d{d:04}")
        os.makedirs(directory)
        for f in range(per_dir):
            if made == files:
                return
            with open(os.path.join(directory, f"f{f:05}"), "wb") as out:
                out.write(data[: FILE_SIZE - 8] + made.to_bytes(8, "big"))
            made += 1


def timed_shell(command: str) -> float:
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def row(name: str, ours: float, anchor_name: str, anchor: float, target: float) -> None:
    ratio = ours / anchor if anchor else float("inf")
    verdict = "ok" if ratio <= target else "OVER TARGET"
    print(
        f"{name:<28} {ours:8.2f} s   {anchor_name:<22} {anchor:8.2f} s   "
        f"ratio {ratio:5.2f} (target <= {target:g}) {verdict}"
    )


async def run(reactor: Any, options: argparse.Namespace) -> None:
    base = tempfile.mkdtemp(prefix="realize-bench-history-")
    pool = ThreadPool(2, 2, "bench-hash")
    pool.start()
    try:
        root = os.path.join(base, "data")
        os.makedirs(root)
        print(f"writing {options.files} files of 4 KiB in {options.dirs} directories")
        make_tree(root, options.files, options.dirs)
        subprocess.run(["sync"], check=True)
        db = os.path.join(base, "arena.db")
        index = await ArenaIndex.open(
            ARENA, db, open_pool(db, reactor=reactor), reactor
        )

        def run_in_thread(f: Any, *args: Any, **kwargs: Any) -> Any:
            return deferToThreadPool(reactor, pool, f, *args, **kwargs)

        def watcher() -> ArenaWatcher:
            return ArenaWatcher(
                ARENA,
                root,
                None,
                index,
                reactor,
                run_in_thread,
                lambda: KernelNotifier(reactor),
            )

        # Warm the page cache for our first pass as for the anchors'.
        subprocess.run(
            f"find {root} -type f -print0 | xargs -0 cat > /dev/null",
            shell=True,
            check=True,
        )
        first = watcher()
        started = time.perf_counter()
        await first.start()
        await first.wait_idle()
        indexing = time.perf_counter() - started
        files, _ = await index.stats()
        assert files == options.files, (files, options.files)
        memory = rss_mib()
        await first.stop()

        second = watcher()
        before = await index.count()
        started = time.perf_counter()
        await second.start()
        await second.wait_idle()
        catchup = time.perf_counter() - started
        assert await index.count() == before, "the catch-up recorded something"
        await second.stop()
        index.close()

        b3 = timed_shell(f"find {root} -type f -print0 | xargs -0 b3sum")
        sha = timed_shell(f"find {root} -type f -print0 | xargs -0 sha256sum")
        find = timed_shell(f"find {root} -type f -printf '%s %T@\\n'")

        print()
        faster = min(b3, sha)
        anchor = "b3sum" if b3 <= sha else "sha256sum"
        print(f"b3sum {b3:.2f} s, sha256sum {sha:.2f} s")
        row("(c) first indexing", indexing, anchor, faster, 1.5)
        row("(b) catch-up, unchanged", catchup, "find -printf", find, 3.0)
        print(
            f"(d) RSS with the arena indexed  {memory:8.1f} MiB   target <= 150 MiB "
            f"{'ok' if memory <= 150 else 'OVER TARGET'}"
        )
        print(
            f"    {options.files / indexing:,.0f} files/s indexed, "
            f"{options.files / catchup:,.0f} files/s scanned"
        )
    finally:
        pool.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dirs", type=int, default=1_000)
    options = parser.parse_args()
    for tool in ("find", "xargs", "b3sum", "sha256sum"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/history.py: {tool} is not installed")
    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
