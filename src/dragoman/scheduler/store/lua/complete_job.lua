-- complete_job: a node's job_result for one attempt.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the job record   KEYS[3] the node's job set
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] job id   ARGV[7] node id   ARGV[8] attempt id
-- ARGV[9] kind: completed | empty | failed | retry (a failure another node may not have)
-- ARGV[10] the raw job_result frame (kept as the outcome)
-- ARGV[11] ms to keep the node out of the job's pair after a retryable failure (0 = not at all)
-- ARGV[12] how many waiting jobs to try on the freed capacity   ARGV[13] how many cells there are
-- Reply {v, verdict = 'accepted'|'unknown'|'stale'|'resolved', actions}. Accepted only for the job's current
-- attempt from the node that holds it (DESIGN.md "Results"): an earlier attempt's late answer is stale,
-- even while the job is unresolved. The accepted outcome's action carries no detail (the caller has it).
-- Idempotent: the same result again (a retry after a lost reply) is 'accepted' with the same outcome, or,
-- for a retryable failure, with the assign of the attempt it moved to.
local node, attempt, kind = ARGV[7], tonumber(ARGV[8]), ARGV[9]
local j = load_job(ARGV[6])
if not j then return reply({verdict = 'unknown', actions = {}}) end
if split(j.nodes)[attempt] ~= node then return reply({verdict = 'stale', actions = {}}) end
local by = node .. ' ' .. attempt
if j.result_of == by then
  if j.state == 'dispatched' then
    local held = redis.call('HMGET', key('node', j.node), 'instance', 'conn')
    return reply({verdict = 'accepted', actions = {assign_action(j, held[1] or '', held[2] or '', true)}})
  end
  return reply({verdict = 'accepted', actions = {outcome_action(j, j.state, nil)}})
end
if j.state ~= 'dispatched' then return reply({verdict = 'resolved', actions = {}}) end
if j.attempt ~= attempt then return reply({verdict = 'stale', actions = {}}) end
local actions = {}
release(j)
trace(j, {e = 'result', node = node, attempt = attempt, kind = kind})
local grp = j.ngrp
if kind == 'retry' then
  local block_ms = tonumber(ARGV[11])
  if block_ms > 0 then redis.call('HSET', key('node', node), 'blocked:' .. j.pair, NOW + block_ms) end
  redis.call('HSET', j.k, 'result_of', by)
  -- With several cells, a node of another cell may take it: it waits (and moves) rather than failing now.
  failover(j, 'failed', ARGV[10], actions, tonumber(ARGV[13]) > 1)
  if #actions > 0 and actions[#actions].a == 'outcome' then actions[#actions].data = nil end
else
  actions[1] = resolve(j, kind, ARGV[10], false, by)
end
drain(grp, tonumber(ARGV[12]), actions)
return reply({verdict = 'accepted', actions = actions})
