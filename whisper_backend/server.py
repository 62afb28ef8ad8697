"""HTTP routes: vLLM's transcription API over the decode engine."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from . import __version__, vllm_flavor
from .audio import decode
from .engine import DecodeInfo, DecodeJob, DecodeOptions, Engine, EngineConfig, Segment
from .errors import ApiError
from .form import TranscriptionRequest, read_form, validate
from .formats import (
    SSE_DONE,
    Result,
    StreamIds,
    render_json,
    render_srt,
    render_text,
    render_verbose,
    render_vtt,
    sse_delta,
    sse_error,
    sse_usage,
    usage_seconds,
)
from .metrics import CONTENT_TYPE, Metrics
from .models import locate

log = logging.getLogger("whisper_backend")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServerConfig:
    model: str = "openai/whisper-tiny.en"
    model_path: str | None = None
    served_model_name: str | None = None
    max_file_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 600.0
    shutdown_grace: float = 30.0
    engine: EngineConfig = field(default_factory=EngineConfig)
    api_key: str | None = None  # like vLLM's --api-key: required on /v1/*
    api_flavor: str = "ours"  # "vllm": answer exactly as vLLM does (vllm_flavor.py)
    stream_per_token: bool = False  # vllm flavor: a stream delta per token, as vLLM sends

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    @property
    def vllm(self) -> bool:
        return self.api_flavor == "vllm"


@dataclass
class State:
    """Mutable per-app state: the engine, metrics and the loading outcome."""

    config: ServerConfig
    engine: Engine
    metrics: Metrics
    languages: frozenset[str]
    root: str = ""
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0  # transcription/translation requests not yet answered in full (/load)


STATE = web.AppKey("state", State)


def _languages() -> frozenset[str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


def create_app(config: ServerConfig) -> web.Application:
    app = web.Application()
    engine = Engine(config.engine)
    metrics = Metrics(config.name)

    def publish() -> None:
        metrics.queue(engine.running, engine.waiting)

    engine.on_change = publish
    engine.on_cancelled = metrics.cancelled.inc
    app[STATE] = State(config, engine, metrics, _languages())
    app.router.add_post("/v1/audio/transcriptions", _transcriptions)
    app.router.add_post("/v1/audio/translations", _translations)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/version", _version)
    app.router.add_get("/metrics", _metrics)
    app.on_startup.append(_start_loading)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    if config.vllm:
        app.router.add_get("/ping", _ping)  # SageMaker's health check: vLLM has GET and POST
        app.router.add_post("/ping", _ping)
        app.router.add_get("/load", _load)
        app.on_response_prepare.append(_vllm_headers)
        app.middlewares.append(_vllm_error_middleware)
        if config.api_key:
            app.middlewares.append(_vllm_auth_middleware(config.api_key))  # type: ignore[arg-type]
        return app
    app.middlewares.append(_error_middleware)
    if config.api_key:
        app.middlewares.append(_auth_middleware(config.api_key))  # type: ignore[arg-type]
    return app


def _error(state: State, e: ApiError) -> web.Response:
    return vllm_flavor.error_response(e) if state.config.vllm else e.response()


def _auth_middleware(key: str) -> Middleware:
    """/v1/* needs `Authorization: Bearer <key>`; /health and /metrics stay open, as vLLM."""
    expected = f"Bearer {key}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise ApiError("invalid or missing API key", 401)
        return await handler(request)

    return auth


def _vllm_auth_middleware(key: str) -> Middleware:
    """vLLM's AuthenticationMiddleware: paths under /v1 (and /v2, ...) need the key;
    otherwise 401 `{"error": "Unauthorized"}`."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if vllm_flavor.guarded(request.method, request.path) and not vllm_flavor.authorized(
            request.headers.get("Authorization"), key
        ):
            return vllm_flavor.unauthorized()
        return await handler(request)

    return auth


@web.middleware
async def _vllm_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes and methods answer as FastAPI does: `{"detail": "Not Found"}`."""
    try:
        return await handler(request)
    except ApiError as e:
        return vllm_flavor.error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return vllm_flavor.json_response({"detail": e.reason}, e.status, allow)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure, including unknown routes, in the one error shape."""
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return ApiError(e.reason, e.status).response()


async def _start_loading(app: web.Application) -> None:
    """Ours: load in the background (/health says 503 meanwhile). vLLM: load before the
    port accepts connections (its socket is bound but not listening until the engine is
    up), and exit if the model cannot load."""
    state = app[STATE]

    async def load() -> None:
        cfg = state.config
        try:
            loc = await asyncio.to_thread(locate, cfg.model, cfg.model_path, cfg.served_model_name)
            state.root = str(loc.path)
            await asyncio.to_thread(state.engine.load, loc.path)
            state.metrics.model_loaded.set(1)
            log.info("model %s loaded from %s", cfg.name, loc.path)
        except Exception as e:
            state.load_error = f"{type(e).__name__}: {e}"
            log.exception("model %s failed to load", cfg.name)

    app[_LOADER] = asyncio.create_task(load())
    if state.config.vllm:
        await app[_LOADER]
        if state.load_error:
            raise RuntimeError(f"model {state.config.name} failed to load: {state.load_error}")


_LOADER = web.AppKey("loader", asyncio.Task[None])


async def _on_shutdown(app: web.Application) -> None:
    """SIGTERM: refuse new work, let in-flight requests finish within the grace period, then
    end the rest with a clean error (aiohttp's own timeout would cut streams mid-write)."""
    state = app[STATE]
    state.engine.close()
    if not await state.engine.wait_idle(state.config.shutdown_grace):
        log.warning("grace period over: aborting %d request(s)", state.engine.live)
        state.engine.abort_all(ApiError("The server is shutting down.", 503))
        await state.engine.wait_idle(5.0)


async def _on_cleanup(app: web.Application) -> None:
    app[_LOADER].cancel()
    app[STATE].engine.shutdown()


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.engine.ready:
        return web.Response(status=200)
    if state.config.vllm:
        return web.Response(status=503)  # vLLM: EngineDeadError -> 503, empty body
    if state.load_error:
        return ApiError(f"Model failed to load: {state.load_error}", 503).response()
    return ApiError("Model is loading or the server is shutting down.", 503).response()


async def _ping(request: web.Request) -> web.Response:
    """vLLM's /ping is /health under another name: 200 with an empty body."""
    return await _health(request)


async def _load(request: web.Request) -> web.Response:
    """vLLM's `{"server_load": N}`: the audio requests in flight, counted as vLLM counts them
    with --enable-server-load-tracking (without it vLLM always says 0)."""
    return vllm_flavor.json_response({"server_load": request.app[STATE].in_flight})


async def _vllm_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every vLLM answer has `Vary: Origin` (Starlette's CORSMiddleware)."""
    response.headers.update(vllm_flavor.HEADERS)


async def _version(request: web.Request) -> web.Response:
    import faster_whisper

    if request.app[STATE].config.vllm:
        return vllm_flavor.json_response({"version": vllm_flavor.VLLM_VERSION})
    return web.json_response(
        {"version": __version__, "engine": f"faster-whisper {faster_whisper.__version__}"}
    )


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = state.config.name
    if state.config.vllm:
        # `root` is what `vllm serve` was given: the model name or the model folder.
        root = state.config.model_path or state.config.model
        return vllm_flavor.json_response(vllm_flavor.models_body(name, root))
    body = vllm_flavor.models_body(
        name,
        state.root or state.config.model,
        created=state.created,
        permission_id=f"modelperm-{name}",
    )
    return web.json_response(body)


async def _transcriptions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "transcribe")


async def _translations(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "translate")


async def _handle(request: web.Request, task: str) -> web.StreamResponse:
    state = request.app[STATE]
    endpoint = "transcriptions" if task == "transcribe" else "translations"
    started = time.monotonic()
    status = 500
    state.in_flight += 1
    try:
        resp = await _serve(request, state, task)
        status = resp.status
        return resp
    except ApiError as e:
        status = e.status
        return _error(state, e)
    except asyncio.CancelledError:
        status = 499  # client closed the connection (nginx's convention)
        raise
    except Exception as e:
        log.exception("%s failed", endpoint)
        return _error(state, ApiError(f"Decoding failed: {type(e).__name__}: {e}", 500))
    finally:
        state.in_flight -= 1
        state.metrics.request_done(endpoint, status, time.monotonic() - started)


async def _serve(request: web.Request, state: State, task: str) -> web.StreamResponse:
    if state.config.vllm:
        return await _serve_vllm(request, state, task)
    if state.load_error:
        raise ApiError(f"Model failed to load: {state.load_error}", 503)
    state.engine.admit()  # cheap early 503 before reading a large upload
    form = await read_form(request, state.config.max_file_bytes)
    req = validate(form, state.config.name, state.languages, state.engine.multilingual, task)
    audio = await asyncio.to_thread(decode, req.audio, state.config.max_audio_seconds)
    opts = DecodeOptions(
        task=task,
        language=req.language if state.engine.multilingual else "en",
        prompt=req.prompt,
        temperature=req.temperature,
        word_timestamps=req.word_timestamps,
    )
    job = state.engine.submit(audio, opts)
    state.metrics.audio_seconds.inc(audio.size / 16000)
    if req.stream:
        ids = StreamIds.new(task, req.model)
        lines = _sse_events(job, ids, req.stream_include_usage)
        return await _stream(request, state, job, lines)
    try:
        result = await _collect(job)
    finally:
        job.cancel()
    return _render(req, result)


def _vllm_unavailable(state: State, e: ApiError) -> ApiError:
    """The engine's 503 in vLLM's words: a full queue is QueueOverflowError."""
    if state.engine.ready:
        return vllm_flavor.busy()
    return ApiError(e.message, e.status, err_type="Service Unavailable")


def _vllm_admit(state: State) -> None:
    try:
        state.engine.admit()
    except ApiError as e:
        raise _vllm_unavailable(state, e) from e


async def _serve_vllm(request: web.Request, state: State, task: str) -> web.StreamResponse:
    """vLLM's order: parse and validate the form, check model and admission, the
    response_format and language, decode the audio, then the sampling parameters."""
    engine = state.engine
    form = await read_form(request, state.config.max_file_bytes, vllm=True)
    req = vllm_flavor.validate(
        form, state.config.name, task, engine.multilingual, lambda: _vllm_admit(state)
    )
    audio = await asyncio.to_thread(decode, req.audio, state.config.max_audio_seconds, True)
    vllm_flavor.check_temperature(req.temperature)
    opts = DecodeOptions(
        task=task,
        language=req.language if engine.multilingual else "en",
        prompt=req.prompt,
        temperature=req.temperature,
        word_timestamps=False,
    )
    try:
        job = engine.submit(audio, opts)
    except ApiError as e:
        raise _vllm_unavailable(state, e) from e
    state.metrics.audio_seconds.inc(audio.size / 16000)
    if req.stream:
        # Decoder prompt: [<|prev|> prompt] <|startoftranscript|><|lang|><|task|><|notimestamps|>,
        # plus one audio token per 10 ms mel frame (Whisper's get_num_audio_tokens).
        decoder = 4 + (engine.count_tokens(f"<|prev|>{req.prompt}") if req.prompt else 0)

        def prompt_tokens(duration: float) -> int:
            return decoder + math.ceil(duration * 16000 / 160)

        ids = vllm_flavor.stream_ids(task, req.model, request.headers.get("X-Request-Id"))
        detokenize = _detokenizer(engine) if state.config.stream_per_token else None
        lines = vllm_flavor.sse_events(
            job, ids, req, engine.timestamp_begin, prompt_tokens, detokenize
        )
        return await _stream(request, state, job, lines)
    try:
        result = await _collect(job)
    finally:
        job.cancel()
    return vllm_flavor.json_response(vllm_flavor.render(req, result, task, engine.timestamp_begin))


def _detokenizer(engine: Engine) -> Callable[[Sequence[int]], str]:
    """Token ids to text with the model's own tokenizer (faster-whisper's, special tokens
    dropped), for the per-token stream."""
    tokenizer = engine.model.hf_tokenizer

    def detokenize(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(ids)))

    return detokenize


async def _collect(job: DecodeJob) -> Result:
    language, duration = "en", 0.0
    segments: list[Segment] = []
    async with contextlib.aclosing(job.events()) as events:
        async for item in events:
            if isinstance(item, DecodeInfo):
                language, duration = item.language, item.duration
            else:
                segments.append(item)
    text = "".join(s.text for s in segments)
    return Result(text, language, duration, tuple(segments))


def _render(req: TranscriptionRequest, result: Result) -> web.Response:
    fmt = req.response_format
    if fmt == "json":
        return web.json_response(render_json(result))
    if fmt == "verbose_json":
        return web.json_response(render_verbose(result, req.word_timestamps))
    if fmt == "text":
        return web.Response(text=render_text(result), content_type="text/plain")
    if fmt == "srt":
        return web.Response(text=render_srt(result.segments), content_type="application/x-subrip")
    return web.Response(text=render_vtt(result.segments), content_type="text/vtt")


async def _sse_events(
    job: DecodeJob, ids: StreamIds, include_usage: bool
) -> AsyncGenerator[str, None]:
    """SSE lines: a delta per segment as decoded, finish_reason "stop" closing each 30 s window."""
    duration = 0.0
    tokens = 0
    seek: int | None = None
    async with contextlib.aclosing(job.events()) as events:
        async for item in events:
            if isinstance(item, DecodeInfo):
                duration = item.duration
                continue
            if seek is not None and item.seek != seek:
                yield sse_delta(ids, "", "stop")
            seek = item.seek
            tokens += len(item.tokens)
            yield sse_delta(ids, item.text)
    yield sse_delta(ids, "", "stop")
    if include_usage:
        yield sse_usage(ids, 0, tokens, usage_seconds(duration))


async def _stream(
    request: web.Request, state: State, job: DecodeJob, events: AsyncGenerator[str, None]
) -> web.StreamResponse:
    if state.config.vllm:  # Starlette's StreamingResponse(media_type="text/event-stream")
        headers = {"Content-Type": "text/event-stream; charset=utf-8"}
    else:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    resp = web.StreamResponse(headers=headers)
    vllm = state.config.vllm
    try:
        await resp.prepare(request)
        async with contextlib.aclosing(events) as lines:
            async for line in lines:
                await resp.write(line.encode())
        await resp.write(SSE_DONE.encode())
    except ConnectionError as e:
        # Client went away (aiohttp raises ClientConnectionResetError, a ConnectionError).
        job.cancel()
        log.info("stream client gone: %s", e)
        return resp
    except asyncio.CancelledError:
        job.cancel()
        await _stream_error(resp, ApiError("The server is shutting down.", 503), vllm)
        raise
    except ApiError as e:
        await _stream_error(resp, e, vllm)
    except Exception as e:
        log.exception("decode failed mid-stream")
        err = ApiError(f"Decoding failed: {type(e).__name__}: {e}", 500)
        await _stream_error(resp, err, vllm)
    finally:
        job.cancel()
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


async def _stream_error(resp: web.StreamResponse, err: ApiError, vllm: bool = False) -> None:
    line = vllm_flavor.sse_error(err) if vllm else sse_error(err.body())
    with contextlib.suppress(ConnectionError, RuntimeError, asyncio.CancelledError):
        await resp.write((line + SSE_DONE).encode())
