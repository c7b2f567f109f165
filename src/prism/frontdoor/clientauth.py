"""Checking one client's password at the front door, sans-IO: SCRAM in Postgres messages.

:mod:`prism.postgres.scram` holds the SCRAM exchange itself; this module puts it in the Postgres
protocol for :class:`prism.frontdoor.startup.Startup`: a role's ``pg_authid`` entry as a verifier a
login can be checked against (:class:`RoleSecret`), the AuthenticationSASL messages in and out
(:class:`ClientVerification`), and what a client that passed leaves for logging it in to the
branch server (:class:`Verified`). Reading the roles of a branch is I/O and lives in
:mod:`prism.frontdoor.auth`; nothing here touches a socket, so importing it loads neither trio nor
the branch manager (tests/unit/test_sans_io_imports.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prism.core.errors import ProtocolViolation
from prism.postgres import scram, wire

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoleSecret:
    """What ``pg_authid`` says about one role, as far as logging in is concerned."""

    password: str | None
    can_login: bool
    valid_until: float | None

    def usable_verifier(self, now: float) -> scram.ScramVerifier | None:
        """The SCRAM verifier a login can be checked against, or None if none can pass.

        As Postgres with ``scram-sha-256`` in pg_hba: no password, an md5 hash or an expired
        password fail. A role without LOGIN is left to the server, which says so itself once
        the password was right.
        """
        if self.valid_until is not None and self.valid_until < now:
            return None
        return scram.ScramVerifier.parse(self.password)


@dataclass(frozen=True)
class Verified:
    """A client that proved it knows the role's password; what logging it in further needs."""

    verifier: scram.ScramVerifier
    client_key: bytes
    server_final: bytes


class ClientVerification:
    """The server side of SCRAM with one client, sans-IO: the client's messages in, ours out.

    Driven by :class:`prism.frontdoor.startup.Startup`. The final message (with Prism's server
    signature) is not sent here: the client gets it together with AuthenticationOk once the branch
    server has accepted the login too.
    """

    def __init__(
        self,
        role: str,
        secret: RoleSecret | None,
        *,
        now: float,
        channel_binding: bytes | None,
        mock_secret: bytes,
    ) -> None:
        self._role = role
        self._known = secret is not None
        verifier = secret.usable_verifier(now) if secret is not None else None
        self._server = scram.ScramServer(
            role, verifier, mock_secret=mock_secret, channel_binding=channel_binding
        )

    def challenge(self) -> bytes:
        """AuthenticationSASL, naming the mechanisms the client may choose from."""
        mechanisms = b"".join(m.encode() + b"\0" for m in self._server.mechanisms) + b"\0"
        return wire.Authentication(wire.AuthCode.SASL, mechanisms).encode()

    def client_first(self, message: wire.Message) -> bytes:
        """The AuthenticationSASLContinue answering the client's SASLInitialResponse."""
        initial = wire.SASLInitialResponse.decode(_password_payload(message))
        server_first = self._server.server_first(initial.mechanism, initial.data)
        return wire.Authentication(wire.AuthCode.SASL_CONTINUE, server_first).encode()

    def client_final(self, message: wire.Message, peer: str) -> Verified:
        """The verified client; AuthenticationFailed unless its proof is right."""
        try:
            final = self._server.server_final(_password_payload(message))
        except scram.AuthenticationFailed:
            why = "no such role" if not self._known else "wrong password or no usable SCRAM secret"
            log.info("auth: login of role %r from %s failed: %s", self._role, peer, why)
            raise
        assert self._server.client_key is not None
        return Verified(self._server.verifier, self._server.client_key, final)


def _password_payload(message: wire.Message) -> bytes:
    if message.type != b"p":
        raise ProtocolViolation(
            f"expected SASL response, got message type {message.type.decode('latin-1')!r}"
        )
    return message.payload
