-- Removes a member from a shared account: its caps, its counters and the subscriber.
-- KEYS: account, subscriber. ARGV: account id, member field (m:<sub>), k, then k reservation
-- counter fields that must be 0, then every field to delete.
-- Returns {1} removed, {-1} no account, {-3} not a member,
-- {-4, field, value} the member still holds reservations (nothing is changed).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then
  return {-3}
end
local k = tonumber(ARGV[3])
for i = 4, 3 + k do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v and v ~= '0' then
    return {-4, ARGV[i], v}
  end
end
redis.call('HDEL', KEYS[1], unpack(ARGV, 4 + k))
if redis.call('HGET', KEYS[2], 'acct') == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return {1}
