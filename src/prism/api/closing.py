"""An ASGI wrapper that lets hypercorn close a connection whose request it answered early.

When the app answers before the request body is complete (the 408 for a body that never
comes, the 413 for one too large), hypercorn's HTTP/1.1 protocol cannot reuse the connection
and closes it from inside the app's final ``send``. But that same ``send`` first tells the app
"http.disconnect", on which quart-trio cancels the app's nursery, and the cancellation lands
in hypercorn's close before the socket is closed (pgjones/hypercorn#314, #106): the client
never sees EOF and Prism keeps the descriptor until the client goes away, so a local user
could pin Prism's descriptors with bodies that never arrive. Shielding each HTTP ``send``
lets hypercorn finish what it started; hypercorn shields its own socket writes already, so
the shield adds no wait the app could otherwise have cancelled.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope


class CloseAfterEarlyAnswer:
    """Wraps an ASGI app so every HTTP ``send`` runs to the end, close included."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_to_the_end(message: ASGISendEvent) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await self.app(scope, receive, send_to_the_end)
