-- Argo CD health of a Keybrake SpendPolicy (gopher-lua, Lua 5.1).
-- Healthy: Ready (its credentials Secret is present and well-formed, its spec valid).
-- Degraded: Stalled (only a change to the policy or its Secret can fix it). Progressing: the
-- operator has not yet seen this generation, or is still working.
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
  hs.message = "Waiting for the Keybrake operator to reconcile the policy"
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
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(stalled, "The policy cannot be used")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "The policy is Ready")
  return hs
end
hs.status = "Progressing"
hs.message = message_of(ready, "Waiting for the policy to become Ready")
return hs
