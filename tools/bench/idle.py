"""Connection scale: a thousand idle client sessions through one Prism process.

Each session is real (authenticated by the branch server, one Postgres backend each), so main
is given ``max_connections`` to match. Prism's RSS is read from /proc before and after; the
per-connection figure is the difference divided by the count. Meanwhile one more session runs
``SELECT 1`` in a loop, and its latency is compared with the same loop before the crowd came,
and with the same loop straight to the server (1,000 backends slow Postgres itself down).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import trio

from tools.bench.common import PrismProcess, connect, percentile

QUERIES = 500


@dataclass(frozen=True)
class IdleResult:
    connections: int
    rss_before_kb: int
    rss_after_kb: int
    latency_before_us: tuple[float, float]
    latency_during_us: tuple[float, float]
    #: The same loop straight to main's server, to tell Prism's share from Postgres's.
    direct_before_us: tuple[float, float] = (float("nan"), float("nan"))
    direct_during_us: tuple[float, float] = (float("nan"), float("nan"))

    @property
    def kb_per_connection(self) -> float:
        return (self.rss_after_kb - self.rss_before_kb) / self.connections


async def _latency(port: int) -> tuple[float, float]:
    """p50 and p95 (µs) of ``SELECT 1`` round trips on one connection through Prism."""
    async with await connect(port) as conn:
        for _ in range(50):  # warm the backend's caches first
            await conn.query("SELECT 1")
        samples = []
        for _ in range(QUERIES):
            started = time.perf_counter()
            await conn.query("SELECT 1")
            samples.append((time.perf_counter() - started) * 1e6)
    return percentile(samples, 50), percentile(samples, 95)


async def measure(
    prism: PrismProcess, *, connections: int, log: Callable[[str], None] = print
) -> IdleResult:
    """Open ``connections`` idle sessions, measure, close them all."""
    direct = prism.branch_port("main")
    before = await _latency(prism.port)
    direct_before = await _latency(direct)
    await trio.sleep(0.5)
    rss_before = prism.rss_kb()
    async with AsyncExitStack() as stack:
        limiter = trio.CapacityLimiter(16)

        async def open_one() -> None:
            async with limiter:
                conn = await connect(prism.port)
            await stack.enter_async_context(conn)

        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(open_one)
        await trio.sleep(1.0)
        rss_after = prism.rss_kb()
        during = await _latency(prism.port)
        direct_during = await _latency(direct)
        log(
            f"idle: {connections} connections: +{rss_after - rss_before} kB "
            f"({(rss_after - rss_before) / connections:.1f} kB each), "
            f"SELECT 1 p50 {before[0]:.0f} -> {during[0]:.0f} us "
            f"(direct {direct_before[0]:.0f} -> {direct_during[0]:.0f} us)"
        )
    return IdleResult(
        connections, rss_before, rss_after, before, during, direct_before, direct_during
    )
