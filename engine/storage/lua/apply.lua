-- Applies a batch's account writes atomically, account by account, for one or more
-- partitions (one call per partition on a cluster, where each partition is its own slot;
-- several on a single server, to save the per-call cost).
-- KEYS, per partition block: its usage stream, event stream and open sessions (zset by
-- expiry), then per group of the block: its account, the account's open-session set, and one
-- key per session it writes (in the group's order).
-- ARGV[1] = retention of ended sessions (ms); ARGV[2] = the number of groups of each block,
-- comma separated; ARGV[3] = the writer's token (decimal digits, unique to the batch: set as
-- the account's `w` with its version); then each group (numbered across blocks):
--   head: its numbers packed little-endian (Redis's struct library: one argument, no
--         number parsed from text): n_sessions, n_set, n_records, n_events, chained (1: the
--         group was computed on the predicted state of a batch not yet applied, whose token
--         follows the versions) (int32 each), then per session its flag (a byte: '1' = the writer believes the session new,
--         '2' = set its open-session zset score, '0' = neither), 1 if it ended (a byte) and
--         its expiry (ms, int64); a group's six numbers and two per session were arguments
--         of their own, and Redis's CPU per argument is about what Lua's work on it is,
--   expected_version, new_version (text: the first compared with the account's `ver` as
--         stored, the second set; a number read and written back cost Lua 0.5 µs a group),
--   when chained: the token of the batch it was computed after, compared with `w`: the
--         version alone would not do, as another writer (a top-up's HINCRBY) can move the
--         version to the one that batch would have set, and the state under it is not
--         that batch's (see docs/internals.md, chained batches),
--   n_set values (field, new value, ...: set with the new version, one HSET),
--   per session: session_id, value (engine/storage/session_blob.py: the whole session, one
--                SET),
--   when n_records > 0: the group's records as one piece of a block (engine/storage/record_block.py),
--   n_events events.
-- The records of a block's groups that apply go to its usage stream as ONE entry: n = their
-- number, b = the pieces joined (engine/storage/record_block.py); events are one entry each.
-- Every key is declared (on a cluster all in the partition's slot): while a slot moves,
-- Redis Cluster redirects by these. Money and versions stay text: Lua numbers are doubles
-- and money is int64 (an expiry in ms is exact in a double until the year 287 396).
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
local ARGV, KEYS, call, tonumber, unpack_le = ARGV, KEYS, redis.call, tonumber, struct.unpack
local nargs = #ARGV
local retention, token = ARGV[1], ARGV[3]
if not string.match(retention, '^%d+$') or #retention > 15 then
  error('apply: retention is not a whole number of ms: ' .. tostring(retention))
end
if not token or not string.match(token, '^%d+$') then
  error('apply: the writer token is not a number: ' .. tostring(token))
end
local HEAD, SESSION = 20, 10 -- the bytes of a head's counts and of each session's part

-- Pass 1: read and check; groups[g] = {ok, first key of its block, first key of the group,
-- first argument after the head, versions and token, head, n_sessions, n_set, n_records,
-- n_events, new version}.
local conflicts, groups, seen = {}, {}, {}
local k, a, g = 1, 4, 0 -- the next key, the next argument, the group number
for n in string.gmatch(ARGV[2], '%d+') do
  local block = k
  k = k + 3
  for _ = 1, tonumber(n) do
    g = g + 1
    local head, version = ARGV[a], ARGV[a + 1]
    if a + 2 > nargs or #head < HEAD or ARGV[a + 2] == '' then
      error('apply: group ' .. g .. ' has no head or versions at argument ' .. a)
    end
    local n_sessions, n_set, n_records, n_events, chained = unpack_le('<i4i4i4i4i4', head)
    if n_sessions < 0 or n_set < 0 or n_set % 2 ~= 0 or n_records < 0 or n_events < 0
       or chained < 0 or chained > 1 or #head ~= HEAD + SESSION * n_sessions then
      error('apply: group ' .. g .. ' has a malformed head: ' .. n_sessions .. ' sessions, ' ..
            n_set .. ' values, ' .. n_records .. ' records, ' .. n_events .. ' events, chained ' ..
            chained .. ' in ' .. #head .. ' bytes')
    end
    if chained == 1 and (a + 3 > nargs or ARGV[a + 3] == '') then
      error('apply: group ' .. g .. ' is chained but has no token at argument ' .. (a + 3))
    end
    if seen[KEYS[k]] then  -- its second write would pass the version check of the first
      error('apply: account ' .. KEYS[k] .. ' is written twice in one call')
    end
    seen[KEYS[k]] = true
    local ok, new_version = nil, ARGV[a + 2]
    if chained == 1 then
      local now = call('HMGET', KEYS[k], 'ver', 'w')
      ok = now[1] == version and now[2] == ARGV[a + 3]
    else
      ok = call('HGET', KEYS[k], 'ver') == version
    end
    a = a + 3 + chained
    groups[g] = {true, block, k, a, head, n_sessions, n_set, n_records, n_events, new_version}
    for i = 0, n_sessions - 1 do
      local flag, ended = unpack_le('BB', head, HEAD + 1 + SESSION * i)
      if flag < 48 or flag > 50 or ended > 1 then
        error('apply: session ' .. tostring(ARGV[a + n_set + 2 * i]) ..
              ' has a malformed flag or end mark')
      end
      if ok and flag == 49 and call('EXISTS', KEYS[k + 2 + i]) == 1 then
        ok = false
      end
    end
    if not ok then
      groups[g][1] = false
      conflicts[#conflicts + 1] = g
    end
    a = a + n_set
    for _ = 1, n_sessions do
      if not ARGV[a + 1] or ARGV[a + 1] == '' then
        error('apply: session ' .. tostring(ARGV[a]) .. ' has no value')
      end
      a = a + 2
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
  local ok, block, first_key, head, n_sessions, n_set, n_records, n_events, new_version
  ok, block, first_key, a, head, n_sessions, n_set, n_records, n_events, new_version =
    unpack(group)
  if ok then
    local events, open = KEYS[block + 1], KEYS[block + 2]
    local acct, set = KEYS[first_key], KEYS[first_key + 1]
    -- The version and the writer's token are set with the new values (they matched above):
    -- one command per account write (per CHUNK values) instead of one per changed counter.
    chunked('HSET', acct, ARGV, a, a + n_set - 1, 'ver', new_version, 'w', token)
    a = a + n_set
    for i = 1, n_sessions do
      local sess = KEYS[first_key + 1 + i]
      local id, value = ARGV[a], ARGV[a + 1]
      local c, ended, expiry = unpack_le('<BBi8', head, HEAD + 1 + SESSION * (i - 1))
      a = a + 2
      if ended == 0 then
        call('SET', sess, value)
        -- A session joins the account's open set when it is created. An open session
        -- never has a TTL: only ending sets one, and nothing reopens an ended session
        -- (that would be a write on an older account version, refused above).
        -- Its zset score is set when it is created ('1') or asked for ('2': its expiry
        -- shrank or the score is unknown); otherwise the score stays at or before the
        -- session's `exp` field, and the sweeper moves it on when it finds it due.
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
