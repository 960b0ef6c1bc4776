-- complete_job: a node's job_result for one attempt.
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] job id   ARGV[10] node id   ARGV[11] attempt id
-- ARGV[12] kind: completed | empty | failed | retry (a failure another node may not have)
-- ARGV[13] the raw job_result frame (kept as the outcome)
-- ARGV[14] ms to keep the node out of the job's pair after a retryable failure (0 = not at all)
-- ARGV[15] how many waiting jobs to try on the freed capacity
-- Returns {{'result', 'accepted'|'unknown'|'stale'|'resolved'}, action...}.
-- Accepted only for the job's current attempt from the node that holds it (DESIGN.md "Results"):
-- an earlier attempt's late answer is stale, even while the job is unresolved.
local node, attempt, kind = ARGV[10], tonumber(ARGV[11]), ARGV[12]
local j = load_job(ARGV[9])
if not j then return {{'result', 'unknown'}} end
if split(j.nodes)[attempt] ~= node then return {{'result', 'stale'}} end
if j.state ~= 'dispatched' then return {{'result', 'resolved'}} end
if j.attempt ~= attempt then return {{'result', 'stale'}} end
local actions = {{'result', 'accepted'}}
release(node, j.id)
if kind == 'retry' then
  local block_ms = tonumber(ARGV[14])
  if block_ms > 0 then redis.call('SET', key('blocked', node, j.pair), '1', 'PX', block_ms) end
  failover(j, 'failed', ARGV[13], actions, false)
else
  actions[#actions + 1] = resolve(j, kind, ARGV[13])
end
drain(tonumber(ARGV[15]), actions)
return actions
