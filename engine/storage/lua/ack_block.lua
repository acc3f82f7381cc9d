-- Acknowledges records of blocks (engine/storage/record_block.py) for one consumer group: a block's
-- stream entry is acknowledged (XACK) once all its records are; until then the records
-- acknowledged so far are kept in a hash (engine/storage/keys.py acked): entry id -> a string with
-- '1' at each acknowledged record's position (index + 1).
-- KEYS[1] = the stream, KEYS[2] = the group's hash; ARGV[1] = the group, then per entry: its
-- id and the indexes of its records to acknowledge, comma separated.
-- Returns how many of those records were pending (their entry delivered, not acknowledged).
local acked = 0
for k = 2, #ARGV, 2 do
  local id = ARGV[k]
  if #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1) > 0 then
    local entry = redis.call('XRANGE', KEYS[1], id, id)
    local n = 0 -- the entry's records (none when it is gone: trimmed while pending)
    if #entry > 0 then
      n = 1 -- an entry of one record: its index is 0
      local fields = entry[1][2]
      for f = 1, #fields, 2 do
        if fields[f] == 'n' then
          n = tonumber(fields[f + 1])
        end
      end
    end
    local marks = redis.call('HGET', KEYS[2], id) or ''
    local t = {}
    for i = 1, n do
      t[i] = string.sub(marks, i, i) == '1' and '1' or '0'
    end
    for i in string.gmatch(ARGV[k + 1], '%d+') do
      local at = tonumber(i) + 1
      if at <= n and t[at] == '0' then
        t[at] = '1'
        acked = acked + 1
      end
    end
    local left = table.concat(t)
    if string.find(left, '0', 1, true) then
      redis.call('HSET', KEYS[2], id, left)
    else -- all acknowledged, or the entry is gone
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('HDEL', KEYS[2], id)
    end
  end
end
return acked
