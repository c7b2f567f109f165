"""The API's trust boundary over real HTTP: what a foreign web page could send is refused.

These send by hand the headers a browser would put on a page's requests (``Origin``, a rebound
``Host``, a form's content type); tests/system/test_web_page_origin.py does it with a real
browser.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from trio_websocket import HandshakeError, open_websocket_url

from .api_helpers import api, raw_request, status
from .harness import PrismHandle, psql

V1 = "/api/v1"
EVIL = "http://127.0.0.2:9000"
REBOUND = "rebind.evil.example"


def _ws_url(prism: PrismHandle) -> str:
    return prism.info.api_url.replace("http", "ws", 1) + f"{V1}/events"


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "prism.api.origin"]


async def test_a_rebound_host_name_is_refused_on_reads_writes_and_the_page(
    prism: PrismHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="prism.api")
    port = prism.info.api[1]
    rebound = {"Host": f"{REBOUND}:{port}"}
    async with api(prism) as http:
        for method, path in [
            ("GET", f"{V1}/branches/main?password=true"),
            ("GET", f"{V1}/branches"),
            ("GET", "/"),
            ("DELETE", f"{V1}/branches/main"),
            ("POST", f"{V1}/branches/main/stop"),
        ]:
            response = await http.request(method, path, headers=rebound)
            assert response.status_code == 421, (method, path)
            refused = response.json()
            assert refused["code"] == "unknown_host"
            assert "password" not in response.text
            assert f"--api-hostname {REBOUND}" in refused["hint"]
        probe = await http.get("/healthz", headers=rebound)
    assert probe.status_code == 200  # liveness probes come by other names
    assert status(prism, "main") == "running"
    refusals = _refusals(caplog)
    assert len(refusals) == 5  # once per request
    assert refusals[0] == (
        f"api: refused GET {V1}/branches/main from 127.0.0.1: Host '{REBOUND}:{port}' not served"
    )


async def test_a_name_given_with_api_hostname_is_served(start_prism: Any) -> None:
    prism: PrismHandle = await start_prism(api_hostname=("dev.box", "prism.example"))
    async with api(prism) as http:
        named = await http.get(f"{V1}/branches", headers={"Host": "Prism.Example:8443"})
        other = await http.get(f"{V1}/branches", headers={"Host": "elsewhere.example"})
    assert named.status_code == 200
    assert other.status_code == 421


async def test_a_cross_origin_text_plain_post_creates_no_branch(prism: PrismHandle) -> None:
    async with api(prism) as http:
        response = await http.post(
            f"{V1}/branches",
            content=json.dumps({"name": "planted"}),
            headers={"Origin": EVIL, "Content-Type": "text/plain;charset=UTF-8"},
        )
        refused = response.json()
        listed = (await http.get(f"{V1}/branches")).json()["branches"]
    assert (response.status_code, refused["code"]) == (403, "cross_origin")
    assert f"a page from {EVIL}" in refused["message"]
    assert [b["name"] for b in listed] == ["main"]


async def test_a_form_post_resets_nothing_with_or_without_an_origin(prism: PrismHandle) -> None:
    await psql(prism.dsn("postgres@work"), "CREATE TABLE kept AS SELECT 1 AS v")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with api(prism) as http:
        from_page = await http.post(
            f"{V1}/branches/work/reset", content=b"", headers={**form, "Origin": EVIL}
        )
        from_referer = await http.post(
            f"{V1}/branches/work/reset", content=b"x=1", headers={**form, "Referer": f"{EVIL}/a"}
        )
        untyped = await http.post(f"{V1}/branches", content=b'{"name": "sneaky"}')
        typed_form = await http.post(f"{V1}/branches/work/reset", content=b"x=1", headers=form)
    assert (from_page.status_code, from_page.json()["code"]) == (403, "cross_origin")
    assert (from_referer.status_code, from_referer.json()["code"]) == (403, "cross_origin")
    assert (untyped.status_code, untyped.json()["code"]) == (415, "unsupported_media_type")
    assert (typed_form.status_code, typed_form.json()["code"]) == (415, "unsupported_media_type")
    assert "application/json" in typed_form.json()["hint"]
    out = await psql(prism.dsn("postgres@work"), "SELECT v FROM kept")
    assert out.stdout.decode().strip() == "1"  # not reset
    assert prism.manager.get("sneaky") is None


async def test_the_own_page_and_clients_without_an_origin_still_work(prism: PrismHandle) -> None:
    own = prism.info.api_url
    async with api(prism) as http:
        from_page = await http.post(
            f"{V1}/branches",
            json={"name": "from-page"},
            headers={"Origin": own, "Referer": f"{own}/"},
        )
        patched = await http.patch(
            f"{V1}/branches/from-page", json={"protected": False}, headers={"Origin": own}
        )
        curl_style = await http.post(f"{V1}/branches", json={"name": "from-curl"})
        bare_stop = await http.post(f"{V1}/branches/from-curl/stop")  # no body, no type
        deleted = await http.delete(f"{V1}/branches/from-page", headers={"Origin": own})
        read_elsewhere = await http.get(f"{V1}/branches", headers={"Origin": EVIL})
    assert from_page.status_code == 201
    assert patched.status_code == 200
    assert curl_style.status_code == 201
    assert bare_stop.status_code == 200 and bare_stop.json()["status"] == "stopped"
    assert deleted.status_code == 200
    assert read_elsewhere.status_code == 200  # the browser keeps the answer from the page


async def test_the_event_stream_refuses_other_origins_and_rebound_names(
    prism: PrismHandle,
) -> None:
    with pytest.raises(HandshakeError) as caught:
        async with open_websocket_url(_ws_url(prism), extra_headers=[(b"Origin", EVIL.encode())]):
            raise AssertionError("subscribed from another origin")
    assert getattr(caught.value, "status_code", None) == 403
    assert b"cross_origin" in getattr(caught.value, "body", b"")

    own = [(b"Origin", prism.info.api_url.encode())]
    async with open_websocket_url(_ws_url(prism), extra_headers=own) as socket:
        assert json.loads(await socket.get_message())["type"] == "snapshot"
    async with open_websocket_url(_ws_url(prism)) as socket:  # the CLI sends no Origin
        assert json.loads(await socket.get_message())["type"] == "snapshot"

    port = prism.info.api[1]
    handshake = (
        f"GET {V1}/events HTTP/1.1\r\nHost: {REBOUND}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    answer = await raw_request(prism, handshake)
    assert answer.startswith(b"HTTP/1.1 421"), answer[:200]
