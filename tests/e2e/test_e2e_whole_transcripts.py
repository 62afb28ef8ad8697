"""Never part of a transcript: a backend whose verbose_json lost a window's segments
(as vLLM 0.32 does for longer audio, docs/vllm.md) gets a clear error for srt, vtt and
verbose_json, while json and text, which need no segments, carry the whole text.

The backend is a FAKE that answers in that shape on demand (testkit/fake_backend.py,
`lost_window`); the same check against real vLLM is in tests/e2e/test_vllm_real.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

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
    form = aiohttp.FormData()
    form.add_field("file", HELLO.read_bytes(), filename="long.wav", content_type="audio/wav")
    form.add_field("model", MODEL)
    form.add_field("response_format", fmt)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.url}/v1/audio/transcriptions", data=form) as r,
    ):
        return r.status, r.headers.get("content-type", ""), await r.text()


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


def test_the_fake_does_lose_the_window(tmp_path: Path) -> None:
    """The fault is real: the fake's own verbose_json stops 34 s short of its duration."""
    fake, port = start_fake(tmp_path, "lost_window")
    try:
        import urllib.request

        boundary = "b0undary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="response_format"\r\n\r\n'
            f"verbose_json\r\n--{boundary}--\r\n"
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/audio/transcriptions",
            data=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            verbose = json.loads(r.read())
    finally:
        fake.stop()
    assert verbose["duration"] - verbose["segments"][-1]["end"] > 30
