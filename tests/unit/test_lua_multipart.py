"""The request side's multipart reader (control_plane/filters/multipart.lua), run by a
Lua 5.1 interpreter over a fake Envoy buffer.

The gateway routes by the `model` this reader finds, the backend serves the one
aiohttp finds: whenever the reader accepts a body, what it read must be what
aiohttp reads (a hand-made hostile corpus, then hypothesis-generated bodies), and
every rule of the reader is pinned by a case that breaks without it. The same
bodies go through the real Envoy in tests/e2e/test_e2e_parser_property.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings

from control_plane.xds.translator.lua import multipart_source
from testkit import lua
from testkit.lua import LUA, NO_LUA
from testkit.multipart_forms import (
    CTYPE,
    FILE_CD,
    HOSTILE,
    WANTED,
    AioForm,
    Case,
    aiohttp_form,
    audio,
    bodies,
    form,
    model,
    part,
)

pytestmark = pytest.mark.skipif(LUA is None, reason=NO_LUA)
WINDOW = 1048576


@dataclass(frozen=True)
class Read:
    """What the reader answered: no boundary, fields (name -> (value, offset)) or an error."""

    boundary: bytes | None
    fields: dict[str, tuple[bytes, int]] | None = None
    status: int | None = None
    param: str | None = None
    message: str = ""
    fetched: int = 0  # bytes copied out of the body
    largest: int = 0  # the largest single copy

    @property
    def model(self) -> bytes | None:
        assert self.fields is not None
        return self.fields["model"][0] if "model" in self.fields else None


def lua_read(
    body: bytes, ctype: str = CTYPE, wanted: dict[str, int] = WANTED, window: int | None = None
) -> Read:
    path = lua.with_file(body)
    try:
        spec = ",".join(f"{k}={v}" for k, v in wanted.items())
        out, _ = lua.run("multipart", multipart_source(), path, ctype, spec, str(window or ""))
    finally:
        path.unlink()
    lines = out.splitlines()
    if lines == ["NOBOUNDARY"]:
        return Read(None)
    boundary = bytes.fromhex(lines[0].split()[1])
    fetched, largest = (int(x) for x in lines[-1].split()[1:])
    if lines[1].startswith("ERR"):
        _, status, param, message = lines[1].split(" ")
        return Read(boundary, None, int(status), None if param == "-" else param,
                    bytes.fromhex(message).decode(), fetched, largest)  # fmt: skip
    fields = {}
    for line in lines[2:-1]:
        _, name, offset, value = [*line.split(" "), ""][:4]
        fields[name] = (bytes.fromhex(value), int(offset))
    return Read(boundary, fields, fetched=fetched, largest=largest)


def assert_agrees(body: bytes, ctype: str, read: Read, aio: AioForm) -> None:
    """The property: what the reader accepts, aiohttp reads the same way (or refuses)."""
    if read.fields is None:
        return
    for value, offset in read.fields.values():
        assert body[offset : offset + len(value)] == value, "offset contract"
    if aio.parts is not None:
        for name in WANTED:
            got = [v for n, v in aio.parts if n == name]
            want = [read.fields[name][0]] if name in read.fields else []
            assert got == want, (name, got, want)
    if aio.fields is not None and read.model is not None:
        assert aio.fields.get("model") == read.model.decode("utf-8", errors="replace")


CD_MODEL = 'Content-Disposition: form-data; name="model"'
CD_FILE = 'Content-Disposition: form-data; name="file"'


# --- the boundary --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctype", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ("multipart/form-data; Boundary=abc", b"abc"),
        ("multipart/form-data;BOUNDARY=AbC", b"AbC"),
        ("MULTIPART/Form-Data ; boundary = abc ; charset=utf-8", b"abc"),
        ("multipart/form-data; charset=utf-8; boundary=abc", b"abc"),
        ('multipart/form-data; boundary="abc"', b"abc"),
        ('multipart/form-data; boundary="a b=c?"', b"a b=c?"),
        ("multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
         b"----WebKitFormBoundary7MA4YWxkTrZu0gW"),
        ("multipart/form-data; boundary=" + "b" * 70, b"b" * 70),
        ("multipart/form-data; boundary=" + "b" * 71, None),
        ("multipart/form-data; boundary=", None),
        ('multipart/form-data; boundary=""', None),
        ("multipart/form-data", None),
        ("multipart/form-data; charset=utf-8", None),
        ("multipart/form-data; boundary=abc; boundary=xyz", None),
        # aiohttp splits on every ';' and would take `evil`; a proper parser `good`.
        ('multipart/form-data; foo="x;boundary=evil"; boundary=good', None),
        ('multipart/form-data; boundary="abc', None),
        ('multipart/form-data; boundary=abc"', None),
        ('multipart/form-data; boundary="abc "', None),
        ('multipart/form-data; boundary=" abc"', None),
        ('multipart/form-data; boundary="----=_Part_0.1%x-(a)+[b]!"', b"----=_Part_0.1%x-(a)+[b]!"),
        ('multipart/form-data; boundary="a\\b"', None),
        ('multipart/form-data; boundary="a\tb"', None),
        ("multipart/form-data; boundary=\u00e9", None),
        ("multipart/form-data; boundary", None),
        ("multipart/mixed; boundary=abc", None),
        ("multipart/form-datax; boundary=abc", None),
        ("text/plain; x=multipart/form-data; boundary=abc", None),
    ],
)  # fmt: skip
def test_boundary(ctype: str, boundary: bytes | None) -> None:
    assert lua_read(b"", ctype).boundary == boundary


# --- the fields ----------------------------------------------------------------------


def test_fields_and_exact_offsets_wherever_they_sit() -> None:
    body = form(
        audio(),
        part('form-data; name="response_format"', b"srt"),
        model(b"m/a"),
        part('form-data; name="stream"', b"false"),
        part('form-data; name="prompt"', b"hello"),
    )
    read = lua_read(body)
    assert read.fields is not None
    assert {k: v for k, (v, _) in read.fields.items()} == {
        "model": b"m/a", "response_format": b"srt", "stream": b"false",
    }  # fmt: skip
    for value, offset in read.fields.values():
        assert body[offset : offset + len(value)] == value


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
async def test_hostile_corpus(case: Case) -> None:
    read = lua_read(case.body, case.ctype)
    if case.status is None:
        assert read.fields is not None, read.message
        assert read.model == case.model
    else:
        assert read.status == case.status
        assert case.message in read.message, read.message
    # A window smaller than any needle: the same answer.
    small = lua_read(case.body, case.ctype, window=3)
    assert (small.fields, small.status, small.message) == (read.fields, read.status, read.message)
    aio = await aiohttp_form(case.body, case.ctype)
    assert_agrees(case.body, case.ctype, read, aio)
    if case.status is None:
        assert (aio.parts is None) == case.backend_refuses


def test_duplicates_name_the_field() -> None:
    for name in WANTED:
        read = lua_read(form(part(f'form-data; name="{name}"', b"a"), audio(),
                             part(f"form-data; name={name}", b"a")))  # fmt: skip
        assert (read.status, read.param, read.message) == (400, name, f"duplicate '{name}' field")
    # Fields the gateway does not read may repeat (timestamp_granularities[] does).
    rep = part('form-data; name="timestamp_granularities[]"', b"word")
    assert lua_read(form(model(b"m/a"), rep, rep, audio())).model == b"m/a"


@pytest.mark.parametrize(("name", "limit"), sorted(WANTED.items()))
def test_value_limits(name: str, limit: int) -> None:
    ok = lua_read(form(part(f'form-data; name="{name}"', b"x" * limit)))
    assert ok.fields is not None and ok.fields[name][0] == b"x" * limit
    over = lua_read(form(part(f'form-data; name="{name}"', b"x" * (limit + 1))))
    assert (over.status, over.param) == (400, name)
    assert f"longer than {limit} bytes" in over.message


@pytest.mark.parametrize("ch", [0, 1, 9, 10, 13, 31, 127])
def test_control_characters(ch: int) -> None:
    read = lua_read(form(model(b"m/" + bytes([ch]) + b"a")))
    assert (read.status, read.param) == (400, "model")


@pytest.mark.parametrize(
    ("disposition", "field"),
    [
        ('form-data; name="model"', "model"),
        ("form-data;name=model", "model"),
        ('form-data; NAME="model"', "model"),
        ('Form-Data; Name = "model" ', "model"),
        ('form-data; filename="model"; name="file"', "file"),
        ('form-data; name="model_x"', "model_x"),
        ('form-data; name="model"; filename="a;b.wav"', "model"),
        ('form-data; xname="model"; name="prompt"', "prompt"),
        ("form-data; name=\"file\"; filename*=UTF-8''%C3%A9.wav", "file"),
    ],
)
def test_the_name_parameter_alone_names_a_field(disposition: str, field: str) -> None:
    read = lua_read(form(part(disposition, b"m/a")), wanted={field: 16})
    assert read.fields is not None, read.message
    assert read.fields[field][0] == b"m/a"


@pytest.mark.parametrize(
    "disposition",
    [
        'form-data; xname="model"',  # no name at all
        'form-data; filename="model"',
        'attachment; name="model"',
        'form-data; name="model"; name="x"',
        'form-data; name="x"; NAME="model"',
        "form-data; name*=UTF-8''model",
        "form-data; name*0=model",
        'form-data; name="/model"',
        'form-data; name="mo\\del"',
        "form-data; name=model x",
        "form-data; name=model ;x=y",  # aiohttp reads no name from it
        'form-data; name="model"; filename="a;b;c"',
        'form-data; name="model"; filename="a;b" ;x=y',
        'form-data; name="model";',
        'form-data; name="model"; x',
        'form-data; name="mo"del"',
        "form-data; name=",
        "",
    ],
)
def test_malformed_dispositions_are_refused(disposition: str) -> None:
    read = lua_read(form(part(disposition, b"m/a") if disposition else part("", b"m/a", "X: y")))
    assert read.status == 400, read


@pytest.mark.parametrize(
    "headers",
    [
        ["Content-Disposition : form-data; name=\"model\""],
        ["Content-Disposition: form-data;\r\n name=\"model\""],  # obs-fold
        ["Content-Disposition: form-data; name=\"model\"\nX: y"],  # bare LF
        ["Content-Disposition: form-data; name=\"model\"\rX: y"],  # bare CR
        [CD_MODEL, "X: a\x01b"],
        [CD_MODEL, "no colon"],
        [CD_MODEL, "--abc"],
        [CD_MODEL, "Content-Type: text/plain",
         "content-type: text/plain"],
        [CD_MODEL, "Content-Encoding: gzip"],
        [CD_MODEL, "Content-Transfer-Encoding: base64"],
        [CD_FILE, "Content-Transfer-Encoding: quoted-printable"],
        [CD_MODEL, "Content-Type: text/plain; charset=utf-16"],
        [CD_MODEL, "Content-Type: text/plain; charset=\"latin1\""],
        [CD_FILE, "Content-Type:  Multipart/mixed; boundary=z"],
    ],
)  # fmt: skip
def test_malformed_or_decoded_part_headers_are_refused(headers: list[str]) -> None:
    raw = "".join(f"{h}\r\n" for h in headers).encode() + b"\r\nm/a"
    read = lua_read(form(raw))
    assert read.status == 400, read


@pytest.mark.parametrize(
    "headers",
    [
        [CD_MODEL.lower(), "Content-Type: text/plain; charset=UTF-8"],
        ["Content-Disposition:form-data; name=\"model\"", "Content-Transfer-Encoding: 8bit"],
        ["Content-Disposition: form-data; name=\"model\"\t", "X-Anything: \u00e9"],
        [CD_MODEL, "Content-Encoding: identity"],
    ],
)  # fmt: skip
def test_plain_part_headers_are_accepted(headers: list[str]) -> None:
    raw = "".join(f"{h}\r\n" for h in headers).encode() + b"\r\nm/a"
    assert lua_read(form(raw)).model == b"m/a"


def test_a_file_part_may_be_encoded_and_typed() -> None:
    file = part(FILE_CD, b"\x1f\x8b gz", "Content-Encoding: gzip", "Content-Type: audio/ogg")
    assert lua_read(form(model(b"m/a"), file)).model == b"m/a"


def test_header_block_limit() -> None:
    pad = "X-Pad: " + "p" * (16384 - 60)
    assert lua_read(form(part('form-data; name="model"', b"m/a", pad))).model == b"m/a"
    read = lua_read(form(part('form-data; name="model"', b"m/a", pad + "p" * 100), audio()))
    assert read.status == 400 and "16384" in read.message


def test_structure() -> None:
    ok = form(model(b"m/a"))
    # No parts at all: accepted, no fields (the caller asks for a model).
    assert lua_read(form()).fields == {}
    assert lua_read(b"--abc--").fields == {}
    # An empty value is a value.
    assert lua_read(form(model(b""))).model == b""
    # A close delimiter at the very end, with padding, no CRLF.
    assert lua_read(ok.removesuffix(b"\r\n") + b"  ").model == b"m/a"
    for bad in [
        b"",
        b"--abc",
        b"--abc\r\n",
        ok.removesuffix(b"--\r\n"),  # ends on a delimiter, not the close
        ok.removesuffix(b"\r\n--abc--\r\n"),
        b"--abc\r\n\r\nm/a\r\n--abc--",  # a part with no headers
        b"--abcd\r\n" + ok,  # the first --abc is not a delimiter
        b"--abc\x0b\r\n" + ok,
    ]:
        read = lua_read(bad)
        assert read.status == 400 and read.param is None, (bad, read)
    many = form(*[part('form-data; name="p"', b"")] * 257)
    assert "too many parts" in lua_read(many).message
    assert lua_read(form(*[part('form-data; name="p"', b"")] * 256)).fields == {}


def test_delimiters_at_every_window_position() -> None:
    """Needles that straddle a window edge: every small window gives the same answer."""
    body = form(
        part(FILE_CD, b"x\r\n--abcdef" * 3), model(b"m/a"), part('form-data; name="s"', b"1")
    )
    whole = lua_read(body)
    assert whole.model == b"m/a"
    for window in range(1, 48):
        read = lua_read(body, window=window)
        assert (read.fields, read.status) == (whole.fields, None), window


def test_a_25_mb_upload_is_read_in_windows() -> None:
    """curl's order (model after the file); the file is full of delimiter lookalikes.
    The body is never copied whole and each byte is copied about once."""
    chunk = b"\x00\x01RIFF\r\n--abcX\r\n--\r\n" + bytes(range(256)) * 3
    file = chunk * (25 * 2**20 // len(chunk))
    body = form(part(FILE_CD, file, "Content-Type: audio/wav"), model(b"m/a"))
    read = lua_read(body)
    assert read.model == b"m/a"
    assert read.fields is not None
    offset = read.fields["model"][1]
    assert body[offset : offset + 3] == b"m/a"
    assert read.largest <= WINDOW + 80
    assert read.fetched < len(body) * 1.01 + 65536


# --- the property: the reader and aiohttp agree ------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
async def test_reader_agrees_with_aiohttp(generated: tuple[str, bytes]) -> None:
    ctype, body = generated
    read = lua_read(body, ctype)
    aio = await aiohttp_form(body, ctype)
    assert_agrees(body, ctype, read, aio)
    event("reader " + ("accepts" if read.fields is not None else "refuses"))
    event("aiohttp " + ("accepts" if aio.parts is not None else "refuses"))
    if read.fields is not None and read.model is not None and aio.parts is not None:
        event("both read a model")
    if aio.parts is not None and sum(n == "model" for n, _ in aio.parts) > 1:
        assert read.fields is None, "two model parts for aiohttp: the reader must refuse"
    small = lua_read(body, ctype, window=5)
    assert (small.fields, small.status, small.message) == (read.fields, read.status, read.message)
