"""The web page: one static HTML file and its script and style, no build step, no framework."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio


def register_page(app: QuartTrio) -> None:
    """Serve ``static/index.html`` at ``/`` (its assets are under ``/static``)."""

    @app.get("/")
    async def index() -> Response:
        response = await app.send_static_file("index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response
