"""The Lua filters' source, as Envoy gets it: the shared library, then each filter.

The request side (one chunk per route) is the library, the multipart reader and
route_by_model.lua with the models, their stream formats and the clients limited to
models filled in; the response side is the library and format_response.lua. The
library's names come from control_plane/names.py, so Python, Lua and Envoy's config
read one spelling.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from control_plane.names import CLIENT_HEADER, META_NS, METER, MODEL_HEADER, SPLIT_HEADER

FILTERS = Path(__file__).resolve().parents[1] / "filters"
LIBRARY_LUA = FILTERS / "gateway.lua"
LUA_TEMPLATE = FILTERS / "route_by_model.lua"
MULTIPART_LUA = FILTERS / "multipart.lua"
FORMAT_LUA = FILTERS / "format_response.lua"
READ_UPLOAD_LUA = FILTERS / "read_upload.lua"


def _lua_string(s: str) -> str:
    """A Lua 5.1 / LuaJIT string literal for any text (UTF-8 bytes, decimal escapes)."""
    out = []
    for b in s.encode():
        ch = chr(b)
        out.append(ch if 0x20 <= b < 0x7F and ch not in '"\\' else f"\\{b:03d}")
    return '"' + "".join(out) + '"'


_NAMES = {
    "--META_NS--": META_NS,
    "--METER--": METER,
    "--MODEL_HEADER--": MODEL_HEADER,
    "--CLIENT_HEADER--": CLIENT_HEADER,
    "--SPLIT_HEADER--": SPLIT_HEADER,
}


@functools.cache
def library_source() -> str:
    """gateway.lua with the shared names filled in: read once per process."""
    names = re.compile("|".join(map(re.escape, _NAMES)))
    return names.sub(lambda mo: _lua_string(_NAMES[mo.group(0)]), LIBRARY_LUA.read_text())


@functools.cache
def multipart_source() -> str:
    """The multipart reader, prepended to the request-side Lua (one chunk per route)."""
    return MULTIPART_LUA.read_text()


@functools.cache
def format_source() -> str:
    """The response side's Lua, after the library (no per-config placeholders)."""
    return library_source() + "\n" + FORMAT_LUA.read_text()


_PLACEHOLDERS = re.compile(
    r'--MODELS--|"--MODEL_LIST--"|--CLIENT_MODELS--|--SPLIT_MODELS--|--SPLIT_MIN_BYTES--'
)


def render_lua(
    template: str,
    models: tuple[str, ...],
    stream_formats: dict[str, str],
    client_models: dict[str, tuple[str, ...]] | None = None,
    split_models: tuple[str, ...] = (),
    split_min_bytes: int = 0,
) -> str:
    """The library, the multipart reader, then the template with the models, their
    stream formats, the clients limited to models and the models whose long uploads
    may be split filled in (pure, one pass)."""
    fill = {
        "--MODELS--": "\n".join(
            f"  [{_lua_string(m)}] = {_lua_string(stream_formats.get(m, 'openai'))},"
            for m in models
        ),
        '"--MODEL_LIST--"': _lua_string(", ".join(models)),
        "--CLIENT_MODELS--": "\n".join(
            f"  [{_lua_string(c)}] = {{"
            + ", ".join(f"[{_lua_string(m)}] = true" for m in ms)
            + "},"
            for c, ms in sorted((client_models or {}).items())
        ),
        "--SPLIT_MODELS--": "\n".join(f"  [{_lua_string(m)}] = true," for m in split_models),
        "--SPLIT_MIN_BYTES--": str(split_min_bytes),
    }
    body = _PLACEHOLDERS.sub(lambda mo: fill[mo.group(0)], template)
    return library_source() + "\n" + multipart_source() + "\n" + body


def load_lua_template() -> str:
    return LUA_TEMPLATE.read_text()


@functools.cache
def read_upload_source() -> str:
    """The edge's first filter (no library, no placeholders): the same on every config,
    so it lives in LDS and the routes only enable it."""
    return READ_UPLOAD_LUA.read_text()
