-- whisper-gateway: route an OpenAI audio upload by its multipart `model` field.
--
-- Shipped to Envoy through RDS (LuaPerRoute on the virtual host), rendered by
-- control_plane/xds/translator/lua.py: the control plane fills in the model set.
-- The shared library (gateway.lua) and the multipart reader come before it.
-- The body is buffered up to the route's buffer limit (Envoy answers 413 past
-- it), the `model` part is found wherever it sits (curl sends it after the
-- file, the openai SDK before), and the internal header is always rewritten,
-- never trusted from the client.

-- model -> its stream format (openai | backend | text)
local MODELS = {
--MODELS--
}
local MODEL_LIST = "--MODEL_LIST--"
-- client id (CLIENT_HEADER) -> {model = true}; clients not listed may use every model
local CLIENT_MODELS = {
--CLIENT_MODELS--
}
local STREAM_FORMATS = {openai = true, backend = true, text = true}
-- Models whose uploads the splitter may serve piece by piece (long_audio.models), and
-- the size an upload must pass before it is split (long_audio.min_upload_mb).
local SPLIT_MODELS = {
--SPLIT_MODELS--
}
local SPLIT_MIN_BYTES = --SPLIT_MIN_BYTES--
-- vLLM's default upload limit (VLLM_MAX_AUDIO_CLIP_FILESIZE_MB, in MiB): a larger body
-- takes the response filter, which turns vLLM's 400 for it into OpenAI's 413.
local VLLM_MAX_BYTES = 25 * 1048576
local RENDERED = {text = true, srt = true, vtt = true}

local function reply(handle, status, message, param, kind)
  local body = '{"error":{"message":' .. json_string(message)
    .. ',"type":"' .. (kind or "invalid_request_error") .. '","param":'
    .. (param and json_string(param) or "null")
    .. ',"code":' .. status .. '}}'
  handle:respond({[":status"] = tostring(status), ["content-type"] = "application/json"}, body)
end

-- The fields the gateway reads, with the most bytes each may hold.
local WANTED = {model = 256, response_format = 64, stream = 16, stream_include_usage = 16}

-- The body with bytes [at, at + cut) replaced by `insert`; Content-Length follows.
local function splice(handle, body, at, cut, insert)
  local len = body:length()
  local new = body:getBytes(0, at) .. insert .. body:getBytes(at + cut, len - at - cut)
  body:setBytes(new)
  handle:headers():replace("content-length", tostring(#new))
  -- Up to three strings the size of the body: freed now, not at the collector's pace.
  new = nil
  if len > 1048576 then collectgarbage() end  -- small bodies: not worth a full collection
end

-- Routing reads only dynamic metadata (META.model, META.convert), which no client
-- can set: if this script fails, no model route matches and the request ends
-- in the gateway's own error, never at a cluster a client header chose.
function envoy_on_request(handle)
  local headers = handle:headers()
  local ctype = headers:get("content-type") or ""
  local boundary = ctype:lower():find("multipart/form-data", 1, true) and multipart_boundary(ctype)
  if not boundary then
    reply(handle, 400, "the request body must be multipart/form-data with a 'file' and a 'model' field", nil)
    return
  end
  local client = headers:get(CLIENT_HEADER)
  local body = handle:body()
  if body == nil then
    reply(handle, 400, "the request has no body: send a multipart form with 'file' and 'model'", "file")
    return
  end
  local fields, err = multipart_fields(body, boundary, WANTED)
  if not fields then
    reply(handle, err.status, err.message, err.param)
    return
  end
  local model = fields.model and fields.model[1]
  if model == nil or model == "" then
    reply(handle, 400, "you must provide a model parameter (available models: " .. MODEL_LIST .. ")", "model")
    return
  end
  if not MODELS[model] then
    reply(handle, 404, "The model '" .. model .. "' does not exist. Available models: " .. MODEL_LIST, "model")
    return
  end
  if client and CLIENT_MODELS[client] and not CLIENT_MODELS[client][model] then
    reply(handle, 403, "this API key may not use the model '" .. model .. "'", "model", "permission_error")
    return
  end
  local fmt = handle:headers():get("x-stream-format") or MODELS[model]
  if not STREAM_FORMATS[fmt] then
    reply(handle, 400, "x-stream-format must be openai, backend or text", "x-stream-format")
    return
  end
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set(META, "stream_format", fmt)
  if SPLIT_MODELS[model] and body:length() > SPLIT_MIN_BYTES
      and (handle:headers():get(SPLIT_HEADER) or ""):lower() == "split" then
    -- The splitter sends each piece back through this listener with the client's own
    -- form, so every rule below applies to the pieces; it needs only the stream format.
    handle:headers():replace("x-stream-format", fmt)
    handle:headers():replace(MODEL_HEADER, model)
    meta:set(META, "model", model)
    meta:set(META, "split", "1")
    handle:clearRouteCache()
    return
  end
  -- text, srt and vtt are rendered here, so every backend that answers json and
  -- verbose_json serves all five formats, identically. text needs no segments: it is
  -- json's text (a backend's verbose_json may hold fewer segments than the audio: the
  -- response side refuses those, and json still carries the whole text). srt, vtt and
  -- verbose_json come from verbose_json, whose segments the response side checks.
  local rf, rf_at = nil, nil
  if fields.response_format then rf, rf_at = fields.response_format[1], fields.response_format[2] end
  local stream = fields.stream and fields.stream[1]
  local convert = stream == "true" and fmt ~= "backend"
  if rf == "verbose_json" and stream ~= "true" then
    convert = true
    meta:set(META, "check", "verbose_json")
  elseif rf and RENDERED[rf] and stream ~= "true" then
    convert = true
    splice(handle, body, rf_at, #rf, rf == "text" and "json" or "verbose_json")
    meta:set(META, "render", rf)
  end
  if convert and stream == "true" and not fields.stream_include_usage then
    -- OpenAI's transcript.text.done carries usage, and metering reads its seconds;
    -- vLLM and whisper_backend send it only when asked. Not for the `backend` stream
    -- format, passed on byte for byte. The new part goes right after the `stream`
    -- value, before the delimiter that ended it.
    local at = fields.stream[2] + #stream
    splice(handle, body, at, 0, "\r\n--" .. boundary
      .. '\r\nContent-Disposition: form-data; name="stream_include_usage"\r\n\r\ntrue')
  end
  if body:length() > VLLM_MAX_BYTES then convert = true end
  -- For the backend and the access log only; routing never reads it.
  handle:headers():replace(MODEL_HEADER, model)
  meta:set(META, "model", model)
  if convert then meta:set(META, "convert", "1") end
  handle:clearRouteCache()
end
