"""Logging a client's session in to its branch server, sans-IO: one server message at a time.

With a :class:`~prism.frontdoor.clientauth.Verified` client (``--auth verify``), Prism answers the
server's SCRAM challenge itself with the client's ClientKey, so the password never crosses Prism;
otherwise (passthrough) each challenge goes to the client and its answer back. Either way the
client sees exactly one AuthenticationOk. :class:`prism.frontdoor.startup.Startup` feeds this the
server's messages up to AuthenticationOk and does what each :class:`Step` says.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from prism.core.errors import PrismError, ProtocolViolation
from prism.frontdoor.clientauth import Verified
from prism.postgres import scram, wire


class Outcome(enum.Enum):
    """What the log-in needs next after one server message."""

    CONTINUE = "continue"
    """Another server message."""
    CLIENT_ANSWER = "client answer"
    """The client's answer to the challenge just relayed (passthrough), for the server."""
    LOGGED_IN = "logged in"
    """The server accepted the login; what follows belongs to the session."""
    REFUSED = "refused"
    """The server refused with an ErrorResponse, which is in :attr:`Step.to_client`."""


@dataclass(frozen=True)
class Step:
    """The bytes one server message asks to send, and what comes next."""

    outcome: Outcome
    to_client: bytes = b""
    to_backend: bytes = b""


class BackendLogin:
    """The client side of one branch-server log-in, up to the server's AuthenticationOk."""

    def __init__(self, verified: Verified | None) -> None:
        self._verified = verified
        self._scram: scram.ScramClient | None = None

    def handle(self, message: wire.Message) -> Step:
        """The step for one message from the server."""
        if message.type == b"E":
            return Step(Outcome.REFUSED, to_client=message.raw)
        if message.type == b"v":
            # Prism told the client what it gets; the server's own answer is absorbed
            # (Prism re-issues the cancel key, the only thing that differs by version).
            return Step(Outcome.CONTINUE)
        if message.type == b"N":
            return Step(Outcome.CONTINUE, to_client=message.raw)
        if message.type != b"R":
            raise ProtocolViolation(
                f"branch server sent {message.type!r} before authentication finished"
            )
        request = wire.Authentication.decode(message.payload)
        if self._verified is None:
            if request.code == wire.AuthCode.OK:
                return Step(Outcome.LOGGED_IN, to_client=message.raw)
            wait = Outcome.CLIENT_ANSWER if request.needs_answer else Outcome.CONTINUE
            return Step(wait, to_client=message.raw)
        if request.code == wire.AuthCode.OK:
            final = wire.Authentication(wire.AuthCode.SASL_FINAL, self._verified.server_final)
            return Step(Outcome.LOGGED_IN, to_client=final.encode() + message.raw)
        return Step(Outcome.CONTINUE, to_backend=self._answer(request, self._verified))

    def _answer(self, request: wire.Authentication, verified: Verified) -> bytes:
        """Prism's own answer to a SCRAM request, with the client's ClientKey."""
        if request.code == wire.AuthCode.SASL:
            mechanisms = [m.decode(errors="replace") for m in request.data.split(b"\0") if m]
            if scram.MECHANISM not in mechanisms:
                raise PrismError(
                    f"the branch server offers {mechanisms}, not {scram.MECHANISM}",
                    sqlstate="28000",
                )
            self._scram = scram.ScramClient.from_client_key(verified.verifier, verified.client_key)
            return wire.SASLInitialResponse(scram.MECHANISM, self._scram.client_first()).encode()
        if request.code == wire.AuthCode.SASL_CONTINUE and self._scram is not None:
            return wire.PasswordMessage(self._scram.client_final(request.data)).encode()
        if request.code == wire.AuthCode.SASL_FINAL and self._scram is not None:
            self._scram.verify_server_final(request.data)
            return b""
        raise PrismError(
            f"the branch server asks for authentication method {request.code}; --auth verify "
            "needs scram-sha-256 for TCP connections in the branch's pg_hba.conf",
            hint="fix pg_hba.conf, or run Prism with --auth passthrough",
            sqlstate="28000",
        )
