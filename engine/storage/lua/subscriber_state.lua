-- Sets a subscriber's state by decision of provisioning, placed in the ordering rule of
-- lib_order.lua (so an older event redelivered later cannot undo it, even when the state was
-- this one already). A change leaves its STATE_CHANGED event in the subscriber's outbox field
-- 'pev' (the events stream is in another slot: the caller appends the event there, then
-- clears the outbox with outbox_clear.lua; a crash in between leaves the event for the next
-- call on this subscriber to send).
-- KEYS: subscriber. ARGV: account id the caller read, new state, event, order (state_order).
-- Returns {1, earlier pending event or ''} changed, {0, pending event or ''} it already had
-- this state, {-1} no subscriber, {-2} it moved to another account since the caller read it.
local h = redis.call('HMGET', KEYS[1], 'acct', 'state', 'pev', 'lco')
if not h[1] then
  return {-1}
end
if h[1] ~= ARGV[1] then
  return {-2}
end
local pending = h[3] or ''
if h[2] == ARGV[2] then
  state_write(KEYS[1], h[4], ARGV[2], ARGV[4])
  return {0, pending}
end
state_write(KEYS[1], h[4], ARGV[2], ARGV[4], 'pev', ARGV[3])
return {1, pending}
