"""Authentication at the front door: who may create, start or wake a branch.

``--auth verify`` (the default) checks the client itself, with SCRAM-SHA-256 against the role's
verifier in the branch (or, for a branch that does not exist yet, in its parent), *before* the
proxy creates, starts or wakes anything: a stranger who can reach the port cannot make Prism
clone or start a server. Prism then logs in to the branch server as the same role with the
ClientKey the client's proof revealed (SCRAM pass-through, the technique PgBouncer uses): the
server still checks the login against its own verifier, and the client's password never
reaches Prism.

``--auth passthrough`` keeps the first design for trusted networks: the branch is provisioned
first and the client authenticates with the branch server through Prism.

Verifiers are read from ``pg_authid`` over the branch's private service socket (trust, only
Prism's OS user can enter its directory) at every login to a running branch: SCRAM's salt
changes with the password, so a cached verifier cannot be re-checked after a mismatch, and a
stale one would refuse a password the branch accepts (``ALTER ROLE ... PASSWORD`` a moment
ago). The service connection that reads them is held open between logins, one per running
branch, and closed before its server stops: opening one costs a backend fork and a log-in
(11 ms of a 38 ms connection in the connect benchmark, docs/benchmarks.md), a query on an open
one a round trip, and each query still sees the roles as committed at that moment. A
snapshot is written into the branch's data directory (0600) when the roles read differ from the
last read, after every start and just before every stop, so a stopped branch checks a login
against its snapshot (or, for a clone that never ran, its parent's) and is never woken by a
password check; the snapshot lives and dies with the branch's data.

This module is that I/O: the store of role verifiers. Checking a client against one is pure
and lives in :mod:`prism.frontdoor.clientauth`, so the sans-IO start-up machine need not import this
module (and with it the manager, trio and the service client).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from prism.branches.status import UNWELL, BranchRegistry
from prism.core.address import BackendAddress
from prism.core.errors import BackendQueryError, PrismError
from prism.core.settings import Settings
from prism.core.values import AuthMode
from prism.frontdoor.clientauth import RoleSecret
from prism.postgres.client import Row, ServiceConnection, connect_branch

log = logging.getLogger(__name__)

SNAPSHOT_NAME: Final = "prism_roles.json"
_SERVICE_TIMEOUT: Final = 10.0
_ROLES_SQL: Final = (
    "SELECT rolname, rolpassword, rolcanlogin::text, "
    "extract(epoch FROM rolvaliduntil)::text FROM pg_authid"
)


Roles = dict[str, RoleSecret]


def open_verifiers(
    settings: Settings,
    branches: BranchRegistry,
    *,
    address: Callable[[str], BackendAddress | None],
    data_path: Callable[[str], Path],
) -> VerifierStore | None:
    """The role store ``--auth verify`` checks logins with, or None in passthrough.

    Its snapshots follow the branches once ``prism.server`` hands ``snapshot``,
    ``last_snapshot`` and ``forget`` to the manager: taken after every start and before every
    stop, and forgotten when a branch's data is thrown away.
    """
    if settings.auth is AuthMode.PASSTHROUGH:
        log.warning(
            "auth: --auth passthrough: branches are created and woken before clients "
            "authenticate; use it only on a trusted network"
        )
        return None
    return VerifierStore(
        branches,
        address=address,
        data_path=data_path,
        default_parent=settings.default_parent,
        superuser=settings.superuser,
        password=settings.password,
    )


class VerifierStore:
    """Role verifiers per branch: live from a running server, else from its snapshot."""

    def __init__(
        self,
        branches: BranchRegistry,
        *,
        address: Callable[[str], BackendAddress | None],
        data_path: Callable[[str], Path],
        default_parent: str,
        superuser: str,
        password: str,
    ) -> None:
        # The registry, not the manager: the manager is built after this store, with its
        # snapshot and forget among its followers.
        self._branches = branches
        self._address = address
        self._data_path = data_path
        self._default_parent = default_parent
        self._superuser = superuser
        self._password = password
        # What the snapshot file of each branch holds, as this Prism last wrote or saw it.
        self._written: dict[str, Roles] = {}
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        # The service connection each running branch's roles are read over, and the server
        # address it reaches (a restarted server may have another).
        self._held: dict[str, tuple[BackendAddress, ServiceConnection]] = {}
        # Connections of branches forgotten without a stop (their server died): closed by
        # the next read, since ``forget`` cannot wait.
        self._retired: list[ServiceConnection] = []

    async def lookup(self, branch: str, role: str) -> RoleSecret | None:
        """The secret of ``role`` as the server of ``branch`` would check it."""
        # A branch about to be created on connect has its default parent's roles.
        source = branch if self._branches.get(branch) is not None else self._default_parent
        roles = await self._roles(source)
        return roles.get(role)

    async def logs_in(self, branch: str, role: str, password: str) -> bool | None:
        """Whether ``password`` logs ``role`` in to ``branch`` as its server would check it
        (None: Prism has no word on the branch's roles), never starting the server."""
        roles = await self._roles(branch)
        if not roles:
            return None
        secret = roles.get(role)
        verifier = None if secret is None else secret.usable_verifier(time.time())
        if verifier is None:
            return False
        return await trio.to_thread.run_sync(verifier.accepts, password)

    async def _roles(self, branch: str) -> Roles:
        """The roles of ``branch`` as its server would check them, never starting it."""
        name: str | None = branch
        while name is not None:
            async with self._locks[name]:
                address = self._address(name)
                record = self._branches.get(name)
                if record is not None and record.status in UNWELL:
                    # Its server was up and serves nobody now (it may not answer at all):
                    # the snapshot checks the client, and admission tells it why.
                    address = None
                if address is not None:
                    try:
                        return await self._read_live(name, address)
                    except (PrismError, trio.TooSlowError) as exc:
                        # It died or hangs: its snapshot is the best word on it now.
                        why = exc.message if isinstance(exc, PrismError) else "timed out"
                        log.warning("auth: cannot read roles of branch %s: %s", name, why)
                roles = await trio.to_thread.run_sync(self._read_snapshot, name)
                if roles is not None:
                    return roles
            # A clone that never ran here has its parent's roles; the parent knows them.
            record = self._branches.get(name)
            name = None if record is None else record.parent
        log.warning("auth: no role snapshot for branch %s or its parents: login refused", branch)
        return {}

    async def _read_live(self, branch: str, address: BackendAddress) -> Roles:
        roles = await self._fetch(branch, address)
        # The file only needs a write when the roles changed since it was last written.
        if self._written.get(branch) != roles:
            await trio.to_thread.run_sync(self._write_snapshot, branch, roles)
        return roles

    async def snapshot(self, branch: str, address: BackendAddress) -> None:
        """Save ``branch``'s roles next to its data (called after a start).

        Must not raise: a failure only means the snapshot may be older than the roles.
        """
        async with self._locks[branch]:
            try:
                await self._read_live(branch, address)
            except (PrismError, trio.TooSlowError) as exc:
                why = exc.message if isinstance(exc, PrismError) else "timed out"
                log.warning("auth: could not snapshot roles of branch %s: %s", branch, why)

    async def last_snapshot(self, branch: str, address: BackendAddress) -> None:
        """Save ``branch``'s roles, then close its service connection (called before a stop,
        so the server has no session of Prism's to end and Prism keeps no dead socket)."""
        await self.snapshot(branch, address)
        async with self._locks[branch]:
            held = self._held.pop(branch, None)
            if held is not None:
                await _close(held[1])

    def forget(self, branch: str) -> None:
        """Drop what is known of ``branch``'s snapshot (it was reset, deleted or re-created)."""
        self._written.pop(branch, None)
        held = self._held.pop(branch, None)
        if held is not None:
            self._retired.append(held[1])

    async def _fetch(self, branch: str, address: BackendAddress) -> Roles:
        with trio.fail_after(_SERVICE_TIMEOUT):
            while self._retired:
                await _close(self._retired.pop())
            rows = await self._query_held(branch, address)
        return {
            str(name): RoleSecret(
                password=password,
                can_login=can_login == "true",
                valid_until=None if until in (None, "infinity") else float(until),
            )
            for name, password, can_login, until in rows
        }

    async def _query_held(self, branch: str, address: BackendAddress) -> list[Row]:
        """The roles query over ``branch``'s held connection, opened (again) when needed.

        A held connection may have died since its last query (its server restarted, or an
        ``idle_session_timeout`` ended it): that costs one more try on a new connection.
        """
        held = self._held.pop(branch, None)
        if held is not None:
            held_address, connection = held
            if held_address == address:
                try:
                    rows = await connection.query(_ROLES_SQL)
                except BackendQueryError as exc:
                    log.debug("auth: service connection of branch %s lost: %s", branch, exc)
                except BaseException:
                    await _close(connection)  # cut off mid-query: nobody can read after us
                    raise
                else:
                    self._held[branch] = held
                    return rows
            await _close(connection)
        connection = await connect_branch(address, user=self._superuser, password=self._password)
        try:
            rows = await connection.query(_ROLES_SQL)
        except BaseException:
            await _close(connection)
            raise
        self._held[branch] = (address, connection)
        return rows

    def _snapshot_path(self, branch: str) -> Path:
        return self._data_path(branch) / SNAPSHOT_NAME

    def _read_snapshot(self, branch: str) -> Roles | None:
        try:
            raw = json.loads(self._snapshot_path(branch).read_text())
            return {name: RoleSecret(*fields) for name, fields in raw.items()}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("auth: ignoring unreadable role snapshot of branch %s: %s", branch, exc)
            return None

    def _write_snapshot(self, branch: str, roles: Roles) -> None:
        path = self._snapshot_path(branch)
        data = {
            name: [secret.password, secret.can_login, secret.valid_until]
            for name, secret in roles.items()
        }
        temporary = path.with_name(f".{SNAPSHOT_NAME}.{secrets.token_hex(4)}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            temporary.replace(path)
            self._written[branch] = roles
        except OSError as exc:
            log.warning("auth: could not write role snapshot of branch %s: %s", branch, exc)
            temporary.unlink(missing_ok=True)


async def _close(connection: ServiceConnection) -> None:
    """Close a service connection even in a cancelled scope, within a second."""
    with trio.move_on_after(1), trio.CancelScope(shield=True):
        await connection.aclose()
