"""A source server: main made from its base backup, then following it as a hot standby.

Making main is long work with an intent recorded first: a ``BaseBackupIntent`` is written to
the journal before the backup starts and dropped only once main is a complete, configured
standby. A Prism that finds it at start-up (it crashed or was stopped mid-backup) kills the
``pg_basebackup`` the dead Prism left, removes the half-made main and starts over: a half
backup is never main.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import trio

from prism.core.crashpoints import crash_point
from prism.core.errors import ConfigError
from prism.core.events import EventBus
from prism.core.names import MAIN_BRANCH
from prism.core.settings import Settings
from prism.core.values import RuntimeKind
from prism.durable.intents import BaseBackupIntent
from prism.durable.journal import Journal
from prism.durable.recovery import Owner
from prism.postgres.conninfo import ConnInfo, parse_conninfo, pgpass_line
from prism.postgres.serverconf import make_standby
from prism.runtime.base import Runtime, SourceTools, Tools
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
from prism.storage.base import Storage

log = logging.getLogger(__name__)

_LOG_EVERY_S = 5.0
#: How long a killed stray pg_basebackup may take to disappear (it is reaped by init).


@dataclass
class Source:
    """The configured source and what Prism does with it."""

    conninfo: ConnInfo
    slot: str | None
    tools: SourceTools
    directory: Path
    events: EventBus
    journal: Journal
    max_rate_kb: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    backing_up: bool = False
    progress: Progress | None = None
    _last_logged: float = field(default=-_LOG_EVERY_S)

    @property
    def passfile(self) -> Path:
        return self.directory / "pgpass"

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

    def recovery_owner(self, storage: Storage) -> Owner:
        """Its part of start-up recovery: undo a base backup a crash or a stop left half-made,
        so that it is taken again whole."""

        async def recover(intent: BaseBackupIntent) -> None:
            # A Prism killed mid-backup leaves its pg_basebackup running (writing into main,
            # and holding the slot): it is killed first.
            log.warning("source: removing main left half-made by an interrupted base backup")
            await self.tools.stop_leftovers(storage.path(intent.name))
            if intent.name in storage.list():
                await storage.destroy(intent.name)

        return Owner("source", {BaseBackupIntent: recover})

    async def make_main(self, pgdata: Path) -> None:
        """Fill the empty ``pgdata`` with a base backup of the source and make it a standby."""
        intent = BaseBackupIntent(MAIN_BRANCH)
        await self.journal.record(intent)
        crash_point("basebackup:recorded")
        await trio.to_thread.run_sync(self.write_passfile)
        env = self.tool_env()
        where, user = self.conninfo.describe(), self.conninfo.get("user") or "?"
        tools = await self.tools.for_major(None, what=f"the source at {where}")
        shown = await replication_command(
            tools, self.conninfo.render(), "SHOW server_version_num", env, (self.directory,)
        )
        if shown.returncode != 0:
            raise explain_failure(shown.stderr.decode(errors="replace"), user=user, where=where)
        major = int(shown.stdout.decode().strip()) // 10000
        tools = await self.tools.for_major(major, what=f"the source at {where}")
        if self.slot:
            await self._create_slot(tools, env, user=user, where=where)
        await trio.to_thread.run_sync(self._own, pgdata)
        self.backing_up = True
        self.events.publish("backing_up", MAIN_BRANCH, source=where, major=major)
        log.info("source: base backup of %s (PostgreSQL %d) into %s", where, major, pgdata)
        try:
            await take_base_backup(
                tools,
                self.conninfo.render(),
                pgdata,
                env=env,
                slot=self.slot,
                max_rate_kb=self.max_rate_kb,
                on_progress=self._report,
                shares=(self.directory,),
            )
        except ToolFailed as exc:
            raise explain_failure(exc.stderr, user=user, where=where) from None
        finally:
            self.backing_up = False
        crash_point("basebackup:copied")
        await trio.to_thread.run_sync(
            functools.partial(
                make_standby,
                pgdata,
                primary_conninfo=self.primary_conninfo(),
                slot=self.slot,
            )
        )
        crash_point("basebackup:configured")
        # Main is whole: from here a crash leaves a complete main, which start-up registers.
        await self.journal.done(intent)
        self.events.publish("backed_up", MAIN_BRANCH, source=where)

    async def _create_slot(
        self, tools: Tools, env: dict[str, str], *, user: str, where: str
    ) -> None:
        """Create the replication slot on the source; one that exists already is used as is."""
        result = await replication_command(
            tools,
            self.conninfo.render(),
            f"CREATE_REPLICATION_SLOT {self.slot} PHYSICAL RESERVE_WAL",
            env,
            (self.directory,),
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

    def write_passfile(self) -> None:
        """The source's password in the private passfile the tools read (blocking)."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self.tools.chown(self.directory)
        if self.conninfo.password is not None:
            self.passfile.write_text(pgpass_line(self.conninfo.password))
            self.passfile.chmod(0o600)
            self.tools.chown(self.passfile)

    def tool_env(self) -> dict[str, str]:
        """The environment of the PostgreSQL tools Prism runs against the source."""
        return tool_env(self.passfile if self.conninfo.password is not None else None)

    def _own(self, pgdata: Path) -> None:
        self.tools.chown(pgdata)
        pgdata.chmod(0o700)


async def open_source(
    settings: Settings,
    data_dir: Path,
    events: EventBus,
    runtime: Runtime,
    *,
    journal: Journal,
) -> Source:
    """The source ``--source`` names (``prism.mainsource`` asks only when there is one).

    Its programs run where ``runtime`` runs servers (``Runtime.source_tools``).
    """
    conninfo = parse_conninfo(settings.source)
    directory = data_dir / "source"
    if (
        settings.runtime is RuntimeKind.DOCKER
        and conninfo.password is None
        and settings.source_password_file is None
    ):
        # A passfile of the host's is not in the containers; Prism's own passfile is.
        raise ConfigError(
            "with --runtime docker the source's password must come from --source or "
            "--source-password-file",
            hint="PGPASSFILE is not read with the docker runtime",
        )
    host = conninfo.get("host") or conninfo.get("hostaddr")
    tools = await runtime.source_tools(directory, source_host=host)
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
        tools,
        directory,
        events,
        journal,
        max_rate_kb=settings.source_max_rate,
    )


__all__ = ["Source", "SourceError", "open_source"]
