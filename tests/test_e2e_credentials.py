"""A backend that needs an API key (like `vllm serve --api-key`): the probes send the
key from the environment variable the config names, and clients' Authorization
headers reach the backend untouched."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from support.gateway import gateway_config, start_gateway
from support.load import HELLO
from support.procs import start_backend

TINY = "openai/whisper-tiny.en"
KEY = "sk-backend-secret"


def form() -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("model", TINY)
    data.add_field("file", HELLO.read_bytes(), filename="hello.wav")
    return data


async def test_probes_send_the_backend_key_and_clients_keys_pass_through(
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
            async with s.post(url, data=form()) as r:
                assert r.status == 401
                err = (await r.json())["error"]
                assert err["code"] == 401 and "API key" in err["message"]
            async with s.post(url, data=form(), headers={"Authorization": f"Bearer {KEY}"}) as r:
                assert r.status == 200
                assert "quick" in (await r.json())["text"].lower()
    finally:
        gw.stop()
        backend.stop()
