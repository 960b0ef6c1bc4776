-- adopt_job: take a job that waits in another cell (step 2 of a move) and place it here at once.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the job's record in this cell
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] job id   ARGV[7] attempt so far   ARGV[8] nodes of its earlier attempts (space-separated)
-- ARGV[9] session   ARGV[10] utterance index   ARGV[11] tgt   ARGV[12] pair   ARGV[13] reverse pair
-- ARGV[14] turn   ARGV[15] trace   ARGV[16] owner   ARGV[17] created ms   ARGV[18] ttl once resolved
-- ARGV[19] the job_assign after its attempt id   ARGV[20] its utterance guard flag ('1' or '')
-- Reply {v, status = 'created'|'existing'|'no_room', actions}: 'existing' when it was adopted here already
-- (a retried move); 'no_room': nothing stored. The assign carries no frame (the caller has it).
if redis.call('EXISTS', KEYS[2]) == 1 then return reply({status = 'existing', actions = {}}) end
local j = {id = ARGV[6], k = KEYS[2], state = 'new', attempt = tonumber(ARGV[7]), nodes = ARGV[8], node = '',
           session = ARGV[9], index = ARGV[10], tgt = ARGV[11], pair = ARGV[12], pair2 = ARGV[13],
           turn = ARGV[14], trace = ARGV[15], owner = ARGV[16], created_ms = ARGV[17], dispatched_ms = '',
           ttl = ARGV[18], seq = '', guard = ARGV[20]}
local chosen = pick(j)
if not chosen then return reply({status = 'no_room', actions = {}}) end
local record = {'session', j.session, 'index', j.index, 'tgt', j.tgt, 'pair', j.pair, 'pair2', j.pair2,
  'turn', j.turn, 'trace', j.trace, 'owner', j.owner, 'created_ms', j.created_ms, 'ttl', j.ttl, 'data', ARGV[19]}
if j.guard == '1' then record[#record + 1] = 'guard'; record[#record + 1] = '1' end
local action = assign(j, chosen, false, record)
redis.call('PEXPIRE', KEYS[2], BINDING_TTL)
return reply({status = 'created', actions = {action}})
