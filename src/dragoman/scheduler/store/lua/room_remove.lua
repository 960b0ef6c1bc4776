-- room_remove: take members out of a room — one session (it left: room_leave, session_close, its socket
-- closed), or every member a dead instance held (taken over: as if their sockets had closed); the room is
-- deleted when nobody is left.
-- KEYS[1] the room record   KEYS[2] its members
-- ARGV[1] 'session' | 'instance'   ARGV[2] the session id, or the dead instance's id
-- Reply {v, status = 'left'|'deleted'|'not_member'|'not_found', code, members, version}: the members who
-- remain; 'not_member' when nobody was taken out.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return cmsgpack.pack({v = 1, status = 'not_found', code = '', members = {}})
end
local code = redis.call('HGET', KEYS[1], 'code')
local removed = 0
if ARGV[1] == 'session' then
  removed = redis.call('HDEL', KEYS[2], ARGV[2])
else
  local rows = redis.call('HGETALL', KEYS[2])
  for i = 1, #rows, 2 do
    if cjson.decode(rows[i + 1]).instance == ARGV[2] then
      redis.call('HDEL', KEYS[2], rows[i])
      removed = removed + 1
    end
  end
end
if removed == 0 then return cmsgpack.pack({v = 1, status = 'not_member', code = code, members = {}}) end
if redis.call('HLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return cmsgpack.pack({v = 1, status = 'deleted', code = code, members = {}})
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
return cmsgpack.pack({v = 1, status = 'left', code = code, members = redis.call('HVALS', KEYS[2]), version = version})
