-- Claims up to ARGV[3] due members of a schedule (zset by due time) for one worker: their
-- score moves to the lease end, so no other worker takes them while this one works, and a
-- worker that dies leaves them due again when the lease ends.
-- KEYS: the schedule, the payload hash (may stay empty); one hash tag.
-- ARGV: now ms, lease end ms, most members.
-- Returns a flat list: member, payload (false when none), ...
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], m)
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', KEYS[2], m)
end
return out
