"""
C{realized} with some files marked C{keep} by path, for the block cache's
integration tests: it stands in for the marks (issue 12) through
L{realize.tap.unreal.UnrealService.mark_of}.

    python -m tests.keep_daemon --config ... (the options of realized)

The arena-relative paths marked keep are in C{REALIZE_TEST_KEEP},
comma-separated.
"""

from __future__ import annotations

import os
from typing import Any

from realize.model import ArenaName
from realize.tap import realized

KEEP = frozenset(filter(None, os.environ.get("REALIZE_TEST_KEEP", "").split(",")))

_make = realized.UnrealService


def _unreal(*args: Any, **kwargs: Any) -> Any:
    service = _make(*args, **kwargs)

    def mark_of(arena: ArenaName, inode: int) -> str | None:
        # A test stand-in: the real marks answer from memory.
        located = None if service.view is None else service.view.locate(inode)
        return "keep" if located is not None and located[1] in KEEP else None

    service.mark_of = mark_of
    return service


realized.UnrealService = _unreal  # type: ignore[misc]

if __name__ == "__main__":
    realized.main()
