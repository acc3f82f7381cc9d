-- Releases the reservations of one open session that went silent past its expiry.
-- KEYS[1] = session, KEYS[2] = the partition's open-session zset, KEYS[3] = the session's
-- account (absent when the session is gone: then it only leaves the zset).
-- ARGV[1] = now (ms); with KEYS[3]: ARGV[2] = the session's value as the sweeper read it,
-- ARGV[3] = its expiry (ms), ARGV[4] = the value without reservations and expiry, ARGV[5] =
-- its subscriber, then its reservations, each "bucket_id|units|amount|unit_type|member"
-- (engine/storage/session_blob.py: only Python reads the packed value).
-- Atomic per session, and a no-op if the session was refreshed, ended or swept meanwhile,
-- so a crashed sweep can simply run again and two sweepers may race.
-- Returns the number of reservations released; -1 when giving them back would take a
-- balance past int64, -2 when the session changed since the sweeper read it (nothing is
-- changed: every check comes before the first write).
local expiry = redis.call('ZSCORE', KEYS[2], KEYS[1])
if not expiry or tonumber(expiry) > tonumber(ARGV[1]) then
  return 0
end
if #KEYS < 3 then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('ZREM', KEYS[2], KEYS[1])
  end
  return 0
end
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return -2
end
-- The score is at or before the session's expiry, which requests push later without
-- touching the zset (apply.lua): a session still within it is only moved on.
if tonumber(ARGV[3]) > tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
  return 0
end
local acct, sub = KEYS[3], ARGV[5]
-- What goes back to each balance (money or a bucket's free units) must fit in int64.
local back = {}
for k = 6, #ARGV do
  local bucket, amount = string.match(ARGV[k], '^([^|]*)|%d+|(%d+)|')
  local field = bucket == '' and 'money' or 'b:' .. bucket .. ':rem'
  back[field] = back[field] or {}
  table.insert(back[field], amount)
end
for field, amounts in pairs(back) do
  if not int64_fits(redis.call('HGET', acct, field) or '0', amounts) then
    return -1
  end
end
redis.call('ZREM', KEYS[2], KEYS[1])
for k = 6, #ARGV do
  local bucket, units, amount, unit, counted = string.match(
    ARGV[k], '^([^|]*)|(%d+)|(%d+)|(%d+)|(%d)$')
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
end
redis.call('HINCRBY', acct, 'ver', 1)
-- Out of the zset now, and without an expiry: its next request sets a score again.
redis.call('SET', KEYS[1], ARGV[4])
return #ARGV - 5
