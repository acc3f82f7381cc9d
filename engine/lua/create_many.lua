-- Bulk provisioning: creates each hash KEYS[i] unless it exists, from ARGV[i] = its
-- field, value pairs, MessagePack (as apply.lua). Returns how many hashes were created.
local created = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], unpack(cmsgpack.unpack(ARGV[i])))
    created = created + 1
  end
end
return created
