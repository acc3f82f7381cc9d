-- Adds money to an account once per top-up id, with its usage record and TOPPED_UP event.
-- KEYS: account, top-up marker, usage stream, events stream.
-- ARGV: amount, record, marker ttl ms, event.
-- Returns {applied (1|0), money after}, {-1} when the account does not exist, or
-- {-2, field} when the amount would take money or the running total of top-ups past int64
-- (nothing is changed: Redis keeps what a script wrote before an error, so every check comes
-- before the first write, and a retry must not credit twice).
-- Money stays a string: Lua numbers are doubles and money is int64 (lib_int64.lua).

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'money')}
end
for _, field in ipairs({'money', 'topups'}) do
  if not int64_fits(redis.call('HGET', KEYS[1], field) or '0', {ARGV[1]}) then
    return {-2, field}
  end
end
redis.call('HINCRBY', KEYS[1], 'money', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'topups', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
redis.call('XADD', KEYS[3], '*', 'r', ARGV[2])
redis.call('XADD', KEYS[4], '*', 'e', ARGV[4])
return {1, redis.call('HGET', KEYS[1], 'money')}
