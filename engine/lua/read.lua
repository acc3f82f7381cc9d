-- Reads a batch's accounts with the sessions it needs, in one call per partition on a
-- cluster (one slot) or for several partitions on a single server. Reading here instead of
-- with one HGETALL/HGET per key saves the client most of its per-command work, and an
-- account the reader already holds costs one HGET inside Redis instead of a command.
-- KEYS, per account: the account, then the sessions to read with it.
-- ARGV, per account: its number of sessions, and the version the reader holds ('' = none).
-- Returns, per account: 0 when it still has the version held (the reader's copy is current),
-- otherwise {account hash, session hash, ...}, each a flat field, value list (empty: no
-- such key). One script sees one moment: an account and its sessions always match.
local out = {}
local k = 1
for a = 1, #ARGV, 2 do
  local n, held = tonumber(ARGV[a]), ARGV[a + 1]
  if held ~= '' and redis.call('HGET', KEYS[k], 'ver') == held then
    out[#out + 1] = 0
  else
    local read = {redis.call('HGETALL', KEYS[k])}
    for i = 1, n do
      read[i + 1] = redis.call('HGETALL', KEYS[k + i])
    end
    out[#out + 1] = read
  end
  k = k + 1 + n
end
return out
