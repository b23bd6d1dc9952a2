-- end_combos.lua: close every streak whose window has passed, once.
--
-- Any process may run this at any time (they all do, every ~250 ms): the
-- script is atomic, and a streak's hash is deleted as its combo_end event is
-- appended, so a streak ends exactly once, on whichever process gets there.
--
-- ARGV: 1 key prefix, 2 combo window ms, 3 room history max, 4 max to end,
--       5..7 tier floors (2, 3, 4) in coins
-- Returns the number of streaks ended.
local P = ARGV[1]
local window = tonumber(ARGV[2])
local hist_max = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local t2, t3, t4 = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if not (window and hist_max and limit and t2 and t3 and t4) then
  return redis.error_reply('BAD_ARGS end_combos')
end
local now_ms = now_ms_of_redis()
local due = redis.call('ZRANGEBYSCORE', P .. 'combo:due', '-inf', now_ms, 'LIMIT', 0, limit)
local ended = 0
for _, member in ipairs(due) do
  local ck = P .. 'combo:' .. member
  local last = tonumber(redis.call('HGET', ck, 'last') or '0')
  if last + window <= now_ms then
    ended = ended + end_combo(P, ck, member, now_ms, hist_max, t2, t3, t4)
  end
end
publish_all(P)
return ended
