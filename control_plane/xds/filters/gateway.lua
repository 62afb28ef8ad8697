-- whisper-gateway: what both Lua filters share, prepended to each of them by
-- control_plane/xds/translator/lua.py (Envoy takes one inline chunk per filter).
-- The names are filled in from control_plane/names.py, where Python and Envoy's
-- config read them too.

-- Dynamic metadata: what the request side decided (the model routes match it).
local META = --META_NS--
-- Dynamic metadata of metering: audio seconds a response reported.
local METER = --METER--
-- The model the form named, as the request side writes it (never the client's).
local MODEL_HEADER = --MODEL_HEADER--
-- The client id the API key filter sets (the client's own is removed before any
-- filter runs).
local CLIENT_HEADER = --CLIENT_HEADER--
-- A client's request to split a long upload across the fleet (value "split").
local SPLIT_HEADER = --SPLIT_HEADER--

-- A JSON string literal for any Lua string (control characters as \u00XX).
local function json_string(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. s .. '"'
end
