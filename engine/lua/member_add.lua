-- Makes a subscriber a member of a shared account with the given caps (or updates its caps).
-- KEYS: account, subscriber. ARGV: account id, member field (m:<sub>), caps JSON,
-- state of a new subscriber.
-- A new subscriber is created on the account; one of another account is refused.
-- Returns {1} changed, {0} the caps were already these, {-1} no account,
-- {-2, other account} the subscriber belongs to another account.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
local owner = redis.call('HGET', KEYS[2], 'acct')
if owner and owner ~= ARGV[1] then
  return {-2, owner}
end
if not owner then
  redis.call('HSET', KEYS[2], 'acct', ARGV[1], 'state', ARGV[4])
elseif redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then
  return {0}
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return {1}
