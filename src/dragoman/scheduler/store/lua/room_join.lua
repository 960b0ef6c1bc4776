-- room_join: add a member to a room (or, rejoining, bring back a resumed member).
-- KEYS[1] the room record   KEYS[2] its members
-- ARGV[1] now ms   ARGV[2] session id   ARGV[3] member JSON   ARGV[4] the most members a room may have
-- ARGV[5] ms to keep the room's keys without activity   ARGV[6] '1': a rejoin (a resumed session: a record
-- it still has is replaced, so its instance is current)
-- Reply {v, status = 'joined'|'not_found'|'already'|'full', code, members, version}. A join counts as activity.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return cmsgpack.pack({v = 1, status = 'not_found', code = '', members = {}})
end
local code = redis.call('HGET', KEYS[1], 'code')
local present = redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1
if present and ARGV[6] ~= '1' then
  return cmsgpack.pack({v = 1, status = 'already', code = code, members = redis.call('HVALS', KEYS[2])})
end
if not present and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  return cmsgpack.pack({v = 1, status = 'full', code = code, members = {}})
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], 'active_ms', ARGV[1])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
return cmsgpack.pack({v = 1, status = 'joined', code = code, members = redis.call('HVALS', KEYS[2]),
                      version = version})
