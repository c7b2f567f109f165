"""A hostile web page in a real headless Chromium cannot drive Prism's API (no token set).

An "evil" page is served from another origin (``127.0.0.2`` on its own port) and does what a
page may do without asking: a ``no-cors`` ``text/plain`` fetch, form posts (one shaped as
JSON), a JSON fetch (which needs a CORS preflight) and a WebSocket. Prism's log proves each
request reached Prism and was refused there, not merely blocked by the browser. DNS rebinding
is played by telling Chromium that ``rebind.evil.example`` is 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import AsyncIterator

import pytest
import trio

from tests.integration.harness import fresh_dir, psql

from .chromium import Page, open_page
from .test_web_page import (  # noqa: F401 (fixtures)
    _LIVE,
    Runner,
    _status_is,
    running,
    screenshot_at_end,
)

REBOUND = "rebind.evil.example"
_EVIL_HOST = "127.0.0.2"


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A tab in a fresh headless Chromium that resolves ``rebind.evil.example`` to 127.0.0.1."""
    workdir = fresh_dir("chromium-")
    try:
        async with open_page(workdir, f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1") as tab:
            yield tab
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _evil_page(prism_url: str) -> bytes:
    """Forms that post to Prism into a hidden frame; the script is run by the test."""
    branches = f"{prism_url}/api/v1/branches"
    return f"""<!doctype html><title>evil</title>
<iframe name="sink"></iframe>
<form id="reset" method="POST" action="{branches}/work/reset" target="sink">
  <input name="x" value="1"></form>
<form id="plant" method="POST" enctype="text/plain" action="{branches}" target="sink">
  <input name='{{"name":"formplanted","x":"' value='"}}'></form>
""".encode()


async def _serve_page(body: bytes, stream: trio.SocketStream) -> None:
    """Answer any one request with ``body`` as HTML."""
    async with stream:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            request += chunk
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {len(body)}\r\n"
        await stream.send_all(head.encode() + b"Connection: close\r\n\r\n" + body)


def _submit(form: str) -> str:
    """JavaScript: submit ``form`` into the hidden frame; resolves when Prism's answer loaded."""
    return f"""new Promise((resolve) => {{
        document.querySelector("iframe").onload = () => resolve(true);
        document.querySelector({json.dumps(form)}).submit();
    }})"""


def _open_socket(url: str) -> str:
    """JavaScript: open a WebSocket; resolves "open" or "refused"."""
    return f"""new Promise((resolve) => {{
        const socket = new WebSocket({json.dumps(url)});
        socket.onopen = () => {{ socket.close(); resolve("open"); }};
        socket.onclose = () => resolve("refused");
    }})"""


def _fetch(url: str, options: str) -> str:
    """JavaScript: ``fetch``; resolves the response's type and status, or "blocked"."""
    return (
        f"fetch({json.dumps(url)}, {options})"
        '.then((r) => `${r.type} ${r.status}`, () => "blocked")'
    )


async def test_a_page_from_another_origin_changes_nothing_and_gets_no_event_stream(
    running: Runner,  # noqa: F811
    page: Page,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="prism.api")
    async with running() as prism, trio.open_nursery() as nursery:
        await psql(prism.dsn("postgres@work"), "CREATE TABLE kept AS SELECT 1 AS v")
        prism_url = prism.info.api_url
        serve = functools.partial(_serve_page, _evil_page(prism_url))
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host=_EVIL_HOST), serve, 0
        )
        evil = f"http://{_EVIL_HOST}:{listeners[0].socket.getsockname()[1]}"

        async with screenshot_at_end(page, request):
            await page.goto(f"{evil}/evil.html")
            plant = json.dumps({"name": "planted"})
            no_cors = _fetch(
                f"{prism_url}/api/v1/branches",
                f'{{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, '
                f"body: {json.dumps(plant)}}}",
            )
            assert await page.evaluate(no_cors) == "opaque 0"  # sent; the answer is hidden
            preflighted = _fetch(
                f"{prism_url}/api/v1/branches",
                '{method: "POST", headers: {"Content-Type": "application/json"}, '
                'body: \'{"name": "corsplanted"}\'}',
            )
            assert await page.evaluate(preflighted) == "blocked"  # Prism grants no CORS
            assert await page.evaluate(_submit("#reset")) is True
            assert await page.evaluate(_submit("#plant")) is True
            ws_url = prism_url.replace("http", "ws", 1) + "/api/v1/events"
            assert await page.evaluate(_open_socket(ws_url)) == "refused"
        nursery.cancel_scope.cancel()

        assert [b.name for b in prism.manager.list()] == ["main", "work"]
        out = await psql(prism.dsn("postgres@work"), "SELECT v FROM kept")
        assert out.stdout.decode().strip() == "1"  # the form did not reset it
        refusals = [r.getMessage() for r in caplog.records if r.name == "prism.api.origin"]
        assert refusals == [
            f"api: refused POST /api/v1/branches from 127.0.0.1: cross-origin from {evil}",
            f"api: refused POST /api/v1/branches/work/reset from 127.0.0.1: "
            f"cross-origin from {evil}",
            f"api: refused POST /api/v1/branches from 127.0.0.1: cross-origin from {evil}",
            f"api: refused WEBSOCKET /api/v1/events from 127.0.0.1: cross-origin from {evil}",
        ]


async def test_a_rebound_name_reads_nothing_and_prisms_own_page_still_works(
    running: Runner,  # noqa: F811
    page: Page,
    request: pytest.FixtureRequest,
) -> None:
    async with running() as prism, screenshot_at_end(page, request):
        port = prism.info.api[1]
        await page.goto(f"http://{REBOUND}:{port}/")
        shown = await page.evaluate("document.body.innerText")
        assert "unknown_host" in shown and "--api-hostname" in shown
        for path in ("/api/v1/branches/main?password=true", "/api/v1/branches"):
            assert await page.evaluate(_fetch(path, "{}")) == "basic 421"
        assert await page.evaluate(_open_socket(f"ws://{REBOUND}:{port}/api/v1/events")) == (
            "refused"
        )

        await page.goto(prism.info.api_url + "/")
        await page.wait_until(f"{_LIVE} && {_status_is('main', 'running')}")
        await page.type_into("#create-name", "from-page")
        await page.click('#create-form button[type="submit"]')
        await page.wait_until(_status_is("from-page", "running"))
        assert page.errors == []
