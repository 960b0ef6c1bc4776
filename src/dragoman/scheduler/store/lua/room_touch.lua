-- room_touch: a result was delivered in the room: it is active now.
-- KEYS[1] the room record   KEYS[2] its members
-- ARGV[1] now ms   ARGV[2] ms to keep the room's keys without activity
-- Reply {v, status = 'touched'|'not_found', code}.
if redis.call('EXISTS', KEYS[1]) == 0 then return cmsgpack.pack({v = 1, status = 'not_found', code = ''}) end
redis.call('HSET', KEYS[1], 'active_ms', ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return cmsgpack.pack({v = 1, status = 'touched', code = redis.call('HGET', KEYS[1], 'code')})
