"""The router's own endpoints and metrics through our listener, against the real Envoy.

A router user's probes call /health, Prometheus scrapes /metrics, operators
read /engines and /version: each answers on the listener in the router's shape,
and the metric values move as requests flow, backends die and requests queue
in Envoy. Every query of the router's dashboard and autoscaling rules returns
data from our /metrics. The backends are FAKE ones: what is tested is the
gateway's bookkeeping, not Whisper.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import Proc, start_fake
from testkit.promql import ADAPTER, DASHBOARD, evaluate, scrape

FAST, SLOW = "fake/fast", "fake/slow"
PROBES = {"interval_s": 0.5, "timeout_s": 5, "healthy_threshold": 1, "unhealthy_threshold": 1}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def transcribe(gw: Gateway, model: str) -> int:
    b = "rtboundary"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        f"RIFF....\r\n--{b}--\r\n"
    ).encode()
    req = urllib.request.Request(
        f"{gw.url}/v1/audio/transcriptions",
        data=body,
        method="POST",
        headers={"content-type": f"multipart/form-data; boundary={b}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def metric(text: str, name: str, **labels: str) -> float | None:
    for series, value in scrape(text, {}).get(name, {}).items():
        if all((k, v) in series for k, v in labels.items()):
            return value
    return None


def until(cond: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out; last: {last}")


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Proc, int]]]:
    logs = tmp_path_factory.mktemp("router-fakes")
    procs = {
        "fast1": start_fake(logs, "fast"),
        "fast2": start_fake(logs, "fast"),
        "slow": start_fake(logs, "slow", "--delay", "3"),
    }
    yield procs
    for p, _ in procs.values():
        p.stop()


def backends(fakes: dict[str, tuple[Proc, int]]) -> list[dict[str, Any]]:
    return [
        {"url": f"http://127.0.0.1:{fakes['fast1'][1]}", "models": [FAST], "health": PROBES},
        {"url": f"http://127.0.0.1:{fakes['fast2'][1]}", "models": [FAST], "health": PROBES},
        {
            "url": f"http://127.0.0.1:{fakes['slow'][1]}",
            "models": [SLOW],
            "max_concurrency": 1,
            "health": {**PROBES, "timeout_s": 10},
        },
    ]


def test_yaml_mode_health_version_and_no_public_metrics(
    tmp_path: Path, fakes: dict[str, tuple[Proc, int]]
) -> None:
    gw = start_gateway(tmp_path, gateway_config(backends(fakes)))
    try:
        gw.wait_backends()
        assert get(f"{gw.url}/health") == (200, json.dumps({"status": "healthy"}))
        status, body = get(f"{gw.url}/version")
        assert status == 200 and set(json.loads(body)) == {"version"}
        for path in ("/metrics", "/engines"):
            status, body = get(f"{gw.url}{path}")
            assert status == 404 and json.loads(body)["error"]["code"] == 404, "off by default"
        # The admin API keeps them always.
        status, text = get(f"{gw.admin_url}/router/metrics")
        assert status == 200 and metric(text, "vllm:healthy_pods_total") == 1.0
        assert metric(text, "whisper_gateway_xds_connected_proxies") == 1.0  # ours too
        status, body = get(f"{gw.admin_url}/router/engines")
        assert status == 200 and len(json.loads(body)) == 3
    finally:
        gw.stop()


def test_public_metrics_move_with_traffic_and_failures(
    tmp_path: Path, fakes: dict[str, tuple[Proc, int]]
) -> None:
    cfg = gateway_config(backends(fakes), public_router_endpoints=True)
    gw = start_gateway(tmp_path, cfg)
    slow_server = f"http://127.0.0.1:{fakes['slow'][1]}"
    try:
        gw.wait_backends()
        status, body = get(f"{gw.url}/engines")
        engines = json.loads(body)
        assert status == 200
        assert {e["engine_id"]: e["serving_models"] for e in engines} == {
            f"http://127.0.0.1:{fakes['fast1'][1]}": [FAST],
            f"http://127.0.0.1:{fakes['fast2'][1]}": [FAST],
            slow_server: [SLOW],
        }
        assert all(isinstance(e["created"], int) for e in engines)

        def scraped() -> str:
            status, text = get(f"{gw.url}/metrics")
            assert status == 200
            return text

        before = metric(scraped(), "vllm:num_incoming_requests_total", model=FAST) or 0.0
        assert [transcribe(gw, FAST) for _ in range(3)] == [200] * 3
        until(
            lambda: metric(scraped(), "vllm:num_incoming_requests_total", model=FAST) == before + 3
        )
        assert (
            metric(scraped(), "vllm:current_qps", server=f"http://127.0.0.1:{fakes['fast1'][1]}")
            or 0
        ) + (
            metric(scraped(), "vllm:current_qps", server=f"http://127.0.0.1:{fakes['fast2'][1]}")
            or 0
        ) > 0

        # Three requests for a backend that takes one at a time: one runs, two wait in Envoy.
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(transcribe, gw, SLOW) for _ in range(3)]
            until(
                lambda: (
                    metric(scraped(), "vllm:num_requests_running", server=slow_server) == 1.0
                    and metric(scraped(), "vllm:num_requests_waiting", server=slow_server) == 2.0
                ),
                timeout=5,
            )
            # Every dashboard and autoscaling query returns data.
            data = scrape(scraped(), {"namespace": "default", "job": "whisper-gateway"})
            for q in DASHBOARD + ADAPTER:
                assert evaluate(q, data), f"no data for {q}"
            waiting = evaluate("sum by(namespace) (vllm:num_requests_waiting)", data)
            assert waiting == {(("namespace", "default"),): 2.0}
            assert [f.result() for f in held] == [200] * 3

        # A killed backend drops to 0.
        fast1 = f"http://127.0.0.1:{fakes['fast1'][1]}"
        assert metric(scraped(), "vllm:healthy_pods_total", server=fast1) == 1.0
        fakes["fast1"][0].stop()
        until(lambda: metric(scraped(), "vllm:healthy_pods_total", server=fast1) == 0.0)
        assert metric(scraped(), "vllm:healthy_pods_total", server=slow_server) == 1.0
        until(
            lambda: (
                metric(scraped(), "vllm:request_latency_seconds_count", model=SLOW, status="200")
                == 3.0
            )
        )
    finally:
        gw.stop()


def test_health_is_503_when_every_backend_is_down(tmp_path: Path) -> None:
    fake, port = start_fake(tmp_path, "fast")
    gw = start_gateway(
        tmp_path,
        gateway_config([{"url": f"http://127.0.0.1:{port}", "models": [FAST], "health": PROBES}]),
    )
    try:
        gw.wait_backends()
        assert get(f"{gw.url}/health")[0] == 200
        fake.stop()
        _, body = until(lambda: (r := get(f"{gw.url}/health"))[0] == 503 and r)
        assert json.loads(body) == {"status": "no model has a healthy backend"}
    finally:
        gw.stop()
        fake.stop()
