"""
Benchmark: the Unreal's FUSE view against sshfs and rclone mount, on
loopback, in one run (issue 10, "Benchmark").

The same data is served three ways, everything on 127.0.0.1:

    - B{realize}: a realized peer b whose datadir holds the data, and a
      second, pure-Unreal realized c (workdir only) that dials b and
      mounts the view (C{realized --fuse}); the data is under
      C{<mount>/bench/}.
    - B{sshfs} (Debian C{sshfs}, its default options) of the data
      directory, from a loopback sshd this script starts with keys it
      generates in the work directory.
    - B{rclone} (Debian C{rclone}): C{rclone mount --vfs-cache-mode full}
      of an sftp remote on the same sshd, with a cache directory of its
      own (emptied for every fresh mount).

The data (random content, generated once per work directory): C{seq.bin}
and C{rand.bin} of 1 GiB each, and 10,000 files of 4 KiB in 100
directories (C{small/dNNN/fNNNNN}).

Measured, per tool, for each round (the tools interleaved, their order
rotated every round):

    - (a) cold sequential read of C{seq.bin} with 1 MiB C{read}s (a fresh
      mount: c restarted from a snapshot of its state taken once b's
      files were all listed, its blobs empty; rclone's cache emptied;
      then C{sync; echo 3 > /proc/sys/vm/drop_caches} if permitted);
    - (b) the re-read of the same file on the same mount;
    - (c) 2,000 random 4 KiB C{pread}s (4 KiB-aligned, the same seeded
      offsets for every tool) on C{rand.bin}, cold, on the same mount:
      p50 and p99 of each call;
    - (d) C{ls -lR} and C{find} of the 10,000 files, each cold (a fresh
      mount) and then warm (again on that mount);
    - (e) reading all 10,000 small files, cold (a fresh mount).

Then, once: (f) change-to-visible latency: a file is created in the
served directory (b's datadir, which is also what sshd serves) and the
mount is polled (C{stat} every 5 ms) until it shows it; p50 over the
changes (50 for realize; for the anchors at most 20, and given up after
L{ANCHOR_CAP} seconds: rclone's directory cache keeps listings 5 minutes).

Printed: for each measurement min / median / max over the rounds for
each tool, the ratios of the medians with the issue's targets, the load
average before and after every round (the machine is shared), and c's
CPU seconds per scenario.

Usage: python bench/fuse.py [--rounds 3] [--work DIR] [--keep]
       [--tools realize,sshfs,rclone] [--only data,ls,find,small,change]
       [--size-mib 1024] [--files 10000]

C{--work DIR} reuses (or makes) a work directory: the data, b's state and
c's snapshot are kept there between runs (generating and hashing 2 GiB
takes a while); without it a temporary directory is made and removed.
Installs sshfs, rclone, openssh-server and fuse3 with apt-get if they are
missing.  Unmounts and stops everything it started, even on failure.
Run as root (FUSE mounts, drop_caches).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import xxhash

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, HERE)

from _tools import ensure_tools  # noqa: E402
from move_throughput import Sshd  # noqa: E402
from realize.fuse.service import mounted_filesystem  # noqa: E402
from realize.tap.keygen import write_key_pair  # noqa: E402

ARENA = "bench"
DIRECTORIES = 100
SMALL = 4096
RANDOM_READS = 2000
RANDOM_SIZE = 4096
#: Seconds an anchor gets to show one change before it is given up.
ANCHOR_CAP = 20.0
#: Seconds realize gets to show one change.
OURS_CAP = 30.0
POLL = 0.005


# -- helpers ------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


TOOLS = (
    ("sshfs", "sshfs"),
    ("rclone", "rclone"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("fusermount3", "fuse3"),
)


def drop_caches() -> bool:
    """
    Flush and drop the page cache, dentries and inodes (every process's:
    the servers read the data from disk again).

    @return: whether it was permitted.
    """
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {seconds} s")
        time.sleep(0.05)


def fusermount(mountpoint: str) -> None:
    """
    Unmount, lazily if busy; nothing if nothing is mounted there.
    """
    if mounted_filesystem(mountpoint) is None:
        return
    result = subprocess.run(
        ["fusermount3", "-u", mountpoint], capture_output=True, check=False
    )
    if result.returncode != 0 and mounted_filesystem(mountpoint) is not None:
        subprocess.run(
            ["fusermount3", "-uz", mountpoint], capture_output=True, check=False
        )


def stop_process(process: subprocess.Popen[bytes] | None, seconds: float = 15) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """
    @return: utime + stime of a live process, seconds.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the data -----------------------------------------------------------------


def make_data(data: str, size_mib: int, files: int) -> dict[str, str]:
    """
    Write the data set (if not there yet) and return the xxh3 digests of
    the large files.
    """
    digests_path = os.path.join(data, "..", "digests.json")
    if os.path.exists(digests_path):
        with open(digests_path) as f:
            digests: dict[str, str] = json.load(f)
        if digests.get("_shape") == f"{size_mib}:{files}":
            return digests
    log(f"generating 2 x {size_mib} MiB and {files} files of {SMALL} B ...")
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    digests = {"_shape": f"{size_mib}:{files}"}
    for name in ("seq.bin", "rand.bin"):
        hasher = xxhash.xxh3_64()
        with open(os.path.join(data, name), "wb") as f:
            for _ in range(size_mib):
                block = os.urandom(1 << 20)
                hasher.update(block)
                f.write(block)
        digests[name] = hasher.hexdigest()
    for i in range(files):
        directory = os.path.join(data, "small", f"d{i % DIRECTORIES:03d}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(SMALL))
    os.sync()
    with open(digests_path, "w") as f:
        json.dump(digests, f)
    return digests


# -- the tools ----------------------------------------------------------------


class Tool:
    """
    One way of mounting the data.  L{mount} gives a fresh mount (nothing
    cached) and returns the path of the data in it.
    """

    name = ""

    def mount(self) -> str:
        raise NotImplementedError

    def unmount(self) -> None:
        raise NotImplementedError

    def cpu(self) -> float | None:
        """
        @return: CPU seconds of the serving process so far, if known.
        """
        return None

    @contextmanager
    def fresh(self) -> Iterator[str]:
        root = self.mount()
        try:
            yield root
        finally:
            self.unmount()


class Sshfs(Tool):
    name = "sshfs"

    def __init__(self, work: str, sshd: Sshd, data: str) -> None:
        self.mountpoint = os.path.join(work, "sshfs-mnt")
        os.makedirs(self.mountpoint, exist_ok=True)
        self.sshd = sshd
        self.data = data
        self.process: subprocess.Popen[bytes] | None = None

    def mount(self) -> str:
        self.process = subprocess.Popen(
            [
                "sshfs",
                "-f",
                "-o",
                f"port={self.sshd.port}",
                "-o",
                f"IdentityFile={self.sshd.work}/client",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                f"root@127.0.0.1:{self.data}",
                self.mountpoint,
            ],
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: mounted_filesystem(self.mountpoint) == "fuse.sshfs",
            20,
            "sshfs mount",
        )
        return self.mountpoint

    def unmount(self) -> None:
        fusermount(self.mountpoint)
        stop_process(self.process)
        self.process = None


class Rclone(Tool):
    name = "rclone"

    def __init__(self, work: str, sshd: Sshd, data: str) -> None:
        self.work = os.path.join(work, "rclone")
        self.mountpoint = os.path.join(work, "rclone-mnt")
        self.cache = os.path.join(self.work, "cache")
        os.makedirs(self.mountpoint, exist_ok=True)
        os.makedirs(self.work, exist_ok=True)
        self.config = os.path.join(self.work, "rclone.conf")
        with open(self.config, "w") as f:
            f.write(
                "[bench]\ntype = sftp\nhost = 127.0.0.1\n"
                f"port = {sshd.port}\nuser = root\n"
                f"key_file = {sshd.work}/client\nshell_type = unix\n"
                # No hash commands over ssh: with them rclone runs an md5sum
                # over a new ssh session for every file it downloads
                # (10,000 small files: 6 files/s).
                "md5sum_command = none\nsha1sum_command = none\n"
            )
        self.data = data
        self.process: subprocess.Popen[bytes] | None = None

    def mount(self) -> str:
        shutil.rmtree(self.cache, ignore_errors=True)
        self.process = subprocess.Popen(
            [
                "rclone",
                "--config",
                self.config,
                "mount",
                f"bench:{self.data}",
                self.mountpoint,
                "--vfs-cache-mode",
                "full",
                "--cache-dir",
                self.cache,
                "--log-level",
                "ERROR",
            ],
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: mounted_filesystem(self.mountpoint) == "fuse.rclone",
            20,
            "rclone mount",
        )
        return self.mountpoint

    def unmount(self) -> None:
        fusermount(self.mountpoint)
        stop_process(self.process)
        self.process = None

    def cpu(self) -> float | None:
        return None if self.process is None else cpu_seconds(self.process.pid)


class Realized:
    """
    One realized process, its config, keys and log.
    """

    def __init__(self, root: str, name: str) -> None:
        self.root = root
        self.name = name
        self.dir = os.path.join(root, name)
        self.statedir = os.path.join(self.dir, "state")
        self.workdir = os.path.join(self.dir, "work")
        self.log = os.path.join(self.dir, "realized.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def key(self, name: str | None = None) -> str:
        return os.path.join(self.root, "keys", f"{name or self.name}.key")

    def start(self, config: str, *extra: str) -> None:
        os.makedirs(self.statedir, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(b"---- start\n")
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "realize.tap.realized",
                    "--config",
                    config,
                    "--privkey",
                    self.key(),
                    "--statedir",
                    self.statedir,
                    "--listen",
                    f"tcp:{self.port}:interface=127.0.0.1",
                    *extra,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log_text(self) -> str:
        with open(self.log, errors="replace") as f:
            text = f.read()
        return text.rsplit("---- start\n", 1)[-1]

    def wait_log(self, pattern: str, seconds: float) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        while True:
            match = re.search(pattern, self.log_text())
            if match:
                return match
            if self.process is not None and self.process.poll() is not None:
                raise SystemExit(
                    f"realized {self.name} exited: see {self.log}\n"
                    + self.log_text()[-3000:]
                )
            if time.monotonic() > deadline:
                raise SystemExit(f"realized {self.name}: no {pattern!r} in {self.log}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process, 20)
        self.process = None


class Realize(Tool):
    """
    b serves the data; c, pure Unreal, mounts the view.  A fresh mount is
    c restarted from its snapshot (metadata kept, blobs empty).
    """

    name = "realize"

    def __init__(self, work: str, data: str) -> None:
        self.root = os.path.join(work, "realize")
        keys = os.path.join(self.root, "keys")
        if not os.path.exists(os.path.join(keys, "c.pub")):
            os.makedirs(keys, exist_ok=True)
            for name in ("b", "c"):
                write_key_pair(keys, name)
        self.pub = {}
        for name in ("b", "c"):
            with open(os.path.join(keys, f"{name}.pub")) as f:
                self.pub[name] = f.read()
        self.data = data
        self.b = Realized(self.root, "b")
        self.c = Realized(self.root, "c")
        self.mountpoint = os.path.join(self.root, "mnt")
        os.makedirs(self.mountpoint, exist_ok=True)
        self.snapshot = os.path.join(self.root, "c-snapshot")

    def _config(self, name: str) -> str:
        lines = [f'[peers.b]\npubkey = """{self.pub["b"]}"""']
        if name == "c":
            lines.append(f'address = "127.0.0.1:{self.b.port}"')
        lines.append(f'[peers.c]\npubkey = """{self.pub["c"]}"""')
        lines.append(f'[[arena]]\nname = "{ARENA}"')
        if name == "b":
            lines.append(f'datadir = "{self.data}"')
            lines.append(f'workdir = "{self.b.workdir}"')
        else:
            lines.append(f'workdir = "{self.c.workdir}"')
        path = os.path.join(self.root, f"{name}.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start_b(self, files: int) -> None:
        self.b.start(self._config("b"))
        match = self.b.wait_log(r"listening on [^\s]*:(\d+)", 60)
        self.b.port = int(match.group(1))
        log(f"realized b listens on 127.0.0.1:{self.b.port}")
        if not os.path.isdir(self.snapshot):
            self._make_snapshot(files)
        else:
            self._refresh_snapshot()

    def _progress(self) -> int | None:
        db = os.path.join(self.c.workdir, "arena.db")
        try:
            connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                row = connection.execute(
                    "SELECT max(position) FROM peer_progress"
                ).fetchone()
            finally:
                connection.close()
        except sqlite3.Error:
            return None
        return None if row is None or row[0] is None else int(row[0])

    def _refresh_snapshot(self) -> None:
        """
        Bring the snapshot up to b's history (the change-to-visible files
        of earlier runs): otherwise every fresh c replays them while it is
        measured.
        """
        self.mount()
        last, since = self._progress(), time.monotonic()
        while time.monotonic() - since < 2.0:
            time.sleep(0.2)
            now = self._progress()
            if now != last:
                last, since = now, time.monotonic()
        self.c.stop()
        shutil.rmtree(self.snapshot)
        shutil.copytree(self.c.dir, self.snapshot, symlinks=True)
        log(f"c's snapshot brought up to b's history (position {last})")

    def _start_c(self) -> None:
        fusermount(self.mountpoint)
        self.c.start(self._config("c"), "--fuse", self.mountpoint)
        self.c.wait_log(r"the Unreal is mounted", 60)
        self.c.wait_log(r"subscribed to arena bench of b", 60)

    def _make_snapshot(self, files: int) -> None:
        """
        Start c on an empty state, wait until it lists every file of b
        with a version, stop it and keep its state.
        """
        log("first start of c: waiting until it lists every file of b, hashed ...")
        shutil.rmtree(self.c.dir, ignore_errors=True)
        os.makedirs(self.c.dir)
        self._start_c()
        view = os.path.join(self.mountpoint, ARENA)
        started = time.monotonic()

        def complete() -> bool:
            found = 0
            for directory, _, names in os.walk(view):
                for name in names:
                    path = os.path.join(directory, name)
                    if os.getxattr(path, "user.realize.version") == b"none":
                        return False
                    found += 1
            return found >= files + 2

        wait_for(complete, 600, "c lists b's files")
        log(f"c lists every file, hashed, after {time.monotonic() - started:.1f} s")
        self.c.stop()
        shutil.copytree(self.c.dir, self.snapshot, symlinks=True)

    def mount(self) -> str:
        self.c.stop()
        shutil.rmtree(self.c.dir, ignore_errors=True)
        shutil.copytree(self.snapshot, self.c.dir, symlinks=True)
        self._start_c()
        return os.path.join(self.mountpoint, ARENA)

    def unmount(self) -> None:
        self.c.stop()
        fusermount(self.mountpoint)

    def cpu(self) -> float | None:
        process = self.c.process
        return None if process is None else cpu_seconds(process.pid)

    def close(self) -> None:
        self.c.stop()
        fusermount(self.mountpoint)
        self.b.stop()


# -- measurements -------------------------------------------------------------


def read_all(path: str, digest: xxhash.xxh3_64 | None = None) -> tuple[float, int]:
    """
    Read a file with 1 MiB reads.

    @return: seconds, bytes.
    """
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    count = 0
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            count += n
            if digest is not None:
                digest.update(view[:n])
    finally:
        os.close(fd)
    return time.perf_counter() - started, count


def random_reads(path: str, size: int) -> list[float]:
    """
    @return: the seconds of each of L{RANDOM_READS} C{pread}s.
    """
    rng = random.Random(20260101)
    offsets = [
        rng.randrange(size // RANDOM_SIZE) * RANDOM_SIZE for _ in range(RANDOM_READS)
    ]
    times = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in offsets:
            started = time.perf_counter()
            data = os.pread(fd, RANDOM_SIZE, offset)
            times.append(time.perf_counter() - started)
            if len(data) != RANDOM_SIZE:
                raise SystemExit(f"{path}: short pread at {offset}: {len(data)}")
    finally:
        os.close(fd)
    return times


def run_timed(args: list[str], expect_lines: int | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {result.stderr[-2000:]!r}")
    lines = result.stdout.count(b"\n")
    if expect_lines is not None and lines != expect_lines:
        raise SystemExit(f"{' '.join(args)}: {lines} lines, expected {expect_lines}")
    return seconds


def read_small(root: str) -> tuple[float, int]:
    started = time.perf_counter()
    files = 0
    for directory in sorted(os.listdir(root)):
        d = os.path.join(root, directory)
        for name in os.listdir(d):
            with open(os.path.join(d, name), "rb") as f:
                if len(f.read()) != SMALL:
                    raise SystemExit(f"{d}/{name}: not {SMALL} bytes")
            files += 1
    return time.perf_counter() - started, files


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Results:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = {}
        self.cpu: dict[tuple[str, str], list[float]] = {}

    def add(self, tool: str, metric: str, value: float) -> None:
        self.values.setdefault((tool, metric), []).append(value)

    def add_cpu(self, tool: str, scenario: str, value: float | None) -> None:
        if value is not None:
            self.cpu.setdefault((tool, scenario), []).append(value)

    def median(self, tool: str, metric: str) -> float | None:
        values = self.values.get((tool, metric))
        return statistics.median(values) if values else None


@contextmanager
def cpu_of(tool: Tool, results: Results, scenario: str) -> Iterator[None]:
    before = tool.cpu()
    yield
    after = tool.cpu()
    if before is not None and after is not None:
        results.add_cpu(tool.name, scenario, after - before)


def scenario_data(
    tool: Tool, results: Results, size: int, digests: dict[str, str], verify: bool
) -> None:
    with tool.fresh() as root:
        drop_caches()
        with cpu_of(tool, results, "a: cold sequential"):
            seconds, count = read_all(os.path.join(root, "seq.bin"))
        if count != size:
            raise SystemExit(f"{tool.name}: seq.bin read {count} of {size} bytes")
        results.add(tool.name, "seq_cold", size / seconds / 1e6)
        with cpu_of(tool, results, "b: re-read"):
            seconds, count = read_all(os.path.join(root, "seq.bin"))
        results.add(tool.name, "seq_reread", size / seconds / 1e6)
        with cpu_of(tool, results, "c: random preads"):
            times = random_reads(os.path.join(root, "rand.bin"), size)
        results.add(tool.name, "rand_p50", percentile(times, 0.50) * 1e3)
        results.add(tool.name, "rand_p99", percentile(times, 0.99) * 1e3)
        if verify:
            digest = xxhash.xxh3_64()
            read_all(os.path.join(root, "seq.bin"), digest)
            if digest.hexdigest() != digests["seq.bin"]:
                raise SystemExit(f"{tool.name}: seq.bin read back differs")


def scenario_listing(tool: Tool, results: Results, command: str, files: int) -> None:
    with tool.fresh() as root:
        small = os.path.join(root, "small")
        args = ["ls", "-lR", small] if command == "ls" else ["find", small]
        # find: one line per file and directory; ls -lR: per directory a
        # header, a total, the entries and a blank line (none after the last).
        expect = (
            files + DIRECTORIES + 1
            if command == "find"
            else 3 + DIRECTORIES + files + 3 * DIRECTORIES - 1
        )
        drop_caches()
        with cpu_of(tool, results, f"d: {command} cold"):
            results.add(tool.name, f"{command}_cold", run_timed(args, expect))
        with cpu_of(tool, results, f"d: {command} warm"):
            results.add(tool.name, f"{command}_warm", run_timed(args, expect))


def scenario_small(tool: Tool, results: Results, files: int) -> None:
    with tool.fresh() as root:
        drop_caches()
        with cpu_of(tool, results, "e: small files cold"):
            seconds, count = read_small(os.path.join(root, "small"))
        if count != files:
            raise SystemExit(f"{tool.name}: read {count} of {files} small files")
        results.add(tool.name, "small_cold", files / seconds)


def scenario_change(tool: Tool, results: Results, data: str, changes: int) -> None:
    served = os.path.join(data, "changes")
    shutil.rmtree(served, ignore_errors=True)
    os.makedirs(served)
    with open(os.path.join(served, "keep"), "wb") as f:
        f.write(b"so that the directory exists everywhere\n")
    cap = OURS_CAP if tool.name == "realize" else ANCHOR_CAP
    with tool.fresh() as root:
        seen = os.path.join(root, "changes")
        wait_for(
            lambda: os.path.exists(os.path.join(seen, "keep")),
            60,
            f"{tool.name}: changes/ shown",
        )
        latencies: list[float] = []
        missed = 0
        for i in range(changes):
            name = f"c{i:04d}"
            target = os.path.join(seen, name)
            with open(os.path.join(served, name), "wb") as f:
                f.write(b"change %d\n" % i)
            started = time.perf_counter()
            while True:
                try:
                    os.stat(target)
                except FileNotFoundError:
                    pass
                else:
                    latencies.append(time.perf_counter() - started)
                    break
                if time.perf_counter() - started > cap:
                    missed += 1
                    break
                time.sleep(POLL)
            if missed:
                break
            time.sleep(0.05)
    for latency in latencies:
        results.add(tool.name, "change", latency)
    if missed:
        results.add(tool.name, "change_missed", cap)
    shutil.rmtree(served, ignore_errors=True)


# -- report -------------------------------------------------------------------

METRICS = [
    ("seq_cold", "(a) cold sequential read, 1 GiB", "MB/s"),
    ("seq_reread", "(b) re-read, cached", "MB/s"),
    ("rand_p50", "(c) random 4 KiB pread, cold: p50", "ms"),
    ("rand_p99", "(c) random 4 KiB pread, cold: p99", "ms"),
    ("ls_cold", "(d) ls -lR, 10,000 files, cold", "s"),
    ("ls_warm", "(d) ls -lR, warm", "s"),
    ("find_cold", "(d) find, cold", "s"),
    ("find_warm", "(d) find, warm", "s"),
    ("small_cold", "(e) all 10,000 small files, cold", "files/s"),
]

#: (metric, anchor, factor, higher is better, the issue's words)
TARGETS = [
    ("seq_cold", "sshfs", 1.0, True, "cold sequential >= 1.0x sshfs"),
    ("seq_cold", "rclone", 1.3, True, "cold sequential >= 1.3x rclone"),
    ("ls_cold", "rclone", 0.5, False, "ls -lR cold <= 0.5x rclone's"),
    ("ls_cold", "sshfs", 1.0, False, "ls -lR cold <= sshfs's"),
    ("small_cold", "rclone", 2.0, True, "all small files cold >= 2x rclone's files/s"),
    ("rand_p99", "rclone", 0.1, False, "random-read p99 <= 0.1x rclone's"),
]


def report(results: Results, tools: list[str], rounds: int) -> None:
    print(f"\nResults over {rounds} round(s): min / median / max")
    for metric, title, unit in METRICS:
        rows = [(t, results.values.get((t, metric))) for t in tools]
        if not any(values for _, values in rows):
            continue
        print(f"\n{title} [{unit}]")
        ours = results.median("realize", metric)
        for tool, values in rows:
            if not values:
                continue
            median = statistics.median(values)
            ratio = ""
            if tool != "realize" and ours is not None and median:
                ratio = f"   realize/{tool} = {ours / median:.2f}x"
            print(
                f"  {tool:<8}{min(values):>10.3f} {median:>10.3f} "
                f"{max(values):>10.3f}{ratio}"
            )
    change = [(t, results.values.get((t, "change"))) for t in tools]
    if any(values for _, values in change):
        print("\n(f) change-to-visible latency [s]: p50, max (count)")
        for tool, values in change:
            missed = results.values.get((tool, "change_missed"))
            if values:
                line = (
                    f"  {tool:<8}{statistics.median(values):>10.3f} "
                    f"{max(values):>10.3f}  ({len(values)} changes)"
                )
            else:
                line = f"  {tool:<8}{'-':>10}"
            if missed:
                line += f"; then not visible within {missed[0]:g} s"
            print(line)
    if results.cpu:
        print("\nCPU seconds of the serving process (c; rclone): median")
        for (tool, scenario), values in sorted(results.cpu.items()):
            print(f"  {tool:<8}{scenario:<24}{statistics.median(values):>8.2f}")
    print("\nTargets (issue 10), on the medians:")
    for metric, anchor, factor, higher, words in TARGETS:
        ours = results.median("realize", metric)
        theirs = results.median(anchor, metric)
        if ours is None or theirs is None or not theirs:
            continue
        ratio = ours / theirs
        met = ratio >= factor if higher else ratio <= factor
        print(f"  {'met ' if met else 'MISS'}  {words}: {ratio:.2f}x")
    values = results.values.get(("realize", "change"))
    if values:
        p50 = statistics.median(values)
        met = p50 <= 2.0 and not results.values.get(("realize", "change_missed"))
        print(
            f"  {'met ' if met else 'MISS'}  change-to-visible p50 <= 2 s: {p50:.3f} s"
        )


# -- main ---------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", help="work directory to reuse (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--tools", default="realize,sshfs,rclone")
    parser.add_argument("--only", default="data,ls,find,small,change")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: FUSE mounts of sshfs and rclone, drop_caches")
    ensure_tools(TOOLS, also=("openssh-client",), say=log)
    tools_wanted = args.tools.split(",")
    only = set(args.only.split(","))
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="realize-fuse-"))
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    print(f"load average {load()} ({os.cpu_count()} CPUs); work directory {work}")
    digests = make_data(data, args.size_mib, args.files)
    size = args.size_mib << 20
    shutil.rmtree(os.path.join(data, "changes"), ignore_errors=True)
    sshd_dir = os.path.join(work, "sshd")
    shutil.rmtree(sshd_dir, ignore_errors=True)
    sshd = Sshd(work)
    tools: list[Tool] = []
    realize: Realize | None = None
    results = Results()
    try:
        sshd.start()
        log(f"sshd on 127.0.0.1:{sshd.port}")
        for name in tools_wanted:
            if name == "realize":
                realize = Realize(work, data)
                realize.start_b(args.files)
                tools.append(realize)
            elif name == "sshfs":
                tools.append(Sshfs(work, sshd, data))
            elif name == "rclone":
                tools.append(Rclone(work, sshd, data))
            else:
                raise SystemExit(f"unknown tool {name}")
        if not drop_caches():
            print("(drop_caches is not permitted: 'cold' means fresh mount only)")
        for round_number in range(args.rounds):
            order = (
                tools[round_number % len(tools) :] + tools[: round_number % len(tools)]
            )
            log(f"round {round_number + 1}/{args.rounds}, load average {load()}")
            for tool in order:
                if "data" in only:
                    scenario_data(tool, results, size, digests, round_number == 0)
                for command in ("ls", "find"):
                    if command in only:
                        scenario_listing(tool, results, command, args.files)
                if "small" in only:
                    scenario_small(tool, results, args.files)
                log(f"  {tool.name} done, load average {load()}")
        if "change" in only:
            for tool in tools:
                changes = args.changes if tool.name == "realize" else 20
                log(f"change-to-visible, {tool.name}")
                scenario_change(tool, results, data, changes)
        print(f"\nload average at the end {load()}")
        report(results, [t.name for t in tools], args.rounds)
    finally:
        for tool in tools:
            try:
                tool.unmount()
            except Exception as e:  # keep stopping the others
                print(f"unmounting {tool.name}: {e}", file=sys.stderr)
        if realize is not None:
            realize.close()
        sshd.stop()
        shutil.rmtree(os.path.join(data, "changes"), ignore_errors=True)
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
