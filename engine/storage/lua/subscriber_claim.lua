-- Puts a subscriber on an account: creates it there, or confirms it is there already.
-- KEYS: subscriber. ARGV: account id, state of a new subscriber.
-- Returns {1} created, {0} it was on this account, {-2, other account}.
local owner = redis.call('HGET', KEYS[1], 'acct')
if not owner then
  redis.call('HSET', KEYS[1], 'acct', ARGV[1], 'state', ARGV[2])
  return {1}
end
if owner ~= ARGV[1] then
  return {-2, owner}
end
return {0}
