-- credit.lua: add coins to a balance exactly once per operation id.
--
-- Postgres decides a credit first (order state + journal entry in one
-- transaction); this script then applies it to Redis. It may be called any
-- number of times for the same op id (outbox retries): only the first adds.
--
-- ARGV: 1 key prefix, 2 op id, 3 user id, 4 amount (coins, > 0), 5 marker ttl s
-- Returns {outcome, balance}: outcome is ok | duplicate
local P = ARGV[1]
local amount = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
if not (amount and ttl and tonumber(ARGV[3])) or amount <= 0 or amount > 9007199254740991 then
  return redis.error_reply('BAD_ARGS credit')
end
local marker = P .. 'credit:' .. ARGV[2]
local bal_key = P .. 'bal:' .. ARGV[3]
if redis.call('EXISTS', marker) == 1 then
  return {'duplicate', redis.call('GET', bal_key) or '0'}
end
local balance = redis.call('INCRBY', bal_key, amount)
redis.call('SET', marker, ARGV[3] .. ':' .. ARGV[4], 'EX', ttl)
return {'ok', tostring(balance)}
