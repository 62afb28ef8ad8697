"""The splitter service: one long upload in, its pieces through the gateway, one answer out.

Envoy sends here only what the request-side Lua chose to split (docs/long-audio.md).
The upload is spooled to disk, decoded once, cut at silence, and each piece goes back
through Envoy's own listener as an ordinary request with the client's form fields and
key: routing, health, retries, limits and metering apply to it as to any other. Pieces
run concurrently (bounded per upload and overall); a stream sends each piece's events
once every earlier piece has been sent. Nothing stays on disk after the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from long_audio.cuts import plan_pieces
from long_audio.decode import DecodeError, decode_to_pcm, pcm_energy, piece_wav
from long_audio.stitch import Piece, StitchError, stitch, time_range
from long_audio.stream_join import StreamJoin

log = logging.getLogger("long_audio")

#: The client's headers each piece carries: its key (checked again at the listener),
#: and the stream format the request-side Lua chose for the model.
FORWARDED = (
    "authorization",
    "x-api-key",
    "openai-organization",
    "openai-project",
    "x-stream-format",
)
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FIELD_MAX = 64 * 1024  # a form field other than the file (a prompt is the longest)
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Settings:
    upstream: str  # the gateway's listener, e.g. http://127.0.0.1:8000
    piece_s: float
    pieces_per_request: int
    pieces_in_flight: int
    max_upload_bytes: int
    ca_file: str | None = None  # the listener's certificate, when it speaks TLS
    spool_dir: str | None = None  # None: the system's temporary folder


@dataclass
class Form:
    """The client's form as sent: its fields in order, the file's place among them."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    file_at: int = -1
    filename: str = "audio"

    def value(self, name: str) -> str | None:
        return next((v for n, v in reversed(self.fields) if n == name), None)


class PieceFailed(Exception):
    """A piece the gateway answered with an error: the whole upload fails with it."""

    def __init__(self, start_s: float, end_s: float, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.start_s, self.status = start_s, status
        self.error = {
            **error,
            "message": f"the audio {time_range(start_s, end_s)} failed: {error.get('message')}",
            "code": status,
        }


def _earliest(group: BaseExceptionGroup[PieceFailed]) -> PieceFailed:
    """The failure nearest the audio's start: the one a client reading in order meets."""
    return min((e for e in group.exceptions if isinstance(e, PieceFailed)), key=lambda e: e.start_s)


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


def _piece_error(status: int, body: bytes) -> dict[str, Any]:
    try:
        err = json.loads(body)["error"]
        if isinstance(err, dict):
            return {k: err.get(k) for k in ("message", "type", "param")}
    except (ValueError, KeyError, TypeError):
        pass
    kind = "invalid_request_error" if status < 500 else "server_error"
    text = body.decode(errors="replace").strip()[:300] or f"HTTP {status}"
    return {"message": text, "type": kind, "param": None}


async def read_form(request: web.Request, upload: Path, limit: int) -> Form:
    """The multipart form, the file spooled to `upload` a chunk at a time."""
    form = Form()
    reader = await request.multipart()
    size = 0
    async for part in reader:
        if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
            raise web.HTTPBadRequest(reason="nested or unnamed multipart part")
        if part.name == "file":
            form.file_at, form.filename = len(form.fields), part.filename or "audio"
            form.fields.append(("file", ""))
            with upload.open("wb") as out:
                while chunk := await part.read_chunk(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                    out.write(chunk)
        else:
            value = await part.read(decode=False)
            if len(value) > FIELD_MAX:
                raise web.HTTPBadRequest(reason=f"the field {part.name!r} is too long")
            try:
                form.fields.append((part.name, value.decode()))
            except UnicodeDecodeError as e:
                raise web.HTTPBadRequest(reason=f"the field {part.name!r} is not UTF-8") from e
    return form


def piece_form(form: Form, wav: bytes, index: int) -> aiohttp.FormData:
    data = aiohttp.FormData(quote_fields=False)
    for i, (name, value) in enumerate(form.fields):
        if i == form.file_at:
            data.add_field("file", wav, filename=f"piece-{index:04d}.wav", content_type="audio/wav")
        else:
            data.add_field(name, value)
    return data


@dataclass
class Job:
    """One upload being served: its pieces and what they share."""

    settings: Settings
    session: aiohttp.ClientSession
    slots: asyncio.Semaphore  # the whole splitter's
    url: str
    form: Form
    headers: dict[str, str]
    pcm: Path
    spans: list[tuple[float, float]]
    mine: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.mine = asyncio.Semaphore(self.settings.pieces_per_request)

    def _data(self, i: int) -> aiohttp.FormData:
        return piece_form(self.form, piece_wav(self.pcm, *self.spans[i]), i)

    async def _send(
        self, i: int, read: Callable[[aiohttp.ClientResponse], Awaitable[None]]
    ) -> None:
        """POST piece i through the listener and hand a 200 to `read`; anything else,
        the listener unreachable or the answer cut short, is PieceFailed."""
        start, end = self.spans[i]
        async with self.mine, self.slots:
            try:
                async with self.session.post(
                    self.url, data=self._data(i), headers=self.headers
                ) as r:
                    if r.status != 200:
                        raise PieceFailed(
                            start, end, r.status, _piece_error(r.status, await r.read())
                        )
                    await read(r)
            except aiohttp.ClientError as e:
                error = {
                    "message": f"its answer broke off ({e!r})",
                    "type": "server_error",
                    "param": None,
                }
                raise PieceFailed(start, end, 502, error) from e

    async def whole(self, i: int) -> Piece:
        """Piece i's answer, whole (json, text, srt, vtt, verbose_json)."""
        bodies: list[bytes] = []

        async def read(r: aiohttp.ClientResponse) -> None:
            bodies.append(await r.read())

        await self._send(i, read)
        return Piece(*self.spans[i], bodies[0])

    async def events(self, i: int, out: asyncio.Queue[bytes | None]) -> None:
        """Piece i's stream, event by event into `out`, then None."""

        async def read(r: aiohttp.ClientResponse) -> None:
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    await out.put(event)
            if buf.strip():
                await out.put(buf)

        await self._send(i, read)
        await out.put(None)


class Splitter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots = asyncio.Semaphore(settings.pieces_in_flight)
        self.session: aiohttp.ClientSession | None = None

    async def start(self, _app: web.Application) -> None:
        ctx = (
            ssl.create_default_context(cafile=self.settings.ca_file)
            if self.settings.ca_file
            else None
        )
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=ctx if ctx else True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )

    async def close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_upload_bytes + 1024 * 1024)
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.close)
        app.router.add_get("/health", self.health)
        for task in ("transcriptions", "translations"):
            app.router.add_post(f"/v1/audio/{task}", self.handle)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        spool = Path(tempfile.mkdtemp(prefix="whisper-split-", dir=self.settings.spool_dir))
        try:
            return await self._serve(request, spool)
        except web.HTTPException as e:
            return error_response(e.status, e.reason or "bad request", "file")
        finally:
            shutil.rmtree(spool, ignore_errors=True)

    async def _serve(self, request: web.Request, spool: Path) -> web.StreamResponse:
        upload, pcm = spool / "upload", spool / "audio.pcm"
        form = await read_form(request, upload, self.settings.max_upload_bytes)
        if form.file_at < 0:
            return error_response(400, "the form has no 'file' part", "file")
        fmt = form.value("response_format") or "json"
        if fmt not in FORMATS:
            return error_response(
                400, f"response_format must be one of {', '.join(FORMATS)}", "response_format"
            )
        try:
            duration = await asyncio.to_thread(decode_to_pcm, upload, pcm)
        except DecodeError as e:
            return error_response(400, str(e), "file")
        upload.unlink()
        energy = await asyncio.to_thread(pcm_energy, pcm)
        spans = plan_pieces(energy, duration, self.settings.piece_s)
        headers = {k: v for k in FORWARDED if (v := request.headers.get(k)) is not None}
        assert self.session is not None
        job = Job(
            self.settings, self.session, self.slots,
            self.settings.upstream + request.path, form, headers, pcm, spans,
        )  # fmt: skip
        log.info("%s: %.1f s of audio in %d pieces", request.path, duration, len(spans))
        if form.value("stream") == "true":
            return await self._stream(request, job, headers.get("x-stream-format", "openai"))
        failure: PieceFailed | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(job.whole(i)) for i in range(len(spans))]
        except* PieceFailed as group:
            failure = _earliest(group)
        if failure is not None:
            return web.json_response({"error": failure.error}, status=failure.status)
        try:
            ctype, body = stitch(fmt, [t.result() for t in tasks], duration)
        except StitchError as e:
            return error_response(502, str(e), "response_format")
        return web.Response(
            body=body, headers={"content-type": ctype, "x-long-audio-pieces": str(len(spans))}
        )

    async def _stream(self, request: web.Request, job: Job, fmt: str) -> web.StreamResponse:
        queues: list[asyncio.Queue[bytes | None]] = [asyncio.Queue() for _ in job.spans]
        join = StreamJoin(fmt)
        resp: web.StreamResponse | None = None
        failure: PieceFailed | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(job.events(i, q)) for i, q in enumerate(queues)]
                failed = False
                for q in queues:
                    first = True
                    while not failed and (raw := await q.get()) is not None:
                        out, failed = join.event(raw, first)
                        if out is None:
                            continue
                        first = False
                        if resp is None:
                            resp = await self._open_stream(request, len(job.spans))
                        await resp.write(out)
                    if failed:  # a piece's own error event went out: the rest are moot
                        for t in tasks:
                            t.cancel()
                        break
                if resp is None:
                    resp = await self._open_stream(request, len(job.spans))
                if not failed:
                    await resp.write(join.end())
        except* PieceFailed as group:
            failure = _earliest(group)
        if failure is not None:
            if resp is None:
                return web.json_response({"error": failure.error}, status=failure.status)
            err = failure.error
            event = {"type": "error", "error": err} if fmt == "openai" else {"error": err}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        assert resp is not None
        await resp.write_eof()
        return resp

    async def _open_stream(self, request: web.Request, pieces: int) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                "x-long-audio-pieces": str(pieces),
            }
        )
        await resp.prepare(request)
        return resp
