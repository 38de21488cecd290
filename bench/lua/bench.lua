-- wrk script for every scenario: wrk ... -s bench.lua URL -- MODE PATH FILE NONCE PASSWORD
--   get      GET requests, one per line of FILE ("path<TAB>bearer token", token "-" for none),
--            taken round-robin, so each connection in turn presents another user's token
--   register POST PATH a JSON {email, name, password} with an email unique to this run
--   insert   POST PATH a JSON {email, name} with an email unique to this run (the baseline)
--   token    POST PATH an OAuth2 form, the emails of FILE round-robin with PASSWORD
-- done() prints one line "BENCH_JSON {...}" that bench/wrk.py reads.

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  table.insert(threads, thread)
  next_id = next_id + 1
end

local mode, path, nonce, password
local prepared = {}
local emails = {}
local index = 0
local counter = 0

local function read_lines(file)
  local lines = {}
  for line in io.lines(file) do
    if line ~= "" then
      table.insert(lines, line)
    end
  end
  return lines
end

function init(args)
  mode, path, nonce, password = args[1], args[2], args[4], args[5]
  local file = args[3]
  if mode == "get" then
    for _, line in ipairs(read_lines(file)) do
      local target, token = line:match("^([^\t]+)\t(.+)$")
      local headers = {}
      if token ~= "-" then
        headers["Authorization"] = "Bearer " .. token
      end
      table.insert(prepared, wrk.format("GET", target, headers))
    end
  elseif mode == "token" then
    emails = read_lines(file)
  end
  -- Threads start at different places of the list.
  index = (id - 1) * 7919
end

local json_headers = { ["Content-Type"] = "application/json" }
local form_headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function request()
  index = index + 1
  if mode == "get" then
    return prepared[(index % #prepared) + 1]
  end
  counter = counter + 1
  if mode == "register" then
    local body = string.format(
      '{"email":"r%s-%d-%d@bench.example.com","name":"Bench User","password":"%s"}',
      nonce, id, counter, password)
    return wrk.format("POST", path, json_headers, body)
  elseif mode == "insert" then
    local body = string.format(
      '{"email":"i%s-%d-%d@bench.example.com","name":"Bench User"}', nonce, id, counter)
    return wrk.format("POST", path, json_headers, body)
  elseif mode == "token" then
    local email = emails[(index % #emails) + 1]
    local body = "username=" .. email:gsub("@", "%%40") .. "&password=" .. password
    return wrk.format("POST", path, form_headers, body)
  end
  error("unknown mode " .. tostring(mode))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"max_us":%.0f,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
