"""
Benchmark: realize-move against rsync over ssh, on loopback, in one run.

Data sets (generated once, random content):

    - one 1 GiB file;
    - 10,000 files of 4 KiB in 100 directories.

For each, in the same run:

    - realize-move from a local arena into a realized on 127.0.0.1 (both
      started by this script; the daemon is restarted per data set so its
      peak RSS is per data set);
    - C{rsync -a -e ssh} of the same data to a loopback sshd that this
      script starts (and stops) itself, with its own host key and
      authorized key in a temporary directory.

Each tool reads a hard-linked copy of the same source files (so both read
from the page cache) and writes into an empty directory.  realize-move
also verifies, fsyncs before renaming and deletes the source; rsync -a
does none of that.  So a third row runs C{rsync -a --remove-source-files}
(rsync's move: it deletes the source files it sent) on another hard-linked
copy, for the cost of the deletions.  Printed: seconds, MB/s, files/s,
peak RSS of the client and the server process, and the ratio ours/rsync
(the anchor is C{rsync -a}, as the issue names it).

Usage: python bench/move_throughput.py [--size-mib 1024] [--files 10000]
       [--repeat 1] [--only big|small] [--dir DIR]

On a VM disk the time to create or delete 10,000 small files varies by
10x from run to run (ext4 mounted with C{discard} here: 0.2 s to 7 s for
the same files), so the small-file figures are noisy; C{--dir /dev/shm}
compares the tools themselves (fsync and discard are free on tmpfs).

Installs rsync and openssh-server with apt-get if they are missing.
Everything listens on 127.0.0.1 only and is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from realize.tap.keygen import write_key_pair  # noqa: E402


@dataclass
class Result:
    tool: str
    seconds: float
    size: int
    files: int
    rss_client: int  # KiB
    rss_server: int  # KiB

    @property
    def mbps(self) -> float:
        return self.size / self.seconds / 1e6

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds


def ensure_tools() -> None:
    missing = [
        package
        for command, package in (
            ("rsync", "rsync"),
            ("/usr/sbin/sshd", "openssh-server"),
        )
        if shutil.which(command) is None
    ]
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "openssh-client", *missing], check=True
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_measured(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[float, int, str]:
    """
    Run a command; return its wall time, its peak RSS (KiB) and stderr.

    Dirty data of earlier runs is flushed first (not timed), so that
    each run starts from the same state.
    """
    os.sync()
    started = time.perf_counter()
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    err = process.stderr.read().decode(errors="replace") if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({process.returncode}):\n{err}")
    return seconds, usage.ru_maxrss, err


def peak_rss(pid: int) -> int:
    """
    @return: VmHWM of a running process, KiB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def make_big(path: str, size_mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))


def make_small(root: str, files: int, dirs: int = 100, size: int = 4096) -> None:
    for i in range(files):
        directory = os.path.join(root, f"d{i % dirs:03d}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(size))


def link_copy(master: str, target: str) -> None:
    subprocess.run(["cp", "-al", master, target], check=True)


def tree_size(root: str) -> tuple[int, int]:
    size = files = 0
    for directory, _, names in os.walk(root):
        for name in names:
            size += os.path.getsize(os.path.join(directory, name))
            files += 1
    return size, files


class Sshd:
    """
    A loopback sshd with its own keys, for rsync -e ssh.
    """

    def __init__(self, work: str) -> None:
        self.work = os.path.join(work, "sshd")
        os.makedirs(self.work)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        w = self.work
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{w}/host"],
            check=True,
        )
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{w}/client"],
            check=True,
        )
        shutil.copy(f"{w}/client.pub", f"{w}/authorized_keys")
        os.chmod(f"{w}/authorized_keys", 0o600)
        wrapper = f"{w}/rsync-wrapper"
        with open(wrapper, "w") as f:
            # The receiving rsync's peak RSS, written where we can read it.
            f.write(
                "#!/usr/bin/env python3\n"
                "import os, subprocess, sys\n"
                "p = subprocess.Popen(['rsync', *sys.argv[1:]])\n"
                "_, status, usage = os.wait4(p.pid, 0)\n"
                f"open('{w}/server-rss', 'w').write(str(usage.ru_maxrss))\n"
                "sys.exit(os.waitstatus_to_exitcode(status))\n"
            )
        os.chmod(wrapper, 0o755)
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
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("sshd did not start")

    def rsync(self, source: str, destination: str, extra: Sequence[str] = ()) -> Result:
        """
        Pushes C{source} to C{destination} on the loopback sshd with
        C{rsync -a -e ssh}, plus C{extra} options.
        """
        remote = f"root@127.0.0.1:{destination}/"
        return self._rsync(source.rstrip("/") + "/", remote, destination, extra)

    def rsync_pull(
        self, source: str, destination: str, extra: Sequence[str] = ()
    ) -> Result:
        """
        Pulls C{source} from the loopback sshd into C{destination} with
        C{rsync -a -e ssh}, plus C{extra} options.
        """
        remote = f"root@127.0.0.1:{source.rstrip('/')}/"
        return self._rsync(remote, destination + "/", destination, extra)

    def _rsync(
        self, frm: str, to: str, destination: str, extra: Sequence[str]
    ) -> Result:
        ssh = (
            f"ssh -p {self.port} -i {self.work}/client -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        )
        wrapper = f"{self.work}/rsync-wrapper"
        command = ["rsync", "-a", *extra, "-e", ssh, "--rsync-path", wrapper, frm, to]
        seconds, rss, _ = run_measured(command)
        with open(f"{self.work}/server-rss") as f:
            server_rss = int(f.read())
        size, files = tree_size(destination)
        return Result("rsync -a -e ssh", seconds, size, files, rss, server_rss)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
            self.process = None


class Realize:
    """
    A realized on loopback plus the configs and keys to move into it.
    """

    def __init__(self, work: str) -> None:
        self.work = os.path.join(work, "realize")
        os.makedirs(self.work)
        for name in ("a", "b"):
            write_key_pair(self.work, name)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.port = 0

    def pub(self, name: str) -> str:
        with open(os.path.join(self.work, f"{name}.pub")) as f:
            return f.read()

    def start(self, destination: str) -> None:
        config = os.path.join(self.work, "b.toml")
        with open(config, "w") as f:
            f.write(
                f'[peers.a]\npubkey = """{self.pub("a")}"""\n'
                f'[peers.b]\npubkey = """{self.pub("b")}"""\n'
                f'[[arena]]\nname = "bench"\ndatadir = "{destination}"\n'
            )
        log = os.path.join(self.work, "realized.log")
        with open(log, "wb") as out:
            self.daemon = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "realize.tap.realized",
                    "--config",
                    config,
                    "--privkey",
                    os.path.join(self.work, "b.key"),
                    "--listen",
                    "tcp:0:interface=127.0.0.1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(log, errors="replace") as f:
                match = re.search(r"listening on [^\s]*:(\d+)", f.read())
            if match:
                self.port = int(match.group(1))
                return
            time.sleep(0.05)
        raise SystemExit("realized did not start")

    def move(self, source: str, destination: str, extra: Sequence[str] = ()) -> Result:
        """
        Moves the local arena at C{source} into a fresh daemon serving
        C{destination} (realize-move --src local --dst b).
        """
        return self._move(source, destination, "local", "b", source, extra)

    def move_down(
        self, daemon_datadir: str, destination: str, extra: Sequence[str] = ()
    ) -> Result:
        """
        Moves from a fresh daemon serving C{daemon_datadir} into the local
        arena at C{destination} (realize-move --src b --dst local).
        """
        return self._move(
            destination, daemon_datadir, "b", "local", daemon_datadir, extra
        )

    def _move(
        self,
        local: str,
        daemon: str,
        src: str,
        dst: str,
        source: str,
        extra: Sequence[str],
    ) -> Result:
        self.start(daemon)
        try:
            config = os.path.join(self.work, "a.toml")
            with open(config, "w") as f:
                f.write(
                    f'[peers.a]\npubkey = """{self.pub("a")}"""\n'
                    f'[peers.b]\naddress = "127.0.0.1:{self.port}"\n'
                    f'pubkey = """{self.pub("b")}"""\n'
                    f'[[arena]]\nname = "bench"\ndatadir = "{local}"\n'
                )
            seconds, rss, _ = run_measured(
                [
                    sys.executable,
                    "-m",
                    "realize.tap.move",
                    "--src",
                    src,
                    "--dst",
                    dst,
                    "--config",
                    config,
                    "--privkey",
                    os.path.join(self.work, "a.key"),
                    "--output",
                    "quiet",
                    *extra,
                    "bench",
                ]
            )
            assert self.daemon is not None
            server_rss = peak_rss(self.daemon.pid)
        finally:
            self.stop()
        size, files = tree_size(daemon if dst == "b" else local)
        left = tree_size(source)[1]
        if left:
            raise SystemExit(f"realize-move left {left} files at the source")
        return Result("realize-move", seconds, size, files, rss, server_rss)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(10)
            self.daemon = None


def fresh(path: str) -> str:
    """
    Make C{path} an empty directory.  An earlier one is moved to the
    trash, deleted at the end: deleting thousands of files right before a
    run makes ext4 slow to create new ones for ~30 s (its inode allocator
    skips recently deleted inodes, see recently_deleted() in
    fs/ext4/ialloc.c), which would time the cleanup, not the tool.
    """
    if os.path.exists(path):
        if tree_size(path)[1] < 100:
            # A few large files: deleting them frees their page cache for
            # the next run (on a VM, memory the guest never touched is
            # much slower to fill), and ext4's inode allocator does not
            # mind a few deletions.
            shutil.rmtree(path)
        else:
            trash = os.path.join(os.path.dirname(path), "trash")
            os.makedirs(trash, exist_ok=True)
            os.rename(path, os.path.join(trash, f"{len(os.listdir(trash))}"))
    os.makedirs(path)
    return path


def report(
    title: str, ours: Result, theirs: Result, target: str, move: Result | None = None
) -> None:
    print(f"\n{title}")
    print(
        f"  {'tool':<18}{'seconds':>9}{'MB/s':>9}{'files/s':>10}"
        f"{'RSS client':>12}{'RSS server':>12}"
    )
    for r in (ours, theirs) if move is None else (ours, theirs, move):
        print(
            f"  {r.tool:<18}{r.seconds:>9.2f}{r.mbps:>9.1f}{r.files_per_second:>10.0f}"
            f"{r.rss_client / 1024:>9.0f} MiB{r.rss_server / 1024:>9.0f} MiB"
        )
    print(
        f"  ratio ours/rsync: {ours.mbps / theirs.mbps:.2f}x throughput, "
        f"{ours.files_per_second / theirs.files_per_second:.2f}x files/s ({target})"
    )
    if move is not None:
        print(
            f"  ratio ours/rsync --remove-source-files: "
            f"{ours.mbps / move.mbps:.2f}x throughput"
        )


def best(results: list[Result]) -> Result:
    return min(results, key=lambda r: r.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", choices=["big", "small"])
    parser.add_argument(
        "--dir",
        help="where to put the data (default: $TMPDIR); e.g. /dev/shm to "
        "compare the tools without the disk's noise",
    )
    args = parser.parse_args()
    ensure_tools()
    work = tempfile.mkdtemp(prefix="realize-bench-", dir=args.dir)
    sshd = Sshd(work)
    realize = Realize(work)
    try:
        sshd.start()
        print(f"work directory {work}; sshd on 127.0.0.1:{sshd.port}")
        sets = []
        if args.only in (None, "big"):
            master = fresh(os.path.join(work, "master-big"))
            make_big(os.path.join(master, "big.bin"), args.size_mib)
            sets.append(
                (f"one {args.size_mib} MiB file", master, "target: ours >= 2.5x rsync")
            )
        if args.only in (None, "small"):
            master = fresh(os.path.join(work, "master-small"))
            make_small(master, args.files)
            sets.append(
                (
                    f"{args.files} files of 4 KiB in 100 directories",
                    master,
                    "target: ours >= 1.0x rsync",
                )
            )
        for title, master, target in sets:
            ours, theirs, moves = [], [], []
            for _ in range(args.repeat):
                source = os.path.join(work, "source")
                if os.path.exists(source):
                    fresh(source)
                    os.rmdir(source)
                link_copy(master, source)
                ours.append(
                    realize.move(source, fresh(os.path.join(work, "dst-realize")))
                )
                theirs.append(
                    sshd.rsync(master, fresh(os.path.join(work, "dst-rsync")))
                )
                fresh(source)
                os.rmdir(source)
                link_copy(master, source)
                moved = sshd.rsync(
                    source,
                    fresh(os.path.join(work, "dst-rsync-move")),
                    ["--remove-source-files"],
                )
                moves.append(replace(moved, tool="rsync (moving)"))
            report(title, best(ours), best(theirs), target, best(moves))
        print(
            "\nRSS: peak resident set; client = realize-move / local rsync, "
            "server = realized / remote rsync.  Target: < 150 MiB each."
        )
    finally:
        realize.stop()
        sshd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
