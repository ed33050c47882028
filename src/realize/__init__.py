"""
realize: decentralized, partial file sync between trusted peers.

Peers identified by ed25519 keys move and share the files of named arenas
over AMP-over-TLS.  Milestone 1 is C{realize-move}, a one-shot command that
moves directory trees from one peer to another, resumably and verified with
Merkle/BLAKE3 hashes; C{realized} is the daemon serving a peer's arenas.
"""

from realize._version import __version__

__all__ = ["__version__"]
