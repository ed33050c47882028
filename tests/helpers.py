"""
Helpers shared by the tests.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from realize.config import public_key_spki
from realize.net.tls import public_key_pem

T = TypeVar("T")


def sync_run_in_thread(
    f: Callable[..., T], /, *args: Any, **kwargs: Any
) -> Deferred[T]:
    """
    A L{realize.interfaces.RunInThread} that runs the function at once, in
    the calling thread: stores become synchronous for
    C{SynchronousTestCase}.
    """
    try:
        return succeed(f(*args, **kwargs))
    except BaseException as e:
        return fail(e)


def result_of(case: SynchronousTestCase, coro: Coroutine[Any, Any, T]) -> T:
    """
    Run a coroutine that completes synchronously and return its result.
    """
    return case.successResultOf(Deferred.fromCoroutine(coro))


def failure_of(
    case: SynchronousTestCase,
    coro: Coroutine[Any, Any, Any],
    *types: type[BaseException],
) -> BaseException:
    """
    Run a coroutine that fails synchronously and return its exception,
    checking its type.
    """
    return case.failureResultOf(Deferred.fromCoroutine(coro), *types).value


def make_key() -> tuple[Ed25519PrivateKey, str, bytes]:
    """
    @return: a new private key, its public key PEM and its SPKI DER.
    """
    key = Ed25519PrivateKey.generate()
    pem = public_key_pem(key)
    return key, pem, public_key_spki(pem)


def write_key(directory: str, name: str, key: Ed25519PrivateKey) -> str:
    """
    Write a private key as PEM; return its path.
    """
    path = os.path.join(directory, f"{name}.key")
    with open(path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def lock_held(directory: str) -> bool:
    """
    @return: whether another open file holds the C{flock(2)} lock of a
        directory (as L{realize.services.lock.SourceLocks} takes it).
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
