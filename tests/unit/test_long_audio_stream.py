"""long_audio.stream_join.StreamJoin: the pieces' event streams become one stream.

Each piece's events are built as the gateway sends them (format_response.lua convert():
openai and text; backend is vLLM's chunks untouched), split on the blank line as
long_audio.server's Job.events does, and fed in order as Splitter._stream does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from long_audio.stream_join import StreamJoin

DONE = b"data: [DONE]"


def data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode()


def openai_piece(deltas: list[str], usage: tuple[int, int] | None = (10, 5)) -> list[bytes]:
    """convert() in openai: a delta per chunk, then the done event (text = the deltas
    joined, usage when the backend sent some) and [DONE]."""
    events = [data({"type": "transcript.text.delta", "delta": d}) for d in deltas]
    done: dict[str, Any] = {"type": "transcript.text.done", "text": "".join(deltas)}
    if usage is not None:
        i, o = usage
        done["usage"] = {
            "type": "tokens",
            "input_tokens": i,
            "output_tokens": o,
            "total_tokens": i + o,
        }
    return [*events, data(done), DONE]


def text_piece(deltas: list[str]) -> list[bytes]:
    return [*(data({"text": d}) for d in deltas), DONE]


def backend_piece(deltas: list[str], completion_tokens: int = 7) -> list[bytes]:
    """vLLM's transcription chunks: deltas, a closing "stop" chunk, usage, [DONE]."""

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return data({"id": "transcribe-x", "object": "transcription.chunk", "created": 1,
                     "model": "m/a", "choices": choices, **extra})  # fmt: skip

    def delta(content: str, finish: str | None = None) -> dict[str, Any]:
        return {"delta": {"content": content}, "finish_reason": finish, "stop_reason": None}

    usage = {"prompt_tokens": 0, "completion_tokens": completion_tokens,
             "total_tokens": completion_tokens, "type": "duration", "seconds": 30}  # fmt: skip
    return [*(chunk([delta(d)]) for d in deltas), chunk([delta("", "stop")]),
            chunk([], usage=usage), DONE]  # fmt: skip


def join(fmt: str, pieces: list[list[bytes]]) -> tuple[list[bytes], bool]:
    """What the client receives (events without their blank line), and whether it failed:
    Splitter._stream's loop, without the sockets."""
    j = StreamJoin(fmt)
    out = b""
    for events in pieces:
        first = True
        for raw in events:
            sent, failed = j.event(raw, first)
            if sent is None:
                continue
            first = False
            out += sent
            if failed:
                return split(out), True
    return split(out + j.end()), False


def split(stream: bytes) -> list[bytes]:
    assert stream.endswith(b"\n\n"), "every event ends with a blank line"
    return stream[:-2].split(b"\n\n")


def payloads(events: list[bytes]) -> list[Any]:
    return [json.loads(e[len(b"data: ") :]) for e in events if e != DONE]


def deltas(events: list[bytes]) -> list[str]:
    return [p["delta"] for p in payloads(events) if p.get("type") == "transcript.text.delta"]


# --- openai ----------------------------------------------------------------------------


def test_openai_one_done_and_one_done_marker_at_the_end() -> None:
    events, failed = join("openai", [
        openai_piece(["Hello", " there."], (10, 5)),
        openai_piece(["General", " Kenobi."], (20, 7)),
        openai_piece([" You are", " a bold one."], (30, 9)),
    ])  # fmt: skip
    assert not failed
    assert events[-1] == DONE and events.count(DONE) == 1
    done = [p for p in payloads(events) if p.get("type") == "transcript.text.done"]
    assert len(done) == 1
    assert payloads(events[-2:-1]) == done, "the done event is the last before [DONE]"
    assert done[0]["text"] == "Hello there. General Kenobi. You are a bold one."
    assert done[0]["usage"] == {
        "type": "tokens",
        "input_tokens": 60,
        "output_tokens": 21,
        "total_tokens": 81,
    }
    # The deltas as sent add up to the done text.
    assert "".join(deltas(events)) == done[0]["text"]


def test_openai_space_only_where_a_piece_starts_without_one() -> None:
    events, _ = join("openai", [
        openai_piece(["Hello", "world"]),  # the very first delta: no space before it
        openai_piece(["next", "piece"]),  # a piece's first delta glued on: a space
        openai_piece([" spaced", "x"]),  # already starts with whitespace: kept as is
        openai_piece(["\nline"]),
    ])  # fmt: skip
    assert deltas(events) == ["Hello", "world", " next", "piece", " spaced", "x", "\nline"]


def test_openai_silent_first_piece_adds_no_leading_space() -> None:
    """A piece with no text (silence) sends only its closing events: the next piece's
    first delta is still the stream's first."""
    silent = openai_piece([], None)
    events, _ = join("openai", [silent, openai_piece(["Hi"]), silent, openai_piece(["there"])])
    assert deltas(events) == ["Hi", " there"]
    (done,) = [p for p in payloads(events) if p.get("type") == "transcript.text.done"]
    assert done["text"] == "Hi there"


def test_openai_no_usage_no_usage_field() -> None:
    events, _ = join("openai", [openai_piece(["a"], None), openai_piece(["b"], None)])
    assert payloads(events[-2:-1]) == [{"type": "transcript.text.done", "text": "a b"}]


def test_openai_usage_of_the_pieces_that_have_it() -> None:
    events, _ = join("openai", [openai_piece(["a"], None), openai_piece(["b"], (4, 2))])
    assert payloads(events[-2:-1])[0]["usage"] == {
        "type": "tokens",
        "input_tokens": 4,
        "output_tokens": 2,
        "total_tokens": 6,
    }


def test_delta_rewrite_keeps_the_event_otherwise_intact() -> None:
    """Only the delta changes: other keys, unicode and escapes survive the re-encoding."""
    second = [data({"type": "transcript.text.delta", "delta": 'é "q"\\', "logprobs": [1]}), DONE]
    events, _ = join("openai", [openai_piece(["a"]), second])
    assert payloads(events[1:2]) == [
        {"type": "transcript.text.delta", "delta": ' é "q"\\', "logprobs": [1]}
    ]


@pytest.mark.parametrize("fmt", ["openai", "text", "backend"])
def test_error_event_is_passed_on_and_fails_the_stream(fmt: str) -> None:
    """convert() turns a backend's error chunk into this; the splitter stops there."""
    err = {"message": "boom", "type": "server_error", "param": None, "code": 500}
    error = data({"type": "error", "error": err} if fmt == "openai" else {"error": err})
    first = {"openai": openai_piece, "text": text_piece, "backend": backend_piece}[fmt](["ok"])
    events, failed = join(fmt, [first, [error, DONE], first])
    assert failed
    assert events[-1] == error, "the error is the last event: no done, no [DONE] after it"
    assert DONE not in events


def test_error_event_is_not_respaced() -> None:
    j = StreamJoin("openai")
    j.event(data({"type": "transcript.text.delta", "delta": "a"}), True)
    raw = data({"type": "error", "error": {"message": "x"}})
    assert j.event(raw, True) == (raw + b"\n\n", True)


@pytest.mark.parametrize("raw", [b": keep-alive", b"event: ping", b"", b"id: 3", b"retry: 10"])
def test_non_data_lines_are_ignored(raw: bytes) -> None:
    j = StreamJoin("openai")
    assert j.event(raw, True) == (None, False)
    # ... and do not count as the stream's first delta.
    out, _ = j.event(data({"type": "transcript.text.delta", "delta": "Hi"}), True)
    assert out == data({"type": "transcript.text.delta", "delta": "Hi"}) + b"\n\n"


def test_done_marker_without_space_is_held_back() -> None:
    """`data:[DONE]` (no space) is the same marker to an SSE client."""
    assert StreamJoin("openai").event(b"data:[DONE]", False) == (None, False)


# --- text ------------------------------------------------------------------------------


def test_text_format_joins_with_a_space_and_ends_with_one_done_marker() -> None:
    events, failed = join("text", [text_piece(["Hello", " there."]), text_piece(["General"]),
                                   text_piece([" Kenobi."])])  # fmt: skip
    assert not failed
    assert events[-1] == DONE and events.count(DONE) == 1
    assert [p["text"] for p in payloads(events)] == ["Hello", " there.", " General", " Kenobi."]
    assert all(set(p) == {"text"} for p in payloads(events)), "no done event in this format"


# --- backend ---------------------------------------------------------------------------


def test_backend_chunks_pass_untouched_and_one_done_marker_at_the_end() -> None:
    """vLLM's own chunks (each piece's "stop" and usage chunks too); only [DONE] is held."""
    one, two = backend_piece([" Hello", " there."], 5), backend_piece([" General", " Kenobi."], 6)
    events, failed = join("backend", [one, two])
    assert not failed
    assert events == [*one[:-1], *two[:-1], DONE]
