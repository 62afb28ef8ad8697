"""The backend's HTTP server when its decoder fails mid-stream: an error line, then
[DONE], and the next request still answered (aiohttp's test server on a loopback port)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from whisper_backend.server import STATE, ServerConfig, create_app


class _Seg:
    def __init__(self, text: str) -> None:
        self.id, self.seek, self.start, self.end, self.text = 0, 0, 0.0, 1.0, text
        self.tokens, self.avg_logprob, self.compression_ratio = [1], -0.1, 1.0
        self.no_speech_prob, self.words, self.temperature = 0.0, None, 0.0


class _Info:
    language, duration = "en", 4.0


class FakeFailingModel:
    """Yields one segment, then fails: a mid-stream error on demand."""

    def transcribe(self, audio: Any, **kw: Any) -> tuple[Iterator[_Seg], _Info]:
        def gen() -> Iterator[_Seg]:
            yield _Seg(" first")
            raise RuntimeError("decoder exploded")

        return gen(), _Info()


async def test_mid_stream_failure_is_error_line_then_done() -> None:
    app = create_app(ServerConfig(model_path="/nonexistent"))
    app.on_startup.clear()
    app.on_cleanup.clear()
    app[STATE].engine.model = FakeFailingModel()
    hello = (Path(__file__).parents[1] / "fixtures" / "hello.wav").read_bytes()
    async with TestClient(TestServer(app)) as client:
        data = FormData()
        data.add_field("stream", "true")
        data.add_field("file", hello, filename="hello.wav")
        r = await client.post("/v1/audio/transcriptions", data=data)
        body = await r.text()
        assert r.status == 200
        events = [e[6:] for e in body.split("\n\n") if e.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == " first"
        err = json.loads(events[-2])["error"]
        assert err["code"] == 500 and "decoder exploded" in err["message"]
        assert events[-1] == "[DONE]"
        data = FormData()
        data.add_field("file", hello, filename="hello.wav")
        r = await client.post("/v1/audio/transcriptions", data=data)
        assert r.status == 500 and (await r.json())["error"]["code"] == 500
    app[STATE].engine.shutdown()
