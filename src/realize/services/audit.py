"""
The audit trail (#nochurten; DESIGN.md section 11): every step of the
consensus jobs, and the connections of the peers that feed the Unreal, as
structured events in the log namespace C{realize.audit}, counted in
L{realize.metrics.ConsensusMetrics}.

Each job event has the fields C{event} (one of L{EVENTS}), C{arena},
C{path} and C{action} (what the job does: C{realize}, C{update},
C{remove}, C{unrealize}, C{keep}), and, where they apply, C{hash}
(C{blake3m:...}), C{size} (bytes), C{peers} (the peers holding the
version), C{reason} (why it was decided, or why it failed) and
C{retry_in} (seconds until it is tried again).  Connections have
C{event} (C{connect}, C{disconnect}) and C{peer}; the household logs them
(L{realize.services.household}) and L{Audit.observe} counts them.

Levels: C{failed} is a warning (it is retried); the steps are C{info}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from attrs import define
from twisted.logger import Logger

from realize.metrics import OUTCOME_DONE, OUTCOME_FAILED, ConsensusMetrics

if TYPE_CHECKING:
    from realize.config import Config
    from realize.net.framing import Connection

__all__ = [
    "DISCONNECT",
    "DOWNLOAD",
    "EVENTS",
    "EVICT",
    "FAILED",
    "QUEUED",
    "REALIZE",
    "REMOVE",
    "UNREALIZE",
    "VERIFY",
    "Audit",
]

QUEUED: Final = "queued"
DOWNLOAD: Final = "download"
VERIFY: Final = "verify"
REALIZE: Final = "realize"
UNREALIZE: Final = "unrealize"
REMOVE: Final = "remove"
EVICT: Final = "evict"
FAILED: Final = "failed"
CONNECT: Final = "connect"
DISCONNECT: Final = "disconnect"

#: The job events, in the order a job may go through them.
EVENTS: Final = (QUEUED, DOWNLOAD, VERIFY, REALIZE, UNREALIZE, REMOVE, EVICT, FAILED)

#: Module level: a L{Logger} class attribute takes its class's name as its
#: namespace, whatever it was given.
log = Logger(namespace="realize.audit")

_TEXT = {
    QUEUED: "queued {action} of {arena}/{path}: {reason}",
    DOWNLOAD: "downloading {arena}/{path} ({size} bytes) for {action}",
    VERIFY: "verifying {arena}/{path} against {hash}",
    REALIZE: "realized {arena}/{path} ({size} bytes, {hash})",
    UNREALIZE: "unrealized {arena}/{path} into the cache ({size} bytes, {hash})",
    REMOVE: "removed {arena}/{path}: {reason}",
    EVICT: "evicted {arena}/{path} from the cache ({size} bytes)",
}


@define(eq=False)
class Audit:
    """
    Logs and counts audit events.

    @ivar metrics: where to count, or C{None}.
    @ivar config: the config in force (which connections feed the Unreal),
        or C{None}.
    """

    metrics: ConsensusMetrics | None = None
    config: Config | None = None

    def step(
        self, event: str, arena: str, path: str, action: str, **fields: Any
    ) -> None:
        """
        Log one job step (C{info}) and count it.

        @param event: one of L{EVENTS} but L{FAILED}.
        @param fields: the event's other fields (C{hash}, C{size}, ...).
        """
        fields.setdefault("reason", "")
        fields.setdefault("size", None)
        fields.setdefault("hash", None)
        log.info(
            _TEXT.get(event, "{event} {arena}/{path}"),
            event=event,
            arena=arena,
            path=path,
            action=action,
            **fields,
        )
        if self.metrics is not None:
            self.metrics.event(arena, event)

    def failed(
        self, arena: str, path: str, action: str, reason: str, retry_in: float
    ) -> None:
        """
        Log a failed job (C{warn}: it is retried) and count it.
        """
        log.warn(
            "{action} of {arena}/{path} failed: {reason}; retry in {retry_in:.0f} s",
            event=FAILED,
            arena=arena,
            path=path,
            action=action,
            reason=reason,
            retry_in=retry_in,
        )
        if self.metrics is not None:
            self.metrics.event(arena, FAILED)
            self.metrics.job(arena, action, OUTCOME_FAILED)

    def done(self, arena: str, action: str) -> None:
        """
        Count a job that ended well (its steps were logged).
        """
        if self.metrics is not None:
            self.metrics.job(arena, action, OUTCOME_DONE)

    # RegistryObserver: counts what the household logs.

    def _feeds(self, connection: Connection) -> bool:
        from realize.services.household import feeds_on

        return self.config is not None and feeds_on(connection, self.config)

    def connected(self, connection: Connection) -> None:
        if self.metrics is not None and self._feeds(connection):
            self.metrics.connection(str(connection.peer), CONNECT)

    def disconnected(self, connection: Connection) -> None:
        if self.metrics is not None and self._feeds(connection):
            self.metrics.connection(str(connection.peer), DISCONNECT)
