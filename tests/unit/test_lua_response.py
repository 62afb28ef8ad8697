"""The Lua filter's response side, run by a Lua 5.1 interpreter with a fake handle.

Stream conversion (vLLM chunks -> OpenAI events or the seed's text chunks) must
not depend on where TCP cut the stream: every split position of a real
backend's stream gives the same output. Subtitles and text rendered by the
gateway from verbose_json must equal what whisper_backend renders itself.
The real Envoy runs the same source in tests/e2e/test_e2e_formats.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from control_plane.xds.translator.lua import format_source
from testkit import lua
from testkit.lua import LUA, NO_LUA
from whisper_backend.engine import Segment
from whisper_backend.formats import Result, render_srt, render_text, render_vtt

pytestmark = pytest.mark.skipif(LUA is None, reason=NO_LUA)


def lua_source() -> str:
    return format_source()


def run(
    tmp_path: Path,
    chunks: list[bytes],
    meta: dict[str, str],
    ctype: str = "text/event-stream",
    status: str = "200",
) -> str:
    (tmp_path / "meta").write_text(" ".join(f"{k}={v}" for k, v in meta.items()))
    (tmp_path / "chunks").write_bytes(b"".join(c + b"\0\0" for c in chunks))
    out, err = lua.run(
        "response", lua_source(), tmp_path / "meta", tmp_path / "chunks", ctype, status
    )
    (tmp_path / "stderr").write_text(err)
    return out


def metadata_set(tmp_path: Path) -> list[str]:
    """The dynamic metadata the last run wrote, one `namespace key value` each."""
    return [
        line.removeprefix("SET ")
        for line in (tmp_path / "stderr").read_text().splitlines()
        if line.startswith("SET ")
    ]


def chunk(content: str, finish: str | None = None) -> bytes:
    body = {
        "id": "transcribe-x",
        "object": "transcription.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"delta": {"content": content}, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


USAGE = (
    b'data: {"id":"transcribe-x","object":"transcription.chunk","created":1,"model":"m",'
    b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10,'
    b'"type":"duration","seconds":5}}\n\n'
)
STREAM = (
    chunk(" Hello \u00e9t\u00e9") + chunk(' "world"') + chunk("", "stop") + USAGE
    + b"data: [DONE]\n\n"
)  # fmt: skip


def events(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e]


def test_openai_events_from_backend_chunks(tmp_path: Path) -> None:
    out = events(run(tmp_path, [STREAM], {"stream_format": "openai"}))
    assert out[-1] == "[DONE]"
    deltas = [json.loads(e) for e in out[:-2]]
    assert deltas == [
        {"type": "transcript.text.delta", "delta": " Hello \u00e9t\u00e9"},
        {"type": "transcript.text.delta", "delta": ' "world"'},
    ]
    done = json.loads(out[-2])
    assert done == {
        "type": "transcript.text.done",
        "text": ' Hello \u00e9t\u00e9 "world"',
        "usage": {"type": "tokens", "input_tokens": 3, "output_tokens": 7, "total_tokens": 10},
    }
    # The backend's usage.seconds is metered once (the access log reads it).
    assert metadata_set(tmp_path) == ["whisper_gateway.meter audio_seconds 5"]
    # A stream without usage sets nothing: it is counted as unmetered, not guessed.
    events(run(tmp_path, [STREAM.replace(USAGE, b"")], {"stream_format": "openai"}))
    assert metadata_set(tmp_path) == []


def test_text_chunks_and_backend_pass_through(tmp_path: Path) -> None:
    out = events(run(tmp_path, [STREAM], {"stream_format": "text"}))
    assert out == [json.dumps({"text": " Hello \u00e9t\u00e9"}, separators=(",", ":"),
                              ensure_ascii=False),
                   json.dumps({"text": ' "world"'}, separators=(",", ":")), "[DONE]"]  # fmt: skip
    # backend: the filter leaves the body alone (the harness prints it untouched).
    untouched = run(tmp_path, [STREAM], {"stream_format": "backend"}).encode()
    assert untouched == b"text/event-stream\n" + STREAM


def test_every_split_position_gives_the_same_stream(tmp_path: Path) -> None:
    whole = run(tmp_path, [STREAM], {"stream_format": "openai"})
    # One byte per chunk, and every two-way split: the same events.
    assert run(tmp_path, [bytes([b]) for b in STREAM], {"stream_format": "openai"}) == whole
    for cut in range(1, len(STREAM), 7):
        two = [STREAM[:cut], STREAM[cut:]]
        assert run(tmp_path, two, {"stream_format": "openai"}) == whole, cut


def test_backend_error_event_becomes_the_target_formats_error(tmp_path: Path) -> None:
    err = {"error": {"message": "Decoding failed", "type": "InternalServerError", "code": 500}}
    stream = chunk(" Hi") + f"data: {json.dumps(err)}\n\n".encode() + b"data: [DONE]\n\n"
    out = events(run(tmp_path, [stream], {"stream_format": "openai"}))
    assert json.loads(out[1]) == {
        "type": "error",
        "error": {"message": "Decoding failed", "type": "InternalServerError", "param": None,
                  "code": 500},
    }  # fmt: skip
    out = events(run(tmp_path, [stream], {"stream_format": "text"}))
    assert json.loads(out[1])["error"]["message"] == "Decoding failed"


def test_cut_stream_ends_without_done(tmp_path: Path) -> None:
    cut = STREAM[: len(chunk(" Hello \u00e9t\u00e9")) + 10]
    out = events(run(tmp_path, [cut], {"stream_format": "openai"}))
    assert out == ['{"type":"transcript.text.delta","delta":" Hello \u00e9t\u00e9"}']


SEGMENTS = (
    Segment(0, 0, 0.0, 2.5, " Hello world.", (1, 2), 0.0, -0.1, 1.0, 0.01, None),
    Segment(1, 0, 2.5, 3661.007, ' The "quick" fox.', (3,), 0.0, -0.1, 1.0, 0.01, None),
)


def verbose_json() -> bytes:
    return json.dumps(
        {
            "language": "en",
            "duration": 3661.5,
            "text": "".join(s.text for s in SEGMENTS),
            "segments": [
                {"id": s.id, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text}
                for s in SEGMENTS
            ],
            "words": None,
        }
    ).encode()


@pytest.mark.parametrize(
    ("fmt", "ctype"),
    [("srt", "application/x-subrip"), ("vtt", "text/vtt"), ("text", "text/plain")],
)
def test_rendered_formats_equal_the_backends_own(tmp_path: Path, fmt: str, ctype: str) -> None:
    out = run(tmp_path, [verbose_json()], {"stream_format": "openai", "render": fmt},
              ctype="application/json")  # fmt: skip
    got_type, _, body = out.partition("\n")
    assert got_type.startswith(ctype)
    result = Result("".join(s.text for s in SEGMENTS), "en", 3661.5, SEGMENTS)
    expected = {
        "srt": render_srt(SEGMENTS),
        "vtt": render_vtt(SEGMENTS),
        "text": render_text(result),
    }[fmt]
    assert body == expected


def test_errors_are_not_rendered(tmp_path: Path) -> None:
    err = b'{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}'
    out = run(tmp_path, [err], {"stream_format": "openai", "render": "srt"},
              ctype="application/json", status="400")  # fmt: skip
    assert out == "application/json\n" + err.decode()


# vLLM 0.32's answer to an upload over VLLM_MAX_AUDIO_CLIP_FILESIZE_MB (docs/vllm.md).
VLLM_TOO_LARGE = (
    b'{"error":{"message":"Maximum file size exceeded (parameter=audio_filesize_mb, '
    b'value=25.634807586669922)","type":"BadRequestError","param":"audio_filesize_mb",'
    b'"code":400}}'
)


def test_vllms_size_refusal_becomes_openais_413(tmp_path: Path) -> None:
    out = run(tmp_path, [VLLM_TOO_LARGE], {"stream_format": "openai"},
              ctype="application/json", status="400")  # fmt: skip
    ctype, _, body = out.partition("\n")
    assert status_of(tmp_path) == "413" and ctype == "application/json"
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == 413 and err["param"] == "file"
    assert err["type"] == "invalid_request_error"
    assert "value=25.63" in err["message"] and "VLLM_MAX_AUDIO_CLIP_FILESIZE_MB" in err["message"]


def status_of(tmp_path: Path) -> str:
    """The response status after the filter (the harness writes it to stderr)."""
    lines = (tmp_path / "stderr").read_text().splitlines()
    return next(line.split()[1] for line in lines if line.startswith("STATUS "))


def verbose(duration: float, spans: list[tuple[float, float]]) -> bytes:
    return json.dumps(
        {
            "language": "en",
            "duration": duration,
            "text": " words" * len(spans),
            "segments": [
                {"id": i, "seek": 0, "start": s, "end": e, "text": " words"}
                for i, (s, e) in enumerate(spans)
            ],
        }
    ).encode()


# vLLM 0.32's verbose_json of longer audio (docs/vllm.md): the first windows lost (one
# segment 88.2-98.2 of 88.7 s), the last window lost (segments to 54.4 s of 88.7 s),
# and no segment at all for 60 s of audio.
PARTIAL = [
    (88.7, [(88.2, 98.2)]),
    (88.7, [(0.0, 10.0), (10.0, 21.0), (29.1, 49.34), (49.34, 54.38)]),
    (60.0, []),
]


@pytest.mark.parametrize("case", PARTIAL)
@pytest.mark.parametrize("fmt", ["srt", "vtt", "verbose_json"])
def test_segments_that_miss_part_of_the_audio_are_refused(
    tmp_path: Path, case: tuple[float, list[tuple[float, float]]], fmt: str
) -> None:
    meta = {"render": fmt} if fmt != "verbose_json" else {"check": fmt}
    out = run(tmp_path, [verbose(*case)], {"stream_format": "openai", **meta},
              ctype="application/json")  # fmt: skip
    ctype, _, body = out.partition("\n")
    assert status_of(tmp_path) == "502" and ctype == "application/json"
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == 502 and err["param"] == "response_format"
    assert "does not cover the whole audio" in err["message"]


@pytest.mark.parametrize("fmt", ["srt", "vtt", "verbose_json"])
def test_pauses_inside_and_a_last_segment_past_the_end_pass(tmp_path: Path, fmt: str) -> None:
    """What whisper_backend answers: tiny.en on 20 s of speech, 40 s of silence, 20 s of
    speech leaves the silence without a segment; base's last window runs past the end."""
    for body in (
        verbose(80.0, [(0.0, 6.2), (6.2, 20.0), (60.0, 68.2), (68.2, 80.0)]),
        verbose(35.0, [(0.0, 5.0), (5.0, 27.0), (27.0, 32.0), (32.0, 37.0)]),
        verbose(4.7, []),  # silence shorter than a window: an empty transcript is whole
    ):
        meta = {"render": fmt} if fmt != "verbose_json" else {"check": fmt}
        out = run(tmp_path, [body], {"stream_format": "openai", **meta}, ctype="application/json")
        ctype, _, got = out.partition("\n")
        assert status_of(tmp_path) == "200", got
        if fmt == "verbose_json":  # checked, then passed on byte for byte
            assert ctype == "application/json" and got == body.decode()
        else:
            n = len(json.loads(body)["segments"])
            assert len(times(got, "," if fmt == "srt" else ".")) == 2 * n


def test_text_is_json_s_whole_text(tmp_path: Path) -> None:
    """text is rendered from json (the request side asks the backend for json): no
    segments are needed, so a backend whose segments fall short cannot cut it."""
    body = b'{"text":" Hello world.  The rest of it.","usage":{"type":"duration","seconds":89}}'
    out = run(tmp_path, [body], {"stream_format": "openai", "render": "text"},
              ctype="application/json")  # fmt: skip
    assert status_of(tmp_path) == "200"
    assert out == "text/plain; charset=utf-8\nHello world.  The rest of it.\n"


def times(text: str, sep: str) -> list[str]:
    return re.findall(rf"\d\d:\d\d:\d\d{re.escape(sep)}\d\d\d", text)
