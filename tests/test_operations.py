"""
Integration tests of operating realize (issue 5): metrics endpoints of the
daemon and of realize-move, the push to a real Pushgateway, SIGHUP reload,
and the realize.auth log events, all through the real processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent

from .integration import Household, make_tree, read_tree
from .test_web import free_port, start_pushgateway

METRICS = re.compile(rb"serving metrics on [^\s]*:(\d+)")


async def http_get(url: str) -> tuple[int, str]:
    """
    @return: the status and body of a GET.
    """
    response = await HTTPClient(Agent(reactor)).get(url)
    body = await response.content()
    return response.code, body.decode("utf-8", "replace")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    @return: every sample of a Prometheus exposition, by name and labels.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def promtool_check(case: TestCase, text: str) -> None:
    """
    Check an exposition with C{promtool check metrics} when it is installed.
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    case.assertEqual(result.returncode, 0, result.stdout + result.stderr)


async def wait_for(condition: object, what: str, seconds: float = 10) -> None:
    """
    Poll a condition on the reactor until it is true.
    """
    for _ in range(int(seconds * 20)):
        if condition():  # type: ignore[operator]
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


class DaemonMetricsTests(TestCase):
    """
    realized --metrics-addr.
    """

    timeout = 60

    async def test_metrics_endpoint(self) -> None:
        """
        /metrics answers 200 with process and realize series (connections,
        commands, bytes and files of a move that just ran); any other path
        answers 401; promtool accepts the output.
        """
        household = Household(self)
        files = make_tree(household.source, big=2 << 20)
        await household.start_daemon("--metrics-addr", "127.0.0.1:0")
        assert household.daemon is not None
        await wait_for(
            lambda: METRICS.search(household.daemon.out),  # type: ignore[union-attr]
            "the metrics port",
        )
        match = METRICS.search(household.daemon.out)
        assert match is not None
        base = f"http://127.0.0.1:{int(match.group(1))}"
        run = await household.move("docs")
        self.assertEqual(run.code, 0, run)
        code, text = await http_get(base + "/metrics")
        self.assertEqual(code, 200)
        self.assertIn("process_cpu_seconds_total", text)
        found = samples(text)
        finished = sum(
            value
            for (name, labels), value in found.items()
            if name == "realize_files_finished_total" and ("arena", "docs") in labels
        )
        self.assertEqual(finished, len(files))
        commands = {
            dict(labels).get("command")
            for (name, labels), _ in found.items()
            if name == "realize_store_commands_total"
        }
        self.assertTrue({"Arenas", "List", "WriteFiles"} <= commands, commands)
        promtool_check(self, text)
        for path in ("/", "/other", "/metrics/x"):
            code, _ = await http_get(base + path)
            self.assertEqual(code, 401, path)


class MoveMetricsTests(TestCase):
    """
    realize-move --metrics-addr and --metrics-pushgateway.
    """

    timeout = 90

    async def test_pull_while_running(self) -> None:
        """
        While a (throttled) move runs, its /metrics shows realize_move_up 1
        and process series; promtool accepts it.
        """
        household = Household(self)
        with open(os.path.join(household.source, "slow.bin"), "wb") as f:
            f.write(os.urandom(1 << 20))
        await household.start_daemon()
        port = free_port()
        running = household.move(
            "docs", "--throttle-up", "256k", "--metrics-addr", f"127.0.0.1:{port}"
        )
        text = ""
        for _ in range(100):
            try:
                code, text = await http_get(f"http://127.0.0.1:{port}/metrics")
            except Exception:
                await deferLater(reactor, 0.05, lambda: None)
                continue
            if code == 200:
                break
        self.assertIn("realize_move_up 1.0", text)
        self.assertIn("process_resident_memory_bytes", text)
        promtool_check(self, text)
        run = await running
        self.assertEqual(run.code, 0, run)

    async def test_push_refused(self) -> None:
        """
        A move that succeeds but cannot push its metrics exits 12 and says
        why; the files moved.
        """
        household = Household(self)
        files = make_tree(household.source, big=1000)
        await household.start_daemon()
        run = await household.move(
            "docs", "--metrics-pushgateway", f"http://127.0.0.1:{free_port()}"
        )
        self.assertEqual(run.code, 12, run)
        self.assertIn("metrics not pushed", run.err)
        self.assertEqual(read_tree(household.destination), files)

    async def test_push_to_pushgateway(self) -> None:
        """
        A real Pushgateway receives the final metrics under the job and
        instance given, and they read back from it.
        """
        url = await start_pushgateway(self)
        household = Household(self)
        files = make_tree(household.source, big=1000)
        await household.start_daemon()
        run = await household.move(
            "docs",
            "--metrics-pushgateway",
            url,
            "--metrics-job",
            "nightly",
            "--metrics-instance",
            "laptop",
        )
        self.assertEqual(run.code, 0, run)
        _, text = await http_get(url + "/metrics")
        found = samples(text)
        moved = sum(
            value
            for (name, labels), value in found.items()
            if name == "realize_move_files_total"
            and ("job", "nightly") in labels
            and ("instance", "laptop") in labels
            and ("status", "moved") in labels
        )
        self.assertEqual(moved, len(files))
        self.assertIn(
            (
                "realize_move_success",
                (("instance", "laptop"), ("job", "nightly")),
            ),
            found,
        )


class ReloadTests(TestCase):
    """
    SIGHUP makes realized re-read its config and key.
    """

    timeout = 60

    def hup(self, household: Household) -> None:
        household.daemon_transport.signalProcess("HUP")

    async def test_add_arena_and_survive_broken_config(self) -> None:
        """
        An arena added to the config is served after SIGHUP without a
        restart; a config that fails to parse is logged and the old one
        stays in force.
        """
        household = Household(self)
        await household.start_daemon()
        daemon = household.daemon
        assert daemon is not None
        extra = os.path.join(household.root, "b-extra")
        os.makedirs(extra)
        household.daemon_config(f'[[arena]]\nname = "extra"\ndatadir = "{extra}"\n')
        self.hup(household)
        await wait_for(lambda: b"reloaded" in daemon.out, "the reload")
        household.arena = "extra"
        files = make_tree(household.source, big=1000)
        run = await household.move("extra")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(read_tree(extra), files)

        household.write_config("b.toml", "this is not = = toml")
        self.hup(household)
        await wait_for(lambda: b"config not reloaded" in daemon.out, "the refusal")
        files = make_tree(household.source, big=1000)
        run = await household.move("extra")
        self.assertEqual(run.code, 0, run)
        self.assertEqual(await household.stop_daemon(), -15)

    async def test_remove_peer(self) -> None:
        """
        A peer removed from the config by a reload has its open connection
        closed and cannot connect again.
        """
        household = Household(self)
        with open(os.path.join(household.source, "slow.bin"), "wb") as f:
            f.write(os.urandom(2 << 20))
        await household.start_daemon()
        daemon = household.daemon
        assert daemon is not None
        running = household.move("docs", "--throttle-up", "128k")
        await wait_for(lambda: b"authenticated a at" in daemon.out, "the client")
        household.write_config(
            "b.toml",
            f'[peers.b]\npubkey = """{household.pub("b")}"""\n'
            f'[[arena]]\nname = "docs"\ndatadir = "{household.destination}"\n',
        )
        self.hup(household)
        run = await running
        self.assertEqual(run.code, 1, run)
        self.assertIn(b"closing the connection of a", daemon.out)
        run = await household.move("docs")
        self.assertEqual(run.code, 1, run)
        self.assertIn("refused our key", run.err)


class AuthLogTests(TestCase):
    """
    Connection attempts and TLS/auth decisions in realize.auth.
    """

    timeout = 60

    async def test_rejection_as_json(self) -> None:
        """
        With --log-format json --log-namespace realize.auth,realize.daemon,
        the daemon logs only those namespaces (the daemon's own to say it
        listens), one JSON object a line; a rejection carries the address
        and the reason.
        """
        household = Household(self)
        await household.start_daemon(
            "--log-format", "json", "--log-namespace", "realize.auth,realize.daemon"
        )
        run = await household.move("docs", key="stranger")
        self.assertEqual(run.code, 1, run)
        daemon = household.daemon
        assert daemon is not None
        await wait_for(lambda: b"unknown key" in daemon.out, "the rejection")
        events = [
            json.loads(line)
            for line in daemon.out.decode().splitlines()
            if line.startswith("{")
        ]
        namespaces = {event["log_namespace"] for event in events}
        self.assertEqual(namespaces, {"realize.auth", "realize.daemon"})
        [rejection] = [e for e in events if e.get("reason") == "unknown key"]
        self.assertEqual(rejection["accepted"], False)
        self.assertTrue(rejection["address"].startswith("127.0.0.1:"))
        self.assertEqual(rejection["log_level"], "warn")
