"""
Tests for the conflicts of the Unreal's tables (DESIGN.md section 11,
docs/real.md Conflicts): which forks are open, which go when a Replace
settles them, late followers of the chain, and the reserved C{.realize}
name, on bare sqlite3 connections.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from realize.model import PeerId
from realize.storage.unreal import (
    APPLIED,
    FORK,
    RESERVED,
    SUPERSEDED_KEPT,
    Conflict,
    _txn_add,
    _txn_apply_batch,
    _txn_drop,
    _txn_remove,
    _txn_replace,
    count_conflicts,
    forks,
    open_conflicts,
)
from tests.test_unreal_tables import (
    PROGRESS,
    add,
    arena_db,
    drop,
    dump,
    files,
    h,
    inode_of,
    make_tree,
    remove,
    replace,
    run,
)

A = PeerId("a")
B = PeerId("b")
C = PeerId("c")


class ForkTests(SynchronousTestCase):
    """
    Two peers replace the same version: the second is an open conflict
    until it is settled or no peer has it.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.tree = make_tree()
        for peer in (A, B, C):
            run(self.db, _txn_add, self.tree, peer, add("f", 1, 10, h(1)))
        self.inode = inode_of(self.db, "f")
        run(self.db, _txn_replace, self.tree, A, replace("f", 2, 20, h(2), h(1)))
        outcome = run(
            self.db, _txn_replace, self.tree, B, replace("f", 3, 21, h(3), h(1))
        )
        self.assertEqual(outcome, FORK)

    def test_open(self) -> None:
        """
        The fork is listed with its peer, size, mtime and the peers that
        have it; the arena counts one conflict.
        """
        self.assertEqual(
            open_conflicts(self.db, self.inode),
            [Conflict(self.inode, B, h(3), 3, 21, (B,))],
        )
        self.assertEqual(open_conflicts(self.db), open_conflicts(self.db, self.inode))
        self.assertEqual(count_conflicts(self.db), 1)

    def test_batch_counts(self) -> None:
        """
        A batch's result gives the arena's open conflicts and the files
        whose conflicts changed.
        """
        result = run(
            self.db,
            _txn_apply_batch,
            self.tree,
            C,
            [replace("f", 4, 22, h(4), h(1))],
        )
        self.assertEqual(result.outcomes, (FORK,))
        self.assertEqual(result.conflicts, 2)
        self.assertEqual(result.forked, frozenset({self.inode}))
        quiet = run(
            self.db, _txn_apply_batch, self.tree, C, [add("g", 1, 10, h(9), pos=2)]
        )
        self.assertEqual((quiet.conflicts, quiet.forked), (2, frozenset()))

    def test_resolve(self) -> None:
        """
        A Replace of the default (the writer wrote over the version shown)
        settles the forks no newer than its mtime: the listing goes.
        """
        self.assertEqual(
            run(self.db, _txn_replace, self.tree, A, replace("f", 5, 30, h(5), h(2))),
            APPLIED,
        )
        self.assertEqual(files(self.db)["f"][""], (5, 30, h(5)))
        self.assertEqual(open_conflicts(self.db, self.inode), [])
        self.assertEqual(count_conflicts(self.db), 0)
        # B's version stays in B's row: nothing is deleted.
        self.assertEqual(files(self.db)["f"][B], (3, 21, h(3)))

    def test_resolve_keeps_newer(self) -> None:
        """
        A fork whose mtime is newer than the settling write cannot have
        been seen by its writer: it stays.
        """
        run(self.db, _txn_replace, self.tree, C, replace("f", 4, 40, h(4), h(1)))
        run(self.db, _txn_replace, self.tree, A, replace("f", 5, 30, h(5), h(2)))
        self.assertEqual(
            [(c.peer, c.hash) for c in open_conflicts(self.db, self.inode)],
            [(C, h(4))],
        )

    def test_fork_follows_its_peer(self) -> None:
        """
        The fork's peer edits its version again: the new version is the
        conflict, the old one (nobody has it) goes.
        """
        self.assertEqual(
            run(self.db, _txn_replace, self.tree, B, replace("f", 6, 31, h(6), h(3))),
            FORK,
        )
        self.assertEqual(
            [(c.peer, c.hash) for c in open_conflicts(self.db, self.inode)],
            [(B, h(6))],
        )
        self.assertEqual(forks(self.db, self.inode), [(B, h(6))])

    def test_taken_up(self) -> None:
        """
        Another peer writing the fork's content over the default (choosing
        it): the fork becomes the default, no conflict is left.
        """
        run(self.db, _txn_replace, self.tree, A, replace("f", 3, 21, h(3), h(2)))
        self.assertEqual(files(self.db)["f"][""], (3, 21, h(3)))
        self.assertEqual(forks(self.db, self.inode), [])

    def test_removed(self) -> None:
        """
        The fork's peer removes its version: the conflict goes.
        """
        run(self.db, _txn_remove, self.tree, B, remove("f", 50, h(3)))
        self.assertEqual(forks(self.db, self.inode), [])
        self.assertEqual(count_conflicts(self.db), 0)

    def test_dropped_kept_elsewhere(self) -> None:
        """
        A Drop of the fork's version by its peer while another peer holds
        it keeps the conflict (readable from the other peer); the last
        copy dropped ends it.
        """
        run(self.db, _txn_replace, self.tree, C, replace("f", 3, 21, h(3), h(1)))
        run(self.db, _txn_drop, self.tree, B, drop("f", h(3)))
        self.assertEqual(
            open_conflicts(self.db, self.inode),
            [Conflict(self.inode, B, h(3), 3, 21, (C,))],
        )
        run(self.db, _txn_drop, self.tree, C, drop("f", h(3)))
        self.assertEqual(open_conflicts(self.db, self.inode), [])

    def test_file_removed(self) -> None:
        """
        A file no peer has any more takes its forks and superseded
        versions with it.
        """
        run(self.db, _txn_remove, self.tree, A, remove("f", 50, h(2)))
        run(self.db, _txn_remove, self.tree, B, remove("f", 50, h(3)))
        run(self.db, _txn_remove, self.tree, C, remove("f", 50, h(1)))
        self.assertNotIn("f", files(self.db))
        tables = dump(self.db, PROGRESS)
        self.assertEqual(tables["fork"], [])
        self.assertEqual(tables["superseded"], [])


class SupersededTests(SynchronousTestCase):
    """
    A peer following the chain late is no conflict.
    """

    def setUp(self) -> None:
        self.db = arena_db(self)
        self.tree = make_tree()
        run(self.db, _txn_add, self.tree, A, add("f", 1, 10, h(1)))
        run(self.db, _txn_add, self.tree, B, add("f", 1, 10, h(1)))
        self.inode = inode_of(self.db, "f")

    def test_late_follower(self) -> None:
        """
        A edits twice; B realized the first edit and says so after the
        second arrived: B's Replace to a superseded version is applied, no
        fork; a version never the default is still a fork.
        """
        run(self.db, _txn_replace, self.tree, A, replace("f", 2, 20, h(2), h(1)))
        run(self.db, _txn_replace, self.tree, A, replace("f", 3, 30, h(3), h(2)))
        self.assertEqual(
            run(self.db, _txn_replace, self.tree, B, replace("f", 2, 20, h(2), h(1))),
            APPLIED,
        )
        self.assertEqual(forks(self.db, self.inode), [])
        self.assertEqual(
            run(self.db, _txn_replace, self.tree, B, replace("f", 7, 40, h(7), h(2))),
            FORK,
        )

    def test_bounded(self) -> None:
        """
        Only the newest L{SUPERSEDED_KEPT} superseded versions of a file
        are kept.
        """
        for n in range(1, SUPERSEDED_KEPT + 5):
            run(
                self.db,
                _txn_replace,
                self.tree,
                A,
                replace("f", 1, 10 + n, h(n + 1), h(n), pos=n),
            )
        rows = self.db.execute(
            "SELECT count(*) FROM superseded WHERE inode = ?", (self.inode,)
        ).fetchone()
        self.assertEqual(rows[0], SUPERSEDED_KEPT)

    def test_again_default(self) -> None:
        """
        A version that is the default again is no longer superseded.
        """
        run(self.db, _txn_replace, self.tree, A, replace("f", 2, 20, h(2), h(1)))
        run(self.db, _txn_replace, self.tree, A, replace("f", 1, 30, h(1), h(2)))
        hashes = [
            bytes(row[0])
            for row in self.db.execute("SELECT hash FROM superseded ORDER BY hash")
        ]
        self.assertEqual(hashes, [h(2)])


class ReservedTests(SynchronousTestCase):
    """
    Paths under C{.realize} are the view's own: a peer's notification for
    one changes nothing.
    """

    def test_reserved(self) -> None:
        """
        An Add, Replace, Remove or Drop under C{.realize/} is
        L{RESERVED}; the progress still moves; other names beginning with
        C{.realize} are files like any.
        """
        db = arena_db(self)
        tree = make_tree()
        before = dump(db, PROGRESS)
        result = run(
            db,
            _txn_apply_batch,
            tree,
            A,
            [
                add(".realize/conflicts/x/a-1", 1, 10, h(1), pos=1),
                add(".realize", 1, 10, h(1), pos=2),
                replace(".realize/y", 1, 10, h(2), h(1), pos=3),
                remove(".realize/y", 10, h(1), pos=4),
                drop(".realize/y", h(1), pos=5),
                add(".realized", 1, 10, h(1), pos=6),
            ],
        )
        self.assertEqual(result.outcomes, (RESERVED,) * 5 + (APPLIED,))
        after = dump(db, PROGRESS)
        self.assertEqual(after["fork"], before["fork"])
        self.assertEqual(list(files(db)), [".realized"])
        self.assertEqual(
            db.execute("SELECT position FROM peer_progress").fetchone(), (6,)
        )


class LocalSettleTests(SynchronousTestCase):
    """
    This peer's own edit of its version listed as a conflict settles it.
    """

    def test_own_fork(self) -> None:
        """
        B (this peer) replaced the version after A did: its version is a
        fork here.  B's user writes the chosen content over B's version:
        it becomes the default and the conflict goes.  The same Replace
        from another peer is a plain fork chain.
        """
        for me, settled in ((B, True), (C, False)):
            db = arena_db(self)
            tree = make_tree()
            run(db, _txn_add, tree, A, add("f", 1, 10, h(1)))
            run(db, _txn_add, tree, B, add("f", 1, 10, h(1)))
            inode = inode_of(db, "f")
            run(db, _txn_replace, tree, A, replace("f", 2, 20, h(2), h(1)))
            run(db, _txn_replace, tree, B, replace("f", 3, 21, h(3), h(1)))
            result = run(
                db,
                _txn_apply_batch,
                tree,
                B,
                [replace("f", 4, 30, h(4), h(3), pos=2)],
                me,
            )
            if settled:
                self.assertEqual(result.outcomes, (APPLIED,))
                self.assertEqual(files(db)["f"][""], (4, 30, h(4)))
                self.assertEqual(open_conflicts(db, inode), [])
            else:
                self.assertEqual(result.outcomes, (FORK,))
                self.assertEqual(files(db)["f"][""], (2, 20, h(2)))
                self.assertEqual(forks(db, inode), [(B, h(4))])
