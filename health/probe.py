"""One probe: POST a real speech clip to a backend and judge the answer.

A 2xx alone proves little (a wedged model server can still answer /health), so we
send speech and check the JSON `text`, optionally for an expected word. Failures
are split in two: *hard* (nothing listens any more: refused, reset, DNS) and
*soft* (timeout, non-2xx, bad body, wrong words). The state machine ejects on one
hard failure but needs several soft ones. Soft failures that a busy backend also
produces (timeout, HTTP 503/429) are flagged `overload`: the monitor then reads the
backend's /metrics (health.load) and, if it is making progress, records the probe as
`busy` instead of failed, so a busy backend is never ejected for being slow.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import re
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from health.settings import ProbeTarget

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
#: Answers a backend gives when its queue is full ("retry later"): maybe busy, not broken.
OVERLOAD_STATUSES = frozenset({429, 503})
#: Bodies larger than this are not a probe answer; don't read megabytes from a confused server.
MAX_BODY_BYTES = 1 << 20
_MAX_ERROR_SNIPPET = 200

# OS errors that mean "the process is gone" rather than "the process is slow".
_HARD_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.EHOSTUNREACH}
)


@dataclass(frozen=True)
class ProbeResult:
    """What one probe of one target found.

    `hard` is only meaningful when `ok` is False. `model` names the model whose
    probe failed (or the last one probed when all passed). `overload` marks a soft
    failure a busy backend also produces (timeout, HTTP 503/429). `busy` (set by the
    monitor, with ok False) means the backend was found making progress: neither a
    pass nor a failure, the state machine leaves status and streaks alone.
    """

    ok: bool
    hard: bool
    latency_ms: float
    error: str | None = None
    text: str | None = None
    model: str | None = None
    overload: bool = False
    busy: bool = False


@functools.lru_cache(maxsize=16)
def load_clip(path: Path) -> bytes:
    """Read a clip once per path: probes run every few seconds, the file never changes."""
    return Path(path).read_bytes()


def is_hard_failure(exc: BaseException) -> bool:
    """True when the error says nothing is listening: refused, reset, DNS failure, peer gone."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return False  # the process is there; a TLS problem is configuration, not death
    if isinstance(exc, aiohttp.ClientConnectorError):
        return True  # refused, unreachable, DNS (ClientConnectorDNSError is a subclass)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True  # we never reuse connections (Connection: close), so this is a crash
    if isinstance(exc, ConnectionResetError | ConnectionRefusedError | BrokenPipeError):
        return True
    if isinstance(exc, OSError) and exc.errno in _HARD_ERRNOS:
        return True
    return False


def contains_word(text: str, word: str) -> bool:
    """Case-insensitive whole-word match ("fox" matches "Fox," but not "foxes")."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _form(clip: bytes, model: str, language: str | None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", clip, filename="probe.wav", content_type="audio/wav")
    form.add_field("model", model)
    form.add_field("response_format", "json")
    if language:
        form.add_field("language", language)
    return form


def _snippet(body: bytes) -> str:
    text = body[:_MAX_ERROR_SNIPPET].decode("utf-8", errors="replace")
    return text.replace("\n", " ").strip()


async def probe_model(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    clip: bytes,
    *,
    api_key: str | None = None,
    timeout_s: float = 10.0,
    expected_word: str | None = None,
    language: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> ProbeResult:
    """Probe one model of one backend. Never raises (except on cancellation).

    An https backend is dialled by address; `server_hostname` is the name its
    certificate is checked against (and the SNI), as Envoy does."""
    url = base_url.rstrip("/") + TRANSCRIPTIONS_PATH
    # Connection: close -> each probe opens a fresh connection, so a ServerDisconnected
    # can only mean the backend went away, never a stale keep-alive socket.
    headers = {"Connection": "close"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    started = time.monotonic()

    def result(
        ok: bool,
        hard: bool = False,
        error: str | None = None,
        text: str | None = None,
        overload: bool = False,
    ) -> ProbeResult:
        return ProbeResult(
            ok=ok,
            hard=hard,
            latency_ms=(time.monotonic() - started) * 1000.0,
            error=None if error is None else f"{model}: {error}",
            text=text,
            model=model,
            overload=overload,
        )

    try:
        async with session.post(
            url,
            data=_form(clip, model, language),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
            ssl=ssl_context if ssl_context is not None else True,
            server_hostname=server_hostname,
        ) as resp:
            body = await resp.content.read(MAX_BODY_BYTES)
            status = resp.status
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        return result(False, error=f"timeout after {timeout_s:g}s", overload=True)
    except Exception as exc:  # anything else from aiohttp / the OS
        hard = is_hard_failure(exc)
        kind = "hard" if hard else "soft"
        return result(False, hard=hard, error=f"{kind} error {type(exc).__name__}: {exc}")

    if not 200 <= status < 300:
        return result(
            False, error=f"HTTP {status}: {_snippet(body)}", overload=status in OVERLOAD_STATUSES
        )
    try:
        payload = json.loads(body)
    except ValueError:
        return result(False, error=f"body is not JSON: {_snippet(body)!r}")
    text = payload.get("text") if isinstance(payload, dict) else None
    if not isinstance(text, str):
        return result(False, error=f"no string 'text' in body: {_snippet(body)!r}")
    if not text.strip():
        # The clip is speech: nothing heard is a broken model, not a quiet clip (stock
        # vLLM 0.32 answers English-only models this way).
        return result(False, error="the transcript came back empty for a clip of speech")
    if expected_word and not contains_word(text, expected_word):
        return result(False, error=f"expected word {expected_word!r} not in {text!r}", text=text)
    return result(True, text=text)


async def probe_target(
    session: aiohttp.ClientSession, target: ProbeTarget, clip: bytes | None = None
) -> ProbeResult:
    """Probe every model the target serves, one after another (gentle on a CPU backend).

    The target passes only if all its models pass; the first failure ends the probe
    and is reported with the failing model's name.
    """
    s = target.settings
    if clip is None:
        clip = load_clip(s.clip_path)
    total_ms = 0.0
    last: ProbeResult | None = None
    for model in target.models:
        last = await probe_model(
            session,
            target.base_url,
            model,
            clip,
            api_key=target.api_key,
            timeout_s=s.timeout_s,
            expected_word=s.expected_word,
            language=s.language,
            ssl_context=target.ssl_context,
            server_hostname=target.server_hostname,
        )
        total_ms += last.latency_ms
        if not last.ok:
            break
    assert last is not None  # ProbeTarget refuses an empty model list
    return replace(last, latency_ms=total_ms)
