-- heartbeat_node: a node's heartbeat on its registered socket. Renews liveness, puts the node in the
-- capability group of the pairs it serves, recomputes its load, then places waiting jobs it can take.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the node record   KEYS[3] the node's job set
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] node id   ARGV[7] connection token   ARGV[8] group id (a digest of the pairs; '' = none)
-- ARGV[9] the pairs, space-separated "src:tgt" (read only when the group is new)   ARGV[10] capacity
-- ARGV[11] load figures (JSON, for the HTTP views)   ARGV[12] liveness window ms
-- ARGV[13] how many waiting jobs to try
-- Reply {v, ok, actions}; ok false: the socket does not hold the node. Unchanged languages cost O(1);
-- a new group costs O(pairs) once, when its first node joins.
local node, nk, grp = ARGV[6], KEYS[2], ARGV[8]
local v = redis.call('HMGET', nk, 'conn', 'grp')
if v[1] ~= ARGV[7] then return reply({ok = false, actions = {}}) end
local old = v[2] or ''
if old ~= grp then leave_group(node, old) end
if grp ~= '' then
  local gk = key('grp', grp)
  if redis.call('EXISTS', gk .. ':pairs') == 0 then
    redis.call('SET', gk .. ':pairs', ARGV[9])
    for _, pair in ipairs(split(ARGV[9])) do redis.call('SADD', key('pair', pair), grp) end
  end
  redis.call('ZADD', gk, redis.call('SCARD', KEYS[3]) * unit(ARGV[10]), node)
end
redis.call('HSET', nk, 'grp', grp, 'cap', ARGV[10], 'load', ARGV[11], 'hb_ms', NOW,
           'status', grp == '' and 'registering' or 'ready')
redis.call('PEXPIRE', nk, BINDING_TTL)
redis.call('ZADD', LIVE, NOW + tonumber(ARGV[12]), node)
local actions = {}
drain(grp, tonumber(ARGV[13]), actions)
return reply({ok = true, actions = actions})
