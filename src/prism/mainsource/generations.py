"""Main as generations of a dump of the source (``--source-mode dump``).

A source that forbids replication (a managed database) is copied logically: a fresh cluster
is initialised, started, and filled with the source's roles and ``pg_dump | pg_restore`` of its
database (``prism.source.dump``). The first copy is main's generation 1. ``prism main refresh``,
the API and the ``--refresh-every`` timer make the next one in a staging directory
(``gen:<n>`` in the storage) while the old main keeps serving, then swap main to it:

1. main is stopped under its lock (``MainHost.replace_main``), and a ``RefreshIntent``
   (the staging name, the trash token and the generation) is recorded in the journal;
2. main's directory goes to the trash (one rename), the staging directory takes its place
   (another rename), main's generation is recorded, the intent is dropped.

Start-up recovery (``recovery_owner``) finishes a swap whose main is gone but whose staging
directory stands, and removes every other staging directory: a refresh cut short anywhere
leaves the old generation serving and nothing half-made. Branches keep the generation they were
cloned from: on btrfs, reflink and copy a clone shares nothing with main's directory that a
rename could take away; on ZFS a clone hangs on a snapshot of main's dataset, so the driver sets
the old dataset aside (unmounted) instead of destroying it, until no branch needs it
(``prism.storage.zfs``).
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trio

from prism.core.crashpoints import crash_point
from prism.core.errors import BranchConflict, PrismError, describe
from prism.core.events import EventBus
from prism.core.followers import Followers
from prism.core.names import GENERATION_PREFIX, MAIN_BRANCH, is_generation_name
from prism.durable.intents import RefreshIntent
from prism.durable.journal import Journal
from prism.durable.recovery import Owner
from prism.durable.state import Generation, StateStore, utcnow
from prism.mainsource.base import HealthReader, MainHost, MainOrigin
from prism.runtime.base import Runtime
from prism.source.basebackup import SourceError, ToolFailed, explain_failure
from prism.source.dump import CopyProgress, Target, copy_database, copy_roles, server_version_num
from prism.source.follow import Source
from prism.storage.base import Storage

log = logging.getLogger(__name__)

_LOG_EVERY_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    name      TEXT PRIMARY KEY,
    number    INTEGER NOT NULL,
    taken_at  TEXT NOT NULL
)
"""


class GenerationStore:
    """Which generation of main each branch holds (main: the one it serves), kept in the state
    file through ``StateStore`` (one connection, one set of journal settings and errors)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        state.open_table("generations", _SCHEMA)
        self.known = {
            str(name): Generation(int(str(number)), datetime.fromisoformat(str(taken)))
            for name, number, taken in state.load("SELECT name, number, taken_at FROM generations")
        }

    async def put(self, name: str, generation: Generation) -> None:
        await self._state.execute(
            "INSERT OR REPLACE INTO generations VALUES (?, ?, ?)",
            (name, generation.number, generation.taken_at.isoformat()),
            what="main's generations in",
        )
        self.known[name] = generation


@dataclass
class Every:
    """Says yes at most once every ``seconds`` (sans-IO: the caller gives the time)."""

    seconds: float
    last: float = -math.inf

    def due(self, now: float) -> bool:
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


@dataclass
class _Outcome:
    done: trio.Event
    generation: Generation | None = None
    error: BaseException | None = None


class Generations:
    """``--source-mode dump``: makes main's generations from the source and swaps main to a
    new one crash-safely (``MainStrategy``)."""

    # The first dump is made before serving (its progress is in the log): clients wait.
    serve_early = False
    # Each generation is a new cluster: its WAL starts over.
    keeps_history = False

    def __init__(
        self,
        source: Source,
        storage: Storage,
        runtime: Runtime,
        journal: Journal,
        events: EventBus,
        *,
        superuser: str,
        password: str,
        refresh_every: float = 0.0,
    ) -> None:
        self.source = source
        self.storage = storage
        self.runtime = runtime
        self.journal = journal
        self.events = events
        self.superuser = superuser
        self.password = password
        self.refresh_every = refresh_every
        self.store = GenerationStore(journal.state)
        self._host: MainHost | None = None
        self._nursery: trio.Nursery | None = None
        self._running: _Outcome | None = None
        # pg_dump writes in small pieces: an event a second and a log line every 5 s.
        self._events_due, self._log_due = Every(1.0), Every(_LOG_EVERY_S)
        self.origin = MainOrigin(
            make=self.make_first,
            how="dump",
            progress=lambda: "Prism is copying the source (generation 1)",
            long=True,
            refresh=self.refresh,
        )

    # ---- the strategy's answers --------------------------------------------------------------

    @property
    def superuser_password(self) -> str | None:
        """Each generation is initialised by Prism, with the password it was given."""
        return self.password

    def followers(self) -> Followers:
        return Followers(after_clone=(self.inherit,))

    def health(self, host: MainHost) -> HealthReader | None:
        return None  # a dump is a copy, not a follower: nothing keeps up with the source

    async def inherit(self, parent: str, child: str) -> None:
        """A clone holds its parent's generation (main's current one, or a branch's); the
        manager's ``after_clone`` follower."""
        generation = self.store.known.get(parent)
        if generation is None or self._host is None:  # no clone is made before ``keep``
            return
        await self.store.put(child, generation)
        branch = self._host.get(child)
        if branch is not None:
            branch.generation = generation

    # ---- generation 1 ------------------------------------------------------------------------

    async def make_first(self, pgdata: Path) -> None:
        """Fill main's empty ``pgdata`` with generation 1 (its ``MainOrigin.make``)."""
        generation = Generation(1, utcnow())
        self.events.publish("refresh_started", MAIN_BRANCH, generation=1)
        started = trio.current_time()
        try:
            await self._fill(MAIN_BRANCH, pgdata)
        except BaseException as exc:
            self._publish_failure(1, exc)
            raise
        await self.store.put(MAIN_BRANCH, generation)
        self._publish_done(generation, started)

    # ---- later generations -----------------------------------------------------------------

    async def keep(
        self, host: MainHost, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Show every branch's generation, own the refreshes (a caller that goes away does not
        cut one short; main is swapped through ``host``) and, with ``refresh_every`` > 0, make
        a new generation that long after the last one was taken."""
        self._host = host
        for branch in host.list():
            branch.generation = self.store.known.get(branch.name)
        every = self.refresh_every
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while every > 0:
                current = self.store.known.get(MAIN_BRANCH)
                due = every if current is None else every - _age_s(current)
                await trio.sleep(max(due, 0.0))
                try:
                    await self.refresh()
                except PrismError as exc:
                    # Said already in the log and a refresh_failed event; try again next time.
                    log.debug("refresh: timer's refresh failed: %s", exc.message)
                    await trio.sleep(every)
            await trio.sleep_forever()

    async def refresh(self) -> Generation:
        """Make a new generation of main and swap main to it; returns the new generation.

        One at a time: a second request while one runs gets a conflict. The work runs in
        ``run``'s nursery, so a caller that hangs up leaves it running to its end.
        """
        if self._running is not None:
            raise BranchConflict(
                "a refresh of main is already running",
                hint="wait for its refresh_done or refresh_failed event",
            )
        if self._nursery is None:
            raise BranchConflict("Prism is not ready to refresh main yet", hint="try again")
        outcome = _Outcome(trio.Event())
        self._running = outcome
        self._nursery.start_soon(self._refresh, outcome)
        await outcome.done.wait()
        if outcome.error is not None:
            raise outcome.error
        assert outcome.generation is not None
        return outcome.generation

    async def _refresh(self, outcome: _Outcome) -> None:
        try:
            outcome.generation = await self._make_next()
        except Exception as exc:
            outcome.error = exc
        finally:
            self._running = None
            outcome.done.set()

    async def _make_next(self) -> Generation:
        current = self.store.known.get(MAIN_BRANCH)
        number = 1 if current is None else current.number + 1
        staged = f"{GENERATION_PREFIX}{number}"
        started = trio.current_time()
        self.events.publish("refresh_started", MAIN_BRANCH, generation=number)
        log.info("refresh: making generation %d of main from the source", number)
        try:
            path = await self.storage.create(staged)
            crash_point("refresh:created")
            generation = Generation(number, utcnow())
            await self._fill(staged, path)
            crash_point("refresh:restored")
            assert self._host is not None
            await self._host.replace_main(
                lambda: self._swap(staged, generation),
                why=f"main is being replaced by generation {number} of the source",
            )
        except BaseException as exc:
            swapped = self.store.known.get(MAIN_BRANCH) == generation
            if not swapped:
                with trio.CancelScope(shield=True):
                    await self._discard(staged)
            self._publish_failure(number, exc, swapped=swapped)
            raise
        self._publish_done(generation, started)
        return generation

    async def _swap(self, staged: str, generation: Generation) -> None:
        """Put the staged generation where main is; called with main stopped and locked."""
        intent = RefreshIntent(staged, secrets.token_hex(4), generation.number, generation.taken_at)
        token = intent.token
        await self.journal.record(intent)
        crash_point("refresh:recorded")
        try:
            retired = await self.storage.retire(MAIN_BRANCH, token)
            crash_point("refresh:retired")
            await self._rename(staged, MAIN_BRANCH)
        except BaseException:
            with trio.CancelScope(shield=True):
                if not self._whole(MAIN_BRANCH):
                    await self.storage.restore(MAIN_BRANCH, token)
                await self.journal.done(intent)
            raise
        crash_point("refresh:swapped")
        await self.store.put(MAIN_BRANCH, generation)
        assert self._host is not None
        main = self._host.get(MAIN_BRANCH)
        assert main is not None  # main is locked, stopped and swapped, never removed
        main.generation = generation
        await self.journal.done(intent)
        if retired is not None:
            try:
                await self.storage.remove_path(retired)
            except PrismError as exc:
                log.warning("refresh: old main stays in the trash until restart: %s", exc.message)

    async def _rename(self, name: str, new_name: str) -> None:
        if not await self.storage.rename(name, new_name):
            raise SourceError(f"cannot move {name} into main's place: it is gone or main is back")

    async def _discard(self, staged: str) -> None:
        """Stop and remove a staging generation (best effort: reconcile finishes the job)."""
        try:
            await self.runtime.stop(staged)
            await self.storage.destroy(staged)
        except PrismError as exc:
            log.error("refresh: could not remove %s (removed at next start): %s", staged, exc)

    # ---- start-up ----------------------------------------------------------------------------

    def recovery_owners(self) -> list[Owner]:
        """Its parts of start-up recovery: finish or undo a swap a crash interrupted, then
        remove every staged generation left (before the manager's part, which expects main in
        its place); and the source's, for a base backup an earlier Prism in stream mode left."""
        return [
            self.source.recovery_owner(self.storage),
            Owner("generations", {RefreshIntent: self._recover_refresh}, sweep=self._sweep),
        ]

    async def _recover_refresh(self, intent: RefreshIntent) -> None:
        """Finish a swap cut short after main left; otherwise put main's own data back."""
        staged, number = intent.staged, intent.generation
        if self._whole(staged) and not self._whole(MAIN_BRANCH):
            await self._rename(staged, MAIN_BRANCH)
            log.warning("reconcile: finished the swap of main to generation %s", number)
        if self._whole(MAIN_BRANCH) and not self._whole(staged):
            await self.store.put(MAIN_BRANCH, Generation(number, intent.taken_at))
        else:
            # Cut short before main left, or (zfs) while it was being set aside: main's
            # own data back in place (a no-op where it never moved); staged goes below.
            await self.storage.restore(MAIN_BRANCH, intent.token)

    async def _sweep(self) -> None:
        """Remove every staged generation: none is in use once recovery runs."""
        for name in self.storage.list():
            if is_generation_name(name):
                log.warning("reconcile: removing %s, left by an interrupted refresh", name)
                adopted = await self.runtime.adopt(name, self.storage.path(name))
                if adopted is not None:
                    await self.runtime.stop(name)
                await self.storage.destroy(name)

    def _whole(self, name: str) -> bool:
        """Whether ``name`` holds a data directory (a crash may leave an empty mountpoint)."""
        return (self.storage.path(name) / "PG_VERSION").is_file()

    # ---- one copy of the source --------------------------------------------------------------

    async def _fill(self, server: str, pgdata: Path) -> None:
        """initdb ``pgdata``, start it as ``server``, copy the source in, stop it."""
        source = self.source
        await trio.to_thread.run_sync(source.write_passfile)
        env = source.tool_env()
        where, user = source.conninfo.describe(), source.conninfo.get("user") or "?"
        conninfo = source.conninfo.render()
        shares = (source.directory,)
        try:
            asker = await source.tools.for_major(None, what=f"the source at {where}")
            major = await server_version_num(asker, conninfo, env, shares) // 10000
        except ToolFailed as exc:
            raise explain_failure(exc.stderr, user=user, where=where) from None
        tools = await source.tools.for_major(major, what=f"the source at {where}")
        await self.runtime.initdb(pgdata, superuser=self.superuser, password=self.password)
        initialised = await trio.to_thread.run_sync(_major_of, pgdata)
        if initialised != major:
            raise SourceError(
                f"the source at {where} is PostgreSQL {major}; main is initialised with "
                f"PostgreSQL {initialised} binaries",
                hint=f"make PostgreSQL {major} the default: first in --pg-bin (process runtime) "
                "or --image (docker runtime)",
            )
        address = await self.runtime.start(server, pgdata)
        try:
            # Both runtimes offer the new server's private socket here (the docker one mounts
            # it from the host, so a program's container mounts it in turn): no password.
            assert address.service_socket_dir is not None
            target = Target(
                address.service_socket_dir,
                address.port,
                self.superuser,
                host=address.service_host(),
            )
            dbname = source.conninfo.get("dbname") or user
            log.info(
                "dump: copying roles and database %s of %s (PostgreSQL %d)", dbname, where, major
            )
            with_passwords = await copy_roles(tools, conninfo, target, env, source.directory)
            self.events.publish(
                "refresh_progress", MAIN_BRANCH, phase="roles", passwords=with_passwords
            )
            await copy_database(tools, conninfo, dbname, target, env, self._report, shares)
        except ToolFailed as exc:
            raise explain_failure(exc.stderr, user=user, where=where) from None
        finally:
            with trio.CancelScope(shield=True):
                await self.runtime.stop(server)

    def _report(self, progress: CopyProgress) -> None:
        now = trio.current_time()
        if not self._events_due.due(now):
            return
        self.events.publish("refresh_progress", MAIN_BRANCH, phase="data", **progress.fields())
        if self._log_due.due(now):
            log.info(
                "dump: %s: %d MB copied (%.1f MB/s)",
                progress.database,
                progress.done_bytes // 2**20,
                progress.rate_bytes_s / 2**20,
            )

    def _publish_done(self, generation: Generation, started: float) -> None:
        duration_ms = round((trio.current_time() - started) * 1000, 1)
        log.info("refresh: main is generation %d (%.0f ms)", generation.number, duration_ms)
        self.events.publish(
            "refresh_done", MAIN_BRANCH, generation=generation.number, duration_ms=duration_ms
        )

    def _publish_failure(self, number: int, exc: BaseException, *, swapped: bool = False) -> None:
        error = describe(exc)
        if swapped:  # only main's start after the swap failed: the next client starts it
            log.error("refresh: main is generation %d but did not start: %s", number, error)
        else:
            log.error("refresh: generation %d of main failed; nothing changed: %s", number, error)
        self.events.publish("refresh_failed", MAIN_BRANCH, generation=number, error=error)


def _major_of(pgdata: Path) -> int:
    """The major version a data directory was initialised with (its ``PG_VERSION``)."""
    return int((pgdata / "PG_VERSION").read_text().strip())


def _age_s(generation: Generation) -> float:
    return (utcnow() - generation.taken_at).total_seconds()


__all__ = ["Every", "GenerationStore", "Generations"]
