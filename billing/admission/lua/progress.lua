-- A stream's checkpoint on its hold: the output tokens relayed so far and, the first time, how
-- to charge them (model, prices, ids: metadata only). Reconciliation charges a dead process's
-- hold from it. A hold already settled or released is left alone (no hash is recreated).
-- KEYS[1] reservation hash  ARGV[1] output tokens relayed  ARGV[2] the charge's terms ('' kept)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'out', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'bill', ARGV[2]) end
return 1
