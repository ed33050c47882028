"""
Tests for L{realize.services.decisions}: the decision table of the
consensus jobs (mark x local state x remote state -> job), and the retry
backoff.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from realize.model import PeerId
from realize.services.decisions import (
    BACKOFF_JITTER,
    BACKOFF_MAX,
    KEEP,
    NOTHING,
    REALIZE,
    REMOVE,
    UNREALIZE,
    UPDATE,
    WAIT,
    backoff,
    decide,
)
from realize.storage.blobs import QUEUE_PROTECTED, QUEUE_WORKING
from realize.storage.consensus import Cached, LocalCopy, Situation, Version
from realize.storage.marks import ORIGIN_DEFAULT, ORIGIN_SET, EffectiveMark

P, Q = PeerId("p"), PeerId("q")

#: Sentinel: this peer's row has the local copy's hash.
SAME = object()


def h(n: int) -> bytes:
    return bytes([n]) * 32


def situation(
    mark: str,
    local: int | None = None,
    default: int | None = None,
    *,
    unhashed_local: bool = False,
    unhashed_default: bool = False,
    mine: Any = SAME,
    holders: tuple[PeerId, ...] = (),
    **events: Any,
) -> Situation:
    """
    A situation: versions are given by number (C{h(n)}); the local copy has
    mtime 100.
    """
    local_copy = None
    if local is not None or unhashed_local:
        local_copy = LocalCopy(10, 100, None if unhashed_local else h(local or 0))
    version = None
    if default is not None or unhashed_default:
        version = Version(7, 10, 90, None if unhashed_default else h(default or 0))
    if mine is SAME:
        has_mine, mine_hash = (
            local_copy is not None,
            (None if local_copy is None else local_copy.hash),
        )
    else:
        has_mine, mine_hash = mine is not None, None if mine is None else h(mine)
    return Situation(
        "d/f",
        EffectiveMark(mark, ORIGIN_SET, "d"),
        local_copy,
        version,
        has_mine,
        mine_hash,
        holders,
        **events,
    )


COMPLETE = Cached(1, 10, 10, QUEUE_WORKING)
PROTECTED = Cached(1, 10, 10, QUEUE_PROTECTED)
HALF = Cached(1, 5, 10, QUEUE_PROTECTED)

#: (what, situation, copies, connected peers, datadir, expected action)
TABLE: list[tuple[str, Situation, int, set[PeerId], bool, str]] = [
    # own, no local copy
    ("own remote", situation("own", default=1), 1, set(), True, REALIZE),
    ("own, no file", situation("own"), 1, set(), True, NOTHING),
    (
        "own, no version yet",
        situation("own", unhashed_default=True),
        1,
        set(),
        True,
        NOTHING,
    ),
    (
        "own, deleted here",
        situation("own", default=1, removed_local=h(1)),
        1,
        set(),
        True,
        NOTHING,
    ),
    (
        "own, deleted here, newer version",
        situation("own", default=2, removed_local=h(1)),
        1,
        set(),
        True,
        REALIZE,
    ),
    ("own, no datadir", situation("own", default=1), 1, set(), False, NOTHING),
    # own, local copy
    ("own, up to date", situation("own", 1, 1), 1, set(), True, NOTHING),
    (
        "own, replaced by a peer",
        situation("own", 1, 2, superseded=h(1)),
        1,
        set(),
        True,
        UPDATE,
    ),
    (
        "own, realized here, outdated",
        situation("own", 1, 2, realized=h(1)),
        1,
        set(),
        True,
        UPDATE,
    ),
    ("own, conflict", situation("own", 1, 2), 1, set(), True, NOTHING),
    (
        "own, local fork",
        situation("own", 1, 2, superseded=h(1), fork=True),
        1,
        set(),
        True,
        NOTHING,
    ),
    (
        "own, removed by a peer",
        situation("own", 1, 1, removed_remote=(h(1), 200)),
        1,
        set(),
        True,
        REMOVE,
    ),
    (
        "own, removed before the local mtime",
        situation("own", 1, 1, removed_remote=(h(1), 50)),
        1,
        set(),
        True,
        NOTHING,
    ),
    (
        "own, another version removed",
        situation("own", 1, 1, removed_remote=(h(2), 200)),
        1,
        set(),
        True,
        NOTHING,
    ),
    # the tables lag behind the disk
    (
        "local not hashed",
        situation("own", unhashed_local=True, default=1),
        1,
        set(),
        True,
        WAIT,
    ),
    (
        "own row behind the index",
        situation("watch", 1, 1, mine=0, holders=(P,)),
        1,
        {P},
        True,
        WAIT,
    ),
    (
        "local deletion not fed yet",
        situation("own", default=1, mine=1),
        1,
        set(),
        True,
        WAIT,
    ),
    # watch / keep with a local copy
    (
        "watch, held by one connected peer",
        situation("watch", 1, 1, holders=(P,)),
        1,
        {P},
        True,
        UNREALIZE,
    ),
    (
        "watch, holder not connected",
        situation("watch", 1, 1, holders=(P,)),
        1,
        set(),
        True,
        NOTHING,
    ),
    (
        "watch, one holder, copies 2",
        situation("watch", 1, 1, holders=(P,)),
        2,
        {P},
        True,
        NOTHING,
    ),
    (
        "watch, two holders, copies 2",
        situation("watch", 1, 1, holders=(P, Q)),
        2,
        {P, Q},
        True,
        UNREALIZE,
    ),
    (
        "watch, two holders, one connected, copies 2",
        situation("watch", 1, 1, holders=(P, Q)),
        2,
        {P},
        True,
        NOTHING,
    ),
    (
        "watch, no holder",
        situation("watch", 1, 1),
        1,
        {P},
        True,
        NOTHING,
    ),
    (
        "keep, held",
        situation("keep", 1, 1, holders=(P,)),
        1,
        {P},
        True,
        UNREALIZE,
    ),
    (
        "watch, local version not shown",
        situation("watch", 1, 2, holders=(P,)),
        1,
        {P},
        True,
        NOTHING,
    ),
    # keep / watch without a local copy
    ("keep, not cached", situation("keep", default=1), 1, set(), True, KEEP),
    (
        "keep, cached, protected",
        situation("keep", default=1, cached=PROTECTED),
        1,
        set(),
        True,
        NOTHING,
    ),
    (
        "keep, cached, not protected",
        situation("keep", default=1, cached=COMPLETE),
        1,
        set(),
        True,
        KEEP,
    ),
    (
        "keep, half cached",
        situation("keep", default=1, cached=HALF),
        1,
        set(),
        False,
        KEEP,
    ),
    (
        "keep, no version yet",
        situation("keep", unhashed_default=True),
        1,
        set(),
        True,
        NOTHING,
    ),
    ("watch, remote", situation("watch", default=1), 1, set(), True, NOTHING),
]


class DecideTests(SynchronousTestCase):
    """
    L{decide}.
    """

    def test_table(self) -> None:
        """
        Each row of the decision table gives its job, with a reason.
        """
        for what, s, copies, connected, datadir, expected in TABLE:
            decision = decide(s, copies, connected.__contains__, datadir)
            self.assertEqual((what, decision.action), (what, expected), decision.reason)
            self.assertTrue(decision.reason, what)

    def test_default_mark(self) -> None:
        """
        An arena's default mark decides as a mark set on the path does.
        """
        s = situation("own", default=1)
        inherited = Situation(
            s.path,
            EffectiveMark("own", ORIGIN_DEFAULT, None),
            s.local,
            s.default,
            s.mine,
            s.mine_hash,
            s.holders,
        )
        self.assertEqual(decide(inherited, 1, lambda p: True, True).action, REALIZE)


class BackoffTests(SynchronousTestCase):
    """
    L{backoff}.
    """

    def test_doubling(self) -> None:
        """
        15 s, doubling, capped at L{BACKOFF_MAX}.
        """
        self.assertEqual(
            [backoff(n) for n in range(1, 10)],
            [15, 30, 60, 120, 240, 480, 960, 1920, 3600],
        )
        self.assertEqual(backoff(500), BACKOFF_MAX)

    def test_jitter(self) -> None:
        """
        The jitter adds up to L{BACKOFF_JITTER} of the delay.
        """
        self.assertEqual(backoff(1, 0.5), 15 * (1 + BACKOFF_JITTER / 2))
