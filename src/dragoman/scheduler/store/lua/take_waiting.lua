-- take_waiting: hand the oldest waiting job of a pair to another cell that has room for it (step 1 of a
-- move). The job stays here, marked 'moving' with a lease, until finish_move says how the move ended; a
-- lease that runs out makes the tick report it (the mover died), so the job is never lost or doubled.
-- KEYS[1] the cell's deadlines zset
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] pair   ARGV[7] the cell it moves to   ARGV[8] lease ms
-- Reply {v, found, job}: job holds every field of the record (the job_assign in `data`).
local wk = key('wait', ARGV[6])
local head = redis.call('ZRANGE', wk, 0, 0)
if #head == 0 then return reply({found = false}) end
local j = load_job(head[1])
if not j or j.state ~= 'pending' then
  redis.call('ZREM', wk, head[1])
  if redis.call('EXISTS', wk) == 0 then redis.call('SREM', WAITING, ARGV[6]) end
  return reply({found = false})
end
unwait(j)
local pending_until = redis.call('ZSCORE', DEADLINES, j.id) or (NOW + PENDING_TIMEOUT)
redis.call('HSET', j.k, 'state', 'moving', 'move_to', ARGV[7], 'pending_until', pending_until)
redis.call('ZADD', DEADLINES, NOW + tonumber(ARGV[8]), j.id)
local record = redis.call('HGETALL', j.k)
local job = {}
for i = 1, #record, 2 do job[record[i]] = record[i + 1] end
job.job_id = j.id
return reply({found = true, job = job})
