"""
Tests for L{realize.metrics}: the registry factory, the metrics of both
programs, their labels, and that the global registry is never touched.
"""

from __future__ import annotations

import shutil
import subprocess

from attrs import define
from OpenSSL import SSL
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from realize.errors import IOFailure, NetworkError, NotFound, SideError
from realize.metrics import (
    COPY,
    DELTA,
    READ,
    WRITTEN,
    DaemonMetrics,
    MoveMetrics,
    command_status,
    make_registry,
)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """
    @return: the value of one sample, or C{None} if there is none.
    """
    return registry.get_sample_value(name, labels)


def global_names() -> set[str]:
    """
    @return: the names of the series of the global registry.
    """
    return {sample.name for family in REGISTRY.collect() for sample in family.samples}


def exposition(registry: CollectorRegistry) -> str:
    """
    @return: the text exposition of a registry.
    """
    return generate_latest(registry).decode("utf-8")


class FakeTimer:
    """
    A timer that says what it is told.
    """

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def populated() -> CollectorRegistry:
    """
    @return: a registry with both programs' metrics, each used once.
    """
    registry = make_registry()
    daemon = DaemonMetrics(registry)
    daemon.connection_opened("a")
    daemon.rejected("unknown key")
    daemon.command_done("Read", 0.25, None)
    daemon.command_done("Write", 0.5, NotFound("no file"))
    daemon.transferred("docs", COPY, READ, 1000)
    daemon.transferred("docs", DELTA, WRITTEN, 10)
    daemon.delta_saved("docs", 990)
    daemon.file_finished("docs")
    daemon.file_deleted("docs")
    daemon.throttled(2, 1.5)
    daemon.hashed("docs", 0.125, 1000)
    move = MoveMetrics(registry)
    move.started(1_700_000_000.0)
    move.listed("docs", 2, 1000)
    move.file_done("docs", "moved")
    move.sent(COPY, 1000)
    move.retried()
    move.finished(True)
    return registry


class RegistryTests(SynchronousTestCase):
    """
    L{make_registry}.
    """

    def test_process_and_platform(self) -> None:
        """
        A new registry has the process, platform and build series.
        """
        registry = make_registry()
        text = exposition(registry)
        self.assertIn("\nprocess_cpu_seconds_total ", text)
        self.assertIn("\nprocess_resident_memory_bytes ", text)
        self.assertIn("\npython_info{", text)
        self.assertIn("\nrealize_build_info{version=", text)

    def test_new_each_time(self) -> None:
        """
        Each call makes a separate registry: the same metrics can be made
        on two of them.
        """
        first, second = make_registry(), make_registry()
        self.assertIsNot(first, second)
        DaemonMetrics(first).connection_opened("a")
        DaemonMetrics(second)
        self.assertEqual(value(first, "realize_connections_total", peer="a"), 1.0)
        self.assertIsNone(value(second, "realize_connections_total", peer="a"))

    def test_global_registry_untouched(self) -> None:
        """
        Making registries and using both programs' metrics registers
        nothing on C{prometheus_client.REGISTRY}.
        """
        before = global_names()
        collectors = dict(REGISTRY._collector_to_names)
        registry = populated()
        self.assertIn("realize_move_up", exposition(registry))
        self.assertEqual(global_names(), before)
        self.assertEqual(dict(REGISTRY._collector_to_names), collectors)
        self.assertFalse(any(name.startswith("realize_") for name in before))

    def test_promtool(self) -> None:
        """
        C{promtool check metrics} accepts the exposition of a registry with
        every metric of both programs in use.
        """
        promtool = shutil.which("promtool")
        if promtool is None:
            raise SkipTest("promtool is not installed (Debian package prometheus)")
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=generate_latest(populated()),
            capture_output=True,
            check=False,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, (result.stdout + result.stderr).decode())


class CommandStatusTests(SynchronousTestCase):
    """
    L{command_status}.
    """

    def test_statuses(self) -> None:
        """
        Success is C{ok}; realize errors give their lower-case code (a side
        error that of its cause); cancellation and other exceptions have
        their own status.
        """
        self.assertEqual(command_status(None), "ok")
        self.assertEqual(command_status(NotFound("x")), "not_found")
        self.assertEqual(command_status(IOFailure("x")), "io")
        self.assertEqual(command_status(NetworkError("x")), "network")
        self.assertEqual(
            command_status(SideError("source", "a", NotFound("x"))), "not_found"
        )
        self.assertEqual(command_status(CancelledError()), "cancelled")
        self.assertEqual(command_status(ZeroDivisionError()), "internal")


class DaemonMetricsTests(SynchronousTestCase):
    """
    L{DaemonMetrics}.
    """

    def setUp(self) -> None:
        self.registry = make_registry()
        self.timer = FakeTimer()
        self.metrics = DaemonMetrics(self.registry, timer=self.timer)

    def test_connections(self) -> None:
        """
        Connections count by peer; the open gauge goes up and down.
        """
        self.metrics.connection_opened("a")
        self.metrics.connection_opened("a")
        self.metrics.connection_opened("b")
        self.metrics.connection_closed("a")
        self.assertEqual(
            value(self.registry, "realize_connections_total", peer="a"), 2.0
        )
        self.assertEqual(
            value(self.registry, "realize_connections_open", peer="a"), 1.0
        )
        self.assertEqual(
            value(self.registry, "realize_connections_open", peer="b"), 1.0
        )

    def test_rejections(self) -> None:
        """
        Both reasons are shown from the start, at 0; a reason with a space
        (as logged in C{realize.auth}) counts under its underscore form.
        """
        name = "realize_auth_rejections_total"
        self.assertEqual(value(self.registry, name, reason="unknown_key"), 0.0)
        self.assertEqual(value(self.registry, name, reason="handshake_failed"), 0.0)
        self.metrics.rejected("unknown key")
        self.metrics.rejected("handshake_failed")
        self.assertEqual(value(self.registry, name, reason="unknown_key"), 1.0)
        self.assertEqual(value(self.registry, name, reason="handshake_failed"), 1.0)

    def test_watch_connection(self) -> None:
        """
        A watched connection counts as opened for its peer once
        authenticated and as closed when lost; results pass through.
        """
        handshake: Deferred[str] = Deferred()
        lost: Deferred[None] = Deferred()
        self.metrics.watch_connection(handshake, lost)
        seen: list[object] = []
        handshake.addCallback(seen.append)
        handshake.callback("laptop")
        self.assertEqual(seen, ["laptop"])
        r = self.registry
        self.assertEqual(value(r, "realize_connections_total", peer="laptop"), 1)
        self.assertEqual(value(r, "realize_connections_open", peer="laptop"), 1)
        lost.callback(None)
        self.assertEqual(value(r, "realize_connections_open", peer="laptop"), 0)
        self.assertEqual(value(r, "realize_connections_total", peer="laptop"), 1)

    def test_watch_rejected(self) -> None:
        """
        A connection lost before authentication counts as a rejection: an
        unknown key when our certificate check refused it, a failed
        handshake otherwise; the failure passes through.
        """
        name = "realize_auth_rejections_total"
        for error in (
            SSL.Error([("SSL routines", "", "certificate verify failed")]),
            ConnectionDone("closed"),
        ):
            handshake: Deferred[str] = Deferred()
            self.metrics.watch_connection(handshake, Deferred())
            handshake.errback(Failure(error))
            self.failureResultOf(handshake, type(error))
        self.assertEqual(value(self.registry, name, reason="unknown_key"), 1)
        self.assertEqual(value(self.registry, name, reason="handshake_failed"), 1)
        self.assertIsNone(
            value(self.registry, "realize_connections_total", peer="laptop")
        )

    def test_observe_success(self) -> None:
        """
        L{DaemonMetrics.observe} returns the work's result, counts it as
        C{ok} and records its duration.
        """
        d: Deferred[str] = Deferred()
        result = Deferred.fromCoroutine(self.metrics.observe("Hash", d))
        self.timer.now += 0.25
        d.callback("leaves")
        self.assertEqual(self.successResultOf(result), "leaves")
        self.assertEqual(
            value(
                self.registry,
                "realize_store_commands_total",
                command="Hash",
                status="ok",
            ),
            1.0,
        )
        self.assertEqual(
            value(
                self.registry,
                "realize_store_command_duration_seconds_sum",
                command="Hash",
            ),
            0.25,
        )
        self.assertEqual(
            value(
                self.registry,
                "realize_store_command_duration_seconds_bucket",
                command="Hash",
                le="0.1",
            ),
            0.0,
        )
        self.assertEqual(
            value(
                self.registry,
                "realize_store_command_duration_seconds_bucket",
                command="Hash",
                le="0.5",
            ),
            1.0,
        )

    def test_observe_failure(self) -> None:
        """
        An error is raised again and counted under its code.
        """

        async def fails() -> None:
            raise NotFound("arena 'x': no such file")

        result = Deferred.fromCoroutine(self.metrics.observe("Read", fails()))
        self.failureResultOf(result, NotFound)
        self.assertEqual(
            value(
                self.registry,
                "realize_store_commands_total",
                command="Read",
                status="not_found",
            ),
            1.0,
        )
        self.assertEqual(
            value(
                self.registry,
                "realize_store_command_duration_seconds_count",
                command="Read",
            ),
            1.0,
        )

    def test_observe_cancelled(self) -> None:
        """
        A cancelled command counts as C{cancelled}.
        """
        d: Deferred[None] = Deferred()
        result = Deferred.fromCoroutine(self.metrics.observe("Write", d))
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(
            value(
                self.registry,
                "realize_store_commands_total",
                command="Write",
                status="cancelled",
            ),
            1.0,
        )

    def test_bytes_and_files(self) -> None:
        """
        Bytes count by arena, method and direction; savings, finished and
        deleted files by arena; negative savings count as nothing.
        """
        self.metrics.transferred("docs", COPY, READ, 100)
        self.metrics.transferred("docs", COPY, READ, 50)
        self.metrics.transferred("docs", DELTA, WRITTEN, 7)
        self.metrics.delta_saved("docs", 500)
        self.metrics.delta_saved("docs", -3)
        self.metrics.file_finished("docs")
        self.metrics.file_deleted("docs", 3)
        r = self.registry
        self.assertEqual(
            value(
                r,
                "realize_store_bytes_total",
                arena="docs",
                method="copy",
                direction="read",
            ),
            150.0,
        )
        self.assertEqual(
            value(
                r,
                "realize_store_bytes_total",
                arena="docs",
                method="delta",
                direction="written",
            ),
            7.0,
        )
        self.assertEqual(
            value(r, "realize_delta_saved_bytes_total", arena="docs"), 500.0
        )
        self.assertEqual(value(r, "realize_files_finished_total", arena="docs"), 1.0)
        self.assertEqual(value(r, "realize_files_deleted_total", arena="docs"), 3.0)

    def test_throttle_and_hash(self) -> None:
        """
        Throttle waits and seconds add up; hash time and bytes by arena.
        """
        self.metrics.throttled(2, 0.5)
        self.metrics.throttled(1, 0.25)
        self.metrics.hashed("docs", 0.5, 1 << 20)
        r = self.registry
        self.assertEqual(value(r, "realize_throttle_waits_total"), 3.0)
        self.assertEqual(value(r, "realize_throttled_seconds_total"), 0.75)
        self.assertEqual(value(r, "realize_hash_seconds_total", arena="docs"), 0.5)
        self.assertEqual(
            value(r, "realize_hashed_bytes_total", arena="docs"), float(1 << 20)
        )

    def test_twice_on_one_registry(self) -> None:
        """
        A registry holds one set of daemon metrics: a second is refused.
        """
        self.assertRaises(ValueError, DaemonMetrics, self.registry)


@define
class Stats:
    """
    A mover's running totals.
    """

    copied_bytes: int = 0
    delta_bytes: int = 0
    saved_bytes: int = 0
    files_repaired: int = 0
    fallbacks: int = 0


class MoveMetricsTests(SynchronousTestCase):
    """
    L{MoveMetrics}.
    """

    def setUp(self) -> None:
        self.registry = make_registry()
        self.timer = FakeTimer()
        self.metrics = MoveMetrics(self.registry, timer=self.timer)

    def test_life(self) -> None:
        """
        C{realize_move_up} is 0 before, 1 while running and 0 after; the
        duration runs while running and stops at the end; success tells
        the outcome.
        """
        r = self.registry
        self.assertEqual(value(r, "realize_move_up"), 0.0)
        self.metrics.started(1_700_000_000.0)
        self.assertEqual(value(r, "realize_move_up"), 1.0)
        self.assertEqual(value(r, "realize_move_start_time_seconds"), 1_700_000_000.0)
        self.timer.now += 5
        self.assertEqual(value(r, "realize_move_duration_seconds"), 5.0)
        self.assertEqual(value(r, "realize_move_success"), 0.0)
        self.timer.now += 2
        self.metrics.finished(True)
        self.timer.now += 100
        self.assertEqual(value(r, "realize_move_up"), 0.0)
        self.assertEqual(value(r, "realize_move_duration_seconds"), 7.0)
        self.assertEqual(value(r, "realize_move_success"), 1.0)

    def test_failed_run(self) -> None:
        """
        A run that did not move everything has success 0.
        """
        self.metrics.started(0.0)
        self.metrics.finished(False)
        self.assertEqual(value(self.registry, "realize_move_success"), 0.0)

    def test_counters(self) -> None:
        """
        Files by arena and status, bytes by method, savings, repairs,
        fallbacks and retries.
        """
        m = self.metrics
        m.file_done("docs", "moved")
        m.file_done("docs", "moved")
        m.file_done("docs", "failed")
        m.sent(COPY, 100)
        m.sent(DELTA, 10)
        m.delta_saved(90)
        m.repaired()
        m.fallback(2)
        m.retried()
        r = self.registry
        self.assertEqual(
            value(r, "realize_move_files_total", arena="docs", status="moved"),
            2.0,
        )
        self.assertEqual(
            value(r, "realize_move_files_total", arena="docs", status="failed"),
            1.0,
        )
        self.assertEqual(value(r, "realize_move_bytes_total", method="copy"), 100)
        self.assertEqual(value(r, "realize_move_bytes_total", method="delta"), 10)
        self.assertEqual(value(r, "realize_move_delta_saved_bytes_total"), 90.0)
        self.assertEqual(value(r, "realize_move_files_repaired_total"), 1.0)
        self.assertEqual(value(r, "realize_move_copy_fallbacks_total"), 2.0)
        self.assertEqual(value(r, "realize_move_retries_total"), 1.0)

    def test_bytes_shown_at_zero(self) -> None:
        """
        Both methods of C{realize_move_bytes_total} exist before any byte
        moved, so a rate over them is defined from the start.
        """
        r = self.registry
        self.assertEqual(value(r, "realize_move_bytes_total", method="copy"), 0)
        self.assertEqual(value(r, "realize_move_bytes_total", method="delta"), 0)

    def test_update(self) -> None:
        """
        L{MoveMetrics.update} adds what the running totals grew by since
        the last call.
        """
        stats = Stats(copied_bytes=100, delta_bytes=5, saved_bytes=50)
        self.metrics.update(stats)
        stats.copied_bytes = 150
        stats.files_repaired = 1
        stats.fallbacks = 1
        self.metrics.update(stats)
        self.metrics.update(stats)
        r = self.registry
        self.assertEqual(value(r, "realize_move_bytes_total", method="copy"), 150)
        self.assertEqual(value(r, "realize_move_bytes_total", method="delta"), 5)
        self.assertEqual(value(r, "realize_move_delta_saved_bytes_total"), 50)
        self.assertEqual(value(r, "realize_move_files_repaired_total"), 1)
        self.assertEqual(value(r, "realize_move_copy_fallbacks_total"), 1)

    def test_both_programs_on_one_registry(self) -> None:
        """
        Daemon and move metrics do not clash: both fit on one registry.
        """
        text = exposition(populated())
        self.assertIn("realize_store_commands_total{", text)
        self.assertIn("realize_move_files_total{", text)
