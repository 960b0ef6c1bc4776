-- room_join_budget: the failed room joins of one client key, on every socket and instance (codes are guessable).
-- A join takes one attempt from the key's budget before it looks the code up, and gives it back unless the code
-- was wrong, so taking and counting are one step and concurrent joins cannot overrun the budget.
-- KEYS[1] the key's counter (attempts taken in the current window)
-- ARGV[1] 'take' or 'give_back'   ARGV[2] the budget (attempts per window)   ARGV[3] the window, ms
-- Reply {v, allowed, retry_after_ms}: 'take' not allowed when the budget is used up, retry_after_ms = the
-- window's rest; 'give_back' is always allowed.
local counter = KEYS[1]
if ARGV[1] == 'give_back' then
  if (tonumber(redis.call('GET', counter)) or 0) > 0 then redis.call('DECR', counter) end
  return cmsgpack.pack({v = 1, allowed = true, retry_after_ms = 0})
end
local taken = tonumber(redis.call('GET', counter)) or 0
if taken >= tonumber(ARGV[2]) then
  local rest = redis.call('PTTL', counter)
  if rest < 1 then rest = 1 end
  return cmsgpack.pack({v = 1, allowed = false, retry_after_ms = rest})
end
redis.call('INCR', counter)
if taken == 0 then redis.call('PEXPIRE', counter, tonumber(ARGV[3])) end
return cmsgpack.pack({v = 1, allowed = true, retry_after_ms = 0})
