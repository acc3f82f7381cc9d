-- Settles one claimed message: 'done' forgets it, 'retry' stores its new JSON and due time,
-- 'dead' moves it to the dead-letter stream.
-- KEYS: outbox (zset), messages (hash), dead-letter stream; one hash tag.
-- ARGV: action, message id, due ms, message JSON.
-- Returns 1, or 0 when the message is no longer queued (settled by another worker).
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
if ARGV[1] == 'retry' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  return 1
end
if ARGV[1] == 'dead' then
  redis.call('XADD', KEYS[3], '*', 'id', ARGV[2], 'm', ARGV[4])
end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
