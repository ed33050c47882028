"""
Tests for the decisions of L{realize.tap.move} that need no reactor:
options, overlapping sides, which log events are built.  The command
itself runs in tests/test_integration.py.
"""

from __future__ import annotations

import os

from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from realize.logs import LogSettings
from realize.model import ArenaName
from realize.services.lock import LOCK_WAIT
from realize.tap.move import MoveOptions, moves_logged, overlap

A = ArenaName("docs")


class WaitOptionTests(SynchronousTestCase):
    """
    C{--wait}.
    """

    def parse(self, *args: str) -> MoveOptions:
        options = MoveOptions()
        options.parseOptions(["--src", "local", "--dst", "b", *args, "docs"])
        return options

    def test_default(self) -> None:
        """
        Without it, a move waits L{LOCK_WAIT} seconds for another.
        """
        self.assertEqual(self.parse()["wait"], LOCK_WAIT)

    def test_values(self) -> None:
        """
        A duration, or 0 to refuse at once.
        """
        self.assertEqual(self.parse("--wait", "1h")["wait"], 3600.0)
        self.assertEqual(self.parse("--wait", "0")["wait"], 0.0)
        self.assertEqual(self.parse("--wait", "0.5")["wait"], 0.5)

    def test_bad(self) -> None:
        """
        Anything else is a usage error naming the option.
        """
        error = self.assertRaises(usage.UsageError, self.parse, "--wait", "soon")
        self.assertIn("--wait", str(error))


class OverlapTests(SynchronousTestCase):
    """
    L{overlap}: sides that are one directory, or one inside the other.
    """

    def setUp(self) -> None:
        self.root = os.path.realpath(self.mktemp())
        for name in ("a", "ab", "a/sub"):
            os.makedirs(os.path.join(self.root, name))

    def local(self, name: str) -> str:
        return f"local:{os.path.join(self.root, name)}"

    def test_apart(self) -> None:
        """
        Siblings do not overlap, even when one's name starts with the
        other's; remote peers are not compared.
        """
        self.assertIsNone(overlap(self.local("a"), self.local("ab"), [A], None))
        self.assertIsNone(overlap(self.local("ab"), self.local("a"), [A], None))
        self.assertIsNone(overlap(self.local("a"), "nas", [A], None))

    def test_nested(self) -> None:
        """
        A destination inside the source, and the reverse, are refused,
        as is the same directory spelled differently.
        """
        inside = overlap(self.local("a"), self.local("a/sub"), [A], None)
        self.assertIsNotNone(inside)
        self.assertIn("the destination lies inside the source", str(inside))
        holding = overlap(self.local("a/sub"), self.local("a"), [A], None)
        self.assertIn("the source lies inside the destination", str(holding))
        same = overlap(self.local("a"), self.local("a/sub/.."), [A], None)
        self.assertIn("are the same", str(same))


class MovesLoggedTests(SynchronousTestCase):
    """
    L{moves_logged}: the mover builds its per-file info events only when
    the log would show them.
    """

    def test_default(self) -> None:
        """
        realize-move's default level (warn) drops them.
        """
        options = MoveOptions()
        options.parseOptions(["--src", "local", "--dst", "b", "docs"])
        self.assertFalse(moves_logged(options["log"]))

    def test_info(self) -> None:
        """
        At level info they are shown, unless their namespace is left out
        or another namespace is selected.
        """
        self.assertTrue(moves_logged(LogSettings(LogLevel.info, "json")))
        self.assertTrue(moves_logged(LogSettings(LogLevel.debug, "text", ("realize",))))
        self.assertFalse(
            moves_logged(LogSettings(LogLevel.info, "text"), ["realize.move"])
        )
        self.assertFalse(
            moves_logged(LogSettings(LogLevel.info, "text", ("realize.auth",)))
        )
