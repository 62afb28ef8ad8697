-- whisper-gateway: route an OpenAI audio upload by its multipart `model` field.
--
-- Shipped to Envoy through RDS (LuaPerRoute on the virtual host), rendered by
-- control_plane/translate/routes.py: the control plane fills in the model set.
-- The body is buffered up to the route's buffer limit (Envoy answers 413 past
-- it), the `model` part is found wherever it sits (curl sends it after the
-- file, the openai SDK before), and the internal header is always rewritten,
-- never trusted from the client.

local HEADER = "x-gateway-model"
-- model -> its stream format (openai | backend | text)
local MODELS = {
--MODELS--
}
local MODEL_LIST = "--MODEL_LIST--"
local STREAM_FORMATS = {openai = true, backend = true, text = true}
local RENDERED = {text = "text/plain; charset=utf-8", srt = "application/x-subrip",
  vtt = "text/vtt; charset=utf-8"}
local META = "whisper_gateway"

local function json_string(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. s .. '"'
end

local function reply(handle, status, message, param)
  local body = '{"error":{"message":' .. json_string(message)
    .. ',"type":"invalid_request_error","param":'
    .. (param and json_string(param) or "null")
    .. ',"code":' .. status .. '}}'
  handle:respond({[":status"] = tostring(status), ["content-type"] = "application/json"}, body)
end

local WINDOW = 1048576

-- A view of the buffered body with 0-based `find` and `sub`. A small body is
-- copied into Lua once; a large one is scanned in 1 MiB windows, so a 25 MB
-- upload is never copied whole.
local function reader(body)
  local len = body:length()
  if len <= WINDOW then
    local str = body:getBytes(0, len)
    return len,
      function(needle, from)
        local i = string.find(str, needle, from + 1, true)
        return i and i - 1 or nil
      end,
      function(from, n) return string.sub(str, from + 1, from + n) end
  end
  local function find(needle, from)
    local pos = from
    while pos < len do
      local n = math.min(WINDOW + #needle, len - pos)
      local i = string.find(body:getBytes(pos, n), needle, 1, true)
      if i then return pos + i - 1 end
      if pos + n >= len then return nil end
      pos = pos + WINDOW
    end
    return nil
  end
  return len, find, function(from, n) return body:getBytes(from, n) end
end

-- Returns the value of the form field `name` (and its 0-based offset), or nil;
-- walks the parts by boundary so a file whose bytes contain 'name="model"'
-- cannot fool it.
local function form_field(body, boundary, name)
  local len, find, sub = reader(body)
  local delim = "--" .. boundary
  local s = find(delim, 0)
  while s do
    local after = s + #delim
    if after + 2 <= len and sub(after, 2) == "--" then return nil end
    local head_end = find("\r\n\r\n", after)
    if not head_end or head_end - after > 16384 then return nil end
    local head = sub(after, head_end - after)
    local value_start = head_end + 4
    local next_s = find("\r\n" .. delim, value_start)
    if not next_s then return nil end
    local field = head:match('[;%s]name="([^"]*)"') or head:match("[;%s]name=([^;%s]+)")
    if field == name then
      if next_s - value_start > 4096 then return nil end
      return sub(value_start, next_s - value_start), value_start
    end
    s = next_s + 2
  end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove(HEADER)
  local path = headers:get(":path") or ""
  path = path:gsub("%?.*$", "")
  if headers:get(":method") ~= "POST"
      or (path ~= "/v1/audio/transcriptions" and path ~= "/v1/audio/translations") then
    return
  end
  local ctype = headers:get("content-type") or ""
  local boundary = ctype:match('[Bb]oundary="([^"]+)"') or ctype:match("[Bb]oundary=([^;%s]+)")
  if not ctype:lower():find("multipart/form-data", 1, true) or not boundary then
    reply(handle, 400, "the request body must be multipart/form-data with a 'file' and a 'model' field", nil)
    return
  end
  local body = handle:body()
  if body == nil then
    reply(handle, 400, "the request has no body: send a multipart form with 'file' and 'model'", "file")
    return
  end
  local model = form_field(body, boundary, "model")
  if model == nil then
    reply(handle, 400, "you must provide a model parameter (available models: " .. MODEL_LIST .. ")", "model")
    return
  end
  model = model:match("^%s*(.-)%s*$")
  if model == "" then
    reply(handle, 400, "you must provide a model parameter (available models: " .. MODEL_LIST .. ")", "model")
    return
  end
  if not MODELS[model] then
    reply(handle, 404, "The model '" .. model .. "' does not exist. Available models: " .. MODEL_LIST, "model")
    return
  end
  local fmt = handle:headers():get("x-stream-format") or MODELS[model]
  if not STREAM_FORMATS[fmt] then
    reply(handle, 400, "x-stream-format must be openai, backend or text", "x-stream-format")
    return
  end
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set(META, "stream_format", fmt)
  -- text, srt and vtt are rendered here from the backend's verbose_json, so every
  -- backend that answers verbose_json serves all five formats, identically.
  local rf, rf_at = form_field(body, boundary, "response_format")
  local stream = form_field(body, boundary, "stream")
  if rf and RENDERED[rf] and stream ~= "true" then
    local len = body:length()
    local new = body:getBytes(0, rf_at) .. "verbose_json"
      .. body:getBytes(rf_at + #rf, len - rf_at - #rf)
    body:setBytes(new)
    handle:headers():replace("content-length", tostring(#new))
    meta:set(META, "render", rf)
  end
  -- body() yielded: the headers handle from before it is out of scope now.
  handle:headers():replace(HEADER, model)
  handle:clearRouteCache()
end

-- ---------------------------------------------------------------- JSON

local decode_value

local function skip(s, i)
  return s:find("[^ \t\r\n]", i) or #s + 1
end

local ESCAPES = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n",
  r = "\r", t = "\t"}

local function utf8(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64,
      0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
    0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local function decode_string(s, i)
  local out, j = {}, i + 1
  while true do
    local k = s:find('["\\]', j)
    if not k then error("unterminated string") end
    out[#out + 1] = s:sub(j, k - 1)
    if s:sub(k, k) == '"' then return table.concat(out), k + 1 end
    local e = s:sub(k + 1, k + 1)
    if e == "u" then
      local cp = tonumber(s:sub(k + 2, k + 5), 16)
      j = k + 6
      if cp >= 0xD800 and cp < 0xDC00 and s:sub(j, j + 1) == "\\u" then
        local lo = tonumber(s:sub(j + 2, j + 5), 16)
        cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
        j = j + 6
      end
      out[#out + 1] = utf8(cp)
    else
      out[#out + 1] = ESCAPES[e] or error("bad escape")
      j = k + 2
    end
  end
end

decode_value = function(s, i)
  i = skip(s, i)
  local c = s:sub(i, i)
  if c == "{" then
    local obj = {}
    i = skip(s, i + 1)
    if s:sub(i, i) == "}" then return obj, i + 1 end
    while true do
      local key
      key, i = decode_string(s, skip(s, i))
      i = skip(s, i)
      if s:sub(i, i) ~= ":" then error("expected :") end
      obj[key], i = decode_value(s, i + 1)
      i = skip(s, i)
      c = s:sub(i, i)
      if c == "}" then return obj, i + 1 end
      if c ~= "," then error("expected ,") end
      i = i + 1
    end
  elseif c == "[" then
    local arr = {}
    i = skip(s, i + 1)
    if s:sub(i, i) == "]" then return arr, i + 1 end
    while true do
      arr[#arr + 1], i = decode_value(s, i)
      i = skip(s, i)
      c = s:sub(i, i)
      if c == "]" then return arr, i + 1 end
      if c ~= "," then error("expected ,") end
      i = i + 1
    end
  elseif c == '"' then
    return decode_string(s, i)
  elseif s:sub(i, i + 3) == "true" then return true, i + 4
  elseif s:sub(i, i + 4) == "false" then return false, i + 5
  elseif s:sub(i, i + 3) == "null" then return nil, i + 4
  end
  local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if not num or num == "" then error("bad value at " .. i) end
  return tonumber(num), i + #num
end

local function json_decode(s)
  local ok, v = pcall(decode_value, s, 1)
  if ok then return v end
  return nil
end

local function json_number(n)
  if n == math.floor(n) then return string.format("%d", n) end
  return string.format("%.17g", n)
end

-- ---------------------------------------------------------------- formats

local function clock(seconds, sep)
  local ms = math.floor((seconds or 0) * 1000 + 0.5)
  if ms < 0 then ms = 0 end
  local h = math.floor(ms / 3600000)
  local m = math.floor(ms / 60000) % 60
  local sec = math.floor(ms / 1000) % 60
  return string.format("%02d:%02d:%02d%s%03d", h, m, sec, sep, ms % 1000)
end

local function strip(s)
  return (s or ""):match("^%s*(.-)%s*$")
end

local function render(fmt, verbose)
  if fmt == "text" then return strip(verbose.text) .. "\n" end
  local blocks = {}
  for i, seg in ipairs(verbose.segments or {}) do
    local sep = fmt == "srt" and "," or "."
    local times = clock(seg.start, sep) .. " --> " .. clock(seg["end"], sep)
    if fmt == "srt" then
      blocks[#blocks + 1] = i .. "\n" .. times .. "\n" .. strip(seg.text) .. "\n"
    else
      blocks[#blocks + 1] = times .. "\n" .. strip(seg.text) .. "\n"
    end
  end
  local out = table.concat(blocks, "\n")
  if fmt == "vtt" then return "WEBVTT\n\n" .. out end
  return out
end

-- ---------------------------------------------------------------- streams

-- One backend SSE event (vLLM's chunk shape) in the client's stream format.
local function convert(event, fmt, st)
  local payload = event:match("^data: ?(.*)$")
  if payload == nil then return "" end
  if payload == "[DONE]" then
    if fmt == "openai" then
      local done = '{"type":"transcript.text.done","text":' .. json_string(table.concat(st.text))
      if st.usage then done = done .. ',"usage":' .. st.usage end
      return "data: " .. done .. "}\n\ndata: [DONE]\n\n"
    end
    return "data: [DONE]\n\n"
  end
  local chunk = json_decode(payload)
  if type(chunk) ~= "table" then return "" end
  if chunk.error ~= nil then
    local e = chunk.error
    local err = '{"message":' .. json_string(tostring(type(e) == "table" and e.message or e))
      .. ',"type":' .. json_string(tostring(type(e) == "table" and e.type or "server_error"))
      .. ',"param":null,"code":'
      .. (type(e) == "table" and tonumber(e.code) and json_number(e.code) or "500") .. "}"
    if fmt == "openai" then return 'data: {"type":"error","error":' .. err .. "}\n\n" end
    return 'data: {"error":' .. err .. "}\n\n"
  end
  if type(chunk.usage) == "table" then
    local u = chunk.usage
    local input, output = tonumber(u.prompt_tokens) or 0, tonumber(u.completion_tokens) or 0
    st.usage = '{"type":"tokens","input_tokens":' .. json_number(input)
      .. ',"output_tokens":' .. json_number(output)
      .. ',"total_tokens":' .. json_number(tonumber(u.total_tokens) or input + output) .. "}"
  end
  local choice = type(chunk.choices) == "table" and chunk.choices[1] or nil
  local delta = choice and type(choice.delta) == "table" and choice.delta.content or nil
  if type(delta) ~= "string" or delta == "" then return "" end
  st.text[#st.text + 1] = delta
  if fmt == "openai" then
    return 'data: {"type":"transcript.text.delta","delta":' .. json_string(delta) .. "}\n\n"
  end
  return 'data: {"text":' .. json_string(delta) .. "}\n\n"
end

function envoy_on_response(handle)
  local meta = handle:streamInfo():dynamicMetadata():get(META)
  if meta == nil then return end
  local headers = handle:headers()
  local ctype = headers:get("content-type") or ""
  local status = headers:get(":status")
  if meta.render and status == "200" and ctype:find("application/json", 1, true) then
    local body = handle:body()
    local verbose = json_decode(body:getBytes(0, body:length()))
    if type(verbose) ~= "table" then return end
    local out = render(meta.render, verbose)
    body:setBytes(out)
    handle:headers():replace("content-type", RENDERED[meta.render])
    handle:headers():replace("content-length", tostring(#out))
    return
  end
  local fmt = meta.stream_format
  if fmt == "backend" or not ctype:find("text/event-stream", 1, true) then return end
  local st = {text = {}}
  local carry = ""
  for chunk in handle:bodyChunks() do
    local data = carry .. chunk:getBytes(0, chunk:length())
    local out = {}
    while true do
      local e = data:find("\n\n", 1, true)
      if not e then break end
      local event = data:sub(1, e - 1):gsub("\r", "")
      data = data:sub(e + 2)
      out[#out + 1] = convert(event, fmt, st)
    end
    carry = data
    chunk:setBytes(table.concat(out))
  end
end
