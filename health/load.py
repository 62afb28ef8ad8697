"""Busy or stuck? Read a backend's Prometheus /metrics to tell a slow answer apart.

A probe that times out (or gets 503/429, "queue full, retry later") may hit a backend
that is busy with client work, or one whose decoder hangs while its event loop still
answers. The difference is progress: a busy backend keeps finishing requests. We read

* a progress counter: the sum over all label sets of
  `vllm:e2e_request_latency_seconds_count` (finished requests; vLLM and our
  whisper_backend both export it), else of `vllm:request_success_total`;
* the work in flight: `vllm:num_requests_running` + `vllm:num_requests_waiting`.

The probe is BUSY (neither pass nor failure) only when the counter moved since the
previous reading *and* work is in flight. Anything else (metrics unreachable or
unparsable, no counter, no baseline yet, counter still, nothing in flight) leaves the
failure as it is, so a hung decoder is still ejected.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, replace

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from health.probe import ProbeResult

METRICS_PATH = "/metrics"
#: Progress counters, in order of preference (the first one present is used).
PROGRESS_METRICS = ("vllm:e2e_request_latency_seconds_count", "vllm:request_success_total")
IN_FLIGHT_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")
#: vLLM's /metrics is a few hundred KB at most; don't read more than this.
MAX_METRICS_BYTES = 8 << 20
#: Upper bound of the /metrics timeout (the probe's timeout_s if smaller).
METRICS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class BackendLoad:
    """One /metrics reading. `finished` is None when no progress counter is exported."""

    finished: float | None
    in_flight: float


def parse_load(text: str) -> BackendLoad:
    """Sum the progress and in-flight metrics over all their label sets.

    Raises ValueError for text that is not the Prometheus exposition format.
    """
    sums: dict[str, float] = {}
    wanted = set(PROGRESS_METRICS) | set(IN_FLIGHT_METRICS)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and math.isfinite(sample.value):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    finished = next((sums[n] for n in PROGRESS_METRICS if n in sums), None)
    in_flight = sum(sums.get(n, 0.0) for n in IN_FLIGHT_METRICS)
    return BackendLoad(finished=finished, in_flight=in_flight)


async def fetch_load(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    api_key: str | None = None,
    timeout_s: float = METRICS_TIMEOUT_S,
) -> BackendLoad | None:
    """GET {base_url}/metrics and parse it; None on any error or non-2xx. Never raises
    (except on cancellation)."""
    headers = {"Connection": "close"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        async with session.get(
            base_url.rstrip("/") + METRICS_PATH,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            if not 200 <= resp.status < 300:
                return None
            body = await resp.content.read(MAX_METRICS_BYTES)
            truncated = not resp.content.at_eof()
    except asyncio.CancelledError:
        raise
    except Exception:  # timeout, refused, reset: no reading
        return None
    text = body.decode("utf-8", errors="replace")
    if truncated:
        text = text.rpartition("\n")[0] + "\n"  # drop the cut-off last line
    try:
        return parse_load(text)
    except ValueError:  # not the exposition format: no reading
        return None


def judge(result: ProbeResult, previous: float | None, load: BackendLoad | None) -> ProbeResult:
    """Turn an overload-like soft failure into a BUSY result when the backend progresses.

    `previous` is the progress counter of the last reading (None: no baseline). A counter
    that went down (backend restarted) is not progress.
    """
    if result.ok or result.hard or not result.overload or load is None:
        return result
    if previous is None or load.finished is None or load.in_flight <= 0:
        return result
    done = load.finished - previous
    if done <= 0:
        return result
    cause = (result.error or "soft failure").removeprefix(f"{result.model}: ")
    return replace(
        result,
        busy=True,
        error=(
            f"busy: {cause} while {load.in_flight:g} requests in flight"
            f" and {done:g} finished since last probe"
        ),
    )
