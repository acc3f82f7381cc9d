-- Which of the accounts a reader holds have moved on: KEYS = accounts, ARGV = the version
-- held of each. Returns the (1-based) positions of those whose version differs (or that are
-- gone). One HGET per account inside Redis instead of one command each: the client's cost
-- per command (redis-py) is several times Redis's. Whole accounts are not read here: a
-- hash read inside Lua costs Redis about twice a plain HGETALL (every field becomes a Lua
-- string, then a reply again).
local moved = {}
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'ver') ~= ARGV[i] then
    moved[#moved + 1] = i
  end
end
return moved
