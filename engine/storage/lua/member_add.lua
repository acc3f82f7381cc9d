-- Sets the caps of a member of a shared account (the account's side of AddMember; the
-- subscriber record, in another slot, is claimed after this: engine/storage/store.py add_member).
-- KEYS: account, the account's subscribers set (keys.account_subscribers).
-- ARGV: member field (m:<sub>), caps JSON, subscriber id.
-- Returns {2} a new member, {1} its caps changed, {0} the caps were already these,
-- {-1} no account.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
redis.call('SADD', KEYS[2], ARGV[3])
local before = redis.call('HGET', KEYS[1], ARGV[1])
if before == ARGV[2] then
  return {0}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'ver', 1)
if before then
  return {1}
end
return {2}
