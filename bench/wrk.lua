-- Request shapes for wrk, chosen by environment variables:
--   WRK_METHOD  GET | POST (default POST)
--   WRK_PATH    request path (default /chat/completions)
--   WRK_BODY    fixed  : one body, the same every request
--               distinct: a body never sent before (cache misses)
--               set    : bodies "fill WRK_PREFIX i" for i drawn from [0, WRK_N)
--                        (same strings as bench-probe fill, so they hit what it stored)
--   WRK_PREFIX  string making bodies unique to a run
--   WRK_N       size of the set
--   WRK_AUTH    bearer token (default sk-bench)
-- done() prints one line "WRKJSON {...}" with latency percentiles in microseconds and the
-- latency histogram as [[microseconds, count], ...].

local method = os.getenv("WRK_METHOD") or "POST"
local path = os.getenv("WRK_PATH") or "/chat/completions"
local mode = os.getenv("WRK_BODY") or "fixed"
local prefix = os.getenv("WRK_PREFIX") or "p"
local n = tonumber(os.getenv("WRK_N") or "100")
local auth = os.getenv("WRK_AUTH") or "sk-bench"
local headers = { ["Authorization"] = "Bearer " .. auth, ["Content-Type"] = "application/json" }

local function body_for(content)
  return '{"model":"GPT-4o","messages":[{"role":"user","content":"' .. content .. '"}]}'
end

local threads = {}
local tid = 0
function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
  table.insert(threads, thread)
end

local counter = 0
function init(args)
  math.randomseed(os.time() + (tid or 0) * 7919)
  if method == "GET" then
    fixed_req = wrk.format("GET", path, headers, nil)
  else
    fixed_req = wrk.format("POST", path, headers, body_for("fixed " .. prefix))
  end
end

function request()
  if method == "GET" or mode == "fixed" then
    return fixed_req
  end
  counter = counter + 1
  if mode == "distinct" then
    return wrk.format("POST", path, headers, body_for("miss " .. prefix .. " " .. tostring(tid) .. " " .. counter))
  end
  local i = math.random(0, n - 1)
  return wrk.format("POST", path, headers, body_for("fill " .. prefix .. " " .. i))
end

function done(summary, latency, requests)
  local e = summary.errors
  -- the whole latency histogram, so that runs done in rounds can be merged exactly
  local hist = {}
  for i = 1, #latency do
    local v, c = latency(i)
    hist[#hist + 1] = string.format("[%d,%d]", v, c)
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%.6f,"rps":%.1f,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,"hist":[%s]}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(hist, ",")))
end
