"""whisper_backend on the real tiny.en model: every response format, streaming, the SDK."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from testkit.backend_client import metric, read_metrics
from testkit.procs import FIXTURES

pytest_plugins = ["backend_fixtures"]

TRANSCRIBE = "/v1/audio/transcriptions"
HELLO = FIXTURES / "hello.wav"
LONG = FIXTURES / "long_en.ogg"


def form(path: Path | None, **fields: Any) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for key, value in fields.items():
        if isinstance(value, list):
            for v in value:
                data.add_field(key, v)
        else:
            data.add_field(key, str(value))
    if path is not None:
        data.add_field("file", path.read_bytes(), filename=path.name)
    return data


async def post(url: str, data: aiohttp.FormData, path: str = TRANSCRIBE) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


def sse_events(body: str) -> list[str]:
    return [line[len("data: ") :] for line in body.split("\n\n") if line.startswith("data: ")]


async def test_json_has_words_and_usage(tiny_url: str) -> None:
    status, ctype, body = await post(
        tiny_url, form(HELLO, model="openai/whisper-tiny.en", language="en")
    )
    assert status == 200, body
    assert ctype.startswith("application/json")
    data = json.loads(body)
    assert "quick" in data["text"].lower() and "lazy" in data["text"].lower()
    seconds = (HELLO.stat().st_size - 44) / 32000  # 16 kHz 16-bit mono
    assert data["usage"] == {"type": "duration", "seconds": math.ceil(seconds)}


async def test_model_field_absent_uses_served_model(tiny_url: str) -> None:
    status, _, body = await post(tiny_url, form(HELLO))
    assert status == 200 and "quick" in json.loads(body)["text"].lower()


async def test_text_is_plain(tiny_url: str) -> None:
    status, ctype, body = await post(tiny_url, form(HELLO, response_format="text"))
    assert status == 200 and ctype.startswith("text/plain")
    assert "quick" in body.lower() and not body.lstrip().startswith("{")


SRT_TIME = r"(\d{2}):(\d{2}):(\d{2}),(\d{3})"
VTT_TIME = r"(\d{2}):(\d{2}):(\d{2})\.(\d{3})"


def _secs(m: tuple[str, ...]) -> float:
    h, mi, s, ms = (int(x) for x in m)
    return h * 3600 + mi * 60 + s + ms / 1000


def _check_cues(times: list[tuple[float, float]], duration: float) -> None:
    assert len(times) >= 3
    prev_end = 0.0
    for start, end in times:
        assert start <= end
        assert start >= prev_end - 1e-6
        prev_end = end
    assert times[-1][1] <= duration + 1.0
    assert times[-1][1] > 60.0  # the long clip crosses 30 s windows


async def test_srt_is_well_formed(tiny_url: str) -> None:
    status, ctype, body = await post(tiny_url, form(LONG, response_format="srt"))
    assert status == 200 and "subrip" in ctype
    blocks = body.strip().split("\n\n")
    times = []
    for i, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        assert lines[0] == str(i)
        m = re.fullmatch(SRT_TIME + " --> " + SRT_TIME, lines[1])
        assert m, lines[1]
        times.append((_secs(m.groups()[:4]), _secs(m.groups()[4:])))
        assert lines[2].strip()
    _check_cues(times, 78.8)
    assert "library" in body.lower()


async def test_vtt_is_well_formed(tiny_url: str) -> None:
    status, ctype, body = await post(tiny_url, form(LONG, response_format="vtt"))
    assert status == 200 and ctype.startswith("text/vtt")
    assert body.startswith("WEBVTT\n\n")
    times = []
    for block in body[len("WEBVTT\n\n") :].strip().split("\n\n"):
        lines = block.split("\n")
        m = re.fullmatch(VTT_TIME + " --> " + VTT_TIME, lines[0])
        assert m, lines[0]
        times.append((_secs(m.groups()[:4]), _secs(m.groups()[4:])))
    _check_cues(times, 78.8)


async def test_verbose_json_segments_cover_audio(tiny_url: str) -> None:
    status, _, body = await post(tiny_url, form(LONG, response_format="verbose_json"))
    assert status == 200
    data = json.loads(body)
    assert data["language"] == "en"
    assert abs(data["duration"] - 78.7) < 0.5
    segs = data["segments"]
    assert len(segs) >= 5
    for key in ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob"):
        assert key in segs[0]
    assert {"compression_ratio", "no_speech_prob"} <= segs[0].keys()
    assert segs[0]["start"] < 3.0
    assert segs[-1]["end"] > 70.0
    assert len({s["seek"] for s in segs}) >= 3  # several 30 s windows
    assert data["text"] == "".join(s["text"] for s in segs)
    assert data["words"] is None


async def test_verbose_json_word_timestamps(tiny_url: str) -> None:
    data = form(HELLO, response_format="verbose_json", **{"timestamp_granularities[]": ["word"]})
    status, _, body = await post(tiny_url, data)
    assert status == 200
    words = json.loads(body)["words"]
    assert len(words) >= 6
    assert any("quick" in w["word"].lower() for w in words)
    for a, b in itertools.pairwise(words):
        assert a["start"] <= a["end"] <= b["start"] + 1e-6


async def test_stream_chunks_then_done(tiny_url: str) -> None:
    status, ctype, body = await post(
        tiny_url, form(LONG, stream="true", stream_include_usage="true")
    )
    assert status == 200 and ctype.startswith("text/event-stream")
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c for c in chunks if c["choices"]]
    assert len(deltas) >= 5
    for c in chunks:
        assert c["object"] == "transcription.chunk" and c["id"].startswith("transcribe-")
        assert c["model"] == "openai/whisper-tiny.en"
    text = "".join(c["choices"][0]["delta"]["content"] for c in deltas)
    assert "library" in text.lower()
    assert deltas[-1]["choices"][0]["finish_reason"] == "stop"
    assert sum(1 for c in deltas if c["choices"][0]["finish_reason"] == "stop") >= 3
    usage = chunks[-1]["usage"]
    assert usage["seconds"] == 79 and usage["completion_tokens"] > 0


async def test_stream_first_chunk_before_end(tiny_url: str) -> None:
    """The first segment is on the wire while the server is still decoding the rest."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(tiny_url + TRANSCRIBE, data=form(LONG, stream="true")) as r,
    ):
        assert r.status == 200
        first = await r.content.readuntil(b"\n\n")
        assert b"transcription.chunk" in first
        # The response is not finished when the first chunk arrives: decoding goes on.
        assert not r.content.at_eof()
        running = metric(read_metrics(tiny_url), "vllm:num_requests_running")
        rest = await r.read()
    assert running >= 1
    assert rest.endswith(b"data: [DONE]\n\n")


def test_openai_sdk(tiny_url: str) -> None:
    client = openai.OpenAI(base_url=tiny_url + "/v1", api_key="none")
    with HELLO.open("rb") as f:
        out = client.audio.transcriptions.create(
            model="openai/whisper-tiny.en", file=f, language="en"
        )
    assert "quick" in out.text.lower()
    with HELLO.open("rb") as f:
        stream = client.audio.transcriptions.create(
            model="openai/whisper-tiny.en", file=f, stream=True
        )
        parts = []
        for event in stream:
            payload = event.model_dump()
            for choice in payload.get("choices") or []:
                parts.append(choice["delta"]["content"])
    assert "quick" in "".join(parts).lower()


def test_openai_sdk_text_format(tiny_url: str) -> None:
    client = openai.OpenAI(base_url=tiny_url + "/v1", api_key="none")
    with HELLO.open("rb") as f:
        out = client.audio.transcriptions.create(
            model="openai/whisper-tiny.en", file=f, response_format="text"
        )
    assert "quick" in str(out).lower()


@pytest.mark.parametrize(
    ("fmt", "codec"),
    [("flac", "flac"), ("mp3", "mp3"), ("webm", "libopus"), ("m4a", "aac"), ("ogg", "libopus")],
)
async def test_audio_containers(tiny_url: str, tmp_path: Path, fmt: str, codec: str) -> None:
    import av
    import numpy as np
    from faster_whisper import decode_audio

    pcm = decode_audio(str(HELLO), sampling_rate=16000)
    out = tmp_path / f"hello.{fmt}"
    rate = 48000 if codec == "libopus" else 16000
    if rate != 16000:
        pcm = np.interp(np.arange(0, len(pcm), 16000 / rate), np.arange(len(pcm)), pcm)
    try:
        with av.open(str(out), "w", format="mp4" if fmt == "m4a" else fmt) as c:
            st = c.add_stream(codec, rate=rate, layout="mono")
            frame = av.AudioFrame.from_ndarray(
                (pcm * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
            )
            frame.sample_rate = rate
            for packet in st.encode(frame):
                c.mux(packet)
            for packet in st.encode(None):
                c.mux(packet)
    except Exception as e:  # an encoder this PyAV build lacks
        pytest.skip(f"cannot encode {fmt} here: {e}")
    status, _, body = await post(tiny_url, form(out))
    assert status == 200, body
    assert "quick" in json.loads(body)["text"].lower()


async def test_silence_gives_no_words(tiny_url: str) -> None:
    status, _, body = await post(tiny_url, form(FIXTURES / "silence.wav"))
    assert status == 200
    data = json.loads(body)
    assert len(data["text"].split()) <= 2
    assert data["usage"]["seconds"] == 3


async def test_models_health_version_metrics(tiny_url: str) -> None:
    assert (await post(tiny_url, form(HELLO)))[0] == 200
    async with aiohttp.ClientSession() as s:
        async with s.get(tiny_url + "/v1/models") as r:
            models = await r.json()
        async with s.get(tiny_url + "/health") as r:
            assert r.status == 200 and await r.read() == b""
        async with s.get(tiny_url + "/version") as r:
            assert "version" in await r.json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["openai/whisper-tiny.en"]
    assert models["data"][0]["object"] == "model"
    text = read_metrics(tiny_url)
    assert metric(text, "whisper_backend_requests_total", status="200") >= 1
    assert metric(text, "whisper_backend_audio_seconds_total") > 0
    assert "vllm:num_requests_waiting" in text
    assert metric(text, "vllm:request_success_total") == metric(
        text, "whisper_backend_requests_total", status="200"
    )
    assert "vllm:e2e_request_latency_seconds_bucket" in text


async def test_concurrent_requests_each_get_their_own_text(tiny_url: str) -> None:
    results = await asyncio.gather(
        post(tiny_url, form(HELLO)),
        post(tiny_url, form(FIXTURES / "numbers.wav")),
        post(tiny_url, form(HELLO, response_format="text")),
    )
    assert [r[0] for r in results] == [200, 200, 200]
    assert "quick" in json.loads(results[0][2])["text"].lower()
    numbers = json.loads(results[1][2])["text"].lower()
    assert "weather" in numbers and "quick" not in numbers
    assert "quick" in results[2][2].lower()
