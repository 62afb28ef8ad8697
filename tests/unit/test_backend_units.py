"""Pure parts of whisper_backend: rendering, form validation, errors, model assembly."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from whisper_backend import models, vllm_flavor
from whisper_backend.__main__ import config_from_args, parse_args
from whisper_backend.engine import EngineConfig, Segment, Word
from whisper_backend.errors import ApiError
from whisper_backend.form import RawForm, validate
from whisper_backend.formats import (
    Result,
    StreamIds,
    render_json,
    render_srt,
    render_verbose,
    render_vtt,
    srt_time,
    sse_delta,
    usage_seconds,
    vtt_time,
)
from whisper_backend.metrics import Metrics

LANGS = frozenset({"en", "fr", "de"})


def seg(i: int, start: float, end: float, text: str, words: bool = False) -> Segment:
    w = (Word(start, end, text.strip(), 0.9),) if words else None
    return Segment(i, 0, start, end, text, (1, 2), 0.0, -0.2, 1.1, 0.01, w)


# --- formats -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("secs", "srt", "vtt"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (1.2345, "00:00:01,234", "00:00:01.234"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3723.5, "01:02:03,500", "01:02:03.500"),
        (-0.01, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(secs: float, srt: str, vtt: str) -> None:
    assert srt_time(secs) == srt
    assert vtt_time(secs) == vtt


def test_srt_and_vtt_rendering() -> None:
    segs = [seg(0, 0.0, 1.5, " Hello there."), seg(1, 1.5, 62.25, " General Kenobi.")]
    assert render_srt(segs) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n00:00:01,500 --> 00:01:02,250\nGeneral Kenobi.\n"
    )
    assert render_vtt(segs) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "00:00:01.500 --> 00:01:02.250\nGeneral Kenobi.\n"
    )
    assert render_srt([]) == ""
    assert render_vtt([]) == "WEBVTT\n\n"


def test_usage_seconds_rounds_up() -> None:
    assert [usage_seconds(d) for d in (0.0, 0.1, 4.0, 4.0000000001, 4.7)] == [0, 1, 4, 4, 5]


def test_json_and_verbose_shapes() -> None:
    result = Result(
        " Hi. Bye.", "en", 2.5, (seg(0, 0, 1, " Hi.", True), seg(1, 1, 2, " Bye.", True))
    )
    assert render_json(result) == {"text": " Hi. Bye.", "usage": {"type": "duration", "seconds": 3}}
    verbose = render_verbose(result, words=True)
    assert set(verbose) == {"language", "duration", "text", "segments", "words"}
    assert verbose["words"] == [
        {"word": "Hi.", "start": 0, "end": 1},
        {"word": "Bye.", "start": 1, "end": 2},
    ]
    assert render_verbose(result, words=False)["words"] is None
    assert verbose["segments"][1]["tokens"] == [1, 2]


def test_stream_chunk_envelope() -> None:
    ids = StreamIds.new("translate", "m")
    line = sse_delta(ids, " hi", "stop")
    assert line.startswith("data: ") and line.endswith("\n\n")
    body = json.loads(line[6:])
    assert body["object"] == "translation.chunk" and body["id"].startswith("translate-")
    assert body["choices"][0] == {
        "delta": {"content": " hi"},
        "finish_reason": "stop",
        "stop_reason": None,
    }


# --- form validation -----------------------------------------------------------------


def raw(file: bytes | None = b"RIFF", text: bool = False, **fields: str) -> RawForm:
    grans = fields.pop("grans", "")
    lists = {"timestamp_granularities": tuple(grans.split(","))} if grans else {}
    return RawForm(file, "a.wav" if file is not None else None, text, fields, lists)


def check(form: RawForm, multilingual: bool = True, task: str = "transcribe") -> Any:
    return validate(form, "openai/whisper-base", LANGS, multilingual, task)


def test_validate_defaults() -> None:
    req = check(raw(unknown="ignored"))
    assert req.model == "openai/whisper-base" and req.response_format == "json"
    assert req.temperature == 0.0 and req.language is None and not req.stream


def test_validate_words_only_for_verbose() -> None:
    assert check(raw(response_format="verbose_json", grans="word,segment")).word_timestamps
    assert not check(raw(response_format="json", grans="word")).word_timestamps


@pytest.mark.parametrize(
    ("form", "multilingual", "task", "status", "param"),
    [
        (raw(None), True, "transcribe", 400, "file"),
        (raw(None, text=True), True, "transcribe", 400, "file"),
        (raw(b""), True, "transcribe", 400, "file"),
        (raw(model="whisper-1"), True, "transcribe", 404, "model"),
        (raw(response_format="xml"), True, "transcribe", 400, "response_format"),
        (raw(temperature="-0.1"), True, "transcribe", 400, "temperature"),
        (raw(temperature="nan"), True, "transcribe", 400, "temperature"),
        (raw(language="klingon"), True, "transcribe", 400, "language"),
        (raw(language="fr"), False, "transcribe", 400, "language"),
        (raw(), False, "translate", 400, "model"),
        (raw(stream="true", response_format="srt"), True, "transcribe", 400, "stream"),
        (raw(grans="char"), True, "transcribe", 400, "timestamp_granularities"),
    ],
)
def test_validate_rejects(
    form: RawForm, multilingual: bool, task: str, status: int, param: str
) -> None:
    with pytest.raises(ApiError) as e:
        check(form, multilingual, task)
    assert (e.value.status, e.value.param) == (status, param)


def test_error_body_shape() -> None:
    err = ApiError("nope", 404, "model")
    assert err.body() == {
        "error": {"message": "nope", "type": "NotFoundError", "param": "model", "code": 404}
    }
    busy = ApiError("busy", 503, retry_after=2).response()
    assert busy.status == 503 and busy.headers["Retry-After"] == "2"


# --- model assembly ----------------------------------------------------------------


def spec(data: bytes) -> models.FileSpec:
    return models.FileSpec(len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[list[tuple[Path, models.FileSpec]], list[Path], Path]]:
    a, b = b"A" * 3000 + b"x", b"B" * 5000
    pa, pb = tmp_path / "p1", tmp_path / "p2"
    pa.write_bytes(a)
    pb.write_bytes(b)
    side = tmp_path / "config.json"
    side.write_text("{}")
    yield [(pa, spec(a)), (pb, spec(b))], [side], tmp_path / "cache"


def test_assemble_builds_verified_model(parts: Any) -> None:
    part_list, sides, dest = parts
    whole = spec(b"A" * 3000 + b"x" + b"B" * 5000)
    out = models.assemble(part_list, sides, dest, whole)
    assert models.verify_file(out / "model.bin", whole)
    assert (out / "config.json").read_text() == "{}"
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_half_written_model_is_refused_and_rebuilt(parts: Any) -> None:
    part_list, sides, dest = parts
    whole_bytes = b"A" * 3000 + b"x" + b"B" * 5000
    whole = spec(whole_bytes)
    dest.mkdir()
    (dest / "model.bin").write_bytes(whole_bytes[:4000])  # a crash mid-write
    assert not models.verify_file(dest / "model.bin", whole)
    models.assemble(part_list, sides, dest, whole)
    assert (dest / "model.bin").read_bytes() == whole_bytes


def test_same_size_corrupt_model_is_refused(parts: Any) -> None:
    part_list, sides, dest = parts
    whole_bytes = b"A" * 3000 + b"x" + b"B" * 5000
    whole = spec(whole_bytes)
    dest.mkdir()
    (dest / "model.bin").write_bytes(whole_bytes.replace(b"x", b"y"))
    assert not models.verify_file(dest / "model.bin", whole)
    models.assemble(part_list, sides, dest, whole)
    assert models.verify_file(dest / "model.bin", whole)


def test_corrupt_part_raises_and_leaves_nothing(parts: Any) -> None:
    part_list, sides, dest = parts
    whole = spec(b"A" * 3000 + b"x" + b"B" * 5000)
    part_list[1][0].write_bytes(b"B" * 4999 + b"C")
    with pytest.raises(models.ModelError, match="corrupt"):
        models.assemble(part_list, sides, dest, whole)
    assert not (dest / "model.bin").exists()


def test_wrong_pinned_hash_never_lands(parts: Any) -> None:
    part_list, sides, dest = parts
    wrong = models.FileSpec(8001, "0" * 64)
    with pytest.raises(models.ModelError, match="expected"):
        models.assemble(part_list, sides, dest, wrong)
    assert not (dest / "model.bin").exists()
    assert not [p for p in dest.iterdir() if ".tmp" in p.name]


def test_concurrent_assemblers_agree(parts: Any) -> None:
    part_list, sides, dest = parts
    whole = spec(b"A" * 3000 + b"x" + b"B" * 5000)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            models.assemble(part_list, sides, dest, whole)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert models.verify_file(dest / "model.bin", whole)


def test_pinned_base_specs_add_up() -> None:
    assert sum(p.size for p in models.BASE_PARTS) == models.BASE_MODEL_BIN.size


def test_locate_model_path_and_unknown(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    loc = models.locate("ignored", str(tmp_path), "my/whisper")
    assert loc == models.ModelLocation("my/whisper", tmp_path)
    with pytest.raises(models.ModelError):
        models.locate("openai/whisper-large-v3")
    with pytest.raises(models.ModelError):
        models.locate("x", str(tmp_path / "missing"))


def test_cli_defaults() -> None:
    cfg = config_from_args(parse_args(["--num-workers", "2", "--cpu-threads", "3"]))
    assert cfg.name == "openai/whisper-tiny.en"
    assert cfg.engine == EngineConfig(num_workers=2, cpu_threads=3, max_queue=16, beam_size=1)
    assert cfg.max_file_bytes == 25 * 1024 * 1024 and cfg.max_audio_seconds == 600.0


def test_cli_stream_per_token() -> None:
    assert not config_from_args(parse_args(["--api-flavor", "vllm"])).stream_per_token
    args = ["--api-flavor", "vllm", "--stream-per-token"]
    assert config_from_args(parse_args(args)).stream_per_token


# --- the vLLM flavor ----------------------------------------------------------------


def test_unknown_format_is_one_error_per_union_member() -> None:
    """vLLM's transcription `response_format` is `AudioResponseFormat |
    Literal["diarized_json"]`: pydantic reports both members, with the text vLLM 0.32.0 sent."""
    form = RawForm(b"RIFF", "a.wav", False, {"response_format": "xml"}, {})
    with pytest.raises(ApiError) as e:
        vllm_flavor.validate(form, "m", "transcribe", True, lambda: None)
    assert (e.value.status, e.value.param, e.value.err_type) == (
        400,
        "body.response_format",
        "Bad Request",
    )
    assert e.value.message == (
        "2 validation errors:\n"
        "  {'type': 'literal_error', 'loc': 'body.response_format', 'msg': \"Input should be "
        "'json', 'text', 'srt', 'verbose_json' or 'vtt'\", 'input': 'xml', 'ctx': {'expected': "
        "\"'json', 'text', 'srt', 'verbose_json' or 'vtt'\"}}\n"
        "  {'type': 'literal_error', 'loc': 'body.response_format', 'msg': \"Input should be "
        "'diarized_json'\", 'input': 'xml', 'ctx': {'expected': \"'diarized_json'\"}}"
    )
    with pytest.raises(ApiError) as e:  # translations: one member, one error
        vllm_flavor.validate(form, "m", "translate", True, lambda: None)
    assert e.value.message.startswith("1 validation error:\n")
    assert "diarized_json" not in e.value.message


# Token ids of a made-up tokenizer: "é" is two bytes, split over tokens 3 and 4.
PIECES = {1: b" caf", 2: b"e", 3: b" \xc3", 4: b"\xa9t", 5: b"\xc3\xa9"}


def detokenize(ids: Any) -> str:
    return b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize(
    ("tokens", "want"),
    [
        ((1, 2), [(" caf", 1), ("e", 1)]),
        ((1, 3, 4), [(" caf", 1), (" ét", 2)]),  # a half character waits for its rest
        ((1, 5, 5), [(" caf", 1), ("é", 1), ("é", 1)]),
        ((), []),
    ],
)
def test_token_pieces(tokens: tuple[int, ...], want: list[tuple[str, int]]) -> None:
    text = detokenize(tokens)
    pieces = vllm_flavor.token_pieces(text, tokens, detokenize)
    assert [p for p in pieces if p[0]] == want
    assert "".join(p for p, _ in pieces) == text
    assert sum(n for _, n in pieces) == len(tokens)


def test_metrics_carry_vllms_labels() -> None:
    m = Metrics("openai/whisper-base")
    m.queue(running=2, waiting=3)
    text = m.render().decode()
    labels = 'engine="0",model_name="openai/whisper-base"'
    assert f"vllm:num_requests_running{{{labels}}} 2.0" in text
    assert f"vllm:num_requests_waiting{{{labels}}} 3.0" in text
    assert f'vllm:num_requests_waiting_by_reason{{{labels},reason="capacity"}} 3.0' in text
    assert f'vllm:num_requests_waiting_by_reason{{{labels},reason="deferred"}} 0.0' in text
    m.request_done("transcriptions", 200, 1.5)
    text = m.render().decode()
    stop = 'engine="0",finished_reason="stop",model_name="openai/whisper-base"'
    assert f"vllm:request_success_total{{{stop}}} 1.0" in text
    assert 'finished_reason="repetition"' in text
    assert f"vllm:e2e_request_latency_seconds_count{{{labels}}} 1.0" in text
