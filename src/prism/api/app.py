"""The control plane: a quart-trio app served by hypercorn inside Prism's own trio run."""

from __future__ import annotations

from quart import jsonify
from quart_trio import QuartTrio

from prism.branches import BranchManager
from prism.state import rfc3339


def create_app(manager: BranchManager) -> QuartTrio:
    """Build the HTTP app over ``manager``; every route reads or changes branches through it."""
    app = QuartTrio("prism")

    @app.get("/branches")
    async def branches_seed_format() -> object:
        """The seed's format: each branch name → its last activity time (RFC 3339, UTC)."""
        return jsonify({b.name: rfc3339(b.last_active) for b in manager.list()})

    return app
