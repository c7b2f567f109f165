"""Copying a source that forbids replication: its roles, then ``pg_dump | pg_restore``.

Managed databases give no replication connection, so ``--source-mode dump`` copies the data
logically into a fresh cluster (a new *generation* of main, see ``prism.mainsource.generations``).
What is copied: the roles (``pg_dumpall --roles-only``; with their password verifiers when the
source lets the role read them, else without), then the one database the connection string names,
dumped in the custom format and streamed straight into ``pg_restore`` through Prism, which counts
the bytes for the progress. No file of the whole dump is ever written.

The role script is filtered (sans-IO) so the source cannot change Prism's own superuser; the
coroutines run the real tools of the source's major version.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from prism.core import secretfiles
from prism.runtime.base import Tools
from prism.source.basebackup import ToolFailed

log = logging.getLogger(__name__)

# pg_dumpall's answer when the role may not read pg_authid (every managed database).
_NO_AUTHID = "permission denied for (table|relation) pg_authid"


@dataclass(frozen=True)
class Target:
    """Where the restore goes: a fresh server of Prism's, reached on its trusted Unix socket."""

    socket_dir: Path
    port: int
    superuser: str
    # libpq's host for the socket when it is not ``socket_dir`` (``@dir``: abstract namespace).
    host: str | None = None

    def args(self, dbname: str) -> list[str]:
        return [
            "-h",
            self.host or str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            dbname,
        ]


@dataclass(frozen=True)
class CopyProgress:
    """How far a copy is: the bytes of the dump moved so far and the rate."""

    database: str
    done_bytes: int
    rate_bytes_s: float

    def fields(self) -> dict[str, object]:
        return {
            "database": self.database,
            "done_bytes": self.done_bytes,
            "rate_bytes_s": round(self.rate_bytes_s),
        }


def roles_script(sql: str, *, keep_out: str) -> str:
    """The role script without the statements about ``keep_out`` (Prism's superuser).

    The target made that role at initdb with Prism's password; the source's ``ALTER ROLE`` of
    a role of the same name would otherwise replace it, and Prism would lock itself out of main.
    """
    quoted = re.escape(keep_out)
    about = re.compile(rf'^(CREATE|ALTER) ROLE ("{quoted}"|{quoted})( |;)')
    return "".join(line for line in sql.splitlines(keepends=True) if not about.match(line))


async def _run(
    tools: Tools,
    program: str,
    args: list[str],
    env: dict[str, str],
    shares: Sequence[Path],
) -> str:
    """Run one tool to the end; its stdout, or ``ToolFailed`` with its stderr."""
    result = await tools.run(program, args, env=env, shares=shares)
    if result.returncode != 0:
        raise ToolFailed(result.stderr.decode(errors="replace").strip())
    return result.stdout.decode(errors="replace")


async def server_version_num(
    tools: Tools, conninfo: str, env: dict[str, str], shares: Sequence[Path]
) -> int:
    """The source's ``server_version_num`` (``170004``), over an ordinary connection."""
    args = [conninfo, "-XAt", "-c", "SHOW server_version_num"]
    return int((await _run(tools, "psql", args, env, shares)).strip())


async def copy_roles(
    tools: Tools, conninfo: str, target: Target, env: dict[str, str], workdir: Path
) -> bool:
    """Create the source's roles in the target; whether their passwords came along.

    The script goes through a file in ``workdir`` (Prism's private source directory, shared
    with the programs), not a pipe: a program in a container gets no stdin. Roles that exist
    in the target already (its superuser, the built-in ``pg_*`` roles) make ``CREATE ROLE``
    fail, which is expected: the script runs on past errors.
    """
    shares = (workdir, target.socket_dir)
    args = ["-d", conninfo, "--roles-only", "--no-password"]
    with_passwords = True
    try:
        sql = await _run(tools, "pg_dumpall", args, env, shares)
    except ToolFailed as exc:
        if not re.search(_NO_AUTHID, exc.stderr):
            raise
        log.warning(
            "dump: the source role may not read password verifiers (pg_authid); roles are "
            "copied without passwords"
        )
        sql = await _run(tools, "pg_dumpall", [*args, "--no-role-passwords"], env, shares)
        with_passwords = False
    script = workdir / secretfiles.ROLES_SCRIPT  # a kill leaves it: the start-up sweep
    await trio.to_thread.run_sync(
        _write_script, script, roles_script(sql, keep_out=target.superuser)
    )
    try:
        psql = ["-X", "-q", *target.args("postgres"), "-f", str(script)]
        result = await tools.run("psql", psql, env=env, shares=shares)
    finally:
        await trio.to_thread.run_sync(functools.partial(script.unlink, missing_ok=True))
    log.debug("dump: roles applied: %s", result.stderr.decode(errors="replace").strip())
    return with_passwords


def _write_script(path: Path, text: str) -> None:
    """Write the role script (password verifiers maybe) into the private directory: its mode
    0700 keeps others out, while the server user (the programs' user) may read the file."""
    path.write_text(text)


async def copy_database(
    tools: Tools,
    conninfo: str,
    dbname: str,
    target: Target,
    env: dict[str, str],
    on_progress: Callable[[CopyProgress], None],
    shares: Sequence[Path] = (),
) -> None:
    """``pg_dump -Fc`` of ``dbname`` piped into ``pg_restore`` on the target; stops at the
    first error (``ToolFailed`` with both tools' messages), killing both tools on the way out.

    A database other than ``postgres`` is created by the restore (``--create``) with the
    source's encoding, locale and owner.
    """
    dump_argv = [
        "pg_dump",
        "-d",
        conninfo,
        "-Fc",
        "-Z0",  # the bytes only cross a local pipe: compressing them is wasted CPU
        "--no-password",
    ]
    create = dbname != "postgres"
    restore_argv = [
        "pg_restore",
        *target.args("postgres" if create else dbname),
        *(["--create"] if create else []),
        "--exit-on-error",
        "--no-password",
    ]
    started = trio.current_time()
    done = 0

    def count(size: int) -> None:
        nonlocal done
        done += size
        elapsed = trio.current_time() - started
        on_progress(CopyProgress(dbname, done, done / elapsed if elapsed > 0 else 0.0))

    result = await tools.pipe(
        dump_argv, restore_argv, env=env, shares=(*shares, target.socket_dir), on_chunk=count
    )
    if result.returncode != 0:
        raise ToolFailed(result.stderr.decode(errors="replace"))


__all__ = [
    "CopyProgress",
    "Target",
    "copy_database",
    "copy_roles",
    "roles_script",
    "server_version_num",
]
