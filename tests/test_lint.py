"""
The code passes the project's linters: ruff (lint and format) and mypy
--strict with the mypy-zope plugin, as configured in pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).parent.parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.path.dirname(sys.executable))
    found = found or shutil.which(name)
    if found is None:
        raise SkipTest(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600
    )


class LintTests(SynchronousTestCase):
    """
    ruff and mypy accept the code.
    """

    def test_ruff_check(self) -> None:
        """
        ruff finds no problem in src, tests and bench.
        """
        result = _run(_tool("ruff"), "check", "src", "tests", "bench")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_ruff_format(self) -> None:
        """
        The code is formatted as ruff formats it.
        """
        result = _run(_tool("ruff"), "format", "--check", "src", "tests", "bench")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_mypy_strict(self) -> None:
        """
        mypy --strict (with the mypy-zope plugin) accepts src.
        """
        result = _run(_tool("mypy"))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
