"""The ``on_create`` hook: SQL a parent branch runs in every new child before anyone gets in.

This is how a *sanitized* template works: the hook masks names, e-mails and phone numbers in
each fresh clone, and because it runs before the child is marked running, no client ever sees
the unmasked rows. The SQL runs as the superuser in the ``postgres`` database, in one
transaction (statements are wrapped in BEGIN/COMMIT by the simple query protocol's implicit
transaction), so a failing hook changes nothing and its error is the create's error.
"""

from __future__ import annotations

import logging

from prism.address import BackendAddress
from prism.errors import BackendQueryError, HookFailed
from prism.pgclient import connect_branch

log = logging.getLogger(__name__)


async def run_on_create(
    address: BackendAddress, sql: str, *, superuser: str, password: str
) -> None:
    """Run ``sql`` on the new branch at ``address``; ``HookFailed`` with the server's words."""
    try:
        async with await connect_branch(
            address, user=superuser, password=password, application_name="prism on_create"
        ) as service:
            await service.query(sql)
    except BackendQueryError as exc:
        raise HookFailed(
            f"the on_create hook failed: {exc.message}",
            hint=exc.hint or "fix the parent's on_create SQL and create the branch again",
            detail=exc.detail,
            sqlstate=exc.sqlstate,
        ) from exc
    log.info("hook: on_create ran on %s:%d", address.host, address.port)
