-- _lib: helpers shared by every script. Prepended to each script when it is loaded, so one
-- definition serves all of them. It reads the common ARGV header that every script receives:
--   ARGV[1] key prefix, hash tag included (e.g. "dragoman:{sched}:"); every key a script touches
--           starts with it, so each call stays inside one hash slot (Cluster-safe)
--   ARGV[2] now, unix ms          ARGV[3] a random number in [0, 1) for tie-breaks
--   ARGV[4] job timeout ms        ARGV[5] pending timeout ms
--   ARGV[6] affinity ttl ms       ARGV[7] max attempts per job
--   ARGV[8] binding ttl ms (slot bindings, utterance guards and live job records)
-- Script-specific arguments start at ARGV[9].
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local RAND = tonumber(ARGV[3])
local JOB_TIMEOUT = tonumber(ARGV[4])
local PENDING_TIMEOUT = tonumber(ARGV[5])
local AFFINITY_TTL = tonumber(ARGV[6])
local MAX_ATTEMPTS = tonumber(ARGV[7])
local BINDING_TTL = tonumber(ARGV[8])

local DEADLINES = P .. 'deadlines'   -- zset job_id -> deadline ms (pending or attempt deadline)
local PENDING = P .. 'pending'       -- zset job_id -> creation sequence number (jobs waiting for a node)
local LIVE = P .. 'live'             -- zset node_id -> liveness deadline ms (registered nodes)
local INSTANCES = P .. 'instances'   -- zset instance_id -> presence deadline ms

local function key(...)
  return P .. table.concat({...}, ':')
end

local function split(s)
  local t = {}
  if s then
    for w in string.gmatch(s, '%S+') do t[#t + 1] = w end
  end
  return t
end

-- The fields of a job record that the helpers below use, by name.
local JOB_FIELDS = {'state', 'attempt', 'nodes', 'node', 'session', 'index', 'tgt', 'pair', 'pair2',
                    'turn', 'trace', 'owner', 'created_ms', 'dispatched_ms', 'ttl', 'seq'}

local function load_job(job_id)
  local jk = key('job', job_id)
  local v = redis.call('HMGET', jk, unpack(JOB_FIELDS))
  if not v[1] then return nil end
  local j = {id = job_id, k = jk}
  for i, f in ipairs(JOB_FIELDS) do j[f] = v[i] or '' end
  j.attempt = tonumber(j.attempt) or 0
  return j
end

-- A node's score in every pool it belongs to is its load: in-flight attempts / capacity.
local function rescore(node)
  local nk = key('node', node)
  local v = redis.call('HMGET', nk, 'cap', 'inflight', 'pairs')
  local score = (tonumber(v[2]) or 0) / math.max(tonumber(v[1]) or 1, 1)
  for _, pair in ipairs(split(v[3])) do
    redis.call('ZADD', key('pool', pair), 'XX', score, node)
  end
end

local function instance_of(node)
  return redis.call('HGET', key('node', node), 'instance') or ''
end

-- The instance that delivers the job's outcome: the session's current owner (it may have been
-- resumed elsewhere), else the one that created the job; '' for an HTTP API job or a detached session.
local function owner_of(j)
  if j.owner == '' then return '' end
  local owner = redis.call('HGET', key('session', j.session), 'owner')
  if owner == false then return j.owner end
  return owner
end

-- Can this node take this job now? Live and eligible (in the pool), room left, not excluded.
local function usable(node, j, excluded)
  if not node or excluded[node] then return false end
  local s = redis.call('ZSCORE', key('pool', j.pair), node)
  if not s or tonumber(s) >= 1 then return false end
  if j.pair2 ~= '' and not redis.call('ZSCORE', key('pool', j.pair2), node) then return false end
  return redis.call('EXISTS', key('blocked', node, j.pair)) == 0
end

-- Choose a node for the job: the turn's node (MUST), else the session's node, else the least
-- loaded usable node of the pool, ties broken at random. O(log n) plus the excluded few.
local function pick(j)
  if j.pair == '' then return nil end
  local excluded = {}
  for _, n in ipairs(redis.call('SMEMBERS', key('utt', j.session, j.index))) do excluded[n] = true end
  local turn_node = redis.call('GET', key('turn', j.turn, j.tgt))
  if usable(turn_node, j, excluded) then return turn_node end
  local session_node = redis.call('GET', key('affinity', j.session))
  if usable(session_node, j, excluded) then return session_node end
  local offset = 0
  while true do
    local batch = redis.call('ZRANGE', key('pool', j.pair), '-inf', '(1', 'BYSCORE', 'LIMIT', offset, 32, 'WITHSCORES')
    if #batch == 0 then return nil end
    local best, ties = nil, {}
    for i = 1, #batch, 2 do
      local node, score = batch[i], tonumber(batch[i + 1])
      if best and score > best then break end
      if usable(node, j, excluded) then
        best = score
        ties[#ties + 1] = node
      end
    end
    if #ties > 0 then return ties[math.floor(RAND * #ties) + 1] end
    offset = offset + 32
  end
end

-- Give the job's next attempt to the node. Returns the 'assign' action.
local function assign(j, node)
  local attempt = j.attempt + 1
  local nodes = j.nodes == '' and node or (j.nodes .. ' ' .. node)
  redis.call('HSET', j.k, 'state', 'dispatched', 'attempt', attempt, 'node', node, 'nodes', nodes,
             'dispatched_ms', NOW)
  redis.call('ZADD', DEADLINES, NOW + JOB_TIMEOUT, j.id)
  redis.call('ZREM', PENDING, j.id)
  local guard = key('utt', j.session, j.index)
  redis.call('SADD', guard, node)
  redis.call('PEXPIRE', guard, BINDING_TTL)
  redis.call('SADD', key('node', node, 'jobs'), j.id)
  redis.call('HINCRBY', key('node', node), 'inflight', 1)
  rescore(node)
  redis.call('SET', key('turn', j.turn, j.tgt), node, 'PX', AFFINITY_TTL)
  redis.call('SET', key('affinity', j.session), node, 'PX', AFFINITY_TTL)
  j.attempt, j.node, j.nodes, j.state = attempt, node, nodes, 'dispatched'
  return {'assign', j.id, node, instance_of(node), attempt, redis.call('HGET', j.k, 'frame'), j.session, owner_of(j)}
end

-- Take the job's attempt off the node and give its capacity back. Idempotent: the node's job
-- set decides, so capacity is released exactly once whatever path gets here first.
local function release(node, job_id)
  if node == '' then return end
  if redis.call('SREM', key('node', node, 'jobs'), job_id) == 1 then
    local nk = key('node', node)
    if redis.call('HINCRBY', nk, 'inflight', -1) < 0 then redis.call('HSET', nk, 'inflight', 0) end
    rescore(node)
  end
end

local function cancel_action(j, node, reason)
  return {'cancel', j.id, node, instance_of(node), j.trace, reason}
end

-- The job's single outcome. state: completed | empty | failed | timed_out; detail: the node's raw
-- job_result, or Dragoman's error code. The audio is dropped, the record kept for the job's ttl.
local function resolve(j, state, detail)
  redis.call('HSET', j.k, 'state', state, 'outcome', detail, 'resolved_ms', NOW)
  redis.call('HDEL', j.k, 'frame')
  redis.call('PEXPIRE', j.k, tonumber(j.ttl))
  redis.call('ZREM', DEADLINES, j.id)
  redis.call('ZREM', PENDING, j.id)
  return {'outcome', j.id, state, detail, j.session, j.index, owner_of(j), j.trace, j.created_ms, j.dispatched_ms}
end

-- Wait for a node: the pending timeout runs from now.
local function make_pending(j)
  redis.call('HSET', j.k, 'state', 'pending', 'node', '')
  redis.call('ZADD', PENDING, tonumber(j.seq), j.id)  -- oldest first, even within one millisecond
  redis.call('ZADD', DEADLINES, NOW + PENDING_TIMEOUT, j.id)
end

-- The current attempt ended without a usable result: the next attempt on another node, if the
-- attempts allow and a node is usable. Otherwise, with wait set and attempts left, the job waits
-- for a node (pending); else it resolves with the outcome given by the caller.
local function failover(j, state, detail, actions, wait)
  if j.attempt >= MAX_ATTEMPTS then
    actions[#actions + 1] = resolve(j, state, detail)
    return
  end
  local node = pick(j)
  if node then
    actions[#actions + 1] = assign(j, node)
  elseif wait then
    make_pending(j)
  else
    actions[#actions + 1] = resolve(j, state, detail)
  end
end

-- Place waiting jobs, oldest first, while nodes have room. Bounded per call.
local function drain(limit, actions)
  local waiting = redis.call('ZRANGE', PENDING, 0, limit - 1)
  for _, job_id in ipairs(waiting) do
    local j = load_job(job_id)
    if not j or j.state ~= 'pending' then
      redis.call('ZREM', PENDING, job_id)
    else
      local node = pick(j)
      if node then actions[#actions + 1] = assign(j, node) end
    end
  end
end

-- The node is gone (socket closed, liveness or its instance expired): out of every pool, and each
-- of its attempts fails over at once, or waits for a node within the pending timeout.
local function node_down(node, actions)
  local nk = key('node', node)
  for _, pair in ipairs(split(redis.call('HGET', nk, 'pairs'))) do
    redis.call('ZREM', key('pool', pair), node)
  end
  redis.call('ZREM', LIVE, node)
  local inst = redis.call('HGET', nk, 'instance')
  if inst then redis.call('SREM', key('instance', inst, 'nodes'), node) end
  redis.call('HSET', nk, 'pairs', '', 'status', 'offline', 'conn', '')
  redis.call('PEXPIRE', nk, BINDING_TTL)
  for _, job_id in ipairs(redis.call('SMEMBERS', key('node', node, 'jobs'))) do
    release(node, job_id)
    local j = load_job(job_id)
    if j and j.state == 'dispatched' and j.node == node then
      failover(j, 'timed_out', 'NODE_UNAVAILABLE', actions, true)
    end
  end
end
