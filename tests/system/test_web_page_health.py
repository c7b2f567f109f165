"""The page shows a branch whose server does not serve: a frozen main turns ``unhealthy`` on
its row, with a "why" that opens its reason and server log, and ``running`` again once it
thaws. Screenshots are kept as in test_web_page."""

from __future__ import annotations

import os
import signal

import pytest

from prism.runtime._postmaster import read_pidfile

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


async def test_page_shows_a_frozen_main_unhealthy_with_its_log_until_it_serves(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    why = f'{_row("main")}.querySelector("td[data-field=status] details.trouble")'
    async with running(health_interval=0.25) as prism, screenshot_at_end(page, request):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        pidfile = read_pidfile(prism.manager.storage.path("main"))
        assert pidfile is not None
        os.kill(pidfile.pid, signal.SIGSTOP)
        try:
            await page.wait_until(f"{_status_is('main', 'unhealthy')} && {why} !== null")
            await page.click('tr[data-branch="main"] details.trouble summary')
            text = await page.evaluate(f'{why}.querySelector("pre").textContent')
            assert text.startswith("its server does not answer"), text
            assert "database system is ready to accept connections" in text  # the log
            assert await page.evaluate(f"{why}.open") is True
            await page.wait_until(_feed_has("unhealthy main error=its server does not answer"))
            color = await page.evaluate(
                f'getComputedStyle({_row("main")}.querySelector("td[data-field=status]")).color'
            )
            assert color == "rgb(187, 0, 0)"
            await page.screenshot(artifacts_dir() / f"{request.node.name}-unhealthy.png")
        finally:
            os.kill(pidfile.pid, signal.SIGCONT)
        await page.wait_until(f"{_status_is('main', 'running')} && {why} === null")
        await page.wait_until(_feed_has("running main reason=recovered"))
        assert page.errors == []


async def test_page_loaded_while_main_is_unwell_shows_why_from_the_snapshot(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    why = f'{_row("main")}.querySelector("td[data-field=status] details.trouble")'
    async with running(health_interval=0.25) as prism, screenshot_at_end(page, request):
        pidfile = read_pidfile(prism.manager.storage.path("main"))
        assert pidfile is not None
        os.kill(pidfile.pid, signal.SIGSTOP)
        try:
            with_trouble = prism.manager.events.subscribe()
            async with with_trouble as events:
                async for event in events:
                    if event["type"] == "unhealthy":
                        break
            await page.goto(prism.info.api_url + "/")
            await page.wait_until(f"{_LIVE} && {_status_is('main', 'unhealthy')} && {why}")
            assert "does not answer" in await page.evaluate(f"{why}.title")
        finally:
            os.kill(pidfile.pid, signal.SIGCONT)
        await page.wait_until(f"{_status_is('main', 'running')} && {why} === null")
        assert page.errors == []
