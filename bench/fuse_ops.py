"""
Benchmark: the Python FUSE layer alone (L{realize.fuse}), over the
in-memory backend, in one run.

A L{FuseService} mounts a L{MemoryBackend} holding 10,000 files of 4 KiB
in 100 directories and one 1 GiB file (all in memory: the figures are
those of the FUSE layer, not of a disk or a network).  Measured from other
processes:

    - C{ls -lR} and C{find} of the 10,000 files, cold (a fresh mount: no
      dentry, attribute or page cached) and warm (the same mount again);
    - reading all 10,000 small files, cold;
    - a sequential read of the 1 GiB file, cold (1 MiB C{read}s; with the
      kernel's default read-ahead, 128 KiB FUSE requests, and with the
      mount's C{read_ahead_kb} raised to 1024 if this user may), then the
      re-read of the same file on the same mount (opened with
      C{keep_cache}: the page cache serves it).

These calibrate the FUSE layer; the comparison with sshfs and rclone is
bench/fuse.py (issue 10).  Run as root or a user allowed to mount FUSE.

Usage: python bench/fuse_ops.py [--runs 3] [--big-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

from twisted.internet import task
from twisted.internet.defer import gatherResults
from twisted.internet.utils import getProcessOutputAndValue

from realize.fuse.bridge import Bridge
from realize.fuse.memory import ROOT_INODE, MemoryBackend
from realize.fuse.ops import RealizeOperations
from realize.fuse.service import FuseService, mounted_filesystem

DIRECTORIES = 100
FILES_PER_DIRECTORY = 100
SMALL = 4096

#: Timed in the measuring process: the command, or the reads, only.
_TIMED = r"""
import os, subprocess, sys, time
what, path = sys.argv[1], sys.argv[2]
started = time.perf_counter()
count = 0
if what == "ls":
    subprocess.run(["ls", "-lR", path], stdout=subprocess.DEVNULL, check=True)
elif what == "find":
    subprocess.run(["find", path], stdout=subprocess.DEVNULL, check=True)
elif what == "small":
    for directory in sorted(os.listdir(path)):
        d = os.path.join(path, directory)
        for name in os.listdir(d):
            with open(os.path.join(d, name), "rb") as f:
                count += len(f.read())
elif what == "big":
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(1 << 20)
    while True:
        n = os.readv(fd, [buf])
        if not n:
            break
        count += n
    os.close(fd)
print(time.perf_counter() - started, count)
"""


def build(big_mib: int) -> MemoryBackend:
    backend = MemoryBackend()
    tree = backend.mkdir(ROOT_INODE, "tree")
    small = os.urandom(SMALL)
    for i in range(DIRECTORIES):
        directory = backend.mkdir(tree, f"d{i:03}")
        for j in range(FILES_PER_DIRECTORY):
            backend.add_file(directory, f"f{j:03}", small)
    block = os.urandom(1 << 20)
    backend.add_file(ROOT_INODE, "big", block * big_mib, version="big")
    return backend


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def timed(what: str, path: str) -> tuple[float, int]:
    """
    @return: the seconds the measuring process took, and its count
        (bytes read).  The daemon's CPU seconds go to L{CPU}.
    """
    before = cpu_seconds()
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-c", _TIMED, what, path], env=os.environ
    )
    CPU.append(cpu_seconds() - before)
    if code != 0:
        raise RuntimeError(f"{what} {path}: {err.decode()}")
    seconds, count = out.split()
    return float(seconds), int(count)


#: The daemon's CPU seconds of each L{timed} run (this process: the FUSE
#: threads, plus the reactor waiting).
CPU: list[float] = []


class NoXattrOperations(RealizeOperations):
    """
    The operations without getxattr: libfuse answers ENOSYS, and the kernel
    stops asking (for every name).  Only to measure what xattrs cost.
    """

    getxattr = None  # type: ignore[assignment]


def bdi_read_ahead(mountpoint: str) -> str | None:
    """
    The sysfs file of the mount's read-ahead (C{/sys/class/bdi/MAJ:MIN}),
    found in /proc/self/mountinfo (not by touching the mount).
    """
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == mountpoint:
                path = f"/sys/class/bdi/{fields[2]}/read_ahead_kb"
                return path if os.access(path, os.W_OK) else None
    return None


class Mount:
    def __init__(self, reactor: Any, backend: MemoryBackend, mountpoint: str):
        self.reactor = reactor
        self.backend = backend
        self.mountpoint = mountpoint
        self.service: FuseService | None = None

    async def fresh(self, xattrs: bool = True) -> None:
        await self.stop()
        self.service = FuseService(
            self.backend, self.mountpoint, self.reactor, Bridge(self.reactor)
        )
        if not xattrs:
            ops = self.service.ops
            self.service.ops = NoXattrOperations(
                ops.backend,
                ops.uid,
                ops.gid,
                on_init=ops.on_init,
                on_destroy=ops.on_destroy,
            )
        self.service.startService()
        await self.service.when_mounted()

    async def stop(self) -> None:
        if self.service is not None and self.service.running:
            await self.service.stopService()


def show(label: str, values: list[float], unit: str, cpu: list[float]) -> None:
    """
    One line: the median, the runs, and the daemon's median CPU seconds.
    """
    median = statistics.median(values)
    runs = " ".join(f"{v:.3f}" for v in values)
    print(
        f"  {label:<40}{median:>9.3f} {unit:<8}daemon CPU "
        f"{statistics.median(cpu):.3f} s   (runs: {runs})"
    )


async def main(reactor: Any) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big-mib", type=int, default=1024)
    args = parser.parse_args()
    started = time.perf_counter()
    backend = build(args.big_mib)
    print(f"load average: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print(
        f"memory backend: {DIRECTORIES * FILES_PER_DIRECTORY} files of "
        f"{SMALL} B in {DIRECTORIES} directories, one {args.big_mib} MiB file "
        f"(built in {time.perf_counter() - started:.1f} s)"
    )
    work = tempfile.mkdtemp(prefix="realize-fuse-bench-")
    mountpoint = os.path.join(work, "mnt")
    os.mkdir(mountpoint)
    mount = Mount(reactor, backend, mountpoint)
    tree = os.path.join(mountpoint, "tree")
    big = os.path.join(mountpoint, "big")
    try:
        print("\nmetadata (10,000 files, 100 directories)")
        for what, xattrs in (("ls", True), ("find", True), ("ls", False)):
            cold, warm, cold_cpu, warm_cpu = [], [], [], []
            for _ in range(args.runs):
                await mount.fresh(xattrs)
                cold.append((await timed(what, tree))[0])
                cold_cpu.append(CPU[-1])
                warm.append((await timed(what, tree))[0])
                warm_cpu.append(CPU[-1])
            label = "ls -lR" if what == "ls" else "find"
            if not xattrs:
                label += " (no getxattr: ENOSYS)"
            show(f"{label}, cold (fresh mount)", cold, "s", cold_cpu)
            show(f"{label}, warm", warm, "s", warm_cpu)

        print("\ninvalidation (FuseService.invalidate of each of 10,000 files)")
        seconds_list, cpu = [], []
        for _ in range(args.runs):
            await mount.fresh()
            await timed("ls", tree)  # the kernel knows every path now
            assert mount.service is not None
            before, started = cpu_seconds(), time.perf_counter()
            await gatherResults(
                [
                    mount.service.invalidate(f"tree/d{i:03}/f{j:03}")
                    for i in range(DIRECTORIES)
                    for j in range(FILES_PER_DIRECTORY)
                ]
            )
            seconds_list.append(time.perf_counter() - started)
            cpu.append(cpu_seconds() - before)
        show("10,000 paths, until the last is done", seconds_list, "s", cpu)

        print("\nsmall files (all 10,000 read, 4 KiB each)")
        rates, cpu = [], []
        for _ in range(args.runs):
            await mount.fresh()
            seconds, count = await timed("small", tree)
            assert count == DIRECTORIES * FILES_PER_DIRECTORY * SMALL, count
            rates.append(DIRECTORIES * FILES_PER_DIRECTORY / seconds)
            cpu.append(CPU[-1])
        show("read all, cold", rates, "files/s", cpu)

        size = args.big_mib << 20
        print(f"\nsequential read of {args.big_mib} MiB (1 MiB reads)")
        for read_ahead in (None, 1024):
            cold, cached, cold_cpu, cached_cpu = [], [], [], []
            requests = 1
            label = "default read-ahead"
            for _ in range(args.runs):
                await mount.fresh()
                if read_ahead is not None:
                    knob = bdi_read_ahead(mountpoint)
                    if knob is None:
                        print("  (read_ahead_kb is not writable: skipped)")
                        break
                    with open(knob, "w") as f:
                        f.write(str(read_ahead))
                    label = f"read_ahead_kb={read_ahead}"
                reads = backend.calls["read"]
                seconds, count = await timed("big", big)
                assert count == size, count
                requests = backend.calls["read"] - reads
                cold.append(size / seconds / 1e9)
                cold_cpu.append(CPU[-1])
                seconds, count = await timed("big", big)
                cached.append(size / seconds / 1e9)
                cached_cpu.append(CPU[-1])
            if cold:
                print(f"  {label}, {size // requests >> 10} KiB per request:")
                show("  cold, through FUSE", cold, "GB/s", cold_cpu)
                show("  re-read, same mount (keep_cache)", cached, "GB/s", cached_cpu)
    finally:
        await mount.stop()
        if mounted_filesystem(mountpoint) is None:
            os.rmdir(mountpoint)
            os.rmdir(work)


if __name__ == "__main__":
    task.react(main)
