"""Pure parts of whisper_backend: rendering, form validation, errors, model assembly."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from whisper_backend import models
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
from whisper_backend.server import STATE, ServerConfig, create_app

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


# --- mid-stream failure (fake model, named as such) ----------------------------------
