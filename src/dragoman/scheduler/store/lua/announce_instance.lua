-- announce_instance: an instance says it is alive (its presence deadline moves on), or leaves.
-- KEYS[1] the instances zset   KEYS[2] the instance's description   KEYS[3] the instance's node set
-- ARGV[1] now, unix ms   ARGV[2] presence window ms   ARGV[3] description (JSON), or '' to leave
-- ARGV[4] '1' on the instance's first announcement   ARGV[5] the instance id
-- Reply {v, was_present, removed}. was_present false: the instance was not announced before this call
-- although it had been (ARGV[4] '0'), so another instance took it over. Leaving ('' description) ends the
-- presence now: an instance that still holds nodes is left for the next tick of any instance to take
-- over, as a dead one would be; one whose nodes have all gone (a clean stop) is removed at once
-- (removed true), leaving nothing to take over. The work stays in the store.
local inst = ARGV[5]
local was_present = redis.call('ZSCORE', KEYS[1], inst) ~= false
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
  if redis.call('SCARD', KEYS[3]) == 0 then
    redis.call('ZREM', KEYS[1], inst)
    return cmsgpack.pack({v = 1, was_present = was_present, removed = true})
  end
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), inst)
  return cmsgpack.pack({v = 1, was_present = was_present, removed = false})
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), inst)
redis.call('SET', KEYS[2], ARGV[3], 'PX', tonumber(ARGV[2]))
return cmsgpack.pack({v = 1, was_present = was_present or ARGV[4] == '1', removed = false})
