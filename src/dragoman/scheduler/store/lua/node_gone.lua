-- node_gone: a node's socket closed, or its instance is gone. Out of its group at once; its attempts
-- fail over.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the node record
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] node id   ARGV[7] the closed socket's connection token, or '*' for whichever socket
-- ARGV[8] the instance expected to hold it, or '*' for any
-- Reply {v, actions} ('assign' for moved attempts, 'outcome' for attempts that could not move). Nothing
-- happens when another socket (or instance) has registered the node meanwhile: it replaced this one.
local v = redis.call('HMGET', KEYS[2], 'conn', 'instance')
if not v[1] or v[1] == '' then return reply({actions = {}}) end
if ARGV[7] ~= '*' and v[1] ~= ARGV[7] then return reply({actions = {}}) end
if ARGV[8] ~= '*' and v[2] ~= ARGV[8] then return reply({actions = {}}) end
local actions = {}
node_down(ARGV[6], actions)
return reply({actions = actions})
