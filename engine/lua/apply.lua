-- Applies one partition's share of a batch atomically, account by account.
-- KEYS[1] = usage stream, KEYS[2] = event stream, KEYS[3] = open sessions (zset by expiry),
-- then per group: its account, the account's open-session set, and one key per session it
-- writes (in the group's order). ARGV[1] = retention of ended sessions (ms);
-- ARGV[1 + g] = group g, a string of length-prefixed tokens (4-byte big-endian length):
--   n_sessions, expected_version, n_set, (field, value)*, n_incr, (field, delta)*,
--   per session: session_id, mode (open|end), expiry_ms, n_fields,
--     (field, value)*, n_del, field*,
--   n_records, record*, n_events, event*
-- One argument per account keeps the client's command encoding cheap. Every key is declared
-- (all in the partition's slot): while a slot moves, Redis Cluster redirects by these.
-- Numbers stay strings: Lua numbers are doubles and money is int64.
-- Returns the group numbers whose account version had moved (nothing of them applied).
local retention = ARGV[1]
local conflicts = {}
local k = 4
for g = 1, #ARGV - 1 do
  local blob = ARGV[g + 1]
  local pos = 1
  local function tok()
    local s
    s, pos = struct.unpack('>I4c0', blob, pos)
    return s
  end
  local acct, set = KEYS[k], KEYS[k + 1]
  local first_session = k + 2
  k = first_session + tonumber(tok())
  if redis.call('HGET', acct, 'ver') ~= tok() then
    conflicts[#conflicts + 1] = g
  else
    local n = tonumber(tok())
    if n > 0 then
      local args = {}
      for i = 1, 2 * n do args[i] = tok() end
      redis.call('HSET', acct, unpack(args))
    end
    n = tonumber(tok())
    for _ = 1, n do
      local field = tok()
      redis.call('HINCRBY', acct, field, tok())
    end
    redis.call('HINCRBY', acct, 'ver', 1)
    for ks = first_session, k - 1 do
      local sid = tok()
      local mode = tok()
      local expiry = tok()
      local sess = KEYS[ks]
      n = tonumber(tok())
      if n > 0 then
        local args = {}
        for i = 1, 2 * n do args[i] = tok() end
        redis.call('HSET', sess, unpack(args))
      end
      n = tonumber(tok())
      if n > 0 then
        local args = {}
        for i = 1, n do args[i] = tok() end
        redis.call('HDEL', sess, unpack(args))
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
    for _ = 1, tonumber(tok()) do
      redis.call('XADD', KEYS[1], '*', 'r', tok())
    end
    for _ = 1, tonumber(tok()) do
      redis.call('XADD', KEYS[2], '*', 'e', tok())
    end
  end
end
return conflicts
