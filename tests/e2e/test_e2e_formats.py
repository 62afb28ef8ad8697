"""What the client asked for, whatever the backend: through the real Envoy and a real
tiny.en backend, with the official `openai` SDK (sync and async) and aiohttp.

- stream_format openai: typed transcript.text.delta events whose deltas join to
  the transcript.text.done text, with usage;
- stream_format text (x-stream-format header): the seed's `data: {"text": ...}`;
- stream_format backend: the backend's bytes, untouched;
- every response format: json and verbose_json pass through, text/srt/vtt are
  rendered by the gateway from verbose_json (well-formed, monotonic timestamps);
- every other field the client sent reaches the backend unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator

import aiohttp
import pytest
from openai import AsyncOpenAI, OpenAI

from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import ROOT, Proc, start_backend, start_fake

TINY = "openai/whisper-tiny.en"
ECHO = "fake/echo"
HELLO = ROOT / "tests" / "fixtures" / "hello.wav"
LONG = ROOT / "tests" / "fixtures" / "long_en.ogg"


@pytest.fixture(scope="module", params=["ours", "vllm"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_url: str
) -> Iterator[Gateway]:
    """The same gateway in front of whisper_backend, then of its vLLM stand-in."""
    logs = tmp_path_factory.mktemp("formats")
    vllm: Proc | None = None
    if request.param == "vllm":
        vllm, vport = start_backend(
            logs, extra=("--api-flavor", "vllm"), env={"HF_HUB_OFFLINE": "1"}
        )
        tiny_url = f"http://127.0.0.1:{vport}"
    fake, port = start_fake(logs, "fast")
    cfg = gateway_config(
        [
            {"url": tiny_url, "models": [TINY]},
            {"url": f"http://127.0.0.1:{port}", "models": [ECHO], "health": {"enabled": False}},
        ],
        stream_format="openai",
    )
    g = start_gateway(logs, cfg)
    g.wait_backends({tiny_url.removeprefix("http://")})
    g.fake_port = port  # type: ignore[attr-defined]
    yield g
    g.stop()
    fake.stop()
    if vllm is not None:
        vllm.stop()


def test_sdk_stream_yields_typed_openai_events(gw: Gateway) -> None:
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    with LONG.open("rb") as f:
        stream = client.audio.transcriptions.create(model=TINY, file=f, stream=True)
        deltas, done = [], None
        for event in stream:
            if event.type == "transcript.text.delta":
                deltas.append(event.delta)
            elif event.type == "transcript.text.done":
                done = event
    assert len(deltas) > 3, "the text arrives in pieces"
    assert done is not None
    assert "".join(deltas) == done.text
    assert len(done.text) > 200


async def test_async_sdk_stream_with_usage(gw: Gateway) -> None:
    client = AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    with HELLO.open("rb") as f:
        stream = await client.audio.transcriptions.create(
            model=TINY,
            file=f,
            stream=True,
            extra_body={"stream_include_usage": True},
        )
        events = [e async for e in stream]
    types = [e.type for e in events]
    assert types[-1] == "transcript.text.done" and set(types[:-1]) == {"transcript.text.delta"}
    done = events[-1]
    assert "world" in done.text.lower()
    assert done.usage is not None and done.usage.type == "tokens"
    assert done.usage.output_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


async def sse_lines(gw: Gateway, headers: dict[str, str], **fields: str) -> list[bytes]:
    form = aiohttp.FormData()
    form.add_field("model", fields.pop("model", TINY))
    for k, v in fields.items():
        form.add_field(k, v)
    form.add_field("file", HELLO.read_bytes(), filename="hello.wav", content_type="audio/wav")
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.url}/v1/audio/transcriptions", data=form, headers=headers) as r,
    ):
        assert r.status == 200
        return [line async for line in r.content]


async def test_text_stream_format_by_header(gw: Gateway) -> None:
    lines = await sse_lines(gw, {"x-stream-format": "text"}, stream="true")
    data = [ln[6:].strip() for ln in lines if ln.startswith(b"data: ")]
    assert data[-1] == b"[DONE]"
    texts = [json.loads(d)["text"] for d in data[:-1]]
    assert texts and "world" in "".join(texts).lower()


async def test_backend_stream_format_passes_bytes_through(gw: Gateway) -> None:
    lines = await sse_lines(gw, {"x-stream-format": "backend"}, stream="true")
    body = b"".join(lines)
    assert re.search(rb'"object": ?"transcription.chunk"', body), body[:300]
    assert body.endswith(b"data: [DONE]\n\n")


async def test_bad_stream_format_header_is_refused(gw: Gateway) -> None:
    form = aiohttp.FormData()
    form.add_field("model", TINY)
    form.add_field("file", b"RIFF", filename="a.wav")
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gw.url}/v1/audio/transcriptions", data=form, headers={"x-stream-format": "xml"}
        ) as r,
    ):
        body = await r.json()
    assert r.status == 400 and body["error"]["param"] == "x-stream-format"


def times(text: str, sep: str) -> list[float]:
    out = []
    for h, m, s, ms in re.findall(rf"(\d\d):(\d\d):(\d\d){re.escape(sep)}(\d\d\d)", text):
        out.append(int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000)
    return out


@pytest.mark.parametrize("fmt", ["json", "verbose_json", "text", "srt", "vtt"])
def test_every_response_format(gw: Gateway, fmt: str) -> None:
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    with LONG.open("rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(
            model=TINY, file=f, response_format=fmt
        )
    ctype = raw.headers["content-type"]
    body = raw.http_response.text
    if fmt == "json":
        assert ctype.startswith("application/json") and len(json.loads(body)["text"]) > 200
    elif fmt == "verbose_json":
        assert len(json.loads(body)["segments"]) > 2
    elif fmt == "text":
        assert ctype.startswith("text/plain") and body.endswith("\n") and len(body) > 200
        assert not body.lstrip().startswith("{")
    else:
        sep = "," if fmt == "srt" else "."
        assert ctype.startswith("application/x-subrip" if fmt == "srt" else "text/vtt")
        stamps = times(body, sep)
        assert len(stamps) >= 6 and stamps == sorted(stamps), stamps
        if fmt == "vtt":
            assert body.startswith("WEBVTT\n\n")
        else:
            assert body.startswith("1\n00:00:")


def test_every_field_reaches_the_backend_unchanged(gw: Gateway) -> None:
    """Only response_format is rewritten (srt -> verbose_json); nothing dropped or added."""
    import urllib.error
    import urllib.request

    fields: list[tuple[str, str]] = [
        ("model", ECHO),
        ("response_format", "srt"),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
        ("prompt", "Zoë, ça va?"),
        ("temperature", "0.2"),
        ("language", "fr"),
        ("include[]", "logprobs"),
        ("chunking_strategy", "auto"),
        ("x_unknown_field", "kept"),
    ]
    b = "fieldsboundary"
    parts = [
        f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields
    ]
    file_part = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    body = ("".join(parts) + file_part).encode() + b"RIFF" * 1000 + f"\r\n--{b}--\r\n".encode()
    req = urllib.request.Request(
        f"{gw.url}/v1/audio/transcriptions",
        data=body,
        method="POST",
        headers={"content-type": f"multipart/form-data; boundary={b}"},
    )
    # The FAKE answers json, without segments, to everything: the gateway refuses to
    # render an empty srt from it (502, said so) rather than pass on an empty transcript.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 502
    assert "no duration or segments" in json.loads(refused.value.read())["error"]["message"]
    port = gw.fake_port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/requests", timeout=5) as r:
        seen = json.loads(r.read())[-1]
    expected = body.replace(b"\r\n\r\nsrt\r\n", b"\r\n\r\nverbose_json\r\n", 1)
    assert seen["sha256"] == hashlib.sha256(expected).hexdigest()
    assert seen["headers"]["Content-Length"] == str(len(expected))
