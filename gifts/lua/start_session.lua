-- start_session.lua: a streamer goes live again: a new broadcast session.
--
-- The room's live ranking and earnings belong to one broadcast; this clears
-- them, bumps the room's session epoch and tells the room (a `session_start`
-- event, in seq order, so every viewer resets its board at the same point).
-- Room seqs keep rising across sessions: resume and gap repair do not care.
--
-- ARGV: 1 key prefix, 2 room, 3 room history max
-- Returns the new epoch.
local P, room, hist_max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now_ms = now_ms_of_redis()
redis.call('DEL', P .. 'room:' .. room .. ':rank', P .. 'room:' .. room .. ':earn')
local epoch = redis.call('INCR', P .. 'room:' .. room .. ':epoch')
room_event(P, room, now_ms, hist_max,
  '"type":"session_start","room":"' .. room .. '","epoch":' .. epoch .. '}')
publish_all(P)
return epoch
