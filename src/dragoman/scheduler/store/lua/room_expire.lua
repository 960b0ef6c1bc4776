-- room_expire: delete a room that has been idle for too long (the sweep's check; atomic, so two instances
-- sweeping at once expire it once).
-- KEYS[1] the room record   KEYS[2] its members
-- ARGV[1] now ms   ARGV[2] idle ms after which a room expires
-- Reply {v, status = 'expired'|'active'|'not_found', code, members, active_ms}: 'expired' with the members it
-- had (to be told), 'active' with its last activity (the sweep looks again when that is idle_ms old).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return cmsgpack.pack({v = 1, status = 'not_found', code = '', members = {}, active_ms = 0})
end
local v = redis.call('HMGET', KEYS[1], 'code', 'active_ms')
local active = tonumber(v[2]) or 0
if active + tonumber(ARGV[2]) > tonumber(ARGV[1]) then
  return cmsgpack.pack({v = 1, status = 'active', code = v[1], members = {}, active_ms = active})
end
local members = redis.call('HVALS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return cmsgpack.pack({v = 1, status = 'expired', code = v[1], members = members, active_ms = active})
