"""The ``on_create`` hook: SQL, or a command, a parent branch runs in every new child before
anyone gets in.

This is how a *sanitized* template works: the hook masks names, e-mails and phone numbers in
each fresh clone, and because it runs before the child is marked running, no client ever sees
the unmasked rows. The SQL runs as the superuser in the ``postgres`` database, in one
transaction (statements are wrapped in BEGIN/COMMIT by the simple query protocol's implicit
transaction), so a failing hook changes nothing and its error is the create's error.

A command (a program and its arguments, no shell) runs on Prism's host with the child's server
in its environment (``PGHOST`` … ``PGPASSWORD``, ``DATABASE_URL``): for masking tools, seed
scripts, anything SQL alone cannot do. Running programs is a power the API must not hand to
whoever holds a token, so commands run only in a Prism whose operator started it with
``--allow-hook-commands`` (docs/security.md). A command gets ``--hook-command-timeout``; its
whole process group is killed when that runs out, so a shell's children do not linger.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from prism.core.address import BackendAddress
from prism.core.config import format_duration
from prism.core.errors import BackendQueryError, HookCommandsNotAllowed, HookFailed
from prism.postgres.client import connect_branch
from prism.postgres.dsn import ConnectionParams, environment, render

log = logging.getLogger(__name__)

# How much of a failed command's stderr its error carries: enough for the last error message
# and a little context, short enough for a one-line API error and a client's ErrorResponse.
_TAIL_LINES = 10
_TAIL_CHARS = 2000


@dataclass(frozen=True)
class HookCommands:
    """Whether this Prism may run ``on_create`` commands, and how long each may take."""

    allowed: bool = False
    timeout: float = 300.0

    def refuse_unless_allowed(self, what: str) -> None:
        """Raise ``HookCommandsNotAllowed`` (saying ``what`` was refused) unless the operator
        allowed commands when starting Prism."""
        if not self.allowed:
            raise HookCommandsNotAllowed(
                f"{what}: on_create commands are off (Prism was not started with "
                "--allow-hook-commands)",
                hint="use an SQL hook (prism branch hook NAME --on-create FILE), or have the "
                "operator restart Prism with --allow-hook-commands true",
            )


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


def command_environment(
    params: ConnectionParams, *, branch: str, parent: str, inherited: Mapping[str, str]
) -> dict[str, str]:
    """The environment of an ``on_create`` command: Prism's own, less its ``PRISM_*`` settings
    (the API token among them) and any ``PG*`` variables that would point libpq elsewhere, plus
    the new child's server as libpq variables and a ``DATABASE_URL``."""
    kept = {
        key: value
        for key, value in inherited.items()
        if not key.startswith(("PRISM_", "PG")) and key != "DATABASE_URL"
    }
    return {
        **kept,
        **environment(params),
        "DATABASE_URL": render(params, "uri"),
        "PRISM_BRANCH": branch,
        "PRISM_PARENT": parent,
    }


def stderr_tail(stderr: bytes) -> str:
    """The last lines a failed command wrote to stderr, for its error message."""
    lines = stderr.decode(errors="replace").strip().splitlines()[-_TAIL_LINES:]
    return "\n".join(lines)[-_TAIL_CHARS:] or "(nothing on stderr)"


async def _kill_group(process: trio.Process) -> None:
    """Kill the command and everything it started (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError):  # it ended on its own in the meantime
        os.killpg(process.pid, signal.SIGKILL)


async def run_on_create_command(
    argv: Sequence[str], *, env: Mapping[str, str], time_limit: float
) -> None:
    """Run ``argv`` to completion within ``time_limit`` seconds (0: no limit); ``HookFailed``
    with its stderr's tail if it fails."""
    try:
        with trio.fail_after(time_limit or math.inf):
            result = await trio.run_process(
                list(argv),
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=dict(env),
                start_new_session=True,
                deliver_cancel=_kill_group,
            )
    except trio.TooSlowError:
        raise HookFailed(
            f"the on_create command did not finish within {format_duration(time_limit)} "
            "and was killed",
            hint="make it faster, or start Prism with a longer --hook-command-timeout",
        ) from None
    except OSError as exc:
        raise HookFailed(
            f"the on_create command {argv[0]!r} could not be started: {exc.strerror or exc}",
            hint="give the program's absolute path, as Prism's user can run it",
        ) from None
    if result.returncode != 0:
        how = (
            f"was killed by signal {-result.returncode}"
            if result.returncode < 0
            else f"exited with status {result.returncode}"
        )
        raise HookFailed(
            f"the on_create command {how}: {stderr_tail(result.stderr)}",
            hint="fix the parent's on_create command and create the branch again",
        )
    log.info("hook: on_create command %s ran", argv[0])
    log.debug("hook: on_create command output: %s", result.stdout.decode(errors="replace"))


async def run_parent_hook(
    address: BackendAddress,
    *,
    sql: str | None,
    command: Sequence[str] | None,
    child: str,
    parent: str,
    superuser: str,
    password: str,
    commands: HookCommands,
) -> None:
    """Run a parent's ``on_create`` ``sql``, then its ``command``, in the new ``child``."""
    if sql is not None:
        await run_on_create(address, sql, superuser=superuser, password=password)
    if command is None:
        return
    # Create, connect and reset refuse earlier, before anything is made; this keeps a
    # command from running on any other path to a new child.
    commands.refuse_unless_allowed(f'cannot run the on_create command of branch "{parent}"')
    params = ConnectionParams(
        host=address.host,
        port=address.port,
        user=superuser,
        dbname="postgres",
        sslmode="disable",  # branch servers speak plaintext, on Prism's host only
        password=password,
    )
    env = command_environment(params, branch=child, parent=parent, inherited=os.environ)
    await run_on_create_command(command, env=env, time_limit=commands.timeout)
