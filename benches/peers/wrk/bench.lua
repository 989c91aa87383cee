-- wrk script for scripts/loadbench: POST tools/call whoami with a bearer token.
--
--   wrk ... -s bench.lua URL -- repeated FILE   every request carries the token in FILE
--   wrk ... -s bench.lua URL -- unique PREFIX   thread K sends the tokens of PREFIX.K.txt
--                                               (one per line) in order, each once
--
-- Each request is pre-formatted in init(), so request() only picks a string: the client does
-- the same work in both workloads. done() prints one machine-readable RESULT line; `wraps`
-- counts how often a thread ran out of unique tokens and started over (must be 0: a reused
-- token could be a cache hit).

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
local reqs = {}
local n = 0
local idx = 0
local unique = false
wraps = 0
used = 0

function init(args)
   local mode, file = args[1], args[2]
   if (mode ~= "repeated" and mode ~= "unique") or not file then
      error("usage: -- repeated FILE | unique PREFIX")
   end
   local headers = {
      ["Content-Type"] = "application/json",
      ["Accept"] = "application/json, text/event-stream",
      ["MCP-Protocol-Version"] = "2025-11-25",
      ["Authorization"] = "Bearer @@TOKEN@@",
   }
   local template = wrk.format("POST", nil, headers, body)
   local s, e = string.find(template, "@@TOKEN@@", 1, true)
   local prefix, suffix = string.sub(template, 1, s - 1), string.sub(template, e + 1)
   local path = file
   if mode == "unique" then
      unique = true
      path = file .. "." .. id .. ".txt"
   end
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   for token in string.gmatch(data, "[^\n]+") do
      n = n + 1
      reqs[n] = prefix .. token .. suffix
   end
   if n == 0 then
      error("no token in " .. path)
   end
   if mode == "repeated" then
      n = 1
   end
end

function request()
   idx = idx + 1
   if idx > n then
      idx = 1
      if unique then
         wraps = wraps + 1
      end
   end
   used = used + 1
   return reqs[idx]
end

function done(summary, latency, requests)
   local wrapped = 0
   for _, t in ipairs(threads) do
      wrapped = wrapped + (t:get("wraps") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
      "non2xx=%d connect=%d read=%d write=%d timeout=%d wraps=%d\n",
      summary.requests, summary.duration, summary.requests / summary.duration * 1e6,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.status, e.connect, e.read, e.write, e.timeout, wrapped))
end
