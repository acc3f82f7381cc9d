-- Library (engine/storage/store.py lua_source): the one ordering rule for a subscriber's state.
-- Every decision on a state has a place in the account's partition streams (engine/storage/store.py
-- state_order: an event's own place, or just after the newest record for a decision made
-- now); field 'lco' of the subscriber keeps the place of the newest decision applied. A
-- decision placed before it is older than the state and must not undo it (a redelivered
-- top-up after a suspension). Timers have no place ('') and are never refused.

-- Whether the decision at `order` is older than the one at `lco` (false: none yet).
local function state_older(lco, order)
  return order ~= '' and lco and order < lco
end

-- Writes the subscriber's state (with more field, value pairs, if given) for the decision at
-- `order`; the marker only moves forward.
local function state_write(key, lco, state, order, ...)
  if order ~= '' and not state_older(lco, order) then
    redis.call('HSET', key, 'state', state, 'lco', order, ...)
  else
    redis.call('HSET', key, 'state', state, ...)
  end
end
