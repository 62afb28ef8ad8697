"""Backend credentials: a backend that needs an API key (like `vllm serve --api-key`)
gets its own key from Envoy, never the client's; the probes send the same key. An
https backend is reached with its host name as SNI and its certificate checked
against the configured CA, by Envoy and by the probes alike."""

from __future__ import annotations

import ssl
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from control_plane.config.certs import make_self_signed
from control_plane.config.schema import TlsConfig
from control_plane.names import cluster_name
from testkit.gateway import gateway_config, start_gateway
from testkit.load import HELLO
from testkit.procs import start_backend

TINY = "openai/whisper-tiny.en"
KEY = "sk-backend-secret"


def form() -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("model", TINY)
    data.add_field("file", HELLO.read_bytes(), filename="hello.wav")
    return data


async def test_envoy_adds_the_backends_key_and_never_forwards_the_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, port = start_backend(
        tmp_path, env={"HF_HUB_OFFLINE": "1", "WHISPER_BACKEND_API_KEY": KEY}
    )
    monkeypatch.setenv("WG_TEST_BACKEND_KEY", KEY)  # inherited by the control plane
    gw = start_gateway(
        tmp_path / "gw",
        gateway_config(
            [
                {
                    "url": f"http://127.0.0.1:{port}",
                    "models": [TINY],
                    "api_key_env": "WG_TEST_BACKEND_KEY",
                }
            ]
        ),
    )
    try:
        gw.wait_backends({f"127.0.0.1:{port}"})  # the probes authenticated
        (b,) = gw.backends()
        assert b["probe"]["last_error"] is None
        url = gw.url + "/v1/audio/transcriptions"
        async with aiohttp.ClientSession() as s:
            # No client key, or a wrong one: Envoy sends the backend's own key.
            for headers in ({}, {"Authorization": "Bearer sk-client-not-for-backends"}):
                async with s.post(url, data=form(), headers=headers) as r:
                    assert r.status == 200, await r.text()
                    assert "quick" in (await r.json())["text"].lower()
            async with s.get(gw.admin_url + "/snapshot") as r:
                assert KEY not in await r.text()  # redacted
    finally:
        gw.stop()
        backend.stop()


def wait_https(url: str, ctx: ssl.SSLContext, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


async def test_https_backend_with_sni_and_a_ca(tmp_path: Path) -> None:
    cert, key = tmp_path / "backend.crt", tmp_path / "backend.key"
    make_self_signed(TlsConfig(str(cert), str(key)))  # names localhost and 127.0.0.1
    backend, port = start_backend(
        tmp_path,
        extra=("--ssl-certfile", str(cert), "--ssl-keyfile", str(key)),
        env={"HF_HUB_OFFLINE": "1"},
        wait=False,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    url = f"https://localhost:{port}"
    gw = None
    try:
        wait_https(url + "/health", trust)
        gw = start_gateway(
            tmp_path / "gw",
            gateway_config([{"url": url, "models": [TINY]}], upstream_tls={"ca_file": str(cert)}),
        )
        gw.wait_backends()  # the probes checked the certificate against the CA
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url + "/v1/audio/transcriptions", data=form()) as r:
                assert r.status == 200, await r.text()
                assert "quick" in (await r.json())["text"].lower()
        assert (gw.envoy_stat(f"cluster.{cluster_name(TINY)}.ssl.handshake") or 0) >= 1
    finally:
        if gw is not None:
            gw.stop()
        backend.stop()
