"""
Responder sets and their composition on one connection.

Each side of a connection may answer commands (DESIGN.md §10: a listening
daemon calls commands on a deaf peer that connected to it), and one
connection carries several sets of commands: the store's now, the
history's next.  A responder set is an C{amp.CommandLocator} bound to its
connection (L{Responders}); L{CompositeLocator} asks each set in turn; a
L{LocatorFactory} builds the locator of each new connection.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from realize.errors import WIRE_ERRORS, IOFailure, NetworkError
from realize.model import PeerId

if TYPE_CHECKING:
    from realize.metrics import DaemonMetrics

if TYPE_CHECKING:
    from realize.net.framing import Connection

__all__ = ["CompositeLocator", "LocatorFactory", "Responders", "combine", "respond"]

log = Logger(namespace="realize.net")

T = TypeVar("T")


def respond(
    command: str, coro: Coroutine[Any, Any, T], metrics: DaemonMetrics | None = None
) -> Deferred[T]:
    """
    Run a responder's work: errors of L{realize.errors} travel with their
    codes; a lost connection under the command is answered (to nobody) as
    an I/O failure; any other exception is our bug: logged here with its
    traceback and answered as an I/O failure, so that nothing a peer sends
    can kill the daemon.

    @param command: the command's name, for logs and metrics.
    @param metrics: times and counts the command by outcome, or C{None}.
    @return: the Deferred AMP answers with.
    """

    def unexpected(failure: Failure) -> Failure:
        if isinstance(failure.value, tuple(WIRE_ERRORS)):
            return failure
        if isinstance(failure.value, NetworkError):
            # The connection was lost under the command: not a bug, and
            # nobody will read the answer.
            return Failure(IOFailure(f"{command} failed: {failure.value}"))
        log.failure("unexpected error in {command}", failure, command=command)
        return Failure(IOFailure(f"{command} failed on the daemon: internal error"))

    work = metrics.observe(command, coro) if metrics is not None else coro
    return Deferred.fromCoroutine(work).addErrback(unexpected)


class Responders(amp.CommandLocator):
    """
    A set of responders serving one connection.

    @ivar connection: the connection; its C{peer} is the caller once
        authenticated (no command is dispatched before).
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @property
    def peer(self) -> PeerId:
        """
        The authenticated peer calling.
        """
        peer = self.connection.peer
        assert peer is not None, "a command dispatched before authentication"
        return peer


@implementer(amp.IResponderLocator)
class CompositeLocator:
    """
    The responders of several sets: the first set that knows a command
    answers it.

    @ivar parts: the sets, in order.
    """

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = tuple(parts)

    def locateResponder(self, name: bytes) -> Callable[..., Any] | None:
        for part in self.parts:
            responder: Callable[..., Any] | None = part.locateResponder(name)
            if responder is not None:
                return responder
        return None


#: Builds the locator (an C{IResponderLocator}) of a new connection.
LocatorFactory = Callable[["Connection"], Any]


def combine(*factories: LocatorFactory) -> LocatorFactory:
    """
    @param factories: locator factories of responder sets.
    @return: a factory of their L{CompositeLocator}.
    """

    def build(connection: Connection) -> CompositeLocator:
        return CompositeLocator([factory(connection) for factory in factories])

    return build
