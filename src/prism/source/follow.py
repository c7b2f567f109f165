"""A source server: main made from its base backup, then following it as a hot standby.

Making main is long work with an intent recorded first: ``source/basebackup.incomplete`` is
written before the backup starts and removed only once main is a complete, configured standby.
A Prism that finds the marker at start-up (it crashed or was stopped mid-backup) removes the
half-made main and starts over: a half backup is never main.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import trio

from prism.config import Settings
from prism.errors import ConfigError
from prism.events import EventBus
from prism.names import MAIN_BRANCH
from prism.pgbin import PgInstall, PgInstalls, resolve_pg_installs
from prism.runtime._postmaster import processes_under
from prism.source import standby
from prism.source.backoff import Backoff
from prism.source.basebackup import (
    Progress,
    SourceError,
    ToolFailed,
    explain_failure,
    replication_command,
    take_base_backup,
    tool_env,
)
from prism.source.conninfo import ConnInfo, parse_conninfo, pgpass_line
from prism.storage.base import Storage

log = logging.getLogger(__name__)

_LOG_EVERY_S = 5.0
#: How long a killed stray pg_basebackup may take to disappear (it is reaped by init).
_STRAY_GONE_S = 10.0


@dataclass
class Source:
    """The configured source and what Prism does with it."""

    conninfo: ConnInfo
    slot: str | None
    installs: PgInstalls
    directory: Path
    events: EventBus
    max_rate_kb: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    backing_up: bool = False
    progress: Progress | None = None
    _last_logged: float = field(default=-_LOG_EVERY_S)

    @property
    def passfile(self) -> Path:
        return self.directory / "pgpass"

    @property
    def server_log(self) -> Path:
        """Main's server log (the process runtime's ``<data-dir>/logs/main.log``), where its
        walreceiver says why it cannot stream."""
        return self.directory.parent / "logs" / f"{MAIN_BRANCH}.log"

    @property
    def marker(self) -> Path:
        return self.directory / "basebackup.incomplete"

    def primary_conninfo(self) -> str:
        """What main's walreceiver connects with: no password in it, the passfile instead."""
        extra = {"application_name": "prism"}
        if self.conninfo.password is not None:
            extra["passfile"] = str(self.passfile)
        return self.conninfo.render(**extra)

    def describe_progress(self) -> str:
        """What Prism is doing to main, for the clients refused until it is done."""
        if self.progress is None:
            return "Prism is starting a base backup of the source"
        return f"Prism is taking a base backup of the source: {self.progress.summary()}"

    async def reconcile(self, storage: Storage) -> None:
        """Undo a base backup a crash or a stop left half-made, so it is taken again whole.

        A Prism killed mid-backup leaves its ``pg_basebackup`` running (writing into main, and
        holding the slot): it is killed first.
        """
        if not self.marker.exists():
            return
        log.warning("source: removing main left half-made by an interrupted base backup")
        await _kill_strays(storage.path(MAIN_BRANCH))
        if MAIN_BRANCH in storage.list():
            await storage.destroy(MAIN_BRANCH)
        self.marker.unlink()

    async def make_main(self, pgdata: Path) -> None:
        """Fill the empty ``pgdata`` with a base backup of the source and make it a standby."""
        await trio.to_thread.run_sync(self._prepare)
        install = self.installs.default
        env = tool_env(self.passfile if self.conninfo.password is not None else None)
        where, user = self.conninfo.describe(), self.conninfo.get("user") or "?"
        shown = await replication_command(
            install, self.conninfo.render(), "SHOW server_version_num", env
        )
        if shown.returncode != 0:
            raise explain_failure(shown.stderr.decode(errors="replace"), user=user, where=where)
        major = int(shown.stdout.decode().strip()) // 10000
        install = self.installs.for_major(major, what=f"the source at {where}")
        if self.slot:
            await self._create_slot(install, env, user=user, where=where)
        await trio.to_thread.run_sync(self._own, pgdata)
        self.backing_up = True
        self.events.publish("backing_up", MAIN_BRANCH, source=where, major=major)
        log.info("source: base backup of %s (PostgreSQL %d) into %s", where, major, pgdata)
        try:
            await take_base_backup(
                install,
                self.conninfo.render(),
                pgdata,
                env=env,
                slot=self.slot,
                max_rate_kb=self.max_rate_kb,
                on_progress=self._report,
            )
        except ToolFailed as exc:
            raise explain_failure(exc.stderr, user=user, where=where) from None
        finally:
            self.backing_up = False
        await trio.to_thread.run_sync(
            functools.partial(
                standby.make_standby,
                pgdata,
                primary_conninfo=self.primary_conninfo(),
                slot=self.slot,
            )
        )
        # Main is whole: from here a crash leaves a complete main, which start-up registers.
        await trio.to_thread.run_sync(self.marker.unlink)
        self.events.publish("backed_up", MAIN_BRANCH, source=where)

    async def _create_slot(
        self, install: PgInstall, env: dict[str, str], *, user: str, where: str
    ) -> None:
        """Create the replication slot on the source; one that exists already is used as is."""
        result = await replication_command(
            install,
            self.conninfo.render(),
            f"CREATE_REPLICATION_SLOT {self.slot} PHYSICAL RESERVE_WAL",
            env,
        )
        stderr = result.stderr.decode(errors="replace")
        if result.returncode == 0:
            log.info("source: created replication slot %s on %s", self.slot, where)
        elif "already exists" not in stderr:
            raise explain_failure(stderr, user=user, where=where)

    def _report(self, progress: Progress) -> None:
        self.progress = progress
        self.events.publish("backup_progress", MAIN_BRANCH, **progress.fields())
        now = trio.current_time()
        if now - self._last_logged >= _LOG_EVERY_S or progress.percent == 100:
            self._last_logged = now
            log.info("source: base backup %s", progress.summary())

    def _prepare(self) -> None:
        """The private directory with the passfile and the intent marker, the server user's."""
        install = self.installs.default
        self.directory.mkdir(mode=0o700, exist_ok=True)
        install.chown(self.directory)
        self.marker.write_text("a base backup into main is in progress\n")
        if self.conninfo.password is not None:
            self.passfile.write_text(pgpass_line(self.conninfo.password))
            self.passfile.chmod(0o600)
            install.chown(self.passfile)

    def _own(self, pgdata: Path) -> None:
        self.installs.default.chown(pgdata)
        pgdata.chmod(0o700)


async def open_source(settings: Settings, data_dir: Path, events: EventBus) -> Source | None:
    """The configured source, or None when main is Prism's own (no ``--source``)."""
    if not settings.source:
        return None
    if settings.runtime != "process":
        raise ConfigError(
            "--source works with the process runtime only, so far",
            hint="use --runtime process with --source",
        )
    installs = await resolve_pg_installs(data_dir, pg_bins=settings.pg_bin, run_as=settings.run_as)
    conninfo = parse_conninfo(settings.source)
    password = conninfo.password
    if settings.source_password_file is not None:
        try:
            password = settings.source_password_file.read_text().splitlines()[0]
        except (OSError, IndexError) as exc:
            raise ConfigError(
                f"cannot read the source password from {settings.source_password_file}: {exc}"
            ) from None
    elif password is None and os.environ.get("PGPASSFILE"):
        conninfo = ConnInfo((*conninfo.params, ("passfile", os.environ["PGPASSFILE"])), None)
    return Source(
        ConnInfo(conninfo.params, password),
        settings.source_slot or None,
        installs,
        data_dir / "source",
        events,
        max_rate_kb=settings.source_max_rate,
    )


async def _kill_strays(main: Path) -> None:
    """Kill the ``pg_basebackup`` processes (and their WAL streamer) a killed Prism left in
    ``main``, and wait until they are gone: their half-made copy is thrown away."""
    with trio.fail_after(_STRAY_GONE_S):
        while strays := await trio.to_thread.run_sync(processes_under, main, ("pg_basebackup",)):
            for pid in strays:
                log.warning("source: killing pg_basebackup (pid %d) left by an earlier Prism", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await trio.sleep(0.05)


__all__ = ["Source", "SourceError", "open_source"]
