-- Replace an organization's budget definitions with the database's, read after a budget was
-- created, changed or deleted. A write older than the one in place (two changes racing) is
-- dropped; so is a rebuild's older read (rebuild.lua compares the same version).
-- KEYS[1] definitions hash  KEYS[2] definitions version
-- ARGV[1] version (the time the database was read)  ARGV[2..] id, definition, id, ...
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) < current then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[1])
return 1
