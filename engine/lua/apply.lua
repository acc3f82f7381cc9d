-- Applies a batch's account writes atomically, account by account, for one or more
-- partitions (one call per partition on a cluster, where each partition is its own slot;
-- several on a single server, to save the per-call cost).
-- KEYS, per partition block: its usage stream, event stream and open sessions (zset by
-- expiry), then per group of the block: its account, the account's open-session set, and one
-- key per session it writes (in the group's order).
-- ARGV[1] = retention of ended sessions (ms); ARGV[2] = the number of groups of each block,
-- comma separated; ARGV[2 + g] = group g (numbered across blocks), MessagePack (decoded in
-- C by cmsgpack, cheaper than parsing here):
--   [n_sessions, expected_version, created, {field, value, ...} to set,
--    {field, delta, ...} to add, sessions, {record, ...}, {event, ...}]
--   a session: [session_id, mode (open|end), expiry_ms, {field, value, ...}, {field, ...}
--   to delete]. `created` has one character per session: '1' = the writer believes the
--   session new.
-- Every key is declared (on a cluster all in the partition's slot): while a slot moves,
-- Redis Cluster redirects by these. Numbers are strings: Lua numbers are doubles and money is
-- int64.
-- Returns the group numbers whose account version had moved, or with a session believed new
-- that exists (nothing of them applied: the writer reads them and runs them again).
local retention = ARGV[1]
local conflicts = {}
local k = 1
local g = 0
for n in string.gmatch(ARGV[2], '%d+') do
  local usage, events, open = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  for _ = 1, tonumber(n) do
    g = g + 1
    local w = cmsgpack.unpack(ARGV[g + 2])
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
          redis.call('ZADD', open, s[3], sess)
        else
          redis.call('SREM', set, s[1])
          redis.call('ZREM', open, sess)
          redis.call('PEXPIRE', sess, retention)
        end
      end
      for _, r in ipairs(w[7]) do
        redis.call('XADD', usage, '*', 'r', r)
      end
      for _, e in ipairs(w[8]) do
        redis.call('XADD', events, '*', 'e', e)
      end
    end
  end
end
return conflicts
