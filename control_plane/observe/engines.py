"""A backend's own queue, from its /metrics: the one scraper and the one parser of it.

vLLM exports `vllm:num_requests_running` and `vllm:num_requests_waiting`; so does our
CPU backend. `scrape_engines` reads every backend every `stats.engine_interval_s` for
`/backends` and `/metrics`; the router's `/metrics` reads them again at scrape time
with a shorter timeout (router_metrics.read_live). Both go through `read_engine`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from control_plane.ir.fleet import EndpointView, server_url


def engine_counts(text: str) -> tuple[float | None, float | None]:
    """A backend's /metrics: vLLM's running and waiting gauges, summed over models;
    None where absent. ValueError for text that is not Prometheus's format."""
    sums: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                sums[s.name] = sums.get(s.name, 0.0) + s.value
    return sums.get("vllm:num_requests_running"), sums.get("vllm:num_requests_waiting")


ENGINE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class EngineSample:
    """A backend's own queue, as its /metrics said at `at`."""

    at: float
    running: float | None
    waiting: float | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "running": self.running,
            "waiting": self.waiting,
            "error": self.error,
        }


async def read_engine(
    session: aiohttp.ClientSession, url: str, timeout_s: float = ENGINE_TIMEOUT_S
) -> EngineSample:
    """`url`'s /metrics now; a sample with `error` set when it cannot be read or parsed."""
    try:
        async with session.get(
            f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as r:
            if r.status != 200:
                return EngineSample(time.time(), None, None, f"HTTP {r.status}")
            running, waiting = engine_counts(await r.text())
            return EngineSample(time.time(), running, waiting)
    except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeDecodeError) as e:
        return EngineSample(time.time(), None, None, f"{type(e).__name__}: {e}"[:200])


async def scrape_engines(
    views: Callable[[], list[EndpointView]],
    engines: dict[str, EngineSample],
    interval_s: Callable[[], float],
) -> None:
    """Every interval, every backend's /metrics into `engines` (endpoint key -> sample).
    Backends gone from the fleet are dropped; a slow one costs at most ENGINE_TIMEOUT_S."""
    async with aiohttp.ClientSession() as session:
        while True:
            current = views()
            samples = await asyncio.gather(*(read_engine(session, server_url(v)) for v in current))
            fresh = {v.key: s for v, s in zip(current, samples, strict=True)}
            engines.clear()
            engines.update(fresh)
            await asyncio.sleep(interval_s())
