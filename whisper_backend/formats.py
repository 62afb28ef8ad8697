"""Render a finished (or streaming) decode in each response_format; pure functions."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .engine import Segment

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


@dataclass(frozen=True)
class Result:
    """Everything a non-streaming response needs."""

    text: str
    language: str
    duration: float
    segments: tuple[Segment, ...]


def usage_seconds(duration: float) -> int:
    """vLLM bills whole seconds, rounded up."""
    return max(0, math.ceil(duration - 1e-9))


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_time(seconds: float) -> str:
    return _clock(seconds, ",")


def vtt_time(seconds: float) -> str:
    return _clock(seconds, ".")


def render_srt(segments: Sequence[Segment]) -> str:
    blocks = [
        f"{i}\n{srt_time(s.start)} --> {srt_time(s.end)}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def render_vtt(segments: Sequence[Segment]) -> str:
    blocks = [f"{vtt_time(s.start)} --> {vtt_time(s.end)}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render_json(result: Result) -> dict[str, Any]:
    return {
        "text": result.text,
        "usage": {"type": "duration", "seconds": usage_seconds(result.duration)},
    }


def render_verbose(result: Result, words: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "language": result.language,
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": s.id,
                "seek": s.seek,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in result.segments
        ],
        "words": None,
    }
    if words:
        body["words"] = [
            {"word": w.word, "start": w.start, "end": w.end}
            for s in result.segments
            for w in s.words or ()
        ]
    return body


def render_text(result: Result) -> str:
    return result.text.strip() + "\n"


@dataclass(frozen=True)
class StreamIds:
    """Per-request constants every stream chunk repeats (vLLM's chunk envelope)."""

    id: str
    object: str
    created: int
    model: str

    @staticmethod
    def new(task: str, model: str, rid: str | None = None) -> StreamIds:
        """`rid`: the request id after the task prefix (default a fresh uuid4 hex)."""
        prefix, obj = (
            ("translate", "translation.chunk")
            if task == "translate"
            else ("transcribe", "transcription.chunk")
        )
        rid = uuid.uuid4().hex if rid is None else rid
        return StreamIds(f"{prefix}-{rid}", obj, int(time.time()), model)


def _chunk(ids: StreamIds, choices: list[dict[str, Any]], **extra: Any) -> str:
    body = {
        "id": ids.id,
        "object": ids.object,
        "created": ids.created,
        "model": ids.model,
        "choices": choices,
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n"


def sse_delta(ids: StreamIds, content: str, finish_reason: str | None = None) -> str:
    return _chunk(
        ids,
        [{"delta": {"content": content}, "finish_reason": finish_reason, "stop_reason": None}],
    )


def sse_usage(ids: StreamIds, prompt_tokens: int, completion_tokens: int, seconds: int) -> str:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "type": "duration",
        "seconds": seconds,
    }
    return _chunk(ids, [], usage=usage)


def sse_error(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
