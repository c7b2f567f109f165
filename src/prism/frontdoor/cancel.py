"""Cancel keys: Prism gives every client its own BackendKeyData and remembers what it stands for.

Each branch server numbers its backends with small process ids, so two branches (two Docker
containers, each with its own pid namespace) easily have a backend with pid 4242 at once;
forwarding a CancelRequest by the backend's own key would need the backend's secret, and with
protocol 3.2's variable-length keys would tie the client to whatever key length the backend
chose. Instead Prism issues a fresh random secret per session, in the length the client's
protocol version allows (4 bytes up to 3.1, 32 bytes for 3.2 as PostgreSQL 18 does), and maps
``(pid, secret)`` to the backend's address and real key. A CancelRequest naming an unknown key
is dropped, as Postgres drops it.

The pid in the key stays the backend's real one. Clients compare it with what the server says
elsewhere — the pid on a NOTIFY (psycopg's ``Notify.pid``, asyncpg listeners and pgjdbc skip
their own notifications that way), ``pg_backend_pid()``, ``pg_stat_activity`` — so a made-up pid
would make Prism behave unlike Postgres. The secret alone tells colliding pids apart.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Final

import trio

from prism.core.address import BackendAddress
from prism.postgres import wire

log = logging.getLogger(__name__)

_LONG_KEY_MINOR: Final = 2
_SHORT_SECRET: Final = 4
_LONG_SECRET: Final = 32
_CANCEL_FORWARD_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class CancelTarget:
    """The real backend behind one Prism-issued key."""

    address: BackendAddress
    pid: int
    secret: bytes
    branch: str


class CancelKeys:
    """Issues client-facing cancel keys and forwards CancelRequests to the right backend."""

    def __init__(self) -> None:
        self._by_pid: dict[int, dict[bytes, CancelTarget]] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_pid.values())

    def issue(self, target: CancelTarget, *, protocol_minor: int) -> tuple[int, bytes]:
        """A fresh ``(pid, secret)`` for a client, mapped to ``target`` until :meth:`revoke`."""
        length = _LONG_SECRET if protocol_minor >= _LONG_KEY_MINOR else _SHORT_SECRET
        keys = self._by_pid.setdefault(target.pid, {})
        while (secret := secrets.token_bytes(length)) in keys:
            pass  # another branch's backend with this pid drew the same 4 bytes: draw again
        keys[secret] = target
        return target.pid, secret

    def revoke(self, pid: int, secret: bytes) -> None:
        """Forget a key: its session has ended, so a late cancel must not reach a reused pid."""
        keys = self._by_pid.get(pid, {})
        keys.pop(secret, None)
        if not keys:
            self._by_pid.pop(pid, None)

    def lookup(self, pid: int, secret: bytes) -> CancelTarget | None:
        """The backend a key stands for, or None; secrets are compared in constant time."""
        found: CancelTarget | None = None
        for issued, target in self._by_pid.get(pid, {}).items():
            if hmac.compare_digest(issued, secret):
                found = target
        return found

    async def forward(self, request: wire.CancelRequest, peer: str) -> None:
        """Send the backend's own CancelRequest for a client's key; unknown keys are dropped."""
        target = self.lookup(request.pid, request.secret)
        if target is None:
            log.debug("cancel: request from %s with an unknown key: ignored", peer)
            return
        log.debug(
            "cancel: forwarding for branch=%s backend_pid=%d client=%s",
            target.branch,
            target.pid,
            peer,
        )
        try:
            with trio.fail_after(_CANCEL_FORWARD_TIMEOUT):
                server = await target.address.connect()
                async with server:
                    await server.send_all(wire.CancelRequest(target.pid, target.secret).encode())
                    # The server closes without answering once it has acted on the request.
                    await server.receive_some(1)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            log.info(
                "cancel: could not forward to branch=%s for client=%s: %s",
                target.branch,
                peer,
                exc,
            )
