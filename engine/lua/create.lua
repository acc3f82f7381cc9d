-- Creates a hash with the given fields unless the key exists. KEYS[1]; ARGV: field, value, ...
-- Returns 1 when created, 0 when the key was already there.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
