-- Creates a hash with the given fields unless the key exists. KEYS[1]; ARGV: field, value, ...
-- Returns 1 when created, 0 when the key was already there.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
chunked('HSET', KEYS[1], ARGV, 1, #ARGV)
return 1
