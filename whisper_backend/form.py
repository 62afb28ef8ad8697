"""Read and validate the multipart form of a transcription request.

The upload is read part by part and the file is cut off at the size limit, so an
oversized upload never sits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web

from .errors import ApiError, bad_request, not_found_model
from .formats import RESPONSE_FORMATS

_LIST_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")
_MAX_FIELD_BYTES = 64 * 1024
_VLLM_MAX_FIELD_BYTES = 1024 * 1024  # Starlette's max_part_size for form fields
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RawForm:
    """The parts as received: the file bytes (if any) and the text fields."""

    file: bytes | None
    filename: str | None
    file_was_text: bool
    fields: dict[str, str]
    lists: dict[str, tuple[str, ...]]
    # The list parts under the name the client used (`timestamp_granularities[]` or not).
    raw_lists: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class TranscriptionRequest:
    """A validated request; every field has its final type."""

    audio: bytes
    filename: str
    model: str
    prompt: str | None
    response_format: str
    temperature: float
    language: str | None
    stream: bool
    stream_include_usage: bool
    word_timestamps: bool
    stream_continuous_usage: bool = False  # vLLM flavor: usage on every stream chunk


def too_large(limit_bytes: int, vllm: bool = False, seen_bytes: int | None = None) -> ApiError:
    mb = limit_bytes / (1024 * 1024)
    if vllm:
        # vLLM raises VLLMValidationError("Maximum file size exceeded", parameter=...,
        # value=size_mb); its str() carries both. We stop reading early, so `value` is what
        # we saw (Content-Length or the bytes read), not the whole file's size.
        value = (seen_bytes if seen_bytes is not None else limit_bytes + 1) / (1024 * 1024)
        return ApiError(
            f"Maximum file size exceeded (parameter=audio_filesize_mb, value={value})",
            400,
            "audio_filesize_mb",
            close=True,
            err_type="BadRequestError",
        )
    return ApiError(
        f"Maximum file size exceeded: the limit is {mb:g} MB.",
        400,
        "audio_filesize_mb",
        close=True,
    )


def framework_error(detail: str, status: int = 400) -> ApiError:
    """FastAPI's own answer (vLLM registers no handler for it): `{"detail": ...}`."""
    return ApiError(detail, status, raw_body={"detail": detail})


async def read_form(request: web.Request, max_file_bytes: int, vllm: bool = False) -> RawForm:
    """`vllm`: parse as FastAPI/Starlette do for vLLM (any other body is an empty form,
    parse errors are `{"detail": ...}`, fields up to Starlette's 1 MB)."""
    max_field = _VLLM_MAX_FIELD_BYTES if vllm else _MAX_FIELD_BYTES
    ctype = request.headers.get("Content-Type", "").lower()
    if ctype.startswith("application/x-www-form-urlencoded"):
        # Fields only (no upload possible), but answer about the missing file, not the encoding.
        post = await request.post()
        plain = {k: str(v) for k, v in post.items() if k != "file"}
        return RawForm(None, None, "file" in post, plain, {})
    if not ctype.startswith("multipart/form-data"):
        if vllm:
            return RawForm(None, None, False, {}, {})  # Starlette: an empty FormData
        raise bad_request("Expected a multipart/form-data body with an audio `file` part.", "file")
    length = request.content_length
    if length is not None and length > max_file_bytes + _MAX_FIELD_BYTES * 4:
        raise too_large(max_file_bytes, vllm, length)
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as e:
        if vllm:
            raise framework_error("Missing boundary in multipart.") from e
        raise bad_request(f"Malformed multipart body: {e}", "file") from e
    file: bytes | None = None
    filename: str | None = None
    file_was_text = False
    fields: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    raw_lists: dict[str, list[str]] = {}
    while True:
        try:
            part = await reader.next()
        except ValueError as e:
            if vllm:
                raise framework_error("Invalid multipart data.") from e
            raise bad_request(f"Malformed multipart body: {e}", "file") from e
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            continue  # nested multipart: not something clients send; skip it
        name = part.name or ""
        if name == "file" and part.filename is not None:
            file = await _read_capped(part, max_file_bytes, vllm=vllm)
            filename = part.filename
            file_was_text = False
            continue
        value = (await _read_capped(part, max_field, field=name, vllm=vllm)).decode(
            "utf-8", errors="replace"
        )
        if name == "file":
            file_was_text = True
            file = None if vllm else file  # Starlette keeps the last `file` part
        elif name in _LIST_FIELDS:
            lists.setdefault("timestamp_granularities", []).append(value)
            raw_lists.setdefault(name, []).append(value)
        else:
            fields[name] = value
    return RawForm(
        file,
        filename,
        file_was_text,
        fields,
        {k: tuple(v) for k, v in lists.items()},
        {k: tuple(v) for k, v in raw_lists.items()},
    )


async def _read_capped(
    part: BodyPartReader, limit: int, field: str | None = None, vllm: bool = False
) -> bytes:
    buf = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        buf += chunk
        if len(buf) > limit:
            if field is None:
                raise too_large(limit, vllm, len(buf))
            if vllm:
                raise framework_error(f"Part exceeded maximum size of {limit // 1024}KB.")
            raise bad_request(f"Form field `{field}` is too long.", field)
    return bytes(buf)


def _bool(fields: dict[str, str], name: str) -> bool:
    raw = fields.get(name, "").strip().lower()
    if raw in ("", "false", "0", "no", "off"):
        return False
    if raw in ("true", "1", "yes", "on"):
        return True
    raise bad_request(f"`{name}` must be true or false, got {raw!r}.", name)


def validate(
    form: RawForm,
    served_model: str,
    languages: frozenset[str],
    multilingual: bool,
    task: str,
) -> TranscriptionRequest:
    """Turn a RawForm into a request or raise the first problem as a 400/404."""
    if form.file is None:
        if form.file_was_text:
            raise bad_request("`file` must be an uploaded file, not a text field.", "file")
        raise bad_request("Missing required `file` part.", "file")
    if not form.file:
        raise bad_request("The uploaded file is empty.", "file")
    f = form.fields
    model = f.get("model", "").strip() or served_model
    if model != served_model:
        raise not_found_model(model)
    fmt = f.get("response_format", "json").strip() or "json"
    if fmt not in RESPONSE_FORMATS:
        raise bad_request(
            f"Unsupported response_format {fmt!r}; use one of {', '.join(RESPONSE_FORMATS)}.",
            "response_format",
        )
    raw_temp = f.get("temperature", "").strip()
    try:
        temperature = float(raw_temp) if raw_temp else 0.0
    except ValueError as e:
        raise bad_request(
            f"`temperature` must be a number, got {raw_temp!r}.", "temperature"
        ) from e
    if not 0.0 <= temperature <= 1.0:
        raise bad_request("`temperature` must be between 0 and 1.", "temperature")
    language = f.get("language", "").strip().lower() or None
    if language is not None and language not in languages:
        raise bad_request(f"Unsupported language {language!r}.", "language")
    if task == "translate" and not multilingual:
        raise bad_request(
            f"Model {served_model} is English-only and cannot translate; use a multilingual model.",
            "model",
        )
    if not multilingual and language not in (None, "en"):
        raise bad_request(
            f"Model {served_model} is English-only; language {language!r} is not supported.",
            "language",
        )
    stream = _bool(f, "stream")
    if stream and fmt not in ("json", "text"):
        raise bad_request(
            f"Streaming is only supported with response_format json or text, not {fmt}.",
            "stream",
        )
    grans = form.lists.get("timestamp_granularities", ())
    for g in grans:
        if g not in ("word", "segment"):
            raise bad_request(
                f"Unsupported timestamp granularity {g!r}; use word or segment.",
                "timestamp_granularities",
            )
    return TranscriptionRequest(
        audio=form.file,
        filename=form.filename or "audio",
        model=model,
        prompt=f.get("prompt") or None,
        response_format=fmt,
        temperature=temperature,
        language=language,
        stream=stream,
        stream_include_usage=_bool(f, "stream_include_usage"),
        word_timestamps="word" in grans and fmt == "verbose_json",
    )
