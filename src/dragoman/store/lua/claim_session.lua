-- claim_session: move a session record to another owner, atomically.
-- KEYS[1]  the deadlines zset (names the scheduling hash slot)
-- ARGV[1..8] the common header (see _lib.lua)
-- ARGV[9] session id   ARGV[10] the actor expected to hold it ('*' = any: a resume may race the old
--         actor)   ARGV[11] new owner instance ('' = detached: nobody delivers until a client resumes it)
-- ARGV[12] new actor token   ARGV[13] ms to keep the record (and its job index) from now
-- Returns the previous owner instance, or false when there is no such session or another actor holds it.
local sk = key('session', ARGV[9])
local v = redis.call('HMGET', sk, 'owner', 'actor')
if v[1] == false then return false end
if ARGV[10] ~= '*' and v[2] ~= ARGV[10] then return false end
redis.call('HSET', sk, 'owner', ARGV[11], 'actor', ARGV[12])
redis.call('PEXPIRE', sk, tonumber(ARGV[13]))
redis.call('PEXPIRE', sk .. ':jobs', tonumber(ARGV[13]))
return v[1]
