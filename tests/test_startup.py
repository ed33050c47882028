"""
What realize-move loads at start-up: every run pays for it, and a move of
many small files is short.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase


class StartupTests(SynchronousTestCase):
    """
    realize-move imports numpy (through the delta code) only when a file
    needs repair: numpy costs every start-up about 60 ms.
    """

    def test_no_numpy(self) -> None:
        """
        Importing the command, the mover and the local store does not
        import numpy; importing the delta code does.
        """
        code = (
            "import sys\n"
            "import realize.tap.move, realize.services.mover, "
            "realize.storage.real\n"
            "print('numpy' in sys.modules)\n"
            "import realize.delta\n"
            "print('numpy' in sys.modules)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(out.split(), ["False", "True"])
