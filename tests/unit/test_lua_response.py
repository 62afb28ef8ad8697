"""The Lua filter's response side, run by a Lua 5.1 interpreter with a fake handle.

Stream conversion (vLLM chunks -> OpenAI events or the seed's text chunks) must
not depend on where TCP cut the stream: every split position of a real
backend's stream gives the same output. Subtitles and text rendered by the
gateway from verbose_json must equal what whisper_backend renders itself.
The real Envoy runs the same source in tests/e2e/test_e2e_formats.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from control_plane.xds.translator.lua import format_source
from whisper_backend.engine import Segment
from whisper_backend.formats import Result, render_srt, render_text, render_vtt

LUA = shutil.which("lua5.1") or shutil.which("luajit")
pytestmark = pytest.mark.skipif(LUA is None, reason="no Lua interpreter (apt-get install lua5.1)")

HARNESS = r"""
local src, meta_path, chunks_path, ctype, status = arg[1], arg[2], arg[3], arg[4], arg[5]
dofile(src)
local function read(p)
  local f = assert(io.open(p, "rb")); local d = f:read("*a"); f:close(); return d
end
local meta = {}
for k, v in read(meta_path):gmatch("([%w_]+)=([%w_]+)") do meta[k] = v end
local chunks = {}
local raw = read(chunks_path)
for piece in (raw .. "\0\0"):gmatch("(.-)%z%z") do chunks[#chunks + 1] = piece end
chunks[#chunks] = nil
local hdrs = {["content-type"] = ctype, [":status"] = status}
local headers = {
  get = function(self, k) return hdrs[k] end,
  replace = function(self, k, v) hdrs[k] = v end,
}
local out = {}
local whole = table.concat(chunks)
local handle = {
  headers = function(self) return headers end,
  streamInfo = function(self)
    return {dynamicMetadata = function(s) return {
      get = function(m, ns) return meta end,
      -- What the filter writes (metering) goes to stderr, for the test to read.
      set = function(m, ns, k, v) io.stderr:write("SET ", ns, " ", k, " ", tostring(v), "\n") end,
    } end}
  end,
  body = function(self)
    return {
      length = function(s) return #whole end,
      getBytes = function(s, i, n) return string.sub(whole, i + 1, i + n) end,
      setBytes = function(s, b) whole = b end,
    }
  end,
  bodyChunks = function(self)
    local i = 0
    return function()
      if i > 0 then out[#out + 1] = chunks[i].out end
      i = i + 1
      if i > #chunks then return nil end
      local c = {data = chunks[i]}
      c.out = c.data
      chunks[i] = c
      return {
        length = function(s) return #c.data end,
        getBytes = function(s, a, n) return string.sub(c.data, a + 1, a + n) end,
        setBytes = function(s, b) c.out = b end,
      }
    end
  end,
}
envoy_on_response(handle)
if #out > 0 then io.write(table.concat(out)) else io.write(hdrs["content-type"], "\n", whole) end
"""


def lua_source() -> str:
    return format_source()


def run(
    tmp_path: Path,
    chunks: list[bytes],
    meta: dict[str, str],
    ctype: str = "text/event-stream",
    status: str = "200",
) -> str:
    assert LUA is not None
    (tmp_path / "f.lua").write_text(lua_source())
    (tmp_path / "h.lua").write_text(HARNESS)
    (tmp_path / "meta").write_text(" ".join(f"{k}={v}" for k, v in meta.items()))
    (tmp_path / "chunks").write_bytes(b"".join(c + b"\0\0" for c in chunks))
    proc = subprocess.run(
        [LUA, str(tmp_path / "h.lua"), str(tmp_path / "f.lua"), str(tmp_path / "meta"),
         str(tmp_path / "chunks"), ctype, status],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    (tmp_path / "stderr").write_bytes(proc.stderr)
    return proc.stdout.decode()


def metadata_set(tmp_path: Path) -> list[str]:
    """The dynamic metadata the last run wrote, one `namespace key value` each."""
    return [
        line.removeprefix("SET ")
        for line in (tmp_path / "stderr").read_text().splitlines()
        if line.startswith("SET ")
    ]


def chunk(content: str, finish: str | None = None) -> bytes:
    body = {
        "id": "transcribe-x",
        "object": "transcription.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"delta": {"content": content}, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


USAGE = (
    b'data: {"id":"transcribe-x","object":"transcription.chunk","created":1,"model":"m",'
    b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10,'
    b'"type":"duration","seconds":5}}\n\n'
)
STREAM = (
    chunk(" Hello \u00e9t\u00e9") + chunk(' "world"') + chunk("", "stop") + USAGE
    + b"data: [DONE]\n\n"
)  # fmt: skip


def events(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e]


def test_openai_events_from_backend_chunks(tmp_path: Path) -> None:
    out = events(run(tmp_path, [STREAM], {"stream_format": "openai"}))
    assert out[-1] == "[DONE]"
    deltas = [json.loads(e) for e in out[:-2]]
    assert deltas == [
        {"type": "transcript.text.delta", "delta": " Hello \u00e9t\u00e9"},
        {"type": "transcript.text.delta", "delta": ' "world"'},
    ]
    done = json.loads(out[-2])
    assert done == {
        "type": "transcript.text.done",
        "text": ' Hello \u00e9t\u00e9 "world"',
        "usage": {"type": "tokens", "input_tokens": 3, "output_tokens": 7, "total_tokens": 10},
    }
    # The backend's usage.seconds is metered once (the access log reads it).
    assert metadata_set(tmp_path) == ["whisper_gateway.meter audio_seconds 5"]
    # A stream without usage sets nothing: it is counted as unmetered, not guessed.
    events(run(tmp_path, [STREAM.replace(USAGE, b"")], {"stream_format": "openai"}))
    assert metadata_set(tmp_path) == []


def test_text_chunks_and_backend_pass_through(tmp_path: Path) -> None:
    out = events(run(tmp_path, [STREAM], {"stream_format": "text"}))
    assert out == [json.dumps({"text": " Hello \u00e9t\u00e9"}, separators=(",", ":"),
                              ensure_ascii=False),
                   json.dumps({"text": ' "world"'}, separators=(",", ":")), "[DONE]"]  # fmt: skip
    # backend: the filter leaves the body alone (the harness prints it untouched).
    untouched = run(tmp_path, [STREAM], {"stream_format": "backend"}).encode()
    assert untouched == b"text/event-stream\n" + STREAM


def test_every_split_position_gives_the_same_stream(tmp_path: Path) -> None:
    whole = run(tmp_path, [STREAM], {"stream_format": "openai"})
    # One byte per chunk, and every two-way split: the same events.
    assert run(tmp_path, [bytes([b]) for b in STREAM], {"stream_format": "openai"}) == whole
    for cut in range(1, len(STREAM), 7):
        two = [STREAM[:cut], STREAM[cut:]]
        assert run(tmp_path, two, {"stream_format": "openai"}) == whole, cut


def test_backend_error_event_becomes_the_target_formats_error(tmp_path: Path) -> None:
    err = {"error": {"message": "Decoding failed", "type": "InternalServerError", "code": 500}}
    stream = chunk(" Hi") + f"data: {json.dumps(err)}\n\n".encode() + b"data: [DONE]\n\n"
    out = events(run(tmp_path, [stream], {"stream_format": "openai"}))
    assert json.loads(out[1]) == {
        "type": "error",
        "error": {"message": "Decoding failed", "type": "InternalServerError", "param": None,
                  "code": 500},
    }  # fmt: skip
    out = events(run(tmp_path, [stream], {"stream_format": "text"}))
    assert json.loads(out[1])["error"]["message"] == "Decoding failed"


def test_cut_stream_ends_without_done(tmp_path: Path) -> None:
    cut = STREAM[: len(chunk(" Hello \u00e9t\u00e9")) + 10]
    out = events(run(tmp_path, [cut], {"stream_format": "openai"}))
    assert out == ['{"type":"transcript.text.delta","delta":" Hello \u00e9t\u00e9"}']


SEGMENTS = (
    Segment(0, 0, 0.0, 2.5, " Hello world.", (1, 2), 0.0, -0.1, 1.0, 0.01, None),
    Segment(1, 0, 2.5, 3661.007, ' The "quick" fox.', (3,), 0.0, -0.1, 1.0, 0.01, None),
)


def verbose_json() -> bytes:
    return json.dumps(
        {
            "language": "en",
            "duration": 3661.5,
            "text": "".join(s.text for s in SEGMENTS),
            "segments": [
                {"id": s.id, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text}
                for s in SEGMENTS
            ],
            "words": None,
        }
    ).encode()


@pytest.mark.parametrize(
    ("fmt", "ctype"),
    [("srt", "application/x-subrip"), ("vtt", "text/vtt"), ("text", "text/plain")],
)
def test_rendered_formats_equal_the_backends_own(tmp_path: Path, fmt: str, ctype: str) -> None:
    out = run(tmp_path, [verbose_json()], {"stream_format": "openai", "render": fmt},
              ctype="application/json")  # fmt: skip
    got_type, _, body = out.partition("\n")
    assert got_type.startswith(ctype)
    result = Result("".join(s.text for s in SEGMENTS), "en", 3661.5, SEGMENTS)
    expected = {
        "srt": render_srt(SEGMENTS),
        "vtt": render_vtt(SEGMENTS),
        "text": render_text(result),
    }[fmt]
    assert body == expected


def test_errors_are_not_rendered(tmp_path: Path) -> None:
    err = b'{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}'
    out = run(tmp_path, [err], {"stream_format": "openai", "render": "srt"},
              ctype="application/json", status="400")  # fmt: skip
    assert out == "application/json\n" + err.decode()
