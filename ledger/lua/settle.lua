--[[
settle.lua: closes one reservation exactly once, replacing its estimate with the actual cost,
recording the idempotent outcome and appending the audit entry.

KEYS[1] reservation   {P}:res:<res id>
KEYS[2] key spend     {P}:spend:<key id>
KEYS[3] policy spend  {P}:pspend
KEYS[4] reservations  {P}:reservations
KEYS[5] idempotency   {P}:idem:<key id>:<h>  (only touched when the reservation names it)
KEYS[6] audit         {P}:audit
KEYS[7] key record    {P}:key:<key id>       (read for the audit entry)
KEYS[8] objects       {P}:objects:<key id>   hash: vendor object id -> micro-dollars this key
                                             has counted for it (only touched with ARGV[11])

ARGV[1]  reservation id
ARGV[2]  actual cost, integer micro-dollars >= 0 (ignored for "unknown": the estimate stays)
ARGV[3]  outcome: "ok" (the vendor did it), "vendor_error" (the vendor refused; nothing moved),
         "not_sent" (never reached the vendor), "unknown" (may or may not have happened)
ARGV[4]  HTTP status from the vendor ("" when none)
ARGV[5]  vendor request id ("" when none)
ARGV[6]  response headers to replay (JSON), for "ok" and "vendor_error"
ARGV[7]  response body to replay
ARGV[8]  idempotency record lifetime, seconds
ARGV[9]  audit stream length (approximate MAXLEN)
ARGV[10] vendor
ARGV[11] vendor object the money of this call belongs to ("" when none): what is counted here is
         added to it, so a later call on the same object (confirm, capture) costs only the excess
ARGV[12] objects hash lifetime, seconds
ARGV[13] "1" when ARGV[7] is the whole response, "0" when it was too large to keep (a repeat of
         the Idempotency-Key is then refused, not replayed)

Each step is marked `-- model: settle.<step>`, as in reserve.lua.

Returns {"settled", delta, today after, total after} or {"already_settled"}. An actual above the
estimate is counted in full (never clipped to a cap) and written as `overshoot` in the audit entry.

Example: a reservation of 12500000 settled "ok" with actual 12500000 returns a delta of 0; settled
"not_sent" it returns -12500000 and the key's spend drops back.
]]

local function int(s)
  if s == nil or s == false or s == "" then return nil end
  return tonumber(s)
end

local function fmt(n)
  return string.format("%d", n)
end

local outcome = ARGV[3]
assert(outcome == "ok" or outcome == "vendor_error" or outcome == "not_sent" or outcome == "unknown",
  "outcome must be ok, vendor_error, not_sent or unknown")

local res = redis.call("HGETALL", KEYS[1])
-- model: settle.already_settled
if #res == 0 then return {"already_settled"} end
local r = {}
for i = 1, #res, 2 do r[res[i]] = res[i + 1] end

-- model: settle.actual
local amount = int(r.amount) or 0
local actual
if outcome == "unknown" then
  actual = amount -- never under-count what may have happened
elseif outcome == "not_sent" or outcome == "vendor_error" then
  actual = 0
else
  actual = int(ARGV[2])
  assert(actual and actual >= 0 and actual <= 1e15, "actual must be an integer in [0, 1e15]")
end
-- A re-attempt of a call whose first outcome was unknown never settles below what it carried.
-- model: settle.floor
if r.floor == "1" and actual < amount then actual = amount end
local delta = actual - amount

local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- model: settle.adjust
-- The daily counter only moves if the reservation's day is still the counter's day.
local function adjust(key)
  local s = redis.call("HMGET", key, "day", "today", "total")
  local today = int(s[2]) or 0
  local total = math.max(0, (int(s[3]) or 0) + delta)
  if s[1] == r.day then today = math.max(0, today + delta) end
  redis.call("HSET", key, "today", fmt(today), "total", fmt(total))
  return today, total
end
local today, total = 0, 0
if delta ~= 0 then
  today, total = adjust(KEYS[2])
  adjust(KEYS[3])
else
  local s = redis.call("HMGET", KEYS[2], "today", "total")
  today, total = int(s[1]) or 0, int(s[2]) or 0
end
if outcome ~= "not_sent" then
  redis.call("HINCRBY", KEYS[2], "calls", 1)
  redis.call("HSET", KEYS[2], "last_call_ms", fmt(now_ms))
end

-- model: settle.objects
if ARGV[11] ~= "" and actual > 0 then
  redis.call("HINCRBY", KEYS[8], ARGV[11], actual)
  redis.call("EXPIRE", KEYS[8], ARGV[12])
end

if r.idem and r.idem ~= "" then
  if outcome == "vendor_error" and r.floor ~= "1" then
    -- model: settle.idem_forget_refused
    -- Nothing moved: a retry goes to the vendor again (which replays its own answer), and no
    -- refused call leaves a day-long record behind.
    redis.call("DEL", KEYS[5])
  elseif outcome == "ok" or outcome == "vendor_error" then
    -- model: settle.idem_done
    redis.call("HSET", KEYS[5], "state", "done", "status", ARGV[4], "headers", ARGV[6], "body", ARGV[7],
      "kept", ARGV[13], "amount", fmt(actual))
    redis.call("EXPIRE", KEYS[5], ARGV[8])
  elseif outcome == "not_sent" and r.floor ~= "1" then
    -- model: settle.idem_forget_not_sent
    redis.call("DEL", KEYS[5]) -- nothing happened: a retry starts afresh
  else
    -- model: settle.idem_unknown
    -- The lifetime set at the first attempt stands: re-attempts never extend it.
    redis.call("HSET", KEYS[5], "state", "unknown", "amount", fmt(amount))
  end
end

local k = redis.call("HMGET", KEYS[7], "vault_key", "run_label")
redis.call("XADD", KEYS[6], "MAXLEN", "~", ARGV[9], "*",
  "ts", fmt(now_ms), "key", r.key or "", "vk", k[1] or "", "run", k[2] or "", "vendor", ARGV[10],
  "method", r.method or "", "path", r.path or "", "estimate", fmt(amount), "actual", fmt(actual),
  "status", ARGV[4], "request_id", ARGV[5], "outcome", outcome, "rule", "",
  "overshoot", fmt(math.max(0, actual - amount)))

-- model: settle.close
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[4], ARGV[1])
return {"settled", fmt(delta), fmt(today), fmt(total)}
