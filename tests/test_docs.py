"""
The documentation's examples stay true.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from realize.config import parse_config

ROOT = Path(__file__).parent.parent


class ReadmeTests(SynchronousTestCase):
    """
    README.md.
    """

    def test_config_example(self) -> None:
        """
        The README's TOML config example is a valid config with the peers
        and arena it describes.
        """
        text = (ROOT / "README.md").read_text()
        [example] = re.findall(r"```toml\n(.*?)```", text, re.S)
        config = parse_config(tomllib.loads(example), "README.md", Path("/"))
        self.assertEqual(sorted(config.peers), ["laptop", "nas"])
        self.assertEqual(config.peers["nas"].address, ("nas.home.example", 9771))
        self.assertEqual(list(config.arenas), ["photos"])

    def test_set_up_commands(self) -> None:
        """
        The two set-up commands named in the README are Makefile targets,
        and .ci/run runs the test one.
        """
        text = (ROOT / "README.md").read_text()
        self.assertIn("make demo", text)
        self.assertIn("make test", text)
        makefile = (ROOT / "Makefile").read_text()
        self.assertIn("\ndemo:", makefile)
        self.assertIn("\ntest:", makefile)
        ci = (ROOT / ".ci" / "run").read_text()
        self.assertIn("\nmake test ", ci)
        self.assertTrue(os.access(ROOT / ".ci" / "run", os.X_OK))
