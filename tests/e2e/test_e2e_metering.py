"""Audio-seconds metering and per-backend stats as requests flow, on the real stack.

Real Envoy, real control plane, real tiny.en / base backends (the session's
`gateway`). Each response's own audio duration (verbose_json `duration`, json
`usage.seconds`, a converted stream's usage) reaches the control plane through
Envoy's access log service and must add up, per task, model, backend and client
key, on /metrics; `/backends` must show the window's requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import BASE, TINY
from prometheus_client.parser import text_string_to_metric_families

from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import FIXTURES

HELLO = FIXTURES / "hello.wav"
AUDIO = "whisper_gateway_audio_seconds_total"
UNMETERED = "whisper_gateway_unmetered_responses_total"


def samples(admin_url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = aiohttp_get(f"{admin_url}/metrics")
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def aiohttp_get(url: str) -> str:
    async def go() -> str:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return await r.text()

    return asyncio.run(go())


def total(admin_url: str, name: str, **labels: str) -> float:
    return sum(
        v
        for k, v in samples(admin_url, name).items()
        if all(dict(k).get(a) == b for a, b in labels.items())
    )


def wait_for_total(admin_url: str, name: str, want: float, **labels: str) -> float:
    """Poll until the counter reaches `want` (Envoy ships its log every 0.5 s), bounded."""
    deadline = time.monotonic() + 15
    seen = total(admin_url, name, **labels)
    while seen < want - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = total(admin_url, name, **labels)
    return seen


async def transcribe(
    url: str, model: str, path: str = "/v1/audio/transcriptions", **fields: str
) -> tuple[int, str]:
    key = fields.pop("_key", None)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = aiohttp.FormData()
    data.add_field("model", model)
    for k, v in fields.items():
        data.add_field(k, v)
    data.add_field("file", HELLO.read_bytes(), filename="hello.wav")
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data, headers=headers) as r:
        return r.status, await r.text()


def test_audio_seconds_add_up_per_model_task_and_backend(gateway: Gateway) -> None:
    admin = gateway.admin_url
    before = total(admin, AUDIO, model=TINY, task="transcriptions")
    before_tr = total(admin, AUDIO, model=BASE, task="translations")

    async def flow() -> list[tuple[int, str]]:
        return [
            await transcribe(gateway.url, TINY, response_format="verbose_json"),
            await transcribe(gateway.url, TINY, response_format="json"),
            await transcribe(gateway.url, TINY, response_format="text"),
            await transcribe(
                gateway.url, BASE, "/v1/audio/translations", response_format="verbose_json"
            ),
        ]

    verbose, plain, text, translated = asyncio.run(flow())
    assert all(status == 200 for status, _ in (verbose, plain, text, translated)), (
        verbose,
        plain,
        text,
        translated,
    )
    duration = json.loads(verbose[1])["duration"]
    usage = json.loads(plain[1])["usage"]["seconds"]
    assert duration > 0 and usage >= duration  # usage is whole seconds, rounded up
    # text is rendered by the gateway from the backend's json: its usage is metered
    # (srt and vtt come from verbose_json: their exact duration is).
    want = before + duration + usage + usage
    assert wait_for_total(admin, AUDIO, want, model=TINY, task="transcriptions") == pytest.approx(
        want, abs=1e-6
    )
    tr = json.loads(translated[1])["duration"]
    got = wait_for_total(admin, AUDIO, before_tr + tr, model=BASE, task="translations")
    assert got == pytest.approx(before_tr + tr, abs=1e-6)
    # Per backend: the served backend's share grew; the labels name real endpoints.
    backends = {dict(k)["backend"] for k in samples(admin, AUDIO)}
    served = {f"http://{row['endpoint']}" for row in gateway.backends()}
    assert backends and backends <= served


def test_a_converted_stream_with_usage_is_metered(gateway: Gateway) -> None:
    """A converted stream is metered: the gateway asks the backend for usage when the
    client did not. One in the `backend` stream format passes byte for byte, so it
    carries a duration only when the client asks; without, it is counted as
    unmetered, never guessed."""
    admin = gateway.admin_url
    before = total(admin, AUDIO, model=TINY)
    before_unmetered = total(admin, UNMETERED, model=TINY)

    async def stream(usage: bool, stream_format: str = "openai") -> str:
        data = aiohttp.FormData()
        fields = [("model", TINY), ("stream", "true")]
        fields += [("stream_include_usage", "true")] if usage else []
        for k, v in fields:
            data.add_field(k, v)
        data.add_field("file", HELLO.read_bytes(), filename="hello.wav")
        headers = {"x-stream-format": stream_format}
        async with aiohttp.ClientSession() as s:
            async with s.post(
                gateway.url + "/v1/audio/transcriptions", data=data, headers=headers
            ) as r:
                assert r.status == 200
                return await r.text()

    for usage in (True, False):
        body = asyncio.run(stream(usage))
        done = [
            json.loads(line[6:])
            for line in body.splitlines()
            if line.startswith("data: {") and "transcript.text.done" in line
        ]
        assert done and done[0]["usage"]["output_tokens"] > 0, body
        got = wait_for_total(admin, AUDIO, before + 1, model=TINY)
        assert got > before  # the backend's usage.seconds (whole seconds) was counted
        before = got
    asyncio.run(stream(usage=False, stream_format="backend"))
    seen = wait_for_total(admin, UNMETERED, before_unmetered + 1, model=TINY)
    assert seen == before_unmetered + 1
    assert total(admin, AUDIO, model=TINY) == got


def test_backends_rows_show_the_window(gateway: Gateway) -> None:
    asyncio.run(transcribe(gateway.url, TINY))
    deadline = time.monotonic() + 15
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = [r for r in gateway.backends() if TINY in r["models"] and r["window"]["requests"]]
        if rows:
            break
        time.sleep(0.2)
    assert rows, gateway.backends()
    w = rows[0]["window"]
    assert w["qps"] > 0 and w["latency_p50_s"] > 0 and w["latency_p99_s"] >= w["latency_p50_s"]
    assert w["first_byte_p50_s"] is not None and w["first_byte_p50_s"] <= w["latency_p99_s"]
    assert rows[0]["in_flight"] is not None  # Envoy's own count, read on asking
    assert rows[0]["health"] == "HEALTHY"


def test_metering_per_client_key(tmp_path: Path, fleet: dict[str, Any]) -> None:
    """With keys on, each key's client is its own label; no key appears anywhere."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "clients": [
                    {"name": "team-a", "key": "sk-a-123456"},
                    {"name": "team-b", "key": "sk-b-654321"},
                ]
            }
        )
    )
    cfg = gateway_config(
        [{"url": fleet["tiny"][0], "models": [TINY], "max_concurrency": 2}],
        api_keys={"file": str(keys)},
        stats={"log_interval_s": 1.0, "window_s": 30.0},
    )
    gw = start_gateway(tmp_path / "gw", cfg)
    try:
        gw.wait_backends({fleet["tiny"][0].removeprefix("http://")})

        async def flow() -> list[tuple[int, str]]:
            return [
                await transcribe(gw.url, TINY, response_format="verbose_json", _key="sk-a-123456"),
                await transcribe(gw.url, TINY, response_format="verbose_json", _key="sk-a-123456"),
                await transcribe(gw.url, TINY, response_format="verbose_json", _key="sk-b-654321"),
            ]

        results = asyncio.run(flow())
        assert all(s == 200 for s, _ in results), results
        d = [json.loads(b)["duration"] for _, b in results]
        a = wait_for_total(gw.admin_url, AUDIO, d[0] + d[1], client="team-a")
        b = wait_for_total(gw.admin_url, AUDIO, d[2], client="team-b")
        assert (a, b) == (pytest.approx(d[0] + d[1], abs=1e-6), pytest.approx(d[2], abs=1e-6))
        metrics = aiohttp_get(f"{gw.admin_url}/metrics")
        assert "sk-a-123456" not in metrics and "sk-b-654321" not in metrics
        # --log-stats: a line per backend, from the same rows as /backends.
        deadline = time.monotonic() + 15
        log = ""
        while time.monotonic() < deadline and "req/s over 30s" not in log:
            time.sleep(0.3)
            log = (gw.workdir / "control-plane.log").read_text()
        assert f"backend {fleet['tiny'][0]}" in log and "req/s over 30s" in log
        # The access log names the client and the audio, never the key (Envoy flushes
        # its log every second or so).
        deadline = time.monotonic() + 15
        mine: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(mine) < 2:
            time.sleep(0.3)
            envoy_log = (gw.workdir / "envoy.log").read_text()
            lines = [json.loads(x) for x in envoy_log.splitlines() if x.startswith("{")]
            mine = [x for x in lines if x.get("client") == "team-a"]
        assert len(mine) == 2 and all(x["audio_s"] > 0 for x in mine), lines
        assert "sk-a-123456" not in envoy_log
    finally:
        gw.stop()
