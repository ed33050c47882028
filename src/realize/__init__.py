"""
realize: decentralized, partial file sync between trusted peers.

Peers identified by ed25519 keys move and share the files of named arenas
over AMP-over-TLS.  Milestone 1 is C{realize-move}, a one-shot command that
moves directory trees from one peer to another, resumably and verified with
Merkle/BLAKE3 hashes; C{realized} is the daemon serving a peer's arenas.
"""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # The version (and the incremental package) is loaded only when asked
    # for: every command starts faster.
    if name == "__version__":
        from realize._version import __version__

        return __version__
    raise AttributeError(f"module 'realize' has no attribute {name!r}")
