"""Whole sessions through Prism with each data plane: real Postgres, real clients.

As root Prism relays plain-TCP sessions through the kernel's sockmap, so most tests run on that
plane; these run the session endings the proxy promises on both (in CI, which runs as root, a
skip of the sockmap variant is a failure). The byte-level properties of each plane (bulk both
ways, half-close, reset, cancel, pipelined bytes, bytes sent during the hand-over, a thousand
sessions) are in test_pump.py.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio

from tests.sysenv import require_root

from .api_helpers import api
from .harness import PrismHandle

pytestmark = pytest.mark.integration


@pytest.fixture(params=["pump", "sockmap"])
async def plane_prism(request: pytest.FixtureRequest, start_prism: Any) -> PrismHandle:
    """A Prism relaying with the data plane named by the parameter."""
    if request.param == "sockmap":
        require_root()
    handle: PrismHandle = await start_prism(
        data_plane="auto" if request.param == "sockmap" else "pump"
    )
    assert handle.info.data_plane.name == request.param, handle.info.data_plane.reason
    return handle


async def test_reset_ends_an_open_session_with_57p01_and_the_reason(
    plane_prism: PrismHandle,
) -> None:
    conn = await trio.to_thread.run_sync(
        lambda: psycopg.connect(plane_prism.dsn("postgres@work"), autocommit=True)
    )
    await trio.to_thread.run_sync(conn.execute, "SELECT 1")
    async with api(plane_prism) as http:
        assert (await http.post("/api/v1/branches/work/reset")).status_code == 200

    def next_query() -> psycopg.OperationalError:
        with pytest.raises(psycopg.OperationalError) as caught:
            conn.execute("SELECT 1")
        conn.close()
        return caught.value

    error = await trio.to_thread.run_sync(next_query)
    assert error.sqlstate == "57P01"
    assert 'branch "work" is being reset' in str(error)
