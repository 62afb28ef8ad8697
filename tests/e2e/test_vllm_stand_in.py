"""The vLLM stand-in (`whisper_backend --api-flavor vllm`) against real vLLM 0.32.0.

One request set goes to both, each request to the two at once: the stand-in on
openai/whisper-base, and the real vLLM of the session's `stack` (testkit.vllm, no gateway in
between) on the same model. Compared: status, content type, `Vary`, the JSON's shape (keys
in order and value types, recursively; not transcript text) and error bodies exactly where
vLLM's are deterministic. What the stand-in keeps different on purpose is the table "Kept on
purpose, and why" in docs/backend.md ("The vLLM flavor"); each relaxation below names its
row there.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.procs import FIXTURES, start_backend, wait_http
from testkit.vllm import BASE, READY_S, VllmStack

# The session's first use of `stack` starts vLLM (a minute; a first run on a machine also
# builds its venv), and pytest-timeout counts fixture setup.
pytestmark = pytest.mark.timeout(1500)

HELLO = (FIXTURES / "hello.wav").read_bytes()
GARBAGE = b"definitely not audio" * 50
TRANSCRIBE = "/v1/audio/transcriptions"
TRANSLATE = "/v1/audio/translations"
# Kept on purpose (docs/backend.md, row "stream granularity"): by default the stand-in sends
# a delta per segment; with this flag a delta per token, vLLM's form, which is compared here.
STAND_IN_FLAGS = ("--api-flavor", "vllm", "--stream-per-token")
# The series compared on /metrics, by label names and label values (not sample values).
SERIES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_waiting_by_reason",
    "vllm:request_success_total",
    "vllm:e2e_request_latency_seconds_count",
)


@dataclass(frozen=True)
class Case:
    """One request, and how the two answers are compared:
    `exact` the whole body; `shape` the JSON's shape plus the `same` keys' values;
    `sse` the stream's events; `empty` an empty body; `metrics` the SERIES labels."""

    method: str
    path: str
    compare: str
    fields: tuple[tuple[str, str], ...] = ()
    audio: bytes | None = HELLO
    same: tuple[str, ...] = ()  # top-level keys whose values must be equal too


def _post(path: str, compare: str, *fields: tuple[str, str], **kw: Any) -> Case:
    return Case("POST", path, compare, (("model", BASE), *fields), **kw)


CASES: dict[str, Case] = {
    # Kept on purpose (docs/backend.md, row "decoder"): transcript text and numbers; shapes
    # only, but the usage (from the audio's length) and the detected language must agree.
    # Row "verbose segments": how many segments, and their seeks, are values too (`shape`).
    "json": _post(TRANSCRIBE, "shape", same=("usage",)),
    "text": _post(TRANSCRIBE, "shape", ("response_format", "text"), same=("usage",)),
    "verbose_json": _post(
        TRANSCRIBE, "shape", ("response_format", "verbose_json"), same=("duration", "language")
    ),
    "srt": _post(TRANSCRIBE, "exact", ("response_format", "srt")),
    "vtt": _post(TRANSCRIBE, "exact", ("response_format", "vtt")),
    "diarized_json": _post(TRANSCRIBE, "exact", ("response_format", "diarized_json")),
    "stream": _post(TRANSCRIBE, "sse", ("stream", "true")),
    "stream_usage": _post(TRANSCRIBE, "sse", ("stream", "true"), ("stream_include_usage", "true")),
    "stream_verbose_json": _post(
        TRANSCRIBE, "exact", ("stream", "true"), ("response_format", "verbose_json")
    ),
    "usage_without_stream": _post(TRANSCRIBE, "exact", ("stream_include_usage", "true")),
    "translation_json": _post(TRANSLATE, "shape"),
    "missing_file": _post(TRANSCRIBE, "exact", audio=None),
    "file_as_text": _post(TRANSCRIBE, "exact", ("file", "hello.wav"), audio=None),
    "unknown_model": Case("POST", TRANSCRIBE, "exact", (("model", "openai/whisper-large"),)),
    "bad_format": _post(TRANSCRIBE, "exact", ("response_format", "xml")),
    "bad_format_translation": _post(TRANSLATE, "exact", ("response_format", "xml")),
    "bad_temperature": _post(TRANSCRIBE, "exact", ("temperature", "warm")),
    "temperature_out_of_range": _post(TRANSCRIBE, "exact", ("temperature", "2.5")),
    "bad_format_and_temperature": _post(
        TRANSCRIBE, "exact", ("response_format", "xml"), ("temperature", "warm")
    ),
    "unknown_language": _post(TRANSCRIBE, "exact", ("language", "xx")),
    "garbage_audio": _post(TRANSCRIBE, "exact", audio=GARBAGE),
    "get_transcriptions": Case("GET", TRANSCRIBE, "exact", audio=None),
    "unknown_route": Case("GET", "/v1/nothing", "exact", audio=None),
    "health": Case("GET", "/health", "empty", audio=None),
    "ping": Case("GET", "/ping", "empty", audio=None),
    "ping_post": Case("POST", "/ping", "empty", audio=None),
    "version": Case("GET", "/version", "exact", audio=None),
    # Row "/load": vLLM counts nothing without --enable-server-load-tracking, the stand-in
    # counts its requests in flight; it has none here, so both say 0.
    "load": Case("GET", "/load", "exact", audio=None),
    # Row "/v1/models": `root`, `created` and the permission id are values; shape only.
    "models": Case("GET", "/v1/models", "shape", audio=None),
    "metrics": Case("GET", "/metrics", "metrics", audio=None),
}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def _form(case: Case) -> aiohttp.FormData | None:
    if case.method != "POST" or (not case.fields and case.audio is None):
        return None
    data = aiohttp.FormData(default_to_multipart=True)
    for key, value in case.fields:
        data.add_field(key, value)
    if case.audio is not None:
        data.add_field("file", case.audio, filename="hello.wav", content_type="audio/wav")
    return data


async def _send(session: aiohttp.ClientSession, base: str, case: Case) -> Answer:
    async with session.request(case.method, base + case.path, data=_form(case)) as r:
        return Answer(r.status, dict(r.headers), await r.text())


def shape(value: Any) -> Any:
    """Keys in order and value types, recursively; a list is the set of its items' shapes
    (how many segments or tokens there are is a value, not a shape)."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return sorted({json.dumps(shape(v)) for v in value})
    return type(value).__name__


def events(body: str) -> list[str]:
    """SSE `data:` payloads; every event is one `data:` line."""
    assert body.endswith("\n\n"), body[-200:]
    raw = body[: -len("\n\n")].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in raw), raw
    return [e.removeprefix("data: ") for e in raw]


def kind(payload: str) -> str:
    """C: a text delta, S: a chunk's closing delta, U: the usage chunk, D: [DONE]."""
    if payload == "[DONE]":
        return "D"
    chunk = json.loads(payload)
    if chunk["choices"] == []:
        return "U"
    (choice,) = chunk["choices"]
    return "S" if "finish_reason" in choice else "C"


def metric_labels(text: str) -> dict[str, list[dict[str, str]]]:
    """SERIES -> the label sets of its samples (label values included, sample values not)."""
    found: dict[str, list[dict[str, str]]] = {name: [] for name in SERIES}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found:
                found[sample.name].append(dict(sample.labels))
    return {name: sorted(labels, key=lambda d: sorted(d.items())) for name, labels in found.items()}


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"HF_HUB_OFFLINE": "1"}
    if "WHISPER_GATEWAY_CACHE" in os.environ:
        env["WHISPER_GATEWAY_CACHE"] = os.environ["WHISPER_GATEWAY_CACHE"]
    proc, port = start_backend(
        tmp_path_factory.mktemp("stand-in"), model=BASE, extra=STAND_IN_FLAGS, env=env
    )
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="module")
def vllm(stack: VllmStack) -> str:
    """Real vLLM, once it answers (an earlier module may have killed it for a restart)."""
    url = f"http://{stack.vllm}"
    wait_http(f"{url}/health", timeout=READY_S)
    return url


ASKED_ALONE = ("load",)


@pytest.fixture(scope="module")
def answers(vllm: str, stand_in: str) -> dict[str, tuple[Answer, Answer]]:
    """Every case's answers, vLLM's and ours, asked a few cases at a time: the suite's
    time, not the comparison, is what asking them one by one cost."""

    async def run() -> dict[str, tuple[Answer, Answer]]:
        gate = asyncio.Semaphore(4)
        async with aiohttp.ClientSession() as s:

            async def both(case: Case) -> tuple[Answer, Answer]:
                async with gate:
                    real, ours = await asyncio.gather(
                        _send(s, vllm, case), _send(s, stand_in, case)
                    )
                    return real, ours

            busy = [n for n in CASES if n not in ASKED_ALONE]
            pairs = await asyncio.gather(*(both(CASES[n]) for n in busy))
            # /load counts requests in flight: asked once the others have ended.
            alone = [await both(CASES[n]) for n in ASKED_ALONE]
        return dict(zip([*busy, *ASKED_ALONE], [*pairs, *alone], strict=True))

    return asyncio.run(run())


@pytest.mark.parametrize("name", list(CASES))
def test_stand_in_answers_as_vllm(answers: dict[str, tuple[Answer, Answer]], name: str) -> None:
    case = CASES[name]
    real, ours = answers[name]
    shown = f"\nvLLM: {real.status} {real.body[:1500]}\nours: {ours.status} {ours.body[:1500]}"
    assert ours.status == real.status, shown
    for header in ("Content-Type", "Vary", "Allow"):
        assert ours.header(header) == real.header(header), (header, shown)
    # Row "server": the `Server` header names aiohttp, not uvicorn; not compared.
    if case.compare == "exact":
        assert ours.body == real.body, shown
    elif case.compare == "empty":
        assert (ours.body, real.body) == ("", ""), shown
    elif case.compare == "shape":
        theirs, mine = json.loads(real.body), json.loads(ours.body)
        assert shape(mine) == shape(theirs), shown
        for key in case.same:
            assert mine[key] == theirs[key], (key, shown)
    elif case.compare == "sse":
        _compare_streams(events(real.body), events(ours.body), shown)
    else:
        assert case.compare == "metrics"
        mine_labels, their_labels = metric_labels(ours.body), metric_labels(real.body)
        assert mine_labels == their_labels, shown
        assert all(mine_labels.values()), mine_labels  # every series is there


def _compare_streams(real: list[str], ours: list[str], shown: str) -> None:
    """Same event kinds in the same order, the same shape per kind, the prompt token count
    (from the audio's length) equal. Kept on purpose (docs/backend.md, rows "decoder" and
    "stream granularity"): how many text deltas there are, and their text."""
    theirs, mine = ("".join(kind(e) for e in stream) for stream in (real, ours))
    for k in (theirs, mine):
        assert re.fullmatch(r"(C+S)+U?D", k), (k, shown)
    assert re.sub("C+", "C", mine) == re.sub("C+", "C", theirs), shown
    # hello.wav is one 30 s chunk of a dozen words: both send a delta per token.
    assert theirs.count("C") > 1 and mine.count("C") > 1, (theirs, mine)

    def shapes(stream: list[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for e in stream[:-1]:
            out.setdefault(kind(e), set()).add(json.dumps(shape(json.loads(e))))
        return out

    assert shapes(ours) == shapes(real), shown
    chunks = [json.loads(e) for e in ours[:-1]] + [json.loads(e) for e in real[:-1]]
    for stream in (real, ours):  # one id per stream, vLLM's form
        ids = {json.loads(e)["id"] for e in stream[:-1]}
        assert len(ids) == 1 and re.fullmatch(r"transcribe-[0-9a-f]{16}", ids.pop()), ids
    assert {c["object"] for c in chunks} == {"transcription.chunk"}
    assert {c["model"] for c in chunks} == {BASE}
    if theirs.endswith("UD"):
        real_usage, our_usage = (json.loads(stream[-2])["usage"] for stream in (real, ours))
        assert our_usage["prompt_tokens"] == real_usage["prompt_tokens"], shown
        total = our_usage["prompt_tokens"] + our_usage["completion_tokens"]
        assert our_usage["total_tokens"] == total, shown
