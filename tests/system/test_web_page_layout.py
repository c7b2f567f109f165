"""The page people keep open, in a real headless Chromium: a layout that holds at 1280 and 1920
px with 50 branches of 63-character names, the detail panel, the Connect dialog (whose URI
connects), folded and filtered events, and a first view that is never blank.

Screenshots are kept as in test_web_page (``$PRISM_TEST_ARTIFACTS/web-page/``).
"""

from __future__ import annotations

import json

import httpx
import psycopg
import pytest
import trio

from tests.integration.harness import PASSWORD, PrismHandle, psql

from .chromium import Page
from .test_web_page import (  # noqa: F401 (fixtures)
    _LIVE,
    _MESSAGE,
    Runner,
    _feed_has,
    _row,
    _status_is,
    artifacts_dir,
    page,
    running,
    screenshot_at_end,
)


def _who_am_i(dsn: str) -> tuple[object, ...] | None:
    """Connect with psycopg (blocking: run it in a thread) and ask who we are."""
    with psycopg.connect(dsn, connect_timeout=10) as connection:
        return connection.execute("SELECT current_user, 1").fetchone()


def _long(stem: str) -> str:
    """A branch name of the longest length Prism allows (63 characters)."""
    return (stem + "-" + "x" * 63)[:63]


# Real branches (each a postgres server) are few, to spare the machine; the rest of the 50 rows
# come over the daemon's own event stream, as the page learns of any branch (the responsiveness
# test in test_web_page_team does the same for 200).
_REAL = [_long("alpha-the-team-shares-this-long-named-branch"), _long("beta-child-of-alpha")]
_PUBLISHED = [_long(f"load-{n:02d}") for n in range(48)]

_NO_HORIZONTAL_SCROLL = (
    "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
)
# Every button of every row (actions, connection, expiry) can be seen whole: scrolled to, it is
# what the window shows at its middle, and it lies inside the window and its cell (not cut off).
_ACTIONS_VISIBLE = """(() => {
    const buttons = [...document.querySelectorAll("#branches tbody td.actions button,"
        + " #branches tbody td[data-field=connection] button,"
        + " #branches tbody td[data-field=expires] button")];
    const hidden = buttons.filter((b) => {
        b.scrollIntoView({block: "center"});
        const box = b.getBoundingClientRect(), cell = b.parentElement.getBoundingClientRect();
        const content = cell.right - parseFloat(getComputedStyle(b.parentElement).paddingRight);
        const seen = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
        return !(box.width > 0 && box.right <= window.innerWidth && box.right <= content + 0.5
            && cell.right <= document.documentElement.clientWidth && seen === b);
    });
    window.scrollTo(0, 0);
    const named = hidden.map((b) => `${b.closest("tr").dataset.branch}:${b.dataset.action}`);
    return buttons.length >= 300 ? named : ["few"];
})()"""
# Every name is set to end in an ellipsis where it does not fit, with the whole name on hover,
# and stays inside its cell; the answer is how many were cut.
_NAMES_CUT = """(() => {
    const labels = [...document.querySelectorAll("#branches tbody td[data-field=name] .label")];
    const ok = labels.every((l) => getComputedStyle(l).textOverflow === "ellipsis"
        && l.title.startsWith(l.textContent)
        && l.getBoundingClientRect().right <= l.closest("td").getBoundingClientRect().right);
    return ok ? labels.filter((l) => l.scrollWidth > l.clientWidth).length : -1;
})()"""


async def _with_fifty_branches(prism: PrismHandle, page: Page) -> None:  # noqa: F811
    await prism.manager.create(_REAL[0])
    await prism.manager.create(_REAL[1], _REAL[0])
    await page.goto(prism.info.api_url + "/")
    await page.wait_until(f"{_LIVE} && {_status_is(_REAL[1], 'running')}")
    bus = prism.manager.events
    for name in _PUBLISHED:
        bus.publish("provisioning", name, parent=_REAL[0])
        bus.publish("running", name, reason="create")
    await page.wait_until('document.querySelectorAll("#branches tbody tr").length === 51')


async def _set_width(page: Page, width: int, height: int = 900) -> None:  # noqa: F811
    await page.send(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )


@pytest.mark.parametrize("width", [1280, 1920])
async def test_layout_holds_fifty_branches_with_63_character_names(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
    width: int,
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        await _set_width(page, width)
        await _with_fifty_branches(prism, page)
        await page.wait_until(
            f'{_row(_REAL[0])}.querySelector("[data-field=connection] code")'
            '.textContent.includes("%40")'
        )
        assert await page.evaluate(_NO_HORIZONTAL_SCROLL), await page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert await page.evaluate(_ACTIONS_VISIBLE) == []
        cut = await page.evaluate(_NAMES_CUT)
        assert cut >= 0
        if width == 1280:
            assert cut > 0  # 63 characters do not fit beside the other columns at 1280 px
        # The events column shares the page and stays in it.
        right = await page.evaluate(
            'document.querySelector("#events").getBoundingClientRect().right'
        )
        assert right <= width
        parent = f'{_row(_REAL[1])}.querySelector("[data-field=parent]")'
        assert await page.evaluate(f"{parent}.title") == _REAL[0]
        assert await page.evaluate(f"getComputedStyle({parent}).whiteSpace") == "nowrap"
        await page.screenshot(artifacts_dir() / f"layout-{width}.png")
        assert page.errors == []


async def test_page_html_served_has_a_loading_state_and_a_valid_name_pattern(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        async with httpx.AsyncClient(base_url=prism.info.api_url) as http:
            html = (await http.get("/")).text
        assert "loading branches…" in html
        # With scripts off (what a screenshot taken before the script runs sees), the page
        # still shows the loading state, not an empty table.
        await page.send("Emulation.setScriptExecutionDisabled", value=True)
        await page.goto(prism.info.api_url + "/")
        text = await page.evaluate('document.querySelector("#branches tbody").innerText')
        assert "loading branches" in text
        await page.send("Emulation.setScriptExecutionDisabled", value=False)
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        assert await page.evaluate('document.querySelector("#branches tr.loading") === null')
        # The name's pattern compiles in Chrome (the v flag): it really checks the name.
        field = 'document.querySelector("#create-name")'
        await page.evaluate(f'{field}.value = "Not Valid!"')
        assert await page.evaluate(f"{field}.validity.patternMismatch") is True
        await page.evaluate(f'{field}.value = "{_long("ok")}"')
        assert await page.evaluate(f"{field}.validity.valid") is True
        assert page.errors == []


async def _key(page: Page, key: str, code: str, key_code: int, text: str = "") -> None:  # noqa: F811
    """Press and release a key, as a person's keyboard does (``text``: the character it types)."""
    for kind in ("keyDown", "keyUp"):
        await page.send(
            "Input.dispatchKeyEvent",
            type=kind,
            key=key,
            code=code,
            windowsVirtualKeyCode=key_code,
            **({"text": text} if text and kind == "keyDown" else {}),
        )


async def test_detail_panel_opens_by_keyboard_and_shows_the_branch(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    name = _REAL[0]
    async with running() as prism, screenshot_at_end(page, request):
        await prism.manager.create(name)
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is(name, 'running')}")
        await page.wait_until(_feed_has(f"created {name}"))
        label = f'tr[data-branch="{name}"] button.label'
        await page.evaluate(f"document.querySelector({json.dumps(label)}).focus()")
        await _key(page, "Enter", "Enter", 13, "\r")
        await page.wait_until('!document.querySelector("#detail").hidden')
        assert await page.evaluate('document.querySelector("#detail-name").textContent') == name
        facts = await page.evaluate('document.querySelector("#detail-facts").innerText')
        for term in (
            "status",
            "parent",
            "children",
            "hooks on create",
            "disk",
            "protected",
            "expires",
            "point in time",
        ):
            assert term in facts, facts
        assert "main" in facts
        await page.wait_until(
            '[...document.querySelectorAll("#detail-events li")]'
            f'.some((li) => li.textContent.includes("created {name}"))'
        )
        buttons = await page.evaluate(
            '[...document.querySelectorAll("#detail-actions button")].map((b) => b.dataset.action)'
        )
        assert buttons == ["reset", "stop", "delete", "connect"]
        await page.click('#detail-actions button[data-action="stop"]')
        await page.wait_until(_status_is(name, "stopped"))
        await page.wait_until(
            'document.querySelector("#detail-facts").innerText.includes("stopped")'
        )
        await page.screenshot(artifacts_dir() / f"{request.node.name}-open.png")
        # Escape closes it and gives the focus back to the name.
        await _key(page, "Escape", "Escape", 27)
        await page.wait_until('document.querySelector("#detail").hidden')
        assert await page.evaluate(
            f"document.activeElement === document.querySelector({json.dumps(label)})"
        )
        assert page.errors == []


async def test_connect_dialog_switches_format_and_its_uri_connects_with_psycopg(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    name = "conn-dialog"
    string = 'document.querySelector("#connect-string").textContent'
    async with running() as prism, screenshot_at_end(page, request):
        await prism.manager.create(name)
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is(name, 'running')}")
        await page.grant(prism.info.api_url, "clipboardReadWrite", "clipboardSanitizedWrite")
        await page.wait_until(
            f'{_row(name)}.querySelector("[data-field=connection] code").textContent !== ""'
        )
        await page.click(f'tr[data-branch="{name}"] button[data-action="connect"]')
        await page.wait_until('document.querySelector("#connect").open')
        await page.wait_until(f'{string}.startsWith("postgresql://postgres%40{name}@")')
        assert PASSWORD not in await page.evaluate(string)
        assert (
            await page.evaluate('document.querySelector("#connect-role").value')
            == f"postgres@{name}"
        )

        expected_start = {
            "keyword": "host=",
            "env": "PGHOST=",
            "jdbc": "jdbc:postgresql://",
            "prisma": "postgresql://",
        }
        for fmt, start in expected_start.items():
            await page.choose("#connect-format", fmt)
            await page.wait_until(f'{string}.startsWith("{start}")')
        assert "schema=public" in await page.evaluate(string)  # Prisma's DATABASE_URL
        await page.choose("#connect-format", "uri")
        await page.click("#connect-password")
        await page.wait_until(f'{string}.includes(":{PASSWORD}@")')
        await page.click("#connect-copy")
        await page.wait_until(f'{_MESSAGE} === "copied the uri connection string of {name}"')
        uri = await page.evaluate("navigator.clipboard.readText()")
        assert uri == await page.evaluate(string)
        await page.screenshot(artifacts_dir() / f"{request.node.name}-dialog.png")

        assert await trio.to_thread.run_sync(_who_am_i, uri) == ("postgres", 1)
        assert page.errors == []


async def test_session_bursts_fold_into_one_line_and_the_feed_filters(
    running: Runner,  # noqa: F811
    page: Page,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    name = "bursty"
    async with running() as prism, screenshot_at_end(page, request):
        await prism.manager.create(name)
        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is(name, 'running')}")
        await page.wait_until(_feed_has(f"created {name}"))
        for _ in range(20):  # 20 quick real connects
            await psql(prism.dsn(f"postgres@{name}"), "SELECT 1")
        lines = '[...document.querySelectorAll("#events li")]'
        sessions = (
            f'{lines}.filter((li) => li.dataset.branch === "{name}" && li.dataset.connected > 0)'
        )
        await page.wait_until(
            f"{sessions}.reduce((n, li) => n + Number(li.dataset.disconnected), 0) === 20"
        )
        folded = await page.evaluate(f"{sessions}.map((li) => li.textContent)")
        assert len(folded) == 1, folded  # one line for the burst, with its counts
        assert "(\u00d740: 20 connected, 20 disconnected)" in folded[0]
        assert await page.evaluate(_feed_has(f"created {name}"))  # not pushed out

        await page.choose("#events-branch", name)
        shown = f"{lines}.filter((li) => !li.hidden)"
        assert await page.evaluate(f"{shown}.every((li) => li.dataset.branch === '{name}')")
        await page.choose("#events-type", "created")
        texts = await page.evaluate(f"{shown}.map((li) => li.textContent)")
        assert len(texts) == 1 and f"created {name}" in texts[0]
        await page.choose("#events-type", "connected")
        assert await page.evaluate(f"{shown}.length") == 1  # the folded line has connects
        assert page.errors == []
