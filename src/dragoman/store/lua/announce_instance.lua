-- announce_instance: an instance says it is alive (its presence deadline moves on).
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] instance id   ARGV[10] presence window ms   ARGV[11] description (JSON) or '' to leave
-- Leaving ('' description) ends the presence now, so the next tick of any instance takes over
-- its nodes' attempts as it would a dead instance's; the work itself stays in the store.
local inst = ARGV[9]
if ARGV[11] == '' then
  redis.call('ZADD', INSTANCES, NOW, inst)
  redis.call('DEL', key('instance', inst))
  return 0
end
redis.call('ZADD', INSTANCES, NOW + tonumber(ARGV[10]), inst)
redis.call('SET', key('instance', inst), ARGV[11], 'PX', tonumber(ARGV[10]))
return 1
