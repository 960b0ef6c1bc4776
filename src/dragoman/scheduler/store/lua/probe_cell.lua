-- probe_cell: which of these pairs could this cell place a job of now (a node with room in a group
-- eligible for the pair)? Read only; the move that may follow re-checks everything.
-- KEYS[1] the cell's deadlines zset (names the slot; not touched)
-- ARGV[1..5] the common header (see _cell.lua)   ARGV[6..] pairs "src:tgt"
-- Reply {v, pairs}: the pairs with room.
local open = {}
for i = 6, #ARGV do
  for _, grp in ipairs(redis.call('SMEMBERS', key('pair', ARGV[i]))) do
    if #redis.call('ZRANGE', key('grp', grp), '-inf', '(' .. SCALE, 'BYSCORE', 'LIMIT', 0, 1) > 0 then
      open[#open + 1] = ARGV[i]
      break
    end
  end
end
return reply({pairs = open})
