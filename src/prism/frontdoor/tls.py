"""TLS for the front door: the server context, a self-signed certificate, and stream adapters.

Prism terminates TLS itself (clients ask with an SSLRequest, or open with a TLS ClientHello
for PostgreSQL 17's direct TLS) so it can read the start-up packet, route on it and use the
TLS SNI host name; the link to the branch server stays on the loopback.

Two details make TLS streams fit the byte pump, which was written for sockets:

* :class:`TlsStream` offers ``send_eof``: TLS has no half-close, so ending our sending side
  means a close_notify and closing the connection, which is what Postgres does when a
  session ends.
* :class:`PrefixedStream` gives back bytes the front door already read while sniffing (the
  start of a direct-TLS ClientHello) before reading on from the socket.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from prism.core.errors import ConfigError
from prism.core.values import TlsMode

log = logging.getLogger(__name__)

ALPN_PROTOCOL: Final = "postgresql"
"""The ALPN protocol id PostgreSQL 17+ clients require for direct TLS."""

_SELF_SIGNED_DAYS: Final = 3650


@dataclass(frozen=True)
class TlsConfig:
    """Everything the front door needs to serve TLS."""

    context: ssl.SSLContext
    channel_binding: bytes
    """``tls-server-end-point`` data (RFC 5929): the hash of Prism's own certificate."""
    required: bool


def load_tls(
    mode: TlsMode, *, cert: Path | None, key: Path | None, data_dir: Path
) -> TlsConfig | None:
    """The TLS configuration for ``mode``; None when TLS is off.

    Without a configured certificate, a self-signed one is generated into
    ``<data-dir>/tls/`` on first start and reused afterwards, so clients can pin it.
    """
    if mode is TlsMode.OFF:
        return None
    if (cert is None) != (key is None):
        raise ConfigError(
            "--tls-cert and --tls-key must be given together",
            hint="give both files, or neither to use a generated self-signed certificate",
        )
    if cert is None or key is None:
        cert, key = data_dir / "tls" / "server.crt", data_dir / "tls" / "server.key"
        if not cert.exists() or not key.exists():
            _generate_self_signed(cert, key)
            log.info(
                "tls: generated a self-signed certificate %s (clients cannot verify it; "
                "configure --tls-cert/--tls-key for verify-full)",
                cert,
            )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        pem = cert.read_bytes()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {cert} / key {key}: {exc}",
            hint="check the paths and that the key matches the certificate",
        ) from None
    context.set_alpn_protocols([ALPN_PROTOCOL])
    # No sni_callback: the front door reads the name from the ClientHello itself
    # (prism.frontdoor.clienthello explains why).
    return TlsConfig(
        context=context,
        channel_binding=server_end_point_hash(x509.load_pem_x509_certificate(pem)),
        required=mode is TlsMode.REQUIRED,
    )


def server_end_point_hash(cert: x509.Certificate) -> bytes:
    """RFC 5929 ``tls-server-end-point``: the certificate hashed with its signature's hash.

    MD5 and SHA-1 are replaced by SHA-256, as the RFC says; libpq computes the same.
    """
    algorithm = cert.signature_hash_algorithm
    name = algorithm.name if algorithm is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, cert.public_bytes(serialization.Encoding.DER)).digest()


def _generate_self_signed(cert_path: Path, key_path: Path) -> None:
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prism")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_SELF_SIGNED_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key is written 0600 from the start: never world-readable, not even for a moment.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first returns ``prefix`` (bytes already read), then reads on."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self._inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class TlsStream(trio.abc.HalfCloseableStream):
    """A server-side TLS connection that the byte pump can use like a socket."""

    def __init__(self, ssl_stream: trio.SSLStream[trio.abc.Stream], sni: str | None) -> None:
        self.ssl_stream = ssl_stream
        self.sni = sni
        """The host name the client asked for in its ClientHello, if any."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.ssl_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.ssl_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.ssl_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # TLS cannot half-close: close_notify ends both directions, as Postgres does when
        # the backend ends a session. A task still receiving gets ClosedResourceError.
        await self.ssl_stream.aclose()

    async def aclose(self) -> None:
        await self.ssl_stream.aclose()

    def selected_alpn_protocol(self) -> str | None:
        """The ALPN protocol both sides agreed on, if any."""
        selected: str | None = self.ssl_stream.selected_alpn_protocol()
        return selected


async def accept_tls(transport: trio.abc.Stream, config: TlsConfig, sni: str | None) -> TlsStream:
    """Run the server side of a TLS handshake on ``transport``.

    ``sni`` is the server name the front door read from the ClientHello. Raises
    trio.BrokenResourceError when the handshake fails (the client hung up, refused our
    certificate or spoke something else).
    """
    ssl_stream = trio.SSLStream(transport, config.context, server_side=True)
    await ssl_stream.do_handshake()
    return TlsStream(ssl_stream, sni)
