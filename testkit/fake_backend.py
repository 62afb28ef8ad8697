"""A FAKE Whisper backend that produces a fault on demand. Not a transcriber.

Run as `python testkit/fake_backend.py --mode MODE --port N`. Modes:
  fast         answers every upload at once in vLLM's json shape (bench baseline)
  slow         reads the upload, waits --delay seconds, then answers
  slow_stream  SSE: one chunk every --interval seconds, --chunks of them, then [DONE]
  hang         reads the upload and never answers (the connection stays open)
  trickle      answers with headers, then stalls forever before the body
  error500     answers 500 in the OpenAI error shape
  garbage      answers 200 with a body that is not JSON
  reset_stream starts an SSE stream, sends two chunks, then drops the connection
  timed_stream slow_stream whose chunks carry their send time (bench baseline)
  verbose_long answers a 10-minute verbose_json at once (bench baseline)
  lost_window  answers as vLLM 0.32 does for 88.7 s of speech (docs/vllm.md): json with
               the whole text, verbose_json with the same duration but the last window's
               segments lost (they stop at 54.4 s)
  bytewise_stream  a short SSE stream written one byte per write
  error_stream     one chunk, then an error event, then [DONE]
  echo_form    parses the upload with whisper_backend's own form reader (aiohttp) and
               answers the `model` it read ({"text", "model"}), or that reader's error
  form_cost    a backend of realistic per-request cost (bench): parses the whole upload
               with whisper_backend's form reader, burns --cpu seconds of CPU, waits
               --delay seconds (latency that costs no CPU here, as a GPU's), then answers
               in vLLM's json shape
Each request's headers are kept so a test can read what reached the backend
(GET /_fake/requests).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time

from aiohttp import web

from whisper_backend.errors import ApiError
from whisper_backend.form import read_form

SEEN: list[dict[str, object]] = []
IN_FLIGHT = {"now": 0, "max": 0}


def _chunk(text: str, finish: str | None = None) -> bytes:
    payload = {
        "id": "transcribe-fake",
        "object": "transcription.chunk",
        "created": int(time.time()),
        "model": "fake",
        "choices": [{"delta": {"content": text}, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n".encode()


def _verbose_10min() -> dict[str, object]:
    """A verbose_json of a 10-minute file (bench baseline): 150 segments of 4 s."""
    segments = [
        {
            "id": i,
            "seek": (i * 400) // 3000 * 3000,
            "start": i * 4.0,
            "end": i * 4.0 + 3.9,
            "text": f" Segment {i} of the long recording, with a dozen words in it.",
            "tokens": list(range(12)),
            "temperature": 0.0,
            "avg_logprob": -0.2,
            "compression_ratio": 1.3,
            "no_speech_prob": 0.01,
        }
        for i in range(150)
    ]
    text = "".join(str(s["text"]) for s in segments)
    return {"language": "en", "duration": 600.0, "text": text, "segments": segments}


LOST_WINDOW_TEXT = [
    (0.0, 10.0, " The library opens at five in the morning."),
    (10.0, 21.0, " Visitors can borrow books and use the computers for free."),
    (29.1, 54.38, " The library opens at eight in the morning and closes at five."),
    (58.9, 88.5, " This is the end of the long recording."),
]


def _lost_window(body: bytes) -> dict[str, object]:
    """vLLM 0.32 on 88.7 s of speech: json whole, verbose_json without its last window."""
    found = re.search(rb'name="response_format"\r\n\r\n([a-z_]+)', body)
    fmt = found.group(1).decode() if found else "json"
    if fmt != "verbose_json":
        text = "  ".join(t for _, _, t in LOST_WINDOW_TEXT)
        return {"text": text, "usage": {"type": "duration", "seconds": 89}}
    kept = LOST_WINDOW_TEXT[:-1]
    segments = [
        {"id": i, "seek": int(s) // 29 * 29, "start": s, "end": e, "text": t}
        for i, (s, e, t) in enumerate(kept)
    ]
    return {
        "duration": 88.7,
        "language": "en",
        "text": "  ".join(t for _, _, t in kept),
        "segments": segments,
        "words": None,
    }


def make_app(
    mode: str, delay: float, interval: float, chunks: int, cpu: float = 0.0
) -> web.Application:
    async def transcribe(request: web.Request) -> web.StreamResponse:
        IN_FLIGHT["now"] += 1
        IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
        try:
            return await _transcribe(request)
        finally:
            IN_FLIGHT["now"] -= 1

    async def _transcribe(request: web.Request) -> web.StreamResponse:
        if mode == "echo_form":
            return await _echo_form(request)
        if mode == "form_cost":
            return await _form_cost(request)
        body = await request.read()
        SEEN.append(
            {
                "headers": dict(request.headers),
                "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "path": request.path,
            }
        )
        if mode == "fast":
            return web.json_response({"text": " fake", "usage": {"type": "duration", "seconds": 1}})
        if mode == "slow":
            await asyncio.sleep(delay)
            return web.json_response(
                {"text": f" slow after {delay:g} s", "usage": {"type": "duration", "seconds": 1}}
            )
        if mode == "hang":
            await asyncio.sleep(10**6)
        if mode == "trickle":
            stalled = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await stalled.prepare(request)
            await stalled.write(_chunk(" first"))
            await asyncio.sleep(10**6)
        if mode == "error500":
            return web.json_response(
                {
                    "error": {
                        "message": "fake failure",
                        "type": "InternalServerError",
                        "param": None,
                        "code": 500,
                    }
                },
                status=500,
            )
        if mode == "garbage":
            return web.Response(text="<html>not json", content_type="text/html")
        if mode == "verbose_long":
            return web.json_response(_verbose_10min())
        if mode == "lost_window":
            return web.json_response(_lost_window(body))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if mode in ("bytewise_stream", "error_stream"):
            # Fault on demand: every byte its own write (TCP cuts anywhere), or an
            # error event after the first chunk, as a backend that fails mid-decode.
            err = {"error": {"message": "fake decode failure", "type": "InternalServerError",
                             "param": None, "code": 500}}  # fmt: skip
            payload = (
                _chunk(" one") + _chunk(' "two"') + _chunk("", "stop")
                if mode == "bytewise_stream"
                else _chunk(" one") + f"data: {json.dumps(err)}\n\n".encode()
            ) + b"data: [DONE]\n\n"
            if mode == "error_stream":
                await resp.write(payload)
            for i in range(len(payload) if mode == "bytewise_stream" else 0):
                await resp.write(payload[i : i + 1])
                await asyncio.sleep(0.001)
            await resp.write_eof()
            return resp
        n = 2 if mode == "reset_stream" else chunks
        for i in range(n):
            # timed_stream (bench): each chunk carries its send time.
            text = f" {time.time():.6f}" if mode == "timed_stream" else f" chunk{i}"
            await resp.write(_chunk(text))
            await asyncio.sleep(interval)
        if mode == "reset_stream":
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write(_chunk("", "stop"))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _echo_form(request: web.Request) -> web.Response:
        # The backend's parser, not the gateway's: what a real backend would serve.
        try:
            raw = await read_form(request, 64 * 1024 * 1024)
        except ApiError as e:
            return e.response()
        SEEN.append({"headers": dict(request.headers), "model": raw.fields.get("model")})
        return web.json_response({"text": " fake", "model": raw.fields.get("model")})

    async def _form_cost(request: web.Request) -> web.Response:
        # What every real backend pays: the whole form read and parsed, then its work.
        try:
            raw = await read_form(request, 64 * 1024 * 1024)
        except ApiError as e:
            return e.response()
        end = time.thread_time() + cpu
        while time.thread_time() < end:
            pass
        await asyncio.sleep(delay)
        return web.json_response(
            {"text": " fake", "model": raw.fields.get("model"),
             "usage": {"type": "duration", "seconds": 1}}
        )  # fmt: skip

    async def health(_: web.Request) -> web.Response:
        return web.Response()

    async def seen(_: web.Request) -> web.Response:
        return web.json_response(SEEN)

    async def in_flight(_: web.Request) -> web.Response:
        return web.json_response(IN_FLIGHT)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    app.router.add_post("/v1/audio/translations", transcribe)
    app.router.add_get("/health", health)
    app.router.add_get("/_fake/requests", seen)
    app.router.add_get("/_fake/in_flight", in_flight)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--mode",
        required=True,
        choices=[
            "fast",
            "slow",
            "slow_stream",
            "hang",
            "error500",
            "garbage",
            "reset_stream",
            "trickle",
            "timed_stream",
            "verbose_long",
            "lost_window",
            "bytewise_stream",
            "error_stream",
            "echo_form",
            "form_cost",
        ],
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=17.0)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--chunks", type=int, default=5)
    p.add_argument("--cpu", type=float, default=0.0, help="form_cost: CPU seconds per request")
    a = p.parse_args()
    web.run_app(
        make_app(a.mode, a.delay, a.interval, a.chunks, a.cpu),
        host=a.host,
        port=a.port,
        print=None,
        access_log=None,
        # A FAKE ends at once on SIGTERM: its hangs would hold a graceful stop for a minute.
        shutdown_timeout=0.5,
    )


if __name__ == "__main__":
    main()
