"""The branch registry and lifecycle: one place that creates, starts, stops and removes branches.

Every operation on a branch holds that branch's ``trio.Lock``, so twenty clients racing to a
new branch cause exactly one provision and the rest simply wait for it; an API call and a
connecting client never step on each other. The proxy, the API, the CLI and the reaper all go
through ``BranchManager``; nothing else calls the storage or runtime drivers.

States (each transition publishes one event)::

    absent ─create─▶ provisioning ─▶ starting ─▶ running ─idle/stop─▶ stopping ─▶ stopped
                         └─fail─▶ (rolled back: absent)      ▲──────── connect/start ─┘
    running/stopped ─delete─▶ deleting ─▶ absent
"""

from __future__ import annotations

import enum
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from prism.address import BackendAddress
from prism.clone import clone_consistent
from prism.errors import (
    BranchConflict,
    BranchNotFound,
    PrismError,
    ProvisionFailed,
    StorageError,
)
from prism.events import EventBus
from prism.router import validate_branch_name
from prism.runtime.base import Runtime
from prism.state import BranchRecord, StateStore, utcnow
from prism.storage.base import MAIN_BRANCH, Storage

log = logging.getLogger(__name__)


class BranchStatus(enum.Enum):
    PROVISIONING = "provisioning"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"


@dataclass
class Branch:
    """What Prism knows about one branch right now."""

    name: str
    parent: str | None
    created_at: datetime
    status: BranchStatus
    last_active_ts: float = field(default_factory=time.time)
    address: BackendAddress | None = None
    connections: int = 0
    bytes_proxied: int = 0

    @property
    def last_active(self) -> datetime:
        return datetime.fromtimestamp(self.last_active_ts, UTC)

    def record(self) -> BranchRecord:
        return BranchRecord(
            name=self.name,
            parent=self.parent,
            created_at=self.created_at,
            last_active=self.last_active,
            status=self.status.value,
        )


def _elapsed_ms(started: float) -> float:
    return round((trio.current_time() - started) * 1000, 1)


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
    ) -> None:
        self.storage = storage
        self.runtime = runtime
        self.state = state
        self.events = events
        self._superuser = superuser
        self._password = password
        self._branches: dict[str, Branch] = {}
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)

    # ---- queries -------------------------------------------------------------------------

    def get(self, name: str) -> Branch | None:
        return self._branches.get(name)

    def list(self) -> list[Branch]:
        return sorted(self._branches.values(), key=lambda branch: branch.name)

    def children(self, name: str) -> list[str]:
        return sorted(b.name for b in self._branches.values() if b.parent == name)

    # ---- start-up and shut-down ------------------------------------------------------------

    async def open(self) -> None:
        """Reconcile the registry with storage and runtime, create main if needed, start it."""
        await self._reconcile()
        if MAIN_BRANCH not in self._branches:
            await self._create_main()
        await self.ensure_running(MAIN_BRANCH)

    async def close(self) -> None:
        """Stop every running branch and save last-activity times (runs shielded)."""
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for branch in self.list():
                    if self.runtime.address(branch.name) is not None:
                        nursery.start_soon(self.stop, branch.name)
            for branch in self.list():
                await self.state.put(branch.record())

    async def _reconcile(self) -> None:
        on_disk = set(self.storage.list())
        records = {record.name: record for record in await self.state.all()}
        for name, record in records.items():
            if record.status == BranchStatus.PROVISIONING.value:
                log.warning("reconcile: rolling back branch %s, left half-made by a crash", name)
                await self._destroy_quietly(name)
                await self.state.delete(name)
                continue
            if name not in on_disk:
                log.warning("reconcile: forgetting branch %s: its data directory is gone", name)
                await self.state.delete(name)
                continue
            self._branches[name] = Branch(
                name=name,
                parent=record.parent,
                created_at=record.created_at,
                status=BranchStatus.STOPPED,
                last_active_ts=record.last_active.timestamp(),
            )
        for name in sorted(on_disk - records.keys()):
            parent = None if name == MAIN_BRANCH else MAIN_BRANCH
            log.warning("reconcile: registering branch %s found on disk without a record", name)
            now = utcnow()
            self._branches[name] = Branch(name, parent, now, BranchStatus.STOPPED)
            await self.state.put(self._branches[name].record())
        for branch in self.list():
            address = await self.runtime.adopt(branch.name, self.storage.path(branch.name))
            if address is not None:
                log.info("reconcile: adopted running server of branch %s", branch.name)
                branch.status, branch.address = BranchStatus.RUNNING, address
            await self.state.put(branch.record())

    async def _create_main(self) -> None:
        log.info("creating branch main: initdb into %s", self.storage.path(MAIN_BRANCH))
        started = trio.current_time()
        try:
            path = await self.storage.create(MAIN_BRANCH)
            await self.runtime.initdb(path, superuser=self._superuser, password=self._password)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._destroy_quietly(MAIN_BRANCH)
            raise
        now = utcnow()
        branch = Branch(MAIN_BRANCH, None, now, BranchStatus.STOPPED)
        self._branches[MAIN_BRANCH] = branch
        await self.state.put(branch.record())
        self.events.publish("created", MAIN_BRANCH, duration_ms=_elapsed_ms(started))

    # ---- the hot question: where do I send this client? --------------------------------

    async def ensure_running(self, name: str, *, create: bool = True) -> BackendAddress:
        """The address of ``name``'s server, creating and/or starting the branch if needed."""
        branch = self._branches.get(name)
        if branch is not None and branch.status is BranchStatus.RUNNING:
            address = self.runtime.address(name)
            if address is not None:
                return address
        async with self._locks[name]:
            branch = self._branches.get(name)
            if branch is None:
                if not create:
                    raise BranchNotFound(f'branch "{name}" does not exist')
                branch = await self._provision(name, MAIN_BRANCH)
            elif self.runtime.address(name) is None:
                await self._start(branch, reason="wake")
            assert branch.address is not None
            return branch.address

    # ---- operations ------------------------------------------------------------------------

    async def create(self, name: str, parent: str = MAIN_BRANCH) -> Branch:
        """Create ``name`` from ``parent`` and start it."""
        validate_branch_name(name)
        async with self._locks[name]:
            if name in self._branches:
                raise BranchConflict(f'branch "{name}" already exists')
            return await self._provision(name, parent)

    async def start(self, name: str) -> Branch:
        async with self._locks[name]:
            branch = self._require(name)
            if self.runtime.address(name) is None:
                await self._start(branch, reason="start")
            return branch

    async def stop(self, name: str, *, reason: str = "stop") -> Branch:
        async with self._locks[name]:
            branch = self._require(name)
            await self._stop(branch, reason=reason)
            return branch

    async def delete(self, name: str, *, with_children: bool = False) -> None:
        """Remove a branch (and, if asked, its descendants): server, data and record."""
        if name == MAIN_BRANCH:
            raise BranchConflict("the main branch cannot be deleted")
        children = self.children(name)
        if children and not with_children:
            raise BranchConflict(
                f'branch "{name}" has child branches: {", ".join(children)}',
                hint="delete them first, or ask to delete the children too",
            )
        for child in children:
            await self.delete(child, with_children=True)
        async with self._locks[name]:
            branch = self._require(name)
            await self._stop(branch, reason="delete")
            branch.status = BranchStatus.DELETING
            self.events.publish("deleting", name)
            await self.storage.destroy(name)
            await self.state.delete(name)
            del self._branches[name]
            self.events.publish("deleted", name)

    # ---- activity accounting (called by the proxy) -----------------------------------

    def connection_opened(self, name: str, client: str) -> None:
        branch = self._branches.get(name)
        if branch is not None:
            branch.connections += 1
            branch.last_active_ts = time.time()
        self.events.publish("connected", name, client=client)

    def connection_closed(self, name: str, client: str) -> None:
        branch = self._branches.get(name)
        if branch is not None:
            branch.connections -= 1
            branch.last_active_ts = time.time()
        self.events.publish("disconnected", name, client=client)

    # ---- internals (callers hold the branch's lock) ------------------------------------

    def _require(self, name: str) -> Branch:
        branch = self._branches.get(name)
        if branch is None:
            raise BranchNotFound(f'branch "{name}" does not exist')
        return branch

    async def _provision(self, name: str, parent_name: str) -> Branch:
        parent = self._branches.get(parent_name)
        if parent is None:
            raise BranchNotFound(f'parent branch "{parent_name}" does not exist')
        started = trio.current_time()
        branch = Branch(name, parent_name, utcnow(), BranchStatus.PROVISIONING)
        self._branches[name] = branch
        self.events.publish("provisioning", name, parent=parent_name)
        try:
            await self.state.put(branch.record())
            async with self._locks[parent_name]:
                await clone_consistent(
                    self.storage,
                    parent_name,
                    name,
                    parent_address=self.runtime.address(parent_name),
                    superuser=self._superuser,
                )
            clone_ms = _elapsed_ms(started)
            await self._start(branch, reason="create")
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._roll_back(name)
            error = exc.message if isinstance(exc, PrismError) else repr(exc)
            self.events.publish("failed", name, error=error, duration_ms=_elapsed_ms(started))
            if isinstance(exc, PrismError):
                log.error("provision: branch %s failed: %s", name, error)
                raise ProvisionFailed(
                    f'could not create branch "{name}": {exc.message}',
                    hint=exc.hint,
                    detail="the partial branch was removed; nothing was kept",
                ) from exc
            raise
        log.info(
            "provision: branch %s from %s in %.1f ms (clone %.1f ms)",
            name,
            parent_name,
            _elapsed_ms(started),
            clone_ms,
        )
        return branch

    async def _roll_back(self, name: str) -> None:
        try:
            await self.runtime.stop(name)
        except PrismError as exc:
            log.error("rollback: could not stop branch %s: %s", name, exc.message)
        await self._destroy_quietly(name)
        await self.state.delete(name)
        self._branches.pop(name, None)

    async def _destroy_quietly(self, name: str) -> None:
        try:
            await self.storage.destroy(name)
        except StorageError as exc:
            log.error("rollback: could not remove data of branch %s: %s", name, exc.message)

    async def _start(self, branch: Branch, *, reason: str) -> None:
        started = trio.current_time()
        previous = branch.status
        branch.status = BranchStatus.STARTING
        self.events.publish("starting", branch.name, reason=reason)
        try:
            branch.address = await self.runtime.start(branch.name, self.storage.path(branch.name))
        except BaseException:
            branch.status = (
                previous if previous is not BranchStatus.RUNNING else BranchStatus.STOPPED
            )
            raise
        branch.status = BranchStatus.RUNNING
        branch.last_active_ts = time.time()
        await self.state.put(branch.record())
        self.events.publish("running", branch.name, reason=reason, duration_ms=_elapsed_ms(started))

    async def _stop(self, branch: Branch, *, reason: str) -> None:
        if self.runtime.address(branch.name) is None and branch.status is BranchStatus.STOPPED:
            return
        started = trio.current_time()
        branch.status = BranchStatus.STOPPING
        self.events.publish("stopping", branch.name, reason=reason)
        await self.runtime.stop(branch.name)
        branch.status, branch.address = BranchStatus.STOPPED, None
        await self.state.put(branch.record())
        self.events.publish("stopped", branch.name, reason=reason, duration_ms=_elapsed_ms(started))
