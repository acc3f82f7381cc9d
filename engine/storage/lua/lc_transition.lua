-- Moves a subscriber to a new state if it is in one of the allowed states now and the trigger
-- is not older than the decision behind its state (lib_order.lua: a late redelivered event
-- must not undo a newer change: an old "credit exhausted" after a top-up, an old top-up after
-- a suspension by provisioning).
-- KEYS: the subscriber.
-- ARGV: new state, trigger id, trigger order ('' = timers: no order; else state_order),
-- then the allowed current states.
-- Returns {changed (1|0), state before (0 = no subscriber), account id,
--          done before (1: this trigger made the current state: a repeated call)}.
local h = redis.call('HMGET', KEYS[1], 'state', 'acct', 'lco', 'ltr')
if not h[1] then
  return {0, 0, '', 0}
end
if h[4] == ARGV[2] and h[1] == ARGV[1] then
  return {0, tonumber(h[1]), h[2], 1}
end
if state_older(h[3], ARGV[3]) then
  return {0, tonumber(h[1]), h[2], 0}
end
for i = 4, #ARGV do
  if h[1] == ARGV[i] then
    state_write(KEYS[1], h[3], ARGV[1], ARGV[3], 'ltr', ARGV[2])
    return {1, tonumber(h[1]), h[2], 0}
  end
end
return {0, tonumber(h[1]), h[2], 0}
