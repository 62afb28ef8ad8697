"""`whisper-gateway status` and `whisper-gateway backends`: the admin API as tables.

`status` is `istioctl proxy-status` for this gateway: every Envoy connected
over ADS, each xDS type SYNCED / STALE / NOT_SENT / ERROR, the versions and the
last NACK. `backends` is one line per endpoint: models, health, last probe, in
flight, QPS, p50/p99 latency, errors and audio served. Both read the admin API
(GET /status, GET /backends); `--json` prints what it returned, for scripts.
The tables are pure functions of that JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

TYPES = ("CDS", "EDS", "LDS", "RDS", "SDS")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    s = max(0.0, now - at)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def _short(version: str) -> str:
    return version[:8] if version else "-"


def status_table(status: dict[str, Any], now: float | None = None) -> str:
    """One row per Envoy; then the snapshot's versions and any last NACK in full."""
    now = time.time() if now is None else now
    proxies = status.get("proxies", [])
    types = [t for t in TYPES if any(t in p["types"] for p in proxies)] or list(TYPES[:4])
    header = ["NODE", "PEER", "ENVOY", *types, "CONNECTED"]
    rows = []
    nacks = []
    for p in proxies:
        cells = []
        for t in types:
            st = p["types"].get(t)
            cells.append("-" if st is None else st["state"])
            if st is not None and st.get("last_nack"):
                n = st["last_nack"]
                nacks.append(
                    f"{p['node_id']} {t} NACK of version {_short(n['version'])} "
                    f"({_ago(n['at'], now)}): {n['message']}"
                )
        rows.append(
            [
                p.get("node_id") or "-",
                p.get("peer") or "-",
                p.get("envoy_version") or "-",
                *cells,
                _ago(p.get("connected_at"), now),
            ]
        )
    versions = status.get("versions", {})
    out = [_table(header, rows) if rows else "no Envoy connected"]
    out.append(
        "snapshot: " + " ".join(f"{t} {_short(v)}" for t, v in versions.items() if v)
        if versions
        else "snapshot: none published yet"
    )
    refusal = status.get("last_refusal")
    if refusal:
        out.append(f"last refused snapshot ({_ago(refusal['at'], now)}): {refusal['errors']}")
    out.extend(nacks)
    return "\n".join(out)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _probe(row: dict[str, Any], now: float) -> str:
    probe = row.get("probe") or {}
    if not probe or probe.get("last_probe_at") is None:
        return "-"
    ok = "fail" if probe.get("last_error") else "ok"
    lat = probe.get("last_latency_ms")
    took = "" if lat is None else f" {lat / 1000:.2f}s"
    return f"{ok}{took} {_ago(probe['last_probe_at'], now)}"


def backends_table(rows: list[dict[str, Any]], now: float | None = None) -> str:
    now = time.time() if now is None else now
    header = [
        "ENDPOINT",
        "MODELS",
        "HEALTH",
        "LAST PROBE",
        "IN FLIGHT",
        "QPS",
        "P50",
        "P99",
        "FIRST BYTE",
        "ERRORS",
        "AUDIO",
    ]
    lines = []
    window = None
    for r in rows:
        w = r["window"]
        window = r.get("window_s", window)
        errors = sum(w["errors"].values())
        lines.append(
            [
                r["endpoint"],
                ",".join(r["models"]),
                r["health"],
                _probe(r, now),
                "-" if r.get("in_flight") is None else f"{r['in_flight']:g}",
                f"{w['qps']:.2f}",
                _secs(w["latency_p50_s"]),
                _secs(w["latency_p99_s"]),
                _secs(w["first_byte_p50_s"]),
                str(errors),
                f"{r.get('audio_seconds', 0.0):.1f}s",
            ]
        )
    if not lines:
        return "no backends"
    note = f"QPS, latency and errors over the last {window:g} s" if window else ""
    return _table(header, lines) + ("\n" + note if note else "")


def render(command: str, data: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(data, indent=2)
    return status_table(data) if command == "status" else backends_table(data)
