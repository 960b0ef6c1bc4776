-- node_gone: a node's socket closed. Out of every pool at once; its attempts fail over.
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] node id   ARGV[10] the closed socket's connection token, or '*' for whichever socket
--         (the node could not be reached from the instance that tried to send to it)
-- Returns the actions ('assign' for moved attempts, 'outcome' for attempts that could not move).
-- Nothing happens when another socket has registered the node meanwhile (it replaced this one).
local nk = key('node', ARGV[9])
if ARGV[10] ~= '*' and redis.call('HGET', nk, 'conn') ~= ARGV[10] then return {} end
local actions = {}
node_down(ARGV[9], actions)
return actions
