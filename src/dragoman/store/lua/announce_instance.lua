-- announce_instance: an instance says it is alive (its presence deadline moves on).
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] instance id   ARGV[10] presence window ms   ARGV[11] description (JSON) or '' to leave
-- Returns 1 when announced, or when it left with nothing to take over; 0 when it left for a takeover.
-- Leaving ('' description) ends the presence now. An instance that still has nodes is left for the
-- next tick of any instance to take over, as a dead one would be; one whose nodes have all gone
-- (a clean stop) leaves nothing to take over, so it is removed at once. The work stays in the store.
local inst = ARGV[9]
if ARGV[11] == '' then
  redis.call('DEL', key('instance', inst))
  if redis.call('SCARD', key('instance', inst, 'nodes')) == 0 then
    redis.call('ZREM', INSTANCES, inst)
    return 1
  end
  redis.call('ZADD', INSTANCES, NOW, inst)
  return 0
end
redis.call('ZADD', INSTANCES, NOW + tonumber(ARGV[10]), inst)
redis.call('SET', key('instance', inst), ARGV[11], 'PX', tonumber(ARGV[10]))
return 1
