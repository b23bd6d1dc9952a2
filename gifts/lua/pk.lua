-- pk.lua: the PK battle state machine, on the server clock (Redis TIME).
--
--   invited --accept--> running --end_ms--> punish --punish_end_ms--> done
--      |--decline--> declined      \--(invite not accepted in time)--> expired
--
-- Scores are added by send_gifts.lua while a battle runs (gifts received by
-- each side, x multiplier in the last window); this script moves the states.
-- Every transition appends a room event to both rooms, so both rooms see the
-- same thing in their own seq order. State lives in Redis: a gateway restart
-- loses nothing. Any process may call `tick` at any time: transitions are
-- atomic and each happens once.
--
-- ARGV: 1 key prefix, 2 action, 3 room history max, then per action:
--   invite:  4 pk id, 5 room a, 6 room b, 7 streamer a, 8 streamer b, 9 invite ttl ms
--   accept:  4 pk id, 5 streamer id, 6 round ms, 7 punish ms, 8 multiplier window ms,
--            9 multiplier
--   decline: 4 pk id, 5 streamer id
--   tick:    4 max transitions
-- Returns {outcome, pk id}; outcome: ok | busy | not_found | not_yours | bad_state;
-- tick returns the number of transitions made.
local P, action, hist_max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now_ms = now_ms_of_redis()
local due = P .. 'pk:due'
local PK_KEEP_S = 7 * 24 * 3600  -- a finished battle's hash is kept this long

local function pk_key(id) return P .. 'pk:' .. id end

local function both(pk, body_fn)
  room_event(P, pk.room_a, now_ms, hist_max, body_fn(pk.room_a))
  room_event(P, pk.room_b, now_ms, hist_max, body_fn(pk.room_b))
end

local function load(id)
  local f = redis.call('HGETALL', pk_key(id))
  if #f == 0 then return nil end
  local pk = {}
  for i = 1, #f, 2 do pk[f[i]] = f[i + 1] end
  return pk
end

local function summary(pk)
  return '"pk_id":"' .. pk.id .. '","room_a":"' .. pk.room_a .. '","room_b":"' .. pk.room_b
    .. '","streamer_a":' .. pk.streamer_a .. ',"streamer_b":' .. pk.streamer_b
end

local function release(pk)
  for _, r in ipairs({pk.room_a, pk.room_b}) do
    if redis.call('GET', P .. 'room:' .. r .. ':pk') == pk.id then
      redis.call('DEL', P .. 'room:' .. r .. ':pk')
    end
  end
  redis.call('ZREM', due, pk.id)
  redis.call('EXPIRE', pk_key(pk.id), PK_KEEP_S)
end

if action == 'invite' then
  local id, ra, rb, sa, sb, ttl = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
  if ra == rb then return {'bad_state', id} end
  if redis.call('EXISTS', P .. 'room:' .. ra .. ':pk') == 1
     or redis.call('EXISTS', P .. 'room:' .. rb .. ':pk') == 1 then
    return {'busy', id}
  end
  redis.call('HSET', pk_key(id), 'id', id, 'room_a', ra, 'room_b', rb, 'streamer_a', sa,
             'streamer_b', sb, 'state', 'invited', 'invited_ms', now_ms,
             'expires_ms', now_ms + ttl, 'score_a', 0, 'score_b', 0)
  redis.call('SET', P .. 'room:' .. ra .. ':pk', id)
  redis.call('SET', P .. 'room:' .. rb .. ':pk', id)
  redis.call('ZADD', due, now_ms + ttl, id)
  local pk = load(id)
  both(pk, function(r)
    return '"type":"pk_invite","room":"' .. r .. '",' .. summary(pk)
      .. ',"expires_ms":' .. (now_ms + ttl) .. '}'
  end)
  publish_all(P)
  return {'ok', id}
end

if action == 'accept' or action == 'decline' then
  local pk = load(ARGV[4])
  if not pk then return {'not_found', ARGV[4]} end
  if pk.streamer_b ~= ARGV[5] then return {'not_yours', pk.id} end
  if pk.state ~= 'invited' then return {'bad_state', pk.id} end
  if action == 'decline' then
    redis.call('HSET', pk_key(pk.id), 'state', 'declined')
    release(pk)
    both(pk, function(r) return '"type":"pk_declined","room":"' .. r .. '",' .. summary(pk) .. '}' end)
    publish_all(P)
    return {'ok', pk.id}
  end
  local round, punish = tonumber(ARGV[6]), tonumber(ARGV[7])
  local mult_window, mult = tonumber(ARGV[8]), tonumber(ARGV[9])
  local end_ms = now_ms + round
  redis.call('HSET', pk_key(pk.id), 'state', 'running', 'start', now_ms, 'end', end_ms,
             'punish_ms', punish, 'mult_from', end_ms - mult_window, 'mult', mult)
  redis.call('ZADD', due, end_ms, pk.id)
  both(pk, function(r)
    return '"type":"pk_start","room":"' .. r .. '",' .. summary(pk) .. ',"start_ms":' .. now_ms
      .. ',"end_ms":' .. end_ms .. ',"multiplier_from_ms":' .. (end_ms - mult_window)
      .. ',"multiplier":' .. mult .. '}'
  end)
  publish_all(P)
  return {'ok', pk.id}
end

if action == 'tick' then
  local limit = tonumber(ARGV[4])
  local moved = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now_ms, 'LIMIT', 0, limit)) do
    local pk = load(id)
    if not pk then
      redis.call('ZREM', due, id)
    elseif pk.state == 'invited' then
      redis.call('HSET', pk_key(id), 'state', 'expired')
      release(pk)
      both(pk, function(r) return '"type":"pk_expired","room":"' .. r .. '",' .. summary(pk) .. '}' end)
      moved = moved + 1
    elseif pk.state == 'running' then
      local a, b = tonumber(pk.score_a), tonumber(pk.score_b)
      local winner = 'draw'  -- the draw rule: equal scores, no winner, both punished
      if a > b then winner = 'a' elseif b > a then winner = 'b' end
      local punish_end = tonumber(pk['end']) + tonumber(pk.punish_ms)
      redis.call('HSET', pk_key(id), 'state', 'punish', 'winner', winner, 'punish_end', punish_end)
      redis.call('ZADD', due, punish_end, id)
      both(pk, function(r)
        return '"type":"pk_result","room":"' .. r .. '",' .. summary(pk) .. ',"score_a":' .. a
          .. ',"score_b":' .. b .. ',"winner":"' .. winner .. '","end_ms":' .. pk['end']
          .. ',"punish_end_ms":' .. punish_end .. '}'
      end)
      moved = moved + 1
    elseif pk.state == 'punish' then
      redis.call('HSET', pk_key(id), 'state', 'done')
      release(pk)
      both(pk, function(r) return '"type":"pk_over","room":"' .. r .. '",' .. summary(pk) .. '}' end)
      moved = moved + 1
    else
      redis.call('ZREM', due, id)
    end
  end
  publish_all(P)
  return moved
end

return redis.error_reply('BAD_ARGS pk action')
