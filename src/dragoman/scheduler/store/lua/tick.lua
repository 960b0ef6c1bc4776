-- tick: the periodic sweep of one cell, run by every instance (each call is atomic, so they never
-- collide). Expires due deadlines and nodes whose liveness ran out.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the cell's liveness zset
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] the most items of each kind to handle in this call   ARGV[7] how many cells there are
-- ARGV[8] the lease ms of a move (take_waiting)
-- Reply {v, actions, waiting, moves}: actions, with {a = 'drop_node', node, instance} for each node whose
-- liveness expired; `waiting`: some pairs that have waiting jobs (for the caller to look for room in
-- other cells); `moves`: {job_id, cell} of each move whose lease ran out (the caller finishes it).
-- With several cells, an attempt past its deadline with no node here waits (another cell may have room).
local limit = tonumber(ARGV[6])
local actions = {}
local moves = {}
for _, job_id in ipairs(redis.call('ZRANGE', DEADLINES, '-inf', NOW, 'BYSCORE', 'LIMIT', 0, limit)) do
  local j = load_job(job_id)
  if not j then
    redis.call('ZREM', DEADLINES, job_id)
  elseif j.state == 'pending' and j.attempt == 0 then
    actions[#actions + 1] = resolve(j, 'failed', 'NO_AVAILABLE_NODE', true)
  elseif j.state == 'pending' then
    -- it lost its node (or the node failed it) and found no other in time: the outcome failover left
    local f = redis.call('HMGET', j.k, 'fail_state', 'fail_detail')
    actions[#actions + 1] = resolve(j, f[1] or 'timed_out', f[2] or 'NODE_UNAVAILABLE', true)
  elseif j.state == 'dispatched' then
    actions[#actions + 1] = cancel_action(j, 'job_timeout')
    release(j)
    failover(j, 'timed_out', 'JOB_TIMEOUT', actions, tonumber(ARGV[7]) > 1)
  elseif j.state == 'moving' then
    moves[#moves + 1] = {job_id = j.id, cell = tonumber(redis.call('HGET', j.k, 'move_to'))}
    redis.call('ZADD', DEADLINES, NOW + tonumber(ARGV[8]), j.id)
  else
    redis.call('ZREM', DEADLINES, job_id)
  end
end
for _, node in ipairs(redis.call('ZRANGE', KEYS[2], '-inf', NOW, 'BYSCORE', 'LIMIT', 0, limit)) do
  actions[#actions + 1] = {a = 'drop_node', node = node, instance = instance_of(node)}
  node_down(node, actions)
end
local waiting = {}
if tonumber(ARGV[7]) > 1 then waiting = redis.call('SRANDMEMBER', WAITING, 16) end
return reply({actions = actions, waiting = waiting, moves = moves})
