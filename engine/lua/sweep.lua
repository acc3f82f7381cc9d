-- Releases the reservations of one open session that went silent past its expiry.
-- KEYS[1] = session, KEYS[2] = the partition's open-session zset, KEYS[3] = the session's
-- account (absent when the session hash is gone: then it only leaves the zset).
-- ARGV[1] = now (ms).
-- Atomic per session, and a no-op if the session was refreshed, ended or swept meanwhile,
-- so a crashed sweep can simply run again and two sweepers may race.
-- Returns the number of reservations released, or -1 when giving them back would take a
-- balance past int64 (nothing is changed: every check comes before the first write).
local expiry = redis.call('ZSCORE', KEYS[2], KEYS[1])
if not expiry or tonumber(expiry) > tonumber(ARGV[1]) then
  return 0
end
-- The score is at or before the session's expiry, which requests push later without
-- touching the zset (apply.lua): a session still within it is only moved on.
local exp = tonumber(redis.call('HGET', KEYS[1], 'exp') or '0')
if exp > tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[2], exp, KEYS[1])
  return 0
end
if #KEYS < 3 then
  redis.call('ZREM', KEYS[2], KEYS[1])
  return 0
end
local acct = KEYS[3]
local sub = redis.call('HGET', KEYS[1], 'sub')
local fields = redis.call('HGETALL', KEYS[1])
-- What goes back to each balance (money or a bucket's free units) must fit in int64.
local back = {}
for k = 1, #fields, 2 do
  if string.sub(fields[k], 1, 2) == 'r:' then
    local bucket, amount = string.match(fields[k + 1], '^([^|]*)|%d+|(%d+)|')
    local field = bucket == '' and 'money' or 'b:' .. bucket .. ':rem'
    back[field] = back[field] or {}
    table.insert(back[field], amount)
  end
end
for field, amounts in pairs(back) do
  if not int64_fits(redis.call('HGET', acct, field) or '0', amounts) then
    return -1
  end
end
redis.call('ZREM', KEYS[2], KEYS[1])
local released = 0
for k = 1, #fields, 2 do
  local name = fields[k]
  if string.sub(name, 1, 2) == 'r:' then
    local bucket, units, amount, unit, counted = string.match(
      fields[k + 1], '^([^|]*)|(%d+)|(%d+)|(%d+)|(%d)$')
    local member = counted == '1' and redis.call('HEXISTS', acct, 'm:' .. sub) == 1
    if amount ~= '0' then
      if bucket == '' then
        redis.call('HINCRBY', acct, 'money', amount)
        redis.call('HINCRBY', acct, 'mres', '-' .. amount)
        if member then
          redis.call('HINCRBY', acct, 'm:' .. sub .. ':mres', '-' .. amount)
        end
      else
        redis.call('HINCRBY', acct, 'b:' .. bucket .. ':rem', amount)
        redis.call('HINCRBY', acct, 'b:' .. bucket .. ':res', '-' .. amount)
      end
    end
    if member and units ~= '0' and unit ~= '0' then
      redis.call('HINCRBY', acct, 'm:' .. sub .. ':r' .. unit, '-' .. units)
    end
    redis.call('HDEL', KEYS[1], name)
    released = released + 1
  end
end
redis.call('HINCRBY', acct, 'ver', 1)
redis.call('HSET', KEYS[1], 'swept', ARGV[1])
-- Out of the zset now: without `exp` its next request sets a score again.
redis.call('HDEL', KEYS[1], 'exp')
return released
