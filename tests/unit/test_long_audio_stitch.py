"""long_audio.stitch: the pieces' bodies, as the gateway returns them, become one response.

The pieces are built with whisper_backend's own renderers (test_lua_response checks the
gateway renders text, srt and vtt identically), so a change of layout there shows here.
The three pieces start at 0, just before the hour and just after it: the middle one has
a segment that crosses 01:00:00.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from long_audio.stitch import CONTENT_TYPES, Piece, StitchError, stitch, time_range
from long_audio.stitch import usage_seconds as stitch_usage_seconds
from whisper_backend.engine import Segment, Word
from whisper_backend.formats import (
    Result,
    render_json,
    render_srt,
    render_text,
    render_verbose,
    render_vtt,
    usage_seconds,
)

LUA = Path(__file__).parents[2] / "control_plane/xds/filters/format_response.lua"
DURATION = 3641.2
STARTS = (0.0, 3580.5, 3610.25)


def seg(start: float, end: float, text: str, seek: int = 0) -> Segment:
    words = tuple(
        Word(start + k, start + k + 0.5, f" {w}", 0.9) for k, w in enumerate(text.split())
    )
    return Segment(0, seek, start, end, text, (50364, 1, 2), 0.0, -0.25, 1.2, 0.02, words)


PIECE_SEGMENTS: tuple[tuple[Segment, ...], ...] = (
    (seg(0.0, 2.5, " Hello there."), seg(2.5, 29.0, " General Kenobi.", seek=250)),
    (seg(0.0, 10.0, " You are a bold one."), seg(10.0, 25.0, " Kill him!", seek=1000)),
    (seg(0.1, 29.9, " Back away."),),
)


def result(segments: tuple[Segment, ...]) -> Result:
    # Renumbered per piece, as faster-whisper does within one decode.
    segments = tuple(dataclasses.replace(s, id=i) for i, s in enumerate(segments))
    return Result("".join(s.text for s in segments), "en", 30.0, segments)


def body(fmt: str, segments: tuple[Segment, ...], words: bool = False) -> bytes:
    r = result(segments)
    if fmt == "json":
        return json.dumps(render_json(r)).encode()
    if fmt == "verbose_json":
        return json.dumps(render_verbose(r, words)).encode()
    text = {"text": render_text(r), "srt": render_srt(r.segments), "vtt": render_vtt(r.segments)}
    return text[fmt].encode()


def pieces(fmt: str, segs: tuple[tuple[Segment, ...], ...] = PIECE_SEGMENTS) -> list[Piece]:
    return [
        Piece(start, start + 30.0, body(fmt, s, words=True))
        for start, s in zip(STARTS, segs, strict=True)
    ]


def shifted() -> list[Segment]:
    """Every piece's segments at their place in the whole file."""
    return [
        dataclasses.replace(s, start=round(s.start + start, 3), end=round(s.end + start, 3))
        for start, segs in zip(STARTS, PIECE_SEGMENTS, strict=True)
        for s in segs
    ]


WHOLE_TEXT = "Hello there. General Kenobi. You are a bold one. Kill him! Back away."


def stitched(fmt: str, ps: list[Piece], duration: float = DURATION) -> str:
    ctype, out = stitch(fmt, ps, duration)
    assert ctype == CONTENT_TYPES[fmt]
    return out.decode()


# ---------------------------------------------------------------- content types


def test_content_types_are_the_gateways() -> None:
    """text/srt/vtt as format_response.lua's RENDERED table says; read from the source."""
    table = re.search(r"local RENDERED = \{(.*?)\}", LUA.read_text(), re.S)
    assert table is not None
    rendered = dict(re.findall(r'(\w+) = "([^"]+)"', table.group(1)))
    assert rendered == {k: CONTENT_TYPES[k] for k in ("text", "srt", "vtt")}
    assert CONTENT_TYPES["json"] == CONTENT_TYPES["verbose_json"] == "application/json"


# ---------------------------------------------------------------- json and text


def test_json_joins_the_texts_and_bills_the_whole_duration() -> None:
    out = json.loads(stitched("json", pieces("json")))
    assert out == {"text": WHOLE_TEXT, "usage": {"type": "duration", "seconds": 3642}}
    # Not the pieces' 3 x 30 s, and rounded as the backend rounds.
    assert out["usage"]["seconds"] == usage_seconds(DURATION)


@pytest.mark.parametrize("duration", [0.0, 0.1, 4.0, 4.0000000001, 4.7, 3600.0, 3600.001])
def test_usage_rounds_like_the_backend(duration: float) -> None:
    assert stitch_usage_seconds(duration) == usage_seconds(duration)


def test_json_usage_only_when_a_piece_carried_it() -> None:
    """vLLM's translation json has no usage (vllm_flavor.render): nothing to invent."""
    bare = [
        Piece(s, s + 30, json.dumps({"text": f" part {i}."}).encode()) for i, s in enumerate(STARTS)
    ]
    assert json.loads(stitched("json", bare)) == {"text": "part 0. part 1. part 2."}
    metered = [bare[0], Piece(STARTS[1], STARTS[1] + 30, body("json", PIECE_SEGMENTS[1])), bare[2]]
    out = json.loads(stitched("json", metered))
    assert out["usage"] == {"type": "duration", "seconds": 3642}


def test_empty_pieces_are_skipped_without_double_spaces() -> None:
    silent: tuple[tuple[Segment, ...], ...] = (PIECE_SEGMENTS[0], (), PIECE_SEGMENTS[2])
    expected = "Hello there. General Kenobi. Back away."
    assert json.loads(stitched("json", pieces("json", silent)))["text"] == expected
    assert stitched("text", pieces("text", silent)) == expected + "\n"
    assert json.loads(stitched("verbose_json", pieces("verbose_json", silent)))["text"] == expected


def test_text_keeps_the_gateways_trailing_newline() -> None:
    assert stitched("text", pieces("text")) == WHOLE_TEXT + "\n"
    nothing = [Piece(s, s + 30, body("text", ())) for s in STARTS]
    assert stitched("text", nothing) == render_text(Result("", "en", 90.0, ())) == "\n"


# ---------------------------------------------------------------- verbose_json


def test_verbose_json_offsets_renumbers_and_keeps_the_rest() -> None:
    out = json.loads(stitched("verbose_json", pieces("verbose_json")))
    single = render_verbose(result(tuple(shifted())), words=True)
    assert list(out) == list(single)  # language, duration, text, segments, words: no usage
    assert out["language"] == "en"
    assert out["duration"] == DURATION
    assert out["text"] == WHOLE_TEXT
    segs = out["segments"]
    assert [s["id"] for s in segs] == [0, 1, 2, 3, 4]
    assert [(s["start"], s["end"]) for s in segs] == [
        (0.0, 2.5),
        (2.5, 29.0),
        (3580.5, 3590.5),
        (3590.5, 3605.5),
        (3610.35, 3640.15),
    ]
    # seek counts 10 ms frames: each piece's own seek plus its start.
    assert [s["seek"] for s in segs] == [0, 250, 358050, 359050, 361025]
    for got, want in zip(segs, single["segments"], strict=True):
        assert list(got) == list(want)
        for key in ("text", "tokens", "temperature", "avg_logprob", "compression_ratio"):
            assert got[key] == want[key]
    words = out["words"]
    assert [w["word"] for w in words] == [w["word"] for w in single["words"]]
    assert [(w["start"], w["end"]) for w in words][-2:] == [(3610.35, 3610.85), (3611.35, 3611.85)]


def test_verbose_json_words_null_when_none_asked_and_usage_when_carried() -> None:
    ps = [
        Piece(s, s + 30, json.dumps(render_verbose(result(segs), words=False)).encode())
        for s, segs in zip(STARTS, PIECE_SEGMENTS, strict=True)
    ]
    out = json.loads(stitched("verbose_json", ps))
    assert out["words"] is None
    assert "usage" not in out and "task" not in out
    first = {**json.loads(ps[0].body), "task": "transcribe"}
    last = {**json.loads(ps[2].body), "usage": {"type": "duration", "seconds": 30}}
    ps[0] = dataclasses.replace(ps[0], body=json.dumps(first).encode())
    ps[2] = dataclasses.replace(ps[2], body=json.dumps(last).encode())
    out = json.loads(stitched("verbose_json", ps))
    assert out["task"] == "transcribe"
    assert out["usage"] == {"type": "duration", "seconds": 3642}


# ---------------------------------------------------------------- srt and vtt


def test_srt_offsets_and_renumbers_past_the_hour() -> None:
    out = stitched("srt", pieces("srt"))
    assert out == render_srt(shifted())
    assert "4\n00:59:50,500 --> 01:00:05,500\nKill him!\n" in out
    assert out.endswith("5\n01:00:10,350 --> 01:00:40,150\nBack away.\n")


def test_vtt_offsets_past_the_hour_in_one_file() -> None:
    out = stitched("vtt", pieces("vtt"))
    assert out == render_vtt(shifted())
    assert out.count("WEBVTT") == 1
    assert "00:59:50.500 --> 01:00:05.500\nKill him!\n" in out


def test_a_cue_with_empty_text_keeps_its_place() -> None:
    """The gateway writes such a cue as times, an empty line, then the blank separator."""
    quiet: tuple[tuple[Segment, ...], ...] = (
        PIECE_SEGMENTS[0],
        (seg(0.0, 1.0, " "), *PIECE_SEGMENTS[1]),
        PIECE_SEGMENTS[2],
    )
    expected = [
        dataclasses.replace(s, start=round(s.start + start, 3), end=round(s.end + start, 3))
        for start, segs in zip(STARTS, quiet, strict=True)
        for s in segs
    ]
    assert stitched("srt", pieces("srt", quiet)) == render_srt(expected)
    assert stitched("vtt", pieces("vtt", quiet)) == render_vtt(expected)


def test_no_cues_at_all() -> None:
    nothing: tuple[tuple[Segment, ...], ...] = ((), (), ())
    assert stitched("srt", pieces("srt", nothing)) == render_srt([]) == ""
    assert stitched("vtt", pieces("vtt", nothing)) == render_vtt([]) == "WEBVTT\n\n"


def test_vtt_without_hours_or_with_identifiers_comes_out_in_the_gateways_layout() -> None:
    other = b"WEBVTT\n\ncue-7\n00:01.250 --> 00:02.000\nHi.\n\n01:02.000 --> 01:03.500\nBye.\n"
    out = stitched("vtt", [Piece(3599.0, 3629.0, other)])
    assert out == (
        "WEBVTT\n\n01:00:00.250 --> 01:00:01.000\nHi.\n\n01:01:01.000 --> 01:01:02.500\nBye.\n"
    )


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fmt", "bad", "what"),
    [
        ("json", b'{"text": "hi"', "returned a json body that does not parse"),
        ("json", b'{"text": NaN}', "returned a json body that does not parse"),
        ("json", b'["hi"]', "returned a json body that is not a JSON object"),
        ("verbose_json", b'{"text": "hi"}', "returned a verbose_json body that has no segments"),
        (
            "verbose_json",
            b'{"text": "hi", "segments": [{"id": 0, "start": "0.0", "end": 1.0}]}',
            "has a segment without a numeric start and end",
        ),
        ("text", b"\xff\xfe", "returned a text body that is not UTF-8"),
        (
            "srt",
            b"1\n00:00:00.000 --> 00:00:01.000\nHi.\n",
            "srt body that has a cue that does not parse",
        ),
        (
            "srt",
            b"00:00:00,000 --> 00:00:01,000\nHi.\n",
            "srt body that has a cue that does not parse",
        ),
        ("vtt", b"00:00.000 --> 00:01.000\nHi.\n", "vtt body that does not start with WEBVTT"),
        (
            "vtt",
            b"WEBVTT\n\n00:00.000 -> 00:01.000\nHi.\n",
            "vtt body that has a cue that does not parse",
        ),
    ],
)
def test_a_malformed_piece_names_its_time_range(fmt: str, bad: bytes, what: str) -> None:
    ps = pieces(fmt)
    ps[1] = dataclasses.replace(ps[1], body=bad)
    with pytest.raises(StitchError) as err:
        stitch(fmt, ps, DURATION)
    assert str(err.value).startswith("the piece 00:59:40-01:00:11 returned")
    assert what in str(err.value)


def test_unknown_format_and_no_pieces_are_value_errors() -> None:
    with pytest.raises(ValueError, match="'mp3'") as err:
        stitch("mp3", pieces("json"), DURATION)
    assert not isinstance(err.value, StitchError)
    with pytest.raises(ValueError, match="no pieces"):
        stitch("json", [], DURATION)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (300.0, 330.0, "00:05:00-00:05:30"),
        (3599.5, 3629.2, "00:59:59-01:00:30"),
        (0.0, 0.3, "00:00:00-00:00:01"),
        (36000.0, 36030.0, "10:00:00-10:00:30"),
    ],
)
def test_time_range(start: float, end: float, expected: str) -> None:
    assert time_range(start, end) == expected
