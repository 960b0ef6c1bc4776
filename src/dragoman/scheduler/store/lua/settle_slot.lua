-- settle_slot: the home cell records that the job of a slot it bound was placed in another cell.
-- KEYS[1] the home cell's deadlines zset (names the slot; not touched)   KEYS[2] the slot binding
-- KEYS[3] the session's job index
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] job id   ARGV[7] home cell   ARGV[8] the cell that holds the job   ARGV[9] utterance index
-- ARGV[10] '1' if the job is in the session's index (a session's job, not an HTTP API job)
-- Reply {v, settled}: false when the slot is no longer bound to this job (it expired).
local old, new = ARGV[6] .. '@' .. ARGV[7], ARGV[6] .. '@' .. ARGV[8]
if redis.call('GET', KEYS[2]) ~= old then return reply({settled = false}) end
redis.call('SET', KEYS[2], new, 'KEEPTTL')
if ARGV[10] == '1' and redis.call('ZREM', KEYS[3], old) == 1 then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[9]), new)
end
return reply({settled = true})
