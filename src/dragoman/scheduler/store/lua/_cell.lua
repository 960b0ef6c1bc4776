-- _cell: helpers shared by every script of a scheduling cell. Prepended to each cell script when it is
-- loaded, so one definition serves all of them.
--
-- A cell is one hash tag ({<prefix>:{sched:<tag>}:...}) holding its nodes, their capability groups and
-- load, its jobs, waiting queues, deadlines and liveness. KEYS[1] is always the cell's `deadlines` zset:
-- the cell's key prefix C is KEYS[1] without "deadlines", and every key a script discovers while it runs
-- (the node chosen by selection, a group, a pair) is built from C, so it shares KEYS[1]'s hash slot.
--
-- Common ARGV header, read here:
--   ARGV[1] a random number in [0, 1) for tie-breaks
--   ARGV[2] job timeout ms   ARGV[3] pending timeout ms   ARGV[4] max attempts per job
--   ARGV[5] binding ttl ms (slot bindings, session job indexes and live job records)
-- Script-specific arguments start at ARGV[6].
--
-- Time is the store's (TIME), not the caller's: every deadline and trace step of a cell is on one clock,
-- in the order the scripts ran, however the instances' clocks differ or their calls interleave.
--
-- Replies are cmsgpack maps {v = 1, ...}; actions are maps tagged by `a` (see store/records.py).
local C = string.sub(KEYS[1], 1, -10)
local CLOCK = redis.call('TIME')
local NOW = tonumber(CLOCK[1]) * 1000 + math.floor(tonumber(CLOCK[2]) / 1000)
local RAND = tonumber(ARGV[1])
local JOB_TIMEOUT = tonumber(ARGV[2])
local PENDING_TIMEOUT = tonumber(ARGV[3])
local MAX_ATTEMPTS = tonumber(ARGV[4])
local BINDING_TTL = tonumber(ARGV[5])
local VERSION = 1

local DEADLINES = KEYS[1]      -- zset job_id -> deadline ms (pending timeout, or attempt deadline)
local LIVE = C .. 'live'       -- zset node_id -> liveness deadline ms
local WAITING = C .. 'waiting' -- set of pairs that have waiting jobs (each with a `wait:<pair>` zset)

local function key(...)
  return C .. table.concat({...}, ':')
end

local function split(s)
  local t = {}
  if s then
    for w in string.gmatch(s, '%S+') do t[#t + 1] = w end
  end
  return t
end

-- Record a step of the job in its trace (`job:<id>:trace`, a list capped at TRACE_MAX msgpack entries, kept
-- as long as the job's record: the binding ttl while it runs, its own ttl once resolved). `fields` =
-- {e = event, ...}; a `why` that is a node's raw job_result is shortened to its error code.
local TRACE_MAX = 64
local RESOLVED = {completed = true, empty = true, failed = true, timed_out = true}
local function trace(j, fields)
  local tk = j.k .. ':trace'
  fields.t = NOW
  if fields.why and string.sub(fields.why, 1, 1) == '{' then
    local ok, result = pcall(cjson.decode, fields.why)
    fields.why = ok and type(result) == 'table' and type(result.error) == 'table' and result.error.code or nil
  end
  local length = redis.call('RPUSH', tk, cmsgpack.pack(fields))
  if length > TRACE_MAX then redis.call('LTRIM', tk, -TRACE_MAX, -1) end
  if RESOLVED[j.state] then  -- the record's ttl changes once, when it resolves; the list's follows it
    redis.call('PEXPIRE', tk, tonumber(j.ttl))
  elseif length == 1 then
    redis.call('PEXPIRE', tk, BINDING_TTL)
  end
end

local function reply(fields)
  fields.v = VERSION
  return cmsgpack.pack(fields)
end

-- A job's record (`job:<id>`, hash): state (pending | dispatched | moving | completed | empty | failed |
-- timed_out), attempt, nodes (the node of each attempt, space-separated), node (current), nunit and ngrp
-- (the current node's load unit and group), session, index, tgt, pair, pair2, turn, trace, owner,
-- created_ms, dispatched_ms, ttl, seq (FIFO order while waiting), data (the job_assign while unresolved,
-- the outcome once resolved), result_of ("node attempt" of the accepted result), resolved_ms, mark,
-- guard ('1': the utterance has several jobs, one per target language of a room, see below),
-- and while moving: move_to, pending_until.
-- The fields of a job record that the helpers use, by name.
local JOB_FIELDS = {'state', 'attempt', 'nodes', 'node', 'nunit', 'ngrp', 'session', 'index', 'tgt', 'pair',
                    'pair2', 'turn', 'trace', 'owner', 'created_ms', 'dispatched_ms', 'ttl', 'seq', 'result_of',
                    'guard'}

local function load_job(job_id)
  local jk = key('job', job_id)
  local v = redis.call('HMGET', jk, unpack(JOB_FIELDS))
  if not v[1] then return nil end
  local j = {id = job_id, k = jk}
  for i, f in ipairs(JOB_FIELDS) do j[f] = v[i] or '' end
  j.attempt = tonumber(j.attempt) or 0
  return j
end

-- A node's load is in one place: its score in its capability group's zset. The score counts in-flight
-- attempts in units of ceil(SCALE / capacity), so a node with room scores below SCALE and a full one
-- at SCALE or more; an attempt adds one unit and its release takes it back (ZADD XX INCR: one
-- command, whatever the node's languages). A heartbeat recomputes it from the node's job set.
local SCALE = 1000000000
local function unit(cap)
  return math.ceil(SCALE / math.max(tonumber(cap) or 1, 1))
end

local function rescore(node, grp, cap)
  if grp == '' then return end
  local inflight = redis.call('SCARD', key('node', node, 'jobs'))
  redis.call('ZADD', key('grp', grp), 'XX', inflight * unit(cap), node)
end

-- A room utterance has one job per target language, all with the same (session_id, utterance_index),
-- which lingua's node accepts only once (N5): such jobs (guard '1') record every node they are given in
-- the utterance's guard set `utt:<session>:<index>`, and no job of the utterance goes to a node in it.
-- Nodes live in one cell each, so a guard set in the job's cell covers every node the job could get.
-- Jobs of one-job utterances skip it (no extra command on that path).
local function utterance_guard(j)
  return key('utt', j.session, j.index)
end

-- Which nodes a job must not get: every node that already had an attempt of it (N4/N5), and for a
-- guarded job every node that had a job of its utterance.
local function excluded_nodes(j)
  local excluded = {}
  for _, n in ipairs(split(j.nodes)) do excluded[n] = true end
  if j.guard == '1' then
    for _, n in ipairs(redis.call('SMEMBERS', utterance_guard(j))) do excluded[n] = true end
  end
  return excluded
end

local function eligible(grp, j)
  if redis.call('SISMEMBER', key('pair', j.pair), grp) == 0 then return false end
  return j.pair2 == '' or redis.call('SISMEMBER', key('pair', j.pair2), grp) == 1
end

-- A preferred node (the turn's, the session's) that can take the job now: in a group eligible for the
-- pair (and the reverse pair of a two-way job), room left, not excluded, not blocked for the pair.
local function usable(node, j, excluded)
  if node == '' or excluded[node] then return nil end
  local v = redis.call('HMGET', key('node', node), 'grp', 'cap', 'instance', 'blocked:' .. j.pair, 'conn')
  if not v[1] or v[1] == '' or tonumber(v[4] or 0) > NOW or not eligible(v[1], j) then return nil end
  local score = redis.call('ZSCORE', key('grp', v[1]), node)
  if not score or tonumber(score) >= SCALE then return nil end
  return {node = node, grp = v[1], cap = v[2], instance = v[3] or '', conn = v[5] or ''}
end

-- Choose a node for the job: a preferred node if usable, else the least loaded usable node among the
-- capability groups eligible for the pair, ties broken at random. Every node of a group serves the
-- same pairs, so a group's lowest scores are its best candidates: O(G log n) for G groups serving
-- the pair (nodes that announce the same languages share one group), plus the few excluded or blocked.
local function pick(j, prefer)
  if j.pair == '' then return nil end
  local excluded = excluded_nodes(j)
  for _, node in ipairs(prefer or {}) do
    local found = usable(node, j, excluded)
    if found then return found end
  end
  local groups = {}
  for _, grp in ipairs(redis.call('SMEMBERS', key('pair', j.pair))) do
    if j.pair2 == '' or redis.call('SISMEMBER', key('pair', j.pair2), grp) == 1 then
      groups[#groups + 1] = {grp = grp, offset = 0}
    end
  end
  while #groups > 0 do
    local candidates = {}
    local open = {}
    for _, g in ipairs(groups) do
      local batch = redis.call('ZRANGE', key('grp', g.grp), '-inf', '(' .. SCALE, 'BYSCORE', 'LIMIT', g.offset, 16,
                               'WITHSCORES')
      for i = 1, #batch, 2 do
        if not excluded[batch[i]] then
          candidates[#candidates + 1] = {node = batch[i], score = tonumber(batch[i + 1]), grp = g.grp}
        end
      end
      if #batch == 32 then
        g.offset = g.offset + 16
        open[#open + 1] = g
      end
    end
    table.sort(candidates, function(a, b) return a.score < b.score end)
    while #candidates > 0 do
      local ties = 1
      while ties < #candidates and candidates[ties + 1].score == candidates[1].score do ties = ties + 1 end
      local i = math.floor(RAND * ties) + 1
      local c = candidates[i]
      local v = redis.call('HMGET', key('node', c.node), 'cap', 'instance', 'blocked:' .. j.pair, 'conn')
      if tonumber(v[3] or 0) <= NOW then
        return {node = c.node, grp = c.grp, cap = v[1], instance = v[2] or '', conn = v[4] or ''}
      end
      table.remove(candidates, i)
    end
    groups = open
  end
  return nil
end

local function unwait(j)
  local wk = key('wait', j.pair)
  if redis.call('ZREM', wk, j.id) == 1 and redis.call('EXISTS', wk) == 0 then
    redis.call('SREM', WAITING, j.pair)
  end
end

-- The 'assign' action of the job's current attempt; `with_frame` puts the stored job_assign in it.
-- `conn`: the token of the socket that held the node when it was chosen (an instance that cannot reach
-- the node ends that socket's registration, never a newer one).
local function assign_action(j, instance, conn, with_frame)
  local action = {a = 'assign', job_id = j.id, node = j.node, instance = instance, conn = conn,
                  attempt = j.attempt, session = j.session, owner = j.owner, pair = j.pair}
  if with_frame then action.frame = redis.call('HGET', j.k, 'data') end
  return action
end

local function instance_of(node)
  return redis.call('HGET', key('node', node), 'instance') or ''
end

-- Give the job's next attempt to the chosen node. Returns the 'assign' action; `with_frame` puts the
-- stored job_assign in it (the caller that created the job already has it: it crosses the network once).
-- `extra`: more fields for the record's HSET (create_job writes the whole record in it).
local function assign(j, chosen, with_frame, extra)
  local node = chosen.node
  local attempt = j.attempt + 1
  local nodes = j.nodes == '' and node or (j.nodes .. ' ' .. node)
  local u = unit(chosen.cap)
  redis.call('HSET', j.k, 'state', 'dispatched', 'attempt', attempt, 'node', node, 'nodes', nodes,
             'nunit', u, 'ngrp', chosen.grp, 'dispatched_ms', NOW, unpack(extra or {}))
  redis.call('ZADD', DEADLINES, NOW + JOB_TIMEOUT, j.id)
  if j.state == 'pending' then unwait(j) end
  redis.call('SADD', key('node', node, 'jobs'), j.id)
  redis.call('ZADD', key('grp', chosen.grp), 'XX', 'INCR', u, node)
  if j.guard == '1' then
    redis.call('SADD', utterance_guard(j), node)
    redis.call('PEXPIRE', utterance_guard(j), BINDING_TTL)
  end
  j.attempt, j.node, j.nodes, j.state, j.nunit, j.ngrp = attempt, node, nodes, 'dispatched', u, chosen.grp
  j.dispatched_ms = NOW
  trace(j, {e = 'assigned', node = node, attempt = attempt, instance = chosen.instance})
  return assign_action(j, chosen.instance, chosen.conn, with_frame)
end

-- Take the job's attempt off the node and give its capacity back. Idempotent: the node's job set
-- decides, so capacity is released exactly once whatever path gets here first.
local function release(j)
  if j.node == '' then return end
  if redis.call('SREM', key('node', j.node, 'jobs'), j.id) == 1 and j.ngrp ~= '' then
    redis.call('ZADD', key('grp', j.ngrp), 'XX', 'INCR', -tonumber(j.nunit), j.node)
  end
end

local function cancel_action(j, reason)
  return {a = 'cancel', job_id = j.id, node = j.node, instance = instance_of(j.node), trace = j.trace,
          reason = reason}
end

local function outcome_action(j, state, data)
  local action = {a = 'outcome', job_id = j.id, state = state, session = j.session, index = tonumber(j.index),
                  owner = j.owner, trace = j.trace, created_ms = tonumber(j.created_ms)}
  if j.dispatched_ms ~= '' then action.dispatched_ms = tonumber(j.dispatched_ms) end
  if data then action.data = data end
  return action
end

-- The job's single outcome. state: completed | empty | failed | timed_out; detail: the node's raw
-- job_result, or Dragoman's error code. It replaces the stored job_assign (the audio) in `data`, and
-- the record is kept for the job's ttl. `echo`: put the detail in the action (the caller lacks it).
-- `result_of`: "node attempt" of the node's result that resolved it (a retry of that result is recognised).
local function resolve(j, state, detail, echo, result_of)
  redis.call('HSET', j.k, 'state', state, 'data', detail, 'resolved_ms', NOW, 'result_of', result_of or '')
  redis.call('PEXPIRE', j.k, tonumber(j.ttl))
  redis.call('ZREM', DEADLINES, j.id)
  if j.state == 'pending' then unwait(j) end
  j.state = state
  -- why: Dragoman's code, or a failed result's error code (a completed result says nothing more)
  trace(j, {e = 'outcome', state = state, why = (state == 'failed' or state == 'timed_out') and detail or nil})
  return outcome_action(j, state, echo and detail or nil)
end

-- Wait for a node: FIFO in the pair's queue; the pending timeout runs from now.
local function make_pending(j)
  if j.seq == '' then
    j.seq = redis.call('INCR', key('seq'))
    redis.call('HSET', j.k, 'seq', j.seq)
  end
  redis.call('HSET', j.k, 'state', 'pending', 'node', '')
  redis.call('ZADD', key('wait', j.pair), tonumber(j.seq), j.id)
  redis.call('SADD', WAITING, j.pair)
  redis.call('ZADD', DEADLINES, NOW + PENDING_TIMEOUT, j.id)
  j.state, j.node = 'pending', ''
  trace(j, {e = 'waiting', pair = j.pair})
end

-- The current attempt ended without a usable result: the next attempt on another node, if the
-- attempts allow and a node is usable. Otherwise, with `wait` and attempts left, the job waits for a
-- node (pending; with several cells another cell's node may take it), and resolves with the outcome given
-- by the caller if none does in time; without `wait` it resolves with that outcome now.
local function failover(j, state, detail, actions, wait)
  trace(j, {e = 'failover', node = j.node, attempt = j.attempt, why = detail})
  if j.attempt >= MAX_ATTEMPTS then
    actions[#actions + 1] = resolve(j, state, detail, true)
    return
  end
  local chosen = pick(j)
  if chosen then
    actions[#actions + 1] = assign(j, chosen, true)
  elseif wait then
    make_pending(j)
    -- the outcome if no node takes it within the pending timeout (the tick resolves it so)
    redis.call('HSET', j.k, 'fail_state', state, 'fail_detail', detail)
  else
    actions[#actions + 1] = resolve(j, state, detail, true)
  end
end

-- A node of group `grp` has room: place the oldest waiting jobs it could take, across every pair it
-- serves that has waiting jobs (FIFO within what the node could take; other pairs never block it).
-- Bounded: at most `limit` jobs placed and 64 waiting pairs looked at.
local function drain(grp, limit, actions)
  if grp == '' or limit <= 0 or redis.call('EXISTS', WAITING) == 0 then return end
  local pairs = {}
  for _, pair in ipairs(redis.call('SRANDMEMBER', WAITING, 64)) do
    if redis.call('SISMEMBER', key('pair', pair), grp) == 1 then pairs[#pairs + 1] = pair end
  end
  local placed = 0
  while placed < limit and #pairs > 0 do
    local oldest, oldest_pair, oldest_seq = nil, nil, nil
    for i, pair in ipairs(pairs) do
      local head = redis.call('ZRANGE', key('wait', pair), 0, 0, 'WITHSCORES')
      if #head == 0 then
        pairs[i] = false
      elseif oldest_seq == nil or tonumber(head[2]) < oldest_seq then
        oldest, oldest_pair, oldest_seq = head[1], pair, tonumber(head[2])
      end
    end
    local kept = {}
    for _, pair in ipairs(pairs) do if pair then kept[#kept + 1] = pair end end
    pairs = kept
    if not oldest then return end
    local j = load_job(oldest)
    if not j or j.state ~= 'pending' then
      redis.call('ZREM', key('wait', oldest_pair), oldest)
    else
      local chosen = pick(j)
      if not chosen then
        -- nothing of this pair can be placed now (the nodes that could are excluded or full)
        for i, pair in ipairs(pairs) do if pair == oldest_pair then table.remove(pairs, i) break end end
      else
        actions[#actions + 1] = assign(j, chosen, true)
        placed = placed + 1
      end
    end
  end
end

-- Leave the node's capability group; a group left empty leaves the pair sets it was in.
local function leave_group(node, grp)
  if grp == '' then return end
  local gk = key('grp', grp)
  redis.call('ZREM', gk, node)
  if redis.call('EXISTS', gk) == 0 then
    for _, pair in ipairs(split(redis.call('GET', gk .. ':pairs'))) do
      redis.call('SREM', key('pair', pair), grp)
    end
    redis.call('DEL', gk .. ':pairs')
  end
end

-- The node is gone (socket closed, liveness or its instance expired): out of its group, and each of
-- its attempts fails over at once, or waits for a node within the pending timeout.
local function node_down(node, actions)
  local nk = key('node', node)
  local grp = redis.call('HGET', nk, 'grp') or ''
  leave_group(node, grp)
  redis.call('ZREM', LIVE, node)
  redis.call('HSET', nk, 'grp', '', 'status', 'offline', 'conn', '')
  redis.call('PEXPIRE', nk, BINDING_TTL)
  for _, job_id in ipairs(redis.call('SMEMBERS', key('node', node, 'jobs'))) do
    local j = load_job(job_id)
    if j and j.node == node then
      release(j)
      if j.state == 'dispatched' then failover(j, 'timed_out', 'NODE_UNAVAILABLE', actions, true) end
    else  -- not its attempt any more (the scripts never leave one behind; reconcile reports it)
      redis.call('SREM', key('node', node, 'jobs'), job_id)
    end
  end
end
