-- Bulk provisioning: creates each hash KEYS[i] unless it exists, from ARGV[i] = its
-- field, value pairs as length-prefixed tokens (4-byte big-endian length, as apply.lua).
-- Returns how many hashes were created.
local created = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local blob, pos, args = ARGV[i], 1, {}
    while pos <= #blob do
      local s
      s, pos = struct.unpack('>I4c0', blob, pos)
      args[#args + 1] = s
    end
    redis.call('HSET', KEYS[i], unpack(args))
    created = created + 1
  end
end
return created
