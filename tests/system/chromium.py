"""A real headless Chromium, driven over the Chrome DevTools Protocol, for the web-page tests.

Why the protocol and not selenium: it is JSON over one WebSocket, trio-websocket is already a
Prism dependency, and the tests need only a handful of commands (navigate, evaluate, click,
type, screenshot, answer ``confirm()``), so no new package and no ``chromium-driver``.

The browser is Debian's ``chromium`` (``tools/sysenv/browser.sh`` installs it), started with a
fresh profile and ``--remote-debugging-port=0``; it writes the port it chose to
``DevToolsActivePort`` in the profile, which is how we find it without racing for a free port.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.sysenv import unavailable

CHROMIUM = Path("/usr/bin/chromium")
# What the brief for running as root asks for, plus a fixed window so screenshots compare.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-port=0",
    "--window-size=1280,800",
)
_START_TIMEOUT = 30.0
# A PNG of the whole window is a few hundred KiB of base64; trio-websocket's default is 1 MiB.
_MAX_MESSAGE = 64 * 2**20


class DevToolsError(Exception):
    """The browser refused a protocol command."""


class _Connection:
    """One DevTools WebSocket: commands matched to replies by id; events fed to waiters."""

    def __init__(self, socket: WebSocketConnection, nursery: trio.Nursery) -> None:
        self._socket = socket
        self._nursery = nursery
        self._ids = itertools.count(1)
        self._replies: dict[int, dict[str, Any]] = {}
        self._arrived: dict[int, trio.Event] = {}
        self._waiters: list[tuple[str, str | None, trio.Event]] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []

    async def send(self, method: str, session: str | None = None, **params: Any) -> Any:
        command_id = next(self._ids)
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self._arrived[command_id] = arrived = trio.Event()
        await self._socket.send_message(json.dumps(message))
        await arrived.wait()
        reply = self._replies.pop(command_id)
        if "error" in reply:
            raise DevToolsError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def expect(self, method: str, session: str | None) -> trio.Event:
        """An event set when ``method`` next arrives for ``session`` (register before acting)."""
        arrived = trio.Event()
        self._waiters.append((method, session, arrived))
        return arrived

    async def read_forever(self) -> None:
        while True:
            message = json.loads(await self._socket.get_message())
            if "id" in message:
                self._replies[message["id"]] = message
                self._arrived.pop(message["id"]).set()
            else:
                self._on_event(message["method"], message.get("sessionId"), message["params"])

    def _on_event(self, method: str, session: str | None, params: dict[str, Any]) -> None:
        for waiter in [w for w in self._waiters if w[:2] == (method, session)]:
            self._waiters.remove(waiter)
            waiter[2].set()
        if method == "Page.javascriptDialogOpening":
            # The page asks confirm() before destructive actions; a person would say yes.
            self.dialogs.append(params["message"])
            answer = functools.partial(
                self.send, "Page.handleJavaScriptDialog", session, accept=True
            )
            self._nursery.start_soon(answer)
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description", details["text"]))
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append(" ".join(str(a.get("value")) for a in params["args"]))


class Page:
    """One browser tab: navigate, run JavaScript, click and type like a person, take pictures."""

    def __init__(self, connection: _Connection, session: str) -> None:
        self._connection = connection
        self._session = session

    @property
    def dialogs(self) -> list[str]:
        """The messages of every ``confirm()``/``alert()`` shown so far (all were accepted)."""
        return self._connection.dialogs

    @property
    def errors(self) -> list[str]:
        """Uncaught exceptions and ``console.error`` calls in the page so far."""
        return self._connection.errors

    async def send(self, method: str, **params: Any) -> Any:
        return await self._connection.send(method, self._session, **params)

    async def grant(self, origin: str, *permissions: str) -> None:
        """Grant the page's ``origin`` browser permissions (the clipboard, for a copy button)."""
        await self._connection.send(
            "Browser.grantPermissions", None, origin=origin, permissions=list(permissions)
        )

    async def goto(self, url: str) -> None:
        loaded = self._connection.expect("Page.loadEventFired", self._session)
        await self.send("Page.navigate", url=url)
        await loaded.wait()

    async def reload(self) -> None:
        loaded = self._connection.expect("Page.loadEventFired", self._session)
        await self.send("Page.reload")
        await loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (promises are awaited); a page exception raises."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_until(self, expression: str, within: float = 30.0) -> Any:
        """Wait until ``expression`` is truthy in the page; its value. Fails saying what never held.

        The polling runs in the page (every 50 ms), so the wait costs one protocol round trip.
        """
        poll = f"""new Promise((resolve) => {{
            const check = () => {{
                let value;
                try {{ value = ({expression}); }} catch (error) {{ value = undefined; }}
                if (value) resolve(value); else setTimeout(check, 50);
            }};
            check();
        }})"""
        with trio.move_on_after(within):
            return await self.evaluate(poll)
        raise AssertionError(f"after {within:g}s the page still does not satisfy: {expression}")

    async def click(self, selector: str) -> None:
        """Press and release the mouse on the middle of the element ``selector`` names."""
        await self.press(selector)
        await self.release(selector)

    async def press(self, selector: str) -> None:
        """Press the mouse button on ``selector`` (and hold it: a slow person's click)."""
        await self._mouse("mousePressed", await self._centre(selector))

    async def release(self, selector: str) -> None:
        """Release the mouse button where ``selector`` is."""
        await self._mouse("mouseReleased", await self._centre(selector))

    async def _mouse(self, kind: str, centre: list[float]) -> None:
        await self.send(
            "Input.dispatchMouseEvent",
            type=kind,
            x=centre[0],
            y=centre[1],
            button="left",
            clickCount=1,
        )

    async def _centre(self, selector: str) -> list[float]:
        centre = await self.evaluate(
            f"""(() => {{
                const element = document.querySelector({json.dumps(selector)});
                if (!element) return null;
                element.scrollIntoView({{block: "center"}});
                const box = element.getBoundingClientRect();
                return [box.x + box.width / 2, box.y + box.height / 2];
            }})()"""
        )
        if centre is None:
            raise AssertionError(f"nothing on the page matches {selector}")
        return list(centre)

    async def type_into(self, selector: str, text: str) -> None:
        """Click into the field ``selector`` and type ``text`` as keyboard input."""
        await self.click(selector)
        await self.send("Input.insertText", text=text)

    async def choose(self, selector: str, value: str) -> None:
        """Pick ``value`` in the ``<select>`` ``selector`` names, with the change event a
        person's pick fires (setting ``value`` alone fires none)."""
        await self.evaluate(
            f"""(() => {{
                const select = document.querySelector({json.dumps(selector)});
                select.value = {json.dumps(value)};
                select.dispatchEvent(new Event("change"));
            }})()"""
        )

    async def screenshot(self, path: Path) -> Path:
        await trio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        shot = await self.send("Page.captureScreenshot", format="png")
        await trio.Path(path).write_bytes(base64.b64decode(shot["data"]))
        return path


async def _devtools_url(profile: Path, process: trio.Process, log: Path) -> str:
    """The browser's WebSocket URL, once Chromium has written ``DevToolsActivePort``."""
    port_file = trio.Path(profile / "DevToolsActivePort")
    with trio.move_on_after(_START_TIMEOUT):
        while True:
            if await port_file.exists():
                lines = (await port_file.read_text()).split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            if process.returncode is not None:
                break
            await trio.sleep(0.05)
    tail = (await trio.Path(log).read_text(errors="replace"))[-2000:]
    raise AssertionError(f"chromium did not open its DevTools port: {tail}")


@asynccontextmanager
async def open_page(workdir: Path, *flags: str) -> AsyncIterator[Page]:
    """A fresh headless Chromium (profile under ``workdir``) and one tab in it; both closed after.

    ``flags`` are added to the command line (e.g. ``--host-resolver-rules`` to point a name at
    the loopback). Skips (fails in CI) when Chromium is not installed.
    """
    if not await trio.Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is not installed; run tools/sysenv/setup.sh as root")
    profile, log = workdir / "profile", workdir / "chromium.log"
    profile.mkdir(parents=True)
    command = [str(CHROMIUM), *_FLAGS, *flags, f"--user-data-dir={profile}", "about:blank"]
    with log.open("wb") as log_file:
        async with trio.open_nursery() as nursery:
            run = functools.partial(
                trio.run_process,
                command,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
            process = await nursery.start(run)
            url = await _devtools_url(profile, process, log)
            async with open_websocket_url(url, max_message_size=_MAX_MESSAGE) as socket:
                connection = _Connection(socket, nursery)
                nursery.start_soon(connection.read_forever)
                target = await connection.send("Target.createTarget", url="about:blank")
                attached = await connection.send(
                    "Target.attachToTarget", targetId=target["targetId"], flatten=True
                )
                page = Page(connection, attached["sessionId"])
                await page.send("Page.enable")
                await page.send("Runtime.enable")
                yield page
                nursery.cancel_scope.cancel()
