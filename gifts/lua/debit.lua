-- debit.lua: take coins out of a balance exactly once per operation id, only if they are there.
--
-- Refunds and negative manual adjustments use it. Postgres has recorded the
-- operation as pending before this runs; the caller journals it after.
-- Everything is decided before the first write (Redis has no rollback): the
-- arguments, the op marker, the balance. Safe to call again for the same op
-- id any number of times: after the first `ok`, it answers `duplicate`.
--
-- ARGV: 1 key prefix, 2 op id, 3 user id, 4 amount (coins, > 0), 5 marker ttl s
-- Returns {outcome, balance}: outcome is ok | duplicate | insufficient_balance
local P = ARGV[1]
local amount = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
if not (amount and ttl and tonumber(ARGV[3])) or amount <= 0 or amount > 9007199254740991
   or ttl <= 0 or string.len(ARGV[2]) == 0 then
  return redis.error_reply('BAD_ARGS debit')
end
local marker = P .. 'debit:' .. ARGV[2]
local bal_key = P .. 'bal:' .. ARGV[3]
local balance = tonumber(redis.call('GET', bal_key) or '0')
if redis.call('EXISTS', marker) == 1 then
  return {'duplicate', tostring(balance)}
end
if balance < amount then
  return {'insufficient_balance', tostring(balance)}
end
local new_balance = redis.call('DECRBY', bal_key, amount)
redis.call('SET', marker, ARGV[3] .. ':' .. ARGV[4], 'EX', ttl)
return {'ok', tostring(new_balance)}
