"""A bounded client load that accounts for every request it sends.

Each request ends as exactly one outcome: ok, a clear error (an HTTP error in
the OpenAI shape), a truncated stream, a wrong answer, or a hang (the client's
own deadline). Fault tests assert on these counts.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from testkit.procs import FIXTURES

HELLO = FIXTURES / "hello.wav"
LONG_CLIP = FIXTURES / "long_en.ogg"


@dataclass
class Outcomes:
    counts: Counter[str] = field(default_factory=Counter)
    backends: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        return f"{dict(self.counts)} backends={dict(self.backends)} errors={self.errors[:5]}"


def _form(model: str, stream: bool, path: Path) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("model", model)
    data.add_field("language", "en")
    if stream:
        data.add_field("stream", "true")
    data.add_field("file", path.read_bytes(), filename=path.name)
    return data


async def one_request(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    out: Outcomes,
    stream: bool = False,
    deadline_s: float = 60.0,
    path: Path = HELLO,
) -> str:
    """Send one transcription; record and return its outcome."""
    outcome = "hang"
    try:
        async with (
            asyncio.timeout(deadline_s),
            session.post(f"{url}/v1/audio/transcriptions", data=_form(model, stream, path)) as r,
        ):
            backend = r.headers.get("x-gateway-backend", "-")
            body = await r.read()
            out.backends[backend] += 1
            if r.status >= 400:
                err = json.loads(body).get("error", {})
                ok_shape = isinstance(err, dict) and {"message", "code"} <= set(err)
                outcome = "clear_error" if ok_shape else "wrong_answer"
                out.errors.append(f"{r.status} {err.get('message', body[:80])}")
            elif stream:
                lines = [ln for ln in body.decode().splitlines() if ln.startswith("data: ")]
                if lines and lines[-1] == "data: [DONE]":
                    has_error = any('"error"' in ln for ln in lines)
                    outcome = "clear_error" if has_error else "ok"
                else:
                    outcome = "truncated"
            else:
                try:
                    json.loads(body)["text"]
                    outcome = "ok"
                except (ValueError, KeyError, TypeError):
                    outcome = "wrong_answer"
                    out.errors.append(f"200 {body[:80]!r}")
    except TimeoutError:
        outcome = "hang"
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
        outcome = "truncated"
        out.errors.append(repr(e))
    except aiohttp.ClientError as e:
        outcome = "connect_error"
        out.errors.append(repr(e))
    out.counts[outcome] += 1
    return outcome


async def run_load(
    url: str,
    model: str,
    total: int,
    concurrency: int = 2,
    stream: bool = False,
    deadline_s: float = 60.0,
    pause_s: float = 0.0,
) -> Outcomes:
    """`total` requests, `concurrency` at a time; bounded in count and time."""
    out = Outcomes()
    queue = list(range(total))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while queue:
                queue.pop()
                await one_request(session, url, model, out, stream, deadline_s)
                if pause_s:
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


@dataclass
class Trace:
    """One request as the client saw it. A crash test must tell a failure the gateway
    could have retried (no response byte yet) from one it cannot (the response had
    started), so each request keeps when its headers came and how much body followed."""

    stream: bool
    sent_at: float
    ended_at: float | None = None  # None while in flight
    status: int | None = None
    headers_at: float | None = None
    body_bytes: int = 0
    outcome: str = "hang"
    request_id: str = ""
    backend: str = "-"
    error: str = ""

    @property
    def started(self) -> bool:
        """A success status line and headers reached the client: from then on the gateway
        cannot retry it (an error status is the gateway's final answer, not a start)."""
        return self.headers_at is not None and self.status is not None and self.status < 400

    @property
    def failed(self) -> bool:
        return self.outcome != "ok"


async def traced_request(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    stream: bool,
    deadline_s: float = 60.0,
    path: Path = HELLO,
    trace: Trace | None = None,
) -> Trace:
    """One transcription read chunk by chunk; outcomes as `one_request` names them.
    Fills `trace` as the request goes when given, so a watcher sees it in flight."""
    loop = asyncio.get_running_loop()
    t = trace or Trace(stream=stream, sent_at=loop.time())
    body = bytearray()
    try:
        async with (
            asyncio.timeout(deadline_s),
            session.post(f"{url}/v1/audio/transcriptions", data=_form(model, stream, path)) as r,
        ):
            t.headers_at = loop.time()
            t.status = r.status
            t.request_id = r.headers.get("x-request-id", "")
            t.backend = r.headers.get("x-gateway-backend", "-")
            async for chunk in r.content.iter_any():
                body += chunk
                t.body_bytes = len(body)
        t.outcome = _judge(t, bytes(body))
    except TimeoutError:
        t.outcome = "hang"
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
        t.outcome, t.error = "truncated", repr(e)
    except aiohttp.ClientError as e:
        t.outcome, t.error = "connect_error", repr(e)
    t.ended_at = loop.time()
    return t


def _judge(t: Trace, body: bytes) -> str:
    """A complete response's outcome; sets `t.error` for anything but ok."""
    if t.status is not None and t.status >= 400:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        err = parsed.get("error") if isinstance(parsed, dict) else None
        t.error = f"{t.status} {err.get('message') if isinstance(err, dict) else body[:80]!r}"
        ok_shape = isinstance(err, dict) and {"message", "code"} <= set(err)
        return "clear_error" if ok_shape else "wrong_answer"
    if t.stream:
        lines = [ln for ln in body.decode(errors="replace").splitlines() if ln.startswith("data: ")]
        if not lines or lines[-1] != "data: [DONE]":
            t.error = f"stream without [DONE] ({len(body)} bytes)"
            return "truncated"
        if any('"error"' in ln for ln in lines):
            t.error = next(ln for ln in lines if '"error"' in ln)[:200]
            return "clear_error"
        return "ok"
    try:
        json.loads(body)["text"]
    except (ValueError, KeyError, TypeError):
        t.error = f"{t.status} {body[:80]!r}"
        return "wrong_answer"
    return "ok"


async def steady_load(
    url: str,
    model: str,
    concurrency: int,
    stop: asyncio.Event,
    traces: list[Trace],
    stream_every: int = 2,
    deadline_s: float = 60.0,
) -> None:
    """Closed-loop load until `stop` is set: `concurrency` workers, each sending its next
    request as soon as the last one ended; every `stream_every`-th request (counted over
    all workers) is streamed, the others not (0: none streamed). Bounded: once `stop` is
    set no request starts, and each one ends by its deadline."""
    sent = 0
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal sent
            while not stop.is_set():
                sent += 1
                stream = stream_every > 0 and sent % stream_every == 0
                t = Trace(stream=stream, sent_at=asyncio.get_running_loop().time())
                traces.append(t)
                await traced_request(session, url, model, stream, deadline_s, trace=t)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def transcribe(
    base_url: str,
    model: str,
    audio: bytes,
    timeout_s: float = 600,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> tuple[int, str, str]:
    """One upload to /v1/audio/transcriptions with `fields` beside it: status, content
    type and body, whatever they are."""
    form = aiohttp.FormData()
    form.add_field("file", audio, filename="audio.wav", content_type="audio/wav")
    form.add_field("model", model)
    for name, value in fields.items():
        form.add_field(name, value)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
        s.post(f"{base_url}/v1/audio/transcriptions", data=form, headers=headers) as r,
    ):
        return r.status, r.headers.get("content-type", ""), await r.text()
