"""`whisper_backend --api-flavor vllm` on the real tiny.en model answers as vLLM does.

Each expectation comes from vLLM's source or from a running vLLM 0.32.0 (docs/backend.md,
"The vLLM flavor"; tests/e2e/test_vllm_stand_in.py compares the two directly); `ours`
(the default) must keep its own answers (subtitles, text/plain).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.backend_client import metric, read_metrics
from testkit.procs import FIXTURES, start_backend
from whisper_backend import vllm_flavor
from whisper_backend.engine import Segment
from whisper_backend.form import TranscriptionRequest
from whisper_backend.formats import Result

pytest_plugins = ["backend_fixtures"]

TRANSCRIBE = "/v1/audio/transcriptions"
TRANSLATE = "/v1/audio/translations"
HELLO = FIXTURES / "hello.wav"
LONG = FIXTURES / "long_en.ogg"
TINY = "openai/whisper-tiny.en"
ENV = {"HF_HUB_OFFLINE": "1"}
VLLM = ("--api-flavor", "vllm")
KEY = "sekret"
ONLY_FORMATS = (
    "Currently only support response_format: `text`, `json`, `verbose_json` or `diarized_json`"
)
SEGMENT_KEYS = [
    "id",
    "avg_logprob",
    "compression_ratio",
    "end",
    "no_speech_prob",
    "seek",
    "start",
    "temperature",
    "text",
    "tokens",
]


@pytest.fixture(scope="module")
def vllm_url(backend_logs: Path) -> Iterator[str]:
    proc, port = start_backend(backend_logs, extra=VLLM, env=ENV)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="module")
def per_token_url(backend_logs: Path) -> Iterator[str]:
    proc, port = start_backend(backend_logs, extra=(*VLLM, "--stream-per-token"), env=ENV)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="module")
def strict_url(backend_logs: Path) -> Iterator[str]:
    """An API key, one worker and no queue, a 1 MB upload limit."""
    extra = (
        *VLLM,
        "--api-key",
        KEY,
        "--num-workers",
        "1",
        "--max-queue",
        "0",
        "--cpu-threads",
        "1",
        "--max-file-size-mb",
        "1",
    )
    proc, port = start_backend(backend_logs, extra=extra, env=ENV)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def form(path: Path | None, *pairs: tuple[str, str], **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for key, value in [*pairs, *fields.items()]:
        data.add_field(key, value)
    if path is not None:
        data.add_field("file", path.read_bytes(), filename=path.name)
    return data


async def post(
    url: str,
    data: aiohttp.FormData,
    path: str = TRANSCRIBE,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


async def get(
    url: str, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, url + path, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def error_of(status: int, headers: dict[str, str], body: str, code: int) -> dict[str, Any]:
    """vLLM's error shape, exactly: JSON (no charset), four keys, `code` the status."""
    assert status == code, body
    assert headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert list(data) == ["error"]
    err: dict[str, Any] = data["error"]
    assert list(err) == ["message", "type", "param", "code"]
    assert err["code"] == code
    return err


def sse(body: str) -> list[str]:
    assert body.endswith("data: [DONE]\n\n")
    events = body.split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1]), events
    return [e[len("data: ") :] for e in events[:-1]]


# --- response formats -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_json_and_text_answer_the_same_json(vllm_url: str, fmt: str) -> None:
    status, headers, body = await post(vllm_url, form(HELLO, model=TINY, response_format=fmt))
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert '", "' not in body and '": ' not in body  # Starlette's compact JSON
    data = json.loads(body)
    assert list(data) == ["text", "usage"]
    assert data["text"].startswith(" ") and "lazy dog" in data["text"]  # leading space kept
    seconds = (HELLO.stat().st_size - 44) / 32000
    assert data["usage"] == {"type": "duration", "seconds": math.ceil(seconds)}


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
async def test_subtitles_are_refused(vllm_url: str, fmt: str) -> None:
    status, headers, body = await post(vllm_url, form(HELLO, response_format=fmt))
    err = error_of(status, headers, body, 400)
    assert err == {"message": ONLY_FORMATS, "type": "BadRequestError", "param": None, "code": 400}


async def test_diarized_json_is_refused_for_whisper(vllm_url: str) -> None:
    status, headers, body = await post(vllm_url, form(HELLO, response_format="diarized_json"))
    err = error_of(status, headers, body, 400)
    assert err["message"] == f"Currently do not support diarized_json for {TINY}"


async def test_verbose_json_has_segments_but_never_words(vllm_url: str) -> None:
    data_in = form(
        HELLO, ("timestamp_granularities[]", "word"), response_format="verbose_json", language="en"
    )
    status, headers, body = await post(vllm_url, data_in)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert list(data) == ["duration", "language", "text", "segments", "words"]
    assert data["words"] is None  # asked for, still null
    assert data["language"] == "en"
    assert data["duration"] == pytest.approx((HELLO.stat().st_size - 44) / 32000)
    assert data["segments"], data
    for seg in data["segments"]:
        assert list(seg) == SEGMENT_KEYS
        assert seg["no_speech_prob"] is None
        assert seg["temperature"] == 0.0 and seg["seek"] == 0
        assert all(t < 50257 for t in seg["tokens"])  # text tokens, no timestamps
    assert data["text"] == " ".join(s["text"] for s in data["segments"])


async def test_verbose_json_segments_per_chunk(vllm_url: str) -> None:
    status, _, body = await post(vllm_url, form(LONG, response_format="verbose_json"))
    assert status == 200, body
    segs = json.loads(body)["segments"]
    seeks = [s["seek"] for s in segs]
    assert seeks == sorted(seeks) and seeks[-1] >= 30  # chunk start in whole seconds
    assert all(0 <= s <= 79 for s in seeks)
    # ids count from 0 again in every chunk (vLLM numbers segments per chunk)
    restarts = [i for i, s in enumerate(segs) if s["id"] == 0]
    assert restarts[0] == 0 and len(restarts) >= 2
    assert all(s["id"] == 0 or s["id"] == segs[i - 1]["id"] + 1 for i, s in enumerate(segs))


# --- streaming ------------------------------------------------------------------------------


async def stream(url: str, *extra: tuple[str, str], rid: str | None = None) -> list[str]:
    data = form(LONG, ("stream", "true"), *extra)
    headers = {"X-Request-Id": rid} if rid else None
    status, hdrs, body = await post(url, data, headers=headers)
    assert status == 200, body
    assert hdrs["Content-Type"] == "text/event-stream; charset=utf-8"
    return sse(body)


async def test_stream_chunks_have_vllms_shape(vllm_url: str) -> None:
    events = await stream(vllm_url, ("stream_include_usage", "true"))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and re.fullmatch(r"transcribe-[0-9a-f]{16}", ids.pop())
    for c in chunks:
        assert c["object"] == "transcription.chunk" and c["model"] == TINY
        assert isinstance(c["created"], int) and abs(c["created"] - time.time()) < 120
    *deltas, usage = chunks
    stops = 0
    after_stop = False
    text = ""
    for c in deltas:
        assert list(c) == ["id", "object", "created", "model", "choices"]
        (choice,) = c["choices"]
        if "finish_reason" in choice:
            assert choice == {
                "delta": {"content": ""},
                "finish_reason": "stop",
                "stop_reason": None,
            }
            stops += 1
            after_stop = True
            continue
        assert list(choice) == ["delta"]  # no finish_reason / stop_reason while generating
        content = choice["delta"]["content"]
        assert list(choice["delta"]) == ["content"] and content
        if after_stop:  # a later chunk's first text gets the separator space
            assert content.startswith("  "), content
            after_stop = False
        text += content
    assert stops >= 2 and "finish_reason" in deltas[-1]["choices"][0]
    assert list(usage) == ["id", "object", "created", "model", "choices", "usage"]
    assert usage["choices"] == []
    u = usage["usage"]
    assert list(u) == ["prompt_tokens", "total_tokens", "completion_tokens"]  # no "seconds"
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["prompt_tokens"] >= math.ceil(78.7 * 100)  # one audio token per 10 ms frame
    assert u["completion_tokens"] > 100
    # the stream's text is the non-streaming text
    status, _, body = await post(vllm_url, form(LONG))
    assert status == 200 and json.loads(body)["text"] == text


async def test_stream_request_id_and_continuous_usage(vllm_url: str) -> None:
    events = await stream(
        vllm_url,
        ("stream_include_usage", "true"),
        ("stream_continuous_usage_stats", "true"),
        rid="req-42",
    )
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {"transcribe-req-42"}
    done = [c["usage"]["completion_tokens"] for c in chunks]
    assert done == sorted(done) and done[0] > 0
    assert all(
        list(c["usage"]) == ["prompt_tokens", "total_tokens", "completion_tokens"] for c in chunks
    )


async def test_stream_without_usage_has_no_usage_chunk(vllm_url: str) -> None:
    events = await stream(vllm_url)
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "stop" and "usage" not in last


@pytest.mark.parametrize("value", ["true", "false"])
async def test_stream_options_need_stream(vllm_url: str, value: str) -> None:
    # vLLM checks the raw form value: even "false" counts as set.
    status, headers, body = await post(vllm_url, form(HELLO, stream_include_usage=value))
    err = error_of(status, headers, body, 400)
    assert err["type"] == "BadRequestError" and err["param"] == "stream_include_usage"
    assert err["message"].startswith("Stream options can only be defined when `stream=True`.")


async def test_stream_with_verbose_json_is_refused(vllm_url: str) -> None:
    status, headers, body = await post(
        vllm_url, form(HELLO, stream="true", response_format="verbose_json")
    )
    err = error_of(status, headers, body, 400)
    assert err["message"] == "verbose_json format doesn't support streaming case"
    assert (err["type"], err["param"]) == ("BadRequestError", None)


async def test_stream_with_srt_gets_the_format_error(vllm_url: str) -> None:
    status, headers, body = await post(vllm_url, form(HELLO, stream="true", response_format="srt"))
    assert error_of(status, headers, body, 400)["message"] == ONLY_FORMATS


# --- errors ---------------------------------------------------------------------------------


async def test_missing_file_is_a_validation_error(vllm_url: str) -> None:
    status, headers, body = await post(vllm_url, form(None, model=TINY))
    err = error_of(status, headers, body, 400)
    assert (err["type"], err["param"]) == ("Bad Request", "body.file")
    assert err["message"].startswith(
        "1 validation error:\n  {'type': 'missing', 'loc': 'body.file'"
    )


async def test_file_sent_as_text_is_422(vllm_url: str) -> None:
    status, headers, body = await post(vllm_url, form(None, file="hello.wav"))
    err = error_of(status, headers, body, 422)
    assert err == {
        "message": "Expected 'file' to be a file-like object, not 'str'.",
        "type": "Unprocessable Entity",
        "param": None,
        "code": 422,
    }


async def test_bad_field_types_are_listed(vllm_url: str) -> None:
    status, headers, body = await post(
        vllm_url, form(HELLO, response_format="xml", temperature="warm")
    )
    err = error_of(status, headers, body, 400)
    assert (err["type"], err["param"]) == ("Bad Request", "body.response_format")
    # vLLM: one error per member of `AudioResponseFormat | Literal["diarized_json"]`, then
    # the temperature's (its exact text is compared with vLLM's in test_vllm_stand_in.py).
    assert err["message"].startswith("3 validation errors:\n")
    assert err["message"].count("'literal_error'") == 2 and "'float_parsing'" in err["message"]
    assert "'msg': \"Input should be 'diarized_json'\"" in err["message"]


async def test_unknown_model_is_404(vllm_url: str) -> None:
    status, headers, body = await post(vllm_url, form(HELLO, model="openai/whisper-large"))
    err = error_of(status, headers, body, 404)
    assert err == {
        "message": f"The model `openai/whisper-large` does not exist. Valid aliases: {TINY}.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


async def test_language(vllm_url: str) -> None:
    status, headers, body = await post(vllm_url, form(HELLO, language="xx"))
    err = error_of(status, headers, body, 400)
    assert (err["type"], err["param"]) == ("BadRequestError", None)
    assert err["message"].startswith("Unsupported language: 'xx'.  Must be one of ['af', 'ar',")
    # any Whisper language is accepted (vLLM does not check the model speaks it)
    status, _, body = await post(vllm_url, form(HELLO, language="fr"))
    assert status == 200, body


async def test_temperature_out_of_range(vllm_url: str) -> None:
    status, headers, body = await post(vllm_url, form(HELLO, temperature="2.5"))
    err = error_of(status, headers, body, 400)
    assert err == {
        "message": "temperature must be in [0, 2], got 2.5. (parameter=temperature, value=2.5)",
        "type": "BadRequestError",
        "param": "temperature",
        "code": 400,
    }
    status, _, body = await post(vllm_url, form(HELLO, temperature="1.5"))  # vLLM allows > 1
    assert status == 200, body


async def test_undecodable_audio(vllm_url: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"definitely not audio" * 50)
    status, headers, body = await post(vllm_url, form(junk))
    err = error_of(status, headers, body, 400)
    assert (err["type"], err["param"]) == ("BadRequestError", None)
    assert err["message"].startswith("Invalid or corrupted audio data.")


async def test_non_multipart_body_is_a_missing_file(vllm_url: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(vllm_url + TRANSCRIBE, json={"model": TINY}) as r,
    ):
        err = error_of(r.status, dict(r.headers), await r.text(), 400)
    assert err["param"] == "body.file"


async def test_translation_on_english_only_model(vllm_url: str) -> None:
    status, headers, body = await post(vllm_url, form(HELLO), path=TRANSLATE)
    err = error_of(status, headers, body, 400)
    assert (err["type"], err["param"]) == ("BadRequestError", "model")


async def test_unknown_route_and_method_answer_as_fastapi(vllm_url: str) -> None:
    status, headers, body = await get(vllm_url, "/v1/nothing")
    assert (status, json.loads(body)) == (404, {"detail": "Not Found"})
    assert headers["Content-Type"] == "application/json"
    status, _, body = await get(vllm_url, TRANSCRIBE)
    assert (status, json.loads(body)) == (405, {"detail": "Method Not Allowed"})


# --- health, models, version ----------------------------------------------------------------


async def test_health_models_version(vllm_url: str) -> None:
    status, headers, body = await get(vllm_url, "/health")
    assert (status, body) == (200, b"")
    assert headers.get("Content-Length") == "0"
    assert headers.get("Vary") == "Origin"  # every vLLM answer (its CORS middleware)
    for method in ("GET", "POST"):
        status, headers, body = await get(vllm_url, "/ping", method)
        assert (status, body, headers.get("Content-Length")) == (200, b"", "0")
    status, headers, body = await get(vllm_url, "/version")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"version": "0.32.0"}  # the vLLM the stand-in was checked against
    status, _, body = await get(vllm_url, "/v1/models")
    data = json.loads(body)
    assert status == 200 and list(data) == ["object", "data"] and data["object"] == "list"
    (card,) = data["data"]
    assert list(card) == [
        "id",
        "object",
        "created",
        "owned_by",
        "root",
        "parent",
        "max_model_len",
        "permission",
    ]
    assert (card["id"], card["root"], card["owned_by"]) == (TINY, TINY, "vllm")
    assert (card["parent"], card["max_model_len"]) == (None, 448)
    (perm,) = card["permission"]
    assert re.fullmatch(r"modelperm-[0-9a-f]{16}", perm["id"])
    assert perm["object"] == "model_permission" and perm["organization"] == "*"


async def test_load_counts_requests_in_flight(vllm_url: str) -> None:
    async def load() -> Any:
        status, headers, body = await get(vllm_url, "/load")
        assert status == 200 and headers["Content-Type"] == "application/json"
        return json.loads(body)

    async def settled() -> None:
        """A request leaves the count just after its last byte: wait for an earlier one
        to leave (the bound only ends a hang)."""
        for _ in range(600):
            if await load() == {"server_load": 0}:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"/load never went back to 0: {await load()}")

    await settled()
    async with (
        aiohttp.ClientSession() as s,
        s.post(vllm_url + TRANSCRIBE, data=form(LONG, stream="true")) as r,
    ):
        await r.content.readuntil(b"\n\n")  # the stream has begun
        assert await load() == {"server_load": 1}
        assert (await r.read()).endswith(b"data: [DONE]\n\n")
    await settled()


async def test_metrics_have_vllms_labels(vllm_url: str) -> None:
    status, headers, _ = await get(vllm_url, "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
    text = await asyncio.to_thread(read_metrics, vllm_url)
    labels = {"engine": "0", "model_name": TINY}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert re.search(rf'^{name}{{engine="0",model_name="{TINY}"}} ', text, re.M), name
    for reason in ("capacity", "deferred"):
        series = f'engine="0",model_name="{TINY}",reason="{reason}"'
        assert f"vllm:num_requests_waiting_by_reason{{{series}}}" in text, reason
    assert metric(text, "vllm:num_requests_waiting_by_reason", **labels) == metric(
        text, "vllm:num_requests_waiting", **labels
    )
    for reason in ("stop", "length", "abort", "error", "repetition"):
        assert f'finished_reason="{reason}"' in text, reason


async def test_per_token_stream(per_token_url: str) -> None:
    """--stream-per-token: a delta per token, as vLLM sends; the text is the same."""
    events = await stream(
        per_token_url,
        ("stream_include_usage", "true"),
        ("stream_continuous_usage_stats", "true"),
    )
    chunks = [json.loads(e) for e in events[:-1]]
    *deltas, final = chunks
    texts = [
        c["choices"][0]["delta"]["content"]
        for c in deltas
        if "finish_reason" not in c["choices"][0]
    ]
    text = "".join(texts)
    assert len(texts) >= len(text.split()) > 100  # at least a delta per word
    done = [c["usage"]["completion_tokens"] for c in chunks]
    assert all(b > a for a, b in itertools.pairwise(done[:-1]))  # each delta took tokens
    assert final["usage"]["completion_tokens"] == done[-2]
    status, _, body = await post(per_token_url, form(LONG))
    assert status == 200 and json.loads(body)["text"] == text


# --- API key, queue, upload limit, startup --------------------------------------------------


async def test_api_key(strict_url: str) -> None:
    status, headers, body = await get(strict_url, "/v1/models")
    assert (status, json.loads(body)) == (401, {"error": "Unauthorized"})
    assert headers["Content-Type"] == "application/json"
    status, _, _ = await get(strict_url, "/v1/models", headers={"Authorization": "bearer " + KEY})
    assert status == 200  # the scheme in any case, as vLLM
    assert (await get(strict_url, "/health"))[0] == 200  # not under /v1


async def test_full_queue_is_503_service_unavailable(strict_url: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}

    async def one() -> tuple[int, dict[str, str], str]:
        return await post(strict_url, form(LONG), headers=auth)

    results = await asyncio.gather(*(one() for _ in range(3)))
    assert any(status == 200 for status, _, _ in results)
    refused = [r for r in results if r[0] == 503]
    assert refused, [r[0] for r in results]
    for status, headers, body in refused:
        err = error_of(status, headers, body, 503)
        assert err == {
            "message": vllm_flavor.QUEUE_FULL,
            "type": "Service Unavailable",
            "param": None,
            "code": 503,
        }
        assert "Retry-After" not in headers


async def test_upload_over_the_limit(strict_url: str, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    status, headers, body = await post(
        strict_url, form(big), headers={"Authorization": f"Bearer {KEY}"}
    )
    err = error_of(status, headers, body, 400)
    assert (err["type"], err["param"]) == ("BadRequestError", "audio_filesize_mb")
    assert err["message"].startswith(
        "Maximum file size exceeded (parameter=audio_filesize_mb, value="
    )


def test_model_that_cannot_load_ends_the_process(backend_logs: Path, tmp_path: Path) -> None:
    # vLLM loads before it serves and exits when the model fails; it never answers 503.
    proc, _ = start_backend(
        backend_logs,
        extra=(*VLLM, "--model-path", str(tmp_path), "--served-model-name", "broken"),
        env=ENV,
        wait=False,
    )
    try:
        assert proc.popen is not None
        assert proc.popen.wait(60) != 0
    finally:
        proc.stop()


# --- ours is unchanged ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "ctype", "start"),
    [
        ("srt", "application/x-subrip", "1\n00:00:"),
        ("vtt", "text/vtt", "WEBVTT\n\n00:00:"),
        ("text", "text/plain", "The"),
    ],
)
async def test_ours_still_renders_subtitles_and_text(
    tiny_url: str, fmt: str, ctype: str, start: str
) -> None:
    status, headers, body = await post(tiny_url, form(HELLO, response_format=fmt))
    assert status == 200, body
    assert headers["Content-Type"].startswith(ctype)
    assert body.startswith(start) and "lazy dog" in body


async def test_ours_keeps_its_errors_and_version(tiny_url: str) -> None:
    status, headers, body = await post(tiny_url, form(HELLO, temperature="1.5"))  # ours: 0..1
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    err = json.loads(body)["error"]
    assert (err["type"], err["param"], err["code"]) == ("BadRequestError", "temperature", 400)
    status, _, raw = await get(tiny_url, "/version")
    assert status == 200 and "engine" in json.loads(raw)
    status, _, raw = await get(tiny_url, "/nothing")
    assert json.loads(raw)["error"]["code"] == 404


# --- pure rendering -------------------------------------------------------------------------


def seg(i: int, seek: int, text: str, tokens: tuple[int, ...] = (50363, 1, 2, 50400)) -> Segment:
    return Segment(i, seek, seek / 100, seek / 100 + 1, text, tokens, 0.4, -0.3, 1.2, 0.1, None)


def request(fmt: str) -> TranscriptionRequest:
    return TranscriptionRequest(b"x", "a.wav", TINY, None, fmt, 0.2, None, False, False, False)


RESULT = Result(" a b c", "en", 61.5, (seg(0, 0, " a"), seg(1, 0, " b"), seg(2, 3000, " c")))


def test_render_joins_chunks_with_a_space_and_translation_has_no_usage() -> None:
    assert vllm_flavor.render(request("json"), RESULT, "transcribe", 50363) == {
        "text": " a b  c",
        "usage": {"type": "duration", "seconds": 62},
    }
    assert vllm_flavor.render(request("text"), RESULT, "translate", 50363) == {"text": " a b  c"}


def test_render_verbose_numbers_segments_per_chunk() -> None:
    body = vllm_flavor.render(request("verbose_json"), RESULT, "transcribe", 50363)
    assert body["text"] == " a  b  c"
    assert [(s["id"], s["seek"]) for s in body["segments"]] == [(0, 0), (1, 0), (0, 30)]
    assert body["segments"][0]["tokens"] == [1, 2]
    assert body["segments"][0]["temperature"] == 0.2 and body["words"] is None
