"""
Tests for the twistd plugins in C{src/twisted/plugins/realize_plugins.py}.
"""

from __future__ import annotations

import gc
import os
import sys

from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from realize.collector import GC_THRESHOLD
from realize.tap._common import SWITCH_INTERVAL
from realize.tap.keygen import write_key_pair

SIDES = ["--src", "a", "--dst", "b"]


def plugins() -> dict[str, IServiceMaker]:
    return {p.tapname: p for p in getPlugins(IServiceMaker)}


class PluginTests(SynchronousTestCase):
    """
    Both plugins are found by twistd and build their services.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        _, public = write_key_pair(self.root, "b")
        with open(public) as f:
            pem = f.read()
        self.config = os.path.join(self.root, "b.toml")
        with open(self.config, "w") as f:
            f.write(
                f'[peers.b]\npubkey = """{pem}"""\n'
                f'[[arena]]\nname = "docs"\ndatadir = "{self.root}/docs"\n'
            )

    def test_found(self) -> None:
        """
        getPlugins finds realized and realize-move with descriptions.
        """
        found = plugins()
        self.assertIn("realized", found)
        self.assertIn("realize-move", found)
        self.assertIn("daemon", found["realized"].description)

    def test_realized_service(self) -> None:
        """
        The realized plugin parses its options and builds a MultiService of
        thread pool, store and listener, in that order; it shortens the GIL
        switch interval.
        """
        maker = plugins()["realized"]
        options = maker.options()
        options.parseOptions(
            [
                "--config",
                self.config,
                "--privkey",
                os.path.join(self.root, "b.key"),
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        before = sys.getswitchinterval()
        self.addCleanup(sys.setswitchinterval, before)
        sys.setswitchinterval(0.005)
        self.keep_gc_threshold()
        service = maker.makeService(options)
        self.assertTrue(IService.providedBy(service))
        self.assertIsInstance(service, MultiService)
        # Its threads take turns on the GIL every 1 ms, not 5 (issue 15).
        self.assertEqual(sys.getswitchinterval(), SWITCH_INTERVAL)
        # Its collector runs every 50,000 allocations, not 700 (issue 15).
        self.assertEqual(gc.get_threshold()[0], GC_THRESHOLD)
        # The daemon, inside the service that makes twistd log our way.
        [daemon] = list(service)  # type: ignore[call-overload]
        names = [type(s).__name__ for s in daemon]
        # In start order; they stop in the reverse order, one by one.
        self.assertEqual(
            names,
            [
                "ArenaDbs",
                "ThreadPoolService",
                "ThreadPoolService",
                "WorkerService",
                "StoreService",
                "HistoryService",
                "WatcherService",
                "UnrealService",
                "ConnectionsService",
                "_GateService",
                "_ListenService",
                "ReloadService",
            ],
        )

    def keep_gc_threshold(self) -> None:
        """
        Put Python's default threshold back after the test, and set it
        now, so that the test sees a plugin change it.
        """
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        gc.set_threshold(700, *before[1:])

    def test_realized_requires_options(self) -> None:
        """
        realized without --config or --privkey is a usage error.
        """
        options = plugins()["realized"].options()
        self.assertRaises(usage.UsageError, options.parseOptions, ["--config", "x"])

    def test_realize_move_service(self) -> None:
        """
        The realize-move plugin parses its options (options after the
        arenas too) and builds a service.
        """
        maker = plugins()["realize-move"]
        options = maker.options()
        options.parseOptions(
            ["--src", "local:/a", "docs", "--dst", "local:/b", "-o", "quiet"]
        )
        self.assertEqual(options["arenas"], ["docs"])
        self.assertEqual(options["output"], "quiet")
        self.assertEqual(options["dst"], "local:/b")
        self.keep_gc_threshold()
        self.assertTrue(IService.providedBy(maker.makeService(options)))
        self.assertEqual(gc.get_threshold()[0], GC_THRESHOLD)

    def test_realize_move_throttle_options(self) -> None:
        """
        --throttle sets both directions, --throttle-up/--throttle-down one
        each, with k/M/G suffixes in KiB/MiB/GiB.
        """
        maker = plugins()["realize-move"]
        options = maker.options()
        options.parseOptions(["--src", "a", "--dst", "b", "--throttle", "512k", "x"])
        self.assertEqual(
            (options["rate_up"], options["rate_down"]), (512 << 10, 512 << 10)
        )
        options = maker.options()
        options.parseOptions(
            [
                "--src",
                "a",
                "--dst",
                "b",
                "--throttle-up",
                "2M",
                "--throttle-down",
                "0",
                "x",
            ]
        )
        self.assertEqual((options["rate_up"], options["rate_down"]), (2 << 20, 0))
        options = maker.options()
        options.parseOptions(
            ["--src", "a", "--dst", "b", "--max-duration", "1h30m", "x"]
        )
        self.assertEqual(options["max_duration"], 5400)

    def test_realize_move_usage_errors(self) -> None:
        """
        realize-move refuses a missing side, no arena, a bad output mode and
        a bad arena name.
        """
        for argv, message in [
            (["--dst", "b", "docs"], "--src is required"),
            (["--src", "a", "--dst", "b"], "at least one ARENA"),
            (["--src", "a", "--dst", "b", "-o", "loud", "x"], "--output"),
            (["--src", "a", "--dst", "b", "../x"], "'..'"),
            (["--src", "a", "--dst", "b", "x", "x"], "twice"),
            (
                [
                    "--src",
                    "a",
                    "--dst",
                    "b",
                    "--throttle",
                    "1M",
                    "--throttle-up",
                    "2M",
                    "x",
                ],
                "not both",
            ),
            (
                ["--src", "a", "--dst", "b", "--throttle-down", "fast", "x"],
                "--throttle-down",
            ),
            (
                ["--src", "a", "--dst", "b", "--max-duration", "soon", "x"],
                "--max-duration",
            ),
        ]:
            options = plugins()["realize-move"].options()
            error = self.assertRaises(usage.UsageError, options.parseOptions, argv)
            self.assertIn(message, str(error))
