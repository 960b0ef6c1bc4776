-- claim_session: move a session record to another owner, atomically.
-- KEYS[1] the session record
-- ARGV[1] the actor expected to hold it ('*' = any: a resume may race the old actor)
-- ARGV[2] new owner instance ('' = detached: nobody delivers until a client resumes it)
-- ARGV[3] new actor token   ARGV[4] ms to keep the record from now
-- ARGV[5] the digest of the resume token presented ('*' = the session's own actor, which needs none)
-- Reply {v, claimed, previous_owner}: claimed false when there is no such session, another actor holds it or
-- the resume token is wrong. Digests are compared, so the comparison's timing tells nothing about the token.
local v = redis.call('HMGET', KEYS[1], 'owner', 'actor', 'resume')
if v[1] == false then return cmsgpack.pack({v = 1, claimed = false, previous_owner = ''}) end
if ARGV[1] ~= '*' and v[2] ~= ARGV[1] then return cmsgpack.pack({v = 1, claimed = false, previous_owner = ''}) end
if ARGV[5] ~= '*' and v[3] ~= ARGV[5] then return cmsgpack.pack({v = 1, claimed = false, previous_owner = ''}) end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'actor', ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return cmsgpack.pack({v = 1, claimed = true, previous_owner = v[1]})
