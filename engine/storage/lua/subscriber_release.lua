-- Deletes a subscriber if it belongs to the given account.
-- KEYS: subscriber. ARGV: account id.
-- Returns {1, state} deleted (its state, to put it back if the caller must undo), {0} not
-- there or on another account.
if redis.call('HGET', KEYS[1], 'acct') ~= ARGV[1] then
  return {0}
end
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[1])
return {1, state}
