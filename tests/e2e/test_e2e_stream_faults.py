"""Stream conversion against FAKE backends that produce stream faults on demand,
through the real Envoy: a stream written one byte per write, a backend error event
mid-stream, and a stream cut before [DONE]. The client asks for OpenAI events."""

from __future__ import annotations

import json
from collections.abc import Iterator

import aiohttp
import pytest

from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import Proc, start_fake

MODES = ("bytewise_stream", "error_stream", "reset_stream")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("stream-faults")
    fakes: list[Proc] = []
    backends = []
    for mode in MODES:
        proc, port = start_fake(logs, mode, "--interval", "0.05")
        fakes.append(proc)
        backends.append(
            {"url": f"http://127.0.0.1:{port}", "models": [f"fake/{mode}"],
             "health": {"enabled": False}}
        )  # fmt: skip
    g = start_gateway(logs, gateway_config(backends, stream_format="openai"))
    g.wait_synced()
    yield g
    g.stop()
    for p in fakes:
        p.stop()


async def stream(gw: Gateway, mode: str) -> tuple[list[dict[str, object] | str], str | None]:
    form = aiohttp.FormData()
    form.add_field("model", f"fake/{mode}")
    form.add_field("stream", "true")
    form.add_field("file", b"RIFF" * 8, filename="a.wav")
    events: list[dict[str, object] | str] = []
    error = None
    async with aiohttp.ClientSession() as s:
        try:
            async with s.post(f"{gw.url}/v1/audio/transcriptions", data=form) as r:
                assert r.status == 200
                async for line in r.content:
                    if line.startswith(b"data: "):
                        data = line[6:].strip()
                        events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
        except aiohttp.ClientPayloadError as e:
            error = type(e).__name__
    return events, error


async def test_one_byte_per_write_is_reassembled(gw: Gateway) -> None:
    events, error = await stream(gw, "bytewise_stream")
    assert error is None
    assert events == [
        {"type": "transcript.text.delta", "delta": " one"},
        {"type": "transcript.text.delta", "delta": ' "two"'},
        {"type": "transcript.text.done", "text": ' one "two"'},
        "[DONE]",
    ]


async def test_backend_error_event_becomes_an_openai_error_event(gw: Gateway) -> None:
    events, _ = await stream(gw, "error_stream")
    assert events[0] == {"type": "transcript.text.delta", "delta": " one"}
    assert events[1] == {
        "type": "error",
        "error": {
            "message": "fake decode failure",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        },
    }


async def test_cut_stream_ends_without_done(gw: Gateway) -> None:
    events, error = await stream(gw, "reset_stream")
    assert [e["type"] for e in events if isinstance(e, dict)] == ["transcript.text.delta"] * 2
    assert "[DONE]" not in events and error is not None, "the client sees an incomplete stream"
