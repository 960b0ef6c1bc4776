-- create_job: create-or-get the job of one slot (session, index, tgt) and place it in this cell.
-- KEYS[1] the cell's deadlines zset   KEYS[2] the job record
-- KEYS[3] the slot binding, KEYS[4] the session's job index (both in the session's home cell; given with
--         the modes 'bind' and 'reserve' only, when this is the home cell)
-- ARGV[1..5] the common header (see _cell.lua)
-- ARGV[6] session id   ARGV[7] utterance index   ARGV[8] target language   ARGV[9] proposed job id
-- ARGV[10] pair "src:tgt" ("" = none eligible)   ARGV[11] reverse pair a two-way job also needs ("" = none)
-- ARGV[12] turn id   ARGV[13] trace id   ARGV[14] owner instance ("" = an HTTP API job: nobody delivers)
-- ARGV[15] the job_assign frame after its attempt id (audio included; stored once)
-- ARGV[16] ms to keep the record (and its outcome) once resolved
-- ARGV[17] mode: 'bind' (this is the home cell: create-or-get the slot here, then place the job here),
--          'reserve' (create-or-get the slot only: a preferred node is in another cell) or 'bound' (the home
--          cell bound the slot to this job already; create the record here)
-- ARGV[18] '1': place it now or store nothing (reply 'no_room'); '0': wait here if no node has room
-- ARGV[19] this cell's number
-- ARGV[20] flags: 'g' the utterance has several jobs (a room: the utterance guard applies, see _cell.lua);
--          'r' a room job (delivered to the room's listeners: not in the session's index for a resume)
-- ARGV[21..] preferred nodes, in order (turn node, session node)
-- Reply {v, status = 'created'|'existing'|'no_room', job_id, cell, state, actions}. 'existing': the slot
-- is bound to job_id in cell `cell` (-1 while its home cell has not placed it). 'assign' actions carry no
-- frame: the caller sent it. Keys of the chosen node are built from KEYS[1]'s tag (see _cell.lua).
local jk, slot, index_key = KEYS[2], KEYS[3], KEYS[4]
local job_id, owner, cell = ARGV[9], ARGV[14], tonumber(ARGV[19])
if ARGV[17] ~= 'bound' then
  local existing = redis.call('SET', slot, job_id .. '@' .. cell, 'NX', 'GET', 'PX', BINDING_TTL)
  if existing then
    local id, at = string.match(existing, '^(.*)@(-?%d+)$')
    local state = ''
    if tonumber(at) == cell then state = redis.call('HGET', key('job', id), 'state') or 'expired' end
    return reply({status = 'existing', job_id = id, cell = tonumber(at), state = state, actions = {}})
  end
  -- a session's own job: indexed so that a resumed session finds what it missed
  if owner ~= '' and not string.find(ARGV[20], 'r', 1, true) then
    redis.call('ZADD', index_key, tonumber(ARGV[7]), job_id .. '@' .. cell)
    redis.call('PEXPIRE', index_key, BINDING_TTL)
  end
  if ARGV[17] == 'reserve' then
    return reply({status = 'no_room', job_id = job_id, cell = cell, state = '', actions = {}})
  end
end
local j = {id = job_id, k = jk, state = 'new', attempt = 0, nodes = '', node = '', session = ARGV[6],
           index = ARGV[7], tgt = ARGV[8], pair = ARGV[10], pair2 = ARGV[11], turn = ARGV[12], trace = ARGV[13],
           owner = owner, created_ms = NOW, dispatched_ms = '', ttl = ARGV[16], seq = '',
           guard = string.find(ARGV[20], 'g', 1, true) and '1' or ''}
local prefer = {}
for i = 21, #ARGV do prefer[#prefer + 1] = ARGV[i] end
local chosen = pick(j, prefer)
if not chosen and ARGV[18] == '1' then
  return reply({status = 'no_room', job_id = job_id, cell = cell, state = '', actions = {}})
end
local record = {'session', j.session, 'index', j.index, 'tgt', j.tgt, 'pair', j.pair, 'pair2', j.pair2,
                'turn', j.turn, 'trace', j.trace, 'owner', owner, 'created_ms', NOW, 'ttl', j.ttl,
                'data', ARGV[15]}
if j.guard == '1' then record[#record + 1] = 'guard'; record[#record + 1] = '1' end  -- only room jobs carry it
local actions = {}
trace(j, {e = 'created', pair = j.pair, session = j.session, index = tonumber(j.index), trace = j.trace})
if chosen then
  actions[1] = assign(j, chosen, false, record)
else
  redis.call('HSET', jk, 'attempt', 0, 'nodes', '', unpack(record))
  make_pending(j)
end
redis.call('PEXPIRE', jk, BINDING_TTL)
return reply({status = 'created', job_id = job_id, cell = cell, state = j.state, actions = actions})
