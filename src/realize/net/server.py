"""
Serving the store over AMP: the responders (L{StoreLocator}) and the
factory that puts TLS and the framing layer on each accepted connection.

Each command runs as a coroutine against the L{realize.interfaces.Store}
of the authenticated peer.  Errors of L{realize.errors} travel with their
codes; any other exception is logged here with its traceback and answered
as an I/O failure, so that nothing a client sends can kill the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from realize.errors import WIRE_ERRORS, IOFailure, NetworkError
from realize.interfaces import Store
from realize.model import ArenaName, PeerId
from realize.net import commands
from realize.net.protocol import READ_DATA, Connection, encode_entries
from realize.net.tls import ServerTLS, auth_log

__all__ = ["StoreLocator", "server_factory"]

log = Logger()

T = TypeVar("T")


def _respond(command: str, coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    def unexpected(failure: Failure) -> Failure:
        if isinstance(failure.value, tuple(WIRE_ERRORS)):
            return failure
        if isinstance(failure.value, NetworkError):
            # The connection was lost under the command: not a bug, and
            # nobody will read the answer.
            return Failure(IOFailure(f"{command} failed: {failure.value}"))
        log.failure("unexpected error in {command}", failure, command=command)
        return Failure(IOFailure(f"{command} failed on the daemon: internal error"))

    return Deferred.fromCoroutine(coro).addErrback(unexpected)


class StoreLocator(amp.CommandLocator):
    """
    Responders of the store commands for one connection.

    @ivar connection: the connection; its C{peer} is the caller.
    @ivar view: maps the authenticated peer to the store it may use.
    """

    def __init__(self, view: Callable[[PeerId], Store]) -> None:
        self.connection: Connection | None = None
        self._view = view

    def _store(self) -> Store:
        assert self.connection is not None and self.connection.peer is not None
        return self._view(self.connection.peer)

    @commands.Arenas.responder
    def arenas(self) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            return {"arenas": list(await self._store().arenas())}

        return _respond("Arenas", go())

    @commands.List.responder
    def list_files(self, arena: str, stream: int) -> Deferred[dict[str, Any]]:
        connection = self.connection
        assert connection is not None

        async def go() -> dict[str, Any]:
            entries = await self._store().list_files(ArenaName(arena))
            for chunk in encode_entries(entries):
                if (wait := connection.writable()) is not None:
                    await wait
                if connection.is_cancelled(stream):
                    break
                connection.send_data(READ_DATA, stream, chunk)
            return {"count": len(entries)}

        return _respond("List", go())

    @commands.Read.responder
    def read(
        self,
        arena: str,
        path: str,
        start: int,
        end: int,
        stream: int,
        hash_from: int | None = None,
    ) -> Deferred[dict[str, Any]]:
        connection = self.connection
        assert connection is not None

        async def go() -> dict[str, Any]:
            reading = self._store().read(
                ArenaName(arena), path, start, end, hash_from=hash_from
            )
            try:
                async for chunk in reading:
                    if connection.is_cancelled(stream):
                        reading.cancel()
                        break
                    connection.send_data(READ_DATA, stream, chunk)
                    if (wait := connection.writable()) is not None:
                        await wait
            except BaseException:
                # E.g. the connection was lost: stop reading the file.
                reading.cancel()
                raise
            state = await reading.result()
            return {
                "leaves": b"".join(state.leaves),
                "size": state.size,
                "mtime_ns": state.mtime_ns,
            }

        return _respond("Read", go())

    @commands.Write.responder
    def write(
        self,
        arena: str,
        path: str,
        start: int,
        end: int,
        file_size: int,
        stream: int,
        hash: bool,
        finish_root: bytes | None = None,
        mtime_ns: int | None = None,
    ) -> Deferred[dict[str, Any]]:
        connection = self.connection
        assert connection is not None
        inbox = connection.open_incoming(stream)

        async def go() -> dict[str, Any]:
            try:
                result = await self._store().write(
                    ArenaName(arena),
                    path,
                    start,
                    end,
                    file_size,
                    inbox,
                    hash=hash,
                    finish_root=finish_root,
                    mtime_ns=mtime_ns,
                )
            finally:
                connection.close_incoming(stream)
            return {"leaves": b"".join(result.leaves), "finished": result.finished}

        return _respond("Write", go())

    @commands.Truncate.responder
    def truncate(self, arena: str, path: str, size: int) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            await self._store().truncate(ArenaName(arena), path, size)
            return {}

        return _respond("Truncate", go())

    @commands.Finish.responder
    def finish(
        self, arena: str, path: str, mtime_ns: int | None = None
    ) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            await self._store().finish(ArenaName(arena), path, mtime_ns)
            return {}

        return _respond("Finish", go())

    @commands.Delete.responder
    def delete(
        self,
        arena: str,
        path: str,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            await self._store().delete(
                ArenaName(arena), path, size=size, mtime_ns=mtime_ns
            )
            return {}

        return _respond("Delete", go())

    @commands.Hash.responder
    def hash(
        self, arena: str, path: str, start: int, end: int
    ) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            state = await self._store().hash(ArenaName(arena), path, start, end)
            return {
                "leaves": b"".join(state.leaves),
                "size": state.size,
                "mtime_ns": state.mtime_ns,
            }

        return _respond("Hash", go())


@define(eq=False, repr=False)
class _ConnectionFactory(Factory):
    view: Callable[[PeerId], Store]
    lookup: Callable[[bytes], PeerId | None]
    noisy = False

    def buildProtocol(self, addr: Any) -> Protocol:
        locator = StoreLocator(self.view)
        connection = Connection(locator, self.lookup)
        locator.connection = connection

        def rejected(failure: Failure) -> None:
            auth_log.info(
                "connection from {address} closed before authentication: {reason}",
                address=connection.address,
                reason=failure.getErrorMessage(),
                accepted=False,
            )

        connection.handshake.addErrback(rejected)
        return connection


def server_factory(
    tls: ServerTLS,
    view: Callable[[PeerId], Store],
) -> TLSMemoryBIOFactory:
    """
    The factory to listen with: TLS with pinned keys, then the framing
    layer and the store responders.

    @param tls: the server TLS settings (key, peer lookup).
    @param view: maps an authenticated peer to the store it may use.
    @return: a factory for any stream endpoint.
    """
    return TLSMemoryBIOFactory(tls, False, _ConnectionFactory(view, tls.lookup))
