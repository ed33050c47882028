"""
The history end to end (issue 9): a real C{realized} with a datadir, its
watcher fed by inotify, observed from outside with C{realize-history}
(from a peer over TLS, and C{--peer local}).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.integration import REALIZE_MOVE, Running, run_command
from tests.peers import REALIZE_HISTORY, Peers, eventually, free_port


def parse(out: bytes | str) -> list[dict[str, Any]]:
    text = out.decode() if isinstance(out, bytes) else out
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def seen(running: Running, wanted: tuple[str, str], seconds: float = 15) -> None:
    """
    Wait until a following realize-history printed the change C{wanted}
    (C{(kind, path)}).
    """
    await eventually(
        lambda: wanted in changes(parse(running._collector.out)),
        seconds,
        f"{wanted} printed",
    )


def kinds(notes: list[dict[str, Any]]) -> list[str]:
    return [n["kind"] for n in notes]


def changes(notes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """
    @return: C{(kind, path)} of the history entries among notifications.
    """
    return [
        (n["kind"], n["path"])
        for n in notes
        if n["kind"] in ("add", "replace", "remove", "drop")
    ]


class HistoryIntegrationTests(TestCase):
    """
    b records what happens in its datadir; a sees it with realize-history.
    """

    timeout = 120

    def setUp(self) -> None:
        self.peers = Peers(self)
        self.a = self.peers.add("a", listens=False, datadir=False)
        self.b = self.peers.add("b")

    def follow(self) -> Running:
        running = Running(
            [
                *REALIZE_HISTORY,
                "--config",
                self.a.config(),
                "--privkey",
                self.a.key,
                "--peer",
                "b",
                "--follow",
                self.peers.arena,
            ]
        )
        self.addCleanup(running.kill)
        return running

    def test_changes_followed(self) -> None:
        """
        Files and directories created, modified, renamed and deleted in b's
        datadir arrive at a following subscriber as the right
        notifications, and SIGINT ends it with exit code 20.
        """

        async def go() -> None:
            self.b.write("keep.txt", b"kept")
            await self.b.start()
            running = self.follow()
            await eventually(
                lambda: b'"catchup_complete"' in running._collector.out,
                15,
                "catch-up printed",
            )
            datadir = self.b.datadir
            assert datadir is not None
            self.b.write("new.txt", b"one")
            await seen(running, ("add", "new.txt"))
            self.b.write("new.txt", b"two!")
            await seen(running, ("replace", "new.txt"))
            os.rename(
                os.path.join(datadir, "new.txt"), os.path.join(datadir, "moved.txt")
            )
            self.b.write("tree/deep/x.txt", b"x")
            await seen(running, ("add", "tree/deep/x.txt"))
            await seen(running, ("add", "moved.txt"))
            shutil.rmtree(os.path.join(datadir, "tree"))
            await seen(running, ("remove", "tree/deep/x.txt"))
            running.signal("INT")
            run = await running.ended
            self.assertEqual(run.code, 20, run)
            notes = parse(run.out)
            self.assertEqual(notes[0]["kind"], "connected")
            self.assertEqual(
                changes(notes)[:2], [("add", "new.txt"), ("replace", "new.txt")]
            )
            self.assertEqual(len(changes(notes)), 6)
            kinds = {(k, p) for k, p in changes(notes)}
            self.assertIn(("remove", "new.txt"), kinds)
            self.assertIn(("add", "moved.txt"), kinds)
            self.assertIn(("remove", "tree/deep/x.txt"), kinds)
            replace = next(n for n in notes if n["kind"] == "replace")
            added = next(n for n in notes if n["kind"] == "add")
            self.assertEqual(replace["old_hash"], added["hash"])
            self.assertTrue(replace["hash"].startswith("blake3m:"))
            removed = [n for n in notes if n["kind"] == "remove"]
            self.assertTrue(all("mtime_ns" in n for n in removed))

        return Deferred.fromCoroutine(go())

    def test_restart_after_kill(self) -> None:
        """
        After kill -9 of the daemon and changes made while it is down, a
        subscriber resuming from its last position sees exactly those
        changes, and nothing else.
        """

        async def go() -> None:
            for name in ("stays.txt", "changes.txt", "goes.txt"):
                self.b.write(name, b"1")
            await self.b.start()
            indexed = await eventually(
                lambda: (lambda n: n if kinds(n).count("catchup") == 3 else None)(
                    parse(local_history(self.b))
                ),
                15,
                "the three files indexed",
            )
            uuid, position = indexed[0]["uuid"], indexed[0]["position"]
            await self.b.stop(kill=True)
            datadir = self.b.datadir
            assert datadir is not None
            self.b.write("changes.txt", b"changed while down")
            os.unlink(os.path.join(datadir, "goes.txt"))
            self.b.write("came.txt", b"new while down")
            await self.b.start()
            resumed = await eventually(
                lambda: (lambda c: c if len(c) >= 3 else None)(
                    changes(parse(local_history(self.b, f"{uuid}:{position}")))
                ),
                15,
                "the three changes recorded",
            )
            self.assertEqual(
                sorted(resumed),
                [
                    ("add", "came.txt"),
                    ("remove", "goes.txt"),
                    ("replace", "changes.txt"),
                ],
            )

        return Deferred.fromCoroutine(go())

    def test_move_recorded_without_hashing(self) -> None:
        """
        A file that realize-move finished on the daemon is recorded with
        the mover's root, from the store's change hook: the daemon's
        metrics count it as known from the store, and no file as hashed.
        """

        async def go() -> None:
            metrics_port = free_port()
            await self.b.start("--metrics-addr", f"127.0.0.1:{metrics_port}")
            source = os.path.join(self.peers.root, "source")
            os.makedirs(source)
            with open(os.path.join(source, "moved.bin"), "wb") as f:
                f.write(os.urandom(3 << 20))
            with open(os.path.join(source, "small.txt"), "wb") as f:
                f.write(b"small")
            run = await run_command(
                [
                    *REALIZE_MOVE,
                    "--src",
                    f"local:{source}",
                    "--dst",
                    "b",
                    "--config",
                    self.a.config(),
                    "--privkey",
                    self.a.key,
                    "--output",
                    "log",
                    self.peers.arena,
                ]
            )
            self.assertEqual(run.code, 0, run)

            def recorded() -> dict[str, float]:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                text = urllib.request.urlopen(url, timeout=5).read().decode()
                found = {}
                for line in text.splitlines():
                    if line.startswith("realize_watcher_files_recorded_total{"):
                        source_label = line.split('source="')[1].split('"')[0]
                        found[source_label] = float(line.rsplit(" ", 1)[1])
                return found

            counts = await eventually(
                lambda: (lambda c: c if c.get("store", 0) >= 2 else None)(recorded()),
                10,
                "the moved files recorded from the store",
            )
            self.assertEqual(counts.get("hashed", 0), 0)
            history = await self.b.history()
            notes = {n["path"]: n for n in parse(history.out) if "path" in n}
            self.assertEqual(set(notes), {"moved.bin", "small.txt"})
            self.assertTrue(notes["moved.bin"]["hash"].startswith("blake3m:"))

        return Deferred.fromCoroutine(go())


def local_history(peer: Any, start: str | None = None) -> bytes:
    """
    Run C{realize-history --peer local} to its end (blocking: call in a
    thread).

    @param start: C{UUID:POSITION} to resume from, or C{None}.
    @return: what it printed.
    """
    args = ["--from", start] if start else []
    return subprocess.run(
        [
            *REALIZE_HISTORY,
            "--config",
            peer.config(),
            "--peer",
            "local",
            *args,
            peer.peers.arena,
        ],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout


class ArenaIdentityIntegrationTests(TestCase):
    """
    realize-move refuses to move an arena onto itself under two names.
    """

    timeout = 60

    def test_same_store_refused(self) -> None:
        """
        Moving b's arena, read locally from its datadir, into the daemon
        serving that same datadir is refused with exit 1 and a message
        naming the uuid; nothing is deleted.
        """

        async def go() -> None:
            peers = Peers(self)
            peers.add("a", listens=False, datadir=False)
            b = peers.add("b")
            b.write("precious.txt", b"only copy")
            await b.start()
            await b.wait_log(b"scanned . (start)")
            run = await run_command(
                [
                    *REALIZE_MOVE,
                    "--src",
                    "local",
                    "--dst",
                    "b",
                    "--config",
                    b.config(),
                    "--privkey",
                    os.path.join(peers.keys, "a.key"),
                    "--output",
                    "log",
                    peers.arena,
                ]
            )
            self.assertEqual(run.code, 1, run)
            self.assertIn("same arena store", run.err)
            assert b.datadir is not None
            with open(os.path.join(b.datadir, "precious.txt"), "rb") as f:
                self.assertEqual(f.read(), b"only copy")

        return Deferred.fromCoroutine(go())
