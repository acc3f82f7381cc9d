-- Removes a member from a shared account: its caps and its counters (the account's side of
-- RemoveMember; the subscriber record, in another slot, goes first: engine/storage/store.py).
-- KEYS: account. ARGV: member field (m:<sub>), k, then k reservation counter fields that
-- must be 0, then every field to delete.
-- Returns {1} removed, {-1} no account, {-3} not a member,
-- {-4, field, value} the member still holds reservations (nothing is changed).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return {-3}
end
local k = tonumber(ARGV[2])
for i = 3, 2 + k do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v and v ~= '0' then
    return {-4, ARGV[i], v}
  end
end
chunked('HDEL', KEYS[1], ARGV, 3 + k, #ARGV)
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return {1}
