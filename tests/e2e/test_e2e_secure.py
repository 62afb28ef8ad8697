"""The locked-down edge on the real stack: HTTPS from SDS (HTTP/2 by ALPN, a rotated
certificate picked up without a restart), client API keys (401, a key limited to
models, the key file watched, a bad edit keeping the last good keys), rate limits
(429 with Retry-After), and no key anywhere in the admin API or the logs.

Requests that only need the edge's answer carry a body the gateway refuses (400
from Lua) or none at all, so no model decodes for them.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from control_plane.config.certs import make_self_signed
from control_plane.config.schema import TlsConfig
from testkit.clips import make_clip
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.load import HELLO
from testkit.procs import free_port

TINY = "openai/whisper-tiny.en"
BASE = "openai/whisper-base"
TRANSCRIBE = "/v1/audio/transcriptions"
KEYS = {
    "team": "sk-team-0123456789",
    "tiny-only": "sk-tiny-0123456789",
    "slow": "sk-slow-0123456789",
    "slow-curl": "sk-slow-curl-0123456789",
}


#: What each test client may do beyond calling every model.
LIMITS: dict[str, dict[str, Any]] = {
    "tiny-only": {"models": [TINY]},
    "slow": {"requests_per_s": 0.05, "burst": 3},
    "slow-curl": {"requests_per_s": 0.05, "burst": 3},
}


def keys_file(path: Path, extra: tuple[dict[str, Any], ...] = ()) -> None:
    doc = [{"name": n, "key": k, **LIMITS.get(n, {})} for n, k in KEYS.items()]
    path.write_text(yaml.safe_dump({"clients": doc + list(extra)}))


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, tiny_url: str) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("secure")
    keys_file(work / "keys.yaml")
    cfg = gateway_config(
        [
            {"url": tiny_url, "models": [TINY]},
            # Configured, never healthy: enough for the model to exist.
            {"url": f"http://127.0.0.1:{free_port()}", "models": [BASE]},
        ],
        tls={
            "cert_file": str(work / "certs" / "gw.crt"),
            "key_file": str(work / "certs" / "gw.key"),
            "self_signed": True,
        },
        api_keys={"file": str(work / "keys.yaml")},
        edge={},  # the defaults: no backend address in responses
    )
    gw = start_gateway(work / "gw", cfg)
    try:
        gw.wait_backends({tiny_url.removeprefix("http://")})
        yield gw
    finally:
        gw.stop()


def https(gw: Gateway) -> str:
    return gw.url.replace("http://", "https://")


def trust(gw: Gateway) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=gw.config["tls"]["cert_file"])


def auth(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[client]}"}


def form(model: str = TINY) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("model", model)
    data.add_field("file", HELLO.read_bytes(), filename="hello.wav", content_type="audio/wav")
    return data


NOT_MULTIPART = {"Content-Type": "application/json"}


async def post(
    gw: Gateway, headers: dict[str, str], data: Any = b"{}", path: str = TRANSCRIBE
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as s:
        async with s.post(https(gw) + path, data=data, headers=headers, ssl=trust(gw)) as r:
            return r.status, await r.json(content_type=None), dict(r.headers)


def openai_error(body: dict[str, Any], status: int) -> dict[str, Any]:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status
    return err


async def test_https_serves_a_transcription_with_a_key(secure: Gateway) -> None:
    status, body, headers = await post(secure, auth("team"), form())
    assert status == 200, body
    assert "quick" in body["text"].lower()
    assert "x-gateway-backend" not in {h.lower() for h in headers}  # off by default


def test_http2_by_alpn_and_health_without_key(secure: Gateway) -> None:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "--cacert",
            secure.config["tls"]["cert_file"],
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            https(secure) + "/health",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out == "2 200"


@pytest.mark.parametrize(
    ("key", "expect"),
    [(None, 401), ("sk-wrong-0000000000", 401), (KEYS["slow-curl"], 429), (KEYS["team"], 413)],
    ids=["no key", "wrong key", "rate limited", "too large"],
)
def test_curl_over_http2_reads_an_upload_refused_at_the_edge(
    secure: Gateway, tmp_path: Path, key: str | None, expect: int
) -> None:
    """curl 7.88 (Debian 12's) fails with "(92) Stream error" when the stream ends while
    it still uploads: over HTTP/2 the edge refuses once the upload has arrived, so
    curl reads the whole OpenAI-shaped answer (docs/security.md)."""
    if expect == 413:  # past the default 25 MB
        clip = tmp_path / "big.wav"
        clip.write_bytes(bytes(26 * 1024 * 1024))
    else:
        clip = make_clip(tmp_path / "clip.wav", 20.0)  # 640 KB: past HTTP/2's first windows
    headers = ["-H", f"Authorization: Bearer {key}"] if key else []
    for _ in range(10 if expect == 429 else 1):  # spend the slow key's burst
        run = subprocess.run(
            ["curl", "-sS", "--http2", "--cacert", secure.config["tls"]["cert_file"],
             "-w", "\n%{http_version} %{http_code}", *headers,
             "-F", f"model={TINY}", "-F", f"file=@{clip}", https(secure) + TRANSCRIBE],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        body, status = run.stdout.rsplit("\n", 1)
        if status != "2 200":
            break
    assert status == f"2 {expect}", run.stdout
    openai_error(json.loads(body), expect)


async def test_missing_or_wrong_key_is_401_in_the_openai_shape(secure: Gateway) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer sk-wrong-0000000000"},
    ):
        status, body, _ = await post(secure, {**NOT_MULTIPART, **headers})
        assert status == 401
        assert "API key" in openai_error(body, 401)["message"]
    async with aiohttp.ClientSession() as s:
        async with s.get(https(secure) + "/v1/models", ssl=trust(secure)) as r:
            assert r.status == 401
        async with s.get(
            https(secure) + "/v1/models", headers=auth("team"), ssl=trust(secure)
        ) as r:
            assert r.status == 200
    # With a good key the same body reaches Lua, which refuses it.
    status, body, _ = await post(secure, {**NOT_MULTIPART, **auth("team")})
    assert status == 400


async def test_a_key_limited_to_models(secure: Gateway) -> None:
    status, body, _ = await post(secure, auth("tiny-only"), form(BASE))
    assert status == 403
    err = openai_error(body, 403)
    assert err["param"] == "model" and BASE in err["message"]
    # The same body with a key for every model passes the check (and finds no backend).
    status, body, _ = await post(secure, auth("team"), form(BASE))
    assert status == 503


async def test_rate_limit_per_key_is_429_with_retry_after(secure: Gateway) -> None:
    got = []
    for _ in range(6):
        status, body, headers = await post(secure, {**NOT_MULTIPART, **auth("slow")})
        got.append(status)
        if status == 429:
            err = openai_error(body, 429)
            assert err["type"] == "rate_limit_error"
            assert int(headers["Retry-After"]) >= 1
    assert got[:3] == [400, 400, 400] and set(got[3:]) == {429}
    # Another key has its own bucket.
    status, _, _ = await post(secure, {**NOT_MULTIPART, **auth("team")})
    assert status == 400


def wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.2)


def test_key_file_is_watched_and_a_bad_edit_keeps_the_last_good_keys(
    secure: Gateway,
) -> None:
    path = Path(secure.config["api_keys"]["file"])
    new_key = "sk-new-0123456789"
    keys_file(path, ({"name": "new", "key": new_key},))
    headers = {**NOT_MULTIPART, "Authorization": f"Bearer {new_key}"}
    wait_for(lambda: asyncio.run(post(secure, headers))[0] == 400)
    path.write_text("clients: [this is: not, valid")
    log = secure.workdir / "control-plane.log"
    wait_for(lambda: "secrets not reloaded" in log.read_text())
    assert asyncio.run(post(secure, headers))[0] == 400  # the last good keys stay
    keys_file(path)  # the new key removed again
    wait_for(lambda: asyncio.run(post(secure, headers))[0] == 401)


def served_cert(gw: Gateway) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    import socket

    port = gw.config["listener"]["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_rotated_certificate_is_served_without_a_restart(secure: Gateway) -> None:
    tls = secure.config["tls"]
    before = served_cert(secure)
    envoy_pid = secure.envoy.pid if secure.envoy else None
    for f in (tls["cert_file"], tls["key_file"]):
        Path(f).unlink()
    assert make_self_signed(TlsConfig(tls["cert_file"], tls["key_file"]))
    new = ssl.PEM_cert_to_DER_cert(Path(tls["cert_file"]).read_text())
    assert new != before
    wait_for(lambda: served_cert(secure) == new)
    assert secure.envoy is not None and secure.envoy.pid == envoy_pid and secure.envoy.alive()


def test_no_key_in_the_admin_api_or_logs(secure: Gateway) -> None:
    import urllib.request

    with urllib.request.urlopen(secure.admin_url + "/snapshot", timeout=10) as r:
        snapshot = r.read().decode()
    assert json.loads(snapshot)["SDS"]["resources"]  # the secret is there, redacted
    texts = {"/snapshot": snapshot}
    for name in ("control-plane.log", "envoy.log"):
        texts[name] = (secure.workdir / name).read_text()
    with urllib.request.urlopen(secure.admin_url + "/status", timeout=10) as r:
        texts["/status"] = r.read().decode()
    key_pem = Path(secure.config["tls"]["key_file"]).read_text().splitlines()[1]
    for where, text in texts.items():
        for client, key in KEYS.items():
            assert key not in text, f"{client}'s key in {where}"
        assert key_pem not in text, f"the private key in {where}"


async def test_gateway_wide_rate_limit_without_keys(tmp_path: Path, tiny_url: str) -> None:
    """One bucket for the whole gateway: past its burst, 429 with Retry-After."""
    gw = start_gateway(
        tmp_path / "gw",
        gateway_config(
            [{"url": tiny_url, "models": [TINY]}],
            rate_limit={"requests_per_s": 0.05, "burst": 2},
        ),
    )
    try:
        gw.wait_synced()
        got = []
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                async with s.post(gw.url + TRANSCRIBE, data=b"{}", headers=NOT_MULTIPART) as r:
                    got.append(r.status)
                    if r.status == 429:
                        openai_error(await r.json(), 429)
                        assert r.headers["Retry-After"] == "20"
            # Only the audio route is limited: the model list still answers.
            async with s.get(gw.url + "/v1/models") as r:
                assert r.status == 200
        assert got == [400, 400, 429, 429]
    finally:
        gw.stop()
