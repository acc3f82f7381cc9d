-- Library, prepended to the scripts that send long argument lists (engine/storage/store.py
-- lua_source). `unpack` fails past about 8 000 values (LUAI_MAXCSTACK), so a list of any
-- length goes out as one command per CHUNK values.
local CHUNK = 1000 -- even: field, value pairs stay together

-- Runs cmd key [f1 v1 f2 v2] list[first..last], one command per CHUNK values (the two head
-- pairs, the apply's version and writer token, go with the first).
local function chunked(cmd, key, list, first, last, f1, v1, f2, v2)
  local stop = math.min(first + CHUNK - 1, last)
  if f1 then
    redis.call(cmd, key, f1, v1, f2, v2, unpack(list, first, stop))
  else
    redis.call(cmd, key, unpack(list, first, stop))
  end
  for i = stop + 1, last, CHUNK do
    redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, last)))
  end
end

