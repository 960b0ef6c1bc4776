-- room_create: a new room with its creator as the only member.
-- KEYS[1] the room record (hash: code, created_ms, active_ms, version)   KEYS[2] its members (hash: session -> member JSON)
-- ARGV[1] now ms   ARGV[2] room code   ARGV[3] creator's session id   ARGV[4] creator's member JSON
-- ARGV[5] ms to keep the room's keys without activity (a safety net: the sweep expires idle rooms first)
-- Reply {v, status = 'created'|'exists', code, members, version}: members as their JSON, in no particular
-- order; `version` counts the room's changes (a member ignores news older than what it knows).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return cmsgpack.pack({v = 1, status = 'exists', code = '', members = {}})
end
redis.call('HSET', KEYS[1], 'code', ARGV[2], 'created_ms', ARGV[1], 'active_ms', ARGV[1], 'version', 1)
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
return cmsgpack.pack({v = 1, status = 'created', code = ARGV[2], members = {ARGV[4]}, version = 1})
