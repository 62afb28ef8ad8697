"""Real vLLM (0.32, whisper-base converted from the packaged weights) behind the
gateway: a clip longer than 60 s in every response format, and the probes on it.

vLLM's verbose_json of longer audio may lose a window's segments (docs/vllm.md); the
gateway must answer either a rendering that reaches both ends of the audio, or a clear
502, never part of a transcript. json and text carry the whole text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from testkit import load
from testkit.clips import clip_seconds, make_clip
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import Proc
from testkit.vllm import BASE, start_vllm

pytestmark = pytest.mark.timeout(1200)  # the first run builds vLLM's venv (about 2 min)
WINDOW_S = 30.0


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, int]]:
    proc, port = start_vllm(tmp_path_factory.mktemp("vllm"))
    try:
        yield proc, port
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, vllm: tuple[Proc, int]) -> Iterator[Gateway]:
    _, port = vllm
    # Probes decode real speech on the same two cores: spaced out, with room to answer.
    health = {"interval_s": 30.0, "timeout_s": 60.0}
    backend = {"url": f"http://127.0.0.1:{port}", "models": [BASE], "health": health}
    g = start_gateway(tmp_path_factory.mktemp("gw-vllm"), gateway_config([backend]))
    try:
        g.wait_backends({f"127.0.0.1:{port}"}, timeout=180)  # the probes pass on vLLM
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, float]:
    """88.7 s of continuous speech (three of vLLM's windows) and its duration."""
    path = make_clip(tmp_path_factory.mktemp("clip") / "long.wav", 88.7)
    return path.read_bytes(), clip_seconds(path)


async def transcribe(gw: Gateway, clip: bytes, fmt: str) -> tuple[int, str, str]:
    return await load.transcribe(gw.url, BASE, clip, response_format=fmt, language="en")


def _seconds(stamp: str) -> float:
    h, m, s = re.split("[:]", stamp.replace(",", "."))
    return int(h) * 3600 + int(m) * 60 + float(s)


async def test_json_and_text_carry_the_whole_text(
    gw: Gateway, long_clip: tuple[bytes, float]
) -> None:
    clip, _ = long_clip
    status, ctype, body = await transcribe(gw, clip, "json")
    assert status == 200 and ctype.startswith("application/json"), body
    whole = json.loads(body)["text"].strip()
    assert len(whole.split()) > 100  # 88.7 s of continuous speech
    status, ctype, text = await transcribe(gw, clip, "text")
    assert status == 200 and ctype.startswith("text/plain"), text
    assert text == whole + "\n"


@pytest.mark.parametrize("fmt", ["srt", "vtt", "verbose_json"])
async def test_segments_cover_the_audio_or_the_answer_says_so(
    gw: Gateway, long_clip: tuple[bytes, float], fmt: str
) -> None:
    clip, duration = long_clip
    status, ctype, body = await transcribe(gw, clip, fmt)
    if status == 502 or fmt == "verbose_json":
        assert ctype.startswith("application/json"), ctype
    if status == 502:
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == 502
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
