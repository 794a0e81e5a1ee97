-- Settle (or release) a reservation in one round trip: every counter it held moves by
-- (actual - reserved); the reservation disappears; with an event, the usage event is appended
-- to the usage stream in the same step (the durable record until the database has it).
-- KEYS[1] epoch  KEYS[2] available balance  KEYS[3] reservation hash  KEYS[4] deadlines zset
-- KEYS[5] open set  KEYS[6] rate tokens key ('' when none)  KEYS[7] usage stream ('' when none)
-- KEYS[8..] budget counters
-- ARGV[1] actual cost (nano; '0' to release)  ARGV[2] member  ARGV[3] actual tokens
-- ARGV[4] mode: 'settle' | 'release' | 'reconcile'  ARGV[5] usage event JSON ('' when none)
-- Returns -1 for 'settle' while the epoch is missing (the caller waits for the rebuild); the
-- stream entry id when the event was appended; else 1 (done) or 0 (nothing to do).
-- A hash marked 'settled' was counted by the rebuild from the usage event: nothing moves.
-- With the hash gone (released by reconciliation, or never written to the database): 'settle'
-- still charges the actual cost (the request did happen); the others do nothing.
if ARGV[4] == 'settle' and redis.call('EXISTS', KEYS[1]) == 0 then
  return -1  -- counters lost or being rebuilt: wait for them, then settle
end
if redis.call('HGET', KEYS[3], 'settled') == '1' then
  -- a rebuild already counted this request's usage event from the database
  redis.call('DEL', KEYS[3])
  return 1
end
local amt = redis.call('HGET', KEYS[3], 'amt')
local reserved, rtok = 0, 0
if amt then
  reserved = tonumber(amt)
  rtok = tonumber(redis.call('HGET', KEYS[3], 'tok') or '0')
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[2])
  redis.call('SREM', KEYS[5], ARGV[2])
else
  if ARGV[4] ~= 'settle' then return 0 end
end
local delta = tonumber(ARGV[1]) - reserved
if delta ~= 0 then
  local d = string.format('%.0f', delta)
  for i = 8, #KEYS do redis.call('INCRBY', KEYS[i], d) end
  redis.call('DECRBY', KEYS[2], d)
end
local tdelta = tonumber(ARGV[3]) - rtok
if KEYS[6] ~= '' and tdelta ~= 0 and redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('INCRBY', KEYS[6], string.format('%.0f', tdelta))
end
if KEYS[7] ~= '' and ARGV[5] and ARGV[5] ~= '' then
  return redis.call('XADD', KEYS[7], '*', 'e', ARGV[5])
end
return 1
