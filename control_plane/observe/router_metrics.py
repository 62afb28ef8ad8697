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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import aiohttp
from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from control_plane.ir.fleet import EndpointView, server_url
from control_plane.ir.model import EndpointHealth
from control_plane.names import cluster_name
from control_plane.observe.engines import read_engine
from control_plane.observe.envoy_admin import read_pending, read_running
from control_plane.observe.host_usage import HostUsage
from control_plane.observe.request_stats import RequestStats

LIVE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Live:
    running: dict[str, float] = field(default_factory=dict)  # endpoint key -> active
    pending: dict[str, float] = field(default_factory=dict)  # cluster -> waiting in Envoy
    backend_waiting: dict[str, float] = field(default_factory=dict)  # endpoint key -> own


async def read_live(envoy_admin: str, views: Iterable[EndpointView]) -> Live:
    views = list(views)
    async with aiohttp.ClientSession() as s:
        running, pending, engines = await asyncio.gather(
            read_running(s, envoy_admin),
            read_pending(s, envoy_admin),
            asyncio.gather(*(read_engine(s, server_url(v), LIVE_TIMEOUT_S) for v in views)),
        )
    live = Live(running=running, pending=pending)
    for v, sample in zip(views, engines, strict=True):
        if sample.error is None:  # read and parsed: no waiting gauge counts as 0
            live.backend_waiting[v.key] = sample.waiting or 0.0
    return live


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
