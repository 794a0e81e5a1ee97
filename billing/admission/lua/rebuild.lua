-- Replace an organization's counters with values computed from the database, then mark them
-- ready (the epoch). ARGV[1]: JSON {epoch, balance, counters: {key: [value, ttl]},
-- reservations: [{hash, member, amt, tok, keys, rate, deadline} | {hash, settled}],
-- hash_prefix, defs: {budget id: definition}, defs_version}.
-- KEYS[1] epoch  KEYS[2] available balance  KEYS[3] open set  KEYS[4] deadlines zset
-- KEYS[5] budget definitions (what the reserve script applies)  KEYS[6] their version
-- The definitions are installed unless a newer budget change wrote its own meanwhile (the
-- version is the time each read the database).
local p = cjson.decode(ARGV[1])
for _, m in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local rid = string.match(m, '|(.*)$')
  redis.call('DEL', p.hash_prefix .. rid)
  redis.call('ZREM', KEYS[4], m)
end
redis.call('DEL', KEYS[3])
for k, v in pairs(p.counters) do
  redis.call('SET', k, v[1])
  if tonumber(v[2]) > 0 then redis.call('EXPIRE', k, v[2]) end
end
redis.call('SET', KEYS[2], p.balance)
if tonumber(p.defs_version) >= tonumber(redis.call('GET', KEYS[6]) or '0') then
  redis.call('DEL', KEYS[5])
  for id, def in pairs(p.defs) do redis.call('HSET', KEYS[5], id, def) end
  redis.call('SET', KEYS[6], p.defs_version)
end
for _, r in ipairs(p.reservations) do
  if r.settled then
    -- usage already counted from its event: a settle still to come only drops this marker
    redis.call('DEL', r.hash)
    redis.call('HSET', r.hash, 'settled', '1')
    redis.call('EXPIRE', r.hash, 86400)
  else
    redis.call('HSET', r.hash, 'amt', r.amt, 'tok', r.tok, 'epoch', p.epoch, 'keys', r.keys,
      'rate', r.rate)
    redis.call('ZADD', KEYS[4], r.deadline, r.member)
    redis.call('SADD', KEYS[3], r.member)
  end
end
redis.call('SET', KEYS[1], p.epoch)
return 1
