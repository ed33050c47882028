"""
C{realize-keygen NAME}: make an ed25519 key pair for a peer, as C{openssl
genpkey -algorithm ed25519} would, and print the config entry of its
public key.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from realize.net.tls import public_key_pem

__all__ = ["main", "write_key_pair"]


def write_key_pair(directory: str, name: str) -> tuple[str, str]:
    """
    Write C{NAME.key} (private, mode 0600, PEM PKCS#8) and C{NAME.pub}
    (public, PEM).

    @param directory: where to write them.
    @param name: the peer's id.
    @return: the paths of the private and public key files.
    @raise FileExistsError: if the private key file exists (never
        overwritten).
    """
    key = Ed25519PrivateKey.generate()
    private = os.path.join(directory, f"{name}.key")
    public = os.path.join(directory, f"{name}.pub")
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    with open(public, "w") as f:
        f.write(public_key_pem(key))
    return private, public


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{realize-keygen} console script.
    """
    parser = argparse.ArgumentParser(
        prog="realize-keygen",
        description="Make an ed25519 key pair (NAME.key, NAME.pub) for a peer.",
    )
    parser.add_argument("name", help="the peer's id, e.g. laptop")
    parser.add_argument("--dir", default=".", help="where to write the files")
    args = parser.parse_args(argv)
    try:
        private, public = write_key_pair(args.dir, args.name)
    except FileExistsError as e:
        sys.exit(f"realize-keygen: {e.filename} exists; not overwriting it")
    except OSError as e:
        sys.exit(f"realize-keygen: {e}")
    with open(public) as f:
        pem = f.read()
    print(f"wrote {private} (keep it secret) and {public}")
    print("\nconfig entry for this peer:\n")
    print(f'[peers.{args.name}]\n# address = "host:9771"\npubkey = """{pem.strip()}"""')


if __name__ == "__main__":  # pragma: no cover
    main()
