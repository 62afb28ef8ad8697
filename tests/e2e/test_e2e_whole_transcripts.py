"""Never part of a transcript: a backend whose verbose_json lost a window's segments
(as vLLM 0.32 does for longer audio, docs/vllm.md) gets a clear error for srt, vtt and
verbose_json, while json and text, which need no segments, carry the whole text.

The backend is a FAKE that answers in that shape on demand (testkit/fake_backend.py,
`lost_window`); the same check against real vLLM is in tests/e2e/test_vllm_real.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from testkit import load
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import ROOT, start_fake

MODEL = "fake/lost-window"
HELLO = ROOT / "tests" / "fixtures" / "hello.wav"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("whole")
    fake, port = start_fake(logs, "lost_window")
    backend = {"url": f"http://127.0.0.1:{port}", "models": [MODEL], "health": {"enabled": False}}
    g = start_gateway(logs, gateway_config([backend]))
    try:
        g.wait_synced()
        yield g
    finally:
        g.stop()
        fake.stop()


async def transcribe(gw: Gateway, fmt: str) -> tuple[int, str, str]:
    return await load.transcribe(gw.url, MODEL, HELLO.read_bytes(), response_format=fmt)


async def test_json_and_text_carry_the_whole_text(gw: Gateway) -> None:
    status, _, body = await transcribe(gw, "json")
    assert status == 200
    whole = json.loads(body)["text"]
    assert "end of the long recording" in whole
    status, ctype, text = await transcribe(gw, "text")
    assert status == 200 and ctype.startswith("text/plain")
    assert text == whole.strip() + "\n"


@pytest.mark.parametrize("fmt", ["srt", "vtt", "verbose_json"])
async def test_formats_built_from_lost_segments_are_refused(gw: Gateway, fmt: str) -> None:
    status, ctype, body = await transcribe(gw, fmt)
    assert status == 502 and ctype.startswith("application/json"), body
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == 502 and err["param"] == "response_format"
    assert "no segment from 54.4 s to 88.7 s" in err["message"]
    assert "end of the long recording" not in body
