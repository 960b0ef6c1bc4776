-- take_instances: take over the instances that stopped announcing themselves. Atomic, so of all the
-- instances that run it, one takes each dead instance.
-- KEYS[1] the instances zset (its key prefix names each instance's node set: <KEYS[1]>:<id>:nodes)
-- ARGV[1] now, unix ms   ARGV[2] the most instances to take in this call
-- Reply {v, taken = [{instance, nodes}]}: the nodes whose sockets each one held, for the caller to
-- end (node_gone in each node's cell) and whose inbox the caller now carries out.
local taken = {}
for _, inst in ipairs(redis.call('ZRANGE', KEYS[1], '-inf', tonumber(ARGV[1]), 'BYSCORE', 'LIMIT', 0,
                                 tonumber(ARGV[2]))) do
  local nodes_key = KEYS[1] .. ':' .. inst .. ':nodes'
  taken[#taken + 1] = {instance = inst, nodes = redis.call('SMEMBERS', nodes_key)}
  redis.call('DEL', nodes_key)
  redis.call('ZREM', KEYS[1], inst)
end
return cmsgpack.pack({v = 1, taken = taken})
