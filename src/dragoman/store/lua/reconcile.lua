-- reconcile: repair each node's in-flight count from the jobs themselves. The scripts keep it exact;
-- this is the safety net the logs report on if it ever finds a difference.
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] the most nodes to check in this call
-- Returns {node, counted, actual} for every node whose count was wrong (now repaired).
local repaired = {}
for _, node in ipairs(redis.call('ZRANGE', LIVE, 0, tonumber(ARGV[9]) - 1)) do
  local jobs = key('node', node, 'jobs')
  for _, job_id in ipairs(redis.call('SMEMBERS', jobs)) do
    local j = load_job(job_id)
    if not j or j.state ~= 'dispatched' or j.node ~= node then redis.call('SREM', jobs, job_id) end
  end
  local nk = key('node', node)
  local counted = tonumber(redis.call('HGET', nk, 'inflight')) or 0
  local actual = redis.call('SCARD', jobs)
  if counted ~= actual then
    redis.call('HSET', nk, 'inflight', actual)
    rescore(node)
    repaired[#repaired + 1] = {node, counted, actual}
  end
end
return repaired
