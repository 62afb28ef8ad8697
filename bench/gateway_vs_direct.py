"""Gateway against direct, same fast FAKE backend, same load generator, same run.

Throughput and latency for small uploads at concurrency 32 (wrk), and Envoy's
peak memory while 16 clients upload 25 MB each. Ratios, not absolute speed,
are the point: both paths run on this machine in this run.

    .venv/bin/python -m bench.gateway_vs_direct
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from support.gateway import gateway_config, start_gateway  # type: ignore[import-not-found]
from support.procs import start_fake  # type: ignore[import-not-found]

from bench._harness import ROOT, rss_kb, write_result

MODEL = "fake/fast"
DURATION_S = 10
CONNECTIONS = 32


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{DURATION_S}s",
            "--latency",
            "-s",
            str(ROOT / "bench/wrk_multipart.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "WRK_MODEL": MODEL},
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {p: _ms(v, u) for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


async def big_uploads(url: str, n: int, size: int) -> int:
    payload = os.urandom(size)

    async def one(session: aiohttp.ClientSession) -> int:
        data = aiohttp.FormData()
        data.add_field("model", MODEL)
        data.add_field("file", payload, filename="big.wav")
        async with session.post(url, data=data) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as s:
        statuses = await asyncio.gather(*(one(s) for _ in range(n)))
    return sum(1 for st in statuses if st == 200)


async def sample_peak(pid: int, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, rss_kb(pid))
        await asyncio.sleep(0.01)
    return peak


async def memory_run(url: str, envoy_pid: int) -> dict[str, Any]:
    base = rss_kb(envoy_pid)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_peak(envoy_pid, stop))
    ok = await big_uploads(url, 16, 25 * 1000 * 1000)
    stop.set()
    peak = await sampler
    return {
        "envoy_rss_before_mb": base / 1024,
        "envoy_rss_peak_mb": peak / 1024,
        "uploads_ok": ok,
        "uploads": 16,
        "upload_mb": 25,
    }


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    fake, port = start_fake(work, "fast")
    cfg = gateway_config(
        [
            {
                "url": f"http://127.0.0.1:{port}",
                "models": [MODEL],
                "max_concurrency": 64,
                "health": {"enabled": False},
            }
        ],
    )
    gw = start_gateway(work, cfg)
    try:
        gw.wait_synced()
        path = "/v1/audio/transcriptions"
        direct = wrk(f"http://127.0.0.1:{port}{path}")
        via = wrk(gw.url + path)
        direct2 = wrk(f"http://127.0.0.1:{port}{path}")  # bracket: machine noise shows
        assert gw.envoy is not None
        mem = asyncio.run(memory_run(gw.url + path, gw.envoy.pid))
    finally:
        gw.stop()
        fake.stop()
    direct_rps = (direct["rps"] + direct2["rps"]) / 2
    direct_p99 = (direct["p99_ms"] + direct2["p99_ms"]) / 2
    result = {
        "load": f"wrk -t2 -c{CONNECTIONS} -d{DURATION_S}s, 4 KiB multipart upload",
        "direct": direct,
        "direct_again": direct2,
        "gateway": via,
        "throughput_ratio": via["rps"] / direct_rps,
        "p99_ratio": via["p99_ms"] / direct_p99,
        "memory": mem,
        "reference_router_throughput_ratio": 0.42,
    }
    path_out = write_result("gateway_vs_direct", result)
    print(
        f"direct  : {direct_rps:8.0f} req/s  p50 {direct['p50_ms']:.2f} ms  p99 {direct_p99:.2f} ms"
    )
    print(
        f"gateway : {via['rps']:8.0f} req/s  p50 {via['p50_ms']:.2f} ms  p99 "
        f"{via['p99_ms']:.2f} ms  (non-2xx {via['non_2xx']:.0f})"
    )
    print(
        f"ratio   : throughput {result['throughput_ratio']:.2f}x (target >= 0.8, reference "
        f"router 0.42x), p99 {result['p99_ratio']:.2f}x (target <= 1.5)"
    )
    print(
        f"memory  : Envoy RSS {mem['envoy_rss_before_mb']:.0f} MB -> peak "
        f"{mem['envoy_rss_peak_mb']:.0f} MB for 16 x 25 MB uploads ({mem['uploads_ok']} ok)"
    )
    print(f"written : {path_out}")
    time.sleep(0)


if __name__ == "__main__":
    main()
