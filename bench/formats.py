"""What the gateway's format work costs, against not doing it, in the same run.

1. Streamed events: a FAKE backend sends N SSE chunks, each carrying its send
   time; the client records each event's arrival. Per-event latency (arrival -
   send) direct to the backend, through the gateway passing chunks through
   (x-stream-format: backend), and converting them (openai). Target: the
   conversion adds under 1 ms per event at p99.
2. Rendering: a FAKE backend answers a 10-minute verbose_json (150 segments);
   request latency through the gateway asking verbose_json (passed through) and
   srt (rendered in Envoy's Lua), median of R requests each.

    .venv/bin/python -m bench.formats [--events 1000] [--requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench._harness import target, write_result
from testkit.gateway import gateway_config, start_gateway
from testkit.procs import start_fake

STREAM_MODEL, LONG_MODEL = "fake/timed", "fake/long"


def form(model: str, **fields: str) -> aiohttp.FormData:
    f = aiohttp.FormData()
    f.add_field("model", model)
    for k, v in fields.items():
        f.add_field(k, v)
    f.add_field("file", b"RIFF" * 16, filename="a.wav", content_type="audio/wav")
    return f


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def event_latencies(url: str, stream_format: str | None) -> list[float]:
    headers = {"x-stream-format": stream_format} if stream_format else {}
    out: list[float] = []
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, data=form(STREAM_MODEL, stream="true"), headers=headers) as r,
    ):
        async for line in r.content:
            now = time.time()
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("type") == "transcript.text.done":
                continue  # the whole text again, sent at the end
            text = event.get("delta") or event.get("text")
            if text is None:
                choices = event.get("choices") or [{}]
                text = choices[0].get("delta", {}).get("content")
            if text and text.strip():
                out.append((now - float(text)) * 1000)
    return out


async def request_ms(url: str, fmt: str, n: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(url, data=form(LONG_MODEL, response_format=fmt)) as r:
                body = await r.read()
                assert r.status == 200, body[:300]
            times.append((time.perf_counter() - t0) * 1000)
    return times


async def run(events: int, requests: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    timed, tport = start_fake(work, "timed_stream", "--interval", "0.01", "--chunks", str(events))
    long, lport = start_fake(work, "verbose_long")
    off = {"enabled": False}
    cfg = gateway_config(
        [
            {"url": f"http://127.0.0.1:{tport}", "models": [STREAM_MODEL], "health": off},
            {"url": f"http://127.0.0.1:{lport}", "models": [LONG_MODEL], "health": off},
        ]
    )
    gw = start_gateway(work, cfg)
    try:
        gw.wait_synced()
        path = "/v1/audio/transcriptions"
        direct = await event_latencies(f"http://127.0.0.1:{tport}{path}", None)
        passed = await event_latencies(gw.url + path, "backend")
        converted = await event_latencies(gw.url + path, "openai")
        verbose = await request_ms(gw.url + path, "verbose_json", requests)
        srt = await request_ms(gw.url + path, "srt", requests)
    finally:
        gw.stop()
        timed.stop()
        long.stop()

    def summary(xs: list[float]) -> dict[str, float]:
        return {"n": len(xs), "p50_ms": statistics.median(xs), "p99_ms": pct(xs, 0.99)}

    added_p99 = pct(converted, 0.99) - pct(passed, 0.99)
    return {
        "events": {
            "direct": summary(direct),
            "gateway_pass_through": summary(passed),
            "gateway_openai_conversion": summary(converted),
            "conversion_added_p50_ms": statistics.median(converted) - statistics.median(passed),
            "conversion_added_p99_ms": added_p99,
            "target_added_p99_ms": 1.0,
            "target_met": added_p99 < 1.0,
        },
        "render_10min": {
            "segments": 150,
            "verbose_json_median_ms": statistics.median(verbose),
            "srt_median_ms": statistics.median(srt),
            "srt_added_ms": statistics.median(srt) - statistics.median(verbose),
            "requests_each": requests,
        },
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="50 events, 3 requests: CI")
    args = p.parse_args(argv)
    events, requests = (50, 3) if args.smoke else (args.events, args.requests)
    result = asyncio.run(run(events, requests))
    ev = result["events"]
    result["command"] = "python -m bench.formats" + (" --smoke" if args.smoke else "")
    result["targets"] = [
        target(
            "OpenAI stream conversion adds < 1 ms per event at p99",
            "< 1 ms",
            ev["conversion_added_p99_ms"],
            ev["conversion_added_p99_ms"] < 1.0,
        )
    ]
    print(write_result("formats", result).read_text())


if __name__ == "__main__":
    main()
