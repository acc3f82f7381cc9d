-- Applies a batch's account writes atomically, account by account, for one or more
-- partitions (one call per partition on a cluster, where each partition is its own slot;
-- several on a single server, to save the per-call cost).
-- KEYS, per partition block: its usage stream, event stream and open sessions (zset by
-- expiry), then per group of the block: its account, the account's open-session set, and one
-- key per session it writes (in the group's order).
-- ARGV[1] = retention of ended sessions (ms); ARGV[2] = the number of groups of each block,
-- comma separated; then each group (numbered across blocks), flat (the script runs about 12 %
-- shorter than when it unpacked MessagePack; Redis's whole CPU is about the same):
--   n_sessions, expected_version, created, n_set, n_records, n_events,
--   n_set values (field, new value, ...: set with the new version, one HSET),
--   per session: session_id, mode (open|end), expiry_ms, n_fields, n_deleted,
--                n_fields values (field, value, ...), n_deleted field names,
--   n_records records, n_events events.
-- `created` has one character per session: '1' = the writer believes the session new,
-- '2' = set its open-session zset score, '0' = neither.
-- Every key is declared (on a cluster all in the partition's slot): while a slot moves,
-- Redis Cluster redirects by these. Numbers are strings: Lua numbers are doubles and money is
-- int64.
-- Returns the group numbers whose account version had moved, or with a session believed new
-- that exists (nothing of them applied: the writer reads them and runs them again).
local retention = ARGV[1]
local conflicts = {}
local k = 1 -- the next key
local a = 3 -- the next argument
local g = 0
for n in string.gmatch(ARGV[2], '%d+') do
  local usage, events, open = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  for _ = 1, tonumber(n) do
    g = g + 1
    local n_sessions, version, created = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2]
    local n_set = tonumber(ARGV[a + 3])
    local n_records, n_events = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
    a = a + 6
    local acct, set = KEYS[k], KEYS[k + 1]
    local first_session = k + 2
    k = first_session + n_sessions
    local ok = redis.call('HGET', acct, 'ver') == version
    for i = 1, ok and #created or 0 do
      if string.byte(created, i) == 49 and redis.call('EXISTS', KEYS[first_session + i - 1]) == 1
      then
        ok = false
        break
      end
    end
    if not ok then
      conflicts[#conflicts + 1] = g
      a = a + n_set
      for _ = 1, n_sessions do
        a = a + 5 + tonumber(ARGV[a + 3]) + tonumber(ARGV[a + 4])
      end
      a = a + n_records + n_events
    else
      -- The version is set with the new values in one HSET (it matched above): one
      -- command per account write instead of one per changed counter.
      redis.call('HSET', acct, 'ver', string.format('%d', tonumber(version) + 1),
                 unpack(ARGV, a, a + n_set - 1))
      a = a + n_set
      for i = 1, n_sessions do
        local sess = KEYS[first_session + i - 1]
        local id, mode, expiry = ARGV[a], ARGV[a + 1], ARGV[a + 2]
        local n_fields, n_deleted = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
        a = a + 5
        if n_fields > 0 then
          redis.call('HSET', sess, unpack(ARGV, a, a + n_fields - 1))
        end
        a = a + n_fields
        if n_deleted > 0 then
          redis.call('HDEL', sess, unpack(ARGV, a, a + n_deleted - 1))
        end
        a = a + n_deleted
        if mode == 'open' then
          -- A session joins the account's open set when it is created. An open session
          -- never has a TTL: only ending sets one, and nothing reopens an ended session
          -- (that would be a write on an older account version, refused above).
          -- Its zset score is set when it is created ('1') or asked for ('2': its expiry
          -- shrank or the score is unknown); otherwise the score stays at or before the
          -- session's `exp` field, and the sweeper moves it on when it finds it due.
          local c = string.byte(created, i)
          if c == 49 then
            redis.call('SADD', set, id)
          end
          if c ~= 48 then
            redis.call('ZADD', open, expiry, sess)
          end
        else
          redis.call('SREM', set, id)
          redis.call('ZREM', open, sess)
          redis.call('PEXPIRE', sess, retention)
        end
      end
      for i = a, a + n_records - 1 do
        redis.call('XADD', usage, '*', 'r', ARGV[i])
      end
      a = a + n_records
      for i = a, a + n_events - 1 do
        redis.call('XADD', events, '*', 'e', ARGV[i])
      end
      a = a + n_events
    end
  end
end
return conflicts
