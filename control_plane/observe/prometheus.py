"""Prometheus metrics of the control plane, read from its state at scrape time.

Nothing is counted twice: the collector reads the same per-stream ADS state,
snapshot cache and probe state that /status and /backends serve.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from control_plane.ir.model import EndpointHealth
from control_plane.observe.read_model import FleetReader
from control_plane.xds.resource import PUSH_ORDER, SHORT_NAMES
from control_plane.xds.server.stream_state import SyncState


class ControlPlaneCollector(Collector):
    def __init__(self, reader: FleetReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        reader = self.reader
        snap = reader.snapshot()
        streams = reader.streams()
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
        refused.add_metric([], 1 if reader.last_refusal() is not None else 0)
        yield refused
        health = GaugeMetricFamily(
            "whisper_gateway_endpoint_health",
            "1 for the endpoint's current health for a model",
            labels=["endpoint", "model", "health"],
        )
        for e in reader.endpoints():
            for m, mh in e.model_health.items():
                for h in EndpointHealth:
                    health.add_metric([e.key, m, h.value], 1 if mh is h else 0)
        yield health
        tasks = GaugeMetricFamily(
            "whisper_gateway_task_running",
            "1 while a supervised background task runs",
            labels=["task"],
        )
        restarts = CounterMetricFamily(
            "whisper_gateway_task_restarts",
            "restarts of a supervised background task after an error",
            labels=["task"],
        )
        for info in reader.tasks().values():
            tasks.add_metric([info.name], 1 if info.state == "running" else 0)
            restarts.add_metric([info.name], info.restarts)
        yield from (tasks, restarts)
        stats = reader.reconciler_stats()
        events = CounterMetricFamily(
            "whisper_gateway_reconciler_events", "events posted to the reconciler", labels=["kind"]
        )
        for kind, n in stats.events.items():
            events.add_metric([kind], n)
        pushes = CounterMetricFamily(
            "whisper_gateway_reconciler_pushes", "snapshots published by the reconciler"
        )
        pushes.add_metric([], stats.pushes)
        batches = CounterMetricFamily(
            "whisper_gateway_reconciler_batches", "event batches folded (after debounce)"
        )
        batches.add_metric([], stats.batches)
        yield from (events, pushes, batches)
        probes = CounterMetricFamily(
            "whisper_gateway_probes", "health probes sent", labels=["target"]
        )
        failures = CounterMetricFamily(
            "whisper_gateway_probe_failures", "health probes failed", labels=["target"]
        )
        latency = GaugeMetricFamily(
            "whisper_gateway_probe_latency_seconds",
            "latency of the last probe",
            labels=["target"],
        )
        for key, ps in reader.probes().items():
            probes.add_metric([key], ps.probes_total)
            failures.add_metric([key], ps.failures_total)
            if ps.last_latency_ms is not None:
                latency.add_metric([key], ps.last_latency_ms / 1000)
        yield from (probes, failures, latency)
        yield from _metering(reader)
        yield from _backends(reader)


def _metering(reader: FleetReader) -> Iterator[Metric]:
    """Audio seconds served, from the responses themselves (whisper_gateway.meter)."""
    stats = reader.request_stats
    audio = CounterMetricFamily(
        "whisper_gateway_audio_seconds",
        "seconds of audio transcribed or translated, as the responses report them",
        labels=["task", "model", "backend", "client"],
    )
    for (task, model, server, client), seconds in sorted(stats.audio_seconds.items()):
        audio.add_metric([task, model, server, client], seconds)
    unmetered = CounterMetricFamily(
        "whisper_gateway_unmetered_responses",
        "successful responses that reported no audio duration (text formats, streams "
        "without usage)",
        labels=["task", "model", "backend"],
    )
    for (task, model, server), n in sorted(stats.unmetered.items()):
        unmetered.add_metric([task, model, server], n)
    yield from (audio, unmetered)


def _backends(reader: FleetReader) -> Iterator[Metric]:
    """Each backend over the request-stats window, and its engine's own queue."""
    labels = ["backend"]
    qps = GaugeMetricFamily(
        "whisper_gateway_backend_qps", "requests/s over the window", labels=labels
    )
    lat = GaugeMetricFamily(
        "whisper_gateway_backend_latency_seconds",
        "request latency over the window",
        labels=["backend", "quantile"],
    )
    first = GaugeMetricFamily(
        "whisper_gateway_backend_first_byte_seconds",
        "time to the backend's first response byte over the window (median)",
        labels=labels,
    )
    errors = GaugeMetricFamily(
        "whisper_gateway_backend_window_errors",
        "errors over the window, by class",
        labels=["backend", "class"],
    )
    for server, w in sorted(reader.request_stats.windows().items()):
        qps.add_metric([server], w.qps)
        for q, value in (("0.5", w.p50_s), ("0.99", w.p99_s)):
            if value is not None:
                lat.add_metric([server, q], value)
        if w.first_byte_p50_s is not None:
            first.add_metric([server], w.first_byte_p50_s)
        for kind, n in sorted(w.errors.items()):
            errors.add_metric([server, kind], n)
    running = GaugeMetricFamily(
        "whisper_gateway_engine_running",
        "requests the backend itself reports running (its /metrics)",
        labels=["endpoint"],
    )
    waiting = GaugeMetricFamily(
        "whisper_gateway_engine_waiting",
        "requests the backend itself reports waiting (its /metrics)",
        labels=["endpoint"],
    )
    for key, sample in sorted(reader.engines().items()):
        if sample.running is not None:
            running.add_metric([key], sample.running)
        if sample.waiting is not None:
            waiting.add_metric([key], sample.waiting)
    yield from (qps, lat, first, errors, running, waiting)


def make_registry(reader: FleetReader) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ControlPlaneCollector(reader))
    return registry
