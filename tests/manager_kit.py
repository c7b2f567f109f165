"""A BranchManager over in-memory drivers and a real (temporary) state file, for the unit tier."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

from prism.branches.capacity import Caps
from prism.branches.deletion import UNDELETE_WINDOW
from prism.branches.health import Prober
from prism.branches.manager import BranchManager
from prism.core.events import EventBus
from prism.durable.state import utcnow
from prism.runtime.base import ServerExtrasSource
from prism.storage.budget import DiskBudget
from tests.fakes import FakeRuntime, FakeStorage, InlineStateStore


@asynccontextmanager
async def open_manager(
    tmp_path: Path,
    *,
    storage: FakeStorage | None = None,
    runtime: FakeRuntime | None = None,
    slow: bool = False,
    max_branches: int = 0,
    max_running: int = 0,
    server_extras: ServerExtrasSource | None = None,
    probe: Prober | None = None,
    undelete_window: float = UNDELETE_WINDOW,
    clock: Callable[[], datetime] = utcnow,
    budget: DiskBudget | None = None,
) -> AsyncIterator[tuple[BranchManager, FakeStorage, FakeRuntime]]:
    """An opened manager (main created and running) and its drivers; closed on the way out.

    ``slow`` drivers take a moment (in Trio time) to clone and start: where an ``await`` between
    a check and its reservation would let other tasks through.
    """
    storage = storage or FakeStorage(tmp_path / "data", delay=1.0 if slow else 0.0)
    runtime = runtime or FakeRuntime(delay=0.5 if slow else 0.0)
    state = InlineStateStore(tmp_path / "prism.db")
    manager = BranchManager(
        storage=storage,
        runtime=runtime,
        state=state,
        events=EventBus(),
        superuser="postgres",
        password="secret",
        caps=Caps(branches=max_branches, running=max_running),
        server_extras=server_extras,
        probe=probe,
        undelete_window=undelete_window,
        clock=clock,
        budget=budget,
    )
    try:
        await manager.open()
        yield manager, storage, runtime
    finally:
        runtime.fail.clear()
        storage.fail.clear()
        await manager.close()
        state.close()
