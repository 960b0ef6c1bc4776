-- room_leave: take a member out of a room; the room is deleted when its last member leaves.
-- KEYS[1] the room record   KEYS[2] its members
-- ARGV[1] session id
-- Reply {v, status = 'left'|'deleted'|'not_member'|'not_found', code, members, version}: the members who
-- remain.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return cmsgpack.pack({v = 1, status = 'not_found', code = '', members = {}})
end
local code = redis.call('HGET', KEYS[1], 'code')
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then
  return cmsgpack.pack({v = 1, status = 'not_member', code = code, members = {}})
end
if redis.call('HLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return cmsgpack.pack({v = 1, status = 'deleted', code = code, members = {}})
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
return cmsgpack.pack({v = 1, status = 'left', code = code, members = redis.call('HVALS', KEYS[2]), version = version})
