"""Fixtures that run a real Prism (in-process, real Postgres servers) on free ports.

``initdb`` costs ~0.6 s, so one template ``master`` is made per test session and copied into each
test's data directory; the server then finds main on disk and registers it, exactly as it would
adopt a master made by hand.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from prism.server import PrismServer

from .harness import PrismHandle, fresh_dir, make_settings
from .production import Production, production_server


@pytest.fixture(scope="session")
def template_master() -> Iterator[Path]:
    """A stopped, initdb'd main branch, made once per session by a real Prism server."""
    data_dir = fresh_dir("template-")

    async def make() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(PrismServer(make_settings(data_dir)).run)
            nursery.cancel_scope.cancel()

    trio.run(make)
    yield data_dir / "master"
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def data_dir(template_master: Path) -> Iterator[Path]:
    """A fresh data directory holding a copy of the template main branch."""
    path = fresh_dir("data-")
    subprocess.run(["cp", "-a", str(template_master), str(path / "master")], check=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def empty_data_dir() -> Iterator[Path]:
    """A second, empty data directory (for ``start_prism(data_dir=...)``).

    Request it before ``start_prism`` so that it is removed after that Prism has stopped.
    """
    path = fresh_dir("empty-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def start_prism(data_dir: Path) -> AsyncIterator[Any]:
    """``await start_prism(**settings)`` → a running ``PrismHandle``; all stop at test end."""
    async with trio.open_nursery() as nursery:

        async def start(**overrides: Any) -> PrismHandle:
            settings = make_settings(overrides.pop("data_dir", data_dir), **overrides)
            info = await nursery.start(PrismServer(settings).run)
            return PrismHandle(info, settings)

        yield start
        nursery.cancel_scope.cancel()


@pytest.fixture
async def prism(start_prism: Any) -> PrismHandle:
    handle: PrismHandle = await start_prism()
    return handle


@pytest.fixture
async def production() -> AsyncIterator[Production]:
    """A running production-like source server (``--source`` tests)."""
    async with production_server() as server:
        yield server
