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
KEYS[9] closed unknown {P}:unknown:<res id>  hash: key, amount, day, idem of one the sweeper
                                             closed as "unknown" (ARGV[14]), kept ARGV[8] seconds
                                             so the replica's own late settle can still count
                                             what the vendor's answer showed above the estimate
KEYS[10..] owners     {P}:owner:<h>          one per vendor object the call created: set on an "ok"
                                             outcome to "<key id>\n<run label>", kept ARGV[12]
                                             seconds or a day past the key's expiry, whichever is
                                             later; never taken over from another key

9 KEYS and one more per created object (their number is not passed: 9 is a minimum), and exactly
14 ARGV: the script refuses any other counts before it reads anything.

ARGV[1]  reservation id
ARGV[2]  actual cost, integer micro-dollars >= 0 (ignored for "unknown": the estimate stays)
ARGV[3]  outcome: "ok" (the vendor did it), "vendor_error" (the vendor refused; nothing moved),
         "not_sent" (never reached the vendor), "unknown" (may or may not have happened)
ARGV[4]  HTTP status from the vendor ("" when none)
ARGV[5]  vendor request id ("" when none)
ARGV[6]  response headers to replay (JSON), for "ok" and "vendor_error"
ARGV[7]  response body to replay
ARGV[8]  idempotency record lifetime, seconds
ARGV[9]  audit stream length (approximate MAXLEN); "0", or a stream with a consumer group (an
         audit sink reads it): never trimmed here; the sink trims it once entries are in PostgreSQL
ARGV[10] vendor
ARGV[11] vendor object the money of this call belongs to ("" when none): what is counted here is
         added to it, so a later call on the same object (confirm, capture) costs only the excess
ARGV[12] objects hash lifetime, seconds
ARGV[13] "1" when ARGV[7] is the whole response, "0" when it was too large to keep (a repeat of
         the Idempotency-Key is then refused, not replayed)
ARGV[14] "1" when the sweeper closes the reservation (a replica stalled past its deadline may
         still settle it late), "0" from the replica's own settle

Each step is marked `-- model: settle.<step>`, as in reserve.lua.

Returns {"settled", delta, today after, total after} or {"already_settled"}. A late "ok" settle of
a reservation closed as unknown counts only the excess of its actual over the estimate kept. An actual above the
estimate is counted in full (never clipped to a cap) and written as `overshoot` in the audit entry.

Example: a reservation of 12500000 settled "ok" with actual 12500000 returns a delta of 0; settled
"not_sent" it returns -12500000 and the key's spend drops back.
]]

-- The contract above, checked first: other counts mean a caller out of step with this script,
-- which would read nil for an argument or write under the wrong key.
if #KEYS < 9 or #ARGV ~= 14 then
  return redis.error_reply(string.format(
    "ERR settle.lua: wants 9 KEYS or more and 14 ARGV, got %d KEYS and %d ARGV", #KEYS, #ARGV))
end

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

-- The daily counter only moves if the reservation's day is still the counter's day.
local function adjust(key, delta, day)
  local s = redis.call("HMGET", key, "day", "today", "total")
  local today = int(s[2]) or 0
  local total = math.max(0, (int(s[3]) or 0) + delta)
  if s[1] == day then today = math.max(0, today + delta) end
  redis.call("HSET", key, "today", fmt(today), "total", fmt(total))
  return today, total
end

local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Adds `n` to what the key has counted for the call's vendor object, when the call names one.
local function count_object(n)
  if ARGV[11] ~= "" and n > 0 then
    redis.call("HINCRBY", KEYS[8], ARGV[11], n)
    redis.call("EXPIRE", KEYS[8], ARGV[12])
  end
end

-- Records the objects the call created (KEYS[10..]) as `key`'s. An object that already has an
-- owner keeps it: a response can never hand one key's object to another.
-- Kept ARGV[12] seconds, or a day past the key's expiry if that is later: a key may act on what
-- it made for as long as it lives (a subscription it must cancel).
local function own_created(key)
  if outcome ~= "ok" or #KEYS < 10 then return end
  local k = redis.call("HMGET", KEYS[7], "run_label", "expires_at_ms")
  local mine = key .. "\n" .. (k[1] or "")
  local ttl = int(ARGV[12])
  local expires = int(k[2])
  if expires then ttl = math.max(ttl, math.floor((expires - now_ms) / 1000) + 86400) end
  for i = 10, #KEYS do
    local cur = redis.call("GET", KEYS[i])
    if not cur then
      redis.call("SET", KEYS[i], mine, "EX", fmt(ttl))
    elseif cur == mine then
      redis.call("EXPIRE", KEYS[i], fmt(ttl))
    end
  end
end

-- audit-xadd: begin. Identical in reserve.lua and settle.lua (a unit test in ledger/src/ledger.rs
-- compares the two blocks): change both together.
-- Appends entry `e` (every entry has the same fields; absent ones are written empty) to
-- `stream`, trimmed to about `maxlen` entries unless it is "0" or an audit sink reads the stream
-- (it has a consumer group): then only the sink trims it, and only below what PostgreSQL holds,
-- whatever a replica without the database was told. The XADD spells its fields out: a table of
-- arguments and `unpack` cost more than the XADD itself.
local function xadd(stream, maxlen, e)
  local trim = maxlen ~= "0"
  if trim then
    local groups = redis.pcall("XINFO", "GROUPS", stream)
    if groups.err then
      -- No stream yet, so no group either; any other error (an ACL that denies XINFO) keeps all.
      trim = string.find(groups.err, "no such key", 1, true) ~= nil
    else
      trim = #groups == 0
    end
  end
  if trim then
    return redis.call("XADD", stream, "MAXLEN", "~", maxlen, "*", "id", e.id, "ts", e.ts,
      "key", e.key, "vk", e.vk, "run", e.run, "vendor", e.vendor, "method", e.method,
      "path", e.path, "estimate", e.estimate, "actual", e.actual, "status", e.status or "",
      "request_id", e.request_id or "", "outcome", e.outcome, "rule", e.rule or "",
      "overshoot", e.overshoot or "0")
  end
  return redis.call("XADD", stream, "*", "id", e.id, "ts", e.ts,
    "key", e.key, "vk", e.vk, "run", e.run, "vendor", e.vendor, "method", e.method,
    "path", e.path, "estimate", e.estimate, "actual", e.actual, "status", e.status or "",
    "request_id", e.request_id or "", "outcome", e.outcome, "rule", e.rule or "",
    "overshoot", e.overshoot or "0")
end
-- audit-xadd: end

-- Appends the call's audit entry, under the reservation id (`id`, the audit table's key).
-- `vk` and `run` are the VaultKey and run label the reservation recorded; one made before they
-- were recorded (or a late settle's) reads them from the key record.
local function audit(id, what, key, method, path, estimate, actual, overshoot, vk, run)
  if vk == nil then
    local k = redis.call("HMGET", KEYS[7], "vault_key", "run_label")
    vk, run = k[1] or "", k[2] or ""
  end
  xadd(KEYS[6], ARGV[9], {id = id, ts = fmt(now_ms), key = key, vk = vk,
    run = run or "", vendor = ARGV[10], method = method, path = path,
    estimate = fmt(estimate), actual = fmt(actual), status = ARGV[4], request_id = ARGV[5],
    outcome = what, overshoot = fmt(overshoot)})
end

local res = redis.call("HGETALL", KEYS[1])
if #res == 0 then
  -- model: settle.late
  -- Closed as unknown (a stalled replica swept): the estimate stayed counted. The vendor's answer
  -- arriving now can only add what it shows above that estimate; less is not taken back.
  local tomb = redis.call("HGETALL", KEYS[9])
  if #tomb > 0 and outcome == "ok" then
    local d = {}
    for i = 1, #tomb, 2 do d[tomb[i]] = tomb[i + 1] end
    redis.call("DEL", KEYS[9])
    local actual = int(ARGV[2])
    assert(actual and actual >= 0 and actual <= 1e15, "actual must be an integer in [0, 1e15]")
    -- What is counted for the call now: the estimate kept, or, with an Idempotency-Key, what its
    -- record holds (a re-attempt since may have settled more, or be carrying the money now).
    local held = int(d.amount) or 0
    if d.idem == "1" then
      local recorded = redis.call("HGET", KEYS[5], "amount")
      if recorded then held = int(recorded) or held end
    end
    local excess = actual - held
    local counts = excess > 0
    own_created(d.key or "")
    -- A re-attempt in flight or to come must carry the whole actual, not count it again, and
    -- must not add to the vendor object what this settle adds (`late`).
    if counts and d.idem == "1" and redis.call("EXISTS", KEYS[5]) == 1 then
      redis.call("HSET", KEYS[5], "amount", fmt(actual), "late", fmt(actual))
    end
    if counts then
      local today, total = adjust(KEYS[2], excess, d.day)
      adjust(KEYS[3], excess, d.day)
      count_object(actual)
      -- A second entry for the call, outcome "late": the money its first entry ("unknown")
      -- did not show.
      audit(ARGV[1] .. ":late", "late", d.key or "", "", "", 0, excess, excess)
      return {"settled", fmt(excess), fmt(today), fmt(total)}
    end
  end
  -- model: settle.already_settled
  return {"already_settled"}
end
local r = {}
for i = 1, #res, 2 do r[res[i]] = res[i + 1] end

-- model: settle.actual
local amount = int(r.amount) or 0
-- A re-attempt carries what its record holds, which a late settle of the first attempt may have
-- raised (and counted, and added to the vendor object) since the re-attempt was reserved.
local added_late = 0
if r.floor == "1" and r.idem and r.idem ~= "" then
  local rec = redis.call("HMGET", KEYS[5], "res", "amount", "late")
  local held = int(rec[2])
  if rec[1] == ARGV[1] then
    if held and held > amount then amount = held end
    added_late = int(rec[3]) or 0
  end
end
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

-- model: settle.adjust
-- The key's counters in one read and one write: the delta (as `adjust` moves it), the call
-- count and the last call's time.
local ks = redis.call("HMGET", KEYS[2], "day", "today", "total", "calls")
local today, total = int(ks[2]) or 0, int(ks[3]) or 0
if delta ~= 0 then
  total = math.max(0, total + delta)
  if ks[1] == r.day then today = math.max(0, today + delta) end
  adjust(KEYS[3], delta, r.day)
end
if outcome ~= "not_sent" then
  redis.call("HSET", KEYS[2], "today", fmt(today), "total", fmt(total),
    "calls", fmt((int(ks[4]) or 0) + 1), "last_call_ms", fmt(now_ms))
elseif delta ~= 0 then
  redis.call("HSET", KEYS[2], "today", fmt(today), "total", fmt(total))
end

-- model: settle.objects
count_object(actual - added_late)
own_created(r.key or "")

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

audit(ARGV[1], outcome, r.key or "", r.method or "", r.path or "", amount, actual,
  math.max(0, actual - amount), r.vk, r.run)

-- model: settle.tombstone
if outcome == "unknown" and ARGV[14] == "1" then
  redis.call("HSET", KEYS[9], "key", r.key or "", "amount", fmt(actual), "day", r.day or "",
    "idem", (r.idem and r.idem ~= "") and "1" or "0")
  redis.call("EXPIRE", KEYS[9], ARGV[8])
end

-- model: settle.close
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[4], ARGV[1])
return {"settled", fmt(delta), fmt(today), fmt(total)}
