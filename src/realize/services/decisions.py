"""
The decision table of the consensus jobs (DESIGN.md section 11): what a
job does about a path, from its effective mark, its local copy and the
peers' versions (L{decide}), and when a failed job is tried again
(L{backoff}).  Pure functions, tested alone;
L{realize.services.consensus} runs them.

The table (C{local}: the real file; C{default}: the version the Unreal
shows; C{holders}: the other connected peers whose copy has the local
version):

    - any mark, a local copy not hashed yet, or the Unreal not caught up
      with the disk (this peer's own row differs from the index): L{WAIT}
      (the path is queued again when it catches up);
    - C{own}, local copy:
        - a peer removed this very version (Remove with a newer mtime):
          L{REMOVE};
        - default equal to it, or no default version: L{NOTHING};
        - default differs, the local version a fork: L{NOTHING} (a
          conflict, both stay readable);
        - default differs, the local version one a peer replaced (the
          default moved away from it) or one this peer realized:
          L{UPDATE};
        - default differs otherwise: L{NOTHING} (a conflict);
    - C{own}, no local copy: L{REALIZE} if there is a default version with
      a hash, the arena has a datadir here, and that version was not
      deleted here; else L{NOTHING};
    - C{keep} or C{watch}, local copy that is the default version, held by
      at least C{copies} other connected peers: L{UNREALIZE}; else
      L{NOTHING};
    - C{keep}, no local copy, a default version not yet complete and
      protected in the cache: L{KEEP};
    - anything else: L{NOTHING}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from attrs import frozen

from realize.model import PeerId
from realize.storage.blobs import QUEUE_PROTECTED
from realize.storage.consensus import Situation
from realize.storage.marks import MARK_KEEP, MARK_OWN

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_JITTER",
    "BACKOFF_MAX",
    "KEEP",
    "NOTHING",
    "REALIZE",
    "REMOVE",
    "UNREALIZE",
    "UPDATE",
    "WAIT",
    "Decision",
    "backoff",
    "decide",
]

#: Seconds before the first retry of a failed job; doubled after each
#: failure in a row, up to L{BACKOFF_MAX}.
BACKOFF_BASE: Final = 15.0
BACKOFF_MAX: Final = 3600.0

#: A retry waits up to this fraction longer, at random, so that two peers
#: that failed together do not retry together.
BACKOFF_JITTER: Final = 0.1

#: What a job does (L{Decision.action}).
NOTHING: Final = "nothing"
WAIT: Final = "wait"
REALIZE: Final = "realize"
UPDATE: Final = "update"
REMOVE: Final = "remove"
UNREALIZE: Final = "unrealize"
KEEP: Final = "keep"


@frozen
class Decision:
    """
    What a job does about a path, and why.

    @ivar action: L{NOTHING}, L{WAIT} (the tables have not caught up with
        the disk yet; the path is queued again when they do), L{REALIZE},
        L{UPDATE}, L{REMOVE}, L{UNREALIZE} or L{KEEP}.
    @ivar reason: for the log and the audit.
    """

    action: str
    reason: str


def decide(
    s: Situation,
    copies: int,
    connected: Callable[[PeerId], bool],
    datadir: bool,
) -> Decision:
    """
    The decision table: mark x local state x remote state -> job.

    @param s: the path's situation.
    @param copies: how many other peers must hold a version before the
        local copy of it is unrealized (C{[[arena]] copies}).
    @param connected: whether a peer is connected now (only connected
        holders count).
    @param datadir: whether the arena has a datadir here.
    """
    local, default = s.local, s.default
    if local is not None:
        if local.hash is None:
            return Decision(WAIT, "the local copy is not hashed yet")
        if not s.mine or s.mine_hash != local.hash:
            return Decision(WAIT, "the Unreal has not caught up with the local copy")
    elif s.mine:
        return Decision(WAIT, "the Unreal has not caught up with the local deletion")
    if s.mark.mark == MARK_OWN:
        if local is not None:
            removed = s.removed_remote
            if (
                removed is not None
                and removed[0] == local.hash
                and local.mtime_ns <= removed[1]
            ):
                return Decision(REMOVE, "a peer removed this version")
            if default is None or default.hash is None:
                return Decision(NOTHING, "no version to follow")
            if default.hash == local.hash:
                return Decision(NOTHING, "up to date")
            if s.fork:
                return Decision(NOTHING, "conflict: the local version is a fork")
            if local.hash in (s.superseded, s.realized):
                return Decision(UPDATE, "a peer replaced the local version")
            return Decision(NOTHING, "conflict: the local version was not replaced")
        if not datadir:
            return Decision(NOTHING, "no datadir here")
        if default is None:
            return Decision(NOTHING, "no such file")
        if default.hash is None:
            return Decision(NOTHING, "no version yet")
        if s.removed_local == default.hash:
            return Decision(NOTHING, "this version was deleted here")
        return Decision(REALIZE, "owned, not here")
    if local is not None:
        if default is None or default.hash != local.hash:
            return Decision(NOTHING, "the local version is not the one shown")
        holders = [peer for peer in s.holders if connected(peer)]
        if len(holders) < copies:
            return Decision(
                NOTHING,
                f"{len(holders)} of {copies} other connected peers hold this version",
            )
        return Decision(
            UNREALIZE,
            f"{s.mark.mark}, and this version is held by {', '.join(holders)}",
        )
    if s.mark.mark == MARK_KEEP and default is not None and default.hash is not None:
        cached = s.cached
        if cached is not None and cached.complete and cached.queue == QUEUE_PROTECTED:
            return Decision(NOTHING, "kept")
        return Decision(KEEP, "kept in the cache")
    return Decision(NOTHING, f"{s.mark.mark}: nothing to do")


def backoff(attempts: int, jitter: float = 0.0) -> float:
    """
    @param attempts: failures in a row, C{>= 1}.
    @param jitter: a number in C{[0, 1)}: the share of L{BACKOFF_JITTER}
        added.
    @return: seconds before the next try: 15, 30, 60, ... up to
        L{BACKOFF_MAX}, plus the jitter.
    """
    doublings = max(0, min(attempts - 1, 30))
    base = min(BACKOFF_BASE * float(1 << doublings), BACKOFF_MAX)
    return float(base * (1 + BACKOFF_JITTER * jitter))
