-- Applies one chunk of a re-rate to one account atomically: per re-rated usage record, the
-- money correction, its ADJUSTMENT record, and the markers that make a re-run a no-op.
-- KEYS: account, re-rate markers (hash), usage stream.
-- ARGV[1] = n; then per record 6 values: record id, version marker field
--   ("<record id>@<plan id>:<version>"), the record's effective money the caller assumed
--   ("" = never re-rated), its new effective money, the money delta to add to the balance
--   (old - new, "0" for none), the ADJUSTMENT record ("" = none: the price did not change).
-- Nothing is applied if any record was re-rated with this version already or its effective
-- money moved since the caller read it (another re-rate ran): returns {-2, index}; the
-- caller reads again. {-1}: no such account. Else {1, records written}.
-- Money stays strings (HINCRBY): Lua numbers are doubles and money is int64.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
local n = tonumber(ARGV[1])
for k = 0, n - 1 do
  local b = 2 + 6 * k
  if redis.call('HEXISTS', KEYS[2], ARGV[b + 1]) == 1 then
    return {-2, k}
  end
  local cur = redis.call('HGET', KEYS[2], ARGV[b]) or ''
  if cur ~= ARGV[b + 2] then
    return {-2, k}
  end
end
local written = 0
for k = 0, n - 1 do
  local b = 2 + 6 * k
  if ARGV[b + 4] ~= '0' then
    redis.call('HINCRBY', KEYS[1], 'money', ARGV[b + 4])
  end
  redis.call('HSET', KEYS[2], ARGV[b], ARGV[b + 3], ARGV[b + 1], '1')
  if ARGV[b + 5] ~= '' then
    redis.call('XADD', KEYS[3], '*', 'r', ARGV[b + 5])
    written = written + 1
  end
end
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return {1, written}
