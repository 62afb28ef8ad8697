"""The router's /metrics, in its names, from Envoy's stats, the access log and the probes.

What a router user's dashboard and autoscaler read (`vllm:*` with `server` the
backend URL), computed here:

- `vllm:healthy_pods_total{server}`: 1 when the probes find the endpoint healthy;
- `vllm:current_qps`, `vllm:avg_latency{server}`: the access log over the window;
- `vllm:num_requests_running{server}`: Envoy's requests active on that host;
- `vllm:num_requests_waiting{server}`: the backend's own waiting count (when it
  exports one) plus the requests Envoy holds for its model, shared evenly
  between that model's healthy endpoints (so a sum over servers is the total);
- `vllm:num_incoming_requests_total{model}`, `vllm:request_errors_total`,
  `vllm:request_latency_seconds`: the access log;
- `router_{cpu,memory,disk}_usage_percent`: this host.

LLM-only series (token counts, prefix cache, ITL) are left out. Live values are
read from the local Envoy's admin and each backend's /metrics at scrape time,
with a short timeout each: a scrape never waits on a hung backend for long.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from control_plane.model import EndpointHealth, cluster_name
from control_plane.reconciler import EndpointView
from control_plane.request_stats import RequestStats

LIVE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Live:
    running: dict[str, float] = field(default_factory=dict)  # endpoint key -> active
    pending: dict[str, float] = field(default_factory=dict)  # cluster -> waiting in Envoy
    backend_waiting: dict[str, float] = field(default_factory=dict)  # endpoint key -> own


def server_url(view: EndpointView) -> str:
    scheme = "https" if view.backend_url.startswith("https:") else "http"
    return f"{scheme}://{view.key}"


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str | None:
    try:
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=LIVE_TIMEOUT_S)
        ) as r:
            return await r.text() if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return None


def parse_envoy_clusters(data: Any) -> dict[str, float]:
    """`/clusters?format=json` -> endpoint key -> rq_active, summed over clusters."""
    running: dict[str, float] = {}
    for c in data.get("cluster_statuses", []):
        for h in c.get("host_statuses", []):
            sa = h.get("address", {}).get("socket_address", {})
            if "address" not in sa:
                continue
            addr = sa["address"]
            key = f"[{addr}]:{sa['port_value']}" if ":" in addr else f"{addr}:{sa['port_value']}"
            for st in h.get("stats", []):
                if st.get("name") == "rq_active":
                    running[key] = running.get(key, 0.0) + float(st.get("value", 0))
    return running


def parse_envoy_pending(data: Any) -> dict[str, float]:
    """`/stats?format=json` -> cluster -> upstream_rq_pending_active."""
    out = {}
    for st in data.get("stats", []):
        name = str(st.get("name", ""))
        if name.startswith("cluster.") and name.endswith(".upstream_rq_pending_active"):
            out[name[len("cluster.") : -len(".upstream_rq_pending_active")]] = float(st["value"])
    return out


def engine_counts(text: str) -> tuple[float | None, float | None]:
    """A backend's /metrics: vLLM's running and waiting gauges, summed over models;
    None where absent. ValueError for text that is not Prometheus's format."""
    sums: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                sums[s.name] = sums.get(s.name, 0.0) + s.value
    return sums.get("vllm:num_requests_running"), sums.get("vllm:num_requests_waiting")


def backend_waiting(text: str) -> float | None:
    try:
        return engine_counts(text)[1] or 0.0
    except ValueError:
        return None


async def read_envoy_running(envoy_admin: str) -> dict[str, float]:
    """Requests Envoy has active on each endpoint now ({} when its admin is away)."""
    async with aiohttp.ClientSession() as s:
        clusters = await _get(s, f"{envoy_admin}/clusters?format=json", {})
    return parse_envoy_clusters(json.loads(clusters)) if clusters else {}


async def read_live(envoy_admin: str, views: Iterable[EndpointView]) -> Live:
    views = list(views)
    async with aiohttp.ClientSession() as s:
        clusters, stats, *backends = await asyncio.gather(
            _get(s, f"{envoy_admin}/clusters?format=json", {}),
            _get(s, f"{envoy_admin}/stats?format=json&filter=upstream_rq_pending_active", {}),
            *(_get(s, f"{server_url(v)}/metrics", {}) for v in views),
        )
    live = Live(
        running=parse_envoy_clusters(json.loads(clusters)) if clusters else {},
        pending=parse_envoy_pending(json.loads(stats)) if stats else {},
    )
    for v, text in zip(views, backends, strict=True):
        waiting = backend_waiting(text) if text else None
        if waiting is not None:
            live.backend_waiting[v.key] = waiting
    return live


class HostUsage:
    """CPU, memory and disk use of this host, in percent (CPU between two readings)."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self._last: tuple[int, int] | None = None

    def cpu(self) -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle, total = fields[3] + fields[4], sum(fields)
        last, self._last = self._last, (idle, total)
        if last is None or total == last[1]:
            return 100.0 * (1 - idle / total) if total else 0.0
        return 100.0 * (1 - (idle - last[0]) / (total - last[1]))

    def memory(self) -> float:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info[k] = int(v.split()[0])
        return 100.0 * (1 - info["MemAvailable"] / info["MemTotal"])

    def disk(self) -> float:
        st = os.statvfs(self.root)
        return 100.0 * (1 - st.f_bavail / st.f_blocks) if st.f_blocks else 0.0


class RouterCollector(Collector):
    def __init__(
        self, views: list[EndpointView], stats: RequestStats, live: Live, usage: HostUsage
    ) -> None:
        self.views, self.stats, self.live, self.usage = views, stats, live, usage

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "vllm:healthy_pods_total", "1 if the backend is healthy", labels=["server"]
        )
        qps = GaugeMetricFamily("vllm:current_qps", "requests per second", labels=["server"])
        avg = GaugeMetricFamily("vllm:avg_latency", "mean latency (s)", labels=["server"])
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "requests in flight", labels=["server"]
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "requests waiting", labels=["server"]
        )
        per_server = self.stats.per_server()
        healthy_per_model: dict[str, int] = {}
        for v in self.views:
            for m, h in v.model_health.items():
                if h is EndpointHealth.HEALTHY and not v.draining:
                    healthy_per_model[m] = healthy_per_model.get(m, 0) + 1
        for v in self.views:
            server = server_url(v)
            healthy.add_metric([server], 1.0 if v.health is EndpointHealth.HEALTHY else 0.0)
            q, lat = per_server.get(server, (0.0, 0.0))
            qps.add_metric([server], q)
            avg.add_metric([server], lat)
            running.add_metric([server], self.live.running.get(v.key, 0.0))
            held = sum(
                self.live.pending.get(cluster_name(m), 0.0) / healthy_per_model[m]
                for m, h in v.model_health.items()
                if h is EndpointHealth.HEALTHY and healthy_per_model.get(m)
            )
            waiting.add_metric([server], self.live.backend_waiting.get(v.key, 0.0) + held)
        yield from (healthy, qps, avg, running, waiting)
        incoming = CounterMetricFamily(
            "vllm:num_incoming_requests", "requests received", labels=["model"]
        )
        for m, n in sorted(self.stats.incoming.items()):
            incoming.add_metric([m], n)
        yield incoming
        errors = CounterMetricFamily(
            "vllm:request_errors", "failed requests", labels=["server", "model", "error_type"]
        )
        for (server, m, kind), n in sorted(self.stats.errors.items()):
            errors.add_metric([server, m, kind], n)
        yield errors
        latency = HistogramMetricFamily(
            "vllm:request_latency_seconds", "request latency", labels=["server", "model", "status"]
        )
        for (server, m, status), hist in sorted(self.stats.latency.items()):
            latency.add_metric([server, m, status], hist.cumulative(), sum_value=hist.total)
        yield latency
        for name, value in (
            ("router_cpu_usage_percent", self.usage.cpu()),
            ("router_memory_usage_percent", self.usage.memory()),
            ("router_disk_usage_percent", self.usage.disk()),
        ):
            g = GaugeMetricFamily(name, name.replace("_", " "))
            g.add_metric([], value)
            yield g


def render(views: list[EndpointView], stats: RequestStats, live: Live, usage: HostUsage) -> bytes:
    registry = CollectorRegistry()
    registry.register(RouterCollector(views, stats, live, usage))
    return generate_latest(registry)
