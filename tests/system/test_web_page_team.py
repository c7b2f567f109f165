"""The page's team features in a real headless Chromium: the tree, every control, the copy
button's clipboard, recent events, sparklines, disk use, the diff view, and staying responsive
with 200 branches and 50 events a second. Screenshots are kept as in test_web_page."""

from __future__ import annotations

import json

import pytest
import trio

from tests.integration.harness import psql

from .chromium import Page
from .test_web_page import (  # noqa: F401 (fixtures)
    _LIVE,
    _MESSAGE,
    Runner,
    _feed_has,
    _row,
    _status_is,
    page,
    running,
    screenshot_at_end,
)


def _cell(name: str, field: str) -> str:
    return f"{_row(name)}.querySelector({json.dumps(f'[data-field={field}]')})"


def _in_row(name: str, selector: str) -> str:
    return f'tr[data-branch="{name}"] {selector}'


async def _open(page: Page, url: str, ready: str = "main") -> None:  # noqa: F811
    await page.goto(url + "/")
    await page.wait_until(f"{_LIVE} && {_status_is(ready, 'running')}")


async def test_tree_follows_creates_and_deletes_from_the_api_and_collapses(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        await _open(page, prism.info.api_url)
        await prism.manager.create("alpha")
        await prism.manager.create("alpha-child", "alpha")
        await prism.manager.create("beta")
        await page.wait_until(_status_is("alpha-child", "running"))
        order = await page.evaluate(
            '[...document.querySelectorAll("#branches tbody tr")]'
            ".map((r) => `${r.dataset.branch}:${r.dataset.depth}`)"
        )
        assert order == ["main:0", "alpha:1", "alpha-child:2", "beta:1"]

        await page.click(_in_row("alpha", "button.toggle"))
        await page.wait_until(f"{_row('alpha-child')}.hidden")
        await page.click(_in_row("alpha", "button.toggle"))
        await page.wait_until(f"!{_row('alpha-child')}.hidden")

        await prism.manager.delete("alpha", with_children=True)
        await page.wait_until(f"{_row('alpha')} === null && {_row('alpha-child')} === null")
        assert page.errors == []


async def test_protect_and_expiry_controls_change_the_branch(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        await prism.manager.create("guarded")
        await _open(page, prism.info.api_url, "guarded")
        await page.wait_until(f'{_cell("main", "protected")}.querySelector("input").checked')

        await page.click(_in_row("guarded", '[data-action="protect"]'))
        await page.wait_until(f'{_MESSAGE} === "protected guarded"')
        assert prism.manager.policy("guarded").protected
        await page.wait_until(f'{_row("guarded")}.querySelector("[data-action=delete]").disabled')
        await page.click(_in_row("guarded", '[data-action="protect"]'))
        await page.wait_until(f'{_MESSAGE} === "unprotected guarded"')
        assert not prism.manager.policy("guarded").protected

        await page.type_into(_in_row("guarded", '[data-input="ttl"]'), "72h")
        await page.click(_in_row("guarded", '[data-action="expire"]'))
        await page.wait_until(f'{_cell("guarded", "expires")}.textContent.includes("in 3d")')
        assert prism.manager.policy("guarded").expires_at is not None
        await page.type_into(_in_row("guarded", '[data-input="ttl"]'), "never")
        await page.click(_in_row("guarded", '[data-action="expire"]'))
        await page.wait_until(f'{_MESSAGE} === "guarded never expires"')
        assert prism.manager.policy("guarded").expires_at is None

        await page.type_into(_in_row("guarded", '[data-input="ttl"]'), "soon")
        await page.click(_in_row("guarded", '[data-action="expire"]'))
        await page.wait_until(f'{_MESSAGE}.startsWith("expire guarded: ")')
        assert page.errors == []


async def test_copy_button_puts_the_connection_string_on_the_clipboard(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        await prism.manager.create("copied")
        await page.grant(prism.info.api_url, "clipboardReadWrite", "clipboardSanitizedWrite")
        await _open(page, prism.info.api_url, "copied")
        await page.wait_until(f'{_cell("copied", "connection")}.textContent.includes("%40")')
        await page.click(_in_row("copied", '[data-action="copy"]'))
        await page.wait_until(f'{_MESSAGE} === "copied connection string of copied"')
        pasted = await page.evaluate("navigator.clipboard.readText()")
        assert pasted == (
            f"postgresql://postgres%40copied@127.0.0.1:{prism.port}/postgres?sslmode=require"
        )
        # What was copied really connects.
        out = await psql(
            pasted.replace("sslmode=require", "sslmode=require&password=password"), "SELECT 1"
        )
        assert out.stdout.decode().strip() == "1"
        assert page.errors == []


async def test_recent_events_sparkline_disk_and_diff_view(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        await psql(prism.dsn("postgres@busy"), "CREATE TABLE widgets (id int, label text)")
        await _open(page, prism.info.api_url, "busy")
        # History from before the page was opened: the ring of recent events.
        await page.wait_until(_feed_has("created busy "))
        await page.wait_until(_feed_has("connected busy client="))
        # The session shows in busy's sparkline and the disk use is known (copy driver).
        await page.wait_until(
            f'{_cell("busy", "activity")}.title.startsWith("last hour: 1 sessions")'
        )
        assert (
            await page.evaluate(f'{_cell("busy", "activity")}.querySelectorAll("polyline").length')
            == 2
        )
        await page.wait_until(f"/MiB \\/ 0 B/.test({_cell('busy', 'disk')}.textContent)")
        await page.wait_until(
            'document.querySelector("#totals").textContent.includes("2 branches")'
        )

        await page.evaluate('document.querySelector("#diff-a").value = "busy"')
        await page.evaluate('document.querySelector("#diff-b").value = "main"')
        await page.click('#diff-form button[type="submit"]')
        await page.wait_until(
            'document.querySelector("#diff-output").textContent.includes("+ table public.widgets")'
        )
        assert await page.evaluate('document.querySelector("#diff-output .added") !== null')
        assert page.errors == []


async def test_page_stays_responsive_with_200_branches_and_50_events_a_second(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        await prism.manager.create("real")
        await _open(page, prism.info.api_url, "real")
        bus = prism.manager.events
        # 200 branches as the page learns of them: from the event stream.
        for n in range(200):
            bus.publish("provisioning", f"load-{n:03d}", parent="main")
            bus.publish("running", f"load-{n:03d}", reason="create")
        await page.wait_until('document.querySelectorAll("#branches tbody tr").length === 202')
        # Time the page's own work per event and per redraw, in the page. (Not the gaps between
        # timer ticks: on a loaded machine those measure the scheduler, not the page.)
        await page.evaluate(
            """(() => {
                window.work = { apply: [], draw: [] };
                for (const name of ["apply", "draw"]) {
                    const original = window[name];
                    window[name] = (...args) => {
                        const started = performance.now();
                        try { return original(...args); }
                        finally { window.work[name].push(performance.now() - started); }
                    };
                }
            })()"""
        )
        # 50 events a second for 6 seconds, sessions coming and going on the 200 branches.
        for tick in range(300):
            name = f"load-{tick % 200:03d}"
            kind = "connected" if tick % 2 == 0 else "disconnected"
            bus.publish(kind, name, client=f"127.0.0.1:{10000 + tick}")
            if tick == 150:
                # A person clicks in the middle of it: the click is handled.
                await page.click(_in_row("real", '[data-action="stop"]'))
            await trio.sleep(0.02)
        await page.wait_until(_status_is("real", "stopped"))
        work = await page.evaluate("window.work")
        assert len(work["apply"]) >= 300
        # Redraws are batched: far fewer than the events, each touching only changed rows.
        assert 0 < len(work["draw"]) < len(work["apply"])
        slowest = max(work["apply"] + work["draw"])
        # A person notices lag from about a tenth of a second; a whole redraw of 202 rows
        # takes ~30 ms on an idle 2-core machine. The bound leaves room for a machine shared
        # with other work (a time measure on a busy CPU includes time the page did not run).
        assert slowest < 250, f"one step of the page's work took {slowest:.0f} ms"
        assert page.errors == []
