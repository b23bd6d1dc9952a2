-- _room_event.lua: prepended to every script that appends room events.
--
-- A room event is JSON that starts with {"seq":N,"ts_ms":T, (the room bus reads
-- seq from the first bytes), is kept in the room's capped history stream (for
-- gap repair and resume) and published on the room channel, in seq order.
-- `body` is the rest of the event's JSON after those two fields, ending in '}'.
--
-- Publishing is batched: a script's events for one room go out as ONE pub/sub
-- message, the payloads joined by "\n" (JSON built here and by orjson never
-- holds a raw newline). Every subscribed process then handles one message per
-- room per script call instead of one per gift. Call publish_all() last.
local PUB_ROOMS, PUB = {}, {}
local function room_event(P, room, now_ms, hist_max, body)
  local seq = redis.call('INCR', P .. 'room:' .. room .. ':seq')
  local payload = '{"seq":' .. seq .. ',"ts_ms":' .. now_ms .. ',' .. body
  redis.call('XADD', P .. 'room:' .. room .. ':hist', 'MAXLEN', '~', hist_max, '*', 'p', payload)
  if not PUB[room] then
    PUB[room] = {}
    PUB_ROOMS[#PUB_ROOMS + 1] = room
  end
  table.insert(PUB[room], payload)
  return seq, payload
end

local function publish_all(P)
  for _, room in ipairs(PUB_ROOMS) do
    redis.call('PUBLISH', P .. 'room:' .. room .. ':ch', table.concat(PUB[room], '\n'))
  end
  PUB_ROOMS, PUB = {}, {}
end

-- The combo-end event of a streak kept in hash `ck`, then forget the streak.
local function end_combo(P, ck, member, now_ms, hist_max, t2, t3, t4)
  local c = redis.call('HMGET', ck, 'id', 'n', 'v', 'room', 'sender', 'gift')
  redis.call('DEL', ck)
  redis.call('ZREM', P .. 'combo:due', member)
  if not c[1] then
    return 0
  end
  local v = tonumber(c[3])
  local tier = 1
  if v >= t4 then tier = 4 elseif v >= t3 then tier = 3 elseif v >= t2 then tier = 2 end
  room_event(P, c[4], now_ms, hist_max,
    '"type":"combo_end","room":"' .. c[4] .. '","combo_id":"' .. c[1] .. '","sender":' .. c[5]
    .. ',"gift":"' .. c[6] .. '","count":' .. c[2] .. ',"value_coins":' .. c[3]
    .. ',"tier":' .. tier .. '}')
  return 1
end

local function now_ms_of_redis()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
