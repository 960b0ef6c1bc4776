-- reconcile: check each live node's job set against the jobs themselves and its load score against
-- the set. The scripts keep both exact; this is the safety net the logs report on if it ever repairs.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the cell's liveness zset
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] the most nodes to check in this call
-- Reply {v, repairs = [{node, counted, actual}]}: in-flight attempts by the score, and by the jobs.
local repairs = {}
for _, node in ipairs(redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[6]) - 1)) do
  local jobs = key('node', node, 'jobs')
  for _, job_id in ipairs(redis.call('SMEMBERS', jobs)) do
    local j = load_job(job_id)
    if not j or j.state ~= 'dispatched' or j.node ~= node then redis.call('SREM', jobs, job_id) end
  end
  local v = redis.call('HMGET', key('node', node), 'grp', 'cap')
  local grp = v[1] or ''
  if grp ~= '' then
    local score = tonumber(redis.call('ZSCORE', key('grp', grp), node) or 0)
    local counted = math.floor(score / unit(v[2]) + 0.5)
    local actual = redis.call('SCARD', jobs)
    if counted ~= actual then
      rescore(node, grp, v[2])
      repairs[#repairs + 1] = {node = node, counted = counted, actual = actual}
    end
  end
end
return reply({repairs = repairs})
