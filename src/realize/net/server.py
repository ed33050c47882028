"""
Serving the store over AMP: the responders of the store commands
(L{StoreResponders}), one set per connection, built by the locator factory
L{store_responders} (L{realize.net.factory} puts them on a connection).

Each command runs as a coroutine against the L{realize.interfaces.Store}
of the authenticated peer.  Errors of L{realize.errors} travel with their
codes; any other exception is logged here with its traceback and answered
as an I/O failure, so that nothing a client sends can kill the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.logger import Logger

from realize.errors import (
    BadDelta,
    BadRequest,
    Conflict,
    IOFailure,
    NetworkError,
    RealizeError,
)
from realize.interfaces import ReadStream, SparseReadStream, SparseStore, Store
from realize.metrics import COPY, DELTA, READ, WRITTEN, DaemonMetrics
from realize.model import MAX_INT64, ArenaName, FileInfo, Hole, PeerId, SmallFile
from realize.net import commands
from realize.net.codec import (
    MAX_DATA_FRAME,
    MAX_PEER_COMPRESSION_LEVEL,
    SparseDecoder,
    decode_flags,
    encode_entries,
    encode_hole,
)
from realize.net.commands import MAX_BATCH_BYTES, MAX_BATCH_FILES
from realize.net.framing import READ_DATA, Connection
from realize.net.locator import LocatorFactory, Responders, respond
from realize.net.streams import send_reading
from realize.net.throttle import find_throttle

__all__ = ["StoreResponders", "store_responders"]

log = Logger()
throttle_log = Logger(namespace="realize.throttle")

T = TypeVar("T")

#: Read streams served at once per connection: each holds an open file and
#: a chunk read ahead; more wait (in order) for one to end.
MAX_OPEN_READS = 32


class StoreResponders(Responders):
    """
    Responders of the store commands for one connection.

    @ivar connection: the connection; its C{peer} is the caller.
    @ivar view: maps the authenticated peer to the store it may use.
    @ivar metrics: counts commands, bytes and files, or C{None}.
    """

    def __init__(
        self,
        connection: Connection,
        view: Callable[[PeerId], Store],
        metrics: DaemonMetrics | None = None,
    ) -> None:
        super().__init__(connection)
        self._view = view
        self.metrics = metrics
        #: Read streams open at once on this connection (each holds a file
        #: and a chunk read ahead); more Reads wait their turn.
        self._reads = DeferredSemaphore(MAX_OPEN_READS)

    def _respond(self, command: str, coro: Coroutine[Any, Any, T]) -> Deferred[T]:
        return respond(command, coro, self.metrics)

    def _transferred(self, arena: str, method: str, direction: str, size: int) -> None:
        if self.metrics is not None and size:
            self.metrics.transferred(arena, method, direction, size)

    def _store(self) -> Store:
        return self._view(self.peer)

    @commands.Arenas.responder
    def arenas(self) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            return {"arenas": list(await self._store().arenas())}

        return self._respond("Arenas", go())

    @commands.Features.responder
    def features(self) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            store = self._store()
            features = []
            if isinstance(store, SparseStore) and await store.sparse():
                features.append(commands.FEATURE_SPARSE)
            return {"features": features}

        return self._respond("Features", go())

    @commands.List.responder
    def list_files(self, arena: str, stream: int) -> Deferred[dict[str, Any]]:
        connection = self.connection
        connection.open_outgoing(stream)

        async def go() -> dict[str, Any]:
            entries = await self._store().list_files(ArenaName(arena))
            try:
                for chunk in encode_entries(entries):
                    if (wait := connection.writable()) is not None:
                        await wait
                    if connection.is_cancelled(stream):
                        break
                    await connection.send_chunk(READ_DATA, stream, chunk)
            finally:
                connection.forget_stream(READ_DATA, stream)
            return {"count": len(entries)}

        return self._respond("List", go())

    @commands.Read.responder
    def read(
        self,
        arena: str,
        path: str,
        start: int,
        end: int,
        stream: int,
        hash_from: int | None = None,
        sparse: bool | None = None,
    ) -> Deferred[dict[str, Any]]:
        connection = self.connection
        connection.open_outgoing(stream)

        async def go() -> dict[str, Any]:
            await self._reads.acquire()
            try:
                return await stream_file()
            finally:
                self._reads.release()

        async def stream_file() -> dict[str, Any]:
            store = self._store()
            reading: ReadStream | SparseReadStream
            if sparse and isinstance(store, SparseStore):
                reading = store.read_sparse(
                    ArenaName(arena), path, start, end, hash_from=hash_from
                )
            else:
                reading = store.read(
                    ArenaName(arena), path, start, end, hash_from=hash_from
                )
            sent = 0
            try:
                async for chunk in reading:
                    if connection.is_cancelled(stream):
                        reading.cancel()
                        break
                    if isinstance(chunk, Hole):
                        for part in encode_hole(chunk.length):
                            await connection.send_chunk(READ_DATA, stream, part)
                        continue
                    await connection.send_chunk(READ_DATA, stream, chunk)
                    sent += len(chunk)
                    if (wait := connection.writable()) is not None:
                        await wait
            except BaseException:
                # E.g. the connection was lost: stop reading the file.
                reading.cancel()
                raise
            finally:
                connection.forget_stream(READ_DATA, stream)
                self._transferred(arena, COPY, READ, sent)
            state = await reading.result()
            return {
                "leaves": b"".join(state.leaves),
                "size": state.size,
                "mtime_ns": state.mtime_ns,
            }

        return self._respond("Read", go())

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
        sparse: bool | None = None,
    ) -> Deferred[dict[str, Any]]:
        connection = self.connection
        inbox = connection.open_incoming(stream)

        async def go() -> dict[str, Any]:
            store = self._store()
            try:
                if sparse:
                    if not isinstance(store, SparseStore) or finish_root is not None:
                        raise BadRequest(
                            "Write: sparse writes are not served here, and "
                            "never with finish_root"
                        )
                    result = await store.write_sparse(
                        ArenaName(arena),
                        path,
                        start,
                        end,
                        file_size,
                        SparseDecoder(inbox),
                        hash=hash,
                    )
                else:
                    result = await store.write(
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
                self._transferred(arena, COPY, WRITTEN, inbox.received)
            if result.finished and self.metrics is not None:
                self.metrics.file_finished(arena)
            return {"leaves": b"".join(result.leaves), "finished": result.finished}

        return self._respond("Write", go())

    @commands.Truncate.responder
    def truncate(self, arena: str, path: str, size: int) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            await self._store().truncate(ArenaName(arena), path, size)
            return {}

        return self._respond("Truncate", go())

    @commands.Finish.responder
    def finish(
        self, arena: str, path: str, mtime_ns: int | None = None
    ) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            await self._store().finish(ArenaName(arena), path, mtime_ns)
            if self.metrics is not None:
                self.metrics.file_finished(arena)
            return {}

        return self._respond("Finish", go())

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
            if self.metrics is not None:
                self.metrics.file_deleted(arena)
            return {}

        return self._respond("Delete", go())

    @commands.Hash.responder
    def hash(
        self, arena: str, path: str, start: int, end: int
    ) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            began = self.metrics.timer() if self.metrics is not None else 0.0
            state = await self._store().hash(ArenaName(arena), path, start, end)
            if self.metrics is not None:
                hashed = max(0, min(end, state.size) - start)
                self.metrics.hashed(arena, self.metrics.timer() - began, hashed)
            return {
                "leaves": b"".join(state.leaves),
                "size": state.size,
                "mtime_ns": state.mtime_ns,
            }

        return self._respond("Hash", go())

    @commands.ReadFiles.responder
    def read_files(
        self, arena: str, stream: int, files: list[dict[str, Any]]
    ) -> Deferred[dict[str, Any]]:
        connection = self.connection
        connection.open_outgoing(stream)

        async def go() -> dict[str, Any]:
            try:
                return await send()
            finally:
                connection.forget_stream(READ_DATA, stream)

        async def send() -> dict[str, Any]:
            _check_batch(len(files), sum(f["limit"] for f in files))
            reads = await self._store().read_files(
                ArenaName(arena), [(f["path"], f["limit"]) for f in files]
            )
            results = []
            pending: list[bytes] = []
            size = 0
            for read in reads:
                if isinstance(read, RealizeError):
                    results.append({**_outcome(read), **_NO_READ})
                    continue
                results.append(
                    {
                        "code": b"",
                        "message": "",
                        "size": read.size,
                        "mtime_ns": read.mtime_ns,
                        "root": read.root,
                        "length": len(read.data),
                    }
                )
                pending.append(read.data)
                size += len(read.data)
                if size >= MAX_DATA_FRAME:
                    await send_reading(connection, stream, b"".join(pending))
                    pending, size = [], 0
            if size:
                await send_reading(connection, stream, b"".join(pending))
            self._transferred(arena, COPY, READ, sum(r["length"] for r in results))
            return {"results": results}

        return self._respond("ReadFiles", go())

    @commands.WriteFiles.responder
    def write_files(
        self, arena: str, stream: int, files: list[dict[str, Any]]
    ) -> Deferred[dict[str, Any]]:
        connection = self.connection
        inbox = connection.open_incoming(stream)

        async def go() -> dict[str, Any]:
            try:
                total = sum(f["size"] for f in files)
                _check_batch(len(files), total)
                received: list[bytes] = []
                held = 0
                async for chunk in inbox:
                    held += len(chunk)
                    if held > total:
                        raise Conflict(
                            f"WriteFiles: more data than the {total} bytes announced"
                        )
                    received.append(chunk)
            finally:
                connection.close_incoming(stream)
            if held != total:
                raise Conflict(f"WriteFiles: {held} bytes received, {total} announced")
            # Each file's content is a view of the joined data, not a copy.
            data = memoryview(b"".join(received))
            contents = []
            offset = 0
            for f in files:
                contents.append(data[offset : offset + f["size"]])
                offset += f["size"]
            outcomes = await self._store().write_files(
                ArenaName(arena),
                [
                    SmallFile(f["path"], f["size"], f["mtime_ns"], f["root"])
                    for f in files
                ],
                contents,
            )
            self._transferred(arena, COPY, WRITTEN, total)
            if self.metrics is not None:
                self.metrics.file_finished(arena, outcomes.count(None))
            return {"results": _outcomes(outcomes)}

        return self._respond("WriteFiles", go())

    @commands.DeleteFiles.responder
    def delete_files(
        self, arena: str, files: list[dict[str, Any]], partials: bytes | None = None
    ) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            _check_batch(len(files), 0)
            listed = None
            if partials is not None:
                flags = decode_flags(partials, len(files))
                listed = {
                    f["path"] for f, flag in zip(files, flags, strict=True) if flag
                }
            outcomes = await self._store().delete_files(
                ArenaName(arena),
                [FileInfo(f["path"], f["size"], f["mtime_ns"]) for f in files],
                listed,
            )
            if self.metrics is not None:
                self.metrics.file_deleted(arena, outcomes.count(None))
            return {"results": _outcomes(outcomes)}

        return self._respond("DeleteFiles", go())

    @commands.Signature.responder
    def signature(
        self, arena: str, path: str, start: int, end: int
    ) -> Deferred[dict[str, Any]]:
        async def go() -> dict[str, Any]:
            signature = await self._store().signature(
                ArenaName(arena), path, start, end
            )
            return {"signature": signature or b"", "present": signature is not None}

        return self._respond("Signature", go())

    @commands.Diff.responder
    def diff(
        self, arena: str, path: str, start: int, end: int, signature: bytes, stream: int
    ) -> Deferred[dict[str, Any]]:
        connection = self.connection
        connection.open_outgoing(stream)

        async def go() -> dict[str, Any]:
            try:
                change = await self._store().diff(
                    ArenaName(arena), path, start, end, signature
                )
                for offset in range(0, len(change), MAX_DATA_FRAME):
                    await send_reading(
                        connection, stream, change[offset : offset + MAX_DATA_FRAME]
                    )
            finally:
                connection.forget_stream(READ_DATA, stream)
            self._transferred(arena, DELTA, READ, len(change))
            return {"length": len(change)}

        return self._respond("Diff", go())

    @commands.ApplyDelta.responder
    def apply_delta(
        self, arena: str, path: str, start: int, end: int, file_size: int, stream: int
    ) -> Deferred[dict[str, Any]]:
        connection = self.connection
        inbox = connection.open_incoming(stream)

        async def go() -> dict[str, Any]:
            limit = _max_delta(end - start)
            try:
                received: list[bytes] = []
                held = 0
                async for chunk in inbox:
                    held += len(chunk)
                    if held > limit:
                        raise BadDelta(
                            f"ApplyDelta: delta larger than {limit} bytes for a "
                            f"{end - start}-byte range"
                        )
                    received.append(chunk)
            finally:
                connection.close_incoming(stream)
            leaves = await self._store().apply_delta(
                ArenaName(arena), path, start, end, file_size, b"".join(received)
            )
            self._transferred(arena, DELTA, WRITTEN, held)
            if self.metrics is not None:
                self.metrics.delta_saved(arena, max(0, end - start - held))
            return {"leaves": b"".join(leaves)}

        return self._respond("ApplyDelta", go())

    @commands.SetCompression.responder
    def set_compression(self, algorithm: str, level: int) -> dict[str, Any]:
        connection = self.connection
        if algorithm != "zstd":
            raise BadRequest(f"unknown compression {algorithm!r}: only zstd")
        connection.compression = True
        # A peer may not make us spend more CPU than a moderate level.
        connection.compression_level = max(1, min(level, MAX_PEER_COMPRESSION_LEVEL))
        log.info(
            "{peer} asked for compressed data (zstd level {zstd_level})",
            peer=connection.peer,
            asked=level,
            zstd_level=connection.compression_level,
        )
        return {"algorithm": "zstd"}

    @commands.SetRateLimit.responder
    def set_rate_limit(self, send: int) -> dict[str, Any]:
        connection = self.connection
        if not 0 <= send <= MAX_INT64:
            raise BadRequest(
                f"rate {send} is out of range (0 to {MAX_INT64} bytes per second)"
            )
        throttle = find_throttle(connection.transport)
        if throttle is None:
            return {"send": 0, "receive": 0}
        cap = throttle.factory.rate_up
        rate = min(send, cap) if send and cap else (send or cap)
        throttle.set_rate(rate)
        throttle_log.info(
            "{peer} asked us to send at most {asked} B/s; in force: {rate} B/s",
            peer=connection.peer,
            asked=send,
            rate=rate,
        )
        return {"send": rate, "receive": throttle.receive_rate}


def _max_delta(length: int) -> int:
    """
    @return: the largest delta accepted for a range of C{length} bytes:
        all literal, in the smallest literal ops, plus the header.
    """
    return length + length // 64 + 64


_NO_READ = {"size": 0, "mtime_ns": 0, "root": b"", "length": 0}


def _check_batch(files: int, size: int) -> None:
    if files > MAX_BATCH_FILES or size > MAX_BATCH_BYTES:
        raise BadRequest(
            f"batch of {files} files, {size} bytes exceeds the limits "
            f"({MAX_BATCH_FILES} files, {MAX_BATCH_BYTES} bytes)"
        )


def _outcome(error: BaseException | None) -> dict[str, Any]:
    """
    @return: the wire form of one file's outcome in a batch answer.
    """
    if error is None:
        return {"code": b"", "message": ""}
    if not isinstance(error, RealizeError) or isinstance(error, NetworkError):
        if not isinstance(error, NetworkError):
            log.error("unexpected error in a batch: {error!r}", error=error)
        error = IOFailure("internal error")
    return {"code": error.code, "message": str(error)[:500]}


#: The records of a batch answer's outcomes.
_OUTCOME_RECORDS = commands.Records(commands.OUTCOME)

#: A success packed as L{_OUTCOME_RECORDS} packs it: an empty code and
#: an empty message.
_SUCCESS = _OUTCOME_RECORDS.pack([_outcome(None)])


def _outcomes(errors: Sequence[BaseException | None]) -> commands.Packed:
    """
    @return: the wire form of a batch answer's outcomes, packed: a
        success, what nearly every file of a batch is, as bytes made once
        (packing 256 records as dicts took ~4% of the daemon's reactor
        during a move of small files, issue 15).
    """
    return commands.Packed(
        b"".join(
            _SUCCESS if error is None else _OUTCOME_RECORDS.pack([_outcome(error)])
            for error in errors
        )
    )


def store_responders(
    view: Callable[[PeerId], Store], metrics: DaemonMetrics | None = None
) -> LocatorFactory:
    """
    @param view: maps an authenticated peer to the store it may use.
    @param metrics: counts commands, bytes and files.
    @return: the locator factory of the store commands.
    """
    return lambda connection: StoreResponders(connection, view, metrics)
