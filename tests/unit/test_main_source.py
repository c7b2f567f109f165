"""How main is made and kept: one strategy per origin, chosen once from the settings, each
answering what ``prism.server`` used to decide by asking whether there is a source."""

from __future__ import annotations

import ast
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

import prism
from prism.core.address import BackendAddress
from prism.core.errors import ConfigError
from prism.core.events import EventBus
from prism.core.names import MAIN_BRANCH
from prism.core.settings import Settings
from prism.durable.journal import Journal
from prism.durable.state import Generation, utcnow
from prism.mainsource import MainHost, MainStrategy, open_main_source
from prism.mainsource.base import BranchMark
from prism.mainsource.generations import Generations
from prism.mainsource.initdb import InitdbMain
from prism.mainsource.standby import StandbyMain
from tests.fakes import FakeRuntime, FakeStorage, InlineStateStore
from tests.manager_kit import open_manager

PACKAGE = Path(prism.__file__).resolve().parent


@asynccontextmanager
async def _opened(tmp_path: Path, **settings: Any) -> AsyncIterator[MainStrategy]:
    """The strategy ``open_main_source`` picks for ``settings``, over the fake drivers."""
    state = InlineStateStore(tmp_path / "prism.db")
    try:
        yield await open_main_source(
            Settings(data_dir=tmp_path, **settings),
            tmp_path,
            storage=FakeStorage(tmp_path / "data"),
            runtime=FakeRuntime(),
            journal=Journal(state),
            events=EventBus(),
        )
    finally:
        state.close()


@dataclass
class _Mark:
    name: str
    generation: Generation | None = None


@dataclass
class _Host:
    """A ``MainHost`` of a few branches, main being made or running."""

    branches: dict[str, _Mark] = field(default_factory=dict)
    making: bool = False
    running: dict[str, BackendAddress] = field(default_factory=dict)
    opened: trio.Event = field(default_factory=trio.Event)
    asked: list[str] = field(default_factory=list)

    def get(self, name: str) -> BranchMark | None:
        return self.branches.get(name)

    def list(self) -> Sequence[BranchMark]:
        return list(self.branches.values())

    def address(self, name: str) -> BackendAddress | None:
        self.asked.append(name)
        return self.running.get(name)

    def making_main(self) -> bool:
        return self.making

    async def wait_opened(self) -> None:
        await self.opened.wait()

    async def replace_main(self, swap: Callable[[], Awaitable[None]], *, why: str) -> None:
        await swap()


# ---- the factory: one place decides ----------------------------------------------------------


async def test_without_a_source_main_is_an_initdb(tmp_path: Path) -> None:
    async with _opened(tmp_path) as strategy:
        assert isinstance(strategy, InitdbMain)


async def test_with_a_source_main_is_its_standby(tmp_path: Path) -> None:
    async with _opened(tmp_path, source="host=db user=app") as strategy:
        assert isinstance(strategy, StandbyMain)


async def test_with_a_source_in_dump_mode_main_is_generations_of_its_dump(tmp_path: Path) -> None:
    async with _opened(tmp_path, source="host=db", source_mode="dump", refresh_every=60) as made:
        assert isinstance(made, Generations)
        assert made.refresh_every == 60


async def test_dump_mode_without_a_source_is_refused_before_anything_is_made(
    tmp_path: Path,
) -> None:
    # Both runtimes dump (the docker one in containers of its images); only a missing source
    # is refused.
    with pytest.raises(ConfigError, match="needs a source to dump") as caught:
        async with _opened(tmp_path, source_mode="dump", runtime="docker"):
            pass
    assert caught.value.hint == "give --source CONNINFO"


# ---- each strategy's answers ------------------------------------------------------------------


async def test_an_initdb_main_is_made_before_serving_with_the_password_prism_set(
    tmp_path: Path,
) -> None:
    async with _opened(tmp_path, password="s3cret") as strategy:
        assert strategy.superuser_password == "s3cret"
        assert not strategy.serve_early
        assert strategy.keeps_history
        assert strategy.recovery_owners() == []
        assert strategy.health(_Host()) is None
        assert strategy.origin.how == "initdb"
        assert not strategy.origin.long
        assert strategy.origin.refresh is None
        assert strategy.origin.progress() == "Prism is creating it (initdb)"


async def test_a_standby_is_served_early_and_prism_knows_no_password_of_it(
    tmp_path: Path,
) -> None:
    async with _opened(tmp_path, source="host=db user=app") as strategy:
        assert strategy.superuser_password is None  # main has the source's roles
        assert strategy.serve_early  # a base backup may take hours
        assert strategy.keeps_history
        assert [owner.name for owner in strategy.recovery_owners()] == ["source"]
        assert strategy.followers().after_clone == ()
        assert strategy.origin.long
        assert strategy.origin.refresh is None
        assert strategy.origin.progress() == "Prism is starting a base backup of the source"


async def test_generations_are_made_before_serving_and_end_main_s_history(
    tmp_path: Path,
) -> None:
    async with _opened(tmp_path, source="host=db", source_mode="dump", password="pw") as strategy:
        assert strategy.superuser_password == "pw"  # each generation is Prism's initdb
        assert not strategy.serve_early
        assert not strategy.keeps_history  # each generation is a new cluster
        assert [owner.name for owner in strategy.recovery_owners()] == ["source", "generations"]
        assert strategy.health(_Host()) is None
        assert strategy.origin.long
        assert strategy.origin.refresh is not None
        assert len(strategy.followers().after_clone) == 1


# ---- health and keeping ------------------------------------------------------------------------


async def test_a_standby_reports_its_backup_while_main_is_made_then_asks_main(
    tmp_path: Path,
) -> None:
    async with _opened(tmp_path, source="host=db user=app") as strategy:
        host = _Host(making=True)
        read = strategy.health(host)
        assert read is not None
        assert (await read())["state"] == "backing_up"
        assert host.asked == []  # nothing asked of a main being made
        host.making = False
        # Main made but not running (yet): it cannot be asked, so it is not streaming.
        assert (await read())["state"] == "disconnected"
        assert host.asked == [MAIN_BRANCH]


async def test_a_standby_watches_the_source_only_once_main_is_open(tmp_path: Path) -> None:
    async with _opened(tmp_path, source="host=db user=app") as strategy:
        host = _Host()
        async with trio.open_nursery() as nursery:
            await nursery.start(strategy.keep, host)
            await trio.testing.wait_all_tasks_blocked()
            assert host.asked == []
            host.opened.set()
            await trio.testing.wait_all_tasks_blocked()
            assert host.asked[:1] == [MAIN_BRANCH]
            nursery.cancel_scope.cancel()


async def test_generations_mark_every_branch_and_each_clone_with_the_one_it_holds(
    tmp_path: Path,
) -> None:
    async with _opened(tmp_path, source="host=db", source_mode="dump") as strategy:
        assert isinstance(strategy, Generations)
        first = Generation(1, utcnow())
        await strategy.store.put(MAIN_BRANCH, first)
        host = _Host({name: _Mark(name) for name in (MAIN_BRANCH, "dev", "feat")})
        async with trio.open_nursery() as nursery:
            await nursery.start(strategy.keep, host)
            assert host.branches[MAIN_BRANCH].generation == first
            assert host.branches["dev"].generation is None
            (inherit,) = strategy.followers().after_clone
            await inherit(MAIN_BRANCH, "feat")
            assert host.branches["feat"].generation == first
            assert strategy.store.known["feat"] == first
            nursery.cancel_scope.cancel()


async def test_the_manager_is_a_main_host_and_knows_when_main_is_made(tmp_path: Path) -> None:
    async with open_manager(tmp_path) as (manager, _, _):
        host: MainHost = manager  # by shape: the strategies never import the manager
        assert not host.making_main()
        with trio.fail_after(1):
            await host.wait_opened()


# ---- layering ---------------------------------------------------------------------------------


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("package", ["mainsource", "source"])
def test_main_s_origins_import_nothing_of_the_branches_above_them(package: str) -> None:
    # The manager and its parts (prism.branches.manager, prism.branches.data, ...), and what wires
    # it.
    above = re.compile(r"prism\.(branch\w*|server|api|proxy)(\.|$)")
    reached = {
        (path.name, module)
        for path in sorted((PACKAGE / package).rglob("*.py"))
        for module in _imported(path)
        if above.match(module)
    }
    assert reached == set()


def test_one_module_writes_a_data_directory_s_server_configuration() -> None:
    writers = {
        path.name
        for path in PACKAGE.rglob("*.py")
        if any(
            name in path.read_text(encoding="utf-8")
            for name in ('"standby.signal"', '"recovery.signal"', '"postgresql.auto.conf"')
        )
    }
    assert writers == {"serverconf.py"}
