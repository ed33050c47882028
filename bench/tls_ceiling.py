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
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402
from twisted.internet.interfaces import IHandshakeListener, IPushProducer  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: E402
from zope.interface import implementer  # noqa: E402

from realize.model import PeerId  # noqa: E402
from realize.net.tls import (  # noqa: E402
    ClientTLS,
    ServerTLS,
    load_private_key,
    peer_spki,
)

CHUNK = 1 << 20

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
    factory = TLSMemoryBIOFactory(
        tls, True, Factory.forProtocol(lambda: _Sender(args.file))
    )
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", args.port)
    endpoint.connect(factory).addErrback(lambda f: (print(f), reactor.stop()))
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve")
    s.add_argument("--key", required=True)
    s.add_argument("--peer", required=True)
    s.add_argument("--bytes", type=int, required=True)
    p = commands.add_parser("push")
    p.add_argument("--key", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("file")
    args = parser.parse_args()
    serve(args) if args.command == "serve" else push(args)


if __name__ == "__main__":
    main()
