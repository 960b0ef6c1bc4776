-- cancel_jobs: end jobs whose slot no longer waits for them (gap timeout, session closed or gone).
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] reason (sent in job_cancel)   ARGV[10..] job ids
-- Each unresolved job resolves as timed_out (detail: the reason); a dispatched one frees its node's
-- capacity and yields a 'cancel' action. Returns the actions.
local reason = ARGV[9]
local actions = {}
for i = 10, #ARGV do
  local j = load_job(ARGV[i])
  if j and (j.state == 'dispatched' or j.state == 'pending') then
    if j.state == 'dispatched' then
      release(j.node, j.id)
      actions[#actions + 1] = cancel_action(j, j.node, reason)
    end
    actions[#actions + 1] = resolve(j, 'timed_out', reason)
  end
end
return actions
