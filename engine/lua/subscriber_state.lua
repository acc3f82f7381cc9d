-- Sets a subscriber's state and appends a STATE_CHANGED event when it changed.
-- KEYS: subscriber, events stream of its account's partition.
-- ARGV: account id the caller read (the stream's), new state, event.
-- Returns {1} changed, {0} it already had this state, {-1} no subscriber,
-- {-2} the subscriber moved to another account since the caller read it (read again).
local acct = redis.call('HGET', KEYS[1], 'acct')
if not acct then
  return {-1}
end
if acct ~= ARGV[1] then
  return {-2}
end
if redis.call('HGET', KEYS[1], 'state') == ARGV[2] then
  return {0}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
return {1}
