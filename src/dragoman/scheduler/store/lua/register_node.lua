-- register_node: bind a node id to a new socket. It gets no job before its first heartbeat.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the node record   KEYS[3] the node's job set
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] node id   ARGV[7] connection token   ARGV[8] instance id   ARGV[9] capacity
-- ARGV[10] node description (JSON, for the HTTP views)   ARGV[11] liveness window ms
-- ARGV[12] reconnect grace ms   ARGV[13] the name of the node token it presented ('' without node tokens)
-- Reply {v, previous_conn, previous_instance, refused}: the socket it replaces ('' when none); refused (and
-- nothing changed) when the id belongs to another token: the first token to register an id owns it for as long
-- as the record lives.
-- The node keeps its unresolved attempts (a reconnected node may still answer them), but their deadlines
-- come forward to the reconnect grace: lingua's node drops results whose socket closed (N8).
local node, nk = ARGV[6], KEYS[2]
local prev = redis.call('HMGET', nk, 'conn', 'instance', 'grp', 'owner')
if ARGV[13] ~= '' and prev[4] and prev[4] ~= '' and prev[4] ~= ARGV[13] then
  return reply({previous_conn = '', previous_instance = '', refused = true})
end
leave_group(node, prev[3] or '')
redis.call('HSET', nk, 'conn', ARGV[7], 'instance', ARGV[8], 'cap', ARGV[9], 'info', ARGV[10],
           'registered_ms', NOW, 'hb_ms', NOW, 'status', 'registering', 'grp', '')
local grace = NOW + tonumber(ARGV[12])
for _, job_id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local due = tonumber(redis.call('ZSCORE', DEADLINES, job_id))
  if due and due > grace then redis.call('ZADD', DEADLINES, grace, job_id) end
end
if ARGV[13] ~= '' then redis.call('HSET', nk, 'owner', ARGV[13]) end
redis.call('PEXPIRE', nk, BINDING_TTL)
redis.call('ZADD', LIVE, NOW + tonumber(ARGV[11]), node)
return reply({previous_conn = prev[1] or '', previous_instance = prev[2] or '', refused = false})
