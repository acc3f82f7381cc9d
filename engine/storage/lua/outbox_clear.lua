-- Clears a subscriber's outbox field once its event is on the stream, unless a newer event
-- replaced it meanwhile. KEYS: subscriber. ARGV: the event sent.
if redis.call('HGET', KEYS[1], 'pev') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'pev')
end
return 1
