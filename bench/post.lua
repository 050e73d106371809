-- wrk script for the benchmark: POST $WRK_BODY with "Authorization: Bearer $WRK_KEY".
-- With $WRK_MAX > 0 each thread stops after that many responses. done() prints one "BENCH {json}" line.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("WRK_KEY") or "none")

local max = tonumber(os.getenv("WRK_MAX") or "0")
local seen = 0

if max > 0 then  -- only then, since a response() hook costs wrk time on every request
  function response(status, headers, body)
    seen = seen + 1
    if seen >= max then wrk.thread:stop() end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
