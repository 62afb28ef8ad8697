-- whisper-gateway: the multipart reader of the request-side Lua filter.
--
-- Prepended to route_by_model.lua when translator/lua.py renders it (Envoy takes one
-- inline chunk per route). Pure functions over an Envoy body buffer (or any
-- object with length() and getBytes(offset, n)), so tests run them in plain Lua
-- (tests/test_lua_multipart.py).
--
-- multipart_boundary(content_type) -> boundary | nil
-- multipart_fields(body, boundary, wanted) -> fields | nil, err
--   wanted: field name -> max bytes; fields[name] = {value, offset (0-based)};
--   err = {status = 400, message = ..., param = field name | nil}
--
-- Strict and fail-closed (RFC 2046 section 5.1.1, RFC 7578). The gateway routes by
-- the `model` it reads here and the backend serves the `model` its own parser
-- reads (aiohttp, python-multipart): any body the two could read differently is
-- refused, never guessed at. So:
-- - the whole body is walked: a wanted field sent twice is a 400 (backends keep
--   the last one), and so is a body that never reaches its closing boundary;
-- - a delimiter is CRLF "--" boundary, optional spaces/tabs, CRLF (or "--" for
--   the last one); a line a lenient parser would still take for a delimiter (LF
--   only, a bare CR, other whitespace, the body's end) is a 400, any other
--   lookalike is part content;
-- - the preamble is ignored, but the first "--boundary" in the body must be the
--   first delimiter (parsers that search line by line find it elsewhere);
--   the epilogue is ignored;
-- - part headers are CRLF lines, at most HEAD_MAX bytes; each part has one
--   Content-Disposition: form-data with a plain `name` parameter, which alone
--   names the field (not filename, not name*=, which backends would honour);
-- - nothing a backend decodes before reading a part is accepted: nested
--   multipart, transfer encodings, the _charset_ field; a wanted field has no
--   content encoding and no charset but UTF-8;
-- - wanted values are short lines: not trimmed, no control characters.

local WINDOW = 1048576
-- Windows read between two full garbage collections. Each window is a new Lua
-- string; left to LuaJIT's collector they piled up to ~24 MB per upload walked
-- (measured with collectgarbage("count")), beside the body Envoy already holds.
local COLLECT_EVERY = 4
local HEAD_MAX = 16384
local PAD_MAX = 64 -- transport padding after a delimiter, in bytes
local MAX_PARTS = 256
local TOKEN = "[%w!#$%%&'*+%-.^_`|~]+"

-- A failure the walk reports to the client; multipart_fields catches it.
local function fail(message, param)
  error({status = 400, message = message, param = param}, 0)
end

-- A view of the body with 0-based offsets. It is read in windows of WINDOW
-- bytes (a small body in one), cached, so a 25 MB upload is never copied whole
-- and each byte is fetched about once however many lookups land in a window.
-- Old windows are collected as the walk goes: at most COLLECT_EVERY of them
-- (4 MiB) are garbage at once, whatever the body's size.
local function reader(body)
  local len = body:length()
  local at, win = 0, "" -- the cached window: body bytes [at, at + #win)
  local r = {len = len}
  local loads = 0

  local function load(from, n)
    win = ""
    loads = loads + 1
    if loads % COLLECT_EVERY == 0 then collectgarbage() end
    at, win = from, body:getBytes(from, math.min(n, len - from))
  end

  -- The offset of the first `needle` that starts in [from, last], or nil.
  function r.find(needle, from, last)
    last = math.min(last or len, len - #needle)
    while from <= last do
      if from < at or from + #needle > at + #win then load(from, WINDOW + #needle) end
      local i = string.find(win, needle, from - at + 1, true)
      if i then
        if at + i - 1 <= last then return at + i - 1 end
        return nil
      end
      if at + #win >= len then return nil end
      -- A needle that starts here crosses the window's end: the next window has it.
      from = at + #win - #needle + 1
    end
    return nil
  end

  -- A string s and index i such that s:sub(i) starts at body offset `from` and
  -- holds at least min(n, len - from) bytes, without a copy when the window has them.
  function r.tail(from, n)
    if from >= at and from + n <= at + #win then return win, from - at + 1 end
    if from >= len then return "", 1 end
    return body:getBytes(from, math.min(n, len - from)), 1
  end

  function r.sub(from, n)
    local s, i = r.tail(from, n)
    return string.sub(s, i, i + n - 1)
  end

  return r
end

-- The line after "--boundary" at offset p: "part" or "close" and the offset past
-- its CRLF, or nil when the bytes are part content.
local function delimiter_line(r, p)
  local s, i = r.tail(p, PAD_MAX + 8)
  local close = string.sub(s, i, i + 1) == "--"
  local j = close and i + 2 or i
  local pad_end = string.match(s, "^[ \t]*()", j)
  if pad_end - j <= PAD_MAX then
    if string.sub(s, pad_end, pad_end + 1) == "\r\n" then
      return close and "close" or "part", p + (pad_end - i) + 2
    end
    if close and p + (pad_end - i) == r.len then return "close", r.len end
  end
  -- aiohttp takes any "--boundary" line that ends in whitespace for a delimiter
  -- (it strips trailing whitespace, LF ends a line): refuse it rather than read
  -- content where a backend reads a new part.
  local k = string.match(s, "^[ \t\r\11\12]*()", j)
  local c = string.sub(s, k, k)
  if c == "\n" or c == "" or k - j > PAD_MAX then
    fail("malformed multipart body: a boundary line must end with CRLF")
  end
  return nil
end

-- The 0-based offset of the line that starts the next part (or ends the body)
-- after `from`, its kind, and the offset past it.
local function next_delimiter(r, delim, from)
  while true do
    local at = r.find(delim, from)
    if not at then fail("malformed multipart body: it ends before the closing boundary") end
    local kind, after = delimiter_line(r, at + #delim)
    if kind then return at, kind, after end
    from = at + 1
  end
end

-- The `name` of a Content-Disposition: form-data value. Quoted strings may hold
-- ';' (filenames do); with no backslash escapes, aiohttp's split on every ';'
-- then reads the same parameters or none at all.
local function disposition(value)
  if string.find(value, "\\", 1, true) then
    fail("a backslash in a part's Content-Disposition header is not supported")
  end
  local bad = "every part needs a Content-Disposition: form-data header with a name"
  local kind, pos = string.match(value, "^[ \t]*(" .. TOKEN .. ")[ \t]*()")
  if not kind or string.lower(kind) ~= "form-data" then fail(bad) end
  local params = {}
  while pos <= #value do
    local key, p = string.match(value, "^;[ \t]*(" .. TOKEN .. ")[ \t]*=[ \t]*()", pos)
    if not key then fail("malformed Content-Disposition header in a part") end
    -- aiohttp reads a token only when ';' follows at once, and a quoted value
    -- holding ';' only when it holds one and ';' (or the end) follows at once.
    local v, q = string.match(value, '^"([^"]*)"()', p)
    if v and string.find(v, ";", 1, true) then
      if string.find(v, ";.*;") or not string.find(value, "^;", q) and q <= #value then v = nil end
    elseif v then
      q = string.match(value, "^[ \t]*()", q)
    else
      v, q = string.match(value, "^(" .. TOKEN .. ")()", p)
    end
    if not v then fail("malformed Content-Disposition header in a part") end
    key = string.lower(key)
    if params[key] then fail("duplicate '" .. key .. "' in a part's Content-Disposition") end
    -- Backends read name*= (RFC 2231) over name=: one name only.
    if string.sub(key, 1, 5) == "name*" then
      fail("a part's name must be a plain name parameter, not " .. key)
    end
    params[key] = v
    pos = q
  end
  local name = params.name
  if not name then fail(bad) end
  -- aiohttp strips leading '/' (and '\') from a quoted name.
  if string.sub(name, 1, 1) == "/" then fail("a part's name may not start with '/'") end
  return name
end

local SINGLE = {
  ["content-disposition"] = true,
  ["content-type"] = true,
  ["content-transfer-encoding"] = true,
  ["content-encoding"] = true,
}
local IDENTITY_CTE = {["7bit"] = true, ["8bit"] = true, binary = true}
local UTF8 = {["utf-8"] = true, utf8 = true, ["us-ascii"] = true, ascii = true}

-- A part's headers (the lines between the delimiter and the empty line), by
-- lower-case name; a line that is not `token: value` is a 400.
local function part_headers(head)
  local headers = {}
  if head == "" then return headers end
  for line in string.gmatch(head .. "\r\n", "(.-)\r\n") do
    local name, value = string.match(line, "^(" .. TOKEN .. "):[ \t]*(.-)[ \t]*$")
    -- No bare CR or LF, no obs-fold, no control characters but tab.
    if not name or string.find(value, "[%z\1-\8\10-\31\127]") then
      fail("malformed multipart body: invalid header line in a part")
    end
    name = string.lower(name)
    if SINGLE[name] and headers[name] then
      fail("duplicate " .. name .. " header in a part")
    end
    headers[name] = value
  end
  return headers
end

-- The field name of a part, after refusing what a backend would decode first.
local function part_name(headers, wanted)
  local name = disposition(headers["content-disposition"] or "")
  if name == "_charset_" then fail("the _charset_ field is not supported: send UTF-8 fields") end
  local ctype = string.lower(headers["content-type"] or "")
  if string.find(ctype, "^[ \t]*multipart") then fail("nested multipart parts are not supported") end
  local cte = headers["content-transfer-encoding"]
  if cte and not IDENTITY_CTE[string.lower(cte)] then
    fail("Content-Transfer-Encoding " .. cte .. " is not supported")
  end
  if wanted[name] then
    local ce = headers["content-encoding"]
    if ce and string.lower(ce) ~= "identity" then
      fail("the '" .. name .. "' field may not have a Content-Encoding", name)
    end
    for charset in string.gmatch(string.gsub(ctype, "[ \t\"]", ""), "charset=([^;]*)") do
      if not UTF8[charset] then fail("the '" .. name .. "' field must be UTF-8 text", name) end
    end
  end
  return name
end

local function walk(body, boundary, wanted)
  local r = reader(body)
  local dash = "--" .. boundary
  local delim = "\r\n" .. dash
  local first = r.find(dash, 0)
  if not first then
    fail("malformed multipart body: the boundary from the Content-Type header is not in it")
  end
  local kind, after
  if first == 0 or (first >= 2 and r.sub(first - 2, 2) == "\r\n") then
    kind, after = delimiter_line(r, first + #dash)
  end
  if not kind then
    fail("malformed multipart body: the first boundary is not on a line of its own")
  end
  local found, parts = {}, 0
  while kind == "part" do
    parts = parts + 1
    if parts > MAX_PARTS then fail("too many parts in the multipart body (more than " .. MAX_PARTS .. ")") end
    -- The headers end at an empty line; with no headers, that is the
    -- delimiter's own CRLF followed by CRLF.
    local head_end = r.find("\r\n\r\n", after - 2, after - 2 + HEAD_MAX)
    if not head_end then
      if r.len - after > HEAD_MAX then
        fail("malformed multipart body: a part's headers exceed " .. HEAD_MAX .. " bytes")
      end
      fail("malformed multipart body: a part's headers do not end with an empty line")
    end
    local head = head_end > after - 2 and r.sub(after, head_end - after) or ""
    local name = part_name(part_headers(head), wanted)
    local start = head_end + 4
    local stop
    stop, kind, after = next_delimiter(r, delim, start)
    local max = wanted[name]
    if max then
      if found[name] then fail("duplicate '" .. name .. "' field", name) end
      if stop - start > max then
        fail("the '" .. name .. "' field is longer than " .. max .. " bytes", name)
      end
      local value = r.sub(start, stop - start)
      if string.find(value, "[%z\1-\31\127]") then
        fail("the '" .. name .. "' field contains control characters", name)
      end
      found[name] = {value, start}
    end
  end
  return found
end

local function multipart_fields(body, boundary, wanted)
  local ok, res = pcall(walk, body, boundary, wanted)
  -- The last windows are garbage now: free them before the body goes upstream,
  -- where Envoy's router copies it (retries keep the original). Only for a body
  -- larger than a window: a full collection costs more than a small request's
  -- whole walk, and a small body leaves less than a window of garbage.
  if body:length() > WINDOW then collectgarbage() end
  if ok then return res end
  if type(res) == "table" then return nil, res end
  error(res, 0)
end

-- Not in a boundary: control and non-ASCII bytes, and what parsers read
-- differently (';' and '"' by aiohttp's split, '\' by quoted-string unescaping).
local NOT_BCHARS = '[%z\1-\31"\\;\127-\255]'

-- The boundary of a multipart/form-data content type, or nil. Parameters are
-- split on every ';' as aiohttp does, so a quoted value holding ';' (which a
-- proper parser keeps whole) comes apart and is refused, as is a value with a
-- stray '"'. A boundary is 1..70 printable ASCII characters (RFC 2046 is stricter)
-- with no space at either end.
local function multipart_boundary(content_type)
  local items, boundary = {}, nil
  for item in string.gmatch(content_type .. ";", "([^;]*);") do items[#items + 1] = item end
  if string.lower(string.match(items[1], "^[ \t]*(.-)[ \t]*$")) ~= "multipart/form-data" then
    return nil
  end
  for n = 2, #items do
    local item = items[n]
    if string.find(item, "[^ \t]") then
      local key, value = string.match(item, "^[ \t]*(" .. TOKEN .. ")[ \t]*=[ \t]*(.-)[ \t]*$")
      if not key then return nil end
      local quoted = string.match(value, '^"([^"]*)"$')
      if not quoted and not string.match(value, '^[^ \t"]+$') then return nil end
      if string.lower(key) == "boundary" then
        if boundary then return nil end
        boundary = quoted or value
        if #boundary < 1 or #boundary > 70 or string.find(boundary, NOT_BCHARS)
          or string.find(boundary, "^ ") or string.find(boundary, " $") then
          return nil
        end
      end
    end
  end
  return boundary
end
