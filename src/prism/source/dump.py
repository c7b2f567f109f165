"""Copying a source that forbids replication: its roles, then ``pg_dump | pg_restore``.

Managed databases give no replication connection, so ``--source-mode dump`` copies the data
logically into a fresh cluster (a new *generation* of main, see ``prism.generations``). What
is copied: the roles (``pg_dumpall --roles-only``; with their password verifiers when the
source lets the role read them, else without), then the one database the connection string
names, dumped in the custom format and streamed straight into ``pg_restore`` through Prism, which
counts the bytes for the progress. No file of the whole dump is ever written.

The role script is filtered (sans-IO) so the source cannot change Prism's own superuser; the
coroutines run the real tools of the source's major version.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from prism.pgbin import PgInstall
from prism.source.basebackup import ToolFailed

log = logging.getLogger(__name__)

# How much of a pipe Prism moves at a time from pg_dump to pg_restore.
_CHUNK = 256 * 1024

# pg_dumpall's answer when the role may not read pg_authid (every managed database).
_NO_AUTHID = "permission denied for (table|relation) pg_authid"


@dataclass(frozen=True)
class Target:
    """Where the restore goes: a fresh server of Prism's, reached on its trusted Unix socket."""

    socket_dir: Path
    port: int
    superuser: str

    def args(self, dbname: str) -> list[str]:
        return [
            "-h",
            str(self.socket_dir),
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
    install: PgInstall, argv: list[str], env: dict[str, str], *, stdin: bytes | None = None
) -> str:
    """Run one tool to the end; its stdout, or ``ToolFailed`` with its stderr."""
    result = await trio.run_process(
        argv,
        stdin=stdin if stdin is not None else b"",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
        **install.spawn_options(),
    )
    if result.returncode != 0:
        raise ToolFailed(result.stderr.decode(errors="replace").strip())
    return result.stdout.decode(errors="replace")


async def server_version_num(install: PgInstall, conninfo: str, env: dict[str, str]) -> int:
    """The source's ``server_version_num`` (``170004``), over an ordinary connection."""
    argv = [str(install.bin("psql")), conninfo, "-XAt", "-c", "SHOW server_version_num"]
    return int((await _run(install, argv, env)).strip())


async def copy_roles(
    install: PgInstall, conninfo: str, target: Target, env: dict[str, str]
) -> bool:
    """Create the source's roles in the target; whether their passwords came along.

    Roles that exist in the target already (its superuser, the built-in ``pg_*`` roles) make
    ``CREATE ROLE`` fail, which is expected: the script runs on past errors.
    """
    argv = [str(install.bin("pg_dumpall")), "-d", conninfo, "--roles-only", "--no-password"]
    with_passwords = True
    try:
        sql = await _run(install, argv, env)
    except ToolFailed as exc:
        if not re.search(_NO_AUTHID, exc.stderr):
            raise
        log.warning(
            "dump: the source role may not read password verifiers (pg_authid); roles are "
            "copied without passwords"
        )
        sql = await _run(install, [*argv, "--no-role-passwords"], env)
        with_passwords = False
    script = roles_script(sql, keep_out=target.superuser)
    psql = [str(install.bin("psql")), "-X", "-q", *target.args("postgres")]
    result = await trio.run_process(
        psql,
        stdin=script.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
        **install.spawn_options(),
    )
    log.debug("dump: roles applied: %s", result.stderr.decode(errors="replace").strip())
    return with_passwords


async def copy_database(
    install: PgInstall,
    conninfo: str,
    dbname: str,
    target: Target,
    env: dict[str, str],
    on_progress: Callable[[CopyProgress], None],
) -> None:
    """``pg_dump -Fc`` of ``dbname`` piped into ``pg_restore`` on the target; stops at the
    first error (``ToolFailed`` with both tools' messages), killing both tools on the way out.

    A database other than ``postgres`` is created by the restore (``--create``) with the
    source's encoding, locale and owner.
    """
    dump_argv = [
        str(install.bin("pg_dump")),
        "-d",
        conninfo,
        "-Fc",
        "-Z0",  # the bytes only cross a local pipe: compressing them is wasted CPU
        "--no-password",
    ]
    create = dbname != "postgres"
    restore_argv = [
        str(install.bin("pg_restore")),
        *target.args("postgres" if create else dbname),
        *(["--create"] if create else []),
        "--exit-on-error",
        "--no-password",
    ]
    errors: dict[str, list[str]] = {"pg_dump": [], "pg_restore": []}
    started = trio.current_time()

    async def collect(name: str, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
        errors[name] += [line for line in buffer.decode(errors="replace").splitlines() if line]

    async def pump(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
        done = 0
        try:
            while chunk := await source.receive_some(_CHUNK):
                await sink.send_all(chunk)
                done += len(chunk)
                elapsed = trio.current_time() - started
                on_progress(CopyProgress(dbname, done, done / elapsed if elapsed > 0 else 0.0))
        except trio.BrokenResourceError:
            pass  # pg_restore stopped reading: its exit status and stderr say why
        finally:
            await sink.aclose()

    async def spawn(argv: list[str], *, stdin: int, stdout: int) -> trio.Process:
        process = await trio.lowlevel.open_process(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            **install.spawn_options(),
        )
        processes.append(process)
        return process

    processes: list[trio.Process] = []
    try:
        async with trio.open_nursery() as nursery:
            dump = await spawn(dump_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            restore = await spawn(restore_argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            assert dump.stdout and dump.stderr and restore.stdin and restore.stderr
            nursery.start_soon(collect, "pg_dump", dump.stderr)
            nursery.start_soon(collect, "pg_restore", restore.stderr)
            nursery.start_soon(pump, dump.stdout, restore.stdin)
            await restore.wait()
            if restore.returncode != 0:
                dump.kill()  # nothing reads its output any more
            await dump.wait()
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    # pg_dump killed because pg_restore failed says nothing worth showing.
    failed = [
        f"{name}: {line}"
        for name, process in zip(("pg_dump", "pg_restore"), processes, strict=True)
        if process.returncode != 0 and (errors[name] or name == "pg_restore")
        for line in errors[name][-5:] or [f"exit status {process.returncode}"]
    ]
    if failed or any(process.returncode != 0 for process in processes):
        raise ToolFailed("\n".join(failed) or "pg_dump failed without a message")


__all__ = [
    "CopyProgress",
    "Target",
    "copy_database",
    "copy_roles",
    "roles_script",
    "server_version_num",
]
