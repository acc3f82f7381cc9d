-- Appends an event once per event id (a retried transition writes its event once).
-- KEYS: the event marker, the events stream; one hash tag (the partition).
-- ARGV: marker ttl ms, event.
-- Returns 1 written, 0 written before.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
return 1
