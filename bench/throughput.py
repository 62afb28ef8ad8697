"""Scenario 1: small uploads, gateway vs direct vs the LiteLLM proxy, same backend, same run.

One load generator (wrk, bench/wrk_multipart.lua: a 4 KiB multipart upload) drives
three paths to the same FAKE backend, one after the other, at concurrency 1, 8, 32
and 128: direct (the baseline), through the gateway (real Envoy + control plane,
deployed defaults but health probes off) and through a real LiteLLM proxy
(bench/litellm_peer.py, default routing, no retries). Two backends:

- `fast`: answers at once, so the figures are each proxy's own cost;
- `form_cost`: parses the whole form with whisper_backend's own reader, then waits
  50 ms (latency, not CPU, as a GPU server's), so the proxies' cost is seen next
  to a realistic per-request cost.

Figures are ratios to direct measured in the same run, never absolute speed. The
machine is shared by everything here (wrk, Envoy, LiteLLM and the backend on 2
cores), which is part of what each path costs.

    .venv/bin/python -m bench.throughput [--smoke]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._harness import ROOT, rss_kb, target, write_result
from bench.litellm_peer import LITELLM_VERSION, peer_enabled, start_litellm
from testkit.gateway import gateway_config, start_gateway
from testkit.procs import start_fake

PATH = "/v1/audio/transcriptions"
PATHS = ("direct", "gateway", "litellm")
DELAY_S = 0.05
BACKENDS: dict[str, dict[str, Any]] = {
    "fast": {
        "mode": "fast",
        "args": (),
        "model": "fake/fast",
        "cost": "FAKE fast: reads the body, answers at once (each proxy's own cost)",
    },
    "form_cost": {
        "mode": "form_cost",
        "args": ("--delay", str(DELAY_S)),
        "model": "fake/form-cost",
        "cost": (
            "FAKE form_cost: parses the whole form with whisper_backend's reader, "
            f"then waits {DELAY_S * 1000:.0f} ms without CPU (a GPU-like backend)"
        ),
    },
}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, model: str, connections: int, duration_s: float) -> dict[str, float]:
    """One closed-loop wrk run; requests/s, p50/p99 and every error wrk counts."""
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration_s:g}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(ROOT / "bench/wrk_multipart.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "WRK_MODEL": model},
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    lat = {p: _ms(v, u) for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s|m)\b", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if rps is None or total is None or "50" not in lat or "99" not in lat:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "requests": float(total.group(1)),
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(x) for x in sock.groups())) if sock else 0.0,
    }


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def run(smoke: bool) -> dict[str, Any]:
    levels = [1, 8] if smoke else [1, 8, 32, 128]
    duration_s = 1.0 if smoke else 5.0
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    fakes = {name: start_fake(work, b["mode"], *b["args"]) for name, b in BACKENDS.items()}
    urls = {name: f"http://127.0.0.1:{port}" for name, (_, port) in fakes.items()}
    gw = peer = None
    try:
        cfg = gateway_config(
            [
                {
                    "url": urls[name],
                    "models": [b["model"]],
                    "max_concurrency": 1024,  # no queueing by the gateway at c=128
                    "health": {"enabled": False},
                }
                for name, b in BACKENDS.items()
            ],
            edge={},  # deployed default: no x-gateway-backend header
        )
        gw = start_gateway(work / "gateway", cfg)
        gw.wait_synced()
        t0 = time.monotonic()
        paths: tuple[str, ...] = PATHS
        litellm_start_s: float | None = None
        bases: dict[str, str | None] = {"direct": None, "gateway": gw.url}
        if peer_enabled():
            peer = start_litellm(
                work / "litellm",
                [],
                [],
                deployments=[(b["model"], urls[n]) for n, b in BACKENDS.items()],
            )
            litellm_start_s = time.monotonic() - t0
            bases["litellm"] = peer.url
        else:
            paths = ("direct", "gateway")  # stated in the result: "peer"
        assert gw.envoy is not None
        results: dict[str, Any] = {}
        for name, b in BACKENDS.items():
            base_of = {**bases, "direct": urls[name]}
            for p in paths if not smoke else ():  # warm-up: LiteLLM's first-request caches
                wrk(str(base_of[p]) + PATH, b["model"], 4, 1.0)
            per_c: dict[str, Any] = {}
            for c in levels:
                row: dict[str, Any] = {}
                for p in paths:
                    row[p] = wrk(str(base_of[p]) + PATH, b["model"], c, duration_s)
                    print(
                        f"{name:9} c={c:<4} {p:8} {row[p]['rps']:8.0f} req/s  "
                        f"p50 {row[p]['p50_ms']:8.2f} ms  p99 {row[p]['p99_ms']:8.2f} ms  "
                        f"errors {row[p]['non_2xx'] + row[p]['socket_errors']:.0f}",
                        flush=True,
                    )
                d = row["direct"]
                for p in paths[1:]:
                    row[p]["throughput_ratio"] = _ratio(row[p]["rps"], d["rps"])
                    row[p]["p50_ratio"] = _ratio(row[p]["p50_ms"], d["p50_ms"])
                    row[p]["p99_ratio"] = _ratio(row[p]["p99_ms"], d["p99_ms"])
                row["envoy_rss_mb"] = rss_kb(gw.envoy.pid) / 1024
                if peer is not None:
                    row["litellm_rss_mb"] = peer.rss_kb() / 1024
                per_c[str(c)] = row
            results[name] = {"model": b["model"], "cost": b["cost"], "by_concurrency": per_c}
    finally:
        for proc in (peer, gw):
            if proc is not None:
                proc.stop()
        for fake, _ in fakes.values():
            fake.stop()
    return {
        "levels": levels,
        "duration_s": duration_s,
        "litellm_start_s": litellm_start_s,
        "results": results,
    }


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The stated targets, at c=32 (c=8 in a smoke run, which has no c=32)."""
    c = "32" if "32" in data["results"]["fast"]["by_concurrency"] else "8"
    out = []
    for name in BACKENDS:
        row = data["results"][name]["by_concurrency"][c]
        g, lite = row["gateway"], row.get("litellm")
        tr, pr = g["throughput_ratio"], g["p99_ratio"]
        out.append(
            target(
                f"{name}: gateway throughput vs direct at c={c}",
                ">= 0.8x direct",
                tr,
                tr is not None and tr >= 0.8,
            )
        )
        out.append(
            target(
                f"{name}: gateway p99 vs direct at c={c}",
                "<= 1.5x direct",
                pr,
                pr is not None and pr <= 1.5,
            )
        )
        if lite is None:
            continue  # the peer was left out (BENCH_PEER=0): stated in "peer"
        vs = _ratio(g["rps"], lite["rps"])
        out.append(
            target(
                f"{name}: gateway throughput vs LiteLLM at c={c}",
                ">= 1.0x LiteLLM's",
                vs,
                vs is not None and vs >= 1.0,
            )
        )
    every = [
        _ratio(row["gateway"]["rps"], row["litellm"]["rps"])
        for name in BACKENDS
        for row in data["results"][name]["by_concurrency"].values()
        if "litellm" in row
    ]
    worst = min((v for v in every if v is not None), default=None)
    if every:
        out.append(
            target(
                "gateway throughput vs LiteLLM, worst of every backend and concurrency",
                ">= 1.0x LiteLLM's",
                worst,
                worst is not None and worst >= 1.0,
            )
        )
    errors = sum(
        row[p]["non_2xx"] + row[p]["socket_errors"]
        for name in BACKENDS
        for row in data["results"][name]["by_concurrency"].values()
        for p in ("direct", "gateway")
    )
    out.append(target("errors direct and through the gateway", "0", errors, errors == 0))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--smoke", action="store_true", help="tiny counts: proves it runs")
    a = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    started = time.monotonic()
    data = run(a.smoke)
    levels, dur = data["levels"], data["duration_s"]
    result = {
        "command": ".venv/bin/python -m bench.throughput" + (" --smoke" if a.smoke else ""),
        "smoke": a.smoke,
        "load": (
            f"wrk -t{{1 at c=1, else 2}} -c{{{','.join(map(str, levels))}}} -d{dur:g}s "
            "--timeout 30s, a 4 KiB multipart upload (bench/wrk_multipart.lua), one path "
            "after the other at each concurrency"
        ),
        "peer": f"LiteLLM proxy {LITELLM_VERSION} (simple-shuffle, num_retries 0, 1 worker)"
        if peer_enabled()
        else "LiteLLM left out of this run (BENCH_PEER=0)",
        "gateway": "Envoy 1 worker, deployed defaults, health probes off, max_concurrency 1024",
        **data,
        "wall_s": time.monotonic() - started,
    }
    result["targets"] = targets(result)
    path = write_result("throughput", result)
    for t in result["targets"]:
        v = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['name']}: {v} (want {t['target']})")
    print(f"written : {path}")


if __name__ == "__main__":
    main()
