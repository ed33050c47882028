"""
Tests for L{realize.services.lifecycle}: ordered stop, reload fan-out,
connections drained on stop.
"""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from realize.config import Config
from realize.net.registry import ConnectionRegistry
from realize.services.lifecycle import (
    DRAIN_TIMEOUT,
    ConnectionsService,
    OrderedServices,
    reconfigurable,
)


class Step(Service):
    """
    A service whose stop is held until the test releases it.
    """

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.stopping: Deferred[None] | None = None
        self.configs: list[Config] = []

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self.log.append(f"stop {self.name}")
        self.stopping = Deferred()
        return self.stopping

    def reconfigure(self, config: Config) -> None:
        self.configs.append(config)


class OrderedServicesTests(SynchronousTestCase):
    """
    L{OrderedServices} stops children one by one, last added first.
    """

    def test_stop_in_reverse_one_by_one(self) -> None:
        """
        The second child starts stopping only once the third has stopped,
        and the whole stop fires only at the end.
        """
        log: list[str] = []
        top = OrderedServices()
        steps = [Step(name, log) for name in ("db", "threads", "listen")]
        for step in steps:
            top.add(step)
        top.startService()
        done = top.stopService()
        self.assertEqual(log, ["stop listen"])
        assert steps[2].stopping is not None
        steps[2].stopping.callback(None)
        self.assertEqual(log, ["stop listen", "stop threads"])
        assert steps[1].stopping is not None
        steps[1].stopping.callback(None)
        self.assertNoResult(done)
        assert steps[0].stopping is not None
        steps[0].stopping.callback(None)
        self.assertEqual(log, ["stop listen", "stop threads", "stop db"])
        self.successResultOf(done)

    def test_failed_stop_does_not_stop_the_rest(self) -> None:
        """
        A child whose stop fails is logged; the others still stop.
        """
        log: list[str] = []
        top = OrderedServices()
        first, second = Step("a", log), Step("b", log)
        top.add(first)
        top.add(second)
        top.startService()
        done = top.stopService()
        assert second.stopping is not None
        second.stopping.errback(RuntimeError("boom"))
        assert first.stopping is not None
        first.stopping.callback(None)
        self.successResultOf(done)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_reconfigurable(self) -> None:
        """
        L{reconfigurable} finds the services that take a config, nested
        ones included, in order.
        """
        log: list[str] = []
        top = OrderedServices()
        inner = MultiService()
        a, b = Step("a", log), Step("b", log)
        top.add(a)
        inner.addService(b)
        top.add(inner)
        top.add(Service())
        self.assertEqual(list(reconfigurable(top)), [a, b])


class FakeConnection:
    def __init__(self, closes_cleanly: bool) -> None:
        self.lost: Deferred[None] = Deferred()
        self.closes_cleanly = closes_cleanly
        self.calls: list[bool] = []
        self.peer = "a"

    def close(self, abort: bool = False) -> None:
        self.calls.append(abort)
        if abort or self.closes_cleanly:
            if not self.lost.called:
                self.lost.callback(None)


class ConnectionsServiceTests(SynchronousTestCase):
    """
    L{ConnectionsService} closes connections on stop, aborting laggards.
    """

    def test_drain_then_abort(self) -> None:
        """
        Connections are closed cleanly; those still open after
        L{DRAIN_TIMEOUT} are aborted; the stop then fires.
        """
        clock = Clock()
        registry = ConnectionRegistry()
        quick, slow = FakeConnection(True), FakeConnection(False)
        registry._by_peer["a"] = [quick, slow]  # type: ignore[list-item]
        service = ConnectionsService(registry, clock)
        service.startService()
        done = service.stopService()
        self.assertEqual(quick.calls, [False])
        self.assertEqual(slow.calls, [False])
        self.assertNoResult(done)
        clock.advance(DRAIN_TIMEOUT)
        self.assertEqual(slow.calls, [False, True])
        self.successResultOf(done)

    def test_quick_stop(self) -> None:
        """
        When every connection closes cleanly, the stop fires at once and
        leaves no timer behind.
        """
        clock = Clock()
        registry = ConnectionRegistry()
        quick = FakeConnection(True)
        registry._by_peer["a"] = [quick]  # type: ignore[list-item]
        service = ConnectionsService(registry, clock)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
