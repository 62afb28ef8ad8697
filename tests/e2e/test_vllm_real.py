"""Real vLLM (0.32, whisper-base converted from the packaged weights) behind the gateway,
started as users start it (testkit.vllm: `whisper-gateway --config` with a `launch: vllm`
backend beside a `launch: cpu` one, both serving openai/whisper-base).

The CPU backend stays drained while vLLM's own behaviour is under test, so every request
meets vLLM; it takes the traffic when vLLM is killed (the last test).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from testkit import load
from testkit.clips import clip_seconds, make_clip, make_noise
from testkit.load import run_load
from testkit.procs import ROOT, free_port
from testkit.stack import WHISPER_GATEWAY, Tree, curl, wait_until
from testkit.vllm import BASE, READY_S, VllmStack
from testkit.wer import word_error_rate

# The first run on a machine builds vLLM's venv (about 2 min) before vLLM loads (1 min).
pytestmark = pytest.mark.timeout(1500)
WINDOW_S = 30.0
HELLO = ROOT / "tests" / "fixtures" / "hello.wav"


def curl_transcribe(
    url: str, *fields: str, opts: tuple[str, ...] = (), path: str = "transcriptions"
) -> tuple[int, str]:
    """The tutorial's curl line: hello.wav and the model, `fields` as more -F pairs."""
    form = [a for f in fields for a in ("-F", f)]
    return curl(f"{url}/v1/audio/{path}", "-F", f"file=@{HELLO}", "-F", f"model={BASE}", *form,
                *opts, timeout=120)  # fmt: skip


def sse(body: str) -> list[str]:
    return [e.removeprefix("data: ") for e in body.strip().split("\n\n") if e]


# ---------------------------------------------------------------- the tutorial's requests


def test_requests_reach_vllm_and_the_json_is_whole(stack: VllmStack) -> None:
    status, ctype, body = asyncio.run(
        load.transcribe(stack.gw.url, BASE, HELLO.read_bytes(), response_format="json")
    )
    assert status == 200 and ctype.startswith("application/json"), body
    assert "quick brown fox" in json.loads(body)["text"].lower()
    code, out = curl("-D", "-", "-o", "/dev/null", f"{stack.gw.url}/v1/audio/transcriptions",
                     "-F", f"file=@{HELLO}", "-F", f"model={BASE}")  # fmt: skip
    assert code == 200 and f"x-gateway-backend: {stack.vllm}" in out.lower(), out


@pytest.mark.parametrize("fmt", ["openai", "backend", "text"])
def test_streams_in_each_format(stack: VllmStack, fmt: str) -> None:
    opts = ("-N", "-H", f"x-stream-format: {fmt}")
    status, body = curl_transcribe(stack.gw.url, "stream=true", opts=opts)
    assert status == 200, body
    events = sse(body)
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    if fmt == "openai":
        deltas = [p["delta"] for p in payloads if p["type"] == "transcript.text.delta"]
        (done,) = [p for p in payloads if p["type"] == "transcript.text.done"]
        assert "".join(deltas) == done["text"] and "fox" in done["text"].lower()
        # Asked of vLLM by the gateway (stream_include_usage): always there.
        assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    elif fmt == "backend":  # vLLM's own chunks, one per token
        assert all(p["object"] == "transcription.chunk" for p in payloads)
        text = "".join(c["delta"].get("content", "") for p in payloads for c in p["choices"])
        assert "fox" in text.lower()
    else:
        assert "fox" in "".join(p["text"] for p in payloads).lower()


@pytest.mark.parametrize(
    "fmt,ctype,marker",
    [
        ("text", "text/plain", "fox"),
        ("srt", "application/x-subrip", "00:00:00,000 --> "),
        ("vtt", "text/vtt", "WEBVTT"),
        ("verbose_json", "application/json", '"segments"'),
    ],
)
def test_every_response_format(stack: VllmStack, fmt: str, ctype: str, marker: str) -> None:
    status, got, body = asyncio.run(
        load.transcribe(stack.gw.url, BASE, HELLO.read_bytes(), response_format=fmt)
    )
    assert status == 200 and got.startswith(ctype), (got, body)
    assert marker in body.lower() if marker == "fox" else marker in body
    if fmt == "verbose_json":
        v = json.loads(body)
        assert abs(v["duration"] - clip_seconds(HELLO)) < 0.1 and v["segments"]


@pytest.mark.parametrize(
    "fields",
    [
        ("response_format=json",),
        ("prompt=Quick brown fox.", "language=en"),
        ("temperature=0.2", "language=en"),
        ("response_format=verbose_json", "timestamp_granularities[]=segment"),
    ],
)
@pytest.mark.parametrize("path", ["transcriptions", "translations"])
def test_options_reach_vllm_as_sent(stack: VllmStack, path: str, fields: tuple[str, ...]) -> None:
    """What vLLM makes of each option is its own business (a prompt may shorten
    whisper-base's answer); through the gateway it must be what vLLM answers directly."""
    if path == "translations" and "language=en" in fields:
        pytest.skip("translations take no language")
    status, body = curl_transcribe(stack.gw.url, *fields, path=path)
    assert status == 200, body
    direct_status, direct = curl_transcribe(f"http://{stack.vllm}", *fields, path=path)
    assert direct_status == 200, direct
    got, want = json.loads(body), json.loads(direct)
    if "temperature=0.2" in fields:  # sampled: the same shape, not the same words
        assert got.keys() == want.keys() and got["text"].strip()
    else:
        assert got["text"] == want["text"] and got["text"].strip(), (got, want)


def test_openai_sdk_sync_and_async(stack: VllmStack) -> None:
    client = openai.OpenAI(base_url=f"{stack.gw.url}/v1", api_key="unused", max_retries=0)
    with HELLO.open("rb") as f:
        whole = client.audio.transcriptions.create(model=BASE, file=f)
    assert "fox" in whole.text.lower()
    with HELLO.open("rb") as f:
        events = list(client.audio.transcriptions.create(model=BASE, file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    (done,) = [e for e in events if e.type == "transcript.text.done"]
    assert "".join(deltas) == done.text and done.usage is not None

    async def run_async() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(base_url=f"{stack.gw.url}/v1", api_key="unused")
        with HELLO.open("rb") as f:
            one = await aclient.audio.transcriptions.create(model=BASE, file=f)
        with HELLO.open("rb") as f:
            stream = await aclient.audio.transcriptions.create(model=BASE, file=f, stream=True)
            text = ""
            async for e in stream:
                if e.type == "transcript.text.done":
                    text = e.text
        return one.text, text

    one, streamed = asyncio.run(run_async())
    assert "fox" in one.lower() and "fox" in streamed.lower()


# ---------------------------------------------------------------- vLLM's limits


def error_of(status: int, body: str) -> dict[str, Any]:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status, body
    return dict(err)


def test_vllms_limits_reach_the_client_in_openais_shape(stack: VllmStack, tmp_path: Path) -> None:
    big = make_noise(tmp_path / "26mb.wav", seconds=140, rate=48000, channels=2)
    assert big.stat().st_size > 25 * 1024 * 1024
    status, _, body = asyncio.run(load.transcribe(stack.gw.url, BASE, big.read_bytes()))
    err = error_of(413, body)
    assert status == 413 and "VLLM_MAX_AUDIO_CLIP_FILESIZE_MB" in err["message"], body
    long = make_noise(tmp_path / "601s.wav", seconds=601)
    status, _, body = asyncio.run(load.transcribe(stack.gw.url, BASE, long.read_bytes()))
    err = error_of(400, body)
    assert status == 400 and "VLLM_MAX_AUDIO_DECODE_DURATION_S" in err["message"], body
    status, _, body = asyncio.run(
        load.transcribe(stack.gw.url, BASE, HELLO.read_bytes(), response_format="xml")
    )
    assert status == 400 and "response_format" in error_of(400, body)["message"], body


# ---------------------------------------------------------------- long audio


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, float]:
    """88.7 s of continuous speech (three of vLLM's windows) and its duration."""
    path = make_clip(tmp_path_factory.mktemp("clip") / "long.wav", 88.7)
    return path.read_bytes(), clip_seconds(path)


def _seconds(stamp: str) -> float:
    h, m, s = re.split("[:]", stamp.replace(",", "."))
    return int(h) * 3600 + int(m) * 60 + float(s)


LONG_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


@pytest.fixture(scope="module")
def long_answers(
    stack: VllmStack, long_clip: tuple[bytes, float]
) -> dict[str, tuple[int, str, str]]:
    """The long clip in every format, sent at once (vLLM batches them: the suite's time,
    not what is checked, is what sending them one by one cost)."""
    clip, _ = long_clip

    async def run() -> list[tuple[int, str, str]]:
        return await asyncio.gather(
            *(
                load.transcribe(stack.gw.url, BASE, clip, response_format=f, language="en")
                for f in LONG_FORMATS
            )
        )

    return dict(zip(LONG_FORMATS, asyncio.run(run()), strict=True))


def test_json_and_text_of_long_audio_carry_the_whole_text(
    long_answers: dict[str, tuple[int, str, str]],
) -> None:
    status, ctype, body = long_answers["json"]
    assert status == 200 and ctype.startswith("application/json"), body
    whole = json.loads(body)["text"].strip()
    assert len(whole.split()) > 100  # 88.7 s of continuous speech
    status, ctype, text = long_answers["text"]
    assert status == 200 and ctype.startswith("text/plain"), text
    assert text == whole + "\n"


@pytest.mark.parametrize("fmt", ["srt", "vtt", "verbose_json"])
def test_segments_cover_long_audio_or_the_answer_says_so(
    long_answers: dict[str, tuple[int, str, str]], long_clip: tuple[bytes, float], fmt: str
) -> None:
    _, duration = long_clip
    status, ctype, body = long_answers[fmt]
    if status == 502 or fmt == "verbose_json":
        assert ctype.startswith("application/json"), ctype
    if status == 502:
        err = error_of(502, body)
        assert "does not cover the whole audio" in err["message"], err
        return
    assert status == 200, body
    if fmt == "verbose_json":
        spans = [(s["start"], s["end"]) for s in json.loads(body)["segments"]]
    else:
        stamps = re.findall(r"(\d\d:\d\d:\d\d[.,]\d\d\d) --> (\d\d:\d\d:\d\d[.,]\d\d\d)", body)
        spans = [(_seconds(a), _seconds(b)) for a, b in stamps]
    assert spans, body
    assert min(s for s, _ in spans) <= WINDOW_S
    assert duration - max(e for _, e in spans) <= WINDOW_S


@pytest.fixture(scope="module")
def split_answers(
    stack: VllmStack, long_clip: tuple[bytes, float]
) -> dict[str, tuple[int, str, str]]:
    """The long clip split (x-long-audio: split) in the formats one vLLM request cannot
    give whole, sent at once."""
    clip, _ = long_clip
    formats = ("srt", "vtt", "verbose_json")

    async def run() -> list[tuple[int, str, str]]:
        return await asyncio.gather(
            *(
                load.transcribe(
                    stack.gw.url, BASE, clip, response_format=f, language="en",
                    headers={"x-long-audio": "split"},
                )
                for f in formats
            )
        )  # fmt: skip

    return dict(zip(formats, asyncio.run(run()), strict=True))


@pytest.mark.parametrize("fmt", ["srt", "vtt", "verbose_json"])
def test_split_long_audio_is_whole_through_vllm(
    split_answers: dict[str, tuple[int, str, str]],
    long_answers: dict[str, tuple[int, str, str]],
    long_clip: tuple[bytes, float],
    fmt: str,
) -> None:
    """Pieces of at most one window each: vLLM's segments cover every piece, so the
    stitched answer covers the whole clip and says what the whole json says."""
    _, duration = long_clip
    status, _, body = split_answers[fmt]
    assert status == 200, body
    if fmt == "verbose_json":
        doc = json.loads(body)
        assert doc["duration"] == pytest.approx(duration, abs=0.05)
        spans = [(s["start"], s["end"]) for s in doc["segments"]]
        text = doc["text"]
    else:
        stamps = re.findall(r"(\d\d:\d\d:\d\d[.,]\d\d\d) --> (\d\d:\d\d:\d\d[.,]\d\d\d)", body)
        spans = [(_seconds(a), _seconds(b)) for a, b in stamps]
        text = " ".join(
            line for line in body.splitlines()
            if line and "-->" not in line and not line.isdigit() and line != "WEBVTT"
        )  # fmt: skip
    assert len(spans) >= 3 and spans[0][0] < 5 and spans[-1][1] > duration - 10, spans
    # No gap longer than a piece's silence allowance between consecutive cues.
    assert all(b[0] - a[1] < 10 for a, b in itertools.pairwise(spans)), spans
    # vLLM decodes with timestamps for these formats, so its words differ a little from
    # json's; a lost piece (a third of the clip) would cost 30 points.
    whole = json.loads(long_answers["json"][2])["text"]
    assert word_error_rate(whole, text) < 0.15, (whole, text)


def test_metrics_carry_vllms_own_running_count(
    stack: VllmStack, long_clip: tuple[bytes, float]
) -> None:
    """vLLM labels its series with `engine` and adds `_by_reason`; the gateway's engine
    reading sums the first and ignores the second."""
    raw = urllib.request.urlopen(f"http://{stack.vllm}/metrics", timeout=10).read().decode()
    assert re.search(r'vllm:num_requests_running\{[^}]*engine="0"', raw), raw[:2000]
    assert "vllm:num_requests_waiting_by_reason" in raw
    clip, _ = long_clip

    async def scenario() -> float:
        job = asyncio.create_task(load.transcribe(stack.gw.url, BASE, clip, response_format="json"))
        seen = 0.0
        while not job.done():
            views = await asyncio.to_thread(stack.gw.backends)
            engine = next(b for b in views if b["endpoint"] == stack.vllm)["engine"]
            seen = max(seen, engine["running"] or 0.0)
            await asyncio.sleep(0.5)
        status, _, _ = await job
        assert status == 200
        return seen

    seen = asyncio.run(scenario())
    metrics = urllib.request.urlopen(f"{stack.gw.url}/metrics", timeout=10).read().decode()
    assert seen >= 1.0, "vLLM's own running count, read while it transcribed"
    server = f'server="http://{stack.vllm}"'
    assert re.search(rf"vllm:num_requests_waiting\{{{server}\}} \d", metrics), metrics[:3000]
    assert re.search(rf"vllm:num_requests_running\{{{server}\}} \d", metrics), metrics[:3000]


# ---------------------------------------------------------------- the router's line


def test_the_routers_command_line_in_front_of_real_vllm(stack: VllmStack, tmp_path: Path) -> None:
    port = str(free_port())
    line = [
        WHISPER_GATEWAY,
        "--host", "127.0.0.1", "--port", port, "--service-discovery", "static",
        "--static-backends", f"http://{stack.vllm}", "--static-models", BASE,
    ]  # fmt: skip
    tree = Tree(line, tmp_path / "router-line.out")
    url = f"http://127.0.0.1:{port}"
    try:
        tree.wait_for("whisper-gateway is up", 120)
        wait_until(lambda: curl(f"{url}/health")[0] == 200, 120, "the router line's backend")
        status, body = curl_transcribe(url, "response_format=json")
        assert status == 200 and "fox" in json.loads(body)["text"].lower(), body
        status, body = curl_transcribe(url, "stream=true", opts=("-N",))
        assert status == 200 and body.rstrip().endswith("data: [DONE]"), body
    finally:
        tree.stop()


# ---------------------------------------------------------------- kill, reap, readmit


def group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_killed_vllm_loses_no_request_and_is_reaped_restarted_readmitted(
    stack: VllmStack,
) -> None:
    stack.admin("undrain", stack.cpu)
    stack.gw.wait_backends({stack.cpu}, timeout=60)
    leader = stack.vllm_child()["pid"]
    family = group_members(leader)
    assert len(family) >= 3, family  # API server, engine core, worker
    os.kill(leader, signal.SIGKILL)
    # Sent at once, before any probe noticed: a request that meets the dead port is
    # retried on the CPU backend.
    out = asyncio.run(run_load(stack.gw.url, BASE, total=8, concurrency=2, deadline_s=120))
    assert out.sent == 8 and out.counts["ok"] == 8, out
    wait_until(lambda: stack.health(stack.vllm) == "UNHEALTHY", 60, "vLLM ejected")
    wait_until(lambda: stack.vllm_child()["starts"] == 2, 60, "the supervisor restarts vLLM")
    survivors = [p for p in family if os.path.exists(f"/proc/{p}")]
    assert not survivors, f"the old vLLM's processes outlived the restart: {survivors}"
    assert "left processes in its group" in stack.tree.text()
    wait_until(lambda: stack.health(stack.vllm) == "HEALTHY", READY_S, "vLLM readmitted")
    stack.admin("drain", stack.cpu)
    status, _, body = asyncio.run(
        load.transcribe(stack.gw.url, BASE, HELLO.read_bytes(), response_format="json")
    )
    assert status == 200 and "fox" in json.loads(body)["text"].lower(), body
