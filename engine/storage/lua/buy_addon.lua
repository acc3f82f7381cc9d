-- Buys an add-on once per order id: takes its price from the money balance and adds its
-- bucket, with the usage record and the ADD_ON_BOUGHT event, atomically.
-- KEYS: account, order marker, usage stream, events stream.
-- ARGV: minus the price, marker ttl ms, record, event, bucket field count n, then n field, value pairs
-- (the first field is the bucket's metadata field b:<id>).
-- Returns {1} bought, {0} this order was applied before (marker or bucket present),
-- {-1} no account, {-2, money} not enough money (nothing is changed).
-- Money stays a string: Lua numbers are doubles and money is int64.

-- a < b for canonical decimal integer strings, exactly.
local function lt(a, b)
  local na, nb = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if na ~= nb then
    return na
  end
  local da, db = na and a:sub(2) or a, nb and b:sub(2) or b
  if da == db then
    return false
  end
  local less
  if #da ~= #db then
    less = #da < #db
  else
    less = da < db
  end
  if na then
    return not less
  end
  return less
end

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('HEXISTS', KEYS[1], ARGV[6]) == 1 then
  return {0}
end
local climit = redis.call('HGET', KEYS[1], 'climit') or '0'
local floor = climit == '0' and '0' or ('-' .. climit)
local before = redis.call('HGET', KEYS[1], 'money')
-- Redis does the int64 arithmetic; undone below when the result is under the floor.
redis.call('HINCRBY', KEYS[1], 'money', ARGV[1])
if lt(redis.call('HGET', KEYS[1], 'money'), floor) then
  redis.call('HSET', KEYS[1], 'money', before)
  return {-2, before}
end
chunked('HSET', KEYS[1], ARGV, 6, 5 + 2 * tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('XADD', KEYS[3], '*', 'r', ARGV[3])
redis.call('XADD', KEYS[4], '*', 'e', ARGV[4])
return {1}
