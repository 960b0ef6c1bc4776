-- mark_job: a node's job_ack or job_started for one attempt.
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] job id   ARGV[10] node id   ARGV[11] attempt id   ARGV[12] mark: accepted | running
-- Returns {session, owner} when the attempt is the job's current, unresolved one; else {}.
local j = load_job(ARGV[9])
if not j or j.state ~= 'dispatched' or j.node ~= ARGV[10] or j.attempt ~= tonumber(ARGV[11]) then
  return {}
end
redis.call('HSET', j.k, 'mark', ARGV[12])
return {j.session, owner_of(j)}
