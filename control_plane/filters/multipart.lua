-- whisper-gateway: the multipart reader of the request-side Lua filter.
--
-- Prepended to route_by_model.lua when routes.py renders it (Envoy takes one
-- inline chunk per route). Pure functions over an Envoy body buffer (or any
-- object with length() and getBytes(offset, n)), so tests run them in plain Lua.
--
-- multipart_boundary(content_type) -> boundary | nil
-- multipart_fields(body, boundary, wanted) -> fields | nil, err
--   wanted: field name -> max bytes; fields[name] = {value, offset (0-based)};
--   err = {status = 400, message = ..., param = ...}

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
local function multipart_fields(body, boundary, wanted)
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

local function multipart_boundary(content_type)
  return content_type:match('[Bb]oundary="([^"]+)"') or content_type:match("[Bb]oundary=([^;%s]+)")
end
