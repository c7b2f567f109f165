"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as pure functions plus a sans-IO client exchange.

No sockets here: callers move the messages. The key derivations are shared building blocks,
so the server side (verifying clients against a stored ``SCRAM-SHA-256$...`` verifier) can
live next to them. Postgres uses SCRAM without channel binding over plain connections, which
is all Prism's service client needs (``gs2`` header ``n,,``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from typing import Final

from prism.errors import ProtocolViolation

MECHANISM: Final = "SCRAM-SHA-256"
_GS2_HEADER: Final = "n,,"


class ScramError(ProtocolViolation):
    """A SCRAM message is malformed, or the server failed to prove it knows the password."""


def _hash(hash_name: str, data: bytes) -> bytes:
    return hashlib.new(hash_name, data).digest()


def _hmac(hash_name: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hash_name).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ScramError(f"SCRAM {what} is not valid base64") from exc


def saslprep(password: str) -> str:
    """Normalize a password as Postgres does before hashing it (RFC 4013 SASLprep).

    Like Postgres's ``pg_saslprep`` users, a password that SASLprep prohibits is used
    unchanged rather than refused, and pure ASCII is never altered, so Prism derives the same
    keys the server stored.
    """
    if password.isascii():
        return password
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    prepped = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_a1,
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    if any(check(ch) for ch in prepped for check in prohibited):
        return password
    if any(stringprep.in_table_d1(ch) for ch in prepped) and (
        any(stringprep.in_table_d2(ch) for ch in prepped)
        or not stringprep.in_table_d1(prepped[0])
        or not stringprep.in_table_d1(prepped[-1])
    ):
        return password
    return prepped


def salted_password(
    password: str, salt: bytes, iterations: int, hash_name: str = "sha256"
) -> bytes:
    """``Hi(Normalize(password), salt, i)``: PBKDF2 with the hash's own output length."""
    return hashlib.pbkdf2_hmac(hash_name, saslprep(password).encode(), salt, iterations)


def client_key(salted: bytes, hash_name: str = "sha256") -> bytes:
    """``HMAC(SaltedPassword, "Client Key")``."""
    return _hmac(hash_name, salted, b"Client Key")


def server_key(salted: bytes, hash_name: str = "sha256") -> bytes:
    """``HMAC(SaltedPassword, "Server Key")``."""
    return _hmac(hash_name, salted, b"Server Key")


def stored_key(client_key_: bytes, hash_name: str = "sha256") -> bytes:
    """``H(ClientKey)``: what a server stores instead of the password."""
    return _hash(hash_name, client_key_)


def client_proof(client_key_: bytes, auth_message: bytes, hash_name: str = "sha256") -> bytes:
    """``ClientKey XOR HMAC(StoredKey, AuthMessage)``."""
    signature = _hmac(hash_name, stored_key(client_key_, hash_name), auth_message)
    return _xor(client_key_, signature)


def server_signature(server_key_: bytes, auth_message: bytes, hash_name: str = "sha256") -> bytes:
    """``HMAC(ServerKey, AuthMessage)``: the server's proof that it knows the password."""
    return _hmac(hash_name, server_key_, auth_message)


def parse_attributes(message: str) -> dict[str, str]:
    """The ``k=value`` attributes of a SCRAM message, in a dict keyed by the letter."""
    attributes: dict[str, str] = {}
    for part in message.split(","):
        key, eq, value = part.partition("=")
        if len(key) != 1 or not eq:
            raise ScramError(f"malformed SCRAM attribute {part[:40]!r}")
        attributes[key] = value
    return attributes


def _saslname(username: str) -> str:
    return username.replace("=", "=3D").replace(",", "=2C")


def make_nonce() -> str:
    """A fresh client nonce: printable, no commas, 144 bits of randomness (as libpq)."""
    return _b64(secrets.token_bytes(18))


class ScramClient:
    """The client side of one SCRAM exchange: three steps, messages in and out as bytes.

    Postgres ignores the SCRAM user name (the startup packet's ``user`` counts), so the
    default is an empty one, as libpq sends. ``nonce`` and ``hash_name`` exist for the RFC
    test vectors.
    """

    def __init__(
        self,
        password: str,
        *,
        username: str = "",
        nonce: str | None = None,
        hash_name: str = "sha256",
    ) -> None:
        self._password = password
        self._hash_name = hash_name
        self._nonce = nonce if nonce is not None else make_nonce()
        self._first_bare = f"n={_saslname(username)},r={self._nonce}"
        self._expected_signature: bytes | None = None

    def client_first(self) -> bytes:
        """The client-first-message."""
        return (_GS2_HEADER + self._first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        """The client-final-message (with proof), answering the server-first-message."""
        text = _decode(server_first, "server-first-message")
        attrs = parse_attributes(text)
        if "m" in attrs:
            raise ScramError("SCRAM server requires an unsupported extension")
        try:
            nonce, salt_b64, iterations_text = attrs["r"], attrs["s"], attrs["i"]
        except KeyError as exc:
            raise ScramError(f"SCRAM server-first-message lacks {exc.args[0]!r}") from exc
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("SCRAM server nonce does not extend the client nonce")
        if not iterations_text.isdigit() or int(iterations_text) < 1:
            raise ScramError(f"SCRAM iteration count {iterations_text[:20]!r} is invalid")
        salt = _unb64(salt_b64, "salt")
        salted = salted_password(self._password, salt, int(iterations_text), self._hash_name)
        channel_binding = _b64(_GS2_HEADER.encode())
        final_bare = f"c={channel_binding},r={nonce}"
        auth_message = f"{self._first_bare},{text},{final_bare}".encode()
        key = client_key(salted, self._hash_name)
        proof = client_proof(key, auth_message, self._hash_name)
        self._expected_signature = server_signature(
            server_key(salted, self._hash_name), auth_message, self._hash_name
        )
        return f"{final_bare},p={_b64(proof)}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server-final-message; raises ScramError unless the server proved itself."""
        if self._expected_signature is None:
            raise RuntimeError("verify_server_final() called before client_final()")
        attrs = parse_attributes(_decode(server_final, "server-final-message"))
        if "e" in attrs:
            raise ScramError(f"SCRAM authentication failed on the server: {attrs['e']}")
        signature = _unb64(attrs.get("v", ""), "server signature")
        if not hmac.compare_digest(signature, self._expected_signature):
            # A server that does not know the password may be an impostor; stop here.
            raise ScramError("SCRAM server signature is wrong", sqlstate="28000")


def _decode(message: bytes, what: str) -> str:
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScramError(f"SCRAM {what} is not valid UTF-8") from exc
