"""The web page with --source-mode dump: each branch shows the generation of main it holds."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.production import production_server

from .chromium import Page
from .test_web_page import (  # noqa: F401 (fixtures)
    _LIVE,
    Runner,
    _row,
    _status_is,
    page,
    running,
    screenshot_at_end,
)


def _generation(name: str) -> str:
    return f'{_row(name)}?.querySelector("[data-field=name] .generation").textContent'


async def test_page_labels_each_branch_with_its_generation_and_follows_a_refresh(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    async with (
        production_server(replication=False) as managed,
        running(source=managed.app_source(), source_mode="dump") as prism,
        httpx.AsyncClient(base_url=prism.info.api_url, timeout=120) as http,
        screenshot_at_end(page, request),
    ):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        await page.wait_until(f'{_generation("main")} === "gen 1"')
        assert (await http.post("/api/v1/branches", json={"name": "b1"})).status_code == 201
        await page.wait_until(f'{_generation("b1")} === "gen 1"')

        assert (await http.post("/api/v1/branches/main/refresh")).status_code == 200
        # From the refresh_done event: main moves on, b1 keeps its generation.
        await page.wait_until(f'{_generation("main")} === "gen 2"')
        assert await page.evaluate(_generation("b1")) == "gen 1"
        title = await page.evaluate(
            f'{_row("main")}.querySelector("[data-field=name] .generation").title'
        )
        assert title.startswith("dump taken 20")
        # The label sits beside the name; the name itself is unchanged.
        label = await page.evaluate(
            f'{_row("b1")}.querySelector("[data-field=name] .label").textContent'
        )
        assert label == "b1"
        assert page.errors == []
