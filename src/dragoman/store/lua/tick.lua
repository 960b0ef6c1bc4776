-- tick: the periodic sweep, run by every instance (each call is atomic, so they never collide).
-- Expires due deadlines, nodes whose liveness ran out, and instances that stopped announcing
-- themselves (their nodes are gone with them).
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] the most items of each kind to handle in this call
-- Returns actions, plus {'drop_node', node, instance} for each node whose liveness expired and
-- {'instance_gone', instance} for each instance taken over (the caller re-routes its inbox).
local limit = tonumber(ARGV[9])
local actions = {}
for _, job_id in ipairs(redis.call('ZRANGE', DEADLINES, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, limit)) do
  local j = load_job(job_id)
  if not j then
    redis.call('ZREM', DEADLINES, job_id)
    redis.call('ZREM', PENDING, job_id)
  elseif j.state == 'pending' and j.attempt == 0 then
    actions[#actions + 1] = resolve(j, 'failed', 'NO_AVAILABLE_NODE')
  elseif j.state == 'pending' then
    -- it lost its node and found no other in time
    actions[#actions + 1] = resolve(j, 'timed_out', 'NODE_UNAVAILABLE')
  elseif j.state == 'dispatched' then
    local node = j.node
    actions[#actions + 1] = cancel_action(j, node, 'job_timeout')
    release(node, j.id)
    failover(j, 'timed_out', 'JOB_TIMEOUT', actions, false)
  else
    redis.call('ZREM', DEADLINES, job_id)
  end
end
for _, node in ipairs(redis.call('ZRANGE', LIVE, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, limit)) do
  actions[#actions + 1] = {'drop_node', node, instance_of(node)}
  node_down(node, actions)
end
for _, inst in ipairs(redis.call('ZRANGE', INSTANCES, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, limit)) do
  local nodes = key('instance', inst, 'nodes')
  for _, node in ipairs(redis.call('SMEMBERS', nodes)) do node_down(node, actions) end
  redis.call('DEL', nodes)
  redis.call('ZREM', INSTANCES, inst)
  actions[#actions + 1] = {'instance_gone', inst}
end
return actions
