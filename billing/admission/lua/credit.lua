-- Move an organization's available balance after a top-up, refund or adjustment, if its
-- counters exist (otherwise the next rebuild reads the new balance from the database).
-- KEYS[1] epoch  KEYS[2] available balance  ARGV[1] signed nano-dollars
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('INCRBY', KEYS[2], ARGV[1])
return 1
