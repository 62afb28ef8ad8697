"""long_audio.server without sockets: the client's form as read (read_form on a mocked
request), each piece's form as sent (piece_form, encoded to bytes and read back by
aiohttp, whisper_backend and the gateway's own Lua reader), and a failed piece's error.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import FormData, web

from control_plane.xds.translator.lua import multipart_source
from long_audio.server import FIELD_MAX, Form, _piece_error, piece_form, read_form
from testkit import lua
from testkit.lua import LUA, NO_LUA
from testkit.multipart_forms import WANTED, aiohttp_form, mocked_request

WAV = b"RIFF\x24\x00\x00\x00WAVEfmt \r\n--not-a-boundary\r\n\x00\xff"


async def encode(data: FormData) -> tuple[bytes, str]:
    """The body and content type aiohttp's client would send."""
    writer = data()
    return await writer.as_bytes(), writer.content_type


def client_form() -> FormData:
    """A client's upload: the file between fields, a list field, a unicode prompt."""
    data = FormData(quote_fields=False)
    data.add_field("model", "openai/whisper-tiny.en")
    data.add_field("prompt", 'Café "quoted" \\ ok')
    data.add_field("file", WAV * 3, filename="talk.ogg", content_type="audio/ogg")
    data.add_field("timestamp_granularities[]", "word")
    data.add_field("timestamp_granularities[]", "segment")
    data.add_field("response_format", "verbose_json")
    return data


# --- read_form -------------------------------------------------------------------------


async def test_read_form_keeps_fields_in_order_and_spools_the_file(tmp_path: Path) -> None:
    body, ctype = await encode(client_form())
    upload = tmp_path / "upload"
    form = await read_form(mocked_request(body, ctype), upload, 10_000)
    assert form.fields == [
        ("model", "openai/whisper-tiny.en"),
        ("prompt", 'Café "quoted" \\ ok'),
        ("file", ""),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
        ("response_format", "verbose_json"),
    ]
    assert (form.file_at, form.filename) == (2, "talk.ogg")
    assert upload.read_bytes() == WAV * 3
    assert form.value("response_format") == "verbose_json"
    assert form.value("stream") is None


async def test_read_form_value_is_the_last_one_sent(tmp_path: Path) -> None:
    """A field sent twice: the backends keep the last, so the splitter decides by it too."""
    data = FormData(quote_fields=False)
    for v in ("json", "text"):
        data.add_field("response_format", v)
    data.add_field("file", b"x", filename="a.wav")
    form = await read_form(mocked_request(*await encode(data)), tmp_path / "u", 100)
    assert form.value("response_format") == "text"


async def test_read_form_without_a_file(tmp_path: Path) -> None:
    data = FormData(quote_fields=False)
    data.add_field("model", "m")
    data.add_field("x", b"", filename="a.wav")  # a file under another name is no file
    form = await read_form(mocked_request(*await encode(data)), tmp_path / "u", 100)
    assert form.file_at == -1
    assert not (tmp_path / "u").exists()


def raw_form(*parts: tuple[str, bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    """A body written by hand: (Content-Disposition parameters, value) per part."""
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; {cd}\r\n\r\n".encode() + value + b"\r\n"
        for cd, value in parts
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def test_read_form_file_without_filename_is_called_audio(tmp_path: Path) -> None:
    body, ctype = raw_form(('name="file"', b"abc"), ('name="model"', b"m"))
    form = await read_form(mocked_request(body, ctype), tmp_path / "u", 100)
    assert (form.file_at, form.filename) == (0, "audio")
    assert form.fields == [("file", ""), ("model", "m")]
    assert (tmp_path / "u").read_bytes() == b"abc"


async def test_read_form_refuses_a_file_over_the_limit(tmp_path: Path) -> None:
    body, ctype = await encode(client_form())
    with pytest.raises(web.HTTPRequestEntityTooLarge):
        await read_form(mocked_request(body, ctype), tmp_path / "u", len(WAV) * 3 - 1)
    # Exactly at the limit is accepted.
    await read_form(mocked_request(body, ctype), tmp_path / "u", len(WAV) * 3)


async def test_read_form_refuses_a_long_field(tmp_path: Path) -> None:
    data = FormData(quote_fields=False)
    data.add_field("prompt", "p" * (FIELD_MAX + 1))
    data.add_field("file", b"x", filename="a.wav")
    with pytest.raises(web.HTTPBadRequest):
        await read_form(mocked_request(*await encode(data)), tmp_path / "u", 100)


async def test_read_form_non_utf8_field_is_a_client_error(tmp_path: Path) -> None:
    body, ctype = raw_form(
        ('name="prompt"', b"caf\xe9"), ('name="file"; filename="a.wav"', b"RIFF")
    )
    req = mocked_request(body, ctype)
    try:
        await read_form(req, tmp_path / "u", 100)
    except web.HTTPException as e:
        assert 400 <= e.status < 500
    except UnicodeDecodeError as e:
        pytest.fail(f"not answered as a client error: {e!r}")


# --- piece_form ------------------------------------------------------------------------


async def piece_body(tmp_path: Path, index: int = 7) -> tuple[bytes, str, bytes]:
    """The client's form read by read_form, then piece `index`'s form encoded."""
    form = await read_form(mocked_request(*await encode(client_form())), tmp_path / "u", 10_000)
    wav = b"RIFF" + bytes(range(256)) * 4
    body, ctype = await encode(piece_form(form, wav, index))
    return body, ctype, wav


async def test_piece_form_keeps_order_and_puts_the_piece_at_the_file(tmp_path: Path) -> None:
    body, ctype, wav = await piece_body(tmp_path)
    read = await aiohttp_form(body, ctype)
    assert read.parts == [
        ("model", b"openai/whisper-tiny.en"),
        ("prompt", 'Café "quoted" \\ ok'.encode()),
        ("file", wav),
        ("timestamp_granularities[]", b"word"),
        ("timestamp_granularities[]", b"segment"),
        ("response_format", b"verbose_json"),
    ]
    # whisper_backend's own reader sees the same fields (it reads the list separately).
    assert read.fields is not None
    assert read.fields["model"] == "openai/whisper-tiny.en"
    assert read.fields["prompt"] == 'Café "quoted" \\ ok'


async def test_piece_form_headers_as_sent(tmp_path: Path) -> None:
    """Brackets and UTF-8 raw in the names (quote_fields=False): vLLM's python-multipart
    does not read RFC 2231 `name*=` nor %-escapes, so `timestamp_granularities%5B%5D`
    would be a field it ignores. The piece is a WAV named by its index."""
    body, ctype, _ = await piece_body(tmp_path, 7)
    assert ctype.startswith("multipart/form-data; boundary=")
    assert b'name="timestamp_granularities[]"' in body
    assert b"%5B" not in body and b"name*=" not in body
    file_head = body[: body.index(b"RIFF")].rsplit(b"\r\n--", 1)[-1]  # the file part's
    assert b'name="file"; filename="piece-0007.wav"' in file_head
    assert b"Content-Type: audio/wav" in file_head
    assert b"talk.ogg" not in body, "the client's filename names the whole upload, not a piece"


@pytest.mark.skipif(LUA is None, reason=NO_LUA)
async def test_piece_form_is_routed_by_the_gateways_lua_reader(tmp_path: Path) -> None:
    """Each piece goes back through the listener: its Lua multipart reader must accept it
    and find the client's model and response_format (route_by_model.lua)."""
    body, ctype, _ = await piece_body(tmp_path)
    path = lua.with_file(body)
    try:
        spec = ",".join(f"{k}={v}" for k, v in WANTED.items())
        out, _ = lua.run("multipart", multipart_source(), path, ctype, spec, "")
    finally:
        path.unlink()
    lines = out.splitlines()
    assert not lines[1].startswith("ERR"), lines[1]
    fields = {}
    for line in lines[2:-1]:
        _, name, offset, value = [*line.split(" "), ""][:4]
        fields[name] = bytes.fromhex(value)
        assert body[int(offset) : int(offset) + len(fields[name])] == fields[name]
    assert fields == {"model": b"openai/whisper-tiny.en", "response_format": b"verbose_json"}


def test_piece_form_of_a_form_with_the_file_last() -> None:
    form = Form(fields=[("model", "m"), ("file", "")], file_at=1, filename="a.mp3")
    data = piece_form(form, b"RIFF", 0)
    body = asyncio.run(data().as_bytes())
    assert body.index(b'name="model"') < body.index(b'name="file"; filename="piece-0000.wav"')
    assert body.count(b"form-data; name=") == 2


# --- _piece_error ----------------------------------------------------------------------


def test_piece_error_of_the_gateways_json_error() -> None:
    body = {"error": {"message": "rate limited", "type": "rate_limit_error", "param": None,
                      "code": 429, "extra": 1}}  # fmt: skip
    assert _piece_error(429, json.dumps(body).encode()) == {
        "message": "rate limited",
        "type": "rate_limit_error",
        "param": None,
    }


def test_piece_error_keeps_a_param() -> None:
    body = json.dumps({"error": {"message": "bad", "type": "invalid_request_error",
                                 "param": "language"}}).encode()  # fmt: skip
    assert _piece_error(400, body)["param"] == "language"


@pytest.mark.parametrize(
    ("status", "body", "message", "kind"),
    [
        (503, b"upstream connect error or disconnect/reset before headers", None, "server_error"),
        (502, b"", "HTTP 502", "server_error"),
        (404, b"  \n", "HTTP 404", "invalid_request_error"),
        (500, b'{"error": "a string, not an object"}', None, "server_error"),
        (500, b'["error"]', None, "server_error"),
        (400, b'{"detail": "Not here"}', None, "invalid_request_error"),
        (500, b"\xff\xfe not utf-8", None, "server_error"),
        (500, b"x" * 1000, "x" * 300, "server_error"),
    ],
)
def test_piece_error_of_anything_else(
    status: int, body: bytes, message: str | None, kind: str
) -> None:
    """Envoy's plain-text replies and odd bodies: the text itself (cut short), its class
    from the status."""
    err = _piece_error(status, body)
    expected = body.decode(errors="replace").strip() if message is None else message
    assert err == {"message": expected, "type": kind, "param": None}
