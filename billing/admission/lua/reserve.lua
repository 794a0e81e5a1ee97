-- Reserve a request's worst-case cost against every budget that applies, the balance and the
-- key's rate limits: all or nothing, in one round trip. Amounts are integer nano-dollars.
-- KEYS[1] epoch (absent: counters lost, rebuild first)  KEYS[2] available balance
-- KEYS[3] reservation hash  KEYS[4] deadlines zset  KEYS[5] open set of the organization
-- KEYS[6] rate: requests this minute  KEYS[7] rate: tokens this minute  KEYS[8..] budget counters
-- ARGV[1] amount  ARGV[2] tokens  ARGV[3] rpm (-1: none)  ARGV[4] tpm (-1: none)
-- ARGV[5] deadline (unix seconds)  ARGV[6] member "<org>|<request id>"  ARGV[7] rate key ttl
-- ARGV[8..7+n] budget limits (-1: alert only)  ARGV[8+n..7+2n] counter ttls (0: none)
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {'rebuild'} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'duplicate'} end
local amt = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
if rpm >= 0 and tonumber(redis.call('GET', KEYS[6]) or '0') + 1 > rpm then
  return {'rate', 'requests'}
end
if tpm >= 0 and tonumber(redis.call('GET', KEYS[7]) or '0') + tokens > tpm then
  return {'rate', 'tokens'}
end
local n = #KEYS - 7
for i = 1, n do
  local limit = tonumber(ARGV[7 + i])
  if limit >= 0 and tonumber(redis.call('GET', KEYS[7 + i]) or '0') + amt > limit then
    return {'budget', tostring(i)}
  end
end
if tonumber(redis.call('GET', KEYS[2]) or '0') < amt then return {'balance'} end
if rpm >= 0 or tpm >= 0 then
  redis.call('INCR', KEYS[6])
  redis.call('EXPIRE', KEYS[6], ARGV[7])
  redis.call('INCRBY', KEYS[7], ARGV[2])
  redis.call('EXPIRE', KEYS[7], ARGV[7])
end
local keys = {}
for i = 1, n do
  redis.call('INCRBY', KEYS[7 + i], ARGV[1])
  local ttl = tonumber(ARGV[7 + n + i])
  if ttl > 0 then redis.call('EXPIRE', KEYS[7 + i], ttl) end
  keys[i] = KEYS[7 + i]
end
redis.call('DECRBY', KEYS[2], ARGV[1])
local rate = ''
if rpm >= 0 or tpm >= 0 then rate = KEYS[7] end
redis.call('HSET', KEYS[3], 'amt', ARGV[1], 'tok', ARGV[2], 'epoch', epoch,
  'keys', table.concat(keys, ' '), 'rate', rate)
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
redis.call('SADD', KEYS[5], ARGV[6])
return {'ok', epoch}
