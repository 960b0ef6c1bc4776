-- finish_move: the end of a move (step 3). 'moved': the other cell placed the job, so its record here
-- goes; 'returned': it did not, so the job waits here again, in its place in the queue.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the job record
-- ARGV[1..5] the common header (see _cell.lua)   ARGV[6] job id   ARGV[7] 'moved' | 'returned'
-- Reply {v, done, actions}: done false when the job was not moving (another instance finished the move
-- already). A returned job is offered to this cell's nodes at once (one may have got room while it was
-- away, and its drain did not see the job): the 'assign' then carries the frame.
local j = load_job(ARGV[6])
if not j or j.state ~= 'moving' then return reply({done = false, actions = {}}) end
local actions = {}
if ARGV[7] == 'moved' then
  redis.call('DEL', j.k)
  redis.call('ZREM', DEADLINES, j.id)
else
  local until_ms = tonumber(redis.call('HGET', j.k, 'pending_until')) or NOW
  make_pending(j)
  redis.call('ZADD', DEADLINES, math.max(until_ms, NOW), j.id)
  redis.call('HDEL', j.k, 'move_to', 'pending_until')
  local chosen = pick(j)
  if chosen then actions[1] = assign(j, chosen, true) end
end
return reply({done = true, actions = actions})
