"""Prometheus metrics of the control plane, read from its state at scrape time.

Nothing is counted twice: the collector reads the same per-stream ADS state,
snapshot cache and probe state that /status and /backends serve.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from control_plane.app import ControlPlane
from control_plane.model import EndpointHealth
from control_plane.snapshot import PUSH_ORDER, SHORT_NAMES
from control_plane.stream_state import SyncState


class ControlPlaneCollector(Collector):
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def collect(self) -> Iterator[Metric]:
        cp = self.cp
        snap = cp.cache.snapshot
        streams = list(cp.ads.streams.values()) if cp.ads else []
        proxies = GaugeMetricFamily(
            "whisper_gateway_xds_connected_proxies", "Envoys connected over ADS"
        )
        proxies.add_metric([], len(streams))
        yield proxies
        sent = CounterMetricFamily(
            "whisper_gateway_xds_responses", "xDS responses sent", labels=["type"]
        )
        acks = CounterMetricFamily("whisper_gateway_xds_acks", "xDS ACKs received", labels=["type"])
        nacks = CounterMetricFamily(
            "whisper_gateway_xds_nacks", "xDS NACKs received", labels=["type"]
        )
        stale = CounterMetricFamily(
            "whisper_gateway_xds_stale_requests",
            "requests ignored for a stale nonce",
            labels=["type"],
        )
        state = GaugeMetricFamily(
            "whisper_gateway_xds_sync", "proxies per type and sync state", labels=["type", "state"]
        )
        for t in PUSH_ORDER:
            name = SHORT_NAMES[t]
            ts = [s.types[t] for s in streams if t in s.types]
            sent.add_metric([name], sum(x.sent_count for x in ts))
            acks.add_metric([name], sum(x.ack_count for x in ts))
            nacks.add_metric([name], sum(x.nack_count for x in ts))
            stale.add_metric([name], sum(x.stale_ignored for x in ts))
            version = snap.version(t) if snap else ""
            for st in SyncState:
                state.add_metric(
                    [name, st.value], sum(1 for x in ts if x.sync_state(version) is st)
                )
        yield from (sent, acks, nacks, stale, state)
        refused = GaugeMetricFamily(
            "whisper_gateway_snapshot_refused", "1 if the last snapshot built was refused"
        )
        refused.add_metric([], 1 if cp.cache.last_refusal is not None else 0)
        yield refused
        health = GaugeMetricFamily(
            "whisper_gateway_endpoint_health",
            "1 for the endpoint's current health",
            labels=["endpoint", "health"],
        )
        for e in cp.endpoints():
            for h in EndpointHealth:
                health.add_metric([e.key, h.value], 1 if e.health is h else 0)
        yield health
        probes = CounterMetricFamily(
            "whisper_gateway_probes", "health probes sent", labels=["endpoint"]
        )
        failures = CounterMetricFamily(
            "whisper_gateway_probe_failures", "health probes failed", labels=["endpoint"]
        )
        latency = GaugeMetricFamily(
            "whisper_gateway_probe_latency_seconds",
            "latency of the last probe",
            labels=["endpoint"],
        )
        if cp.health_monitor is not None:
            for key, ps in cp.health_monitor.snapshot().items():
                probes.add_metric([key], ps.probes_total)
                failures.add_metric([key], ps.failures_total)
                if ps.last_latency_ms is not None:
                    latency.add_metric([key], ps.last_latency_ms / 1000)
        yield from (probes, failures, latency)


def make_registry(cp: ControlPlane) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ControlPlaneCollector(cp))
    return registry
