-- POST a body of WRK_BODY_BYTES bytes (64 KiB by default) on every request.
local size = tonumber(os.getenv("WRK_BODY_BYTES") or "65536")
wrk.method = "POST"
wrk.body = string.rep("a", size)
wrk.headers["Content-Type"] = "application/octet-stream"
