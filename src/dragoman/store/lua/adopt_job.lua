-- adopt_job: take a job that waits in another cell (step 2 of a move) and place it here at once.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the job's record in this cell
-- ARGV[1..6] the common header (see _cell.lua)
-- ARGV[7] job id   ARGV[8] attempt so far   ARGV[9] nodes of its earlier attempts (space-separated)
-- ARGV[10] session   ARGV[11] utterance index   ARGV[12] tgt   ARGV[13] pair   ARGV[14] reverse pair
-- ARGV[15] turn   ARGV[16] trace   ARGV[17] owner   ARGV[18] created ms   ARGV[19] ttl once resolved
-- ARGV[20] the job_assign after its attempt id   ARGV[21] its utterance guard flag ('1' or '')
-- Reply {v, status = 'created'|'existing'|'no_room', actions}: 'existing' when it was adopted here already
-- (a retried move); 'no_room': nothing stored. The assign carries no frame (the caller has it).
if redis.call('EXISTS', KEYS[2]) == 1 then return reply({status = 'existing', actions = {}}) end
local j = {id = ARGV[7], k = KEYS[2], state = 'new', attempt = tonumber(ARGV[8]), nodes = ARGV[9], node = '',
           session = ARGV[10], index = ARGV[11], tgt = ARGV[12], pair = ARGV[13], pair2 = ARGV[14],
           turn = ARGV[15], trace = ARGV[16], owner = ARGV[17], created_ms = ARGV[18], dispatched_ms = '',
           ttl = ARGV[19], seq = '', guard = ARGV[21]}
local chosen = pick(j)
if not chosen then return reply({status = 'no_room', actions = {}}) end
local record = {'session', j.session, 'index', j.index, 'tgt', j.tgt, 'pair', j.pair, 'pair2', j.pair2,
  'turn', j.turn, 'trace', j.trace, 'owner', j.owner, 'created_ms', j.created_ms, 'ttl', j.ttl, 'data', ARGV[20]}
if j.guard == '1' then record[#record + 1] = 'guard'; record[#record + 1] = '1' end
local action = assign(j, chosen, false, record)
redis.call('PEXPIRE', KEYS[2], BINDING_TTL)
return reply({status = 'created', actions = {action}})
