"""The gateway end to end: real Envoy, real control plane, real Whisper backends."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import subprocess
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from conftest import BASE, SLOW, SLOW_STREAM, SMALL, TINY

from testkit.backend_client import metric, read_metrics
from testkit.gateway import Gateway
from testkit.procs import FIXTURES

HELLO = FIXTURES / "hello.wav"
LONG = FIXTURES / "long_en.ogg"
TRANSCRIBE = "/v1/audio/transcriptions"
WORDS = ("quick", "fox", "lazy")


def form(path: Path | None = HELLO, model_last: bool = False, **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    items = list(fields.items())
    if not model_last:
        for k, v in items:
            data.add_field(k, v)
    if path is not None:
        data.add_field(
            "file", path.read_bytes(), filename=path.name, content_type="application/octet-stream"
        )
    if model_last:
        for k, v in items:
            data.add_field(k, v)
    return data


async def post(
    gw: Gateway,
    data: aiohttp.FormData | bytes,
    path: str = TRANSCRIBE,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as s, s.post(gw.url + path, data=data, headers=headers) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.text()


def assert_openai_error(body: str, status: int, param: str | None = None) -> dict[str, Any]:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == status
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    return dict(err)


def has_words(text: str) -> bool:
    return sum(w in text.lower() for w in WORDS) >= 2


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
async def test_every_response_format(gateway: Gateway, fmt: str) -> None:
    status, headers, body = await post(
        gateway, form(model=TINY, response_format=fmt, language="en")
    )
    assert status == 200, body
    assert headers["x-gateway-model"] == TINY
    assert headers.get("x-request-id")
    if fmt == "json":
        doc = json.loads(body)
        assert has_words(doc["text"]) and doc["usage"]["seconds"] >= 4
    elif fmt == "verbose_json":
        doc = json.loads(body)
        assert doc["segments"] and doc["duration"] > 4 and has_words(doc["text"])
    elif fmt == "text":
        assert headers["content-type"].startswith("text/plain") and has_words(body)
    elif fmt == "srt":
        assert re.search(r"^1\r?\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d", body, re.M)
        assert has_words(body)
    else:
        assert body.startswith("WEBVTT") and has_words(body)
        assert re.search(r"(\d\d:)?\d\d:\d\d\.\d\d\d --> (\d\d:)?\d\d:\d\d\.\d\d\d", body)


async def test_stream_through_gateway_in_several_chunks(gateway: Gateway) -> None:
    chunks: list[str] = []
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gateway.url + TRANSCRIBE,
            data=form(LONG, model=BASE, stream="true", language="en"),
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    # OpenAI's events by default (stream_format: openai): deltas, then one done.
    events = [json.loads(c) for c in chunks[:-1]]
    deltas, done = events[:-1], events[-1]
    assert len(deltas) >= 3
    assert all(d["type"] == "transcript.text.delta" for d in deltas)
    assert done["type"] == "transcript.text.done"
    text = "".join(d["delta"] for d in deltas)
    assert text == done["text"] and len(text.split()) > 50


# ---------------------------------------------------------------- routing


def _big_wav(target_bytes: int) -> bytes:
    """~target_bytes of 48 kHz stereo speech (hello.wav upsampled, repeated)."""
    with wave.open(str(HELLO)) as w:
        frames = w.readframes(w.getnframes())
    samples = [frames[i : i + 2] for i in range(0, len(frames), 2)]
    up = b"".join(s * 6 for s in samples)  # 16 kHz mono -> 48 kHz stereo
    reps = max(1, target_bytes // len(up))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(up * reps)
    return buf.getvalue()


async def test_20mb_upload_with_model_after_file(gateway: Gateway, fleet: dict[str, Any]) -> None:
    audio = _big_wav(20 * 1024 * 1024)
    assert len(audio) > 20_000_000
    seconds = len(audio) / (48000 * 4)
    before = {
        u: metric(read_metrics(u), "whisper_backend_audio_seconds_total")
        for u in fleet["tiny"] + fleet["base"]
    }
    data = aiohttp.FormData()
    data.add_field("file", audio, filename="big.wav", content_type="audio/wav")
    data.add_field("model", TINY)  # after the file, as curl sends it
    data.add_field("response_format", "json")
    status, headers, body = await post(gateway, data)
    assert status == 200, body
    # hello.wav said 21 times without a pause makes tiny.en loop on a phrase ("the long
    # world, ..."), so only words of its first sentence are sure to be there; that the
    # whole upload was decoded is the metering check below.
    text = json.loads(body)["text"].lower()
    assert any(w in text for w in ("world", *WORDS)), text
    served = "http://" + headers["x-gateway-backend"]
    assert served in fleet["tiny"]
    after = {u: metric(read_metrics(u), "whisper_backend_audio_seconds_total") for u in before}
    # The backend that answered decoded the whole upload; base saw none of it.
    assert after[served] - before[served] >= seconds - 1
    assert after[fleet["base"][0]] - before[fleet["base"][0]] < seconds / 2


async def test_each_model_reaches_only_its_own_backends(
    gateway: Gateway, fleet: dict[str, Any]
) -> None:
    async def one(model: str) -> str:
        status, headers, body = await post(gateway, form(model=model, language="en"))
        assert status == 200, body
        assert headers["x-gateway-model"] == model
        return "http://" + headers["x-gateway-backend"]

    tiny_served = await asyncio.gather(*(one(TINY) for _ in range(6)))
    base_served = await asyncio.gather(*(one(BASE) for _ in range(3)))
    assert set(tiny_served) <= set(fleet["tiny"])
    assert set(base_served) == set(fleet["base"])


async def test_client_supplied_routing_header_is_ignored(gateway: Gateway) -> None:
    status, headers, body = await post(
        gateway, form(model=TINY, language="en"), headers={"x-gateway-model": BASE}
    )
    assert status == 200, body
    assert headers["x-gateway-model"] == TINY


# ---------------------------------------------------------------- clients


def test_openai_sdk_through_gateway(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-unused")
    with HELLO.open("rb") as f:
        result = client.audio.transcriptions.create(model=TINY, file=f, language="en")
    assert has_words(result.text)
    with HELLO.open("rb") as f:
        stream = client.audio.transcriptions.create(model=TINY, file=f, language="en", stream=True)
        events = list(stream)
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert has_words(events[-1].text)
    models = [m.id for m in client.models.list()]
    assert models == [TINY, BASE, SMALL, SLOW, SLOW_STREAM]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_seed_curl_commands(gateway: Gateway, tmp_path: Path) -> None:
    """The README's curl requests, as written, against this gateway's port."""
    shutil.copy(HELLO, tmp_path / "audio.wav")
    url = gateway.url + TRANSCRIBE
    plain = subprocess.run(
        [
            "curl",
            "-sS",
            url,
            "-F",
            "file=@audio.wav",
            "-F",
            f"model={TINY}",
            "-F",
            "response_format=json",
            "-F",
            "language=en",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert has_words(json.loads(plain.stdout)["text"])
    stream = subprocess.run(
        [
            "curl",
            "-sSN",
            url,
            "-F",
            "file=@audio.wav",
            "-F",
            f"model={TINY}",
            "-F",
            "response_format=json",
            "-F",
            "language=en",
            "-F",
            "stream=true",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [ln for ln in stream.stdout.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 2
    assert has_words(stream.stdout)


# ---------------------------------------------------------------- gateway errors


async def test_missing_model_is_400(gateway: Gateway) -> None:
    status, _, body = await post(gateway, form(language="en"))
    assert status == 400
    assert_openai_error(body, 400, "model")


async def test_unknown_model_is_404_naming_valid_ones(gateway: Gateway) -> None:
    status, _, body = await post(gateway, form(model="openai/whisper-huge"))
    assert status == 404
    err = assert_openai_error(body, 404, "model")
    assert TINY in err["message"] and BASE in err["message"]


async def test_known_model_without_healthy_backend_is_503(gateway: Gateway) -> None:
    status, _, body = await post(gateway, form(model=SMALL))
    assert status == 503
    err = assert_openai_error(body, 503)
    assert SMALL in err["message"]


async def test_upload_over_limit_is_413(gateway: Gateway) -> None:
    data = aiohttp.FormData()
    data.add_field("model", TINY)
    data.add_field("file", b"\0" * (26 * 1024 * 1024), filename="big.wav")
    status, _, body = await post(gateway, data)
    assert status == 413
    assert_openai_error(body, 413, "file")


async def test_not_multipart_is_400(gateway: Gateway) -> None:
    status, _, body = await post(
        gateway, b'{"model": "x"}', headers={"content-type": "application/json"}
    )
    assert status == 400
    assert_openai_error(body, 400)


async def test_unknown_path_404_and_wrong_method_405(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.url + "/v1/chat/completions") as r:
            assert r.status == 404
            assert_openai_error(await r.text(), 404)
        async with s.get(gateway.url + TRANSCRIBE) as r:
            assert r.status == 405
            assert r.headers["allow"] == "POST"
            assert_openai_error(await r.text(), 405)
        async with s.post(gateway.url + "/v1/models") as r:
            assert r.status == 405
            assert_openai_error(await r.text(), 405)
        async with s.get(gateway.url + "/v1/models") as r:
            doc = await r.json()
            assert doc["object"] == "list"
            assert [m["id"] for m in doc["data"]] == [TINY, BASE, SMALL, SLOW, SLOW_STREAM]


async def test_backend_errors_pass_through_in_their_shape(gateway: Gateway) -> None:
    status, _, body = await post(gateway, form(model=TINY, response_format="docx"))
    assert status == 400
    assert_openai_error(body, 400)


# ---------------------------------------------------------------- long jobs


async def test_no_total_timeout_for_slow_job_and_long_stream(gateway: Gateway) -> None:
    """A job over Envoy's 15 s default and an 18 s stream both complete."""

    async def slow_job() -> float:
        t0 = time.monotonic()
        status, _, body = await post(gateway, form(model=SLOW))
        assert status == 200, body
        assert json.loads(body)["text"].startswith(" slow after")
        return time.monotonic() - t0

    async def long_stream() -> list[tuple[float, str]]:
        got: list[tuple[float, str]] = []
        async with (
            aiohttp.ClientSession() as s,
            s.post(gateway.url + TRANSCRIBE, data=form(model=SLOW_STREAM, stream="true")) as r,
        ):
            assert r.status == 200
            async for raw in r.content:
                if raw.startswith(b"data: "):
                    got.append((time.monotonic(), raw.decode().strip()))
        return got

    took, events = await asyncio.gather(slow_job(), long_stream())
    assert took > 15  # the fake really was slower than Envoy's default route timeout
    assert events[-1][1] == "data: [DONE]"
    assert len(events) == 18 + 2
    # The fake sends a chunk a second: they reach the client spread out, as sent,
    # not all at once at the end (nothing buffers the response).
    first, last = events[0][0], events[-1][0]
    assert last - first > 10


async def test_headers_reach_backend_and_request_id_returned(
    gateway: Gateway, fleet: dict[str, Any]
) -> None:
    port = fleet["fakes"]["slow_stream"]
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gateway.url + TRANSCRIBE,
            data=form(model=SLOW_STREAM),
            headers={
                "Authorization": "Bearer sk-test-123",
                "x-api-key": "sk-test-456",
                "OpenAI-Organization": "org-x",
                # Spoofed internal and Envoy headers: none may reach the backend as sent.
                "x-gateway-client": "admin",
                "x-envoy-retry-on": "5xx",
                "x-envoy-max-retries": "9",
            },
        ) as r:
            # The backend has recorded the request once its stream starts: the rest
            # of the 18 s stream is not needed (closing the response cancels it).
            rid = r.headers["x-request-id"]
        async with s.get(f"http://127.0.0.1:{port}/_fake/requests") as r:
            seen = await r.json()
    lowered = [{k.lower(): v for k, v in h["headers"].items()} for h in seen]
    mine = [h for h in lowered if h.get("x-request-id") == rid]
    assert len(mine) == 1
    # The client's key is not forwarded to backends (edge.forward_client_key: false).
    assert "authorization" not in mine[0] and "x-api-key" not in mine[0]
    assert mine[0]["openai-organization"] == "org-x"
    assert not {"x-gateway-client", "x-envoy-retry-on", "x-envoy-max-retries"} & set(mine[0])
    assert mine[0]["x-gateway-model"] == SLOW_STREAM
