--[[
reserve.lua: admits one call and reserves its estimated cost, all or nothing.

Every key shares the policy's hash tag {prefix:tag}, so the script runs unchanged on Redis
Cluster. Redis TIME is the clock for expiry and the UTC day.

KEYS[1] key record    {P}:key:<key id>     hash written by the operator; `retired` = "1" is
                                           set once by a revoke for good and never cleared
KEYS[2] key spend     {P}:spend:<key id>   hash: day, today, total, calls, refused, last_call_ms
KEYS[3] policy record {P}:policy           hash: daily_budget, total_budget (may be absent)
KEYS[4] policy spend  {P}:pspend           hash: day, today, total
KEYS[5] reservations  {P}:reservations     zset: reservation id by sweep deadline (ms)
KEYS[6] reservation   {P}:res:<res id>     hash, created here
KEYS[7] idempotency   {P}:idem:<key id>:<h> hash; only touched when ARGV[7] == "1"
KEYS[8] audit         {P}:audit            stream
KEYS[9..] owners      {P}:owner:<h>        string "<key id>\n<run label>" per vendor object the
                                           call names (path ids, linked objects): each must have
                                           been created through the proxy by this key, or by a
                                           key of its run when ARGV[15] == "1"

8 KEYS and one more per owned object (their number is not passed: 8 is a minimum), and exactly 16
ARGV: the script refuses any other counts before it reads anything.

ARGV[1]  sha256 hex of the presented secret
ARGV[2]  method, upper case
ARGV[3]  path, canonical (no query, no empty or dot segments, no trailing slash)
ARGV[4]  estimated cost, integer micro-dollars >= 0
ARGV[5]  reservation id
ARGV[6]  sweep deadline, ms after now
ARGV[7]  "1" when the call carries an Idempotency-Key
ARGV[8]  request fingerprint (what a reused Idempotency-Key must match)
ARGV[9]  idempotency record lifetime, seconds
ARGV[10] audit stream length (approximate MAXLEN); "0", or a stream with a consumer group (an
         audit sink reads it): never trimmed here; the sink trims it once entries are in PostgreSQL
ARGV[11] key id (for the audit entry)
ARGV[12] "reserve", or "check": stop after the key, secret, revocation, expiry and allowlist
         checks, reserving nothing (the proxy reads a vendor object to cost a call only after this)
ARGV[13] "1" when the call is a read (GET, HEAD): only reads pass a spent cap
ARGV[14] longest age of a re-attempt, ms after the first attempt (the vendor's own idempotency
         window, less a margin: after it, the vendor would run the call again as a new one)
ARGV[15] "1" when objects created by any key of the same run label count as this key's own
ARGV[16] Unix ms until which the call commits money (a subscription's cancel_at), or "0": refused
         as "commitment_outlives_key" unless the key expires no earlier

Each step is marked `-- model: reserve.<step>`: the step of the same name in ledger-model/
(src/steps.rs), which checks the protocol over every interleaving. Change both together.

Returns one of
  {"granted", res id, today after, total after, vault key, policy}
  {"admitted", vault key, policy}      (mode "check" only)
  {"reattempt", res id, vault key, policy}   an earlier attempt's outcome is unknown: forward
                              again, count nothing new
  {"refused", rule, limit, spent, estimate, vault key, policy}   (names empty before authentication;
                              for "object_not_owned", limit is the object's position in KEYS[9..])
  {"replay", status, headers json, body, kept}   kept "0": the response was too large to keep
  {"in_flight"}

Example: a $12.50 PaymentIntent on a key with a $500 daily cap and $490 spent today returns
{"refused", "daily_cap", "500000000", "490000000", "12500000", "billing/run-1", "billing/stripe"}.
]]

-- The contract above, checked first: other counts mean a caller out of step with this script,
-- which would read nil for an argument or write under the wrong key.
if #KEYS < 8 or #ARGV ~= 16 then
  return redis.error_reply(string.format(
    "ERR reserve.lua: wants 8 KEYS or more and 16 ARGV, got %d KEYS and %d ARGV", #KEYS, #ARGV))
end

local function int(s)
  if s == nil or s == false or s == "" then return nil end
  return tonumber(s)
end

-- Integers up to 2^53 stay exact in Lua doubles; money is bounded far below that.
local function fmt(n)
  return string.format("%d", n)
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

local estimate = int(ARGV[4])
assert(estimate and estimate >= 0 and estimate <= 1e15, "estimate must be an integer in [0, 1e15]")
assert(ARGV[12] == "reserve" or ARGV[12] == "check", "mode must be reserve or check")
local read = ARGV[13] == "1"

local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(tonumber(t[1]) / 86400)

local rec = redis.call("HGETALL", KEYS[1])
if #rec == 0 then
  -- model: reserve.unknown_key
  return {"refused", "unknown_key", "", "", fmt(estimate), "", ""}
end
local r = {}
for i = 1, #rec, 2 do r[rec[i]] = rec[i + 1] end

-- The secret: the current one, or the previous one during a rotation overlap.
local secret_ok = ARGV[1] == r.secret_hash
if not secret_ok and r.prev_secret_hash and r.prev_secret_hash ~= "" then
  local until_ms = int(r.prev_valid_until_ms)
  secret_ok = ARGV[1] == r.prev_secret_hash and until_ms ~= nil and now_ms < until_ms
end
if not secret_ok then
  -- model: reserve.bad_secret
  return {"refused", "bad_secret", "", "", fmt(estimate), "", ""}
end

-- The refusal's own id is this attempt's reservation id: nothing else is written under it.
local function audit_refusal(rule)
  redis.call("HINCRBY", KEYS[2], "refused", 1)
  xadd(KEYS[8], ARGV[10], {id = ARGV[5], ts = fmt(now_ms), key = ARGV[11],
    vk = r.vault_key or "", run = r.run_label or "", vendor = r.vendor or "", method = ARGV[2],
    path = ARGV[3], estimate = fmt(estimate), actual = "0", outcome = "refused", rule = rule})
end

local function refuse(rule, limit, spent)
  audit_refusal(rule)
  return {"refused", rule, limit and fmt(limit) or "", spent and fmt(spent) or "", fmt(estimate),
    r.vault_key or "", r.policy or ""}
end

-- `retired` survives any rewrite of the record: a key revoked for good stays refused even if
-- something rewrites it with revoked = "0".
-- model: reserve.revoked
if r.revoked == "1" or r.retired == "1" then return refuse("revoked") end
local expires = int(r.expires_at_ms)
-- model: reserve.expired
if expires and now_ms >= expires then return refuse("expired", expires, now_ms) end

-- `*` in an allowlist stands for one object id of the key's vendor, never for a word of the
-- vendor's API: `GET /v1/customers/*` must not match `/v1/customers/search`.
local STRIPE_WORDS = {search = true, upcoming = true, create_preview = true, preview = true,
  report_payment = true, create_from_calculation = true, create_reversal = true}
-- Stripe ids are a lower-case prefix (one or two parts: `cus_`, `sub_sched_`, `cs_test_`) and a
-- random body, which has a digit or a capital; API words (`balance_transactions`) have neither.
local function stripe_id(s)
  if STRIPE_WORDS[s] then return false end
  local body = string.match(s, "^%l+_(%w+)$") or string.match(s, "^%l+_%l+_(%w+)$")
  return body ~= nil and string.find(body, "[%u%d]") ~= nil
end
local function is_id(s)
  if r.vendor == "stripe" then
    return stripe_id(s)
  elseif r.vendor == "twilio" then
    return string.match(s, "^%u%u%x+$") ~= nil or string.match(s, "^%u%u%x+%.json$") ~= nil
  elseif r.vendor == "resend" then
    return string.match(s, "^%x+%-%x+%-%x+%-%x+%-%x+$") ~= nil and #s == 36
  end
  return false
end

-- Endpoint allowlist: "METHOD /a/*/b" per line, * standing for one object id.
local function segments(p)
  local out = {}
  for s in string.gmatch(p, "[^/]+") do out[#out + 1] = s end
  return out
end
local want = segments(ARGV[3])
-- A line that is exactly the call is allowed as the loop below would allow it, for one search
-- instead of a parse of every line. Only for a call without `*` (a literal `*` must still be
-- refused as no object id) and without a line break (it would span two lines).
local allowed = not string.find(ARGV[2] .. ARGV[3], "[%*\n]")
  and string.find("\n" .. (r.endpoints or "") .. "\n", "\n" .. ARGV[2] .. " " .. ARGV[3] .. "\n", 1, true) ~= nil
for line in string.gmatch(allowed and "" or r.endpoints or "", "[^\n]+") do
  local m, p = string.match(line, "^(%S+) (.*)$")
  if m == ARGV[2] then
    local segs = segments(p)
    if #segs == #want then
      local ok = true
      for i = 1, #segs do
        if segs[i] == "*" then
          if not is_id(want[i]) then ok = false; break end
        elseif segs[i] ~= want[i] then ok = false; break end
      end
      if ok then allowed = true; break end
    end
  end
end
-- model: reserve.endpoint
if not allowed then return refuse("endpoint") end
-- Whose object: checked in "check" mode too, before the proxy reads any object with the real key.
local run = r.run_label or ""
for i = 9, #KEYS do
  local owner = redis.call("GET", KEYS[i])
  local mine = false
  if owner then
    local okey, orun = string.match(owner, "^([^\n]*)\n(.*)$")
    mine = okey == ARGV[11] or (ARGV[15] == "1" and run ~= "" and orun == run)
  end
  if not mine then return refuse("object_not_owned", i - 8, nil) end
end
local commits = int(ARGV[16]) or 0
if commits > 0 and (not expires or commits > expires) then
  return refuse("commitment_outlives_key", expires or 0, commits)
end

local per_call = int(r.per_call_cap)
local daily_cap = int(r.daily_cap)
local total_cap = int(r.total_cap)
local s = redis.call("HMGET", KEYS[2], "day", "today", "total")
local today = (int(s[1]) == day) and (int(s[2]) or 0) or 0
local total = int(s[3]) or 0
-- A check comes before the proxy reads a vendor object with the real key: a write with a spent
-- cap cannot go anyway, so nothing is read for it.
if ARGV[12] == "check" then
  -- model: reserve.check
  if not read and daily_cap and today >= daily_cap then return refuse("daily_cap", daily_cap, today) end
  if not read and total_cap and total >= total_cap then return refuse("total_cap", total_cap, total) end
  return {"admitted", r.vault_key or "", r.policy or ""}
end

-- Idempotency: a repeated key replays, waits, or re-attempts; it never counts twice.
if ARGV[7] == "1" then
  local idem = redis.call("HGETALL", KEYS[7])
  if #idem > 0 then
    local d = {}
    for i = 1, #idem, 2 do d[idem[i]] = idem[i + 1] end
    -- model: reserve.idem_mismatch
    if d.fingerprint ~= ARGV[8] then return refuse("idempotency_mismatch") end
    -- model: reserve.idem_replay
    if d.state == "done" then
      return {"replay", d.status or "", d.headers or "", d.body or "", d.kept or "1"}
    end
    -- model: reserve.idem_in_flight
    if d.state == "pending" then return {"in_flight"} end
    -- state "unknown": the money is already counted. Forward again only where the vendor itself
    -- deduplicates on the key (Twilio does not: a second send would be a second message), and
    -- only while the key still holds that money within its caps (they may have been lowered).
    -- model: reserve.idem_unknown_refused
    if r.vendor == "twilio" then return refuse("idempotency_outcome_unknown") end
    local first = int(d.first_ms)
    if not first or now_ms - first > int(ARGV[14]) then return refuse("idempotency_outcome_unknown") end
    local amount = int(d.amount) or 0
    -- model: reserve.idem_reattempt_caps
    if per_call and amount > per_call then return refuse("per_call_cap", per_call, 0) end
    if daily_cap and today > daily_cap then return refuse("daily_cap", daily_cap, today) end
    if total_cap and total > total_cap then return refuse("total_cap", total_cap, total) end
    -- "floor": the first attempt may have moved this money, so no answer to the re-attempt (a 4xx,
    -- not sent) may take it back off the counters.
    -- model: reserve.idem_reattempt
    redis.call("HSET", KEYS[6], "key", ARGV[11], "amount", fmt(amount), "day", d.day or fmt(day),
      "created_ms", fmt(now_ms), "method", ARGV[2], "path", ARGV[3], "idem", KEYS[7], "floor", "1",
      "vk", r.vault_key or "", "run", r.run_label or "")
    redis.call("ZADD", KEYS[5], now_ms + int(ARGV[6]), ARGV[5])
    redis.call("HSET", KEYS[7], "state", "pending", "res", ARGV[5])
    return {"reattempt", ARGV[5], r.vault_key or "", r.policy or ""}
  end
end

-- Caps, all checked before anything is counted. Only reads pass a spent cap: a write costed at
-- nothing may still set up money that moves later, so it needs room left under every cap.
local function over(spent, cap)
  if not cap then return false end
  if estimate > 0 and spent + estimate > cap then return true end
  return (not read) and spent >= cap
end
-- model: reserve.per_call_cap
if per_call and estimate > per_call then return refuse("per_call_cap", per_call, 0) end
-- model: reserve.key_caps
if over(today, daily_cap) then return refuse("daily_cap", daily_cap, today) end
if over(total, total_cap) then return refuse("total_cap", total_cap, total) end

-- model: reserve.policy_budgets
local p = redis.call("HMGET", KEYS[3], "daily_budget", "total_budget")
local ps = redis.call("HMGET", KEYS[4], "day", "today", "total")
local p_today = (int(ps[1]) == day) and (int(ps[2]) or 0) or 0
local p_total = int(ps[3]) or 0
local daily_budget = int(p[1])
if over(p_today, daily_budget) then return refuse("policy_daily_budget", daily_budget, p_today) end
local total_budget = int(p[2])
if over(p_total, total_budget) then return refuse("policy_total_budget", total_budget, p_total) end

-- model: reserve.grant
-- Admitted: count the estimate now; settle replaces it with the actual cost.
redis.call("HSET", KEYS[2], "day", fmt(day), "today", fmt(today + estimate), "total", fmt(total + estimate))
redis.call("HSET", KEYS[4], "day", fmt(day), "today", fmt(p_today + estimate), "total", fmt(p_total + estimate))
-- The VaultKey and run label go with it, for settle's audit entry.
redis.call("HSET", KEYS[6], "key", ARGV[11], "amount", fmt(estimate), "day", fmt(day),
  "created_ms", fmt(now_ms), "method", ARGV[2], "path", ARGV[3], "idem", ARGV[7] == "1" and KEYS[7] or "",
  "vk", r.vault_key or "", "run", r.run_label or "")
redis.call("ZADD", KEYS[5], now_ms + int(ARGV[6]), ARGV[5])
if ARGV[7] == "1" then
  redis.call("HSET", KEYS[7], "state", "pending", "fingerprint", ARGV[8], "res", ARGV[5],
    "amount", fmt(estimate), "day", fmt(day), "first_ms", fmt(now_ms))
  redis.call("EXPIRE", KEYS[7], ARGV[9])
end
return {"granted", ARGV[5], fmt(today + estimate), fmt(total + estimate), r.vault_key or "", r.policy or ""}
