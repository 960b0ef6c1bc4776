-- register_node: bind a node id to a new socket. It gets no job before its first heartbeat.
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] node id   ARGV[10] connection token   ARGV[11] instance id   ARGV[12] capacity
-- ARGV[13] node description (JSON, for the HTTP views)   ARGV[14] liveness window ms
-- Returns {previous connection token or '', previous instance or ''}: a socket it replaces.
-- The node keeps its unresolved attempts: a reconnected node may still deliver their results.
local node = ARGV[9]
local nk = key('node', node)
local prev = redis.call('HMGET', nk, 'conn', 'instance')
for _, pair in ipairs(split(redis.call('HGET', nk, 'pairs'))) do
  redis.call('ZREM', key('pool', pair), node)
end
if prev[2] and prev[2] ~= ARGV[11] then redis.call('SREM', key('instance', prev[2], 'nodes'), node) end
redis.call('HSET', nk, 'conn', ARGV[10], 'instance', ARGV[11], 'cap', ARGV[12], 'info', ARGV[13],
           'registered_ms', NOW, 'hb_ms', NOW, 'status', 'registering', 'pairs', '')
redis.call('HSETNX', nk, 'inflight', 0)
local grace = NOW + tonumber(ARGV[15])
for _, job_id in ipairs(redis.call('SMEMBERS', key('node', node, 'jobs'))) do
  local due = tonumber(redis.call('ZSCORE', DEADLINES, job_id))
  if due and due > grace then redis.call('ZADD', DEADLINES, grace, job_id) end
end
redis.call('PEXPIRE', nk, BINDING_TTL)
redis.call('SADD', key('instance', ARGV[11], 'nodes'), node)
redis.call('ZADD', LIVE, NOW + tonumber(ARGV[14]), node)
return {prev[1] or '', prev[2] or ''}
