"""
Benchmark: realize-move against rsync over ssh, on loopback, in one run,
on every shape of tree of issue 15.

Shapes (generated once per directory, random content):

    - C{small}: 10,000 files of 4 KiB in 100 directories;
    - C{stdlib}: this machine's Python standard library
      (C{sysconfig.get_paths()['stdlib']}, without C{site-packages}),
      copied once (a real, mixed tree: sources, bytecode, data files);
    - C{many}: 100,000 files of 1 KiB in 1,000 directories;
    - C{big}: one 1 GiB file; the same run also times a bare Twisted TLS
      1.3 transfer of the same file between two processes on loopback
      (bench/tls_ceiling.py: realize's TLS settings, a push producer, 1 MiB
      chunks), the ceiling of realize's own stack; and the same TLS
      context over a blocking socket with no reactor (C{--blocking}: what
      a transfer outside Twisted's memory-BIO transport could reach);
    - C{sparse}: a 2 GiB file holding 5 bytes at offset 1 GB (a VM image
      or database file looks like this).

Tools, in the same run, each reading a hard-linked copy of the same source
files (so all read from the page cache) and writing into an empty
directory:

    - C{realize-move} from a local arena into a realized on 127.0.0.1
      (both started by this script; the daemon is restarted for each move,
      so its peak RSS is per move).  It verifies, fsyncs before renaming
      and deletes the source;
    - C{rsync -a -e ssh} to a loopback sshd that this script starts (and
      stops) itself, with its own keys in a temporary directory.  It does
      none of that;
    - C{rsync -a --remove-source-files}: rsync's move, which deletes the
      source files it sent;
    - for C{sparse}, C{rsync -a -S} and C{rsync -a --sparse --inplace}
      instead of the two above.

Rounds are interleaved (each round runs every tool once, in an order that
rotates from round to round) and each shape is measured in every
directory given (default: /dev/shm, where fsync and discard are free, and
the temporary directory's disk).  Printed per shape and directory: for
each tool the min/median/max of the wall time, the median MB/s and files/s,
the CPU seconds of both sides (user + system: robust to a loaded
machine, unlike the wall time; realized's with its worker process's),
the largest peak RSS of each process and,
for C{sparse}, what the destination allocates; then the ratios of the
medians against the targets of issue 15.  The load average is printed
with every round: the machine may be shared.

Bytecode of the realize sources is compiled first (C{compileall}): an
installed package has it, and without it each process would compile the
sources at start.  Every process this script starts gets its own C{src/}
on C{PYTHONPATH}, so a copy of this script in another worktree measures
that worktree's code.

Usage: python bench/move_throughput.py [--shapes small,stdlib,many,big,sparse]
       [--rounds 3] [--dir DIR ...] [--size-mib 1024] [--files 10000]
       [--many-files 100000] [--py-spy DIR]

With C{--py-spy DIR}, every realize-move and its realized are profiled
(py-spy C{--gil}, raw collapsed stacks at 250 Hz, one file per process and
move, numbered in order; the daemon's ends when the move does): where
each process's time goes, per file.  The profiler slows both and is
counted in the client's CPU: time such a run for its profiles only.

On a VM disk the time to create or delete many small files varies by 10x
from run to run (ext4 mounted with C{discard} here): look at the spread.

Installs rsync and openssh-server with apt-get if they are missing.
Everything listens on 127.0.0.1 only and is stopped at the end.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.normpath(os.path.join(HERE, "..", "src"))
sys.path.insert(0, SRC)

import _tools  # noqa: E402
from _tools import free_port  # noqa: E402
from realize.tap.keygen import write_key_pair  # noqa: E402

MiB = 1 << 20

#: The environment of every process started here: this tree's sources.
ENV = {**os.environ, "PYTHONPATH": SRC}


@dataclass
class Result:
    tool: str
    seconds: float
    size: int
    files: int
    rss_client: int  # KiB
    rss_server: int  # KiB
    cpu_client: float = 0.0  # seconds, user + system
    cpu_server: float = 0.0
    allocated: int = 0  # bytes the destination allocates
    note: str = ""

    @property
    def mbps(self) -> float:
        return self.size / self.seconds / 1e6

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds


@dataclass
class Summary:
    """
    The rounds of one tool on one shape in one directory.
    """

    tool: str
    results: list[Result] = field(default_factory=list)

    def median(self, value: Callable[[Result], float]) -> float:
        return statistics.median(value(r) for r in self.results)

    @property
    def seconds(self) -> float:
        return self.median(lambda r: r.seconds)

    @property
    def mbps(self) -> float:
        return self.results[0].size / self.seconds / 1e6

    @property
    def files_per_second(self) -> float:
        return self.results[0].files / self.seconds


TOOLS = (("rsync", "rsync"), ("/usr/sbin/sshd", "openssh-server"))


def ensure_tools() -> None:
    """
    rsync and an sshd (for this bench, bench/repair.py, bench/throttle.py).
    """
    _tools.ensure_tools(TOOLS, also=("openssh-client",))


def compile_sources() -> None:
    """
    Compile the realize sources' bytecode once (as an installed package
    has it), whatever C{PYTHONDONTWRITEBYTECODE} says.
    """
    compileall.compile_dir(os.path.join(SRC, "realize"), quiet=1)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_measured(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[float, int, str, float]:
    """
    Run a command; return its wall time, its peak RSS (KiB), its stderr and
    its CPU seconds (user + system, its children included).

    Dirty data of earlier runs is flushed first (not timed), so that
    each run starts from the same state.
    """
    os.sync()
    started = time.perf_counter()
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or ENV
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    err = process.stderr.read().decode(errors="replace") if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({process.returncode}):\n{err}")
    return seconds, usage.ru_maxrss, err, usage.ru_utime + usage.ru_stime


def peak_rss(pid: int) -> int:
    """
    @return: VmHWM of a running process, KiB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, children: bool = False) -> float:
    """
    @param children: the CPU of its children that ended (and it waited
        for) instead of its own.
    @return: user + system CPU seconds of a running process so far.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """
    @return: a running process and its descendants (realized's worker
        process, L{realize.processes}).
    """
    found = [pid]
    for parent in found:
        with (
            contextlib.suppress(OSError),
            open(f"/proc/{parent}/task/{parent}/children") as f,
        ):
            found.extend(int(child) for child in f.read().split())
    return found


def family_cpu_seconds(pid: int) -> float:
    """
    @return: the CPU seconds (L{cpu_seconds}) of a running process and of
        its running descendants, summed.
    """
    total = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += cpu_seconds(member)
    return total


def family_peak_rss(pid: int) -> int:
    """
    @return: the largest peak RSS (L{peak_rss}, KiB) of a running process
        and its running descendants.
    """
    peaks = [0]
    for member in family(pid):
        with contextlib.suppress(OSError):
            peaks.append(peak_rss(member))
    return max(peaks)


def wait_children(pid: int, timeout: float = 5.0) -> None:
    """
    Wait until a process has no children left.
    """
    deadline = time.monotonic() + timeout
    path = f"/proc/{pid}/task/{pid}/children"
    while time.monotonic() < deadline:
        with open(path) as f:
            if not f.read().strip():
                return
        time.sleep(0.01)


# -- data sets ---------------------------------------------------------------


def make_big(path: str, size_mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))


def make_small(root: str, files: int, dirs: int = 100, size: int = 4096) -> None:
    for i in range(files):
        directory = os.path.join(root, f"d{i % dirs:03d}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{i:06d}"), "wb") as f:
            f.write(os.urandom(size))


#: The sparse file: its size, and where its few bytes are.
SPARSE_SIZE = 2 << 30
SPARSE_OFFSET = 1_000_000_000
SPARSE_DATA = b"hello"


def make_sparse(path: str) -> None:
    with open(path, "wb") as f:
        f.truncate(SPARSE_SIZE)
        f.seek(SPARSE_OFFSET)
        f.write(SPARSE_DATA)


def stdlib_directory() -> str:
    return sysconfig.get_paths()["stdlib"]


def copy_stdlib(target: str) -> None:
    """
    Copy the standard library (symlinks as the files they point to,
    without site-packages) into C{target}.
    """
    shutil.copytree(
        stdlib_directory(),
        target,
        symlinks=False,
        ignore=shutil.ignore_patterns("site-packages", "dist-packages"),
        ignore_dangling_symlinks=True,
        dirs_exist_ok=True,
    )


def link_copy(master: str, target: str) -> None:
    subprocess.run(["cp", "-al", master, target], check=True)


def tree_size(root: str) -> tuple[int, int]:
    size = files = 0
    for directory, _, names in os.walk(root):
        for name in names:
            size += os.path.getsize(os.path.join(directory, name))
            files += 1
    return size, files


def allocated(root: str) -> int:
    """
    @return: bytes the files of a tree allocate on disk.
    """
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


# -- the tools ---------------------------------------------------------------


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
        assert self.process is not None
        # The server side's CPU: the connection's sshd (its crypto) and the
        # remote rsync, children of the listening sshd once they ended.
        before = cpu_seconds(self.process.pid, children=True)
        seconds, rss, _, cpu = run_measured(command, os.environ.copy())
        wait_children(self.process.pid)
        server_cpu = cpu_seconds(self.process.pid, children=True) - before
        with open(f"{self.work}/server-rss") as f:
            server_rss = f.read()
        size, files = tree_size(destination)
        return Result(
            "rsync -a -e ssh",
            seconds,
            size,
            files,
            rss,
            int(server_rss),
            cpu,
            server_cpu,
            allocated(destination),
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
            self.process = None


def forget_arena(datadir: str) -> None:
    """
    Delete the state of the arena at C{datadir} (its index and history, in
    its default workdir C{.<name>.realize} beside it), so that it is
    served as a new arena.  Else a daemon serving the destination of a
    move would start by recording the removal of every file of the
    previous round, while it is timed.
    """
    parent, name = os.path.split(os.path.normpath(datadir))
    shutil.rmtree(os.path.join(parent, f".{name}.realize"), ignore_errors=True)


class Realize:
    """
    A realized on loopback plus the configs and keys to move into it.
    """

    def __init__(self, work: str, py_spy: str | None = None) -> None:
        self.work = os.path.join(work, "realize")
        os.makedirs(self.work)
        #: Where py-spy profiles of both processes go (C{--py-spy}).
        self.py_spy = py_spy
        self.profiles = 0
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
                env=ENV,
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
        spy = None
        prefix: list[str] = []
        if self.py_spy is not None:
            assert self.daemon is not None
            self.profiles += 1
            stem = os.path.join(self.py_spy, f"{self.profiles:02d}")
            record = [_py_spy(), "record", "--gil", "-r", "250", "-f", "raw"]
            spy = subprocess.Popen(
                [*record, "-o", f"{stem}-realized.txt", "--pid", str(self.daemon.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            prefix = [*record, "-o", f"{stem}-move.txt", "--"]
            print(f"      py-spy: {stem}-move.txt, {stem}-realized.txt", flush=True)
        try:
            config = os.path.join(self.work, "a.toml")
            with open(config, "w") as f:
                f.write(
                    f'[peers.a]\npubkey = """{self.pub("a")}"""\n'
                    f'[peers.b]\naddress = "127.0.0.1:{self.port}"\n'
                    f'pubkey = """{self.pub("b")}"""\n'
                    f'[[arena]]\nname = "bench"\ndatadir = "{local}"\n'
                )
            assert self.daemon is not None
            daemon_cpu = family_cpu_seconds(self.daemon.pid)
            seconds, rss, _, cpu = run_measured(
                [
                    *prefix,
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
            server_rss = family_peak_rss(self.daemon.pid)
            server_cpu = family_cpu_seconds(self.daemon.pid) - daemon_cpu
        finally:
            if spy is not None:
                # The daemon's profile ends with the move (not with its
                # stop, whose work is not timed).
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            self.stop()
        target = daemon if dst == "b" else local
        size, files = tree_size(target)
        left = tree_size(source)[1]
        if left:
            raise SystemExit(f"realize-move left {left} files at the source")
        return Result(
            "realize-move",
            seconds,
            size,
            files,
            rss,
            server_rss,
            cpu,
            server_cpu,
            allocated(target),
        )

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(10)
            self.daemon = None


class TlsCeiling:
    """
    The bare Twisted TLS 1.3 transfer of bench/tls_ceiling.py, with the
    realize keys of the bench.
    """

    def __init__(self, realize: Realize) -> None:
        self.keys = realize.work

    def push(self, path: str, blocking: bool = False) -> Result:
        """
        @param blocking: both sides on blocking sockets, no reactor.
        """
        script = os.path.join(HERE, "tls_ceiling.py")
        mode = ["--blocking"] if blocking else []
        size = os.path.getsize(path)
        server = subprocess.Popen(
            [
                sys.executable,
                script,
                "serve",
                "--key",
                os.path.join(self.keys, "b.key"),
                "--peer",
                os.path.join(self.keys, "a.pub"),
                "--bytes",
                str(size),
                *mode,
            ],
            stdout=subprocess.PIPE,
            env=ENV,
        )
        try:
            assert server.stdout is not None
            port = server.stdout.readline().split()[1].decode()
            server_cpu = cpu_seconds(server.pid)
            os.sync()
            started = time.perf_counter()
            client = subprocess.Popen(
                [
                    sys.executable,
                    script,
                    "push",
                    "--key",
                    os.path.join(self.keys, "a.key"),
                    "--peer",
                    os.path.join(self.keys, "b.pub"),
                    "--port",
                    port,
                    *mode,
                    path,
                ],
                stdout=subprocess.PIPE,
                env=ENV,
            )
            assert client.stdout is not None
            out = client.stdout.read().decode()
            _, status, usage = os.wait4(client.pid, 0)
            seconds = time.perf_counter() - started
            server_rss = peak_rss(server.pid)
            server_cpu = cpu_seconds(server.pid) - server_cpu
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        if os.waitstatus_to_exitcode(status) != 0 or "transfer" not in out:
            raise SystemExit(f"tls_ceiling.py failed: {out}")
        transfer = float(out.split()[1])
        return Result(
            "TLS, blocking socket" if blocking else "Twisted TLS alone",
            seconds,
            size,
            1,
            usage.ru_maxrss,
            server_rss,
            usage.ru_utime + usage.ru_stime,
            server_cpu,
            note=f"transfer alone {size / transfer / 1e6:.0f} MB/s",
        )


def _py_spy() -> str:
    """
    @return: the py-spy beside this Python (a virtualenv's), else on the
        C{PATH}.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = beside if os.path.exists(beside) else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--py-spy: py-spy is not installed (pip install py-spy)")
    return found


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


# -- one shape ---------------------------------------------------------------


@dataclass
class Shape:
    name: str
    title: str
    make: Callable[[str], None]
    #: The tools: name and how to run it on (source, destination).
    sparse: bool = False
    ceiling: bool = False
    #: Targets: files/s ratio against rsync -a and rsync's move.
    target_rsync: float | None = None
    target_move: float | None = None
    target_mbps: float | None = None
    max_rss_mib: int | None = None


def shapes(args: argparse.Namespace) -> list[Shape]:
    return [
        Shape(
            "small",
            f"{args.files:,} files of 4 KiB in 100 directories",
            lambda root: make_small(root, args.files),
            target_rsync=1.2,
            target_move=1.0,
        ),
        Shape(
            "stdlib",
            f"the Python standard library ({stdlib_directory()})",
            copy_stdlib,
            target_rsync=1.5,
        ),
        Shape(
            "many",
            f"{args.many_files:,} files of 1 KiB in 1,000 directories",
            lambda root: make_small(root, args.many_files, 1000, 1024),
            target_rsync=1.0,
            max_rss_mib=300,
        ),
        Shape(
            "big",
            f"one {args.size_mib} MiB file",
            lambda root: make_big(os.path.join(root, "big.bin"), args.size_mib),
            ceiling=True,
            target_mbps=1.4,
        ),
        Shape(
            "sparse",
            f"a {SPARSE_SIZE >> 30} GiB sparse file, {len(SPARSE_DATA)} bytes of "
            f"data at offset {SPARSE_OFFSET:,}",
            lambda root: make_sparse(os.path.join(root, "sparse.img")),
            sparse=True,
        ),
    ]


def measure_shape(
    shape: Shape,
    work: str,
    rounds: int,
    sshd: Sshd,
    realize: Realize,
    ceiling: TlsCeiling,
) -> list[Summary]:
    master = fresh(os.path.join(work, f"master-{shape.name}"))
    shape.make(master)
    size, files = tree_size(master)
    print(
        f"\n{shape.title}: {files:,} files, {size / 1e6:,.1f} MB, in {work}",
        flush=True,
    )
    source = os.path.join(work, "source")

    def linked() -> str:
        if os.path.exists(source):
            fresh(source)
            os.rmdir(source)
        link_copy(master, source)
        return source

    def destination(name: str) -> str:
        return fresh(os.path.join(work, name))

    def new_arena(name: str) -> str:
        forget_arena(os.path.join(work, name))
        return destination(name)

    runs: list[tuple[str, Callable[[], Result]]] = [
        ("realize-move", lambda: realize.move(linked(), new_arena("dst-realize")))
    ]
    if shape.sparse:
        runs += [
            (
                "rsync -a -S",
                lambda: sshd.rsync(master, destination("dst-rsync"), ["-S"]),
            ),
            (
                "rsync --sparse --inplace",
                lambda: sshd.rsync(
                    master, destination("dst-rsync-inplace"), ["--sparse", "--inplace"]
                ),
            ),
        ]
    else:
        runs += [
            ("rsync -a -e ssh", lambda: sshd.rsync(master, destination("dst-rsync"))),
            (
                "rsync (moving)",
                lambda: sshd.rsync(
                    linked(),
                    destination("dst-rsync-move"),
                    ["--remove-source-files"],
                ),
            ),
        ]
    if shape.ceiling:
        big = os.path.join(master, "big.bin")
        runs.append(("Twisted TLS alone", lambda: ceiling.push(big)))
        runs.append(("TLS, blocking socket", lambda: ceiling.push(big, blocking=True)))
    summaries = {name: Summary(name) for name, _ in runs}
    for number in range(rounds):
        print(f"  round {number + 1}/{rounds}, {load()}", flush=True)
        shift = number % len(runs)
        for name, run in runs[shift:] + runs[:shift]:
            result = replace(run(), tool=name)
            summaries[name].results.append(result)
            print(
                f"    {name:<26}{result.seconds:>8.2f} s  cpu "
                f"{result.cpu_client:.2f} + {result.cpu_server:.2f} s",
                flush=True,
            )
    return list(summaries.values())


def report(shape: Shape, summaries: list[Summary]) -> None:
    print(
        f"\n  {'tool':<26}{'min':>7}{'median':>8}{'max':>7}{'MB/s':>8}"
        f"{'files/s':>9}{'cpu cl+srv':>12}{'RSS cl/srv MiB':>16}"
        + ("  allocated" if shape.sparse else "")
    )
    for s in summaries:
        seconds = [r.seconds for r in s.results]
        rss = f"{max(r.rss_client for r in s.results) // 1024}/" + str(
            max(r.rss_server for r in s.results) // 1024
        )
        cpu = (
            f"{s.median(lambda r: r.cpu_client):.2f}+"
            f"{s.median(lambda r: r.cpu_server):.2f}"
        )
        line = (
            f"  {s.tool:<26}{min(seconds):>7.2f}{s.seconds:>8.2f}{max(seconds):>7.2f}"
            f"{s.mbps:>8.1f}{s.files_per_second:>9.0f}{cpu:>12}{rss:>16}"
        )
        if shape.sparse:
            line += f"  {max(r.allocated for r in s.results) / MiB:,.1f} MiB"
        if s.results[0].note:
            line += f"  ({s.results[0].note})"
        print(line)
    ours = summaries[0]
    by_name = {s.tool: s for s in summaries}
    lines = []
    if shape.sparse:
        for name in ("rsync -a -S", "rsync --sparse --inplace"):
            lines.append(
                f"{ours.seconds / by_name[name].seconds:.2f}x the time of {name}"
            )
    else:
        rsync = by_name["rsync -a -e ssh"]
        moving = by_name["rsync (moving)"]
        ratio = ours.files_per_second / rsync.files_per_second
        target = f" (target >= {shape.target_rsync}x)" if shape.target_rsync else ""
        if shape.target_mbps:
            ratio = ours.mbps / rsync.mbps
            target = f" (target >= {shape.target_mbps}x)"
        lines.append(f"{ratio:.2f}x rsync -a{target}")
        ratio = ours.files_per_second / moving.files_per_second
        target = f" (target >= {shape.target_move}x)" if shape.target_move else ""
        lines.append(f"{ratio:.2f}x rsync --remove-source-files{target}")
    if shape.ceiling:
        bare = by_name["Twisted TLS alone"]
        lines.append(
            f"{ours.mbps / bare.mbps:.0%} of the bare TLS transfer, end to end "
            "(target >= 80%)"
        )
        blocking = by_name["TLS, blocking socket"]
        lines.append(f"{ours.mbps / blocking.mbps:.0%} of TLS on a blocking socket")
    if shape.max_rss_mib:
        worst = max(max(r.rss_client, r.rss_server) for r in ours.results) // 1024
        lines.append(f"peak RSS {worst} MiB (target <= {shape.max_rss_mib} MiB)")
    print("  ours, medians: " + "; ".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        default="small,stdlib,many,big,sparse",
        help="comma-separated: small, stdlib, many, big, sparse",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dir",
        action="append",
        help="where to put the data, may be repeated (default: /dev/shm and "
        "$TMPDIR, i.e. tmpfs and the disk)",
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--many-files", type=int, default=100_000)
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        help="profile realize-move and realized of every move with py-spy "
        "(--gil, raw collapsed stacks, 250 Hz) into DIR; it slows them: "
        "the timings of such a run are not the ones to report",
    )
    args = parser.parse_args()
    if args.py_spy is not None:
        _py_spy()
        os.makedirs(args.py_spy, exist_ok=True)
    wanted = args.shapes.split(",")
    chosen = [s for s in shapes(args) if s.name in wanted]
    if len(chosen) != len(wanted):
        raise SystemExit(f"unknown shape in {args.shapes!r}")
    ensure_tools()
    compile_sources()
    print(f"{os.cpu_count()} CPUs, {load()}")
    results: list[tuple[str, Shape, list[Summary]]] = []
    for directory in args.dir or ["/dev/shm", tempfile.gettempdir()]:
        work = tempfile.mkdtemp(prefix="realize-bench-", dir=directory)
        sshd = Sshd(work)
        realize = Realize(work, args.py_spy)
        try:
            sshd.start()
            for shape in chosen:
                summaries = measure_shape(
                    shape, work, args.rounds, sshd, realize, TlsCeiling(realize)
                )
                results.append((directory, shape, summaries))
                report(shape, summaries)
        finally:
            realize.stop()
            sshd.stop()
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nSummary ({args.rounds} rounds, {load()}):")
    for directory, shape, summaries in results:
        print(f"\n{shape.title}, in {directory}:")
        report(shape, summaries)
    print(
        "\nRSS: peak resident set; client = realize-move / local rsync, "
        "server = realized (the largest of it and its worker process) / remote "
        "rsync.  CPU: user + system seconds (realized's with its worker's)."
    )


if __name__ == "__main__":
    main()
