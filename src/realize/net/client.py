"""
The store of a remote peer, over AMP over TLS: L{RemoteStore} implements
L{realize.interfaces.Store} on a L{Connection}, and L{connect} makes one.

Errors come back as the classes of L{realize.errors} (AMP rebuilds them
from their codes); a lost connection becomes L{NetworkError}; a refused
key, L{AuthenticationError} with the peer, its address and the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from attrs import define
from OpenSSL import SSL
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.python.failure import Failure

from realize.config import PeerConfig
from realize.errors import (
    AuthenticationError,
    IOFailure,
    NetworkError,
    RealizeError,
)
from realize.hashing import DIGEST_SIZE
from realize.interfaces import FileState, WriteResult
from realize.model import ArenaName, FileInfo
from realize.net import commands
from realize.net.protocol import (
    WRITE_DATA,
    Connection,
    Inbox,
    decode_entries,
)
from realize.net.tls import ClientTLS

__all__ = ["RemoteStore", "connect"]

#: Seconds to wait for a TCP connection before giving up.
CONNECT_TIMEOUT = 30


def _split_leaves(data: bytes) -> tuple[bytes, ...]:
    if len(data) % DIGEST_SIZE:
        raise IOFailure(f"malformed leaf list of {len(data)} bytes")
    return tuple(data[i : i + DIGEST_SIZE] for i in range(0, len(data), DIGEST_SIZE))


def _translate(failure: Failure, label: str) -> BaseException:
    """
    Turn the failure of a remote call into an error of our hierarchy.
    """
    value = failure.value
    if isinstance(value, RealizeError):
        return value
    if isinstance(
        value, neterror.ConnectionDone | neterror.ConnectionLost | amp.ProtocolSwitched
    ):
        return NetworkError("connection lost")
    if isinstance(value, neterror.ConnectError | neterror.ConnectionClosed):
        return NetworkError(f"connection failed: {value}")
    if isinstance(value, SSL.Error):
        return AuthenticationError(f"TLS failed: {_ssl_reason(value)}")
    if isinstance(value, amp.UnknownRemoteError | amp.RemoteAmpError):
        return IOFailure(f"remote error: {value}")
    return value


def _ssl_reason(error: SSL.Error) -> str:
    reasons = []
    for item in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(item, tuple) and len(item) == 3:
            reasons.append(str(item[2]))
    return ", ".join(reasons) or str(error)


class _RemoteReadStream:
    """
    The data of a remote Read: chunks from the inbox, the answer after.
    """

    def __init__(self, store: RemoteStore, **arguments: Any) -> None:
        connection = store.connection
        self._store = store
        self._stream = connection.new_stream()
        self._inbox: Inbox = connection.open_reading(self._stream)
        self._answer: Deferred[dict[str, Any]] = connection.amp.callRemote(
            commands.Read, stream=self._stream, **arguments
        )
        self._answer.addBoth(self._answered)
        self._state: FileState | None = None
        self._error: BaseException | None = None

    def _answered(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._error = self._store._error(result)
            self._store.connection.close_reading(self._stream, self._error)
        else:
            try:
                self._state = FileState(
                    _split_leaves(result["leaves"]),
                    result["size"],
                    result["mtime_ns"],
                )
            except RealizeError as e:
                self._error = e
            self._store.connection.close_reading(self._stream, self._error)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inbox

    async def result(self) -> FileState:
        if self._state is None:
            if self._error is not None:
                raise self._error
            await self._answer
            if self._state is None:
                raise self._error or IOFailure("read did not complete")
        return self._state

    def cancel(self) -> None:
        if not self._answer.called:
            self._store.connection.cancel_reading(self._stream)
        # All the data may have arrived already: free it, or the connection
        # stays paused while this inbox is over its high water mark.
        self._inbox.discard()


@define(eq=False)
class RemoteStore:
    """
    The store of a remote peer, over one connection.

    @ivar connection: the connection, authenticated.
    @ivar label: the peer and address, for messages.
    """

    connection: Connection
    label: str

    def describe(self) -> str:
        return self.label

    def _error(self, failure: Failure) -> BaseException:
        return _translate(failure, self.label)

    async def _call(
        self, command: type[amp.Command], **arguments: Any
    ) -> dict[str, Any]:
        try:
            return await self.connection.amp.callRemote(command, **arguments)
        except Exception:
            raise self._error(Failure()) from None

    async def arenas(self) -> list[ArenaName]:
        answer = await self._call(commands.Arenas)
        return [ArenaName(name) for name in answer["arenas"]]

    async def list_files(self, arena: ArenaName) -> list[FileInfo]:
        connection = self.connection
        stream = connection.new_stream()
        inbox = connection.open_reading(stream)
        answer = connection.amp.callRemote(commands.List, arena=arena, stream=stream)
        counts: list[int] = []

        def answered(result: Any) -> None:
            # Ending the inbox resumes the loop below at once, inside this
            # callback: hand it the outcome through the inbox, not by
            # awaiting the answer whose callbacks are running.
            if isinstance(result, Failure):
                connection.close_reading(stream, self._error(result))
            else:
                counts.append(result["count"])
                connection.close_reading(stream, None)

        answer.addBoth(answered)
        entries: list[FileInfo] = []
        try:
            async for chunk in inbox:
                entries.extend(decode_entries(chunk))
        except Exception:
            connection.cancel_reading(stream)
            inbox.discard()
            raise self._error(Failure()) from None
        if counts != [len(entries)]:
            raise IOFailure(
                f"listing of arena {arena!r} announced "
                f"{counts[0] if counts else 'no'} files, sent {len(entries)}"
            )
        return entries

    def read(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> _RemoteReadStream:
        return _RemoteReadStream(
            self, arena=arena, path=path, start=start, end=end, hash_from=hash_from
        )

    async def write(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes],
        *,
        hash: bool = False,
        finish_root: bytes | None = None,
        mtime_ns: int | None = None,
    ) -> WriteResult:
        connection = self.connection
        stream = connection.new_stream()
        called = connection.amp.callRemote(
            commands.Write,
            arena=arena,
            path=path,
            start=start,
            end=end,
            file_size=file_size,
            stream=stream,
            hash=hash,
            finish_root=finish_root,
            mtime_ns=mtime_ns,
        )
        # Take the answer as soon as it comes, even while sending: AMP
        # treats an error answer with no errback attached yet as unhandled
        # (it logs it, drops the connection and makes the result None).
        answer: Deferred[dict[str, Any]] = Deferred()
        called.addCallbacks(answer.callback, answer.errback)
        ok = False
        try:
            async for chunk in data:
                if answer.called:
                    # The destination answered before the end: an error.
                    break
                connection.send_data(WRITE_DATA, stream, chunk)
                if (wait := connection.writable()) is not None:
                    await wait
            else:
                ok = True
        except BaseException:
            # The source (or the connection) failed: its error is raised,
            # the answer is not awaited, so it must not be left unhandled.
            connection.end_write(stream, False)
            answer.addErrback(lambda _: None)
            raise
        connection.end_write(stream, ok)
        try:
            result = await answer
        except Exception:
            raise self._error(Failure()) from None
        return WriteResult(_split_leaves(result["leaves"]), result["finished"])

    async def truncate(self, arena: ArenaName, path: str, size: int) -> None:
        await self._call(commands.Truncate, arena=arena, path=path, size=size)

    async def finish(
        self, arena: ArenaName, path: str, mtime_ns: int | None = None
    ) -> None:
        await self._call(commands.Finish, arena=arena, path=path, mtime_ns=mtime_ns)

    async def delete(
        self,
        arena: ArenaName,
        path: str,
        *,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        await self._call(
            commands.Delete, arena=arena, path=path, size=size, mtime_ns=mtime_ns
        )

    async def hash(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> FileState:
        answer = await self._call(
            commands.Hash, arena=arena, path=path, start=start, end=end
        )
        return FileState(
            _split_leaves(answer["leaves"]), answer["size"], answer["mtime_ns"]
        )

    async def close(self) -> None:
        if not self.connection.lost.called:
            self.connection.close()
            await self.connection.lost


async def connect(
    reactor: IReactorTCP | IReactorTime | Any,
    peer: PeerConfig,
    tls: ClientTLS,
    timeout: float = CONNECT_TIMEOUT,
) -> RemoteStore:
    """
    Connect to a listening peer and authenticate it.

    @param reactor: provides C{IReactorTCP}, C{IReactorTime} and name
        resolution (for L{HostnameEndpoint}, which tries IPv6 and IPv4
        addresses of a name as they resolve).
    @param peer: the peer; must have an address.
    @param tls: client TLS settings expecting that peer's key.
    @param timeout: seconds to wait for the TCP connection.
    @return: a store over the authenticated connection.
    @raise NetworkError: if the connection fails (refused, unreachable,
        timed out, closed during the handshake).
    @raise AuthenticationError: if the peer presents another key than the
        configured one, or refuses ours.
    """
    if peer.address is None:
        raise NetworkError(f"peer {peer.id} has no address in the config")
    host, port = peer.address
    label = peer.describe()
    endpoint = wrapClientTLS(
        tls, HostnameEndpoint(reactor, host, port, timeout=timeout)
    )
    lookup = {peer.spki: peer.id}.get
    factory = Factory.forProtocol(lambda: Connection(amp.CommandLocator(), lookup))
    try:
        connection = await endpoint.connect(factory)
    except (neterror.ConnectError, CancelledError) as e:
        raise NetworkError(f"cannot connect: {_connect_reason(e)}") from None
    assert isinstance(connection, Connection)
    store = RemoteStore(connection, label)
    try:
        await connection.handshake
        # A round trip: with TLS 1.3 the server checks our key after the
        # client considers the handshake done, and refuses with an alert.
        await connection.amp.callRemote(commands.Arenas)
    except Exception:
        failure = Failure()
        if tls.mismatch is not None:
            raise AuthenticationError(
                f"the server presented key {tls.mismatch}, not the key "
                f"configured for peer {peer.id}"
            ) from None
        if isinstance(failure.value, SSL.Error):
            raise AuthenticationError(
                f"the peer refused our key ({_ssl_reason(failure.value)}): "
                "is our public key in its config?"
            ) from None
        error = _translate(failure, label)
        if isinstance(error, NetworkError):
            raise NetworkError(
                "the peer closed the connection during authentication: is "
                "our public key in its config?"
            ) from None
        raise error from None
    return store


def _connect_reason(error: BaseException) -> str:
    if isinstance(error, neterror.ConnectionRefusedError):
        return "connection refused (is realized running there?)"
    if isinstance(error, neterror.TimeoutError | CancelledError):
        return "timed out"
    if isinstance(error, neterror.DNSLookupError):
        return f"cannot resolve the host name ({error})"
    return str(error) or type(error).__name__
