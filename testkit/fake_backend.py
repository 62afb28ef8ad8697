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
  audio_rate   FAKE GPU-like cost (bench): parses the upload with whisper_backend's form
               reader, takes the WAV's duration (any other file: its size / 32000, 16 kHz
               mono 16-bit), holds the backend for duration x --rtf seconds (one request
               at a time, as one GPU: N of them give at most N-fold speed), then answers
               json / verbose_json as a Whisper server does (a segment per 30 s window,
               covering the audio; usage in audio seconds) or, with stream=true, a vLLM
               SSE stream (a delta and a stop per 30 s window, each after its window's
               time; the usage chunk when stream_include_usage=true; [DONE])
Each request's headers are kept so a test can read what reached the backend
(GET /_fake/requests).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import math
import re
import time
import wave

from aiohttp import web

from whisper_backend.errors import ApiError
from whisper_backend.form import read_form

SEEN: list[dict[str, object]] = []
IN_FLIGHT = {"now": 0, "max": 0}
#: audio_rate: a Whisper window, the unit the FAKE answers and streams in.
WINDOW_S = 30.0


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


def audio_seconds(data: bytes) -> float:
    """A WAV's duration from its header; anything else is taken as 16 kHz mono 16-bit."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError):
        return len(data) / 32000


def _windows(duration: float) -> list[tuple[float, float]]:
    """[start, end) of each 30 s window of `duration` seconds (one, at least)."""
    n = max(1, math.ceil(duration / WINDOW_S - 1e-9))
    return [(i * WINDOW_S, min((i + 1) * WINDOW_S, duration)) for i in range(n)]


def _fake_text(start: float, end: float) -> str:
    """FAKE words naming the window's length: a bench sums them to check coverage."""
    return f" FAKE {end - start:.3f} s."


def _audio_rate_json(fmt: str, duration: float) -> dict[str, object]:
    windows = _windows(duration)
    text = "".join(_fake_text(s, e) for s, e in windows)
    usage = {"type": "duration", "seconds": math.ceil(duration - 1e-9)}
    if fmt != "verbose_json":
        return {"text": text, "usage": usage}
    segments = [
        {
            "id": i, "seek": round(s * 100), "start": s, "end": e, "text": _fake_text(s, e),
            "tokens": [50363, 376, 49434], "temperature": 0.0, "avg_logprob": -0.2,
            "compression_ratio": 1.2, "no_speech_prob": 0.01,
        }
        for i, (s, e) in enumerate(windows)
    ]  # fmt: skip
    return {
        "language": "en",
        "duration": duration,
        "text": text,
        "segments": segments,
        "words": None,
        "usage": usage,
    }


def _vllm_chunk(choices: list[dict[str, object]], **extra: object) -> bytes:
    body = {
        "id": "transcribe-fake-audio-rate",
        "object": "transcription.chunk",
        "created": int(time.time()),
        "model": "fake",
        "choices": choices,
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def make_app(
    mode: str, delay: float, interval: float, chunks: int, cpu: float = 0.0, rtf: float = 0.05
) -> web.Application:
    busy = asyncio.Lock()  # audio_rate: one request at a time, as one GPU

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
        if mode == "audio_rate":
            return await _audio_rate(request)
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

    async def _audio_rate(request: web.Request) -> web.StreamResponse:
        # The whole form read as a real backend reads it, then the audio's time on the
        # one "GPU": the lock is held from the first window to the last event.
        try:
            raw = await read_form(request, 1024 * 1024 * 1024)
        except ApiError as e:
            return e.response()
        duration = audio_seconds(raw.file or b"")
        stream = raw.fields.get("stream", "").lower() == "true"
        fmt = raw.fields.get("response_format", "json")
        SEEN.append(
            {"path": request.path, "bytes": len(raw.file or b""), "seconds": duration,
             "stream": stream, "response_format": fmt, "received_at": time.time()}
        )  # fmt: skip
        if fmt not in ("json", "verbose_json") and not stream:
            # The gateway asks a backend only for these two (it renders text, srt, vtt).
            err = {"message": f"FAKE audio_rate answers json and verbose_json, not {fmt}",
                   "type": "BadRequestError", "param": "response_format", "code": 400}  # fmt: skip
            return web.json_response({"error": err}, status=400)
        async with busy:
            if not stream:
                await asyncio.sleep(duration * rtf)
                return web.json_response(_audio_rate_json(fmt, duration))
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for start, end in _windows(duration):
                await asyncio.sleep((end - start) * rtf)
                text = _fake_text(start, end)
                await resp.write(_vllm_chunk([{"delta": {"content": text}}]))
                stop: dict[str, object] = {
                    "delta": {"content": ""}, "finish_reason": "stop", "stop_reason": None
                }  # fmt: skip
                await resp.write(_vllm_chunk([stop]))
            if raw.fields.get("stream_include_usage", "").lower() == "true":
                seconds = math.ceil(duration - 1e-9)
                usage = {"prompt_tokens": math.ceil(duration * 100), "completion_tokens": 3,
                         "total_tokens": math.ceil(duration * 100) + 3,
                         "type": "duration", "seconds": seconds}  # fmt: skip
                await resp.write(_vllm_chunk([], usage=usage))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp

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
            "audio_rate",
        ],
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=17.0)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--chunks", type=int, default=5)
    p.add_argument("--cpu", type=float, default=0.0, help="form_cost: CPU seconds per request")
    p.add_argument(
        "--rtf",
        type=float,
        default=0.05,
        help="audio_rate (FAKE): seconds the backend is held per second of audio",
    )
    a = p.parse_args()
    web.run_app(
        make_app(a.mode, a.delay, a.interval, a.chunks, a.cpu, a.rtf),
        host=a.host,
        port=a.port,
        print=None,
        access_log=None,
        # A FAKE ends at once on SIGTERM: its hangs would hold a graceful stop for a minute.
        shutdown_timeout=0.5,
    )


if __name__ == "__main__":
    main()
