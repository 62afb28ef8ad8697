-- whisper-gateway: route an OpenAI audio upload by its multipart `model` field.
--
-- Shipped to Envoy through RDS (LuaPerRoute on the virtual host), rendered by
-- control_plane/translate/routes.py: the control plane fills in the model set.
-- The body is buffered up to the route's buffer limit (Envoy answers 413 past
-- it), the `model` part is found wherever it sits (curl sends it after the
-- file, the openai SDK before), and the internal header is always rewritten,
-- never trusted from the client.

local HEADER = "x-gateway-model"
-- Set (never trusted from the client) when the response must be converted: the
-- model routes that match it run the format filter (format_response.lua).
local CONVERT = "x-gateway-convert"
-- model -> its stream format (openai | backend | text)
local MODELS = {
--MODELS--
}
local MODEL_LIST = "--MODEL_LIST--"
local STREAM_FORMATS = {openai = true, backend = true, text = true}
local RENDERED = {text = true, srt = true, vtt = true}
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

-- One walk over the parts: the values (and 0-based offsets) of the wanted
-- fields, by name. Walking by boundary means a file whose bytes contain
-- 'name="model"' cannot fool it; a large upload is scanned once.
local function form_fields(body, boundary, wanted)
  local len, find, sub = reader(body)
  local delim = "--" .. boundary
  local found, left = {}, 0
  for _ in pairs(wanted) do left = left + 1 end
  local s = find(delim, 0)
  while s and left > 0 do
    local after = s + #delim
    if after + 2 <= len and sub(after, 2) == "--" then break end
    local head_end = find("\r\n\r\n", after)
    if not head_end or head_end - after > 16384 then break end
    local head = sub(after, head_end - after)
    local value_start = head_end + 4
    local next_s = find("\r\n" .. delim, value_start)
    if not next_s then break end
    local field = head:match('[;%s]name="([^"]*)"') or head:match("[;%s]name=([^;%s]+)")
    if field and wanted[field] and not found[field] and next_s - value_start <= 4096 then
      found[field] = {sub(value_start, next_s - value_start), value_start}
      left = left - 1
    end
    s = next_s + 2
  end
  return found
end

local WANTED = {model = true, response_format = true, stream = true}

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove(HEADER)
  headers:remove(CONVERT)
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
  local fields = form_fields(body, boundary, WANTED)
  local model = fields.model and fields.model[1]
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
  local rf, rf_at = nil, nil
  if fields.response_format then rf, rf_at = fields.response_format[1], fields.response_format[2] end
  local stream = fields.stream and fields.stream[1]
  local convert = stream == "true" and fmt ~= "backend"
  if rf and RENDERED[rf] and stream ~= "true" then
    convert = true
    local len = body:length()
    local new = body:getBytes(0, rf_at) .. "verbose_json"
      .. body:getBytes(rf_at + #rf, len - rf_at - #rf)
    body:setBytes(new)
    handle:headers():replace("content-length", tostring(#new))
    meta:set(META, "render", rf)
  end
  -- body() yielded: the headers handle from before it is out of scope now.
  handle:headers():replace(HEADER, model)
  if convert then handle:headers():replace(CONVERT, "1") end
  handle:clearRouteCache()
end
