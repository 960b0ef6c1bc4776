-- heartbeat_node: a node's heartbeat on its registered socket. Renews liveness, replaces its pools
-- (the directed pairs it serves) and capacity, then places waiting jobs that it can take.
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] node id   ARGV[10] connection token   ARGV[11] pairs, space-separated "src:tgt"
-- ARGV[12] capacity   ARGV[13] load figures (JSON, for the HTTP views)   ARGV[14] liveness window ms
-- ARGV[15] how many waiting jobs to try
-- Returns {{'heartbeat', 'ok'|'unknown'}, action...}. 'unknown': the socket does not hold the node.
local node = ARGV[9]
local nk = key('node', node)
if redis.call('HGET', nk, 'conn') ~= ARGV[10] then return {{'heartbeat', 'unknown'}} end
local new = {}
for _, pair in ipairs(split(ARGV[11])) do new[pair] = true end
for _, pair in ipairs(split(redis.call('HGET', nk, 'pairs'))) do
  if not new[pair] then redis.call('ZREM', key('pool', pair), node) end
end
redis.call('HSET', nk, 'pairs', ARGV[11], 'cap', ARGV[12], 'load', ARGV[13], 'hb_ms', NOW,
           'status', ARGV[11] == '' and 'registering' or 'ready')
redis.call('PEXPIRE', nk, BINDING_TTL)
redis.call('ZADD', LIVE, NOW + tonumber(ARGV[14]), node)
for pair in pairs(new) do redis.call('ZADD', key('pool', pair), 'NX', 0, node) end
rescore(node)
local actions = {{'heartbeat', 'ok'}}
drain(tonumber(ARGV[15]), actions)
return actions
