-- whisper-gateway: the listener's first filter, enabled where the edge can refuse.
-- Over HTTP/2 and HTTP/3 the edge's refusals (no key, a wrong key, a rate limit) wait
-- for the whole upload: Envoy ends a stream it answered while the client was still
-- sending with RST_STREAM, and curl 7.88 (Debian 12's) then reports "(92) Stream error"
-- without the answer. HTTP/1 needs no wait: Envoy answers and closes the connection.
-- The upload is held as the audio route's Lua would hold it, within the same limit.
function envoy_on_request(handle)
  local protocol = handle:streamInfo():protocol()
  if protocol ~= "HTTP/1.0" and protocol ~= "HTTP/1.1" then
    handle:body()
  end
end
