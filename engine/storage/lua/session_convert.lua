-- Turns a session kept as a hash (a release before packed values) into its packed value.
-- KEYS[1] = the session; ARGV[1] = its value (engine/storage/session_blob.py). A no-op unless the
-- key is still a hash (a request that wrote the session since made it a value); the TTL of
-- an ended session stays. Returns 1 when converted.
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
