"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as pure functions plus a sans-IO client exchange.

No sockets here: callers move the messages. Both sides live here and share the key
derivations:

* :class:`ScramClient` logs in to a branch server, with a password (Prism's service client) or
  with a ClientKey recovered from a client's proof (SCRAM pass-through). Prism's links to
  branch servers are plain loopback TCP, so the client never uses channel binding.
* :class:`ScramServer` checks a client against a role's stored ``SCRAM-SHA-256$...`` verifier,
  with ``tls-server-end-point`` channel binding (SCRAM-SHA-256-PLUS) when the client came over
  TLS, and hands back the ClientKey the client proved it knows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass
from typing import Final

from prism.core.errors import PrismError, ProtocolViolation

MECHANISM: Final = "SCRAM-SHA-256"
MECHANISM_PLUS: Final = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING_TYPE: Final = "tls-server-end-point"
_GS2_HEADER: Final = "n,,"
_VERIFIER_PREFIX: Final = "SCRAM-SHA-256$"
_MOCK_ITERATIONS: Final = 4096
_KEY_LENGTH: Final = 32


class ScramError(ProtocolViolation):
    """A SCRAM message is malformed, or the server failed to prove it knows the password."""


class AuthenticationFailed(PrismError):
    """The client did not prove it knows the role's password (or the role cannot log in).

    The message is Postgres's own, and the same whatever the reason (no such role, wrong
    password, no SCRAM secret, expired), so a stranger learns nothing about which roles exist.
    """

    sqlstate = "28P01"

    def __init__(self, role: str) -> None:
        super().__init__(f'password authentication failed for user "{role}"')


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
        self._password: str | None = password
        self._known: tuple[ScramVerifier, bytes] | None = None
        self._hash_name = hash_name
        self._nonce = nonce if nonce is not None else make_nonce()
        self._first_bare = f"n={_saslname(username)},r={self._nonce}"
        self._expected_signature: bytes | None = None

    @classmethod
    def from_client_key(
        cls, verifier: ScramVerifier, client_key_: bytes, *, nonce: str | None = None
    ) -> ScramClient:
        """A client that proves itself with a ClientKey instead of a password.

        This is SCRAM pass-through: the ClientKey recovered from a client's proof (see
        :meth:`ScramServer.server_final`) logs in to a server holding the same ``verifier``.
        The server's salt and iteration count must be the verifier's, or the key is not the
        one it expects.
        """
        client = cls("", nonce=nonce)
        client._password = None
        client._known = (verifier, client_key_)
        return client

    def _keys(self, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        """``(ClientKey, ServerKey)`` for the salt and iteration count the server sent."""
        if self._known is not None:
            verifier, key = self._known
            if (salt, iterations) != (verifier.salt, verifier.iterations):
                raise ScramError(
                    "the server's SCRAM secret differs from the one the client was checked "
                    "against (was the password just changed?)",
                    sqlstate="28P01",
                )
            return key, verifier.server_key
        assert self._password is not None
        salted = salted_password(self._password, salt, iterations, self._hash_name)
        return client_key(salted, self._hash_name), server_key(salted, self._hash_name)

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
        key, server_key_ = self._keys(salt, int(iterations_text))
        channel_binding = _b64(_GS2_HEADER.encode())
        final_bare = f"c={channel_binding},r={nonce}"
        auth_message = f"{self._first_bare},{text},{final_bare}".encode()
        proof = client_proof(key, auth_message, self._hash_name)
        self._expected_signature = server_signature(server_key_, auth_message, self._hash_name)
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


# --------------------------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------------------------

_PRINTABLE_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
"""RFC 5802 ``printable``: visible ASCII except the comma."""


@dataclass(frozen=True)
class ScramVerifier:
    """A role's stored SCRAM secret, ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str | None) -> ScramVerifier | None:
        """The verifier in ``text`` (a ``pg_authid.rolpassword``), or None if it is not one.

        None covers a role without a password and an md5 hash: neither can pass a
        scram-sha-256 check, so callers treat both as a failed login, as Postgres does.
        """
        if not text or not text.startswith(_VERIFIER_PREFIX):
            return None
        try:
            head, keys = text[len(_VERIFIER_PREFIX) :].split("$")
            iterations, salt = head.split(":")
            stored, server = keys.split(":")
            verifier = cls(
                int(iterations),
                base64.b64decode(salt, validate=True),
                base64.b64decode(stored, validate=True),
                base64.b64decode(server, validate=True),
            )
        except ValueError:
            return None
        if verifier.iterations < 1 or len(verifier.stored_key) != _KEY_LENGTH:
            return None
        if len(verifier.server_key) != _KEY_LENGTH:
            return None
        return verifier

    @classmethod
    def mock(cls, role: str, secret: bytes) -> ScramVerifier:
        """A verifier no password matches, with a salt stable per role.

        A stranger asking for a role that does not exist (or has no SCRAM secret) gets the
        same kind of exchange as for a real one, with the same salt every time, so probing
        does not reveal which roles exist (Postgres's "mock authentication").
        """
        salt = _hmac("sha256", secret, b"salt:" + role.encode())[:16]
        # Keys no proof can match: StoredKey is H(ClientKey) for a random ClientKey we drop.
        return cls(
            _MOCK_ITERATIONS,
            salt,
            stored_key(secrets.token_bytes(_KEY_LENGTH)),
            secrets.token_bytes(_KEY_LENGTH),
        )

    def accepts(self, password: str) -> bool:
        """Whether ``password`` logs in against this verifier (the server's own check, offline).

        Costs one PBKDF2 of the verifier's iterations: for an API call, not a hot path.
        """
        salted = salted_password(password, self.salt, self.iterations)
        return hmac.compare_digest(stored_key(client_key(salted)), self.stored_key)

    def encode(self) -> str:
        """The ``rolpassword`` text form."""
        return (
            f"{_VERIFIER_PREFIX}{self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )


class ScramServer:
    """The server side of one SCRAM exchange against a stored verifier.

    ``channel_binding`` is the ``tls-server-end-point`` data of the TLS connection the client
    came over, or None without TLS: only then is SCRAM-SHA-256-PLUS offered, and a client
    that says it could bind but thinks we cannot (``y``) is refused as a downgrade.
    ``verifier`` None means the login must fail (unknown role, md5 or no password), after
    an exchange that looks like any other.
    """

    def __init__(
        self,
        role: str,
        verifier: ScramVerifier | None,
        *,
        mock_secret: bytes,
        channel_binding: bytes | None,
        nonce: str | None = None,
    ) -> None:
        self._role = role
        self._doomed = verifier is None
        self._verifier = verifier if verifier is not None else ScramVerifier.mock(role, mock_secret)
        self._channel_binding = channel_binding
        self._server_nonce = nonce if nonce is not None else make_nonce()
        self._gs2_header = ""
        self._binding_used = False
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self.client_key: bytes | None = None
        """The ClientKey the client proved it knows, once :meth:`server_final` succeeded."""

    @property
    def verifier(self) -> ScramVerifier:
        return self._verifier

    @property
    def mechanisms(self) -> list[str]:
        """The mechanisms to offer, best first."""
        if self._channel_binding is not None:
            return [MECHANISM_PLUS, MECHANISM]
        return [MECHANISM]

    def server_first(self, mechanism: str, client_first: bytes) -> bytes:
        """The server-first-message answering the SASLInitialResponse."""
        if mechanism not in self.mechanisms:
            raise ScramError(
                f"client selected an invalid SASL authentication mechanism {mechanism[:40]!r}"
            )
        text = _decode(client_first, "client-first-message")
        flag, _, rest = text.partition(",")
        authzid, comma, bare = rest.partition(",")
        if not comma:
            raise ScramError("malformed SCRAM message: client-first-message lacks its GS2 header")
        if authzid:
            raise ScramError("client uses authorization identity, but it is not supported")
        self._check_binding_flag(flag, mechanism)
        self._gs2_header = f"{flag},,"
        attrs = parse_attributes(bare)
        if bare.startswith("m="):
            raise ScramError("client requires an unsupported SCRAM extension")
        client_nonce = attrs.get("r", "")
        if "n" not in attrs or _PRINTABLE_NONCE.fullmatch(client_nonce) is None:
            raise ScramError("malformed SCRAM message: invalid user name or nonce")
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        verifier = self._verifier
        self._server_first = f"r={self._nonce},s={_b64(verifier.salt)},i={verifier.iterations}"
        return self._server_first.encode()

    def _check_binding_flag(self, flag: str, mechanism: str) -> None:
        if flag == "n":
            if mechanism == MECHANISM_PLUS:
                raise ScramError("channel binding is required by SCRAM-SHA-256-PLUS")
        elif flag == "y":
            if self._channel_binding is not None:
                # We offered PLUS over TLS; a client that could bind but says we cannot has
                # had our offer stripped by someone in the middle.
                raise ScramError("SCRAM channel binding negotiation error")
        elif flag.startswith("p="):
            if mechanism != MECHANISM_PLUS:
                raise ScramError(
                    "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM "
                    "message includes channel binding data"
                )
            if flag[2:] != CHANNEL_BINDING_TYPE:
                raise ScramError(f"unsupported SCRAM channel-binding type {flag[2:40]!r}")
            self._binding_used = True
        else:
            raise ScramError("malformed SCRAM message: unexpected channel-binding flag")

    def server_final(self, client_final: bytes) -> bytes:
        """Check the client's proof; the server-final-message, or AuthenticationFailed."""
        if not self._nonce:
            raise RuntimeError("server_final() called before server_first()")
        text = _decode(client_final, "client-final-message")
        without_proof, sep, proof_text = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed SCRAM message: client-final-message lacks the proof")
        attrs = parse_attributes(without_proof)
        expected_binding = self._gs2_header.encode()
        if self._binding_used:
            assert self._channel_binding is not None
            expected_binding += self._channel_binding
        if not hmac.compare_digest(_unb64(attrs.get("c", ""), "channel binding"), expected_binding):
            raise ScramError("SCRAM channel binding check failed")
        if attrs.get("r") != self._nonce:
            raise ScramError("SCRAM nonce mismatch")
        proof = _unb64(proof_text, "proof")
        if len(proof) != _KEY_LENGTH:
            raise ScramError("malformed SCRAM message: proof has the wrong length")
        verifier = self._verifier
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        key = _xor(proof, _hmac("sha256", verifier.stored_key, auth_message))
        if self._doomed or not hmac.compare_digest(stored_key(key), verifier.stored_key):
            raise AuthenticationFailed(self._role)
        self.client_key = key
        signature = server_signature(verifier.server_key, auth_message)
        return f"v={_b64(signature)}".encode()
