-- wrk script for bench/search_latency.py: POST a different search body on every request
-- (bodies from the file named by WRK_BODIES, one JSON object a line) and print
-- p50/p95/p99 and the request count as JSON when done.
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
local i = math.random(#bodies)

request = function()
  i = (i % #bodies) + 1
  return wrk.format("POST", "/api/v1/search", {["Content-Type"] = "application/json"}, bodies[i])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "errors": %d, "seconds": %.3f, "p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, e.status + e.connect + e.read + e.write + e.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
