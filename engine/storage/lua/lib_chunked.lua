-- Library, prepended to the scripts that send long argument lists (engine/storage/store.py
-- lua_source). `unpack` fails past about 8 000 values (LUAI_MAXCSTACK), so a list of any
-- length goes out as one command per CHUNK values.
local CHUNK = 1000 -- even: field, value pairs stay together

-- Runs cmd key [head_field head_value [field_2 value_2]] list[first..last], one command per
-- CHUNK values (the head goes with the first).
local function chunked(cmd, key, list, first, last, head_field, head_value, field_2, value_2)
  local stop = math.min(first + CHUNK - 1, last)
  if field_2 then
    redis.call(cmd, key, head_field, head_value, field_2, value_2, unpack(list, first, stop))
  elseif head_field then
    redis.call(cmd, key, head_field, head_value, unpack(list, first, stop))
  else
    redis.call(cmd, key, unpack(list, first, stop))
  end
  for i = stop + 1, last, CHUNK do
    redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, last)))
  end
end

