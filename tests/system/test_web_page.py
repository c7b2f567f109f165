"""The web page at ``/`` in a real headless Chromium: live table and feed, buttons, token prompt.

Each test saves a screenshot of the page as a test artifact:
``$PRISM_TEST_ARTIFACTS/web-page/<test name>.png``, where ``PRISM_TEST_ARTIFACTS`` defaults to
``test-artifacts/`` at the repository root (git ignores it; CI should keep it as an artifact).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from prism.core.values import HostPort
from prism.server import PrismServer
from tests.integration.harness import PrismHandle, free_port, fresh_dir, make_settings, psql
from tests.integration.production import production_server

from .chromium import Page, open_page

_REPO = Path(__file__).resolve().parents[2]
TOKEN = "page-s3cret"


def artifacts_dir() -> Path:
    return Path(os.environ.get("PRISM_TEST_ARTIFACTS", _REPO / "test-artifacts")) / "web-page"


def _row(name: str) -> str:
    selector = json.dumps(f'tr[data-branch="{name}"]')
    return f"document.querySelector({selector})"


def _status_is(name: str, status: str) -> str:
    return f'{_row(name)}?.dataset.status === "{status}"'


def _feed_has(text: str) -> str:
    feed = '[...document.querySelectorAll("#events li")]'
    return f"{feed}.some((li) => li.textContent.includes({json.dumps(text)}))"


_LIVE = 'document.querySelector("#link").dataset.state === "live"'
_MESSAGE = 'document.querySelector("#message").textContent'


Runner = Callable[..., AbstractAsyncContextManager[PrismHandle]]


@pytest.fixture
async def running() -> AsyncIterator[Runner]:
    """``async with running(**settings) as prism``: a real Prism in a fresh data dir."""
    made: list[Path] = []

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[PrismHandle]:
        data_dir = fresh_dir("web-")
        made.append(data_dir)
        async with trio.open_nursery() as nursery:
            settings = make_settings(data_dir, **overrides)
            info = await nursery.start(PrismServer(settings).run)
            yield PrismHandle(info, settings)
            nursery.cancel_scope.cancel()

    yield run
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A tab in a fresh headless Chromium."""
    workdir = fresh_dir("chromium-")
    try:
        async with open_page(workdir) as tab:
            yield tab
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@asynccontextmanager
async def screenshot_at_end(page: Page, request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Save the page as the test leaves this block, passed or failed, while Prism still runs."""
    try:
        yield
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await page.screenshot(artifacts_dir() / f"{request.node.name}.png")


async def test_page_shows_branches_live_and_its_reset_button_resets_the_branch(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    async with (
        running() as prism,
        httpx.AsyncClient(base_url=prism.info.api_url) as http,
        screenshot_at_end(page, request),
    ):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        assert (
            await page.evaluate(f'{_row("main")}.querySelector("[data-field=parent]").textContent')
            == "—"
        )

        await page.evaluate("window.notReloaded = true")
        response = await http.post("/api/v1/branches", json={"name": "from-api"})
        assert response.status_code == 201
        await page.wait_until(_status_is("from-api", "running"))
        assert await page.evaluate("window.notReloaded") is True  # it came over the socket

        await psql(prism.dsn("postgres@from-api"), "CREATE TABLE scratch (x int)")
        await page.click('tr[data-branch="from-api"] button[data-action="reset"]')
        await page.wait_until(f'{_MESSAGE} === "reset from-api: done"')
        await page.wait_until(_feed_has("reset from-api parent=main"))
        await page.wait_until(_status_is("from-api", "running"))
        assert page.dialogs == ["Reset from-api? Its changes will be thrown away."]
        gone = await psql(prism.dsn("postgres@from-api"), "SELECT to_regclass('scratch') IS NULL")
        assert gone.stdout.decode().strip() == "t"
        assert page.errors == []


async def test_page_buttons_create_stop_delete_and_undelete_a_branch(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")

        await page.type_into("#create-name", "from-page")
        await page.click('#create-form button[type="submit"]')
        await page.wait_until(_status_is("from-page", "running"))
        assert prism.manager.get("from-page").parent == "main"

        await page.click('tr[data-branch="from-page"] button[data-action="stop"]')
        await page.wait_until(_status_is("from-page", "stopped"))
        assert prism.manager.runtime.address("from-page") is None

        await page.click('tr[data-branch="from-page"] button[data-action="reset"]')
        await page.wait_until(f'{_MESSAGE} === "reset from-page: done"')
        assert await page.evaluate(f"{_row('from-page')}.dataset.status") == "stopped"

        await page.click('tr[data-branch="from-page"] button[data-action="delete"]')
        await page.wait_until(f"{_row('from-page')} === null")
        assert prism.manager.get("from-page") is None
        assert page.dialogs == [
            "Reset from-page? Its changes will be thrown away.",
            "Delete branch from-page? It is kept in the trash for the undelete window.",
        ]

        # The trash lists it; its undelete button brings it back, stopped.
        trashed = 'tr[data-trashed="from-page"]'
        await page.wait_until(f"document.querySelector({json.dumps(trashed)}) !== null")
        await page.click(f'{trashed} button[data-action="undelete"]')
        await page.wait_until(
            f"{_status_is('from-page', 'stopped')} && {_MESSAGE} === 'undeleted from-page'"
        )
        await page.wait_until(f"document.querySelector({json.dumps(trashed)}) === null")
        assert prism.manager.require("from-page").parent == "main"
        assert page.errors == []


async def test_page_creates_a_branch_as_of_a_time_and_shows_a_refusal(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    async with running(snapshot_every=3600.0) as prism, screenshot_at_end(page, request):
        async with prism.manager.events.subscribe() as events:
            if not prism.manager.point_in_time.snapshots():
                with trio.fail_after(120):
                    async for event in events:
                        if event["type"] == "snapshot_taken":
                            break
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")

        await page.type_into("#create-name", "long-ago")
        await page.type_into("#create-at", "-30d")
        await page.click('#create-form button[type="submit"]')
        await page.wait_until(f"{_MESSAGE}.includes('outside the point-in-time window of main')")
        assert prism.manager.get("long-ago") is None

        await psql(prism.dsn(), "CREATE TABLE before_now (x int)")
        await page.evaluate('document.querySelector("#create-name").value = ""')
        await page.evaluate('document.querySelector("#create-at").value = ""')
        await page.type_into("#create-name", "as-of-now")
        await page.type_into("#create-at", "-0s")
        await page.click('#create-form button[type="submit"]')
        await page.wait_until(_status_is("as-of-now", "running"))
        found = await psql(prism.dsn("postgres@as-of-now"), "SELECT to_regclass('before_now')")
        assert found.stdout.decode().strip() == "before_now"
        assert page.errors == []


async def test_page_shows_the_source_of_main_and_when_it_is_gone(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    source = 'document.querySelector("#source")'
    async with (
        production_server() as production,
        running(source=production.source()) as prism,
        screenshot_at_end(page, request),
    ):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f'{_LIVE} && {source}.dataset.state === "streaming"')
        assert (await page.evaluate(f"{source}.textContent")).startswith("source: streaming")
        await production.stop()
        # From the "source" event: main's walreceiver lost the source.
        await page.wait_until(f'{source}.dataset.state === "disconnected"')
        assert page.errors == []


async def test_page_without_a_source_shows_none(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        assert await page.evaluate('document.querySelector("#source").hidden') is True


async def test_page_warns_only_where_the_branch_sandbox_is_not_enforced(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    sandbox = 'document.querySelector("#sandbox")'
    async with running() as prism:
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        assert await page.evaluate(f"{sandbox}.hidden") is True
    async with running(branch_sandbox=False) as prism, screenshot_at_end(page, request):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && !{sandbox}.hidden")
        text = await page.evaluate(f"{sandbox}.textContent")
        assert "not enforced" in text and "--branch-sandbox off" in text
        assert page.errors == []


async def test_page_reconnects_when_prism_comes_back(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    async with running() as first:
        await page.goto(first.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
    await page.wait_until('document.querySelector("#link").dataset.state === "closed"')
    await trio.sleep(2)  # the page's first retries find nobody there
    again = HostPort(*first.info.api)
    async with running(api=again) as second, screenshot_at_end(page, request):
        await second.manager.create("after-restart")
        await page.wait_until(f"{_LIVE} && {_status_is('after-restart', 'running')}")
        assert page.errors == []


async def test_page_that_falls_behind_is_told_and_resubscribes(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    async with running(event_buffer=4) as prism, screenshot_at_end(page, request):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        for n in range(20):  # all at once: more than the page's buffer of 4
            prism.manager.events.publish("probe", None, n=n)
        await page.wait_until(_feed_has("overflow"))
        await prism.manager.create("after-overflow")
        await page.wait_until(f"{_LIVE} && {_status_is('after-overflow', 'running')}")
        assert await page.evaluate('document.querySelector("#events li.error") !== null')
        assert page.errors == []


async def test_a_click_survives_live_updates_of_the_table(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    """On a busy Prism events arrive all the time; a button must not vanish under the mouse."""
    async with running() as prism, screenshot_at_end(page, request):
        await prism.manager.create("busy")
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('busy', 'running')}")
        stop = 'tr[data-branch="busy"] button[data-action="stop"]'
        await page.press(stop)
        session = await prism.manager.admit("main", "127.0.0.1:1")  # the table changes meanwhile
        await page.wait_until(
            f'{_row("main")}.querySelector("[data-field=connections]").textContent === "1"'
        )
        await page.release(stop)
        await page.wait_until(_status_is("busy", "stopped"))
        prism.manager.connection_closed(session)
        assert page.errors == []


async def test_page_of_a_prism_with_a_token_asks_once_then_works(
    running: Runner, page: Page, request: pytest.FixtureRequest
) -> None:
    async with running(api_token=TOKEN) as prism, screenshot_at_end(page, request):
        await page.goto(prism.info.api_url + "/")
        await page.wait_until('!document.querySelector("#token-form").hidden')
        assert await page.evaluate(_row("main")) is None  # nothing shown without the token

        await page.type_into("#token", TOKEN)
        await page.click('#token-form button[type="submit"]')
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        assert await page.evaluate('document.querySelector("#token-form").hidden') is True

        await page.reload()  # the page remembers the token: it does not ask again
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        assert await page.evaluate('document.querySelector("#token-form").hidden') is True

        await page.click('tr[data-branch="main"] button[data-action="stop"]')
        await page.wait_until(_status_is("main", "stopped"))
        assert page.errors == []


async def test_page_shows_the_base_backup_of_main_as_a_bar_on_its_row(
    page: Page, request: pytest.FixtureRequest
) -> None:
    data_dir = fresh_dir("web-")
    api_port = free_port()
    status = f'{_row("main")}?.querySelector("td[data-field=status]")'
    bar = f"{status}?.querySelector('progress')"
    try:
        async with production_server() as production, trio.open_nursery() as nursery:
            settings = make_settings(
                data_dir,
                source=production.source(),
                source_max_rate=await production.max_rate_for(8),
                api=HostPort("127.0.0.1", api_port),
            )
            # Not nursery.start: Prism is "started" once main is whole, and the page is for
            # before that.
            nursery.start_soon(PrismServer(settings).run)
            url = f"http://127.0.0.1:{api_port}/"
            async with httpx.AsyncClient() as http:
                with trio.fail_after(30):
                    while True:
                        try:
                            await http.get(url + "healthz")
                            break
                        except httpx.TransportError:
                            await trio.sleep(0.1)
            async with screenshot_at_end(page, request):
                await page.goto(url)
                await page.wait_until(
                    f"{_LIVE} && {_status_is('main', 'backing_up')} && {bar}?.value > 0"
                )
                assert await page.evaluate(f"{bar}.value < 100") is True
                text = await page.evaluate(f"{status}.textContent")
                assert re.fullmatch(r"backing_up \d+%(, \d+ s left)?", text), text
                assert "of" in await page.evaluate(f"{bar}.title")
                await page.screenshot(artifacts_dir() / f"{request.node.name}-backing-up.png")
                # Main's row turns running and the bar goes when the backup is done.
                await page.wait_until(f"{_status_is('main', 'running')} && !{bar}")
                assert page.errors == []
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
