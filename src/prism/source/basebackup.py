"""Taking a base backup of the source with ``pg_basebackup``, and explaining why one failed.

``pg_basebackup -X stream`` copies the data and streams the WAL written meanwhile, so the copy
is consistent on its own; with ``--progress`` it reports bytes done once a second, which
becomes the progress (bytes, %, rate, ETA) in the log and the events. The parsing and the
explanations are sans-IO; the two coroutines at the end run the real tools, on the host or in a
container (:mod:`prism.runtime._host_tools`, :mod:`prism.runtime._docker_tools`).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from prism.core.errors import PrismError
from prism.runtime.base import Tools

log = logging.getLogger(__name__)

_PROGRESS = re.compile(r"(\d+)/(\d+) kB \((\d+)%\)")


class SourceError(PrismError):
    """The source cannot be backed up or followed; the message names the setting to change."""

    sqlstate = "08001"


@dataclass(frozen=True)
class Progress:
    """How far a base backup is: bytes done of the total, the rate so far and what is left."""

    done_bytes: int
    total_bytes: int
    percent: int
    rate_bytes_s: float
    eta_s: float | None

    def fields(self) -> dict[str, object]:
        """The progress as event fields."""
        return {
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
            "percent": self.percent,
            "rate_bytes_s": round(self.rate_bytes_s),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
        }

    def summary(self) -> str:
        """The progress in words, for the log and for clients refused meanwhile."""
        eta = "?" if self.eta_s is None else f"{self.eta_s:.0f}"
        return (
            f"{self.percent}% ({self.done_bytes // 2**20} of {self.total_bytes // 2**20} MB, "
            f"{self.rate_bytes_s / 2**20:.1f} MB/s, eta {eta} s)"
        )


def parse_progress(line: str, *, elapsed_s: float) -> Progress | None:
    """The progress in one line of ``pg_basebackup --progress`` output, None if it has none."""
    match = _PROGRESS.search(line)
    if match is None:
        return None
    done, total, percent = (int(group) for group in match.groups())
    rate = done * 1024 / elapsed_s if elapsed_s > 0 else 0.0
    eta = (total - done) * 1024 / rate if rate > 0 else None
    return Progress(done * 1024, total * 1024, percent, rate, eta)


# (pattern in the tool's stderr, message, hint); the first match explains the failure.
_EXPLANATIONS: tuple[tuple[str, str, str], ...] = (
    (
        "no pg_hba.conf entry for replication connection",
        "the source's pg_hba.conf allows no replication connection for role {user} from "
        "Prism's host",
        "add a line like 'host replication {user} <prism-host>/32 scram-sha-256' to "
        "pg_hba.conf on the source, then SELECT pg_reload_conf() there",
    ),
    (
        "no pg_hba.conf entry for host",
        "the source's pg_hba.conf allows no connection for role {user} from Prism's host",
        "add a line like 'host <database> {user} <prism-host>/32 scram-sha-256' to "
        "pg_hba.conf on the source (a managed service: allow Prism's address), then reload it",
    ),
    (
        "permission denied for (table|sequence|schema|relation|large object|function)",
        "role {user} may not read everything in the source's database",
        "on the source: GRANT pg_read_all_data TO {user} (PostgreSQL 14+), or give the "
        "database owner's role in --source",
    ),
    (
        'database ".*" does not exist',
        "the source at {where} has no database of the name --source gives",
        "check dbname in --source (without one, libpq takes the user's name)",
    ),
    (
        "permission denied to start WAL sender|must be superuser or replication role",
        "the source refuses role {user}: it lacks the REPLICATION attribute",
        "on the source: ALTER ROLE {user} REPLICATION",
    ),
    (
        "exceeds max_wal_senders|wal_level",
        "the source is not configured for replication (wal_level / max_wal_senders)",
        "on the source set wal_level = replica and max_wal_senders >= 2 in postgresql.conf, "
        "then restart it",
    ),
    (
        "database system identifier differs",
        "the source at {where} is no longer the cluster main was backed up from (it was "
        "re-initialised, restored or upgraded to another major version)",
        "main cannot follow it any more: start Prism on a new --data-dir for a fresh base "
        "backup of the source as it is now",
    ),
    (
        "password authentication failed",
        "the source refused the password of role {user}",
        "check the password in --source, --source-password-file or PGPASSFILE",
    ),
    (
        "no password supplied|fe_sendauth",
        "the source asks role {user} for a password and Prism has none",
        "put it in --source (password=...), --source-password-file or PGPASSFILE",
    ),
    (
        "Connection refused|could not connect|could not translate host name|timeout expired",
        "cannot reach the source at {where}",
        "check host and port in --source, and that the source listens there",
    ),
)


def explain_failure(stderr: str, *, user: str, where: str) -> SourceError:
    """One clear error for a failed connection to the source, naming what to change there."""
    tail = "\n".join(line for line in stderr.strip().splitlines()[-5:])
    for pattern, message, hint in _EXPLANATIONS:
        if re.search(pattern, stderr):
            return SourceError(
                message.format(user=user, where=where),
                hint=hint.format(user=user, where=where),
                detail=tail,
            )
    return SourceError(f"the source at {where} failed: {tail}")


class ToolFailed(Exception):
    """A PostgreSQL tool run against the source failed; ``stderr`` says why."""

    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def tool_env(passfile: Path | None) -> dict[str, str]:
    """The environment of the PostgreSQL tools Prism runs against the source."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PGAPPNAME": "prism"}
    if passfile is not None:
        env["PGPASSFILE"] = str(passfile)
    return env


async def replication_command(
    tools: Tools,
    conninfo: str,
    command: str,
    env: dict[str, str],
    shares: Sequence[Path] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run one replication-protocol command (``SHOW``, ``CREATE_REPLICATION_SLOT``) with psql.

    A replication connection needs only the pg_hba line pg_basebackup needs anyway.
    """
    args = [f"{conninfo} replication=true", "-XAt", "-c", command]
    return await tools.run("psql", args, env=env, shares=shares)


async def take_base_backup(
    tools: Tools,
    conninfo: str,
    target: Path,
    *,
    env: dict[str, str],
    slot: str | None,
    max_rate_kb: int = 0,
    on_progress: Callable[[Progress], None],
    shares: Sequence[Path] = (),
) -> None:
    """``pg_basebackup -X stream`` of the source into ``target`` (empty), reporting progress.

    ``shares`` are other directories the tool reads (the passfile's). ``max_rate_kb`` (kB/s,
    0: no limit) spares a production source's disks. The tool runs in ``target``, so a Prism
    killed mid-backup leaves a process that start-up finds by its working directory
    (``SourceTools.stop_leftovers``). Raises ``ToolFailed`` with the tool's messages when it
    fails.
    """
    args = [
        "-d",
        conninfo,
        "-D",
        str(target),
        "-X",
        "stream",
        "--checkpoint=fast",
        "--progress",
        "--no-password",
    ]
    if slot:
        args.append(f"--slot={slot}")
    if max_rate_kb:
        args.append(f"--max-rate={max_rate_kb}k")
    started = trio.current_time()
    errors: list[str] = []

    def read_line(line: str) -> None:
        progress = parse_progress(line, elapsed_s=trio.current_time() - started)
        if progress is not None:
            on_progress(progress)
        elif line.strip():
            errors.append(line)

    result = await tools.run(
        "pg_basebackup",
        args,
        env=env,
        shares=(target, *shares),
        cwd=target,
        on_stderr_line=read_line,
    )
    if result.returncode != 0:
        raise ToolFailed("\n".join(errors) or f"pg_basebackup exit status {result.returncode}")
    log.debug("pg_basebackup finished target=%s", target)
