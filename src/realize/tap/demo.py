"""
C{realize-demo}: the main job on an embedded default.

In a temporary directory: generates keys for two peers, C{a} (this side)
and C{b} (a daemon), writes their configs, starts C{realized} for C{b} on
127.0.0.1, generates a tree of real files in C{a}'s arena, runs
C{realize-move --src local --dst b} with progress shown, checks that every
file arrived identical and the source was emptied.  Then it shows the
Unreal: a second, pure-Unreal C{realized} for peer C{c} (no datadir, a FUSE
mount) connects to C{b}, lists the moved tree through its mount, reads a
few files back through it (downloaded from C{b} on demand, verified) and
checks their hashes.  Finally it unmounts, stops both daemons and removes
the directory (unless C{--keep}).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from realize.tap.keygen import write_key_pair

__all__ = ["main"]


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def make_tree(root: str, big_mib: int) -> dict[str, str]:
    """
    Write a tree of files with random content.

    @param root: where.
    @param big_mib: size of the one large file, MiB.
    @return: relative path to SHA-256 of the content.
    """
    names = {
        "README.txt": b"files moved by realize-demo\n",
        "empty file": b"",
        "photos/2026/beach: sunset.jpg": os.urandom(3 << 20),
        "photos/2026/fête d'été.jpg": os.urandom(2 << 20),
        "videos/big.bin": b"",
    }
    for i in range(200):
        names[f"notes/{i // 50:02d}/note {i:03d}.txt"] = os.urandom((i * 997) % 20_000)
    digests = {}
    for path, content in names.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        digest = hashlib.sha256()
        with open(full, "wb") as f:
            if path == "videos/big.bin":
                for _ in range(big_mib):
                    chunk = os.urandom(1 << 20)
                    f.write(chunk)
                    digest.update(chunk)
            else:
                f.write(content)
                digest.update(content)
        digests[path] = digest.hexdigest()
    return digests


def tree_digests(root: str) -> dict[str, str]:
    """
    @return: relative path to SHA-256 of every regular file under C{root}.
    """
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            full = os.path.join(directory, name)
            digest = hashlib.sha256()
            with open(full, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            found[os.path.relpath(full, root)] = digest.hexdigest()
    return found


def _wait_listening(log_path: str, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    pattern = re.compile(r"listening on [^\s]*:(\d+)")
    while time.monotonic() < deadline:
        with open(log_path, errors="replace") as f:
            match = pattern.search(f.read())
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.1)
    with open(log_path, errors="replace") as f:
        sys.stderr.write(f.read())
    raise SystemExit("realize-demo: realized did not start (its log is above)")


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{realize-demo} console script.
    """
    parser = argparse.ArgumentParser(
        prog="realize-demo",
        description="Start a realized on 127.0.0.1 with generated keys and "
        "move a generated tree of files into it with realize-move.",
    )
    parser.add_argument(
        "--big-mib", type=int, default=256, help="size of the large file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the directory")
    parser.add_argument(
        "--output", default="auto", help="realize-move --output (progress, log, quiet)"
    )
    args = parser.parse_args(argv)

    root = tempfile.mkdtemp(prefix="realize-demo-")
    daemon: subprocess.Popen[bytes] | None = None
    code = 1
    try:
        keys = os.path.join(root, "keys")
        os.makedirs(keys)
        _say(f"keys for peers a (this side) and b (the daemon) in {keys}")
        for name in ("a", "b", "c"):
            write_key_pair(keys, name)
        pub = {}
        for name in ("a", "b", "c"):
            with open(os.path.join(keys, f"{name}.pub")) as f:
                pub[name] = f.read()
        source = os.path.join(root, "a", "demo")
        destination = os.path.join(root, "b", "demo")
        os.makedirs(source)
        os.makedirs(destination)
        b_config = os.path.join(root, "b.toml")
        with open(b_config, "w") as f:
            f.write(
                f'[peers.a]\npubkey = """{pub["a"]}"""\n\n'
                f'[peers.b]\npubkey = """{pub["b"]}"""\n\n'
                f'[peers.c]\npubkey = """{pub["c"]}"""\n\n'
                f'[[arena]]\nname = "demo"\ndatadir = "{destination}"\n'
            )
        log_path = os.path.join(root, "realized.log")
        _say("starting realized for b on 127.0.0.1")
        with open(log_path, "wb") as log:
            daemon = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "realize.tap.realized",
                    "--config",
                    b_config,
                    "--privkey",
                    os.path.join(keys, "b.key"),
                    "--listen",
                    "tcp:0:interface=127.0.0.1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        port = _wait_listening(log_path, daemon)
        _say(f"realized is listening on 127.0.0.1:{port} (log: {log_path})")
        a_config = os.path.join(root, "a.toml")
        with open(a_config, "w") as f:
            f.write(
                f'[peers.a]\npubkey = """{pub["a"]}"""\n\n'
                f'[peers.b]\naddress = "127.0.0.1:{port}"\n'
                f'pubkey = """{pub["b"]}"""\n\n'
                f'[[arena]]\nname = "demo"\ndatadir = "{source}"\n'
            )
        _say(f"generating files in {source}")
        expected = make_tree(source, args.big_mib)
        size = sum(os.path.getsize(os.path.join(source, p)) for p in expected)
        _say(f"{len(expected)} files, {size / (1 << 20):.1f} MiB; moving them to b")
        command = [
            sys.executable,
            "-m",
            "realize.tap.move",
            "--src",
            "local",
            "--dst",
            "b",
            "--config",
            a_config,
            "--privkey",
            os.path.join(keys, "a.key"),
            "--output",
            args.output,
            "demo",
        ]
        print("$ realize-move " + " ".join(command[3:]), flush=True)
        code = subprocess.run(command).returncode
        _say(f"realize-move exited {code}")
        arrived = tree_digests(destination)
        viewer = None
        left = tree_digests(source)
        if arrived == expected and not left:
            _say(
                f"verified: all {len(expected)} files arrived identical; "
                "source is empty"
            )
        else:
            missing = sorted(set(expected) - set(arrived))
            wrong = sorted(p for p in arrived if expected.get(p) != arrived[p])
            _say(
                f"MISMATCH: {len(missing)} missing, {len(wrong)} different, "
                f"{len(left)} left at the source"
            )
            code = code or 1
        if code == 0:
            viewer = _start_unreal(root, keys, pub, port)
            if viewer is not None:
                code = _show_unreal(root, expected)
    finally:
        if viewer is not None:
            _stop(viewer, "the Unreal's realized stopped, its mount unmounted")
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            _say("realized stopped")
        if args.keep:
            _say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(code)


def _stop(process: subprocess.Popen[bytes], message: str) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _say(message)


def _start_unreal(
    root: str, keys: str, pub: dict[str, str], port: int
) -> subprocess.Popen[bytes] | None:
    """
    Start peer c: a pure-Unreal realized (workdir only) that dials b and
    mounts the view at C{root}/c/view.

    @return: the process, or C{None} if this machine cannot mount FUSE.
    """
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        _say("no FUSE here (/dev/fuse or fusermount3 missing): the Unreal is skipped")
        return None
    mountpoint = os.path.join(root, "c", "view")
    workdir = os.path.join(root, "c", "work")
    os.makedirs(mountpoint)
    c_config = os.path.join(root, "c.toml")
    with open(c_config, "w") as f:
        f.write(
            f'[peers.a]\npubkey = """{pub["a"]}"""\n\n'
            f'[peers.b]\naddress = "127.0.0.1:{port}"\n'
            f'pubkey = """{pub["b"]}"""\n\n'
            f'[peers.c]\npubkey = """{pub["c"]}"""\n\n'
            f'[[arena]]\nname = "demo"\nworkdir = "{workdir}"\n'
        )
    log_path = os.path.join(root, "realized-c.log")
    _say(f"starting a pure-Unreal realized for c, its FUSE view at {mountpoint}")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "realize.tap.realized",
                "--config",
                c_config,
                "--privkey",
                os.path.join(keys, "c.key"),
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--statedir",
                os.path.join(root, "c"),
                "--fuse",
                mountpoint,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    _wait_listening(log_path, process)
    return process


def _show_unreal(root: str, expected: dict[str, str]) -> int:
    """
    List the moved tree through c's mount, read some files back, check.

    @return: 0 if the view showed every file and the files read matched.
    """
    view = os.path.join(root, "c", "view", "demo")
    deadline = time.monotonic() + 30
    listed: set[str] = set()
    while time.monotonic() < deadline:
        listed = set()
        for directory, _, files in os.walk(view):
            listed.update(
                os.path.relpath(os.path.join(directory, n), view) for n in files
            )
        if listed == set(expected):
            break
        time.sleep(0.2)
    _say(f"the Unreal lists {len(listed)} of {len(expected)} files under {view}:")
    subprocess.run(["ls", "-l", view, os.path.join(view, "photos", "2026")])
    if listed != set(expected):
        _say("MISMATCH: the view does not list the moved tree")
        return 1
    sample = ["README.txt", "photos/2026/beach: sunset.jpg", "notes/01/note 077.txt"]
    for path in sample:
        digest = hashlib.sha256()
        with open(os.path.join(view, path), "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        status = os.getxattr(os.path.join(view, path), "user.realize.status").decode()
        if digest.hexdigest() != expected[path]:
            _say(f"MISMATCH: {path} read through the view differs")
            return 1
        _say(f"read {path!r} through the view: identical ({status})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
