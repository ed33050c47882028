"""
The ceiling of realize's own stack: a bare Twisted TLS 1.3 transfer of a
file between two processes on loopback, with the same TLS settings as
realize (pinned ed25519 keys, TLS 1.3 only: L{realize.net.tls}) and
nothing above TLS: no AMP, no framing, no storage.  The sender is a push
producer writing the file in 1 MiB chunks (C{os.pread} from the page
cache) while the transport wants more; the receiver counts the bytes,
discards them and answers one byte when it has them all.

    python bench/tls_ceiling.py serve --key b.key --peer a.pub --bytes N
        (prints "port P" once listening; runs until SIGTERM)
    python bench/tls_ceiling.py push --key a.key --peer b.pub --port P FILE
        (prints "transfer SECONDS handshake SECONDS")

bench/move_throughput.py runs both in the same run as realize-move, on
the same file (DESIGN.md section 5 measured ~550 MB/s here).

Two measurements for issue 15's question of a way past the Twisted TLS
ceiling that keeps the same pinned-key TLS 1.3 (the same C{SSL.Context},
keys and verification callbacks as realize):

    - C{--blocking} (both sides): the TLS connection runs over a plain
      blocking socket, with no reactor: the sender C{sendall}s 1 MiB
      chunks, the receiver C{recv_into}s a 1 MiB buffer.  What a transfer
      outside Twisted's memory-BIO transport could reach, for instance in
      a thread of its own.
    - C{--bulk} (C{push} only): Twisted's transport with a write path
      that hands OpenSSL 1 MiB at once (L{_BulkTLSProtocol}); Twisted's
      own writes 16 KiB at a time, and the sender is the side that costs
      the most CPU.  It overrides private methods of Twisted's
      C{TLSMemoryBIOProtocol}: a measurement, not code to ship.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from OpenSSL import SSL  # noqa: E402
from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402
from twisted.internet.interfaces import IHandshakeListener, IPushProducer  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.protocols.tls import (  # noqa: E402
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)
from twisted.python.failure import Failure  # noqa: E402
from zope.interface import implementer  # noqa: E402

from realize.model import PeerId  # noqa: E402
from realize.net.tls import (  # noqa: E402
    ClientTLS,
    ServerTLS,
    load_private_key,
    peer_spki,
)

CHUNK = 1 << 20

#: Bytes handed to OpenSSL in one C{SSL_write} by L{_BulkTLSProtocol}
#: (into a memory BIO, which takes them all: many records in one call).
BULK = 1 << 20


class _BulkTLSProtocol(TLSMemoryBIOProtocol):
    """
    Twisted's TLS protocol with a write path that hands OpenSSL a whole
    chunk at once: one C{SSL_write} (of a memoryview, no copy) and one
    drain of the send BIO per chunk, where Twisted's C{_write} slices
    (copies) 16 KiB, writes it, and reads the BIO for each record: ~4
    Python calls per 16 KiB.  A measurement for issue 15 (C{--bulk}).
    """

    def _write(self, bytes: Any) -> None:
        if self._lostTLSConnection:
            return
        view = memoryview(bytes)
        done = 0
        while done < len(view):
            try:
                done += self._tlsConnection.send(view[done : done + BULK])
            except SSL.WantReadError:
                self._bufferedWrite(view[done:].tobytes())
                break
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                break
            self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        while True:
            try:
                data = self._tlsConnection.bio_read(BULK + (BULK >> 4))
            except SSL.WantReadError:
                return
            self.transport.write(data)


reactor: Any = _reactor


def _spki(pub_path: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    with open(pub_path, "rb") as f:
        key = serialization.load_pem_public_key(f.read())
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class _Receiver(Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.expected:
            self.transport.write(b"k")


def serve(args: argparse.Namespace) -> None:
    key = load_private_key(args.key)
    peer = _spki(args.peer)
    tls = ServerTLS(key, lambda spki: PeerId("a") if spki == peer else None)
    if args.blocking:
        _serve_blocking(tls, args.bytes)
        return
    factory = TLSMemoryBIOFactory(
        tls, False, Factory.forProtocol(lambda: _Receiver(args.bytes))
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(f"port {port.getHost().port}", flush=True)
    reactor.run()


@implementer(IPushProducer, IHandshakeListener)
class _Sender(Protocol):
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.offset = 0
        self.paused = False
        self.started = time.perf_counter()
        self.handshake = 0.0
        self.began = 0.0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)

    def handshakeCompleted(self) -> None:
        self.handshake = time.perf_counter() - self.started
        if peer_spki(self.transport) is None:
            self.transport.abortConnection()
            return
        self.began = time.perf_counter()
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.offset < self.size:
            chunk = os.pread(self.fd, CHUNK, self.offset)
            self.offset += len(chunk)
            self.transport.write(chunk)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        seconds = time.perf_counter() - self.began
        print(f"transfer {seconds:.4f} handshake {self.handshake:.4f}", flush=True)
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        os.close(self.fd)
        if reactor.running:
            reactor.stop()


def push(args: argparse.Namespace) -> None:
    key = load_private_key(args.key)
    tls = ClientTLS(key, _spki(args.peer), PeerId("b"))
    if args.blocking:
        _push_blocking(tls, args.port, args.file)
        return
    factory = TLSMemoryBIOFactory(
        tls, True, Factory.forProtocol(lambda: _Sender(args.file))
    )
    if args.bulk:
        factory.protocol = _BulkTLSProtocol
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", args.port)
    endpoint.connect(factory).addErrback(lambda f: (print(f), reactor.stop()))
    reactor.run()


def _serve_blocking(tls: ServerTLS, expected: int) -> None:
    """
    Accept one connection at a time on a blocking socket and receive
    C{expected} bytes over TLS with C{recv_into}; answer one byte.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"port {listener.getsockname()[1]}", flush=True)
    buffer = bytearray(CHUNK)
    while True:
        sock, _ = listener.accept()
        conn = SSL.Connection(tls.serverConnectionForTLS(None).get_context(), sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            received = 0
            while received < expected:
                received += conn.recv_into(buffer)
            conn.sendall(b"k")
            conn.shutdown()
        except SSL.Error as e:
            print(f"TLS error: {e}", file=sys.stderr, flush=True)
        finally:
            sock.close()


def _push_blocking(tls: ClientTLS, port: int, path: str) -> None:
    """
    Send a file over TLS on a blocking socket, 1 MiB at a time, and wait
    for the receiver's byte.
    """
    started = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    conn = SSL.Connection(tls.clientConnectionForTLS(None).get_context(), sock)
    conn.set_connect_state()
    conn.do_handshake()
    if conn.get_peer_certificate() is None:
        raise SystemExit("no peer certificate")
    handshake = time.perf_counter() - started
    began = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            chunk = os.pread(fd, CHUNK, offset)
            offset += len(chunk)
            conn.sendall(chunk)
    finally:
        os.close(fd)
    if conn.recv(1) != b"k":
        raise SystemExit("no answer")
    seconds = time.perf_counter() - began
    print(f"transfer {seconds:.4f} handshake {handshake:.4f}", flush=True)
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve")
    s.add_argument("--key", required=True)
    s.add_argument("--peer", required=True)
    s.add_argument("--bytes", type=int, required=True)
    s.add_argument("--blocking", action="store_true")
    p = commands.add_parser("push")
    p.add_argument("--key", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--blocking", action="store_true")
    p.add_argument("--bulk", action="store_true")
    p.add_argument("file")
    args = parser.parse_args()
    serve(args) if args.command == "serve" else push(args)


if __name__ == "__main__":
    main()
