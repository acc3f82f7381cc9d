-- Applies one partition's share of a batch atomically, account by account.
-- KEYS[1] = usage stream, KEYS[2] = event stream, KEYS[3] = open sessions (zset by expiry),
-- then per group: its account, the account's open-session set, and one key per session it
-- writes (in the group's order). ARGV[1] = retention of ended sessions (ms);
-- ARGV[1 + g] = group g, MessagePack (decoded in C by cmsgpack, cheaper than parsing here):
--   [n_sessions, expected_version, created, {field, value, ...} to set,
--    {field, delta, ...} to add, sessions, {record, ...}, {event, ...}]
--   a session: [session_id, mode (open|end), expiry_ms, {field, value, ...}, {field, ...}
--   to delete]. `created` has one character per session: '1' = the writer believes the
--   session new.
-- Every key is declared (all in the partition's slot): while a slot moves, Redis Cluster
-- redirects by these. Numbers are strings: Lua numbers are doubles and money is int64.
-- Returns the group numbers whose account version had moved, or with a session believed new
-- that exists (nothing of them applied: the writer reads them and runs them again).
local retention = ARGV[1]
local conflicts = {}
local k = 4
for g = 1, #ARGV - 1 do
  local w = cmsgpack.unpack(ARGV[g + 1])
  local acct, set = KEYS[k], KEYS[k + 1]
  local first_session = k + 2
  k = first_session + w[1]
  local ok = redis.call('HGET', acct, 'ver') == w[2]
  local created = w[3]
  for i = 1, ok and #created or 0 do
    if string.byte(created, i) == 49 and redis.call('EXISTS', KEYS[first_session + i - 1]) == 1
    then
      ok = false
      break
    end
  end
  if not ok then
    conflicts[#conflicts + 1] = g
  else
    if #w[4] > 0 then
      redis.call('HSET', acct, unpack(w[4]))
    end
    local incr = w[5]
    for i = 1, #incr, 2 do
      redis.call('HINCRBY', acct, incr[i], incr[i + 1])
    end
    redis.call('HINCRBY', acct, 'ver', 1)
    for i, s in ipairs(w[6]) do
      local sess = KEYS[first_session + i - 1]
      if #s[4] > 0 then
        redis.call('HSET', sess, unpack(s[4]))
      end
      if #s[5] > 0 then
        redis.call('HDEL', sess, unpack(s[5]))
      end
      if s[2] == 'open' then
        redis.call('SADD', set, s[1])
        redis.call('PERSIST', sess)
        redis.call('ZADD', KEYS[3], s[3], sess)
      else
        redis.call('SREM', set, s[1])
        redis.call('ZREM', KEYS[3], sess)
        redis.call('PEXPIRE', sess, retention)
      end
    end
    for _, r in ipairs(w[7]) do
      redis.call('XADD', KEYS[1], '*', 'r', r)
    end
    for _, e in ipairs(w[8]) do
      redis.call('XADD', KEYS[2], '*', 'e', e)
    end
  end
end
return conflicts
