-- Argo CD health of a Keybrake VaultKey (gopher-lua, Lua 5.1).
-- Healthy: the key is Active and Ready. Progressing: the operator has not yet seen this
-- generation, or is still working toward a usable key (Reconciling). Degraded: only a change to
-- the key or its policy can fix it (Stalled: Invalid, a missing or invalid policy).
-- Suspended: the key did its job and stopped (Revoked, Expired, or a cap reached).
local hs = {}

local function condition(type)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == type then
        return c
      end
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Keybrake operator to reconcile the key"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Keybrake operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition("Ready")
local stalled = condition("Stalled")
local reconciling = condition("Reconciling")
local phase = obj.status.phase

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(stalled, "The key cannot be issued")
  return hs
end
if phase == "Revoked" or phase == "Expired" or phase == "CapReached" then
  hs.status = "Suspended"
  hs.message = message_of(ready, "The key is " .. phase)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "The key is Active")
  return hs
end
hs.status = "Progressing"
hs.message = message_of(reconciling, message_of(ready, "Waiting for the key to become Active"))
return hs
