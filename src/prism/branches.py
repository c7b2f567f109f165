"""The branch manager: one place that creates, starts, stops and removes branches.

Every operation on a branch holds that branch's ``trio.Lock``, so twenty clients racing to a
new branch cause exactly one provision and the rest simply wait for it; an API call and a
connecting client never step on each other. The proxy, the API, the CLI and the reaper all go
through ``BranchManager``; nothing else calls the storage or runtime drivers.

States (each transition publishes one event, ``BranchRegistry.transition``)::

    absent ─create─▶ provisioning ─▶ starting ─▶ running ─idle/stop─▶ stopping ─▶ stopped
                         └─fail─▶ (rolled back: absent)      ▲──────── connect/start ─┘
    running/stopped ─reset─▶ resetting ─▶ (re-cloned) ─▶ running/stopped as before
    running/stopped ─delete─▶ deleting ─▶ absent

Crash safety: every multi-step change to the disk has a commit point and a durable intent.
A create, a reset and the initdb of main record a typed intent in the journal
(``prism.journal``) first; delete and reset take a directory away by renaming it into the
storage's trash (one atomic step that needs no free space). At start-up the manager's part of
recovery (``prism.branchrecovery``: a recoverer per intent kind, then the sweep) finishes or
undoes whatever a crash interrupted, stops servers that belong to no branch and empties the
trash and staging areas.

The manager also knows every proxied client session (``prism.sessions``), so an operation that
takes a branch away from its clients (reset, stop, delete) can end their sessions with a clear
message instead of letting the server's shutdown cut them off mid-sentence.

Admission: the caps (``prism.capacity`` decides, ``prism.branchservers`` makes room) are
checked on every path that creates or starts a server (proxy, API, CLI, role lookup), and
each check is followed by its reservation with no ``await`` in between: a provisioning branch
is in the registry and a starting one is ``starting`` before anyone else can look. A session
is counted on the branch *instance* it was admitted to (``admit``), from before its server is
reached, so the reaper and ``--max-running`` eviction never take a branch with a session being
set up, and a session of a deleted branch never touches the counts of a new branch of the
same name.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trio

from prism.address import BackendAddress
from prism.branchdata import BranchData
from prism.branchpolicy import CreationPolicy
from prism.branchrecovery import BranchRecovery
from prism.branchservers import WATCH_INTERVAL, Servers
from prism.branchstate import (
    MAKING,
    Branch,
    BranchLocks,
    BranchRegistry,
    BranchStatus,
    describe,
    elapsed_ms,
    is_idle,
)
from prism.capacity import Caps, check_branch_cap
from prism.crashpoints import crash_point
from prism.diskbudget import DiskBudget
from prism.diskuse import DiskUse, DiskUseCache
from prism.dsn import ConnectionParams, Endpoint, params_for
from prism.errors import (
    BranchExists,
    BranchHasChildren,
    BranchNotFound,
    BranchProtected,
    HookFailed,
    OutsideWindow,
    PrismError,
    ProvisionFailed,
    StartingUp,
)
from prism.events import EventBus
from prism.followers import Followers
from prism.hooks import HookCommands
from prism.intents import CreateIntent, InitdbIntent, ResetIntent, ResetPhase
from prism.journal import Journal
from prism.names import MAIN_BRANCH, validate_branch_name
from prism.pgclient import connect_branch
from prism.pitr import PointInTime
from prism.policy import (
    BranchPolicy,
    CreateDefaults,
    PolicyStore,
    grace_over,
    is_expired,
    refuse_if_protected,
)
from prism.recovery import Owner
from prism.recovery import recover as run_recovery
from prism.runtime.base import Runtime, ServerExtrasSource
from prism.schemadiff import SchemaDiff, diff_schemas, read_schema
from prism.sessions import ClientSession, SessionRegistry
from prism.state import Generation, StateStore, rfc3339, utcnow
from prism.storage.base import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MainOrigin:
    """How main is made and kept when it is not by initdb alone."""

    make: Callable[[Path], Awaitable[None]] | None = None
    """Fills main's empty data directory instead of initdb (a base backup, a first dump)."""
    progress: Callable[[], str] | None = None
    """How far the making of main is, for the clients refused meanwhile (a base backup's
    percent and time left); None: nothing to tell."""
    refresh: Callable[[], Awaitable[Generation]] | None = None
    """Makes a new generation of main (``--source-mode dump``); None in other modes."""


class BranchManager:
    """Owns the branches: their records, locks, storage and servers."""

    def __init__(
        self,
        *,
        storage: Storage,
        runtime: Runtime,
        state: StateStore,
        events: EventBus,
        superuser: str,
        password: str,
        caps: Caps | None = None,
        defaults: CreateDefaults | None = None,
        endpoint: Endpoint | None = None,
        main: MainOrigin | None = None,
        hook_commands: HookCommands | None = None,
        journal: Journal | None = None,
        followers: Followers | None = None,
        point_in_time: PointInTime | None = None,
        registry: BranchRegistry | None = None,
        server_extras: ServerExtrasSource | None = None,
        budget: DiskBudget | None = None,
    ) -> None:
        self.storage = storage
        self.journal = journal or Journal(state)
        self.runtime = runtime
        self.state = state
        self.events = events
        self._superuser = superuser
        self._password = password
        self._caps = caps or Caps()
        self.defaults = defaults or CreateDefaults()
        self.endpoint = endpoint
        self.hook_commands = hook_commands or HookCommands()
        self.policies = PolicyStore(state)
        self.disk = DiskUseCache(storage)
        events.add_listener(self.disk.observe)
        self._main = main or MainOrigin()
        self._followers = followers or Followers()
        # Not `or`: an empty registry is falsy, and the one given is shared with the role store.
        self._registry = registry if registry is not None else BranchRegistry(events)
        self._locks = BranchLocks()
        self._sessions = SessionRegistry()
        self._creation = CreationPolicy(
            self.policies,
            defaults=self.defaults,
            commands=self.hook_commands,
            events=events,
            superuser=superuser,
            password=password,
        )
        self._servers = Servers(
            self._registry,
            self._locks,
            runtime=runtime,
            storage=storage,
            state=state,
            caps=self._caps,
            followers=self._followers,
            extras=server_extras,
        )
        self._data = BranchData(
            self._registry,
            self._locks,
            storage=storage,
            runtime=runtime,
            servers=self._servers,
            state=state,
            policies=self.policies,
            creation=self._creation,
            followers=self._followers,
            point_in_time=point_in_time,
            superuser=superuser,
        )
        self._recovery = BranchRecovery(
            self._registry, storage=storage, runtime=runtime, state=state, policies=self.policies
        )
        self.budget = budget
        """The disk budget every operation that grows the disk asks first (None: no checks)."""
        self.point_in_time = point_in_time
        """Snapshots and WAL archives of the branches that keep WAL, when kept
        (``--snapshot-every``): what ``create`` with ``at`` needs."""
        self.refresh_main = self._main.refresh
        """Makes a new generation of main (``--source-mode dump``); None in other modes."""
        self.opened = False
        """Main is made and running: Prism is ready (``/healthz`` answers 200)."""

    # ---- queries -------------------------------------------------------------------------

    def get(self, name: str) -> Branch | None:
        return self._registry.get(name)

    def require(self, name: str) -> Branch:
        """The branch called ``name``, or ``BranchNotFound``."""
        return self._registry.require(name)

    def list(self) -> list[Branch]:
        return self._registry.list()

    def children(self, name: str) -> builtins.list[str]:
        return self._registry.children(name)

    def address(self, name: str) -> BackendAddress | None:
        """Where ``name``'s server is reachable now, or None if it is not running."""
        return self.runtime.address(name)

    def data_path(self, name: str) -> Path:
        """``name``'s data directory (whether or not it exists)."""
        return self.storage.path(name)

    async def usage_bytes(self, name: str) -> int | None:
        """Bytes ``name`` uses on its own, if the driver can tell (off the loop: it may walk)."""
        return await trio.to_thread.run_sync(self.storage.usage_bytes, name)

    def descendants(self, name: str) -> builtins.list[str]:
        """Every branch cloned, directly or not, from ``name``."""
        return self._registry.descendants(name)

    def policy(self, name: str) -> BranchPolicy:
        """``name``'s protection, expiry and hook (``BranchNotFound`` if there is no branch)."""
        self.require(name)
        return self.policies.get(name)

    async def disk_use(self, name: str) -> DiskUse:
        """Bytes ``name`` holds alone and shares with its parent, as far as the storage knows."""
        self.require(name)
        return await self.disk.get(name)

    async def schema_diff(self, name: str, against: str, *, database: str) -> SchemaDiff:
        """How ``name``'s schema differs from ``against``'s, read from both servers' catalogs.

        Both branches are woken if stopped (reading catalogs needs a server), which counts as
        activity like any client would.
        """
        self.require(name)
        self.require(against)
        schemas = []
        for branch in (name, against):
            address = await self.ensure_running(branch, create=False)
            async with await connect_branch(
                address,
                user=self._superuser,
                password=self._password,
                database=database,
                application_name="prism diff",
            ) as service:
                schemas.append(await read_schema(service))
        return diff_schemas(schemas[0], schemas[1])

    def connection(
        self, name: str, *, host: str | None = None, with_password: bool = False
    ) -> ConnectionParams | None:
        """How a client reaches ``name`` through the front door (None: Prism is not serving)."""
        self.require(name)
        if self.endpoint is None:
            return None
        return params_for(self.endpoint, name, host=host, with_password=with_password)

    # ---- start-up and shut-down ------------------------------------------------------------

    async def open(self) -> None:
        """Reconcile the registry with storage and runtime, create main if needed, start it."""
        await self.recover()
        await self.open_main()

    async def recover(self) -> None:
        """Recover with the manager as the only owner: the quick first half of ``open`` (a
        whole Prism runs one pass with every owner instead, see ``prism.server``)."""
        await run_recovery(self.journal, [self.recovery_owner()])

    def recovery_owner(self) -> Owner:
        """The manager's part of start-up recovery (``prism.branchrecovery``): undo
        interrupted creates, resets and initdbs, then make records, disk and servers agree."""
        return self._recovery.owner()

    async def open_main(self) -> None:
        """Create main if needed, then start it: the second half of ``open``.

        A base backup of a source may take hours, so the front door and the API are served
        meanwhile: main is listed as ``backing_up`` and whatever needs it is refused with
        ``StartingUp`` (``check_available``) saying how far the backup is.
        """
        if MAIN_BRANCH not in self._registry:
            await self._create_main()
        await self.ensure_running(MAIN_BRANCH)
        self.opened = True

    def check_available(self, name: str) -> None:
        """Refuse a client of ``name`` or its creation while main is still being made.

        A new branch would be cut from main, so only branches that exist already (none, on a
        new Prism) are left alone.
        """
        main = self._registry.get(MAIN_BRANCH)
        if main is None or main.status not in MAKING:
            return
        if name != MAIN_BRANCH and name in self._registry:
            return
        if self._main.progress is None:
            what = "Prism is creating it (initdb)"
        else:
            what = self._main.progress()
        raise StartingUp(
            f"branch main is not ready yet: {what}",
            hint="connect again when it is done; GET /api/v1/branches/main shows the progress",
        )

    async def close(self, *, kill_after: float = math.inf) -> dict[str, str]:
        """Stop every running branch and save last-activity times (runs shielded); whatever
        still runs after ``kill_after`` seconds is killed (``Servers.close``). The failures
        come back as branch → reason."""
        return await self._servers.close(
            lambda name: self.stop(name, reason="shutdown"), kill_after=kill_after
        )

    async def watch(self, *, interval: float = WATCH_INTERVAL) -> None:
        """Notice branch servers that exit behind Prism's back within ``interval``
        (``Servers.watch``)."""
        await self._servers.watch(interval=interval)

    async def _create_main(self) -> None:
        """Initialise main (initdb, or ``make_main``: a base backup of a source); an intent
        recorded first lets reconcile discard a crashed attempt."""
        make = self._main.make
        how = "initdb" if make is None else "base backup"
        log.info("creating branch main: %s into %s", how, self.storage.path(MAIN_BRANCH))
        started = trio.current_time()
        # Listed while it is made (clients of it are refused by check_available), never saved:
        # the intent below is what a crash leaves.
        making = BranchStatus.PROVISIONING if make is None else BranchStatus.BACKING_UP
        branch = Branch(MAIN_BRANCH, None, utcnow(), making)
        self._registry.add(branch)
        intent = InitdbIntent(MAIN_BRANCH)
        await self.journal.record(intent)
        crash_point("initdb:recorded")
        try:
            path = await self.storage.create(MAIN_BRANCH)
            crash_point("initdb:created")
            if make is None:
                await self.runtime.initdb(path, superuser=self._superuser, password=self._password)
            else:
                await make(path)
            crash_point("initdb:initialised")
        except BaseException:
            self._registry.remove(MAIN_BRANCH)
            with trio.CancelScope(shield=True):
                await self._data.destroy_quietly(MAIN_BRANCH)
                await self.journal.done(intent)
            raise
        branch.created_at = utcnow()
        self._registry.transition(branch, BranchStatus.STOPPED)
        await self.state.put(branch.record())
        crash_point("initdb:registered")
        await self.journal.done(intent)
        self.events.publish("created", MAIN_BRANCH, duration_ms=elapsed_ms(started))

    # ---- the hot question: where do I send this client? --------------------------------

    async def ensure_running(self, name: str, *, create: bool = True) -> BackendAddress:
        """The address of ``name``'s server, creating and/or starting the branch if needed.

        Asking counts as activity: a client between this answer and its first byte must not
        find the branch stopped by the reaper under its feet.
        """
        branch = await self._awake(name, create=create, admit=False)
        assert branch.address is not None
        return branch.address

    async def admit(self, name: str, client: str, *, create: bool = True) -> ClientSession:
        """Admit one client session to ``name``: the branch is running and the session counted.

        The count is taken in the same step as the answer, so from here until
        ``connection_closed`` the branch has a session and is nobody's idle victim.
        """
        branch = await self._awake(name, create=create, admit=True)
        assert branch.address is not None
        self.events.publish("connected", name, client=client)
        return ClientSession(branch, client, branch.address)

    async def _awake(self, name: str, *, create: bool, admit: bool) -> Branch:
        self.check_available(name)
        branch = self._registry.get(name)
        if branch is None or branch.status is not BranchStatus.RUNNING or not self.address(name):
            async with self._locks[name]:
                branch = self._registry.get(name)
                if branch is None:
                    if not create:
                        raise BranchNotFound(f'branch "{name}" does not exist')
                    self._creation.refuse_unrunnable_hook(self.defaults.parent)
                    await self._creation.record_new(name, self.defaults.ttl)
                    branch = await self._provision(name, self.defaults.parent)
                elif self.runtime.address(name) is None:
                    self._refuse_start(name)
                    await self._servers.start(branch, reason="wake")
        # No await since the branch was last seen running: nothing can stop it in between.
        branch.last_active_ts = time.time()
        if admit:
            branch.connections += 1
        return branch

    # ---- operations ------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        parent: str = MAIN_BRANCH,
        *,
        ttl: float | None = None,
        protected: bool = False,
        at: datetime | None = None,
    ) -> Branch:
        """Create ``name`` from ``parent`` and start it; ``ttl`` seconds from now it expires
        (``None``: never; the on-connect default ``--branch-ttl`` is for created-on-connect).
        ``at``: the branch holds the parent's data as of that time (``prism.pitr``)."""
        validate_branch_name(name)
        self.check_available(name)
        if at is not None:
            self._check_at(parent, at)
        async with self._locks[name]:
            if name in self._registry:
                raise BranchExists(f'branch "{name}" already exists')
            self._creation.refuse_unrunnable_hook(parent)
            await self._creation.record_new(name, ttl or 0.0, protected=protected)
            return await self._provision(name, parent, at=at)

    def _check_at(self, parent: str, at: datetime) -> None:
        """Refuse a point-in-time create before anything is made, saying why."""
        if self.point_in_time is None:
            raise OutsideWindow(
                "branches as of a time are off: Prism keeps no snapshots or WAL",
                hint="start Prism with --snapshot-every",
            )
        self.point_in_time.check(at, utcnow(), parent)

    async def clone_to(self, name: str, target: str) -> None:
        """Clone branch ``name``, consistently, into storage name ``target`` (a snapshot), if
        the disk budget grants it."""
        release = await self._hold_clone(name, f"take snapshot {target}")
        try:
            await self._data.clone_from(name, target)
        finally:
            release()

    async def start(self, name: str) -> Branch:
        self.check_available(name)
        async with self._locks[name]:
            branch = self.require(name)
            if self.runtime.address(name) is None:
                self._refuse_start(name)
                await self._servers.start(branch, reason="start")
            return branch

    async def stop(self, name: str, *, reason: str = "stop") -> Branch:
        """Stop ``name``'s server (fast shutdown); its open sessions are ended with a reason."""
        self.check_available(name)
        async with self._locks[name]:
            branch = self.require(name)
            await self._sessions.terminate(
                name, f'branch "{name}" was stopped by an operator', hint="connect again to wake it"
            )
            await self._servers.stop(branch, reason=reason)
            return branch

    async def stop_if_idle(self, name: str, *, idle_for: float, now: float) -> bool:
        """Stop ``name`` (reason ``idle``) if, under its lock, it is still running and idle.

        The reaper decides from a snapshot; a client may have arrived since, so the decision is
        checked again where no client can slip in between the check and the stop.
        """
        async with self._locks[name]:
            branch = self._registry.get(name)
            if branch is None or not is_idle(branch, now=now, idle_for=idle_for):
                return False
            await self._servers.stop(branch, reason="idle")
            return True

    async def reset(self, name: str) -> Branch:
        """Throw away ``name``'s changes: re-clone it from its parent's current state.

        Open sessions are ended first, with a message that says why. The branch comes back
        running if it was running. If the new clone (or the parent's ``on_create`` hook in it)
        fails, the branch's old data is put back and the error says so.
        """
        async with self._locks[name]:
            branch = self.require(name)
            refuse_if_protected(name, self.policies.get(name), "reset")
            if branch.parent is None:
                raise BranchProtected(
                    f'branch "{name}" has no parent to reset from',
                    hint="reset a branch made from main, not main itself",
                )
            parent = branch.parent
            if parent not in self._registry:
                raise BranchNotFound(f'parent branch "{parent}" of "{name}" no longer exists')
            self._creation.refuse_unrunnable_hook(parent)
            # Before anything is stopped or moved: the old data is freed only at the end.
            release = await self._hold_clone(parent, f'reset branch "{name}"')
            started = trio.current_time()
            was_running = self.runtime.address(name) is not None
            # The old data goes to the trash under a name recorded first, so a crash at any
            # step leaves either a whole branch or a way back to one.
            intent = ResetIntent(name, parent, secrets.token_hex(4))
            token = intent.token
            await self.journal.record(intent)
            crash_point("reset:recorded")
            try:
                await self._sessions.terminate(
                    name,
                    f'branch "{name}" is being reset: its changes were thrown away',
                    hint="connect again to use the fresh copy of its parent",
                )
                await self._servers.stop(branch, reason="reset")
            except BaseException:
                release()
                with trio.CancelScope(shield=True):
                    await self.journal.done(intent)
                raise
            crash_point("reset:stopped")
            self._registry.transition(branch, BranchStatus.RESETTING, "resetting", parent=parent)
            moved = False
            try:
                # Shielded: once the old data is going, a client hanging up must not leave
                # the branch half-made; only a failure can stop it now.
                with trio.CancelScope(shield=True):
                    retired = await self.storage.retire(name, token)
                    moved = True
                    self._data.discarded(name)
                    crash_point("reset:retired")
                    if self.policies.get(parent).has_hook:
                        # From here a clone may stand without its hook run: reconcile must
                        # know to throw it away rather than keep it.
                        phase = ResetPhase.HOOKED_CLONE
                    else:
                        # A clone cut short by a crash must not pass for a finished one.
                        phase = ResetPhase.CLONING
                    await self.journal.record(dataclasses.replace(intent, phase=phase))
                    await self._data.clone_from(parent, name)
                    if phase is ResetPhase.CLONING:
                        # Finished: a crash from here on keeps the new clone.
                        await self.journal.record(intent)
                    crash_point("reset:cloned")
                    await self._data.run_hook_unseen(branch)
                    crash_point("reset:hooked")
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await self._undo_reset(branch, intent, moved=moved)
                self._publish_failure(name, exc, started)
                raise
            finally:
                release()
            # Silent: the reset event below, once it may be running again, tells of it.
            self._registry.transition(branch, BranchStatus.STOPPED)
            branch.bytes_proxied = 0
            branch.last_active_ts = time.time()
            await self._servers.save(branch)
            await self.journal.done(intent)
            if retired is not None:
                await self._data.remove_retired(retired)
            if was_running:
                await self._servers.start(branch, reason="reset")
            self.events.publish("reset", name, parent=parent, duration_ms=elapsed_ms(started))
            log.info(
                "reset: branch %s re-cloned from %s in %.1f ms", name, parent, elapsed_ms(started)
            )
            return branch

    async def replace_main(self, swap: Callable[[], Awaitable[None]], *, why: str) -> None:
        """Run ``swap``, which puts other data in main's directory, with main stopped and locked.

        No clone of main and no session of main spans the swap; sessions are ended with
        ``why``. Main comes back running if it was, on the new data or (``swap`` failed and put
        the old data back) the old.
        """
        async with self._locks[MAIN_BRANCH]:
            branch = self.require(MAIN_BRANCH)
            was_running = self.runtime.address(MAIN_BRANCH) is not None
            await self._sessions.terminate(MAIN_BRANCH, why, hint="connect again")
            await self._servers.stop(branch, reason="refresh")
            try:
                await swap()
                self._data.discarded(MAIN_BRANCH)
            finally:
                if was_running:
                    await self._servers.start(branch, reason="refresh")

    async def delete(self, name: str, *, with_children: bool = False) -> builtins.list[str]:
        """Remove a branch (and, if asked, its descendants): server, data and record.

        Returns the names deleted, descendants first.
        """
        if name == MAIN_BRANCH:
            raise BranchProtected("the main branch cannot be deleted")
        self.require(name)
        children = self.children(name)
        for doomed in [name, *self.descendants(name)] if with_children else [name]:
            refuse_if_protected(doomed, self.policies.get(doomed), "deleted")
        if children and not with_children:
            raise BranchHasChildren(
                f'branch "{name}" has child branches: {", ".join(children)}',
                hint="delete them first, or ask to delete the children too",
            )
        deleted: builtins.list[str] = []
        for child in children:
            deleted += await self.delete(child, with_children=True)
        async with self._locks[name]:
            branch = self.require(name)
            await self._sessions.terminate(name, f'branch "{name}" was deleted')
            await self._servers.stop(branch, reason="delete")
            crash_point("delete:stopped")
            self._registry.transition(branch, BranchStatus.DELETING, "deleting")
            # Free first, record after: on a full disk the state file may not take a write
            # until space is back. The rename into the trash is the commit point; a record
            # whose directory is gone is forgotten by reconcile.
            retired = await self.storage.retire(name)
            crash_point("delete:retired")
            self._registry.remove(name)
            self._data.discarded(name)
            if retired is not None:
                await self._data.remove_retired(retired)
            crash_point("delete:freed")
            await self._data.forget_record(name)
            self.events.publish("deleted", name)
        return [*deleted, name]

    # ---- team policies -------------------------------------------------------------------

    async def set_policy(self, name: str, **changes: object) -> BranchPolicy:
        """Change ``name``'s ``protected``, ``expires_at``, ``on_create`` or
        ``on_create_command``; returns the policy.

        Held under the branch's lock so a change never interleaves with a delete or reset. A
        command is refused unless the operator allowed commands (removing one never is).
        """
        if changes.get("on_create_command") is not None:
            self.hook_commands.refuse_unless_allowed(
                f'cannot give branch "{name}" an on_create command'
            )
        async with self._locks[name]:
            self.require(name)
            policy = await self.policies.update(name, **changes)
        self.events.publish(
            "policy",
            name,
            protected=policy.protected,
            expires_at=None if policy.expires_at is None else rfc3339(policy.expires_at),
        )
        return policy

    async def expire_if_due(self, name: str, *, grace: float) -> bool:
        """Delete ``name`` if its time is up: at once with no session open, else only after
        ``grace`` seconds, ending the sessions with 57P01. An ``expired`` event comes first."""
        branch = self._registry.get(name)
        now = utcnow()
        if (
            branch is None
            or name == MAIN_BRANCH  # cannot be deleted at all: an expiry on it means nothing
            or not is_expired(self.policies.get(name), now)
            or self.children(name)
        ):
            return False
        if self._sessions.any_open(name) and not grace_over(self.policies.get(name), now, grace):
            return False
        self.events.publish("expired", name)
        await self._sessions.terminate(
            name, f'branch "{name}" expired and was deleted', hint="create it again if needed"
        )
        await self.delete(name)
        return True

    # ---- client sessions (opened by the proxy; ``prism.sessions``) -----------------------

    def terminable(self, session: ClientSession) -> AbstractContextManager[ClientSession]:
        """Let an operation on the session's branch end the body (the proxy's splice) early.

        On the way out of an ended session this raises the ``ConnectionTerminated`` that says
        why, for the proxy to send to the client as a FATAL error.
        """
        return self._sessions.terminable(session)

    def connection_closed(self, session: ClientSession) -> None:
        """Settle an admitted session (once), on the branch instance it was admitted to."""
        branch = session.branch
        branch.connections -= 1
        branch.last_active_ts = time.time()
        fields: dict[str, object] = {"duration_ms": elapsed_ms(session.opened_at)}
        if session.terminated_by is not None:
            fields["error"] = session.terminated_by.message
        self.events.publish("disconnected", branch.name, client=session.client, **fields)

    # ---- internals (callers hold the branch's lock) ------------------------------------

    async def _provision(
        self, name: str, parent_name: str, *, at: datetime | None = None
    ) -> Branch:
        parent = self._registry.get(parent_name)
        if parent is None:
            raise BranchNotFound(f'parent branch "{parent_name}" does not exist')
        started = trio.current_time()
        # Refuse before stopping anyone for room, and again after: others may have been
        # created meanwhile.
        check_branch_cap(name, count=len(self._registry), caps=self._caps)
        await self._servers.make_room(name)
        # A copy of a running parent costs its size and archives a WAL segment: refused here,
        # before anything is written, if it would cut into the reserve.
        release = await self._hold_clone(parent_name, f'create branch "{name}"', at=at)
        try:
            check_branch_cap(name, count=len(self._registry), caps=self._caps)
        except BaseException:
            release()
            raise
        branch = Branch(name, parent_name, utcnow(), BranchStatus.PROVISIONING)
        self._registry.add(branch)
        self._registry.transition(
            branch, BranchStatus.PROVISIONING, "provisioning", parent=parent_name
        )
        intent = CreateIntent(name, parent_name)
        try:
            await self.journal.record(intent)
            await self.state.put(branch.record())
            crash_point("create:recorded")
            if at is None:
                await self._data.clone_from(parent_name, name)
            else:
                await self._data.clone_at(
                    name,
                    parent_name,
                    at,
                    parent_address=await self.ensure_running(parent_name, create=False),
                )
            crash_point("create:cloned")
            clone_ms = elapsed_ms(started)
            await self._servers.start(
                branch, reason="create", before_running=self._creation.run_parent_hook
            )
            await self.journal.done(intent)
            crash_point("create:started")
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._data.roll_back(name)
                await self.journal.done(intent)
            self._publish_failure(name, exc, started)
            if isinstance(exc, PrismError):
                raise ProvisionFailed(
                    f'could not create branch "{name}": {exc.message}',
                    hint=exc.hint,
                    detail="the partial branch was removed; nothing was kept",
                    # A connecting client sees the hook's own SQLSTATE (42P01, say).
                    sqlstate=exc.sqlstate if isinstance(exc, HookFailed) else None,
                ) from exc
            raise
        finally:
            release()
        self.events.publish("created", name, parent=parent_name, duration_ms=elapsed_ms(started))
        log.info(
            "provision: branch %s from %s in %.1f ms (clone %.1f ms)",
            name,
            parent_name,
            elapsed_ms(started),
            clone_ms,
        )
        return branch

    async def _hold_clone(
        self, parent: str, what: str, *, at: datetime | None = None
    ) -> Callable[[], None]:
        """Ask the disk budget for what cloning ``parent`` costs (``DiskFull`` if it does not
        fit); returns the release of the bytes held, called when the clone is done."""
        if self.budget is None:
            return lambda: None
        # A branch as of a time is a clone of a snapshot, which no server runs on.
        running = at is None and self.runtime.address(parent) is not None
        hold = await self.budget.hold_clone(parent, running=running, what=what)
        return hold.release

    def _refuse_start(self, name: str) -> None:
        """Refuse to start a server on a file system too full for it to write WAL."""
        if self.budget is not None:
            self.budget.refuse_start(name)

    def _publish_failure(self, name: str, exc: BaseException, started: float) -> None:
        error = describe(exc)
        log.error("branch %s: operation failed and was rolled back: %s", name, error)
        self.events.publish("failed", name, error=error, duration_ms=elapsed_ms(started))

    async def _undo_reset(self, branch: Branch, intent: ResetIntent, *, moved: bool) -> None:
        """A reset failed: put the old data back if it went to the trash, else drop the branch.

        ``moved`` says whether the old data left for the trash; if not, it is still in place.
        Only a driver that cannot keep a retired directory (ZFS destroys it at once) ends up
        without the old data; then the branch is removed, as its changes were already gone.
        """
        name = branch.name
        try:
            if moved:
                await self.runtime.stop(name)
                await self._data.destroy_quietly(name)
                restored = await self.storage.restore(name, intent.token)
            else:
                restored = self.storage.exists(name)
            if restored:
                # Silent: the caller's failed event says what happened.
                self._registry.transition(branch, BranchStatus.STOPPED, address=None)
                await self._servers.save(branch)
                log.warning("reset: branch %s failed to re-clone; its old data was put back", name)
            else:
                await self._data.roll_back(name)
        except PrismError as exc:
            log.error("reset: could not undo the reset of branch %s: %s", name, exc.message)
        await self.journal.done(intent)


__all__ = [
    "WATCH_INTERVAL",
    "Branch",
    "BranchManager",
    "BranchStatus",
    "ClientSession",
    "Followers",
    "MainOrigin",
    "is_idle",
]
