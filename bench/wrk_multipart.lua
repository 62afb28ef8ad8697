-- wrk script: a small multipart transcription upload (model after the file, as curl sends it).
local boundary = "wrkboundary7MA4YWxkTrZu0gW"
local file = string.rep("a", 4096)
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
  .. 'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
  .. "Content-Type: application/octet-stream\r\n\r\n" .. file .. "\r\n"
  .. "--" .. boundary .. "\r\n"
  .. 'Content-Disposition: form-data; name="model"\r\n\r\n'
  .. (os.getenv("WRK_MODEL") or "fake/fast") .. "\r\n"
  .. "--" .. boundary .. "--\r\n"
