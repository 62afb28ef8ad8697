"""Every bad input gets a clear error in vLLM's shape, and the server keeps serving."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.procs import FIXTURES

pytest_plugins = ["backend_fixtures"]

HELLO = FIXTURES / "hello.wav"
TRANSCRIBE = "/v1/audio/transcriptions"


async def call(
    url: str,
    fields: dict[str, str] | None = None,
    file: bytes | None = None,
    path: str = TRANSCRIBE,
    filename: str = "a.wav",
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = aiohttp.FormData(default_to_multipart=True)
    for k, v in (fields or {}).items():
        data.add_field(k, v)
    if file is not None:
        data.add_field("file", file, filename=filename)
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data) as r:
        return r.status, json.loads(await r.text()), dict(r.headers)


def assert_error(body: dict[str, Any], status: int, param: str | None) -> None:
    err = body["error"]
    assert err["code"] == status
    assert err["type"] == {400: "BadRequestError", 404: "NotFoundError"}[status]
    assert err["param"] == param
    assert isinstance(err["message"], str) and len(err["message"]) > 10


def silent_wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return buf.getvalue()


async def test_urlencoded_without_file(tiny_url: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(tiny_url + TRANSCRIBE, data={"model": "openai/whisper-tiny.en"}) as r,
    ):
        body = await r.json()
    assert r.status == 400
    assert_error(body, 400, "file")
    assert "missing" in body["error"]["message"].lower()


@pytest.mark.parametrize(
    ("fields", "file", "param", "needle"),
    [
        ({"model": "openai/whisper-tiny.en"}, None, "file", "missing"),
        ({"file": "hello.wav"}, None, "file", "text field"),
        ({}, b"", "file", "empty"),
        ({}, b"this is not audio at all" * 100, "file", "decode"),
        ({"response_format": "docx"}, HELLO.read_bytes(), "response_format", "docx"),
        ({"temperature": "hot"}, HELLO.read_bytes(), "temperature", "number"),
        ({"temperature": "1.5"}, HELLO.read_bytes(), "temperature", "between"),
        ({"language": "xx"}, HELLO.read_bytes(), "language", "xx"),
        ({"language": "fr"}, HELLO.read_bytes(), "language", "english-only"),
        (
            {"response_format": "verbose_json", "stream": "true"},
            HELLO.read_bytes(),
            "stream",
            "verbose_json",
        ),
        ({"stream": "maybe"}, HELLO.read_bytes(), "stream", "true or false"),
    ],
    ids=[
        "missing-file",
        "file-as-text",
        "empty-file",
        "undecodable",
        "bad-format",
        "temperature-nan",
        "temperature-range",
        "unknown-language",
        "language-on-english-model",
        "verbose-json-stream",
        "bad-bool",
    ],
)
async def test_bad_request(
    tiny_url: str, fields: dict[str, str], file: bytes | None, param: str, needle: str
) -> None:
    status, body, _ = await call(tiny_url, fields, file)
    assert status == 400, body
    assert_error(body, 400, param)
    assert needle in body["error"]["message"].lower()


async def test_unknown_model_404(tiny_url: str) -> None:
    status, body, _ = await call(tiny_url, {"model": "openai/whisper-large-v3"}, HELLO.read_bytes())
    assert status == 404
    assert_error(body, 404, "model")
    assert "whisper-large-v3" in body["error"]["message"]


async def test_translation_on_english_model(tiny_url: str) -> None:
    status, body, _ = await call(tiny_url, {}, HELLO.read_bytes(), path="/v1/audio/translations")
    assert status == 400
    assert_error(body, 400, "model")
    assert "english-only" in body["error"]["message"].lower()


async def test_not_multipart(tiny_url: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(tiny_url + TRANSCRIBE, json={"file": "x", "model": "m"}) as r,
    ):
        body = await r.json()
    assert r.status == 400
    assert_error(body, 400, "file")
    assert "multipart" in body["error"]["message"]


async def test_upload_over_size_limit(tiny_url: str) -> None:
    big = b"\0" * (26 * 1024 * 1024)
    status, body, _ = await call(tiny_url, {}, big)
    assert status == 400
    assert_error(body, 400, "audio_filesize_mb")
    assert "25 MB" in body["error"]["message"]


async def test_chunked_upload_over_size_limit(tiny_url: str) -> None:
    """Without Content-Length the limit is enforced while reading the file part."""

    async def body() -> Any:
        yield (
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        for _ in range(27):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--XyZ--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(tiny_url + TRANSCRIBE, data=body(), headers=headers) as r,
    ):
        assert r.status == 400
        assert_error(await r.json(), 400, "audio_filesize_mb")


async def test_audio_over_duration_limit(tiny_url: str) -> None:
    status, body, _ = await call(tiny_url, {}, silent_wav(601))
    assert status == 400
    assert_error(body, 400, "file")
    assert "600" in body["error"]["message"]


async def test_unknown_fields_ignored_and_still_serving(tiny_url: str) -> None:
    status, body, _ = await call(
        tiny_url,
        {"foo": "bar", "user": "me", "model": "openai/whisper-tiny.en"},
        HELLO.read_bytes(),
    )
    assert status == 200
    assert "quick" in body["text"].lower()


async def test_unknown_route_in_error_shape(tiny_url: str, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as s, s.get(tiny_url + "/v1/nothing") as r:
        body = await r.json()
    assert r.status == 404
    assert body["error"]["code"] == 404
