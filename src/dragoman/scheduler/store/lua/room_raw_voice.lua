-- room_raw_voice: store whether a member receives the raw voice of another member.
-- KEYS[1] the room record   KEYS[2] its members
-- ARGV[1] the member's session id   ARGV[2] the other member's session id   ARGV[3] '1' receive, '0' mute
-- Reply {v, status = 'updated'|'not_member'|'not_found', code, members, version}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return cmsgpack.pack({v = 1, status = 'not_found', code = '', members = {}})
end
local code = redis.call('HGET', KEYS[1], 'code')
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return cmsgpack.pack({v = 1, status = 'not_member', code = code, members = {}}) end
local member = cjson.decode(raw)
if type(member.raw_voice_preferences) ~= 'table' then member.raw_voice_preferences = {} end
member.raw_voice_preferences[ARGV[2]] = ARGV[3] == '1'
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(member))
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
return cmsgpack.pack({v = 1, status = 'updated', code = code, members = redis.call('HVALS', KEYS[2]),
                      version = version})
