"""Stitch the pieces' response bodies into the whole file's response; pure functions.

Each piece went through the gateway as an ordinary request, so its body is in the layout
the gateway gives clients (control_plane/xds/filters/format_response.lua renders text,
srt and vtt; json and verbose_json are the backend's, as whisper_backend/formats.py
writes them). The stitched body keeps that layout, so a client cannot tell a long file
from a short one, except that the times run past the pieces' 30 s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

# The gateway's content types: text/srt/vtt as format_response.lua's RENDERED sets them;
# json as vLLM and the gateway's own JSON replies send it (aiohttp's whisper_backend adds
# "; charset=utf-8", which says nothing for the ASCII json.dumps writes).
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip",
    "vtt": "text/vtt; charset=utf-8",
}

_SRT_TIME = r"(\d{2,}):(\d{2}):(\d{2}),(\d{3})"
_VTT_TIME = r"(?:(\d{2,}):)?(\d{2}):(\d{2})\.(\d{3})"  # WebVTT may leave the hours out
_SRT_CUE = re.compile(rf"{_SRT_TIME}\s+-->\s+{_SRT_TIME}")
_VTT_CUE = re.compile(rf"{_VTT_TIME}\s+-->\s+{_VTT_TIME}")


class StitchError(ValueError):
    """A piece's body is not what its format says: the server answers with a clear error."""


@dataclass(frozen=True)
class Piece:
    """One piece's answer and where it sits in the whole file (its times start at 0)."""

    start_s: float  # where the piece starts in the whole file
    end_s: float
    body: bytes  # the piece's 200 response body, as the gateway returned it


@dataclass(frozen=True)
class _Cue:
    start_ms: int
    end_ms: int
    text: str


def time_range(start_s: float, end_s: float) -> str:
    """HH:MM:SS-HH:MM:SS, widened to whole seconds: covers the piece when found in a player."""
    return f"{_hms(math.floor(start_s))}-{_hms(math.ceil(end_s - 1e-9))}"


def _hms(seconds: int) -> str:
    h, rest = divmod(max(0, seconds), 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


def usage_seconds(duration_s: float) -> int:
    """whisper_backend.formats.usage_seconds, copied: the splitter must not need the ML stack."""
    return max(0, math.ceil(duration_s - 1e-9))


def stitch(response_format: str, pieces: Sequence[Piece], duration_s: float) -> tuple[str, bytes]:
    """-> (content type, body) of the whole file's response.

    `pieces` in time order; `duration_s` is the whole file's, for verbose_json's
    `duration` and the usage seconds (summing the pieces' would round up once a piece)."""
    render = _STITCHERS.get(response_format)
    if render is None:
        raise ValueError(f"cannot stitch response_format {response_format!r}")
    if not pieces:
        raise ValueError("no pieces to stitch")
    return CONTENT_TYPES[response_format], render(pieces, duration_s).encode()


# ---------------------------------------------------------------- per format


def _bad(fmt: str, piece: Piece, what: str) -> StitchError:
    return StitchError(
        f"the piece {time_range(piece.start_s, piece.end_s)} returned a {fmt} body that {what}"
    )


def _decode(fmt: str, piece: Piece) -> str:
    try:
        return piece.body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(fmt, piece, f"is not UTF-8 ({e})") from None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _json_object(fmt: str, piece: Piece) -> dict[str, Any]:
    text = _decode(fmt, piece)
    try:
        # parse_constant: Python's json reads NaN and Infinity, which are not JSON.
        obj = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as e:
        raise _bad(fmt, piece, f"does not parse ({e})") from None
    if not isinstance(obj, dict):
        raise _bad(fmt, piece, "is not a JSON object")
    if not isinstance(obj.get("text"), str):
        raise _bad(fmt, piece, "has no text")
    return obj


def _join(texts: Sequence[str]) -> str:
    """Each piece's text starts with Whisper's space and may be empty (a piece of silence)."""
    return " ".join(t for t in (t.strip() for t in texts) if t)


def _usage(objs: Sequence[dict[str, Any]], duration_s: float) -> dict[str, Any] | None:
    """The whole file's seconds, only if the backend meters (vLLM leaves it out of translations)."""
    if not any(isinstance(o.get("usage"), dict) for o in objs):
        return None
    return {"type": "duration", "seconds": usage_seconds(duration_s)}


def _json(pieces: Sequence[Piece], duration_s: float) -> str:
    objs = [_json_object("json", p) for p in pieces]
    out: dict[str, Any] = {"text": _join([o["text"] for o in objs])}
    usage = _usage(objs, duration_s)
    if usage is not None:
        out["usage"] = usage
    return json.dumps(out)


def _text(pieces: Sequence[Piece], duration_s: float) -> str:
    """format_response.lua writes strip(text) .. "\\n", even for no text."""
    return _join([_decode("text", p) for p in pieces]) + "\n"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _shift(item: Any, fmt: str, piece: Piece, what: str) -> dict[str, Any]:
    """start/end moved by the piece's start, rounded to the millisecond (srt's and vtt's
    resolution) so sums such as 0.1 + 300.2 do not leak float noise into the JSON."""
    timed = isinstance(item, dict) and _is_number(item.get("start")) and _is_number(item.get("end"))
    if not timed:
        raise _bad(fmt, piece, f"has a {what} without a numeric start and end")
    return {
        **item,
        "start": round(item["start"] + piece.start_s, 3),
        "end": round(item["end"] + piece.start_s, 3),
    }


def _verbose_json(pieces: Sequence[Piece], duration_s: float) -> str:
    fmt = "verbose_json"
    objs = [_json_object(fmt, p) for p in pieces]
    segments: list[dict[str, Any]] = []
    words: list[dict[str, Any]] | None = None
    for piece, obj in zip(pieces, objs, strict=True):
        if not isinstance(obj.get("segments"), list):
            raise _bad(fmt, piece, "has no segments list")
        frames = round(piece.start_s * 100)  # faster-whisper's seek counts 10 ms frames
        for item in obj["segments"]:
            seg = _shift(item, fmt, piece, "segment")
            if "id" in seg:
                seg["id"] = len(segments)
            if _is_number(seg.get("seek")):
                seg["seek"] += frames
            elif seg.get("seek") is not None:
                raise _bad(fmt, piece, "has a segment whose seek is not a number")
            segments.append(seg)
        piece_words = obj.get("words")
        if piece_words is not None:
            if not isinstance(piece_words, list):
                raise _bad(fmt, piece, "has words that are not a list")
            words = (words or []) + [_shift(w, fmt, piece, "word") for w in piece_words]
    first = objs[0]
    out: dict[str, Any] = {k: first[k] for k in ("task", "language") if k in first}
    out["duration"] = duration_s
    out["text"] = _join([o["text"] for o in objs])
    out["segments"] = segments
    if words is not None or any("words" in o for o in objs):
        out["words"] = words  # null when no piece asked for words, as the backend writes it
    usage = _usage(objs, duration_s)
    if usage is not None:
        out["usage"] = usage
    return json.dumps(out)


# ---------------------------------------------------------------- subtitles


def _ms(groups: Sequence[str | None]) -> int:
    h, m, s, ms = (int(g) if g else 0 for g in groups)
    return ((h * 60 + m) * 60 + s) * 1000 + ms


def _clock(ms: int, sep: str) -> str:
    """format_response.lua's clock: hours always written, and past 99 if need be."""
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(fmt: str, piece: Piece, lines: list[str], pattern: re.Pattern[str]) -> list[_Cue]:
    """Cues from the lines after any header: an identifier (srt's number, required; vtt's,
    optional), the times, the text up to a blank line.

    Line by line rather than split at blank lines: the gateway writes a cue whose text is
    empty as its times line, an empty text line, then the blank line between cues."""
    cues: list[_Cue] = []
    offset = round(piece.start_s * 1000)
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
            continue
        times = None if fmt == "srt" else pattern.fullmatch(line)
        if times is None and i + 1 < len(lines) and (fmt != "srt" or line.isdigit()):
            times = pattern.fullmatch(lines[i + 1].strip())
            skip = 2
        else:
            skip = 1
        if times is None:
            cue = "\n".join(lines[i : i + 2]).strip()
            raise _bad(fmt, piece, f"has a cue that does not parse: {cue!r}")
        i += skip
        text: list[str] = []
        while i < len(lines) and lines[i].strip():
            text.append(lines[i].strip())
            i += 1
        start, end = _ms(times.groups()[:4]), _ms(times.groups()[4:])
        cues.append(_Cue(start + offset, end + offset, "\n".join(text)))
    return cues


def _lines(fmt: str, piece: Piece) -> list[str]:
    return _decode(fmt, piece).replace("\r\n", "\n").split("\n")


def _srt(pieces: Sequence[Piece], duration_s: float) -> str:
    cues = [c for p in pieces for c in _cues("srt", p, _lines("srt", p), _SRT_CUE)]
    blocks = [
        f"{n}\n{_clock(c.start_ms, ',')} --> {_clock(c.end_ms, ',')}\n{c.text}\n"
        for n, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def _vtt(pieces: Sequence[Piece], duration_s: float) -> str:
    cues: list[_Cue] = []
    for p in pieces:
        lines = _lines("vtt", p)
        if not lines[0].lstrip("\ufeff").startswith("WEBVTT"):
            raise _bad("vtt", p, "does not start with WEBVTT")
        header_end = lines.index("") if "" in lines else len(lines)
        cues += _cues("vtt", p, lines[header_end:], _VTT_CUE)
    # The gateway writes no cue identifiers, so none to renumber.
    blocks = [f"{_clock(c.start_ms, '.')} --> {_clock(c.end_ms, '.')}\n{c.text}\n" for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)


_STITCHERS: dict[str, Callable[[Sequence[Piece], float], str]] = {
    "json": _json,
    "text": _text,
    "verbose_json": _verbose_json,
    "srt": _srt,
    "vtt": _vtt,
}
