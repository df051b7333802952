--[[
unlock.lua: releases a lock only if it is still the caller's (a lock that expired and was taken
by another call is left alone).

KEYS[1] lock   {P}:lock:<key id>:<object>   string, set with SET NX PX by the proxy
ARGV[1] token  the value the caller set

Exactly one KEYS entry and one ARGV entry: the script refuses any other counts before it reads
anything.

Returns 1 when released, 0 when the lock was not the caller's (or gone).

Example: after `SET {kb:t}:lock:k1:pi_1 abc NX PX 60000`, unlock with ARGV[1] = "abc" returns 1;
with "xyz" it returns 0 and the lock stays.
]]

-- The contract above, checked first: another count means a caller out of step with this script.
if #KEYS ~= 1 or #ARGV ~= 1 then
  return redis.error_reply(string.format(
    "ERR unlock.lua: wants 1 KEYS and 1 ARGV, got %d KEYS and %d ARGV", #KEYS, #ARGV))
end

-- model: unlock.release
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
