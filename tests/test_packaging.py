"""
packaging/ and docs/operations.md stay true to the code: the sample config
parses, the systemd units are valid and socket-activated, the Grafana
dashboard queries metrics that exist (and parse, when C{promtool} is
installed), and the operations guide lists every metric, config key and
option.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from realize.config import load_config
from realize.metrics import (
    CacheMetrics,
    ConsensusMetrics,
    DaemonMetrics,
    MoveMetrics,
    make_registry,
)

ROOT = Path(__file__).parent.parent
PACKAGING = ROOT / "packaging"
DOCS = ROOT / "docs"

UNITS = [
    "realized.socket",
    "realized.service",
    "realize-move@.service",
    "realize-move@.timer",
]


def both_registries() -> CollectorRegistry:
    """
    @return: a registry with the metrics of both programs.
    """
    registry = make_registry()
    DaemonMetrics(registry)
    MoveMetrics(registry)
    ConsensusMetrics(registry)
    CacheMetrics(registry)
    return registry


def realize_families() -> dict[str, str]:
    """
    @return: the realize metrics as documented (counters with C{_total},
        info with C{_info}), with their types.
    """
    names = {}
    for family in both_registries().collect():
        if not family.name.startswith("realize_"):
            continue
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names[family.name + suffix] = family.type
    return names


def sample_names() -> set[str]:
    """
    @return: every series name the registries can show, once each metric
        has a sample.
    """
    registry = make_registry()
    daemon = DaemonMetrics(registry)
    move = MoveMetrics(registry)
    consensus = ConsensusMetrics(registry)
    consensus.job("x", "realize", "done")
    consensus.event("x", "queued")
    consensus.connection("a", "connect")
    consensus.moved("x", 1, 1)
    consensus.downloaded("x", 1)
    daemon.connection_opened("a")
    daemon.command_done("Read", 0.1, None)
    daemon.transferred("x", "copy", "read", 1)
    daemon.delta_saved("x", 1)
    daemon.file_finished("x")
    daemon.file_deleted("x")
    daemon.hashed("x", 0.1, 1)
    move.listed("x", 1, 1)
    move.file_done("x", "moved")
    cache = CacheMetrics(registry)
    cache.state("x", {"working": 1}, {"working": 1}, 10, 10)
    cache.read("x", True, 1)
    cache.fetched("x", 1)
    cache.not_kept("x", 1)
    cache.released("x", 1)
    cache.evicted("x", "working", "quota")
    cache.evicted("x", "pending_removal", "pending")
    cache.admitted("x", "mark")
    cache.fixed("x", missing=1)
    return {sample.name for family in registry.collect() for sample in family.samples}


def unit(name: str) -> dict[str, list[str]]:
    """
    @return: the settings of a unit file, C{"Section.Key"} to values, with
        continuation lines joined.
    """
    settings: dict[str, list[str]] = {}
    section = ""
    text = (PACKAGING / name).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(
            " ".join(value.split())
        )
    return settings


class SampleConfigTests(SynchronousTestCase):
    """
    packaging/realize.toml.sample.
    """

    def test_parses(self) -> None:
        """
        The sample is a valid config using every section.
        """
        config = load_config(PACKAGING / "realize.toml.sample")
        self.assertEqual(sorted(config.peers), ["laptop", "nas"])
        self.assertEqual(config.peers["nas"].address, ("nas.home.example", 9771))
        self.assertEqual(sorted(config.arenas), ["documents/2024", "photos"])
        self.assertEqual(config.arenas["photos"].mark, "own")
        self.assertEqual(config.cache.size_bytes, 20 << 30)
        self.assertEqual(config.limits.throttle_up, 10 << 20)

    def test_every_key(self) -> None:
        """
        The sample shows every key the config reader knows (some commented
        out).
        """
        text = (PACKAGING / "realize.toml.sample").read_text()
        for key in config_keys() | config_sections():
            self.assertTrue(
                re.search(rf"^#?\[*{key}\b", text, re.M),
                f"{key} is not in realize.toml.sample",
            )


def config_sections() -> set[str]:
    """
    @return: the top-level tables read by L{realize.config}, from its
        source.
    """
    source = (ROOT / "src" / "realize" / "config.py").read_text()
    return set(re.findall(r'\btop\.take\("(\w+)"', source))


def config_keys() -> set[str]:
    """
    @return: the keys of the tables read by L{realize.config}, from its
        source.
    """
    source = (ROOT / "src" / "realize" / "config.py").read_text()
    keys = set(re.findall(r'\btable\.take\("(\w+)"', source))
    for group in re.findall(r"for limit in \(([^)]*)\)", source):
        keys.update(re.findall(r'"(\w+)"', group))
    return keys


class SystemdUnitTests(SynchronousTestCase):
    """
    The systemd units.
    """

    def test_socket_activation(self) -> None:
        """
        The socket listens on 9771 for IPv6 and IPv4, and the service takes
        it over with the systemd endpoint, as the user realize, reloading
        with SIGHUP.
        """
        socket = unit("realized.socket")
        self.assertEqual(socket["Socket.ListenStream"], ["9771"])
        self.assertEqual(socket["Socket.BindIPv6Only"], ["both"])
        service = unit("realized.service")
        [start] = service["Service.ExecStart"]
        self.assertIn("--listen systemd:domain=INET6:index=0", start)
        self.assertIn("--config /etc/realize/realize.toml", start)
        self.assertIn("--privkey /etc/realize/realize.key", start)
        self.assertEqual(service["Service.ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(service["Service.User"], ["realize"])
        self.assertEqual(service["Unit.Requires"], ["realized.socket"])
        self.assertEqual(service["Service.NoNewPrivileges"], ["yes"])
        self.assertEqual(service["Service.ProtectSystem"], ["strict"])
        self.assertEqual(
            service["Service.RestrictAddressFamilies"], ["AF_INET AF_INET6 AF_UNIX"]
        )

    def test_move_template(self) -> None:
        """
        The move service takes its sides from an environment file named
        after the instance, and the arena from the unescaped instance; the
        timer is persistent.
        """
        service = unit("realize-move@.service")
        self.assertEqual(
            service["Service.EnvironmentFile"], ["/etc/realize/move-%i.env"]
        )
        [start] = service["Service.ExecStart"]
        self.assertIn("--src ${SRC} --dst ${DST}", start)
        self.assertTrue(start.endswith(" %I"), start)
        self.assertEqual(service["Service.Type"], ["oneshot"])
        timer = unit("realize-move@.timer")
        self.assertEqual(timer["Timer.Persistent"], ["true"])
        self.assertEqual(timer["Install.WantedBy"], ["timers.target"])
        env = (PACKAGING / "realize-move.env.sample").read_text()
        for name in ("SRC=", "DST=", "MOVE_OPTIONS="):
            self.assertIn(f"\n{name}", env)

    def test_verify(self) -> None:
        """
        C{systemd-analyze verify} accepts the units (with their programs
        replaced by stand-ins, which are not installed here).
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (Debian package systemd)")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        bin_dir = os.path.join(directory, "bin")
        os.mkdir(bin_dir)
        for program in ("realized", "realize-move"):
            path = os.path.join(bin_dir, program)
            with open(path, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(path, 0o755)
        names = {
            "realized.socket": "realized.socket",
            "realized.service": "realized.service",
            "realize-move@.service": "realize-move@photos.service",
            "realize-move@.timer": "realize-move@photos.timer",
        }
        for source, target in names.items():
            text = (PACKAGING / source).read_text()
            text = text.replace("/opt/realize/bin/", bin_dir + "/")
            with open(os.path.join(directory, target), "w") as f:
                f.write(text)
        result = subprocess.run(
            [analyze, "verify", "--man=no", *(f"./{t}" for t in names.values())],
            cwd=directory,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0 and "Failed to" in output and "bus" in output:
            raise SkipTest(f"systemd-analyze cannot run here: {output}")
        self.assertEqual((result.returncode, output), (0, ""))


def dashboard() -> dict[str, Any]:
    """
    @return: the Grafana dashboard.
    """
    with open(PACKAGING / "grafana-dashboard.json") as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


def expressions() -> list[tuple[str, str]]:
    """
    @return: C{(panel title, PromQL)} of every query of the dashboard.
    """
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


class DashboardTests(SynchronousTestCase):
    """
    packaging/grafana-dashboard.json.
    """

    def test_shape(self) -> None:
        """
        The dashboard has a title, a Prometheus data source input, unique
        panel ids, and the panels the issue asks for.
        """
        board = dashboard()
        self.assertEqual(board["title"], "realize")
        self.assertEqual(board["__inputs"][0]["pluginId"], "prometheus")
        ids = [panel["id"] for panel in board["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        titles = " | ".join(panel["title"] for panel in board["panels"]).lower()
        for wanted in (
            "transfer rate",
            "files by status",
            "errors",
            "connections by peer",
            "auth rejections",
        ):
            self.assertIn(wanted, titles)
        for panel in board["panels"]:
            self.assertEqual(set(panel["gridPos"]), {"x", "y", "w", "h"})

    def test_metric_names(self) -> None:
        """
        Every realize series the dashboard queries exists, and the
        transfer, files, errors, connections and rejections metrics are
        all queried.
        """
        known = sample_names()
        used = set()
        for title, expr in expressions():
            for name in re.findall(r"\brealize_\w+", expr):
                self.assertIn(name, known, f"{title}: {expr}")
                used.add(name)
        for name in (
            "realize_store_bytes_total",
            "realize_move_bytes_total",
            "realize_move_files_total",
            "realize_store_commands_total",
            "realize_connections_open",
            "realize_auth_rejections_total",
        ):
            self.assertIn(name, used)

    def test_promql(self) -> None:
        """
        C{promtool check rules} accepts every query (Grafana variables
        replaced by values).
        """
        promtool = shutil.which("promtool")
        if promtool is None:
            raise SkipTest("promtool is not installed (Debian package prometheus)")
        rules = []
        for index, (_, expr) in enumerate(expressions()):
            expr = (
                expr.replace("$__rate_interval", "5m")
                .replace("$job", ".*")
                .replace("$instance", ".*")
            )
            rules.append({"record": f"dashboard:query_{index}", "expr": expr})
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "rules.yml")
        with open(path, "w") as f:
            json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        result = subprocess.run(
            [promtool, "check", "rules", path],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class OperationsDocsTests(SynchronousTestCase):
    """
    docs/operations.md and docs/logging.md.
    """

    def setUp(self) -> None:
        self.text = (DOCS / "operations.md").read_text()

    def test_every_metric(self) -> None:
        """
        Every realize metric is in the metrics reference, with its type.
        """
        for name, kind in realize_families().items():
            if kind == "info":
                self.assertIn(f"`{name}{{version}}`", self.text)
                continue
            self.assertRegex(self.text, rf"\| `{name}` \| {kind} \|")

    def test_no_unknown_metric(self) -> None:
        """
        Every realize metric named in the guide exists.
        """
        known = sample_names() | set(realize_families())
        for name in set(re.findall(r"\brealize_[a-z_]+[a-z]", self.text)):
            self.assertIn(name, known)

    def test_every_label(self) -> None:
        """
        Every label of the realize metrics is described.
        """
        labels: set[str] = set()
        registry = make_registry()
        daemon = DaemonMetrics(registry)
        move = MoveMetrics(registry)
        for metric in (
            daemon.connections,
            daemon.auth_rejections,
            daemon.commands,
            daemon.command_duration,
            daemon.store_bytes,
            daemon.delta_saved_bytes,
            daemon.files_finished,
            daemon.hash_seconds,
            move.files,
            move.bytes,
            move.listed_files,
        ):
            labels.update(metric._labelnames)
        self.assertEqual(
            labels,
            {"peer", "reason", "command", "status", "arena", "method", "direction"},
        )
        for label in labels:
            self.assertRegex(self.text, rf"\| `{label}`( \([a-z]+\))? \|")

    def test_every_consensus_label(self) -> None:
        """
        Every label of the consensus and audit metrics is described.
        """
        consensus = ConsensusMetrics(make_registry())
        labels: set[str] = set()
        for metric in (
            consensus.jobs,
            consensus.events,
            consensus.connections,
            consensus.realized_bytes,
            consensus.queue,
        ):
            labels.update(metric._labelnames)
        self.assertEqual(labels, {"arena", "action", "outcome", "event", "peer"})

    def test_every_cache_label(self) -> None:
        """
        Every label of the block cache's metrics is described.
        """
        cache = CacheMetrics(make_registry())
        labels: set[str] = set()
        for metric in (
            cache.bytes,
            cache.reads,
            cache.evictions,
            cache.admissions,
            cache.fixes,
        ):
            labels.update(metric._labelnames)
        self.assertEqual(labels, {"arena", "queue", "result", "reason", "kind"})
        for label in labels:
            self.assertRegex(self.text, rf"\| `{label}`( \([a-z]+\))? \|")

    def test_every_config_key(self) -> None:
        """
        Every key the config reader knows is in the config reference.
        """
        for key in config_keys():
            self.assertTrue(f"| `{key}` |" in self.text, f"{key} is not described")
        for section in config_sections():
            heading = re.search(rf"^### `\[+{section}[].]", self.text, re.M)
            self.assertTrue(heading, f"[{section}] has no section")

    def test_options(self) -> None:
        """
        The guide names the command line options the programs take for
        operations.
        """
        for option in (
            "--config",
            "--privkey",
            "--listen",
            "systemd:domain=INET6:index=0",
            "--metrics-addr",
            "--metrics-pushgateway",
            "--metrics-job",
            "--metrics-instance",
            "--log-level",
            "--log-format",
            "--log-namespace",
            "systemctl reload realized",
            "SIGHUP",
        ):
            self.assertIn(option, self.text)

    def test_logging(self) -> None:
        """
        docs/logging.md covers every level, the auth namespace and its
        fields, and the JSON format.
        """
        text = (DOCS / "logging.md").read_text()
        for level in ("critical", "error", "warn", "info", "debug"):
            self.assertIn(f"| `{level}` |", text)
        for word in (
            "realize.auth",
            "--log-format json",
            "--log-namespace",
            "log_namespace",
            "`address`",
            "`reason`",
            "`accepted`",
        ):
            self.assertIn(word, text)
