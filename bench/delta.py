"""
Benchmark L{realize.delta} against librsync's C{rdiff} on the same files.

Run as C{python bench/delta.py [--size-mib 1024]} (with C{src} on the
path).  In a temporary directory it writes a random target file and a basis
copy of it with 1% of its 4 KiB blocks overwritten by random bytes (fixed
seed), then measures in the same run:

  - our L{realize.delta.signature} of the basis and L{realize.delta.diff} of
    the target against it (parsing the signature included), both reading the
    files through mmap, as the store does;
  - C{rdiff signature} and C{rdiff delta} with C{-b 4096}, and with rdiff's
    default block size, as wall times of the processes;
  - the signature and delta sizes of both;

checks that our delta applied to the basis gives the target, prints a table
and the ratios ours/rdiff, and removes the temporary directory.  C{rdiff} is
installed with C{apt-get} if it is missing (this needs root).

This is a benchmark, not a test: it takes tens of seconds and gigabytes of
disk at the default size.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import xxhash

from realize import delta

_T = TypeVar("_T")

BLOCK = 4096
CORRUPT_FRACTION = 0.01
SEED = 20240611
WRITE_CHUNK = 16 << 20


def ensure_rdiff() -> str:
    """
    Find C{rdiff}, installing Debian's package if it is missing.

    @return: the path of the C{rdiff} executable.
    @raise SystemExit: if it cannot be installed.
    """
    found = shutil.which("rdiff")
    if found:
        return found
    install = ["apt-get", "install", "-y", "-q", "rdiff"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(install, env=env, check=False).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    found = shutil.which("rdiff")
    if not found:
        raise SystemExit("rdiff is not available and could not be installed")
    return found


def make_files(directory: Path, size: int) -> tuple[Path, Path, int]:
    """
    Write a random target and a basis with 1% of its blocks corrupted.

    @param directory: where to write them.
    @param size: target (and basis) size in bytes.
    @return: C{(target path, basis path, number of corrupted blocks)}.
    """
    rng = np.random.default_rng(SEED)
    target = directory / "target"
    basis = directory / "basis"
    blocks = size // BLOCK
    corrupt = np.sort(
        rng.choice(blocks, size=int(blocks * CORRUPT_FRACTION), replace=False)
    )
    with target.open("wb") as t, basis.open("wb") as b:
        for start in range(0, size, WRITE_CHUNK):
            chunk = rng.integers(
                0, 256, size=min(WRITE_CHUNK, size - start), dtype=np.uint8
            )
            t.write(chunk.data)
            first, last = start // BLOCK, (start + chunk.size) // BLOCK
            lo, hi = np.searchsorted(corrupt, [first, last])
            for block in corrupt[lo:hi].tolist():
                at = block * BLOCK - start
                chunk[at : at + BLOCK] = rng.integers(0, 256, BLOCK, dtype=np.uint8)
            b.write(chunk.data)
    return target, basis, len(corrupt)


def timed(call: Callable[[], _T]) -> tuple[_T, float]:
    """
    @return: C{call()}'s result and its wall time in seconds.
    """
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def run_timed(command: Sequence[str]) -> float:
    """
    Run a command to completion.

    @return: its wall time in seconds.
    @raise subprocess.CalledProcessError: if it fails.
    """
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def map_file(path: Path) -> mmap.mmap:
    """
    @return: a read-only mmap of the whole of C{path}.
    """
    with path.open("rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def file_digest(path: Path) -> bytes:
    """
    @return: the xxh3_128 digest of a file, read in windows.
    """
    hasher = xxhash.xxh3_128()
    with path.open("rb") as f:
        while chunk := f.read(WRITE_CHUNK):
            hasher.update(chunk)
    return hasher.digest()


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the benchmark and print its table.

    @param argv: command-line arguments, C{sys.argv[1:]} by default.
    @return: the exit code: 0, or 1 if our delta does not rebuild the target.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size")
    parser.add_argument("--tmpdir", default=None, help="where to put the files")
    options = parser.parse_args(argv)
    patch_time = float("nan")
    size = options.size_mib << 20
    rdiff = ensure_rdiff()
    version = subprocess.run(
        [rdiff, "--version"], capture_output=True, text=True, check=False
    ).stdout.partition("\n")[0]
    with tempfile.TemporaryDirectory(dir=options.tmpdir) as name:
        directory = Path(name)
        print(f"writing {options.size_mib} MiB target and basis in {directory} ...")
        target, basis, corrupted = make_files(directory, size)
        print(f"{corrupted} of {size // BLOCK} blocks of the basis corrupted")
        # Warm the page cache for both files, for every contender alike.
        target_digest = file_digest(target)
        file_digest(basis)

        basis_map = map_file(basis)
        target_map = map_file(target)
        try:
            sig, sig_time = timed(lambda: delta.signature(memoryview(basis_map)))

            def our_diff() -> bytes:
                parsed = delta.parse_signature(sig, max_basis_length=size)
                return delta.diff(memoryview(target_map), parsed)

            ours, diff_time = timed(our_diff)
            rebuilt, apply_time = timed(
                lambda: delta.apply(
                    memoryview(basis_map), ours, expected_length=size, max_length=size
                )
            )
            ok = xxhash.xxh3_128_digest(rebuilt) == target_digest
            del rebuilt
            stats = delta.delta_stats(ours)
        finally:
            basis_map.close()
            target_map.close()

        rows: list[tuple[str, float, float, int, int]] = [
            ("realize.delta (4096)", sig_time, diff_time, len(sig), len(ours))
        ]
        for label, block_args in (
            ("rdiff -b 4096", ["-b", str(BLOCK)]),
            ("rdiff (default)", []),
        ):
            sig_file = directory / "rdiff.sig"
            delta_file = directory / "rdiff.delta"
            rs_time = run_timed(
                [rdiff, *block_args, "signature", str(basis), str(sig_file)]
            )
            rd_time = run_timed(
                [rdiff, "delta", str(sig_file), str(target), str(delta_file)]
            )
            rows.append(
                (
                    label,
                    rs_time,
                    rd_time,
                    sig_file.stat().st_size,
                    delta_file.stat().st_size,
                )
            )
            if block_args:
                patched = directory / "rdiff.out"
                patch_time = run_timed(
                    [rdiff, "patch", str(basis), str(delta_file), str(patched)]
                )
                patched.unlink()
            sig_file.unlink()
            delta_file.unlink()

    mb = size / 1e6
    print()
    print(f"{options.size_mib} MiB, 1% of 4 KiB blocks corrupted; {version}")
    header = (
        f"{'':22} {'sig s':>7} {'sig MB/s':>9} {'diff s':>7} {'diff MB/s':>9}"
        f" {'sig bytes':>11} {'delta bytes':>12}"
    )
    print(header)
    for label, s_time, d_time, s_size, d_size in rows:
        print(
            f"{label:22} {s_time:7.2f} {mb / s_time:9.0f} {d_time:7.2f}"
            f" {mb / d_time:9.0f} {s_size:11d} {d_size:12d}"
        )
    ref = rows[1]
    print()
    print("ours / rdiff -b 4096:")
    print(f"  signature throughput  {ref[1] / sig_time:6.2f}x  (target >= 1.0)")
    print(f"  diff throughput       {ref[2] / diff_time:6.2f}x  (target >= 1.0)")
    print(f"  delta size            {len(ours) / ref[4]:6.3f}x  (target <= 1.1)")
    print(f"  signature size        {len(sig) / ref[3]:6.3f}x")
    print(
        f"apply: ours {apply_time:.2f} s ({mb / apply_time:.0f} MB/s),"
        f" rdiff patch {patch_time:.2f} s ({mb / patch_time:.0f} MB/s)"
    )
    print(
        f"our delta: {stats.ops} ops, {stats.copied_bytes} bytes copied,"
        f" {stats.literal_bytes} literal; applies to the target: {ok}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
