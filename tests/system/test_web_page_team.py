"""The page's team features in a real headless Chromium: the tree, every control, the copy
button's clipboard, recent events, sparklines, disk use, the diff view, and staying responsive
with 200 branches and 50 events a second. Screenshots are kept as in test_web_page."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio

from tests.integration.harness import PrismHandle, psql

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


PageWith = Callable[[str], AbstractAsyncContextManager[PrismHandle]]


@pytest.fixture
def page_with(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> PageWith:
    """``async with page_with(branch) as prism``: a Prism with ``branch`` made, the page open
    and live once it runs; a screenshot at the end, passed or failed."""

    @asynccontextmanager
    async def opened(branch: str) -> AsyncIterator[PrismHandle]:
        async with running() as prism, screenshot_at_end(page, request):
            await prism.manager.create(branch)
            await _open(page, prism.info.api_url, branch)
            yield prism

    return opened


async def _set_expiry(page: Page, branch: str, ttl: str) -> None:  # noqa: F811
    await page.type_into(_in_row(branch, '[data-input="ttl"]'), ttl)
    await page.click(_in_row(branch, '[data-action="expire"]'))


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
    page: Page,  # noqa: F811
    page_with: PageWith,
) -> None:
    async with page_with("guarded") as prism:
        await page.wait_until(f'{_cell("main", "protected")}.querySelector("input").checked')

        await page.click(_in_row("guarded", '[data-action="protect"]'))
        await page.wait_until(f'{_MESSAGE} === "protected guarded"')
        assert prism.manager.policy("guarded").protected
        await page.wait_until(f'{_row("guarded")}.querySelector("[data-action=delete]").disabled')
        await page.click(_in_row("guarded", '[data-action="protect"]'))
        await page.wait_until(f'{_MESSAGE} === "unprotected guarded"')
        assert not prism.manager.policy("guarded").protected

        await _set_expiry(page, "guarded", "72h")
        await page.wait_until(f'{_cell("guarded", "expires")}.textContent.includes("in 3d")')
        assert prism.manager.policy("guarded").expires_at is not None
        await _set_expiry(page, "guarded", "never")
        await page.wait_until(f'{_MESSAGE} === "guarded never expires"')
        assert prism.manager.policy("guarded").expires_at is None

        await _set_expiry(page, "guarded", "soon")
        await page.wait_until(f'{_MESSAGE}.startsWith("expire guarded: ")')
        assert page.errors == []


async def test_copy_button_puts_the_connection_string_on_the_clipboard(
    page: Page,  # noqa: F811
    page_with: PageWith,
) -> None:
    async with page_with("copied") as prism:
        await page.grant(prism.info.api_url, "clipboardReadWrite", "clipboardSanitizedWrite")
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


# In the page: how many events were applied and how many redraws ran, and for each event how
# long after Prism published it (browser and Prism share the machine's clock: reported, not
# asserted, as on a loaded machine it measures the scheduler as much as the page).
_PROBE = """(() => {
    const probe = { lag: [], apply: 0, draw: 0 };
    const original = { apply: window.apply, draw: window.draw };
    window.apply = (event) => {
        try { return original.apply(event); } finally {
            probe.apply += 1;
            if (event.at) probe.lag.push(Date.now() - Date.parse(event.at));
        }
    };
    window.draw = (...args) => { probe.draw += 1; return original.draw(...args); };
    window.probe = probe;
})()"""

# The page's budget: CPU time its JavaScript spends per event. Rendering (style, layout,
# paint) is not in it: that is done once per frame, and the browser makes as many frames as
# the machine allows, so its cost per event is higher on an idle machine than on a busy one.
# Script work happens per event, whatever the machine is doing. 5 ms is a quarter of what 50
# events a second allow on one core; a page over it spends a core on JavaScript alone and
# falls further behind with every event. The test prints what the page used.
_SCRIPT_PER_EVENT_MS = 5.0


async def _cpu_times(page: Page) -> tuple[float, float]:  # noqa: F811
    """Seconds of CPU the page's main thread has used in all and running JavaScript (thread
    time: not stretched when the machine is busy and the browser waits for a core, as
    wall-clock time would be)."""
    reply = await page.send("Performance.getMetrics")
    metrics = {metric["name"]: metric["value"] for metric in reply["metrics"]}
    return float(metrics["ThreadTime"]), float(metrics["ScriptDuration"])


async def _publish_at(bus: Any, events: list[tuple[str, str]], per_second: float) -> int:
    """Publish ``events`` on a fixed schedule (late ticks catch up, so the rate holds on a
    loaded machine); the seq of the last one."""
    started, seq = trio.current_time(), 0
    for index, (kind, name) in enumerate(events):
        await trio.sleep_until(started + index / per_second)
        seq = bus.publish(kind, name, client=f"127.0.0.1:{10000 + index}")["seq"]
    return seq


def _counted(events: list[tuple[str, str]]) -> dict[str, str]:
    """What the page must show after ``events``: sessions per branch, never below 0."""
    counts: dict[str, int] = {}
    for kind, name in events:
        now = counts.get(name, 0)
        counts[name] = now + 1 if kind == "connected" else max(0, now - 1)
    return {name: str(count) for name, count in counts.items()}


async def test_page_stays_responsive_with_200_branches_and_50_events_a_second(
    page: Page,  # noqa: F811
    page_with: PageWith,
) -> None:
    """Every event is rendered, a click in the middle of the load is handled, redraws are
    batched, and the page's script work per event stays within a CPU budget.

    The budget is CPU time, which a loaded CI machine does not inflate the way it inflates
    wall-clock durations (those include the time the browser waited for a core), so the
    check holds on a busy machine and still fails a page that cannot keep up.
    """
    async with page_with("real") as prism:
        await page.send("Performance.enable", timeDomain="threadTicks")
        bus = prism.manager.events
        names = [f"load-{n:03d}" for n in range(200)]
        # 200 branches as the page learns of them: from the event stream.
        for name in names:
            bus.publish("provisioning", name, parent="main")
            bus.publish("running", name, reason="create")
        await page.wait_until(
            'document.querySelectorAll("#branches tbody tr[data-status=running]").length === 202'
        )
        await page.evaluate(_PROBE)

        # 50 events a second for 6 seconds, sessions opening on all 200 branches and closing
        # on half of them; a person clicks "stop" in the middle of it.
        load = [("connected", name) for name in names] + [
            ("disconnected", name) for name in names[:100]
        ]
        cpu_before, script_before = await _cpu_times(page)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_publish_at, bus, load[:150], 50)
            await trio.sleep(3)
            await page.click(_in_row("real", '[data-action="stop"]'))
        last_seq = await _publish_at(bus, load[150:], per_second=50)
        await page.wait_until(f"window.probe.apply >= {len(load)}")
        cpu_after, script_after = await _cpu_times(page)
        cpu_used, script_used = cpu_after - cpu_before, script_after - script_before

        # Every event is rendered: each row's session count (once the last redraw, at most
        # 16 ms after the last event, has run), and the feed's last event.
        shown = (
            "Object.fromEntries([...document.querySelectorAll('#branches tbody tr')]"
            ".map((r) => [r.dataset.branch, r.querySelector('[data-field=connections]')"
            ".textContent]))"
        )
        expected = json.dumps(_counted(load))
        await page.wait_until(
            f"(() => {{ const shown = {shown}, expected = {expected};"
            " return Object.keys(expected).every((n) => shown[n] === expected[n]); })()"
        )
        await page.wait_until(f"document.querySelector('#events li[data-seq=\"{last_seq}\"]')")
        await page.wait_until(_status_is("real", "stopped"))  # the click was handled

        probe = await page.evaluate("window.probe")
        # Redraws are batched: far fewer than the events, each touching only changed rows.
        assert 0 < probe["draw"] < probe["apply"]
        per_event_ms = 1000 * script_used / probe["apply"]
        lag = sorted(probe["lag"])
        print(
            f"page main thread: {1000 * cpu_used:.0f} ms CPU in all, {1000 * script_used:.0f} "
            f"ms in script for {probe['apply']} events ({per_event_ms:.2f} ms each), "
            f"{probe['draw']} redraws; event-to-page lag median {lag[len(lag) // 2]} ms, "
            f"max {lag[-1]} ms"
        )
        assert per_event_ms <= _SCRIPT_PER_EVENT_MS, (
            f"the page's script used {per_event_ms:.1f} ms of CPU per event; the budget is "
            f"{_SCRIPT_PER_EVENT_MS:g} ms"
        )
        assert page.errors == []
