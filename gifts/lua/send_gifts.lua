-- send_gifts.lua: debit a batch of gifts, each atomically and exactly once.
--
-- Redis has no rollback: a script that errors after a write keeps the write.
-- So every argument of the whole batch is checked first (an error there
-- changes nothing), and each gift is fully decided (idempotency, balance,
-- backlog) before its first write. The pure twin is gifts/send_rule.py; one
-- table of cases runs against both (tests/integration/test_send_script.py).
-- room_event / end_combo come from _room_event.lua, prepended at load time.
--
-- ARGV header:
--   1 key prefix         2 idempotency ttl s   3 ledger backlog max
--   4 room history max   5 day period           6 week period
--   7 month period       8 board ttl s          9 combo window ms
--   10..12 tier floors (2, 3, 4) in coins      13 gift count in batch
-- then one argument per gift: a msgpack array of 11 strings
--   uid, client_id, fingerprint, room, streamer_id, gift_code, count,
--   unit_price, amount, sender_json, json_tail (the event JSON after its brace)
-- (one packed argument instead of eleven: the client's RESP encoding of a
-- 256-gift batch was a third of its CPU; strings keep numbers exact)
--
-- Returns one array per gift: {outcome, balance, event_id, seq}
--   outcome: ok | duplicate | conflict | insufficient_balance | backlog_full

local P = ARGV[1]
local idem_ttl = tonumber(ARGV[2])
local backlog_max = tonumber(ARGV[3])
local hist_max = tonumber(ARGV[4])
local periods = {ARGV[5], ARGV[6], ARGV[7]}
local board_ttl = tonumber(ARGV[8])
local window = tonumber(ARGV[9])
local t2, t3, t4 = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local n = tonumber(ARGV[13])
local H = 13

if not (idem_ttl and backlog_max and hist_max and board_ttl and window and t2 and t3 and t4
        and n) then
  return redis.error_reply('BAD_ARGS header')
end
if #ARGV ~= H + n then
  return redis.error_reply('BAD_ARGS length')
end
-- Unpack and check every gift before the first write of the batch.
local G = {}
for i = 1, n do
  local ok, g = pcall(cmsgpack.unpack, ARGV[H + i])
  if not ok or type(g) ~= 'table' or #g ~= 11 then
    return redis.error_reply('BAD_ARGS gift ' .. i)
  end
  for k = 1, 11 do
    if type(g[k]) ~= 'string' then return redis.error_reply('BAD_ARGS gift ' .. i) end
  end
  local count, unit, amount = tonumber(g[7]), tonumber(g[8]), tonumber(g[9])
  if not (tonumber(g[1]) and tonumber(g[5]) and count and unit and amount)
     or count < 1 or unit < 0 or amount ~= count * unit or amount > 9007199254740991 then
    return redis.error_reply('BAD_ARGS gift ' .. i)
  end
  G[i] = g
end

local ledger = P .. 'ledger'
local backlog = redis.call('XLEN', ledger)
local now_ms = now_ms_of_redis()
local results = {}
-- Board bumps and recent-gift lists are summed over the batch and written once
-- per distinct member at the end: a surge of one user's gifts costs one ZINCRBY.
local by_streamer, by_gifter, by_fan, recent, recent_users = {}, {}, {}, {}, {}
local function add(t, k, v) t[k] = (t[k] or 0) + v end

for i = 0, n - 1 do
  local g = G[i + 1]
  local uid, cid, fp, room = g[1], g[2], g[3], g[4]
  local streamer, code = g[5], g[6]
  local count, unit, amount = g[7], g[8], tonumber(g[9])
  local sender_json, tail = g[10], g[11]
  local idem_key = P .. 'idem:' .. uid .. ':' .. cid
  local bal_key = P .. 'bal:' .. uid

  -- 1. decide, without writing
  local prev_raw = redis.call('GET', idem_key)
  local balance = tonumber(redis.call('GET', bal_key) or '0')
  if prev_raw then
    local p_fp, p_bal, p_eid, p_seq = string.match(prev_raw, '^(.-)\t(.-)\t(.-)\t(.-)$')
    if p_fp == fp then
      results[i + 1] = {'duplicate', p_bal, p_eid, p_seq}
    else
      results[i + 1] = {'conflict', tostring(balance), p_eid, p_seq}
    end
  elseif balance < amount then
    results[i + 1] = {'insufficient_balance', tostring(balance), '', '0'}
  elseif backlog >= backlog_max then
    results[i + 1] = {'backlog_full', tostring(balance), '', '0'}
  else
    -- 2. write: debit, ledger, boards, streak, room event, remember
    local new_balance = redis.call('DECRBY', bal_key, amount)
    local eid = redis.call('XADD', ledger, '*',
      'k', 'gift', 's', uid, 'r', room, 'st', streamer, 'g', code,
      'n', count, 'u', unit, 'a', g[9], 'c', cid, 't', tostring(now_ms))
    backlog = backlog + 1
    local sender_total = redis.call('ZINCRBY', P .. 'room:' .. room .. ':rank', amount, uid)
    local room_total = redis.call('INCRBY', P .. 'room:' .. room .. ':earn', amount)
    add(by_streamer, streamer, amount)
    add(by_gifter, uid, amount)
    by_fan[streamer] = by_fan[streamer] or {}
    add(by_fan[streamer], uid, amount)
    -- The streak: same sender, same gift, same room, within the window.
    local member = room .. ':' .. uid .. ':' .. code
    local ck = P .. 'combo:' .. member
    local c = redis.call('HMGET', ck, 'id', 'n', 'v', 'last')
    local combo_id, combo_n, combo_v
    if c[1] and now_ms - tonumber(c[4]) <= window then
      combo_id, combo_n, combo_v = c[1], tonumber(c[2]) + tonumber(count), tonumber(c[3]) + amount
    else
      if c[1] then  -- a streak that ran out but was not closed yet: close it first
        end_combo(P, ck, member, now_ms, hist_max, t2, t3, t4)
      end
      combo_id, combo_n, combo_v = eid, tonumber(count), amount
    end
    redis.call('HSET', ck, 'id', combo_id, 'n', combo_n, 'v', combo_v, 'last', now_ms,
               'room', room, 'sender', sender_json, 'gift', code)
    redis.call('ZADD', P .. 'combo:due', now_ms + window, member)
    -- A running PK battle: the gift scores for its room's side (x the multiplier
    -- in the last window), on the server clock; after the end it scores nothing.
    local pk_json = ''
    local pk_id = redis.call('GET', P .. 'room:' .. room .. ':pk')
    if pk_id then
      local pkey = P .. 'pk:' .. pk_id
      local pk = redis.call('HMGET', pkey, 'state', 'start', 'end', 'room_a', 'room_b',
                            'mult_from', 'mult')
      if pk[1] == 'running' and now_ms >= tonumber(pk[2]) and now_ms < tonumber(pk[3]) then
        local side, other = 'a', pk[5]
        if room ~= pk[4] then side, other = 'b', pk[4] end
        local points = amount
        if now_ms >= tonumber(pk[6]) then points = amount * tonumber(pk[7]) end
        redis.call('HINCRBY', pkey, 'score_' .. side, points)
        local sc = redis.call('HMGET', pkey, 'score_a', 'score_b')
        pk_json = ',"pk":{"id":"' .. pk_id .. '","side":"' .. side .. '","points":' .. points
          .. ',"score_a":' .. sc[1] .. ',"score_b":' .. sc[2] .. '}'
        room_event(P, other, now_ms, hist_max, '"type":"pk_score","room":"' .. other
          .. '","pk_id":"' .. pk_id .. '","score_a":' .. sc[1] .. ',"score_b":' .. sc[2] .. '}')
      end
    end
    local seq, payload = room_event(P, room, now_ms, hist_max,
      '"event_id":"' .. eid .. '","sender_total":' .. sender_total .. ',"room_total":'
      .. room_total .. ',"combo_id":"' .. combo_id .. '","combo_count":' .. combo_n
      .. ',"combo_value":' .. combo_v .. ',"sender":' .. sender_json .. pk_json .. ',' .. tail)
    -- one compact string, not a hash: ~130 bytes per remembered id
    redis.call('SET', idem_key, fp .. '\t' .. new_balance .. '\t' .. eid .. '\t' .. seq,
               'EX', idem_ttl)
    if not recent[uid] then
      recent[uid] = {}
      recent_users[#recent_users + 1] = uid
    end
    table.insert(recent[uid], payload)
    results[i + 1] = {'ok', tostring(new_balance), eid, tostring(seq)}
  end
end

-- Boards: the global streamer and gifter boards, and each streamer's own fan
-- board, per day/week/month. They expire on their own (TTL set once).
local function bump(key, totals)
  local any = false
  for member, amount in pairs(totals) do
    redis.call('ZINCRBY', key, amount, member)
    any = true
  end
  if any then redis.call('EXPIRE', key, board_ttl, 'NX') end
end
for _, period in ipairs(periods) do
  bump(P .. 'board:streamer:' .. period, by_streamer)
  bump(P .. 'board:gifter:' .. period, by_gifter)
  for streamer, fans in pairs(by_fan) do
    bump(P .. 'board:fans:' .. streamer .. ':' .. period, fans)
  end
end
for _, uid in ipairs(recent_users) do
  local recent_key = P .. 'user:' .. uid .. ':recent'
  local list = recent[uid]
  redis.call('LPUSH', recent_key, unpack(list, math.max(1, #list - 49)))  -- the list keeps 50
  redis.call('LTRIM', recent_key, 0, 49)
end
publish_all(P)
return results
