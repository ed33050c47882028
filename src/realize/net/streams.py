"""
Data streams over a L{realize.net.framing.Connection}: the L{Inbox} that
holds what was received for one stream, and the three ways a typed client
calls a command (plain, sending a data stream, reading one).

Back-pressure: a sender waits on L{Connection.writable} after each chunk;
a receiver's L{Inbox} tells its connection how many bytes it holds, and the
connection stops reading from its transport while any inbox is over
L{Inbox.HIGH} or all of them together hold more than the connection's
budget (L{realize.net.framing.ConnectionLimits.max_held}).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.python.failure import Failure

from realize.errors import Conflict, IOFailure
from realize.model import CHUNK_SIZE

if TYPE_CHECKING:
    from realize.net.framing import Connection

__all__ = ["Inbox", "call", "call_reading", "call_sending", "send_reading"]

#: Turns the failure of a remote call into an error of our hierarchy.
Translate = Callable[[Failure], BaseException]


class Inbox:
    """
    Chunks received for one stream, waiting for their consumer: an async
    iterator of C{bytes} that ends at the end of the stream and raises
    the stream's error if it failed.

    @cvar HIGH: bytes held above which the connection stops reading.
    @cvar LOW: bytes held below which it reads again.
    @ivar received: bytes received for this stream so far.
    """

    HIGH = 4 * CHUNK_SIZE
    LOW = 2 * CHUNK_SIZE

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._chunks: deque[tuple[bytes, bool]] = deque()
        self._held = 0
        self._over = False
        self._waiter: Deferred[None] | None = None
        self._closed = False
        self._error: BaseException | None = None
        self.received = 0

    def put(self, chunk: bytes, compressed: bool = False) -> None:
        """
        Add a chunk received from the network.

        @param compressed: the chunk is compressed (L{realize.net.codec.
            compress}); it is decompressed (in a thread) when consumed.
        """
        if self._closed:
            return
        self._chunks.append((chunk, compressed))
        self._held += len(chunk)
        self.received += len(chunk)
        self._connection.hold(len(chunk))
        if not self._over and self._held > self.HIGH:
            self._over = True
            self._connection.inbox_full(+1)
        self._wake()

    def close(self, error: BaseException | None = None) -> None:
        """
        End the stream, after the chunks already held.

        @param error: if given, the consumer gets it after those chunks.
        """
        if self._closed:
            return
        self._closed = True
        self._error = error
        # The consumer resumes inside _wake() and may raise the error: the
        # frames on its traceback lead back here, so this frame must not
        # hold it (a reference cycle keeping the consumer's data alive).
        del error
        self._wake()

    def discard(self) -> None:
        """
        Drop the stream: free what is held and ignore what comes.
        """
        self.abort(Conflict("stream discarded"))

    def abort(self, error: BaseException) -> None:
        """
        End the stream at once with an error (the connection was lost):
        free what is held; the consumer gets C{error} next.
        """
        self._chunks.clear()
        self._connection.hold(-self._held)
        self._held = 0
        self._release()
        if not self._closed:
            self.close(error)

    def _release(self) -> None:
        if self._over:
            self._over = False
            self._connection.inbox_full(-1)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._closed:
                if self._error is not None:
                    # Keep a copy without traceback, not the one raised: its
                    # traceback holds the consumer's frame, which holds this
                    # inbox, a cycle that would keep whatever the consumer
                    # gathered alive until a full garbage collection.
                    error, self._error = self._error, copy.copy(self._error)
                    try:
                        raise error
                    finally:
                        # Nor may this frame keep it (the same cycle).
                        del error
                raise StopAsyncIteration
            self._waiter = Deferred()
            await self._waiter
        chunk, compressed = self._chunks.popleft()
        self._held -= len(chunk)
        self._connection.hold(-len(chunk))
        if self._over and self._held < self.LOW:
            self._release()
        if compressed:
            from realize.net.codec import decompress

            run = self._connection.run_in_thread
            if run is None:
                return decompress(chunk)
            return await run(decompress, chunk)
        return chunk


async def call(
    connection: Connection,
    translate: Translate,
    command: type[amp.Command],
    **arguments: Any,
) -> dict[str, Any]:
    """
    Call a command and return its answer.

    @param translate: turns a failure into the error raised.
    @raise: the translated error of the call.
    """
    try:
        answer: dict[str, Any] = await connection.amp.callRemote(command, **arguments)
    except Exception:
        raise translate(Failure()) from None
    return answer


async def call_sending(
    connection: Connection,
    translate: Translate,
    command: type[amp.Command],
    data: AsyncIterable[bytes],
    **arguments: Any,
) -> dict[str, Any]:
    """
    Call a command that takes a data stream (Write, WriteFiles,
    ApplyDelta): send the data after the command, end the stream, await
    the answer.

    @raise: the data's own error if iterating it fails (the stream is then
        ended as aborted), else the command's translated error.
    """
    from realize.net.framing import WRITE_DATA

    stream = connection.new_stream()
    called = connection.amp.callRemote(command, stream=stream, **arguments)
    # Take the answer as soon as it comes, even while sending: AMP treats
    # an error answer with no errback attached yet as unhandled (it logs
    # it, drops the connection and makes the result None).
    answer: Deferred[dict[str, Any]] = Deferred()
    called.addCallbacks(answer.callback, answer.errback)
    ok = False
    try:
        async for chunk in data:
            if answer.called:
                # The other side answered before the end: an error.
                break
            await connection.send_chunk(WRITE_DATA, stream, chunk)
            if (wait := connection.writable()) is not None:
                await wait
        else:
            ok = True
    except BaseException:
        # The source (or the connection) failed: its error is raised, the
        # answer is not awaited, so it must not be left unhandled.
        connection.end_write(stream, False)
        connection.forget_stream(WRITE_DATA, stream)
        answer.addErrback(lambda _: None)
        raise
    connection.end_write(stream, ok)
    connection.forget_stream(WRITE_DATA, stream)
    try:
        return await answer
    except Exception:
        raise translate(Failure()) from None


async def call_reading(
    connection: Connection,
    translate: Translate,
    command: type[amp.Command],
    on_chunk: Callable[[bytes], None],
    **arguments: Any,
) -> dict[str, Any]:
    """
    Call a command that answers with a data stream (List, ReadFiles,
    Diff): hand each chunk to C{on_chunk}, return the answer.

    @raise: the translated error of the call or of the stream.
    """
    stream = connection.new_stream()
    inbox = connection.open_reading(stream)
    called = connection.amp.callRemote(command, stream=stream, **arguments)
    answers: list[dict[str, Any]] = []

    def answered(result: Any) -> None:
        # Ending the inbox resumes the loop below at once, inside this
        # callback: hand it the outcome through the inbox, not by awaiting
        # the answer whose callbacks are running.
        if isinstance(result, Failure):
            connection.close_reading(stream, translate(result))
        else:
            answers.append(result)
            connection.close_reading(stream, None)

    called.addBoth(answered)
    try:
        async for chunk in inbox:
            on_chunk(chunk)
    except Exception:
        connection.cancel_reading(stream)
        inbox.discard()
        raise translate(Failure()) from None
    if not answers:
        raise IOFailure(f"no answer to {command.__name__}")
    return answers[0]


async def send_reading(connection: Connection, stream: int, data: bytes) -> None:
    """
    Send one chunk of the data a command answers with (READ_DATA), then
    wait until the connection may send more.
    """
    from realize.net.framing import READ_DATA

    await connection.send_chunk(READ_DATA, stream, data)
    if (wait := connection.writable()) is not None:
        await wait
