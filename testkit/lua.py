"""One harness for the Lua filters: the real source, run by a Lua 5.1 interpreter (what
LuaJIT in Envoy speaks) against a fake Envoy handle.

Three ways in, one fake of Envoy's API (headers, a body buffer that counts what it
copies out, body chunks, dynamic metadata, a direct reply):

- `request`: the request side (envoy_on_request) on one body; prints `REPLY status
  content-type` and the body, or `PASS <model routed to> <route cache cleared>` and
  the body as it goes upstream in `<body file>.out`;
- `response`: the response side (envoy_on_response) on a backend's body cut into
  chunks; prints the body as the client gets it; metadata it sets goes to stderr as
  `SET namespace key value`, and the final status as `STATUS code`;
- `multipart`: the multipart reader's own functions (optionally with a smaller read
  window); prints the boundary, the fields or the error, hex-coded, and `STATS
  <bytes copied> <largest copy>`.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

LUA = shutil.which("lua5.1") or shutil.which("luajit")
LUAC = shutil.which("luac5.1") or shutil.which("luac")
NO_LUA = "no Lua interpreter (apt-get install lua5.1)"

HARNESS = r"""
local mode, src = arg[1], arg[2]

local function read(p)
  local f = assert(io.open(p, "rb")); local d = f:read("*a"); f:close(); return d
end
local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- Envoy's buffer over a string: length, getBytes (in range, counted), setBytes.
local copied, largest = 0, 0
local function buffer(get, set)
  return {
    length = function(self) return #get() end,
    getBytes = function(self, i, n)
      local data = get()
      assert(i >= 0 and n >= 0 and i + n <= #data, "getBytes out of range")
      copied = copied + n
      if n > largest then largest = n end
      return string.sub(data, i + 1, i + n)
    end,
    setBytes = function(self, b) set(b) end,
  }
end

local function header_map(hdrs)
  return {
    get = function(self, k) return hdrs[k] end,
    remove = function(self, k) hdrs[k] = nil end,
    replace = function(self, k, v) hdrs[k] = v end,
  }
end

local function stream_info(get, set)
  return function(self)
    return {dynamicMetadata = function(s) return {get = get, set = set} end}
  end
end

if mode == "request" then
  local body_path, ctype, method, path, client_model = arg[3], arg[4], arg[5], arg[6], arg[7]
  dofile(src)
  local data = read(body_path)
  local hdrs = {[":method"] = method, [":path"] = path}
  if ctype ~= "" then hdrs["content-type"] = ctype end
  if client_model ~= "" then hdrs["x-gateway-model"] = client_model end
  local headers = header_map(hdrs)
  local replied, cleared, meta = nil, false, {}
  local handle = {
    headers = function(self) return headers end,
    body = function(self)
      if data == "" then return nil end
      return buffer(function() return data end, function(b) data = b end)
    end,
    streamInfo = stream_info(
      function(m, ns) return meta[ns] end,
      function(m, ns, k, v) meta[ns] = meta[ns] or {}; meta[ns][k] = v end),
    respond = function(self, h, b) replied = {h, b} end,
    clearRouteCache = function(self) cleared = true end,
  }
  envoy_on_request(handle)
  if replied then
    io.write("REPLY ", replied[1][":status"], " ", replied[1]["content-type"], "\n", replied[2])
  else
    local routed = meta.whisper_gateway and meta.whisper_gateway.model
    io.write("PASS ", tostring(routed), " ", tostring(cleared))
    local f = assert(io.open(body_path .. ".out", "wb"))  -- the body as it goes upstream
    f:write(data)
    f:close()
  end

elseif mode == "response" then
  local meta_path, chunks_path, ctype, status = arg[3], arg[4], arg[5], arg[6]
  dofile(src)
  local meta = {}
  for k, v in read(meta_path):gmatch("([%w_]+)=([%w_]+)") do meta[k] = v end
  local chunks = {}
  for piece in (read(chunks_path) .. "\0\0"):gmatch("(.-)%z%z") do chunks[#chunks + 1] = piece end
  chunks[#chunks] = nil
  local hdrs = {["content-type"] = ctype, [":status"] = status}
  local out = {}
  local whole = table.concat(chunks)
  local handle = {
    headers = function(self) return header_map(hdrs) end,
    streamInfo = stream_info(
      function(m, ns) return meta end,
      -- What the filter writes (metering) goes to stderr, for the test to read.
      function(m, ns, k, v) io.stderr:write("SET ", ns, " ", k, " ", tostring(v), "\n") end),
    body = function(self)
      return buffer(function() return whole end, function(b) whole = b end)
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
        return buffer(function() return c.data end, function(b) c.out = b end)
      end
    end,
  }
  envoy_on_response(handle)
  io.stderr:write("STATUS ", hdrs[":status"], "\n")
  if #out > 0 then io.write(table.concat(out)) else io.write(hdrs["content-type"], "\n", whole) end

elseif mode == "multipart" then
  local body_path, ctype, spec, window = arg[3], arg[4], arg[5], arg[6]
  local code = read(src)
  if window ~= "" then
    local n
    code, n = code:gsub("local WINDOW = 1048576", "local WINDOW = " .. window)
    assert(n == 1, "no WINDOW constant")
  end
  code = code .. "\nreturn {boundary = multipart_boundary, fields = multipart_fields}"
  local m = assert(loadstring(code))()
  local data = read(body_path)
  local wanted = {}
  for k, v in spec:gmatch("([%w_]+)=(%d+)") do wanted[k] = tonumber(v) end
  local b = m.boundary(ctype)
  if not b then io.write("NOBOUNDARY\n") return end
  io.write("BOUNDARY ", hex(b), "\n")
  local fields, err = m.fields(buffer(function() return data end), b, wanted)
  if fields then
    io.write("OK\n")
    for k, v in pairs(fields) do io.write("F ", k, " ", v[2], " ", hex(v[1]), "\n") end
  else
    io.write("ERR ", err.status, " ", err.param or "-", " ", hex(err.message), "\n")
  end
  io.write("STATS ", copied, " ", largest, "\n")

else
  error("unknown mode " .. tostring(mode))
end
"""

_DIR = Path(tempfile.mkdtemp(prefix="lua-harness-"))
atexit.register(shutil.rmtree, _DIR, True)
_HARNESS = _DIR / "harness.lua"
_HARNESS.write_text(HARNESS)


def source_file(source: str) -> Path:
    """A filter's source as a file the harness can load (one per distinct source)."""
    path = _DIR / f"src-{hashlib.sha256(source.encode()).hexdigest()[:16]}.lua"
    if not path.exists():
        path.write_text(source)
    return path


def run(mode: str, source: str, *args: str | Path, timeout: float = 60) -> tuple[str, str]:
    """Run the harness in `mode` on `source`; (stdout, stderr). Fails on a Lua error."""
    assert LUA is not None, NO_LUA
    proc = subprocess.run(
        [LUA, str(_HARNESS), mode, str(source_file(source)), *map(str, args)],
        capture_output=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode(), proc.stderr.decode()


def with_file(data: bytes) -> Path:
    """`data` in a file of its own for one run (the caller removes it)."""
    fd, name = tempfile.mkstemp(dir=_DIR)
    with open(fd, "wb") as f:
        f.write(data)
    return Path(name)
