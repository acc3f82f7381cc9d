-- Stores a new immutable plan version. KEYS[1] = plan hash; ARGV[1] = serialized plan.
-- Returns the new version number.
local version = redis.call('HINCRBY', KEYS[1], 'cur', 1)
redis.call('HSET', KEYS[1], 'v:' .. version, ARGV[1])
return version
