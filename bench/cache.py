"""
Benchmark: the block cache of the Unreal (issue 11) against C{rclone mount
--vfs-cache-mode full --vfs-cache-max-size} with the same quota, over
loopback, in one run.

    - B{realize}: two C{realized} started here: C{a} has the data in its
      datadir, C{c} is a pure Unreal with a FUSE mount and C{[cache] size}
      set to the quota (C{min_free = 0}); C{c} dials C{a} through a
      counting proxy (bytes sent by the server: what was downloaded).
    - B{rclone}: an sftp remote on a loopback sshd started here (its own
      host and client keys in the work directory), reached through the
      same kind of counting proxy; C{--vfs-cache-poll-interval 2s} so that
      it enforces its quota within seconds rather than a minute.

Scenarios, each with fresh caches and mounts:

    - (a) a 1 GiB file read cold, then re-read on the same mount, then
      re-read after a restart of both (daemon or rclone and mount); quota
      2 GiB.  GB/s of the re-reads (target: >= 2 GB/s on the same mount).
    - (b) Zipf (s = 1) over 1,000 files of 1 MiB, whole files read,
      quota 200 MiB: after half as many reads to warm the cache up, byte
      hit ratio (1 - downloaded / read) and bytes downloaded (targets: a
      higher hit ratio than rclone's, <= 0.8x its bytes).
    - (c) a scan of 2 GiB of cold files (8 MiB each, 256 MiB between two
      reads of the hot set) through a 256 MiB cache while a hot set of
      64 files of 1 MiB is read after each 256 MiB: the hot set's hit
      ratio after its first two reads (target >= 0.9).
    - (d) the disk usage (C{st_blocks}) of each cache, sampled every
      50 ms during (b) and (c): its peak against the quota (ours must
      stay within the quota plus the tolerance).

In (b) and (c) each file's pages are dropped from the kernel's page cache
after it is read (C{POSIX_FADV_DONTNEED}), so that the hit ratios are the
tools' caches', not the kernel's.  rclone reads a bare size as KiB: the
quota is given to it in MiB (C{200M}).

The machine may be shared: the load average is printed with the figures.

Usage: python bench/cache.py [--dir DIR] [--only a,b,c] [--accesses 4000]

Needs root (FUSE mounts, sshd).  Installs rclone, openssh-server and fuse3
with apt-get if they are missing.  Everything listens on 127.0.0.1 and is
stopped (and unmounted) at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from _tools import ensure_tools, free_port  # noqa: E402
from realize.storage.cache import tolerance  # noqa: E402
from realize.tap.keygen import write_key_pair  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
ARENA = "bench"


TOOLS = (
    ("rclone", "rclone"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("fusermount3", "fuse3"),
)


def wait_for(check: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what}: not reached in {seconds} s")


def mounted(path: str) -> str | None:
    """
    @return: the filesystem type mounted at C{path}, or C{None}.
    """
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == path:
                return fields[2]
    return None


def unmount(path: str) -> None:
    if mounted(path):
        subprocess.run(["fusermount3", "-u", path], capture_output=True, check=False)
        if mounted(path):
            subprocess.run(["fusermount3", "-uz", path], capture_output=True)


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def du(path: str) -> int:
    """
    @return: the disk usage of the files under C{path}, C{st_blocks * 512}.
    """
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def read_file(path: str, drop: bool = False) -> int:
    """
    Read a whole file in 1 MiB reads.

    @param drop: drop the file's pages from the kernel's page cache
        afterwards (C{POSIX_FADV_DONTNEED}): the next read is the tool's,
        not the kernel's.
    @return: bytes read.
    """
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MIB):
            total += len(chunk)
        if drop:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return total


class CountingProxy:
    """
    A TCP proxy on 127.0.0.1 counting the bytes the upstream sends (what
    the client downloads, protocol overhead included).
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.down = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            for a, b, count in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pipe, args=(a, b, count), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, target: socket.socket, count: bool) -> None:
        buffer = bytearray(1 << 18)
        view = memoryview(buffer)
        try:
            while True:
                n = source.recv_into(buffer)
                if n == 0:
                    break
                target.sendall(view[:n])
                if count:
                    with self._lock:
                        self.down += n
        except OSError:
            pass
        finally:
            for s in (source, target):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing = True
        self._server.close()


class Sampler:
    """
    Samples the disk usage of directories every 50 ms, keeping the peaks.
    """

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths
        self.peaks = dict.fromkeys(paths, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, path in self.paths.items():
                self.peaks[name] = max(self.peaks[name], du(path))
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Sshd:
    """
    A loopback sshd with its own keys, serving sftp.
    """

    def __init__(self, work: str) -> None:
        self.work = os.path.join(work, "sshd")
        os.makedirs(self.work)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        w = self.work
        for name in ("host", "client"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{w}/{name}"],
                check=True,
            )
        shutil.copy(f"{w}/client.pub", f"{w}/authorized_keys")
        os.chmod(f"{w}/authorized_keys", 0o600)
        with open(f"{w}/sshd_config", "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {w}/host\n"
                f"AuthorizedKeysFile {w}/authorized_keys\nPermitRootLogin yes\n"
                "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                f"PidFile {w}/sshd.pid\nSubsystem sftp internal-sftp\n"
            )
        os.makedirs("/run/sshd", exist_ok=True)
        self.process = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", f"{w}/sshd_config"],
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: (
                socket.create_connection(("127.0.0.1", self.port), 0.2).close() or True
            ),
            10,
            "sshd",
        )

    def stop(self) -> None:
        stop(self.process)


class Rclone:
    """
    C{rclone mount --vfs-cache-mode full} of the data over sftp.
    """

    name = "rclone"

    def __init__(self, work: str, sshd: Sshd, data: str) -> None:
        self.work = os.path.join(work, "rclone")
        os.makedirs(self.work)
        self.mountpoint = os.path.join(self.work, "mnt")
        os.makedirs(self.mountpoint)
        self.cache = os.path.join(self.work, "cache")
        self.proxy = CountingProxy(sshd.port)
        self.config = os.path.join(self.work, "rclone.conf")
        with open(self.config, "w") as f:
            f.write(
                "[bench]\ntype = sftp\nhost = 127.0.0.1\n"
                f"port = {self.proxy.port}\nuser = root\n"
                f"key_file = {sshd.work}/client\nshell_type = unix\n"
                # No hash commands: rclone would run md5sum over ssh for
                # every file it downloads.
                "md5sum_command = none\nsha1sum_command = none\n"
            )
        self.data = data
        self.process: subprocess.Popen[bytes] | None = None
        self.quota = 0

    def start(self, quota: int, fresh: bool = True) -> None:
        self.quota = quota
        if fresh:
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
                "--vfs-cache-max-size",
                # rclone reads a bare number as KiB.
                f"{quota // MIB}M",
                "--vfs-cache-poll-interval",
                "2s",
                "--cache-dir",
                self.cache,
                "--log-level",
                "ERROR",
            ],
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: mounted(self.mountpoint) == "fuse.rclone", 30, "rclone mount")

    def path(self, relative: str) -> str:
        return os.path.join(self.mountpoint, relative)

    def stop(self) -> None:
        unmount(self.mountpoint)
        stop(self.process)
        self.process = None

    def downloaded(self) -> int:
        return self.proxy.down


class Realize:
    """
    Two realized: C{a} serves the data, C{c} mounts the Unreal with the
    block cache.
    """

    name = "realize"

    def __init__(self, work: str, data: str, files: int) -> None:
        self.files = files
        self.work = os.path.join(work, "realize")
        self.keys = os.path.join(self.work, "keys")
        os.makedirs(self.keys)
        for name in ("a", "c"):
            write_key_pair(self.keys, name)
        self.data = data
        self.a_port = free_port()
        self.proxy = CountingProxy(self.a_port)
        self.mountpoint = os.path.join(self.work, "mnt")
        os.makedirs(self.mountpoint)
        self.c_work = os.path.join(self.work, "c-work")
        self.blobs = os.path.join(self.c_work, "blobs")
        self.metrics_port = free_port()
        self.a: subprocess.Popen[bytes] | None = None
        self.c: subprocess.Popen[bytes] | None = None
        self.quota = 0

    def pub(self, name: str) -> str:
        with open(os.path.join(self.keys, f"{name}.pub")) as f:
            return f.read()

    def _config(self, name: str, arena: str, cache: str = "") -> str:
        path = os.path.join(self.work, f"{name}.toml")
        with open(path, "w") as f:
            f.write(
                f'[peers.a]\naddress = "127.0.0.1:{self.proxy.port}"\n'
                f'pubkey = """{self.pub("a")}"""\n'
                f'[peers.c]\npubkey = """{self.pub("c")}"""\n'
                f'[[arena]]\nname = "{ARENA}"\n{arena}\n{cache}'
            )
        return path

    def _spawn(self, name: str, config: str, *extra: str) -> subprocess.Popen[bytes]:
        statedir = os.path.join(self.work, f"{name}-state")
        os.makedirs(statedir, exist_ok=True)
        log = open(os.path.join(self.work, f"{name}.log"), "ab")  # noqa: SIM115
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "realize.tap.realized",
                "--config",
                config,
                "--privkey",
                os.path.join(self.keys, f"{name}.key"),
                "--statedir",
                statedir,
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_a(self) -> None:
        config = self._config(
            "a",
            f'datadir = "{self.data}"\nworkdir = "{self.work}/a-work"',
        )
        self.a = self._spawn(
            "a", config, "--listen", f"tcp:{self.a_port}:interface=127.0.0.1"
        )
        log = os.path.join(self.work, "a.log")

        def listening() -> bool:
            with open(log) as f:
                return "listening on" in f.read()

        wait_for(listening, 60, "realized a")

    def start(self, quota: int, fresh: bool = True) -> None:
        self.quota = quota
        if fresh:
            shutil.rmtree(self.c_work, ignore_errors=True)
            shutil.rmtree(os.path.join(self.work, "c-state"), ignore_errors=True)
        config = self._config(
            "c",
            f'workdir = "{self.c_work}"',
            f'[cache]\nsize = "{quota}"\nmin_free = "0"\n',
        )
        self.c = self._spawn(
            "c",
            config,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--fuse",
            self.mountpoint,
            "--metrics-addr",
            f"127.0.0.1:{self.metrics_port}",
        )
        wait_for(
            lambda: mounted(self.mountpoint) == "fuse.realize", 60, "realized c mount"
        )
        root = os.path.join(self.mountpoint, ARENA)
        wait_for(
            lambda: count_files(root) >= self.files,
            600,
            f"{self.files} files in c's view",
        )

    def path(self, relative: str) -> str:
        return os.path.join(self.mountpoint, ARENA, relative)

    def stop(self) -> None:
        stop(self.c)
        unmount(self.mountpoint)
        self.c = None

    def stop_all(self) -> None:
        self.stop()
        stop(self.a)
        self.a = None

    def downloaded(self) -> int:
        return self.proxy.down

    def metric(self, name: str, **labels: str) -> float:
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics")
            .read()
            .decode()
        )
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def count_files(root: str) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def make_data(data: str) -> dict[str, list[str]]:
    """
    Random files: one of 1 GiB, 1,000 of 1 MiB (Zipf), 256 of 8 MiB (the
    scan), 64 of 1 MiB (the hot set).

    @return: the relative paths of each set.
    """
    sets: dict[str, list[str]] = {
        "big": ["big/1g.bin"],
        "zipf": [f"zipf/{i:04}.bin" for i in range(1000)],
        "scan": [f"scan/{i:03}.bin" for i in range(256)],
        "hot": [f"hot/{i:02}.bin" for i in range(64)],
    }
    sizes = {"big": GIB, "zipf": MIB, "scan": 8 * MIB, "hot": MIB}
    for kind, paths in sets.items():
        for path in paths:
            full = os.path.join(data, path)
            if os.path.exists(full) and os.path.getsize(full) == sizes[kind]:
                continue
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                left = sizes[kind]
                while left:
                    n = min(left, 64 * MIB)
                    f.write(os.urandom(n))
                    left -= n
    return sets


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


@contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    started = time.perf_counter()
    yield box
    box.append(time.perf_counter() - started)


def scenario_a(tools: list[Realize | Rclone], sets: dict[str, list[str]]) -> None:
    print("\n(a) re-read of a cached 1 GiB file (quota 2 GiB)", flush=True)
    rows = {}
    for tool in tools:
        tool.start(2 * GIB)
        path = tool.path(sets["big"][0])
        with timed() as cold:
            read_file(path)
        with timed() as same:
            read_file(path)
        tool.stop()
        tool.start(2 * GIB, fresh=False)
        with timed() as restarted:
            read_file(path)
        tool.stop()
        row = (GIB / cold[0] / 1e9, GIB / same[0] / 1e9, GIB / restarted[0] / 1e9)
        rows[tool.name] = row
        print(
            f"  {tool.name:<8} cold {row[0]:.2f} GB/s, re-read same mount "
            f"{row[1]:.2f} GB/s, after a restart {row[2]:.2f} GB/s",
            flush=True,
        )
    if len(rows) == 2:
        ours, theirs = rows["realize"], rows["rclone"]
        print(
            f"  ratio ours/rclone: same mount {ours[1] / theirs[1]:.2f}x, after a "
            f"restart {ours[2] / theirs[2]:.2f}x (target: >= 2 GB/s on the same mount)"
        )


def cache_dir(tool: Realize | Rclone) -> str:
    return tool.blobs if isinstance(tool, Realize) else tool.cache


def scenario_b(
    tools: list[Realize | Rclone], sets: dict[str, list[str]], accesses: int
) -> dict[str, tuple[int, int]]:
    warm = accesses // 2
    print(
        f"\n(b) Zipf (s = 1) over 1,000 files of 1 MiB, quota 200 MiB: {warm} "
        f"whole-file reads to warm up, then {accesses} measured",
        flush=True,
    )
    rng = random.Random(11)
    weights = [1 / (k + 1) for k in range(1000)]
    order = rng.choices(range(1000), weights, k=warm + accesses)
    results = {}
    peaks = {}
    for tool in tools:
        quota = 200 * MIB
        tool.start(quota)
        read = 0
        with Sampler({tool.name: cache_dir(tool)}) as sampler, timed() as took:
            for index in order[:warm]:
                read_file(tool.path(sets["zipf"][index]), drop=True)
            before = tool.downloaded()
            if isinstance(tool, Realize):
                fetched_before = tool.metric("realize_cache_fetched_bytes_total")
            for index in order[warm:]:
                read += read_file(tool.path(sets["zipf"][index]), drop=True)
            down = tool.downloaded() - before
        peaks[tool.name] = (sampler.peaks[tool.name], quota)
        extra = ""
        if isinstance(tool, Realize):
            fetched = tool.metric("realize_cache_fetched_bytes_total") - fetched_before
            extra = f"; verified bytes fetched {fetched / MIB:.0f} MiB"
        tool.stop()
        results[tool.name] = (read, down)
        ratio = 1 - min(down / read, 1)
        print(
            f"  {tool.name:<8} byte hit ratio {ratio:.3f}, downloaded "
            f"{down / MIB:.0f} MiB of {read / MIB:.0f} MiB read, {took[0]:.1f} s"
            + extra,
            flush=True,
        )
    if len(results) == 2:
        ours, theirs = results["realize"], results["rclone"]
        hit_ours = 1 - min(ours[1] / ours[0], 1)
        hit_theirs = 1 - min(theirs[1] / theirs[0], 1)
        print(
            f"  ratio ours/rclone: hit ratio {hit_ours / max(hit_theirs, 1e-9):.2f}x, "
            f"bytes downloaded {ours[1] / max(theirs[1], 1):.2f}x "
            "(targets: higher hit ratio, <= 0.8x bytes)"
        )
    return peaks


def scenario_c(
    tools: list[Realize | Rclone], sets: dict[str, list[str]]
) -> dict[str, tuple[int, int]]:
    print(
        "\n(c) scan of 2 GiB of cold files (8 MiB each) through a 256 MiB cache, "
        "the 64 MiB hot set read after each 256 MiB",
        flush=True,
    )
    scan = sets["scan"]
    rounds = [scan[i : i + 32] for i in range(0, len(scan), 32)]
    peaks = {}
    ratios = {}
    for tool in tools:
        quota = 256 * MIB
        tool.start(quota)
        hot_read = hot_down = 0
        with Sampler({tool.name: cache_dir(tool)}) as sampler:
            for _ in range(2):
                for path in sets["hot"]:
                    read_file(tool.path(path), drop=True)
            for chunk in rounds:
                for path in chunk:
                    read_file(tool.path(path), drop=True)
                before = tool.downloaded()
                for path in sets["hot"]:
                    hot_read += read_file(tool.path(path), drop=True)
                hot_down += tool.downloaded() - before
        peaks[tool.name] = (sampler.peaks[tool.name], quota)
        tool.stop()
        ratios[tool.name] = 1 - min(hot_down / hot_read, 1)
        print(
            f"  {tool.name:<8} hot set hit ratio {ratios[tool.name]:.3f} "
            f"({hot_down / MIB:.0f} MiB downloaded for {hot_read / MIB:.0f} MiB of "
            "hot reads)",
            flush=True,
        )
    if len(ratios) == 2:
        shown = (
            f"{ratios['realize'] / ratios['rclone']:.2f}x"
            if ratios["rclone"] > 0
            else "n/a (rclone's is 0)"
        )
        print(f"  ratio ours/rclone: {shown} (target: ours >= 0.9)")
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="work directory parent (default: $TMPDIR)")
    parser.add_argument("--only", default="a,b,c", help="scenarios, e.g. b,c")
    parser.add_argument("--accesses", type=int, default=4000)
    parser.add_argument("--tools", default="realize,rclone")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: FUSE mounts and sshd")
    ensure_tools(TOOLS)
    work = tempfile.mkdtemp(prefix="realize-bench-cache-", dir=args.dir)

    def terminated(signum: int, frame: object) -> None:
        # Through the finally below: the mounts go, as bench/fuse.py does.
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    data = os.path.join(work, "data")
    print(f"work directory {work}; {load()}", flush=True)
    sets = make_data(data)
    sshd = Sshd(work)
    realize = Realize(work, data, sum(len(paths) for paths in sets.values()))
    rclone = Rclone(work, sshd, data)
    tools: list[Realize | Rclone] = [
        tool for tool in (realize, rclone) if tool.name in args.tools.split(",")
    ]
    only = set(args.only.split(","))
    peaks: dict[str, list[tuple[int, int]]] = {}
    try:
        sshd.start()
        realize.start_a()
        if "a" in only:
            scenario_a(tools, sets)
        if "b" in only:
            for name, peak in scenario_b(tools, sets, args.accesses).items():
                peaks.setdefault(name, []).append(peak)
        if "c" in only:
            for name, peak in scenario_c(tools, sets).items():
                peaks.setdefault(name, []).append(peak)
        if peaks:
            print("\n(d) peak disk usage of the cache (sampled every 50 ms) / quota")
            for name, values in peaks.items():
                shown = ", ".join(
                    f"{peak / MIB:.1f} MiB / {quota / MIB:.0f} MiB ({peak / quota:.3f})"
                    for peak, quota in values
                )
                within = all(peak <= quota + tolerance(quota) for peak, quota in values)
                print(f"  {name:<8} {shown}; within quota + tolerance: {within}")
        print(f"\n{load()}")
    finally:
        realize.stop_all()
        rclone.stop()
        sshd.stop()
        realize.proxy.close()
        rclone.proxy.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
