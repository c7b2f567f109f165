"""The registry's one transition: a status and its event in the same step."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prism.branches.manager import BranchManager
from prism.branches.status import Branch, BranchRegistry, BranchStatus
from prism.core.address import BackendAddress
from prism.core.events import Event, EventBus
from tests.fakes import FakeRuntime, FakeStorage, InlineStateStore


def _registry() -> tuple[BranchRegistry, list[tuple[Event, BranchStatus | None]]]:
    events = EventBus()
    registry = BranchRegistry(events)
    seen: list[tuple[Event, BranchStatus | None]] = []

    def listener(event: Event) -> None:
        branch = registry.get(str(event["branch"]))
        seen.append((event, None if branch is None else branch.status))

    events.add_listener(listener)
    return registry, seen


def test_a_transition_publishes_its_event_with_the_status_already_in_place() -> None:
    registry, seen = _registry()
    branch = Branch("dev", "main", datetime.now(UTC), BranchStatus.STOPPED)
    registry.add(branch)
    registry.transition(branch, BranchStatus.STARTING, "starting", reason="wake")
    [(event, status)] = seen
    assert (event["type"], event["reason"], status) == ("starting", "wake", BranchStatus.STARTING)


def test_a_transition_without_an_event_tells_nobody() -> None:
    registry, seen = _registry()
    branch = Branch("dev", "main", datetime.now(UTC), BranchStatus.RESETTING)
    registry.add(branch)
    registry.transition(branch, BranchStatus.STOPPED)
    assert branch.status is BranchStatus.STOPPED
    assert seen == []


def test_the_address_changes_only_when_given() -> None:
    registry, _ = _registry()
    address = BackendAddress("127.0.0.1", 5433)
    branch = Branch("dev", "main", datetime.now(UTC), BranchStatus.STOPPED, address=address)
    registry.transition(branch, BranchStatus.STOPPING, "stopping")
    assert branch.address == address
    registry.transition(branch, BranchStatus.STOPPED, "stopped", address=None)
    assert branch.address is None


def test_the_manager_serves_from_the_registry_it_was_given_even_empty(tmp_path: Path) -> None:
    # The role store reads the same registry: a second one would leave it blind.
    registry = BranchRegistry(EventBus())
    state = InlineStateStore(tmp_path / "prism.db")
    try:
        manager = BranchManager(
            storage=FakeStorage(tmp_path / "data"),
            runtime=FakeRuntime(),
            state=state,
            events=EventBus(),
            superuser="postgres",
            password="secret",
            registry=registry,
        )
        branch = Branch("dev", "main", datetime.now(UTC), BranchStatus.STOPPED)
        registry.add(branch)
        assert manager.get("dev") is branch
    finally:
        state.close()
