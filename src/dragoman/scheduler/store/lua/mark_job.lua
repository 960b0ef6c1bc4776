-- mark_job: a node's job_ack or job_started for one attempt.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the job record
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] job id   ARGV[7] node id   ARGV[8] attempt id   ARGV[9] mark: accepted | running
-- Reply {v, found, session, owner}: found when the attempt is the job's current, unresolved one.
local j = load_job(ARGV[6])
if not j or j.state ~= 'dispatched' or j.node ~= ARGV[7] or j.attempt ~= tonumber(ARGV[8]) then
  return reply({found = false})
end
redis.call('HSET', j.k, 'mark', ARGV[9])
trace(j, {e = ARGV[9], node = j.node, attempt = j.attempt})
return reply({found = true, session = j.session, owner = j.owner})
