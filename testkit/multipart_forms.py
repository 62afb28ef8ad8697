"""Multipart bodies for the gateway's multipart reader: builders, a hostile corpus,
a hypothesis strategy, and what aiohttp (the backend's parser) reads from a body.

Shared by tests/unit/test_lua_multipart.py (Lua in-process against aiohttp) and the
e2e suites that send the same bodies through the real Envoy.
"""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import dataclass
from unittest import mock

from aiohttp import BodyPartReader, streams, web
from aiohttp.test_utils import make_mocked_request
from hypothesis import strategies as st

from whisper_backend.form import read_form

# The fields the gateway's Lua reads, with their limits (route_by_model.lua WANTED).
WANTED = {"model": 256, "response_format": 64, "stream": 16}
B = b"abc"
CTYPE = "multipart/form-data; boundary=abc"
FILE_CD = 'form-data; name="file"; filename="a.wav"'


def part(disposition: str, value: bytes, *headers: str) -> bytes:
    """One part: a Content-Disposition (unless disposition is empty), headers, value."""
    lines = ([f"Content-Disposition: {disposition}"] if disposition else []) + list(headers)
    return "".join(f"{h}\r\n" for h in lines).encode() + b"\r\n" + value


def form(
    *parts: bytes, boundary: bytes = B, preamble: bytes = b"", epilogue: bytes = b"\r\n"
) -> bytes:
    """A well-formed body of the parts (or of none)."""
    delim = b"--" + boundary
    if not parts:
        return preamble + delim + b"--" + epilogue
    inner = (b"\r\n" + delim + b"\r\n").join(parts)
    return preamble + delim + b"\r\n" + inner + b"\r\n" + delim + b"--" + epilogue


def model(value: bytes, disposition: str = 'form-data; name="model"') -> bytes:
    return part(disposition, value)


def audio(content: bytes = b"RIFF\x00\x01fake audio\r\n--\r\n") -> bytes:
    return part(FILE_CD, content, "Content-Type: audio/wav")


# A file whose bytes hold a delimiter lookalike and a fake model part after it.
def _fake_model_after(line: bytes) -> bytes:
    return (
        b"RIFF..." + line + b'Content-Disposition: form-data; name="model"\r\n\r\nm/b\r\nmore audio'
    )


@dataclass(frozen=True)
class Case:
    """A hostile (or tricky) body and what the gateway must answer: the model it
    routes by (status None) or its status and a piece of the message."""

    id: str
    body: bytes
    status: int | None = None  # None: accepted by the reader
    model: bytes | None = None  # the model read when accepted (None: no model field)
    message: str = ""
    ctype: str = CTYPE
    # aiohttp refuses what the reader reads as content ("\r\n--abc" + other bytes
    # ends a part for it): the gateway routes, whisper_backend answers 400.
    # python-multipart (vLLM) reads it as content, as the reader does.
    backend_refuses: bool = False


M_A = model(b"m/a")
HOSTILE: list[Case] = [
    Case("plain", form(M_A, audio()), model=b"m/a"),
    Case("model-after-file", form(audio(), M_A), model=b"m/a"),
    Case("two-model-parts", form(M_A, audio(), model(b"m/b")), 400, message="duplicate 'model'"),
    Case("upper-NAME", form(model(b"m/a", 'form-data; NAME="model"'), audio()), model=b"m/a"),
    Case("token-name", form(model(b"m/a", "form-data; name=model"), audio()), model=b"m/a"),
    Case(
        "header-case",
        form(part('FORM-DATA; name="model"', b"m/a").replace(b"Content-", b"cOnTeNt-"), audio()),
        model=b"m/a",
    ),
    Case("model_x-only", form(model(b"m/a", 'form-data; name="model_x"'), audio())),
    Case(
        "xname-model",
        form(model(b"m/a", 'form-data; xname="model"'), audio()),
        400,
        message="Content-Disposition",
    ),
    Case(
        "filename-model",
        form(model(b"m/a", 'form-data; name="file"; filename="model"')),
    ),
    Case(
        "prefix-delimiter",
        form(M_A, audio(_fake_model_after(b"\r\n--abcdef\r\n"))),
        model=b"m/a",
        backend_refuses=True,
    ),
    Case(
        "lf-fake-delimiter",
        form(M_A, audio(_fake_model_after(b"\n--abc\r\n"))),
        model=b"m/a",
    ),
    Case(
        "fake-close-then-part",
        form(audio(b"x\r\n--abc--tail\r\n"), M_A),
        model=b"m/a",
        backend_refuses=True,
    ),
    Case(
        "vt-fake-delimiter",
        form(M_A, audio(_fake_model_after(b"\r\n--abc\x0b\r\n"))),
        400,
        message="boundary line",
    ),
    Case(
        "lf-only-delimiter",
        form(M_A, audio(_fake_model_after(b"\r\n--abc\n"))),
        400,
        message="boundary line",
    ),
    Case(
        "cr-cr-lf-delimiter",
        form(M_A, audio(_fake_model_after(b"\r\n--abc\r\r\n"))),
        400,
        message="boundary line",
    ),
    Case(
        "real-delimiter-in-file",
        form(M_A, audio(_fake_model_after(b"\r\n--abc\r\n"))),
        400,
        message="duplicate 'model'",
    ),
    Case(
        "transport-padding",
        form(M_A, audio()).replace(b"--abc\r\n", b"--abc \t \r\n").replace(b"--abc--", b"--abc-- "),
        model=b"m/a",
    ),
    Case(
        "quoted-boundary",
        form(M_A, audio(), boundary=b"a'()+_,-./:=? z"),
        model=b"m/a",
        ctype='multipart/form-data; Boundary="a\'()+_,-./:=? z"',
    ),
    Case(
        "preamble-epilogue",
        form(
            M_A,
            audio(),
            preamble=b"This is a preamble.\r\nSecond line.\r\n",
            epilogue=b"\r\n" + model(b"m/b") + b"\r\n--abc--\r\n",
        ),
        model=b"m/a",
    ),
    Case(
        "boundary-in-preamble",
        b"x--abc\r\n" + form(model(b"m/b"), audio()),
        400,
        message="first boundary",
    ),
    Case(
        "lf-preamble-boundary",
        b"x\n--abc\r\n" + model(b"m/b") + b"\r\n" + form(M_A, audio()),
        400,
        message="first boundary",
    ),
    Case(
        "lf-line-endings",
        form(M_A, audio()).replace(b"\r\n", b"\n"),
        400,
        message="boundary line",
    ),
    Case("model-256", form(model(b"m" * 256), audio()), model=b"m" * 256),
    Case("model-257", form(model(b"m" * 257), audio()), 400, message="longer than 256 bytes"),
    Case("model-nul", form(model(b"m/\x00a"), audio()), 400, message="control characters"),
    Case("model-newline", form(model(b"m/a\r\nx"), audio()), 400, message="control characters"),
    Case("model-del", form(model(b"m/a\x7f"), audio()), 400, message="control characters"),
    Case("model-padded", form(model(b" m/a "), audio()), model=b" m/a "),
    Case("model-utf8", form(model("m/\u00e9".encode()), audio()), model="m/\u00e9".encode()),
    Case(
        "name-star",
        form(model(b"m/b", "form-data; name=\"x\"; name*=UTF-8''model"), M_A, audio()),
        400,
        message="name*",
    ),
    Case(
        "slash-name",
        form(M_A, model(b"m/b", 'form-data; name="/model"'), audio()),
        400,
        message="'/'",
    ),
    Case(
        "backslash-name",
        form(M_A, model(b"m/b", 'form-data; name="mo\\del"'), audio()),
        400,
        message="backslash",
    ),
    Case(
        "nested-multipart",
        form(
            part('form-data; name="x"', b"--zz--", "Content-Type: multipart/mixed; boundary=zz"),
            M_A,
        ),
        400,
        message="nested",
    ),
    Case(
        "base64-model",
        form(part('form-data; name="model"', b"bS9i", "Content-Transfer-Encoding: base64")),
        400,
        message="Content-Transfer-Encoding",
    ),
    Case(
        "utf7-model",
        form(
            part('form-data; name="model"', b"m+AC8-b", "Content-Type: text/plain; charset=utf-7")
        ),
        400,
        message="UTF-8",
    ),
    Case(
        "charset-field",
        form(part('form-data; name="_charset_"', b"utf-7"), M_A),
        400,
        message="_charset_",
    ),
    Case(
        "no-close",
        form(M_A, audio())[: -len(b"\r\n--abc--\r\n")],
        400,
        message="closing boundary",
    ),
    Case("no-boundary-in-body", b"just bytes", 400, message="not in it"),
    Case(
        "headers-unterminated",
        b'--abc\r\nContent-Disposition: form-data; name="model"\r\nm/a\r\n--abc--\r\n',
        400,
        message="header",
    ),
    Case(
        "no-disposition",
        form(part("", b"m/a", "Content-Type: text/plain")),
        400,
        message="Content-Disposition",
    ),
    Case(
        "two-dispositions",
        form(part('form-data; name="x"', b"m/a", 'Content-Disposition: form-data; name="model"')),
        400,
        message="duplicate content-disposition",
    ),
    Case(
        "huge-headers",
        form(part('form-data; name="x"', b"", "X-Pad: " + "p" * 20000), M_A),
        400,
        message="16384",
    ),
    Case(
        "semicolon-filename",
        form(M_A, part('form-data; name="file"; filename="a;b.wav"', b"audio")),
        model=b"m/a",
    ),
]


@dataclass(frozen=True)
class AioForm:
    """What the backend's parsers read: every (name, bytes) part as aiohttp's
    MultipartReader yields it, and whisper_backend's read_form fields (None when
    that parser refuses the body)."""

    parts: list[tuple[str, bytes]] | None
    fields: dict[str, str] | None


def mocked_request(body: bytes, ctype: str, max_size: int = 64 * 2**20) -> web.Request:
    """A POST whose body is already received: a server's form reader reads it as from
    a client, with no socket."""
    stream = streams.StreamReader(mock.Mock(_reading_paused=False), 2**16,
                                  loop=asyncio.get_running_loop())  # fmt: skip
    stream.feed_data(body)
    stream.feed_eof()
    headers = {"Content-Type": ctype, "Content-Length": str(len(body))}
    return make_mocked_request(
        "POST", "/v1/audio/transcriptions", headers=headers, payload=stream,
        client_max_size=max_size,
    )  # fmt: skip


async def _parts(body: bytes, ctype: str) -> list[tuple[str, bytes]]:
    reader = await mocked_request(body, ctype).multipart()
    out = []
    while (p := await reader.next()) is not None:
        if isinstance(p, BodyPartReader):
            out.append((p.name or "", bytes(await p.read())))
    return out


async def aiohttp_form(body: bytes, ctype: str) -> AioForm:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # aiohttp warns about odd Content-Disposition
        try:
            parts: list[tuple[str, bytes]] | None = await _parts(body, ctype)
        except Exception:  # any failure: this parser refuses the body
            parts = None
        try:
            raw = await read_form(mocked_request(body, ctype), 64 * 2**20)
            fields: dict[str, str] | None = raw.fields
        except Exception:
            fields = None
    return AioForm(parts, fields)


# --- hypothesis: bodies made of plausible and hostile pieces -------------------------

BCHARS = "abcXYZ0123456789'()+_,-./:=? %[]!#"
# Plausible names weigh more than hostile ones, so that many bodies are accepted.
NAMES = ["model"] * 4 + ["file"] * 3 + ["prompt", "response_format", "stream", "model_x",
                                        "Model", "/model", "xname", ""]  # fmt: skip
EXTRA_PARAMS = [None, None, None, 'filename="a.wav"', 'filename="model"', 'xname="model"',
                "filename*=UTF-8''a.wav", 'filename="a;b"']  # fmt: skip
PART_TYPES = [None, None, None, "audio/wav", "text/plain", "text/plain; charset=UTF-8",
              "text/plain; charset=utf-7"]  # fmt: skip
MODELS = [b"m/a", b"m/b", b" m/a", b"m/b ", b"", b"m/\x01a", b"m" * 257, "m/\u00e9".encode()]


@st.composite
def boundaries(draw: st.DrawFn) -> bytes:
    fixed = st.sampled_from(["abc", "a", "-", "--", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "=_x"])
    free = st.text(BCHARS, min_size=1, max_size=70).filter(lambda s: s.strip() == s)
    return draw(st.one_of(fixed, free)).encode()


def content_type(draw: st.DrawFn, boundary: bytes) -> str:
    key = draw(st.sampled_from(["boundary", "Boundary", "BOUNDARY"]))
    b = boundary.decode()
    token = all(c.isalnum() or c in "'+_-." for c in b)
    value = b if token and draw(st.booleans()) else f'"{b}"'
    params = [f"{key}={value}"]
    if draw(st.booleans()):
        params.insert(draw(st.integers(0, 1)), "charset=utf-8")
    sep = draw(st.sampled_from(["; ", ";", " ; "]))
    return sep.join(["multipart/form-data", *params])


@st.composite
def file_bytes(draw: st.DrawFn, boundary: bytes) -> bytes:
    """File content with line breaks, dashes and delimiter lookalikes in it."""
    pieces = st.one_of(
        st.binary(max_size=12),
        st.binary(max_size=12),
        st.sampled_from([b"\r\n", b"--", b" ", b"-"]),
        st.sampled_from([
            b"\r\n", b"\n", b"\r", b"--", b"--" + boundary, b"\r\n--" + boundary,
            b"\r\n--" + boundary + b"x", b"\r\n--" + boundary + b"--x",
            b"\n--" + boundary + b"\r\n", b"\r\n--" + boundary + b"\x0b\r\n",
            b"\r\n--" + boundary + b" \n", b"\r\n--" + boundary + b"\r\n",
            b'Content-Disposition: form-data; name="model"\r\n\r\nm/b',
        ]),
    )  # fmt: skip
    return b"".join(draw(st.lists(pieces, max_size=8)))


@st.composite
def parts(draw: st.DrawFn, boundary: bytes) -> bytes:
    name = draw(st.sampled_from(NAMES))
    key = draw(st.sampled_from(["name", "NAME", "Name"]))
    quoted = draw(st.booleans()) or not name.replace("_", "").isalnum()
    params = [f'{key}="{name}"' if quoted else f"{key}={name}"]
    extra = draw(st.sampled_from(EXTRA_PARAMS))
    if extra:
        params.insert(draw(st.integers(0, 1)), extra)
    if name == "xname":
        params = ['xname="model"']
    sep = draw(st.sampled_from(["; ", ";", " ;"]))
    disp = draw(st.sampled_from(["form-data", "Form-Data"])) + sep + sep.join(params)
    hname = draw(
        st.sampled_from(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"])
    )
    headers = [f"{hname}: {disp}"]
    ctype = draw(st.sampled_from(PART_TYPES))
    if ctype:
        headers.insert(draw(st.integers(0, 1)), f"Content-Type: {ctype}")
    if name in ("file", "prompt"):
        value = draw(file_bytes(boundary))
    else:
        value = draw(st.one_of(*[st.sampled_from(MODELS)] * 3, file_bytes(boundary)))
    return "".join(f"{h}\r\n" for h in headers).encode() + b"\r\n" + value


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """(content type, body): random parts in random order (duplicates included),
    random padding, preamble and epilogue, then a few random mutations."""
    boundary = draw(boundaries())
    ctype = content_type(draw, boundary)
    ps = draw(st.lists(parts(boundary), min_size=1, max_size=5))
    pad = draw(st.sampled_from([b"", b"", b" ", b"\t \t"]))
    delim = b"--" + boundary
    body = (
        draw(st.sampled_from([b"", b"", b"\r\n", b"preamble\r\n"]))
        + delim + pad + b"\r\n"
        + (b"\r\n" + delim + pad + b"\r\n").join(ps)
        + b"\r\n" + delim + b"--" + pad
        + draw(st.sampled_from([b"", b"\r\n", b"\r\nepilogue\r\n--" + boundary + b"\r\n"]))
    )  # fmt: skip
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        at = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["lf", "insert", "cut", "truncate"]))
        if op == "lf":
            i = body.find(b"\r\n", at)
            body = body if i < 0 else body[:i] + body[i + 1 :]
        elif op == "insert":
            body = body[:at] + draw(file_bytes(boundary)) + body[at:]
        elif op == "cut":
            body = body[:at] + body[at + draw(st.integers(1, 8)) :]
        else:
            body = body[:at]
    return ctype, body
