-- Trims the head of a usage stream, carrying what the trimmed records did to each account
-- into the partition's carried-totals hash, atomically (reconcile adds them back).
-- KEYS[1] = usage stream, KEYS[2] = carried totals hash, KEYS[3] = where the kept records
-- start (set to ARGV[2] when entries went: reports tell a period reaching before it).
-- ARGV[1] = the stream's first entry id when the sums were taken, ARGV[2] = new first id
-- (MINID, exclusive of what goes), ARGV[3..] = field, delta pairs.
-- Returns the number of entries trimmed, or -1 when the head moved meanwhile (another
-- trimmer ran): nothing is changed then, and the caller reads again.
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 or first[1][1] ~= ARGV[1] then
  return -1
end
for k = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[k], ARGV[k + 1])
end
local trimmed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
if trimmed > 0 then
  redis.call('SET', KEYS[3], ARGV[2])
end
return trimmed
