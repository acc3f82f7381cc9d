-- Applies one partition's share of a batch atomically, account by account.
-- KEYS[1] = usage stream, KEYS[2] = event stream, KEYS[3] = open sessions (zset by expiry),
-- KEYS[3 + g] = the account of group g. ARGV[1] = retention of ended sessions (ms);
-- ARGV[1 + g] = group g, a string of length-prefixed tokens (4-byte big-endian length):
--   expected_version, n_set, (field, value)*, n_incr, (field, delta)*,
--   n_sessions, per session: session_id, mode (open|end), expiry_ms, n_fields,
--     (field, value)*, n_del, field*,
--   n_records, record*, n_events, event*
-- One argument per account keeps the client's command encoding cheap. Session keys are
-- derived from the account key's partition tag, so they live in the same cluster slot.
-- Numbers stay strings: Lua numbers are doubles and money is int64.
-- Returns the group numbers whose account version had moved (nothing of them applied).
local retention = ARGV[1]
local conflicts = {}
for g = 1, #ARGV - 1 do
  local blob = ARGV[g + 1]
  local pos = 1
  local function tok()
    local s
    s, pos = struct.unpack('>I4c0', blob, pos)
    return s
  end
  local acct = KEYS[g + 3]
  if redis.call('HGET', acct, 'ver') ~= tok() then
    conflicts[#conflicts + 1] = g
  else
    local n = tonumber(tok())
    if n > 0 then
      local args = {}
      for k = 1, 2 * n do args[k] = tok() end
      redis.call('HSET', acct, unpack(args))
    end
    n = tonumber(tok())
    for _ = 1, n do
      local field = tok()
      redis.call('HINCRBY', acct, field, tok())
    end
    redis.call('HINCRBY', acct, 'ver', 1)
    local prefix = string.match(acct, '^(tg:{p%d+}:)')
    local set = acct .. ':sessions'
    for _ = 1, tonumber(tok()) do
      local sid = tok()
      local mode = tok()
      local expiry = tok()
      local sess = prefix .. 'sess:' .. sid
      n = tonumber(tok())
      if n > 0 then
        local args = {}
        for k = 1, 2 * n do args[k] = tok() end
        redis.call('HSET', sess, unpack(args))
      end
      n = tonumber(tok())
      if n > 0 then
        local args = {}
        for k = 1, n do args[k] = tok() end
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
