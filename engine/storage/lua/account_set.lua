-- Sets fields of an existing account and bumps its version.
-- KEYS[1] = account; ARGV: field, value, ...
-- Returns 1, or 0 when the account does not exist (nothing is written).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
chunked('HSET', KEYS[1], ARGV, 1, #ARGV)
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return 1
