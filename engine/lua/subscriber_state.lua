-- Sets a subscriber's state; a change leaves its STATE_CHANGED event in the subscriber's
-- outbox field 'pev' (the events stream is in another slot: the caller appends the event
-- there, then clears the outbox with outbox_clear.lua; a crash in between leaves the event
-- for the next call on this subscriber to send).
-- KEYS: subscriber. ARGV: account id the caller read, new state, event.
-- Returns {1, earlier pending event or ''} changed, {0, pending event or ''} it already had
-- this state, {-1} no subscriber, {-2} it moved to another account since the caller read it.
local acct = redis.call('HGET', KEYS[1], 'acct')
if not acct then
  return {-1}
end
if acct ~= ARGV[1] then
  return {-2}
end
local pending = redis.call('HGET', KEYS[1], 'pev') or ''
if redis.call('HGET', KEYS[1], 'state') == ARGV[2] then
  return {0, pending}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'pev', ARGV[3])
return {1, pending}
