"""Storage: Redis as the source of truth; key layout, Lua scripts, clients, the state read."""
