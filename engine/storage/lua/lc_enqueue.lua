-- Queues the messages made for one key (a rule and an event, or a campaign and a period)
-- once: a key seen before queues nothing, however often its event is delivered again.
-- KEYS: de-duplication marker, outbox (zset by due time), messages (hash); one hash tag.
-- ARGV: marker ttl ms, n, then n (message id, due ms, message JSON).
-- Returns 1 queued, 0 the key was handled before.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
for i = 0, tonumber(ARGV[2]) - 1 do
  local b = 3 + 3 * i
  if redis.call('HSETNX', KEYS[3], ARGV[b], ARGV[b + 2]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[b + 1], ARGV[b])
  end
end
return 1
