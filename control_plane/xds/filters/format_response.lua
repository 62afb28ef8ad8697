-- whisper-gateway: the response side. Convert a backend's stream into the
-- client's stream format, and render text/srt/vtt from the backend's
-- verbose_json. Shipped through RDS on the model routes the request side
-- (route_by_model.lua) selected with x-gateway-convert, so every other response
-- skips Lua entirely. It reads what the request side decided from the stream's
-- dynamic metadata. The shared library (gateway.lua) comes before it.

local RENDERED = {text = "text/plain; charset=utf-8", srt = "application/x-subrip",
  vtt = "text/vtt; charset=utf-8"}

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

-- Whisper decodes audio in windows of 30 s. Segments that begin more than a window
-- after the audio's start or stop more than a window before its end mean a window's
-- segments were lost (vLLM 0.32 drops the first or the last windows of longer audio
-- from verbose_json: docs/vllm.md): what is missing, or nil when both ends are covered.
-- Pauses inside are not judged (silence leaves no segment), nor a segment that runs past
-- the end (the last window's timestamps often do).
local WINDOW_S = 30
local function uncovered(verbose)
  local duration, segments = tonumber(verbose.duration), verbose.segments
  if duration == nil or type(segments) ~= "table" then return "no duration or segments" end
  local first, last = nil, nil
  for _, seg in ipairs(segments) do
    local s, e = tonumber(seg.start), tonumber(seg["end"])
    if s == nil or e == nil then return "a segment without start or end" end
    if first == nil or s < first then first = s end
    if last == nil or e > last then last = e end
  end
  if first == nil then
    if duration > WINDOW_S then return string.format("no segment in %.1f s of audio", duration) end
    return nil
  end
  if first > WINDOW_S then return string.format("no segment from 0.0 s to %.1f s", first) end
  if duration - last > WINDOW_S then
    return string.format("no segment from %.1f s to %.1f s", last, duration)
  end
  return nil
end

local function error_body(status, message, param, kind)
  return '{"error":{"message":' .. json_string(message) .. ',"type":"'
    .. (kind or "server_error") .. '","param":'
    .. (param and json_string(param) or "null") .. ',"code":' .. status .. '}}'
end

local function replace_body(handle, body, status, out)
  body:setBytes(out)
  handle:headers():replace(":status", status)
  handle:headers():replace("content-type", "application/json")
  handle:headers():replace("content-length", tostring(#out))
end

-- vLLM refuses an upload over its size limit with a 400 whose param is
-- audio_filesize_mb; the client gets OpenAI's status for that, 413, and the setting.
local function too_large(raw)
  local e = json_decode(raw)
  e = type(e) == "table" and e.error
  if type(e) ~= "table" or e.param ~= "audio_filesize_mb" then return nil end
  return error_body(413, "the audio file is larger than the backend accepts ("
    .. tostring(e.message) .. "); vLLM's limit is VLLM_MAX_AUDIO_CLIP_FILESIZE_MB "
    .. "(25 MB by default)", "file", "invalid_request_error")
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
    st.seconds = tonumber(u.seconds) or st.seconds
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
  if status == "400" and ctype:find("application/json", 1, true) then
    local body = handle:body()
    local out = too_large(body:getBytes(0, body:length()))
    if out then replace_body(handle, body, "413", out) end
    return
  end
  local whole = meta.render or meta.check
  if whole and status == "200" and ctype:find("application/json", 1, true) then
    local body = handle:body()
    local verbose = json_decode(body:getBytes(0, body:length()))
    if type(verbose) ~= "table" then return end
    local missing = whole ~= "text" and uncovered(verbose)
    if missing then
      local out = error_body(502, "the backend's answer does not cover the whole audio ("
        .. missing .. "); refused rather than return part of a transcript. "
        .. "response_format=json or text carries the whole text", "response_format")
      replace_body(handle, body, "502", out)
      return
    end
    if meta.render == nil then return end  -- verbose_json, checked: passed on as it came
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
    if st.seconds and not st.metered then
      -- Audio seconds for metering, read by the access log (docs/architecture.md).
      handle:streamInfo():dynamicMetadata():set(METER, "audio_seconds", st.seconds)
      st.metered = true
    end
  end
end
