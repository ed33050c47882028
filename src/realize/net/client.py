"""
The store of a remote peer, over AMP over TLS: L{RemoteStore} implements
L{realize.interfaces.Store} on a L{Connection}; L{authenticate} proves a
dialled connection's peer, and L{connect} dials, authenticates and gives
the store.

Errors come back as the classes of L{realize.errors} (AMP rebuilds them
from their codes); a lost connection becomes L{NetworkError}; a refused
key, L{AuthenticationError} with the peer, its address and the reason.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Sequence,
)
from typing import Any, TypeVar

from attrs import define, field
from OpenSSL import SSL
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.protocols import amp
from twisted.python.failure import Failure

from realize.config import PeerConfig
from realize.errors import (
    WIRE_ERRORS,
    AuthenticationError,
    Conflict,
    IOFailure,
    NetworkError,
    RealizeError,
    where,
)
from realize.interfaces import ChunkList, RunInThread
from realize.model import (
    ArenaName,
    FileInfo,
    FileState,
    Hole,
    SmallFile,
    SmallRead,
    WriteResult,
)
from realize.net import commands
from realize.net.codec import (
    SparseDecoder,
    SparseEncoder,
    batches,
    decode_entries,
    encode_flags,
    entry_cost,
    join_frames,
    split_leaves,
)
from realize.net.factory import client_factory, connection_of
from realize.net.framing import Connection
from realize.net.locator import LocatorFactory
from realize.net.registry import ConnectionRegistry
from realize.net.streams import Inbox, call, call_reading, call_sending
from realize.net.tls import ClientTLS

__all__ = ["RemoteStore", "authenticate", "connect"]

#: Seconds to wait for a TCP connection before giving up.
CONNECT_TIMEOUT = 30


T = TypeVar("T")

_ERRORS_BY_CODE = {code: cls for cls, code in WIRE_ERRORS.items()}


def _decode_error(code: bytes, message: str) -> RealizeError:
    """
    @return: the error of a batch outcome.
    """
    cls = _ERRORS_BY_CODE.get(code, IOFailure)
    return cls(message)  # type: ignore[return-value]


def _decode_outcomes(
    entries: list[dict[str, Any]], count: int, label: str
) -> list[RealizeError | None]:
    if len(entries) != count:
        raise IOFailure(f"{label} answered {len(entries)} outcomes for {count} files")
    return [
        _decode_error(e["code"], e["message"]) if e["code"] else None for e in entries
    ]


#: What a remote call fails with when its connection is lost.
_LOST = neterror.ConnectionDone | neterror.ConnectionLost | amp.ProtocolSwitched


def _translate(failure: Failure, label: str) -> BaseException:
    """
    Turn the failure of a remote call into an error of our hierarchy.
    """
    value = failure.value
    if isinstance(value, RealizeError):
        return value
    if isinstance(value, _LOST):
        return NetworkError("connection lost")
    if isinstance(value, neterror.ConnectError | neterror.ConnectionClosed):
        return NetworkError(f"connection failed: {value}")
    if isinstance(value, SSL.Error):
        return AuthenticationError(f"TLS failed: {_ssl_reason(value)}")
    if isinstance(value, amp.RemoteAmpError):
        code = value.errorCode.decode("ascii", "replace")
        return IOFailure(f"remote error {code}: {value.description}")
    return value if value is not None else IOFailure("unknown error")


def _ssl_reason(error: SSL.Error) -> str:
    reasons = []
    for item in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(item, tuple) and len(item) == 3:
            reasons.append(str(item[2]))
    return ", ".join(reasons) or str(error)


class _RemoteStream:
    """
    What the data of a remote Read and of a remote sparse Read share: the
    inbox, and the answer after it.

    @cvar sparse: whether the Read asks for the holes of the file to be
        described, not sent.
    """

    sparse = False

    def __init__(self, store: RemoteStore, **arguments: Any) -> None:
        connection = store.connection
        self._store = store
        self._stream = connection.new_stream()
        self._inbox: Inbox = connection.open_reading(self._stream)
        if self.sparse:
            arguments["sparse"] = True
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
                    split_leaves(result["leaves"]),
                    result["size"],
                    result["mtime_ns"],
                )
            except RealizeError as e:
                self._error = e
            self._store.connection.close_reading(self._stream, self._error)

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


class _RemoteReadStream(_RemoteStream):
    """
    The data of a remote Read: chunks from the inbox, the answer after.
    """

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inbox


class _RemoteSparseStream(_RemoteStream):
    """
    The data of a remote sparse Read: chunks and L{Hole}s.
    """

    sparse = True

    def __aiter__(self) -> AsyncIterator[bytes | Hole]:
        return SparseDecoder(self._inbox, IOFailure)


@define(eq=False)
class RemoteStore:
    """
    The store of a remote peer, over one connection.

    @ivar connection: the connection, authenticated.
    @ivar label: the peer and address, for messages.
    """

    connection: Connection
    label: str
    _features: frozenset[str] | None = field(default=None, init=False)

    def describe(self) -> str:
        return self.label

    def _error(self, failure: Failure) -> BaseException:
        if isinstance(failure.value, _LOST):
            # The connection's own error, as its streams fail with: it
            # names the peer and why (the same loss reads the same,
            # whichever call fails first).
            lost = self.connection.lost_error()
            if lost is not None:
                return lost
        return _translate(failure, self.label)

    async def _call(
        self, command: type[amp.Command], **arguments: Any
    ) -> dict[str, Any]:
        return await call(self.connection, self._error, command, **arguments)

    async def _call_sending(
        self,
        command: type[amp.Command],
        data: AsyncIterable[bytes],
        **arguments: Any,
    ) -> dict[str, Any]:
        return await call_sending(
            self.connection, self._error, command, data, **arguments
        )

    async def _call_reading(
        self,
        command: type[amp.Command],
        on_chunk: Callable[[bytes], None],
        **arguments: Any,
    ) -> dict[str, Any]:
        return await call_reading(
            self.connection, self._error, command, on_chunk, **arguments
        )

    async def arenas(self) -> list[ArenaName]:
        answer = await self._call(commands.Arenas)
        return [ArenaName(name) for name in answer["arenas"]]

    async def features(self) -> frozenset[str]:
        """
        What the peer can do beyond the commands every peer has (Features,
        asked once): nothing for a peer older than the command.

        @raise NetworkError: if the connection is lost.
        @raise RealizeError: if the peer fails to answer.
        """
        if self._features is None:
            try:
                answer = await self._call(commands.Features)
            except amp.UnhandledCommand:
                # An older peer does not know the command: no features.
                self._features = frozenset()
            else:
                self._features = frozenset(answer["features"])
        return self._features

    async def sparse(self) -> bool:
        return commands.FEATURE_SPARSE in await self.features()

    def read_sparse(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        *,
        hash_from: int | None = None,
    ) -> _RemoteSparseStream:
        return _RemoteSparseStream(
            self, arena=arena, path=path, start=start, end=end, hash_from=hash_from
        )

    async def write_sparse(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        data: AsyncIterable[bytes | Hole],
        *,
        hash: bool = False,
    ) -> WriteResult:
        result = await self._call_sending(
            commands.Write,
            SparseEncoder(data),
            arena=arena,
            path=path,
            start=start,
            end=end,
            file_size=file_size,
            hash=hash,
            sparse=True,
        )
        return WriteResult(split_leaves(result["leaves"]), result["finished"])

    async def list_files(self, arena: ArenaName) -> list[FileInfo]:
        entries: list[FileInfo] = []
        answer = await self._call_reading(
            commands.List,
            lambda chunk: entries.extend(decode_entries(chunk)),
            arena=arena,
        )
        if answer["count"] != len(entries):
            raise IOFailure(
                f"listing of arena {arena!r} announced {answer['count']} files, "
                f"sent {len(entries)}"
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
        result = await self._call_sending(
            commands.Write,
            data,
            arena=arena,
            path=path,
            start=start,
            end=end,
            file_size=file_size,
            hash=hash,
            finish_root=finish_root,
            mtime_ns=mtime_ns,
        )
        return WriteResult(split_leaves(result["leaves"]), result["finished"])

    async def signature(
        self, arena: ArenaName, path: str, start: int, end: int
    ) -> bytes | None:
        answer = await self._call(
            commands.Signature, arena=arena, path=path, start=start, end=end
        )
        return answer["signature"] if answer["present"] else None

    async def diff(
        self, arena: ArenaName, path: str, start: int, end: int, signature: bytes
    ) -> bytes:
        chunks: list[bytes] = []
        answer = await self._call_reading(
            commands.Diff,
            chunks.append,
            arena=arena,
            path=path,
            start=start,
            end=end,
            signature=signature,
        )
        change = b"".join(chunks)
        if answer["length"] != len(change):
            raise IOFailure(
                f"Diff announced {answer['length']} bytes, sent {len(change)}"
            )
        return change

    async def apply_delta(
        self,
        arena: ArenaName,
        path: str,
        start: int,
        end: int,
        file_size: int,
        change: bytes,
    ) -> tuple[bytes, ...]:
        answer = await self._call_sending(
            commands.ApplyDelta,
            ChunkList([change]),
            arena=arena,
            path=path,
            start=start,
            end=end,
            file_size=file_size,
        )
        return split_leaves(answer["leaves"])

    async def read_files(
        self, arena: ArenaName, files: Sequence[tuple[str, int]]
    ) -> list[SmallRead | RealizeError]:
        results: list[SmallRead | RealizeError] = []
        for part in batches(files, lambda f: entry_cost(f[0])):
            chunks: list[bytes] = []
            answer = await self._call_reading(
                commands.ReadFiles,
                chunks.append,
                arena=arena,
                files=[{"path": path, "limit": limit} for path, limit in part],
            )
            data = memoryview(b"".join(chunks))
            entries = answer["results"]
            if len(entries) != len(part) or sum(e["length"] for e in entries) != len(
                data
            ):
                raise IOFailure(f"malformed ReadFiles answer from {self.label}")
            offset = 0
            for entry in entries:
                length = entry["length"]
                if entry["code"]:
                    results.append(_decode_error(entry["code"], entry["message"]))
                else:
                    results.append(
                        SmallRead(
                            bytes(data[offset : offset + length]),
                            entry["size"],
                            entry["mtime_ns"],
                            entry["root"],
                        )
                    )
                offset += length
        return results

    async def write_files(
        self,
        arena: ArenaName,
        files: Sequence[SmallFile],
        data: Sequence[bytes | memoryview],
    ) -> list[RealizeError | None]:
        results: list[RealizeError | None] = [None] * len(files)
        indexes: list[int] = []
        sending: list[SmallFile] = []
        contents: list[bytes | memoryview] = []
        for index, (file, content) in enumerate(zip(files, data, strict=True)):
            if len(content) != file.size:
                # As the store would answer it, for this file alone: the
                # batch on the wire carries sizes and data end to end.
                results[index] = Conflict(
                    f"{where(arena, file.path)}: {len(content)} bytes sent for a "
                    f"{file.size}-byte file"
                )
            else:
                indexes.append(index)
                sending.append(file)
                contents.append(content)
        start = 0
        for part in batches(sending, lambda file: entry_cost(file.path)):
            end = start + len(part)
            answer = await self._call_sending(
                commands.WriteFiles,
                ChunkList(join_frames(contents[start:end])),
                arena=arena,
                files=commands.pack_write_files(part),
            )
            outcomes = _decode_outcomes(answer["results"], len(part), self.label)
            for index, outcome in zip(indexes[start:end], outcomes, strict=True):
                results[index] = outcome
            start = end
        return results

    async def delete_files(
        self,
        arena: ArenaName,
        files: Sequence[FileInfo],
        partials: Collection[str] | None = None,
    ) -> list[RealizeError | None]:
        results: list[RealizeError | None] = []
        for part in batches(files, lambda info: entry_cost(info.path)):
            answer = await self._call(
                commands.DeleteFiles,
                arena=arena,
                files=commands.pack_delete_files(part),
                partials=None
                if partials is None
                else encode_flags([f.path in partials for f in part]),
            )
            results.extend(_decode_outcomes(answer["results"], len(part), self.label))
        return results

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
            split_leaves(answer["leaves"]), answer["size"], answer["mtime_ns"]
        )

    async def set_compression(self, level: int = 3) -> None:
        """
        Compress the data of this connection with zstd, both ways
        (SetCompression); needs a thread runner on the connection.

        @param level: zstd level, 1 (fast) to 19.
        """
        await self._call(commands.SetCompression, algorithm="zstd", level=level)
        self.connection.compression = True
        self.connection.compression_level = level

    async def set_rate_limit(self, send: int) -> int:
        """
        Ask the peer to send at most C{send} bytes per second on this
        connection (SetRateLimit).

        @return: the limit in force (the peer's own cap may be lower).
        """
        answer = await self._call(commands.SetRateLimit, send=send)
        return int(answer["send"])

    async def close(self, abort: bool = False) -> None:
        if not self.connection.lost.called:
            self.connection.close(abort)
            await self.connection.lost


async def authenticate(protocol: object) -> Connection:
    """
    Prove the peer of a dialled connection: wait for the TLS handshake,
    then make one round trip (the first C{Arenas} call): with TLS 1.3 the
    server checks our key after the client considers the handshake done,
    and refuses with an alert (DESIGN.md §4, docs/protocol.md §1).  Usable
    as a C{ClientService}'s C{prepareConnection}.

    @param protocol: what the endpoint of L{client_factory} connected
        (or its L{Connection}).
    @return: the authenticated connection.
    @raise AuthenticationError: if the peer presented another key than the
        configured one, or refused ours.
    @raise NetworkError: if the connection was lost first.
    """
    connection = connection_of(protocol)
    tls = connection.client_tls
    peer = tls.peer if tls is not None else connection.peer or "?"
    try:
        await connection.handshake
        await connection.amp.callRemote(commands.Arenas)
    except Exception:
        failure = Failure()
        if tls is not None and tls.mismatch is not None:
            raise AuthenticationError(
                f"the server presented key {tls.mismatch}, not the key "
                f"configured for peer {peer}"
            ) from None
        if isinstance(failure.value, SSL.Error):
            raise AuthenticationError(
                f"the peer refused our key ({_ssl_reason(failure.value)}): "
                "is our public key in its config?"
            ) from None
        error = _translate(failure, str(peer))
        if isinstance(error, NetworkError):
            raise NetworkError(
                "the peer closed the connection during authentication: is "
                "our public key in its config?"
            ) from None
        raise error from None
    return connection


async def connect(
    reactor: Any,
    peer: PeerConfig,
    tls: ClientTLS,
    timeout: float = CONNECT_TIMEOUT,
    rate_up: int = 0,
    run_in_thread: RunInThread | None = None,
    responders: LocatorFactory | None = None,
    registry: ConnectionRegistry | None = None,
) -> RemoteStore:
    """
    Connect to a listening peer and authenticate it: L{client_factory} on a
    L{HostnameEndpoint}, then L{authenticate}.

    @param reactor: provides C{IReactorTCP}, C{IReactorTime} and name
        resolution (for L{HostnameEndpoint}, which tries IPv6 and IPv4
        addresses of a name as they resolve).
    @param peer: the peer; must have an address.
    @param tls: client TLS settings expecting that peer's key.
    @param timeout: seconds to wait for the TCP connection.
    @param rate_up: bytes per second this side may send on the connection,
        0 for unlimited.
    @param run_in_thread: runs compression and decompression of data
        chunks off the reactor thread.
    @param responders: the commands this side answers on the connection.
    @param registry: where the connection is registered.
    @return: a store over the authenticated connection.
    @raise NetworkError: if the connection fails (refused, unreachable,
        timed out, closed during the handshake).
    @raise AuthenticationError: if the peer presents another key than the
        configured one, or refuses ours.
    """
    if peer.address is None:
        raise NetworkError(f"peer {peer.id} has no address in the config")
    host, port = peer.address
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    factory = client_factory(
        tls,
        reactor,
        responders,
        rate_up=rate_up,
        run_in_thread=run_in_thread,
        registry=registry,
    )
    try:
        protocol = await endpoint.connect(factory)
    except (neterror.ConnectError, CancelledError) as e:
        raise NetworkError(f"cannot connect: {_connect_reason(e)}") from None
    connection = await authenticate(protocol)
    return RemoteStore(connection, peer.describe())


def _connect_reason(error: BaseException) -> str:
    if isinstance(error, neterror.ConnectionRefusedError):
        return "connection refused (is realized running there?)"
    if isinstance(error, neterror.TimeoutError | CancelledError):
        return "timed out"
    if isinstance(error, neterror.DNSLookupError):
        return f"cannot resolve the host name ({error})"
    return str(error) or type(error).__name__
