-- Bulk provisioning: creates each hash KEYS[i] unless it exists, from ARGV[i] = its
-- field, value pairs as one MessagePack list. Returns how many hashes were created.
-- Every blob is decoded and checked before the first write: Redis keeps what a script
-- wrote before an error.
local fields = {}
for i = 1, #KEYS do
  fields[i] = cmsgpack.unpack(ARGV[i])
  if #fields[i] == 0 or #fields[i] % 2 ~= 0 then
    error('create_many: hash ' .. KEYS[i] .. ' has no or an odd number of values')
  end
end
local created = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    chunked('HSET', KEYS[i], fields[i], 1, #fields[i])
    created = created + 1
  end
end
return created
