"""
The history protocol over AMP (DESIGN.md section 9): the responders that
serve this peer's histories to subscribers (L{HistoryResponders}, a second
responder set beside the store's on the same connection), and the typed
client of a peer's history (L{RemoteHistory}).

A subscription is pulled: C{Subscribe} opens it, each C{Notifications}
call answers the next batch (waiting for a change when the subscriber is
caught up), so a subscriber that stops pulling costs the publisher only
its cursor (back-pressure by construction, no queue).  Either side of a
connection may subscribe to the other.

Bounds (issue 14): at most L{MAX_SUBSCRIPTIONS} subscriptions per
connection, one pull at a time per subscription, batches of at most
L{realize.net.commands.MAX_NOTIFICATIONS}; every subscription of a
connection is closed when it is lost.
"""

from __future__ import annotations

from typing import Any, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from realize.errors import (
    BadRequest,
    IOFailure,
    NotFound,
    SubscriptionClosed,
)
from realize.interfaces import History, Subscription
from realize.model import ArenaName, Notification
from realize.net import commands
from realize.net.client import _translate
from realize.net.codec import decode_notifications, encode_notifications
from realize.net.framing import Connection
from realize.net.locator import LocatorFactory, Responders, respond
from realize.net.streams import call

__all__ = [
    "MAX_SUBSCRIPTIONS",
    "HistoryResponders",
    "RemoteHistory",
    "RemoteSubscription",
    "history_responders",
]

log = Logger(namespace="realize.history")

T = TypeVar("T")

#: Subscriptions one connection may hold open at once.
MAX_SUBSCRIPTIONS = 256


class HistoryResponders(Responders):
    """
    Responders of the history commands for one connection.

    @ivar history: this peer's histories.
    """

    def __init__(self, connection: Connection, history: History) -> None:
        super().__init__(connection)
        self.history = history
        self._subscriptions: dict[int, tuple[Subscription, ArenaName]] = {}
        self._pulling: set[int] = set()
        self._next_id = 1
        connection.lost.addBoth(self._lost)

    def _lost(self, result: object) -> object:
        subscriptions, self._subscriptions = self._subscriptions, {}
        for subscription, _ in subscriptions.values():
            subscription.close()
        return result

    def _get(self, subscription: int) -> tuple[Subscription, ArenaName]:
        try:
            return self._subscriptions[subscription]
        except KeyError:
            raise SubscriptionClosed(
                f"no subscription {subscription} on this connection"
            ) from None

    @commands.Subscribe.responder
    def subscribe(
        self, arena: str, uuid: str | None = None, position: int | None = None
    ) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            if len(self._subscriptions) >= MAX_SUBSCRIPTIONS:
                raise BadRequest(
                    f"{MAX_SUBSCRIPTIONS} subscriptions are already open on "
                    "this connection"
                )
            if position is not None and position < 0:
                raise BadRequest(f"position {position} is negative")
            progress = (uuid, position or 0) if uuid else None
            opened = self.history.subscribe(ArenaName(arena), self.peer, progress)
            number = self._next_id
            self._next_id += 1
            self._subscriptions[number] = (opened, ArenaName(arena))
            return {"subscription": number}

        return respond("Subscribe", go())

    @commands.Notifications.responder
    def notifications(
        self, subscription: int, max: int, applied: int | None = None
    ) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            opened, arena = self._get(subscription)
            if subscription in self._pulling:
                raise BadRequest(
                    f"subscription {subscription}: a pull is already under way"
                )
            count = max
            if not 1 <= count <= commands.MAX_NOTIFICATIONS:
                count = commands.MAX_NOTIFICATIONS if count > 0 else 1
            self._pulling.add(subscription)
            try:
                if applied is not None and applied > 0:
                    await self.history.acknowledge(arena, self.peer, applied)
                batch = await opened.next_batch(count)
            finally:
                self._pulling.discard(subscription)
            return {
                "notifications": encode_notifications(batch),
                "caught_up": opened.caught_up,
            }

        return respond("Notifications", go())

    @commands.Unsubscribe.responder
    def unsubscribe(self, subscription: int) -> dict[str, Any]:
        entry = self._subscriptions.pop(subscription, None)
        if entry is not None:
            entry[0].close()
        return {}

    @commands.ArenaId.responder
    def arena_id(self, arena: str) -> dict[str, Any]:
        try:
            return {"uuid": self.history.uuid(ArenaName(arena))}
        except NotFound:
            raise
        except Exception as e:
            raise IOFailure(f"ArenaId failed: {e}") from None


def history_responders(history: History) -> LocatorFactory:
    """
    @return: the locator factory of the history commands over C{history}.
    """
    return lambda connection: HistoryResponders(connection, history)


@define(eq=False)
class RemoteSubscription:
    """
    A subscription to a peer's history, over one connection
    (L{realize.interfaces.Subscription}).  Every notification received is
    validated (L{realize.model.check_notification}); a peer that sends an
    invalid one fails the pull with L{BadRequest} or L{InvalidPath}.

    @ivar history: the remote history it belongs to.
    @ivar arena: the arena.
    @ivar number: its id on the connection.
    """

    history: RemoteHistory
    arena: ArenaName
    number: int
    caught_up: bool = False
    #: The last position the subscriber applied, sent with the next pull.
    applied: int | None = None
    _closed: bool = field(default=False, init=False)

    def next_batch(
        self, max_count: int = commands.MAX_NOTIFICATIONS
    ) -> Deferred[list[Notification]]:
        return Deferred.fromCoroutine(self._next(max_count))

    async def _next(self, max_count: int) -> list[Notification]:
        if self._closed:
            raise SubscriptionClosed(f"arena {self.arena}: subscription closed")
        arguments: dict[str, Any] = {"subscription": self.number, "max": max_count}
        if self.applied is not None:
            arguments["applied"] = self.applied
        answer = await self.history._call(commands.Notifications, **arguments)
        batch = decode_notifications(self.arena, answer["notifications"])
        if not batch:
            raise BadRequest(
                f"{self.history.label}: an empty batch of notifications for "
                f"arena {self.arena}"
            )
        self.caught_up = bool(answer["caught_up"])
        return batch

    def acknowledge(self, position: int) -> None:
        """
        Say with the next pull that the history was applied up to
        C{position} (the publisher may then trim it).
        """
        self.applied = position

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        connection = self.history.connection
        if not connection.lost.called:
            connection.amp.callRemote(
                commands.Unsubscribe, subscription=self.number
            ).addErrback(lambda _: None)


@define(eq=False)
class RemoteHistory:
    """
    The histories of a peer, over one connection: hides C{callRemote} from
    the services.

    @ivar connection: the connection, authenticated.
    @ivar label: the peer, for messages.
    """

    connection: Connection
    label: str

    def _error(self, failure: Failure) -> BaseException:
        return _translate(failure, self.label)

    async def _call(self, command: type[Any], **arguments: Any) -> dict[str, Any]:
        return await call(self.connection, self._error, command, **arguments)

    async def subscribe(
        self, arena: ArenaName, progress: tuple[str, int] | None
    ) -> RemoteSubscription:
        """
        Subscribe to one arena of the peer.

        @param progress: C{(uuid, position)} stored from this peer, or
            C{None} for a catch-up.
        @raise Unauthorized: if the peer's ACL does not admit us.
        @raise NotFound: if the peer has no history of that arena.
        """
        arguments: dict[str, Any] = {"arena": arena}
        if progress is not None:
            arguments["uuid"], arguments["position"] = progress
        answer = await self._call(commands.Subscribe, **arguments)
        return RemoteSubscription(self, arena, int(answer["subscription"]))

    async def arena_id(self, arena: ArenaName) -> str:
        """
        @return: the uuid of the peer's store of C{arena}.
        @raise NotFound: if the peer has no store of it.
        """
        answer = await self._call(commands.ArenaId, arena=arena)
        return str(answer["uuid"])
