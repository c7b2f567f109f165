"""The page shows a branch whose server does not serve: a frozen main turns ``unhealthy`` on
its row, with a "why" that opens its reason and server log, and ``running`` again once it
thaws; a page loaded meanwhile shows it from the snapshot. Screenshots are kept as in
test_web_page."""

from __future__ import annotations

import pytest

from tests.integration.harness import frozen

from .chromium import Page
from .test_web_page import (  # noqa: F401 (fixtures)
    _LIVE,
    Runner,
    _feed_has,
    _row,
    _status_is,
    artifacts_dir,
    page,
    running,
    screenshot_at_end,
)

_STATUS = f'{_row("main")}.querySelector("td[data-field=status]")'
_WHY = f'{_STATUS}.querySelector("details.trouble")'
_UNHEALTHY = f"{_status_is('main', 'unhealthy')} && {_WHY} !== null"
_RUNNING = f"{_status_is('main', 'running')} && {_WHY} === null"


async def test_page_shows_a_frozen_main_unhealthy_with_its_log_until_it_serves(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    async with running(health_interval=0.25) as prism, screenshot_at_end(page, request):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        with frozen(prism.manager, "main"):
            await page.wait_until(_UNHEALTHY)
            await page.click('tr[data-branch="main"] details.trouble summary')
            text = await page.evaluate(f'{_WHY}.querySelector("pre").textContent')
            assert text.startswith("its server does not answer"), text
            assert "database system is ready to accept connections" in text  # the log
            assert await page.evaluate(f"{_WHY}.open") is True
            await page.wait_until(_feed_has("unhealthy main error=its server does not answer"))
            assert await page.evaluate(f"getComputedStyle({_STATUS}).color") == "rgb(187, 0, 0)"
            await page.screenshot(artifacts_dir() / f"{request.node.name}-unhealthy.png")
        await page.wait_until(_RUNNING)
        await page.wait_until(_feed_has("running main reason=recovered"))
        assert page.errors == []


async def test_page_loaded_while_main_is_unwell_shows_why_from_the_snapshot(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    async with running(health_interval=0.25) as prism, screenshot_at_end(page, request):
        async with prism.manager.events.subscribe() as events:
            with frozen(prism.manager, "main"):
                async for event in events:
                    if event["type"] == "unhealthy":
                        break
                await page.goto(prism.info.api_url + "/")
                await page.wait_until(f"{_LIVE} && {_UNHEALTHY}")
                assert "does not answer" in await page.evaluate(f"{_WHY}.title")
        await page.wait_until(_RUNNING)
        assert page.errors == []
