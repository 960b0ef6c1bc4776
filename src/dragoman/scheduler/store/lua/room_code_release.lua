-- room_code_release: free a room code for reuse, if it still names this room.
-- KEYS[1] the code's lookup key (string: room id)   ARGV[1] the room id
-- Reply {v, released}.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return cmsgpack.pack({v = 1, released = true})
end
return cmsgpack.pack({v = 1, released = false})
