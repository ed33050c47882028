"""
The daemon's lifecycle: services started in order and stopped in the
reverse order, one after the other (Twisted's C{MultiService} stops its
children in parallel), a reload that fans out to the services that can
take a new config, and the service that closes every connection on stop.

Order of C{realized} (issue 8 item 9), as L{realize.tap.realized} adds
them: databases, thread pools, the store and the other services, the
connections, the listening ports.  So stopping stops listening first, then
closes the connections (in-flight writes end, or are aborted after
L{DRAIN_TIMEOUT}), then the services, then joins the thread pools off the
reactor thread, then closes the databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from attrs import define
from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from realize.config import Config
from realize.net.registry import ConnectionRegistry

__all__ = [
    "DRAIN_TIMEOUT",
    "ConnectionsService",
    "OrderedServices",
    "Reconfigurable",
    "reconfigurable",
]

log = Logger(namespace="realize.daemon")

#: Seconds connections have to end cleanly (flush what they are sending)
#: when the daemon stops, before they are aborted.
DRAIN_TIMEOUT = 5.0


@runtime_checkable
class Reconfigurable(Protocol):
    """
    A service that takes a new config on reload (SIGHUP) without a
    restart.
    """

    def reconfigure(self, config: Config) -> None:
        """
        Apply C{config} to what happens from now on.
        """


class OrderedServices(MultiService):
    """
    A C{MultiService} that stops its children in the reverse order of
    their addition, each once the one after it has stopped.  A child that
    fails to stop is logged and the others still stop.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def add(self, service: Any) -> None:
        """
        Add a child: it starts after, and stops before, those added so far.

        @param service: an C{IService}.
        """
        self.addService(service)  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)

        async def stop_all() -> None:
            for service in reversed(list(self)):
                try:
                    await maybeDeferred(service.stopService)
                except Exception:
                    log.failure("stopping {service} failed", Failure(), service=service)

        return Deferred.fromCoroutine(stop_all())


def reconfigurable(root: Any) -> Iterator[Reconfigurable]:
    """
    @param root: a service, possibly a collection of services.
    @return: the services under it (itself included) that take a new
        config, depth first in order of addition.
    """
    if isinstance(root, Reconfigurable):
        yield root
    if IServiceCollection.providedBy(root):
        for child in root:
            yield from reconfigurable(child)


@define(eq=False)
class ConnectionsService(Service):
    """
    Closes every connection of a registry when stopped: cleanly first,
    aborted after L{DRAIN_TIMEOUT} seconds.

    @ivar registry: the connections.
    @ivar clock: for the timeout.
    """

    registry: ConnectionRegistry
    clock: IReactorTime
    timeout: float = DRAIN_TIMEOUT

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)

        async def drain() -> None:
            done = self.registry.close_all()
            timer = deferLater(self.clock, self.timeout, lambda: None)
            done.addBoth(lambda _: timer.cancel() if not timer.called else None)
            timer.addErrback(lambda _: None)
            await timer
            if not done.called:
                log.warn(
                    "aborting {count} connection(s) that did not close in {seconds} s",
                    count=len(self.registry.connections()),
                    seconds=self.timeout,
                )
                await self.registry.close_all(abort=True)

        return Deferred.fromCoroutine(drain())
