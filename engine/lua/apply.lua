-- Applies one partition's share of a batch atomically, account by account.
-- KEYS[1] = usage stream, KEYS[2] = event stream, KEYS[3] = open sessions (zset by expiry);
-- KEYS[4..] = account, session-set and session keys.
-- ARGV[1] = retention of ended sessions (ms); ARGV[2] = number of account groups; then groups:
--   group_len, acct_key#, expected_version, n_set, (field, value)*, n_incr, (field, delta)*,
--   n_sessions, per session: sess_key#, set_key#, session_id, mode (open|end), expiry_ms,
--                n_set, (field, value)*, n_del, field*,
--   n_records, record*, n_events, event*
-- Numbers stay strings: Lua numbers are doubles and money is int64.
-- Returns the group numbers whose account version had moved (nothing of them applied).
local retention = ARGV[1]
local n_groups = tonumber(ARGV[2])
local i = 3
local conflicts = {}
for g = 1, n_groups do
  local group_len = tonumber(ARGV[i])
  local next_group = i + 1 + group_len
  local acct = KEYS[tonumber(ARGV[i + 1])]
  if redis.call('HGET', acct, 'ver') ~= ARGV[i + 2] then
    conflicts[#conflicts + 1] = g
  else
    i = i + 3
    local n_set = tonumber(ARGV[i]); i = i + 1
    if n_set > 0 then
      redis.call('HSET', acct, unpack(ARGV, i, i + 2 * n_set - 1))
      i = i + 2 * n_set
    end
    local n_incr = tonumber(ARGV[i]); i = i + 1
    for _ = 1, n_incr do
      redis.call('HINCRBY', acct, ARGV[i], ARGV[i + 1]); i = i + 2
    end
    redis.call('HINCRBY', acct, 'ver', 1)
    local n_sessions = tonumber(ARGV[i]); i = i + 1
    for _ = 1, n_sessions do
      local sess = KEYS[tonumber(ARGV[i])]
      local set = KEYS[tonumber(ARGV[i + 1])]
      local sid, mode, expiry = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
      local n_fields = tonumber(ARGV[i + 5]); i = i + 6
      if n_fields > 0 then
        redis.call('HSET', sess, unpack(ARGV, i, i + 2 * n_fields - 1))
        i = i + 2 * n_fields
      end
      local n_del = tonumber(ARGV[i]); i = i + 1
      if n_del > 0 then
        redis.call('HDEL', sess, unpack(ARGV, i, i + n_del - 1))
        i = i + n_del
      end
      if mode == 'open' then
        redis.call('SADD', set, sid)
        redis.call('PERSIST', sess)
        redis.call('ZADD', KEYS[3], expiry, sess)
      else
        redis.call('SREM', set, sid)
        redis.call('ZREM', KEYS[3], sess)
        redis.call('PEXPIRE', sess, retention)
      end
    end
    local n_records = tonumber(ARGV[i]); i = i + 1
    for _ = 1, n_records do
      redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]); i = i + 1
    end
    local n_events = tonumber(ARGV[i]); i = i + 1
    for _ = 1, n_events do
      redis.call('XADD', KEYS[2], '*', 'e', ARGV[i]); i = i + 1
    end
  end
  i = next_group
end
return conflicts
