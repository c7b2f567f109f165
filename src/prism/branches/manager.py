"""The branch manager: one place that creates, starts, stops and removes branches.

Every operation on a branch holds that branch's ``trio.Lock``, so twenty clients racing to a
new branch cause exactly one provision and the rest wait for it. The proxy, the API, the CLI and
the reaper all go through ``BranchManager``; nothing else calls the storage or runtime drivers.
Its jobs are split by module: main's making (``mainbranch``), reset (``branchreset``), delete,
undelete and the trash (``branchtrash``), servers (``branchservers``), data (``branchdata``),
recovery (``branchrecovery``); the manager wires them and keeps create, start, stop and admit.

States (each transition publishes one event, ``BranchRegistry.transition``)::

    absent ─create─▶ provisioning ─▶ starting ─▶ running ─idle/stop─▶ stopping ─▶ stopped
                         └─fail─▶ (rolled back: absent)      ▲──────── connect/start ─┘
    running/stopped ─reset─▶ resetting ─▶ (re-cloned) ─▶ running/stopped as before
    running/stopped ─delete─▶ deleting ─▶ trash ─undelete─▶ stopped  (or ─purge─▶ absent)

Crash safety: every multi-step change to the disk records a typed intent in the journal first
and has a commit point (a rename, where it can); start-up recovery finishes or undoes what a
crash interrupted. Operations that take a branch away from its clients (reset, stop, delete)
end their sessions (``prism.branches.sessions``) with a message that says why.

Admission: the caps are checked on every path that creates or starts a server, each check
followed by its reservation with no ``await`` in between. A session is counted on the branch
*instance* it was admitted to (``admit``), so neither the reaper nor ``--max-running`` eviction
takes a branch with a session being set up, and a deleted branch's session never touches the
counts of a new branch of the same name.
"""

from __future__ import annotations

import builtins
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from datetime import datetime

import trio

from prism.branches.capacity import Caps
from prism.branches.creation import CreationPolicy
from prism.branches.data import BranchData
from prism.branches.deletion import UNDELETE_WINDOW, BranchTrash
from prism.branches.eviction import Reclaimer
from prism.branches.health import HEALTH_INTERVAL, HealthWatch, Prober, probe_server, refusal
from prism.branches.hooks import HookCommands
from prism.branches.main import MainBranch
from prism.branches.parts import BranchParts
from prism.branches.pitr import PointInTime
from prism.branches.policy import (
    BranchPolicy,
    CreateDefaults,
    PolicyStore,
)
from prism.branches.provision import Provisioner, check_at
from prism.branches.recovery import BranchRecovery
from prism.branches.reset import BranchReset
from prism.branches.schemadiff import SchemaDiff, diff_schemas, read_schema
from prism.branches.schemadiff.dump import dump_diff
from prism.branches.servers import WATCH_INTERVAL, Servers
from prism.branches.sessions import ClientSession, SessionRegistry
from prism.branches.status import (
    MAKING,
    UNWELL,
    Branch,
    BranchLocks,
    BranchRegistry,
    BranchStatus,
    elapsed_ms,
    is_idle,
)
from prism.core.address import BackendAddress
from prism.core.errors import (
    BranchExists,
    BranchNotFound,
)
from prism.core.events import EventBus
from prism.core.followers import Followers
from prism.core.names import MAIN_BRANCH, validate_branch_name
from prism.durable.journal import Journal
from prism.durable.recovery import Owner
from prism.durable.recovery import recover as run_recovery
from prism.durable.state import StateStore, rfc3339, utcnow
from prism.mainsource.base import MainOrigin
from prism.mainsource.initdb import InitdbMain
from prism.postgres.client import connect_branch
from prism.postgres.dsn import ConnectionParams, Endpoint, params_for
from prism.runtime.base import Runtime, ServerExtrasSource
from prism.storage.base import Storage
from prism.storage.budget import DiskBudget
from prism.storage.diskuse import DiskUse, DiskUseCache

log = logging.getLogger(__name__)


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
        probe: Prober | None = None,
        undelete_window: float = UNDELETE_WINDOW,
        clock: Callable[[], datetime] = utcnow,
        budget: DiskBudget | None = None,
        evict_on_pressure: bool = True,
    ) -> None:
        """``probe`` asks a branch server whether it serves (default: a start-up packet on its
        service socket, ``prism.branches.health``)."""
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
        # Without a source main is Prism's own initdb (``prism.mainsource`` chooses).
        origin = main or InitdbMain(runtime, superuser=superuser, password=password).origin
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
        self._health = HealthWatch(
            self._registry,
            self._locks,
            runtime=runtime,
            probe=probe or functools.partial(probe_server, user=superuser),
        )
        self._recovery = BranchRecovery(
            self._registry, storage=storage, runtime=runtime, state=state, policies=self.policies
        )
        self.reclaimer = Reclaimer(
            self,
            enabled=evict_on_pressure,
            free_bytes=None if budget is None else functools.partial(budget.free_bytes, "branches"),
            clock=clock,
        )
        """What frees space (the trash, expired and idle branches) before the budget refuses."""
        parts = BranchParts(
            registry=self._registry,
            locks=self._locks,
            sessions=self._sessions,
            servers=self._servers,
            data=self._data,
            storage=storage,
            runtime=runtime,
            state=state,
            policies=self.policies,
            journal=self.journal,
            events=events,
            budget=budget,
            reclaimer=self.reclaimer,
        )
        self._parts = parts
        self._main = MainBranch(parts, origin=origin)
        self._reset = BranchReset(parts, creation=self._creation)
        self._provisioner = Provisioner(
            parts,
            creation=self._creation,
            caps=self._caps,
            parent_address=lambda parent: self.ensure_running(parent, create=False),
        )
        self.trash = BranchTrash(
            parts, disk=self.disk, caps=self._caps, window=undelete_window, now=clock
        )
        """Deleted branches kept for undelete: listed, purged (the reaper, the reclaimer)."""
        self.budget = budget
        """The disk budget every operation that grows the disk asks first (None: no checks)."""
        self.point_in_time = point_in_time
        """Snapshots and WAL archives of the branches that keep WAL, when kept
        (``--snapshot-every``): what ``create`` with ``at`` needs."""
        self.refresh_main = origin.refresh
        self.main_made_by = origin.how
        """How main is made (initdb, base backup, dump): where its data comes from."""
        """Makes a new generation of main (``--source-mode dump``); None in other modes."""
        self._opened = trio.Event()

    # ---- queries -------------------------------------------------------------------------

    @property
    def opened(self) -> bool:
        """Main is made and running: Prism is ready (``/healthz`` answers 200)."""
        return self._opened.is_set()

    async def wait_opened(self) -> None:
        """Return once main is made and running (``open_main`` is done)."""
        await self._opened.wait()

    def making_main(self) -> bool:
        """Whether main is still being made: listed, but its initdb, base backup or first
        dump is not done."""
        main = self._registry.get(MAIN_BRANCH)
        return main is not None and main.status in MAKING

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

    async def schema_dump_diff(self, name: str, against: str, *, database: str) -> str:
        """A unified diff of the two branches' ``pg_dump --schema-only``, B to A: the whole
        truth as pg_dump tells it, for what the catalog diff does not compare."""
        dumps = []
        for branch in (against, name):
            self.require(branch)
            await self.ensure_running(branch, create=False)
            dumps.append(
                await self.runtime.dump_schema(branch, user=self._superuser, database=database)
            )
        return dump_diff(
            dumps[0], dumps[1], before_name=f"{against}/{database}", after_name=f"{name}/{database}"
        )

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
        """The manager's part of start-up recovery (``prism.branches.recovery``): undo
        interrupted creates, resets and initdbs, finish deletes and undeletes
        (``prism.branches.deletion``), then make records, disk, servers and the trash agree."""
        return self._recovery.owner(self.trash.recoverers(), then=self.trash.sweep)

    async def open_main(self) -> None:
        """Create main if needed, then start it: the second half of ``open``.

        A base backup of a source may take hours, so the front door and the API are served
        meanwhile: main is listed as ``backing_up`` and whatever needs it is refused with
        ``StartingUp`` (``check_available``) saying how far the backup is.
        """
        if MAIN_BRANCH not in self._registry:
            await self._main.make()
        await self.ensure_running(MAIN_BRANCH)
        self._opened.set()

    def check_available(self, name: str) -> None:
        """Refuse a client of ``name`` or its creation while main is still being made
        (``MainBranch.check_available``)."""
        self._main.check_available(name)

    async def close(self, *, kill_after: float = math.inf) -> dict[str, str]:
        """Stop every running branch and save last-activity times (runs shielded); whatever
        still runs after ``kill_after`` seconds is killed (``Servers.close``). The failures
        come back as branch → reason."""
        return await self._servers.close(
            lambda name: self.stop(name, reason="shutdown"), kill_after=kill_after
        )

    async def watch(
        self, *, interval: float = WATCH_INTERVAL, health_every: float = HEALTH_INTERVAL
    ) -> None:
        """Notice branch servers that exit behind Prism's back within ``interval``
        (``Servers.watch``), and ask each one that runs whether it serves every
        ``health_every`` seconds (``prism.branches.health``; 0: never)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(self._servers.watch, interval=interval))
            nursery.start_soon(functools.partial(self._health.run, every=health_every))

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
                    branch = await self._provisioner.provision(name, self.defaults.parent)
                elif self.runtime.address(name) is None:
                    self._refuse_start(name)
                    await self._servers.start(branch, reason="wake")
        if branch.status in UNWELL:
            # Its server was up and serves nobody now: say why at once rather than let the
            # client wait on it (``prism.branches.health`` lets clients in again once it serves).
            raise refusal(branch)
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
        ``at``: the branch holds the parent's data as of that time (``prism.branches.pitr``)."""
        validate_branch_name(name)
        self.check_available(name)
        if at is not None:
            check_at(self.point_in_time, parent, at)
        async with self._locks[name]:
            if name in self._registry:
                raise BranchExists(f'branch "{name}" already exists')
            self._creation.refuse_unrunnable_hook(parent)
            await self._creation.record_new(name, ttl or 0.0, protected=protected)
            return await self._provisioner.provision(name, parent, at=at)

    async def clone_to(self, name: str, target: str) -> None:
        """Clone branch ``name``, consistently, into storage name ``target`` (a snapshot), if
        the disk budget grants it."""
        release = await self._parts.hold_clone(name, f"take snapshot {target}")
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
        """Throw away ``name``'s changes: re-clone it from its parent's current state
        (``BranchReset.reset``: sessions ended with a reason, back running if it was, the old
        data put back if the new clone or its parent's hook fails)."""
        return await self._reset.reset(name)

    async def replace_main(self, swap: Callable[[], Awaitable[None]], *, why: str) -> None:
        """Run ``swap`` with main stopped and locked (``MainBranch.replace``)."""
        await self._main.replace(swap, why=why)

    async def delete(
        self,
        name: str,
        *,
        with_children: bool = False,
        purge: str | None = None,
        if_idle: bool = False,
    ) -> builtins.list[str]:
        """Move a branch (and, if asked, its descendants) into the trash for
        ``--undelete-window``; ``purge``: free it at once, saying why; ``if_idle``: only if no
        session is open (``BranchTrash.delete``). The names deleted, descendants first."""
        return await self.trash.delete(
            name, with_children=with_children, purge=purge, if_idle=if_idle
        )

    async def undelete(self, name: str) -> builtins.list[str]:
        """Bring back the last deleted branch called ``name`` whole, with what the same delete
        took below it (``BranchTrash.undelete``); the names, parents first."""
        self.check_available(name)
        return await self.trash.undelete(name)

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

    # ---- client sessions (opened by the proxy; ``prism.branches.sessions``)
    # -----------------------

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

    def _refuse_start(self, name: str) -> None:
        """Refuse to start a server on a file system too full for it to write WAL."""
        if self.budget is not None:
            self.budget.refuse_start(name)


__all__ = [
    "WATCH_INTERVAL",
    "Branch",
    "BranchManager",
    "BranchStatus",
    "ClientSession",
    "Followers",
    "is_idle",
]
