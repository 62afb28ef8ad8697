"""What each backend is doing: one row per endpoint for `/backends`, the CLI and the logs.

Three sources, each read where it is cheapest: the access log window
(request_stats: QPS, latency, time to first byte, errors), Envoy's own count
of requests active per host (read at the time of asking), and each backend's
/metrics (`vllm:num_requests_running`, `vllm:num_requests_waiting`) read every
`stats.engine_interval_s` by `scrape_engines` (the router's engine stats). The
rows are built by a pure function so the CLI and the log line show the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from control_plane.ir.fleet import EndpointView, server_url, target_key
from control_plane.observe.engines import EngineSample
from control_plane.observe.request_stats import RequestStats, Window

log = logging.getLogger("control_plane.stats")


def backend_rows(
    views: Iterable[EndpointView],
    stats: RequestStats,
    in_flight: Mapping[str, float],
    engines: Mapping[str, EngineSample],
    probes: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One row per endpoint: health, its probes, the window, in flight, engine, audio."""
    windows = stats.windows()
    audio: dict[str, float] = {}
    for (_, _, server, _), seconds in stats.audio_seconds.items():
        audio[server] = audio.get(server, 0.0) + seconds
    rows = []
    for v in views:
        server = server_url(v)
        window = windows.get(server) or Window(0, 0.0, None, None, None, {})
        engine = engines.get(v.key)
        rows.append(
            {
                "endpoint": v.key,
                "backend_url": v.backend_url,
                "models": list(v.models),
                "health": v.health.value,
                "model_health": {m: h.value for m, h in v.model_health.items()},
                "draining": v.draining,
                # The first model's probe; every model's in `probes`.
                "probe": probes.get(target_key(v.key, v.models[0])),
                "probes": {m: probes.get(target_key(v.key, m)) for m in v.models},
                "in_flight": in_flight.get(v.key),
                "window_s": stats.window_s,
                "window": window.to_dict(),
                "engine": None if engine is None else engine.to_dict(),
                "audio_seconds": round(audio.get(server, 0.0), 3),
            }
        )
    return rows


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def log_line(row: Mapping[str, Any]) -> str:
    """The router's --log-stats line, for one backend."""
    w, e = row["window"], row["engine"] or {}
    errors = ",".join(f"{k}={n}" for k, n in sorted(w["errors"].items())) or "none"
    return (
        f"backend {row['backend_url']} ({row['endpoint']}) {row['health']}: "
        f"{w['qps']:.2f} req/s over {row['window_s']:g}s, p50 {_s(w['latency_p50_s'])}, "
        f"p99 {_s(w['latency_p99_s'])}, first byte p50 {_s(w['first_byte_p50_s'])}, "
        f"in flight {row['in_flight'] if row['in_flight'] is not None else '-'}, "
        f"engine running {e.get('running', '-')} waiting {e.get('waiting', '-')}, "
        f"errors {errors}, audio {row['audio_seconds']:.1f}s"
    )
