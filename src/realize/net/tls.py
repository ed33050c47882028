"""
TLS with pinned ed25519 keys (DESIGN.md section 4).

Each process makes a self-signed X.509 certificate from its ed25519 private
key in memory at start; nobody manages certificates.  Connections are TLS
1.3 only and mutually authenticated: the server asks for a client
certificate, and each side accepts the other only if the
SubjectPublicKeyInfo of the presented certificate is one of the configured
peer keys (the client: exactly the key of the peer it meant to reach).  No
CA, no hostname check: the key is the identity.

Connection attempts and accept/reject decisions are logged in the
C{realize.auth} namespace (#logauth).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable

from attrs import define, field
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from realize.errors import ConfigError
from realize.model import PeerId

__all__ = [
    "ClientTLS",
    "ServerTLS",
    "fingerprint",
    "load_private_key",
    "make_certificate",
    "peer_spki",
    "pinned_identity",
    "public_key_pem",
]

#: Logger of connection attempts and TLS accept/reject decisions.
auth_log = Logger(namespace="realize.auth")


def load_private_key(path: str) -> Ed25519PrivateKey:
    """
    Read an ed25519 private key (PEM PKCS#8, as written by C{openssl genpkey
    -algorithm ed25519} or C{realize-keygen}).

    @param path: the key file.
    @return: the key.
    @raise ConfigError: naming the file, if it cannot be read or is not an
        unencrypted PEM ed25519 private key.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot read private key: {e.strerror or e}"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: not a PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{path}: not an ed25519 private key ({type(key).__name__}); "
            "make one with: openssl genpkey -algorithm ed25519"
        )
    return key


def public_key_pem(key: Ed25519PrivateKey) -> str:
    """
    @param key: a private key.
    @return: its public key as PEM, as the config's C{pubkey} wants it.
    """
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode("ascii")
    )


def fingerprint(spki: bytes) -> str:
    """
    A short printable fingerprint of a public key.

    @param spki: DER SubjectPublicKeyInfo.
    @return: C{sha256:} and the first 16 hex digits of its SHA-256.
    """
    return "sha256:" + hashlib.sha256(spki).hexdigest()[:16]


def make_certificate(key: Ed25519PrivateKey) -> x509.Certificate:
    """
    Make a self-signed certificate for a key, in memory.

    Its validity period and names do not matter: peers check only its key.

    @param key: the private key.
    @return: a certificate valid from yesterday for 100 years.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "realize")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=36500))
        .sign(key, algorithm=None)
    )


def _spki(cert: crypto.X509) -> bytes:
    return (
        cert.to_cryptography()
        .public_key()
        .public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


def peer_spki(transport: object) -> bytes | None:
    """
    The public key the other side of a TLS connection presented.

    @param transport: a L{TLSMemoryBIOProtocol} (the transport of a
        protocol running over TLS).
    @return: its DER SubjectPublicKeyInfo, or C{None} if there is none.
    """
    getter = getattr(transport, "getPeerCertificate", None)
    cert = getter() if getter is not None else None
    if cert is None:
        return None
    return _spki(cert)


def _context(key: Ed25519PrivateKey, verify: Callable[..., bool]) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    ctx.use_certificate(crypto.X509.from_cryptography(make_certificate(key)))
    ctx.check_privatekey()
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    # No session resumption: every connection proves its key.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_options(SSL.OP_NO_TICKET)
    return ctx


def _address(tls: object) -> str:
    transport = getattr(tls, "transport", None)
    peer = transport.getPeer() if transport is not None else None
    host = getattr(peer, "host", None)
    if host is None:
        return "?"
    port = getattr(peer, "port", None)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IOpenSSLServerConnectionCreator)
@define(eq=False)
class ServerTLS:
    """
    Server side: accept any client whose key is a configured peer's.

    @ivar key: this peer's private key.
    @ivar lookup: maps a DER SubjectPublicKeyInfo to a peer id, or C{None}
        for an unknown key; consulted at each handshake, so a reloaded
        config applies to new connections.
    """

    key: Ed25519PrivateKey
    lookup: Callable[[bytes], PeerId | None]
    _context: SSL.Context | None = field(default=None, init=False)

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if depth != 0:
            return True
        spki = _spki(cert)
        peer = self.lookup(spki)
        tls = conn.get_app_data()
        if peer is None:
            auth_log.warn(
                "rejected connection from {address}: unknown key {fingerprint}",
                address=_address(tls),
                fingerprint=fingerprint(spki),
                reason="unknown key",
                accepted=False,
            )
            return False
        return True

    def set_key(self, key: Ed25519PrivateKey) -> None:
        """
        Use another private key for new connections (a reloaded key file).

        @param key: the new key.
        """
        self.key = key
        self._context = None

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        if self._context is None:
            self._context = _context(self.key, self._verify)
        conn = SSL.Connection(self._context, None)
        conn.set_app_data(tlsProtocol)
        return conn


@implementer(IOpenSSLClientConnectionCreator)
@define(eq=False)
class ClientTLS:
    """
    Client side: accept the server only if it presents the expected key.

    @ivar key: this peer's private key.
    @ivar expected: DER SubjectPublicKeyInfo of the peer being called.
    @ivar peer: the peer's id, for messages.
    @ivar mismatch: after a refused handshake, the fingerprint of the key
        the server presented instead, else C{None}.
    """

    key: Ed25519PrivateKey
    expected: bytes
    peer: PeerId
    mismatch: str | None = None
    _context: SSL.Context | None = field(default=None, init=False)

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if depth != 0:
            return True
        spki = _spki(cert)
        if spki != self.expected:
            self.mismatch = fingerprint(spki)
            auth_log.warn(
                "rejected server {peer} at {address}: it presented key "
                "{fingerprint}, not the configured one",
                peer=self.peer,
                address=_address(conn.get_app_data()),
                fingerprint=self.mismatch,
                reason="wrong server key",
                accepted=False,
            )
            return False
        return True

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        if self._context is None:
            self._context = _context(self.key, self._verify)
        conn = SSL.Connection(self._context, None)
        conn.set_app_data(tlsProtocol)
        return conn


def transport_address(transport: object) -> str:
    """
    @param transport: a transport, or a protocol wrapper over one.
    @return: C{host:port} (C{[v6]:port}) of its peer, or C{"?"}.
    """
    getter = getattr(transport, "getPeer", None)
    peer = getter() if getter is not None else None
    host = getattr(peer, "host", None)
    if host is None:
        return "?"
    port = getattr(peer, "port", "?")
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def pinned_identity(
    lookup: Callable[[bytes], PeerId | None],
) -> Callable[[object], PeerId | None]:
    """
    The identification of a connection's peer after its TLS handshake: the
    public key of the certificate it presented, looked up among the
    configured peers.  Accepted and refused peers are logged in
    C{realize.auth} (#logauth).

    @param lookup: maps a DER SubjectPublicKeyInfo to a peer id.
    @return: a function of the TLS transport giving the peer id, or
        C{None} (the connection is then dropped).
    """

    def identify(transport: object) -> PeerId | None:
        spki = peer_spki(transport)
        peer = lookup(spki) if spki is not None else None
        address = transport_address(transport)
        if peer is None:
            # Cannot happen with the verify callbacks of this module.
            auth_log.error(
                "TLS handshake with {address} completed without a known key",
                address=address,
                accepted=False,
            )
            return None
        auth_log.info(
            "authenticated {peer} at {address} ({fingerprint})",
            peer=peer,
            address=address,
            fingerprint=fingerprint(spki or b""),
            accepted=True,
        )
        return peer

    return identify
