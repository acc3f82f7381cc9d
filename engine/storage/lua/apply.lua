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
--   per session: session_id, mode (open|end), expiry_ms, value (engine/storage/session_blob.py:
--                the whole session, one SET),
--   when n_records > 0: the group's records as one piece of a block (engine/storage/record_block.py),
--   n_events events.
-- The records of a block's groups that apply go to its usage stream as ONE entry: n = their
-- number, b = the pieces joined (engine/storage/record_block.py); events are one entry each.
-- `created` has one character per session: '1' = the writer believes the session new,
-- '2' = set its open-session zset score, '0' = neither.
-- Every key is declared (on a cluster all in the partition's slot): while a slot moves,
-- Redis Cluster redirects by these. Numbers are strings: Lua numbers are doubles and money is
-- int64.
-- Returns the group numbers whose account version had moved, or with a session believed new
-- that exists (nothing of them applied: the writer reads them and runs them again).
-- Redis keeps what a script wrote before an error, so nothing may fail once the first write
-- is made: a first pass reads every group's arguments, checks their shape and the versions
-- (and raises before any write when the writer sent something malformed); the second pass
-- only writes. Long argument lists (an account with thousands of members in one batch) go
-- out in chunks (lib_chunked.lua). The keys' types are not checked: every key here is
-- Tollgate's own, of the type the key layout gives it.
-- Globals read once: each use of one is a table look-up in Lua 5.1, and ARGV alone is read
-- some twenty times per group.
local ARGV, KEYS, call, tonumber, byte = ARGV, KEYS, redis.call, tonumber, string.byte
local nargs = #ARGV
local retention = ARGV[1]
if not string.match(retention, '^%d+$') or #retention > 15 then
  error('apply: retention is not a whole number of ms: ' .. tostring(retention))
end

local function count(at, what)
  local n = tonumber(ARGV[at])
  if not n or n < 0 or n % 1 ~= 0 or at > nargs then
    error('apply: ' .. what .. ' at argument ' .. at .. ' is not a count: ' .. tostring(ARGV[at]))
  end
  return n
end

local function even(n, what)
  if n % 2 ~= 0 then
    error('apply: ' .. what .. ' has an odd number of values: ' .. n)
  end
end

-- Pass 1: read and check; groups[g] = {ok, first key of its block, first key of the group,
-- first argument of the group}.
local conflicts, groups, seen = {}, {}, {}
local k, a, g = 1, 3, 0 -- the next key, the next argument, the group number
for n in string.gmatch(ARGV[2], '%d+') do
  local block = k
  k = k + 3
  for _ = 1, tonumber(n) do
    g = g + 1
    local n_sessions, version, created = count(a, 'n_sessions'), ARGV[a + 1], ARGV[a + 2]
    local n_set, n_records, n_events = count(a + 3, 'n_set'), count(a + 4, 'n_records'),
                                       count(a + 5, 'n_events')
    even(n_set, 'an account write')
    if #created ~= n_sessions or not tonumber(version) then
      error('apply: group ' .. g .. ' has a malformed version or session flags')
    end
    if seen[KEYS[k]] then  -- its second write would pass the version check of the first
      error('apply: account ' .. KEYS[k] .. ' is written twice in one call')
    end
    seen[KEYS[k]] = true
    groups[g] = {true, block, k, a}
    local ok = call('HGET', KEYS[k], 'ver') == version
    for i = 1, ok and n_sessions or 0 do
      if byte(created, i) == 49 and call('EXISTS', KEYS[k + 1 + i]) == 1 then
        ok = false
        break
      end
    end
    if not ok then
      groups[g][1] = false
      conflicts[#conflicts + 1] = g
    end
    a = a + 6 + n_set
    for _ = 1, n_sessions do
      if not tonumber(ARGV[a + 2]) or (ARGV[a + 1] ~= 'open' and ARGV[a + 1] ~= 'end')
         or not ARGV[a + 3] or ARGV[a + 3] == '' then
        error('apply: session ' .. tostring(ARGV[a]) .. ' has a malformed mode, expiry or value')
      end
      a = a + 4
    end
    a = a + (n_records > 0 and 1 or 0) + n_events
    k = k + 2 + n_sessions
  end
end
if a - 1 ~= nargs or k - 1 ~= #KEYS then
  error('apply: ' .. nargs .. ' arguments and ' .. #KEYS .. ' keys, the groups describe ' ..
        (a - 1) .. ' and ' .. (k - 1))
end

-- Pass 2: the writes of the groups whose version matched. blocks[first key of a block] =
-- {records, pieces}, in the order of `order`.
local blocks, order = {}, {}
for _, group in ipairs(groups) do
  local ok, block, first_key
  ok, block, first_key, a = group[1], group[2], group[3], group[4]
  if ok then
    local events, open = KEYS[block + 1], KEYS[block + 2]
    local acct, set = KEYS[first_key], KEYS[first_key + 1]
    local n_sessions, version, created = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2]
    local n_set = tonumber(ARGV[a + 3])
    local n_records, n_events = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
    a = a + 6
    -- The version is set with the new values (it matched above): one command per account
    -- write (per CHUNK values) instead of one per changed counter.
    chunked('HSET', acct, ARGV, a, a + n_set - 1, 'ver',
            string.format('%d', tonumber(version) + 1))
    a = a + n_set
    for i = 1, n_sessions do
      local sess = KEYS[first_key + 1 + i]
      local id, mode, expiry, value = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
      a = a + 4
      if mode == 'open' then
        call('SET', sess, value)
        -- A session joins the account's open set when it is created. An open session
        -- never has a TTL: only ending sets one, and nothing reopens an ended session
        -- (that would be a write on an older account version, refused above).
        -- Its zset score is set when it is created ('1') or asked for ('2': its expiry
        -- shrank or the score is unknown); otherwise the score stays at or before the
        -- session's `exp` field, and the sweeper moves it on when it finds it due.
        local c = byte(created, i)
        if c == 49 then
          call('SADD', set, id)
        end
        if c ~= 48 then
          call('ZADD', open, expiry, sess)
        end
      else
        if retention == '0' then
          call('DEL', sess)
        else
          call('SET', sess, value, 'PX', retention)
        end
        call('SREM', set, id)
        call('ZREM', open, sess)
      end
    end
    if n_records > 0 then
      local b = blocks[block]
      if not b then
        b = {0, {}}
        blocks[block] = b
        order[#order + 1] = block
      end
      b[1] = b[1] + n_records
      b[2][#b[2] + 1] = ARGV[a]
      a = a + 1
    end
    for i = a, a + n_events - 1 do
      call('XADD', events, '*', 'e', ARGV[i])
    end
  end
end
for _, block in ipairs(order) do
  local b = blocks[block]
  call('XADD', KEYS[block], '*', 'n', b[1], 'b', table.concat(b[2]))
end
return conflicts
