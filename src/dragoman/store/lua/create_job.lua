-- create_job: create-or-get the job of one slot (session, index, tgt) and, when it is new, place it.
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] session id   ARGV[10] utterance index   ARGV[11] target language
-- ARGV[12] proposed job id   ARGV[13] pair "src:tgt" ("" = none eligible)   ARGV[14] reverse pair
--          that a two-way job also needs ("" = none)   ARGV[15] turn id   ARGV[16] trace id
-- ARGV[17] owner instance id ("" = nobody delivers: an HTTP API job)
-- ARGV[18] the job_assign frame after its attempt id (audio included; stored once)
-- ARGV[19] ms to keep the record (and its outcome) once resolved
-- Returns {{'job', 'created'|'existing', job_id, state}, action...}; actions as in _lib.lua
-- ('assign' when placed at once). A job with no usable node waits in PENDING.
local session, index, tgt = ARGV[9], ARGV[10], ARGV[11]
local slot = key('slot', session, index, tgt)
local existing = redis.call('GET', slot)
if existing then
  local state = redis.call('HGET', key('job', existing), 'state') or 'expired'
  return {{'job', 'existing', existing, state}}
end
local job_id = ARGV[12]
local jk = key('job', job_id)
redis.call('SET', slot, job_id, 'PX', BINDING_TTL)
redis.call('HSET', jk, 'state', 'pending', 'attempt', 0, 'nodes', '', 'node', '', 'session', session,
           'index', index, 'tgt', tgt, 'pair', ARGV[13], 'pair2', ARGV[14], 'turn', ARGV[15],
           'trace', ARGV[16], 'owner', ARGV[17], 'created_ms', NOW, 'dispatched_ms', '', 'frame', ARGV[18],
           'ttl', ARGV[19], 'seq', redis.call('INCR', key('seq')))
redis.call('PEXPIRE', jk, BINDING_TTL)
if ARGV[17] ~= '' then  -- a session's job: indexed so that a resumed session finds what it missed
  local index_key = key('session', session, 'jobs')
  redis.call('ZADD', index_key, tonumber(index), job_id)
  redis.call('PEXPIRE', index_key, BINDING_TTL)
end
local j = load_job(job_id)
local node = pick(j)
if node then
  return {{'job', 'created', job_id, 'dispatched'}, assign(j, node)}
end
make_pending(j)
return {{'job', 'created', job_id, 'pending'}}
