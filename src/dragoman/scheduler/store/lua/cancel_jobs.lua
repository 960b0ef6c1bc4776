-- cancel_jobs: end jobs whose slot no longer waits for them (gap timeout, session closed or gone).
-- KEYS[1] the cell's deadlines zset   KEYS[2..] the job records, one per job id
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] reason (sent in job_cancel)   ARGV[7] how many waiting jobs to try on freed capacity
-- ARGV[8..] job ids, in the order of KEYS[2..]
-- Each unresolved job resolves as timed_out (detail: the reason); a dispatched one frees its node's
-- capacity (then waiting jobs that node could take are placed) and yields a 'cancel' action. Reply {v, actions}.
local reason = ARGV[6]
local actions = {}
local freed = {}
for i = 8, #ARGV do
  local j = load_job(ARGV[i])
  if j and (j.state == 'dispatched' or j.state == 'pending') then
    if j.state == 'dispatched' then
      release(j)
      actions[#actions + 1] = cancel_action(j, reason)
      freed[j.ngrp] = true
    end
    actions[#actions + 1] = resolve(j, 'timed_out', reason, true)
  end
end
for grp in pairs(freed) do drain(grp, tonumber(ARGV[7]), actions) end
return reply({actions = actions})
