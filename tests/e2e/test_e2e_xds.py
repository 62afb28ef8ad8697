"""xDS protocol rules against the real Envoy: start-up order, reconnect, warming, reload."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.gateway import Gateway, gateway_config, start_gateway, write_bootstrap
from testkit.procs import start_fake, wait_http

FAST_A = "fake/fast-a"
FAST_B = "fake/fast-b"


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def multipart(model: str) -> tuple[bytes, dict[str, str]]:
    b = "xdsboundary"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        f'RIFF....\r\n--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        f"{model}\r\n--{b}--\r\n"
    ).encode()
    return body, {"content-type": f"multipart/form-data; boundary={b}"}


def transcribe(gw: Gateway, model: str) -> tuple[int, dict[str, str], bytes]:
    body, headers = multipart(model)
    return http("POST", gw.url + "/v1/audio/transcriptions", body, headers)


@pytest.fixture(scope="module")
def fast_fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """FAKE backends answering at once: these tests are about xDS, not Whisper."""
    logs = tmp_path_factory.mktemp("fast-fakes")
    procs = [start_fake(logs, "fast") for _ in range(2)]
    yield [port for _, port in procs]
    for p, _ in procs:
        p.stop()


def fake_backend(port: int, model: str) -> dict[str, Any]:
    return {"url": f"http://127.0.0.1:{port}", "models": [model], "health": {"enabled": False}}


@pytest.fixture
def gw(tmp_path: Path, fast_fakes: list[int]) -> Iterator[Gateway]:
    g = start_gateway(tmp_path, gateway_config([fake_backend(fast_fakes[0], FAST_A)]))
    g.wait_synced()
    yield g
    g.stop()


def test_rule10_listener_waits_for_the_control_plane(tmp_path: Path, fast_fakes: list[int]) -> None:
    g = Gateway(tmp_path, gateway_config([fake_backend(fast_fakes[0], FAST_A)]))
    try:
        g.start_envoy_with(write_bootstrap(g), wait=False)
        wait_http(f"{g.envoy_admin_url}/ready", 30, g.envoy, status=503)
        status, _, body = http("GET", f"{g.envoy_admin_url}/ready")
        assert status == 503 and b"INITIALIZING" in body
        port = g.config["listener"]["port"]
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1):
            pass
        g.start_control_plane()
        g.wait_envoy_live(timeout=30)
        g.wait_synced()
        status, _headers, body = transcribe(g, FAST_A)
        assert status == 200, body
        assert json.loads(body)["text"] == " fake"
    finally:
        g.stop()


def test_rule6_control_plane_restart_envoy_keeps_serving_and_resyncs(gw: Gateway) -> None:
    assert gw.control_plane is not None
    gw.control_plane.signal(signal.SIGKILL)
    gw.control_plane.popen.wait(10)  # type: ignore[union-attr]
    # Envoy serves on its last config while the control plane is gone.
    for _ in range(5):
        status, _, _ = transcribe(gw, FAST_A)
        assert status == 200
    gw.start_control_plane()
    status = gw.wait_synced()
    (proxy,) = status["proxies"]
    assert all(t["sent"]["count"] >= 1 for t in proxy["types"].values())
    # Same content, same versions: the listener was not replaced (no drain).
    assert gw.envoy_stat("listener_manager.listener_modified") == 0
    assert gw.envoy_stat("cluster_manager.cds.update_rejected") == 0
    assert transcribe(gw, FAST_A)[0] == 200


def _reload(gw: Gateway, config: dict[str, Any]) -> tuple[int, Any]:
    gw.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    status, _, body = http("POST", f"{gw.admin_url}/config/reload", b"")
    return status, json.loads(body)


def test_rule7_new_cluster_warms_and_is_used(gw: Gateway, fast_fakes: list[int]) -> None:
    before = gw.status()["versions"]
    config = dict(gw.config)
    config["backends"] = [fake_backend(fast_fakes[0], FAST_A), fake_backend(fast_fakes[1], FAST_B)]
    status, body = _reload(gw, config)
    assert status == 200, body
    # Envoy holds a new cluster warming (and its CDS ACK) until EDS answers; the
    # bootstrap's initial_fetch_timeout is 15 s, so SYNCED well before proves we answered.
    after = gw.wait_synced(timeout=8)
    assert after["versions"]["CDS"] != before["CDS"]
    assert after["versions"]["LDS"] == before["LDS"]
    assert gw.envoy_stat("cluster_manager.warming_clusters") == 0
    status_b, headers, _ = transcribe(gw, FAST_B)
    assert status_b == 200 and headers["x-gateway-model"] == FAST_B
    assert headers["x-gateway-backend"] == f"127.0.0.1:{fast_fakes[1]}"
    assert gw.envoy_stat("listener_manager.listener_modified") == 0


def test_rule9_removed_model_then_cluster(gw: Gateway, fast_fakes: list[int]) -> None:
    config = dict(gw.config)
    config["backends"] = [fake_backend(fast_fakes[0], FAST_A), fake_backend(fast_fakes[1], FAST_B)]
    assert _reload(gw, config)[0] == 200
    gw.wait_synced()
    config["backends"] = [fake_backend(fast_fakes[1], FAST_B)]
    status, body = _reload(gw, config)
    assert status == 200, body
    gw.wait_synced()
    status_a, _, body_a = transcribe(gw, FAST_A)
    assert status_a == 404 and b"does not exist" in body_a
    assert transcribe(gw, FAST_B)[0] == 200
    for proxy in gw.status()["proxies"]:
        assert all(t["nack_count"] == 0 for t in proxy["types"].values())
    assert gw.envoy_stat("cluster_manager.cds.update_rejected") == 0


def test_bad_reload_keeps_last_good_config(gw: Gateway) -> None:
    before = gw.status()["versions"]
    bad = dict(gw.config)
    bad["backends"] = [{"url": "ftp://nowhere", "models": [FAST_A]}]
    status, body = _reload(gw, bad)
    assert status == 400
    assert "backends[0].url" in body["error"]["message"]
    gw.config_path.write_text("backends: [unclosed")
    status, _, raw = http("POST", f"{gw.admin_url}/config/reload", b"")
    assert status == 400 and b"not valid YAML" in raw
    assert gw.status()["versions"] == before
    assert transcribe(gw, FAST_A)[0] == 200


def test_envoy_restart_gets_full_config(gw: Gateway) -> None:
    assert gw.envoy is not None
    gw.envoy.signal(signal.SIGKILL)
    gw.envoy.popen.wait(10)  # type: ignore[union-attr]
    gw.start_envoy()
    gw.wait_synced()
    deadline = time.monotonic() + 10
    while len(gw.status()["proxies"]) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(gw.status()["proxies"]) == 1  # the dead stream was dropped
    assert transcribe(gw, FAST_A)[0] == 200


def test_admin_metrics_read_the_live_state(gw: Gateway, fast_fakes: list[int]) -> None:
    status, headers, body = http("GET", f"{gw.admin_url}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert "whisper_gateway_xds_connected_proxies 1.0" in text
    for t in ("CDS", "EDS", "LDS", "RDS"):
        assert f'whisper_gateway_xds_sync{{state="SYNCED",type="{t}"}} 1.0' in text
        assert f'whisper_gateway_xds_nacks_total{{type="{t}"}} 0.0' in text
    key = f"127.0.0.1:{fast_fakes[0]}"
    assert (
        f'whisper_gateway_endpoint_health{{endpoint="{key}",health="HEALTHY",model="{FAST_A}"}} 1.0'
        in text
    )
