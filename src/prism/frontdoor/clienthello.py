"""Sans-IO reading of the server name (SNI) from a client's TLS ClientHello.

Prism routes on the SNI host name (``<branch>.<--sni-domain>``). Python's ``ssl`` hands the name
to an ``sni_callback`` only after decoding it as ASCII inside OpenSSL's callback; a ClientHello
with any other byte in its server name makes that decoding fail where no code can catch it,
so CPython prints the error as an "unraisable exception" on stderr — one line of noise per
hostile connection, and the handshake aborted with an internal-error alert. Reading the name
from the ClientHello bytes before they reach OpenSSL avoids the callback altogether, and any
name that is not a plain host name is simply no name (OpenSSL then judges the handshake).

Only what is needed is parsed (RFC 8446 §4.1.2 and RFC 6066 §3); anything malformed, or a hello
larger than :data:`MAX_HELLO`, gives ``None`` and the handshake goes on without a name.
"""

from __future__ import annotations

import enum
import re
from typing import Final

MAX_HELLO: Final = 32_768
"""Give up looking for a name in a ClientHello longer than this (real ones are ~0.5-2 KiB)."""

TLS_HANDSHAKE_RECORD: Final = 0x16
"""First byte of a TLS handshake record: how a direct-TLS connection announces itself."""

_CLIENT_HELLO: Final = 0x01
_SERVER_NAME: Final = 0x0000
_HOST_NAME: Final = 0x00
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}")


class NeedMore(enum.Enum):
    """More bytes must arrive before the ClientHello is complete."""

    NEED_MORE = "need more"


NEED_MORE: Final = NeedMore.NEED_MORE


class _Malformed(Exception):
    pass


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise _Malformed
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Cursor:
        return _Cursor(self.take(self.number(length_size)))

    def done(self) -> bool:
        return self._pos == len(self._data)


def server_name(data: bytes) -> str | NeedMore | None:
    """The SNI host name in the ClientHello that ``data`` starts with.

    NEED_MORE while the ClientHello is incomplete; None when it has no usable name (or is
    not a ClientHello at all). The name is lower-cased, as DNS names compare.
    """
    handshake = bytearray()
    pos = 0
    while True:
        if len(handshake) >= 4:
            if handshake[0] != _CLIENT_HELLO:
                return None
            length = int.from_bytes(handshake[1:4], "big")
            if length > MAX_HELLO:
                return None
            if len(handshake) >= 4 + length:
                return _name_in(bytes(handshake[4 : 4 + length]))
        if len(data) < pos + 5:
            return NEED_MORE if len(data) < MAX_HELLO else None
        if data[pos] != TLS_HANDSHAKE_RECORD:
            return None
        record_length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if len(data) < pos + 5 + record_length:
            return NEED_MORE if len(data) < MAX_HELLO else None
        handshake += data[pos + 5 : pos + 5 + record_length]
        pos += 5 + record_length
        if record_length == 0:
            return None  # a legal but pointless record; not worth looping over


def _name_in(hello: bytes) -> str | None:
    try:
        cur = _Cursor(hello)
        cur.take(2 + 32)  # legacy_version, random
        cur.vector(1)  # legacy_session_id
        cur.vector(2)  # cipher_suites
        cur.vector(1)  # legacy_compression_methods
        if cur.done():
            return None  # no extensions at all
        extensions = cur.vector(2)
        while not extensions.done():
            kind = extensions.number(2)
            body = extensions.vector(2)
            if kind == _SERVER_NAME:
                names = body.vector(2)
                while not names.done():
                    name_type = names.number(1)
                    name = names.take(names.number(2))
                    if name_type == _HOST_NAME:
                        return _host(name)
                return None
    except _Malformed:
        return None
    return None


def _host(raw: bytes) -> str | None:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text.lower() if _HOST.fullmatch(text) else None
