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

from support.procs import FIXTURES

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
