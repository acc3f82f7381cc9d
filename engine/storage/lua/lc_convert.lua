-- Records that an offer was bought, once per offer: the first purchase counts.
-- KEYS: the offer (hash), offer statistics (hash); one hash tag.
-- ARGV: add-on id, order id.
-- Returns 1 counted, 0 not an offer made here or counted before.
if redis.call('EXISTS', KEYS[1]) == 0 or
    redis.call('HSETNX', KEYS[1], 'bought', ARGV[1] .. '|' .. ARGV[2]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[2], 'bought', 1)
redis.call('HINCRBY', KEYS[2], 'bought:' .. ARGV[1], 1)
return 1
