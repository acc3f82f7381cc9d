-- Library (engine/storage/store.py lua_source): exact int64 checks on decimal strings. Lua numbers
-- are doubles (53 bits) and money is int64, so a value is split into two halves of nine
-- digits, each exact in a double. Redis keeps what a script wrote before an error (HINCRBY
-- past int64 is one), so a script checks with these before its first write.

-- (high, low) of a decimal integer string of at most 19 digits, without its sign.
local function int64_halves(x)
  x = x:gsub('^-', '')
  return tonumber(x:sub(1, -10)) or 0, tonumber(x:sub(-9))
end

-- Whether v (a decimal int64 string) plus every amount of the list (decimal strings, each
-- 0 or more) stays within int64.
local function int64_fits(v, amounts)
  local th, tl = 0, 0
  for _, amount in ipairs(amounts) do
    local ah, al = int64_halves(amount)
    th, tl = th + ah, tl + al
  end
  th, tl = th + math.floor(tl / 1e9), tl % 1e9
  -- The room left: INT64_MAX - v (v negative adds to it).
  local vh, vl = int64_halves(v)
  local rh, rl
  if v:sub(1, 1) == '-' then
    rh, rl = 9223372036 + vh, 854775807 + vl
  else
    rh, rl = 9223372036 - vh, 854775807 - vl
  end
  rh, rl = rh + math.floor(rl / 1e9), rl % 1e9
  return th < rh or (th == rh and tl <= rl)
end
