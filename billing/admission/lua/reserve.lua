-- Reserve a request's worst case against every budget of its organization that applies, the
-- balance and the key's rate limits: all or nothing, in one round trip. The budgets are read
-- here, from the organization's definitions beside the counters, so a budget created, changed
-- or deleted through any process is what the next admission of every process sees.
-- Amounts are nano-dollars (counters are integers; the output price may be fractional).
--
-- KEYS[1] epoch (absent: counters lost, rebuild first)  KEYS[2] available balance
-- KEYS[3] reservation hash  KEYS[4] deadlines zset  KEYS[5] open set of the organization
-- KEYS[6] rate: requests this minute  KEYS[7] rate: tokens this minute
-- KEYS[8] budget definitions: id -> "scope|scope id|period|limit (nano)|mode"
-- ARGV[1] input amount: the prompt's bound at the dearest input price
-- ARGV[2] output price per token at the dearest candidate
-- ARGV[3] output tokens wanted  ARGV[4] '1': exactly those (the caller set max_tokens);
--         '0': as many as the tightest layer pays for, at most those
-- ARGV[5] the fewest output tokens worth serving  ARGV[6] input tokens (for the token limit)
-- ARGV[7] rpm (-1: none)  ARGV[8] tpm (-1: none)  ARGV[9] deadline (unix seconds)
-- ARGV[10] member "<org>|<request id>"  ARGV[11] rate key ttl  ARGV[12] budget counter prefix
-- ARGV[13] the reserving process  ARGV[14] now (unix ms)
-- ARGV[15..20] the request's scope ids: organization, department, team, project, member, key
-- ARGV[21..26] period start (unix s) and counter ttl: daily, weekly, monthly
-- ARGV[27..] the request's tags, "key=value" (a tag budget's scope id is its tag)
-- Returns {'ok', epoch, output tokens, amount, "id|start|scope" ...} or a refusal:
-- {'rebuild'}, {'duplicate'}, {'rate', what}, {'budget', id, scope, scope id}, {'balance'}.
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {'rebuild'} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'duplicate'} end

local scope_ids = {
  organization = ARGV[15], department = ARGV[16], team = ARGV[17], project = ARGV[18],
  member = ARGV[19], key = ARGV[20],
}
local periods = {
  daily = {ARGV[21], ARGV[22]}, weekly = {ARGV[23], ARGV[24]}, monthly = {ARGV[25], ARGV[26]},
  lifetime = {'0', '0'},
}
local tags = {}
for i = 27, #ARGV do tags[ARGV[i]] = true end
local counters, limits, ttls, matched, scopes, sids = {}, {}, {}, {}, {}, {}
local defs = redis.call('HGETALL', KEYS[8])
for i = 1, #defs, 2 do
  local scope, sid, period, limit, mode =
    string.match(defs[i + 1], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  local p = periods[period]
  if p and (scope == 'organization' or (scope == 'tag' and tags[sid])
      or (sid ~= '' and scope_ids[scope] == sid)) then
    local n = #counters + 1
    counters[n] = ARGV[12] .. defs[i] .. ':' .. p[1]
    limits[n] = (mode == 'block') and tonumber(limit) or -1
    ttls[n] = tonumber(p[2])
    matched[n] = defs[i] .. '|' .. p[1] .. '|' .. scope
    scopes[n] = scope
    sids[n] = sid
  end
end

-- The room the tightest layer leaves: the balance, or a blocking budget's limit - spent.
local room = tonumber(redis.call('GET', KEYS[2]) or '0')
local tightest = 0
for i = 1, #counters do
  if limits[i] >= 0 then
    local left = limits[i] - tonumber(redis.call('GET', counters[i]) or '0')
    if left < room then room, tightest = left, i end
  end
end
local function refused()
  if tightest == 0 then return {'balance'} end
  return {'budget', string.match(matched[tightest], '^([^|]*)'), scopes[tightest], sids[tightest]}
end

local in_amt = tonumber(ARGV[1])
local price = tonumber(ARGV[2])
local out = tonumber(ARGV[3])
if room < in_amt then return refused() end
if price > 0 then
  local affordable = math.floor((room - in_amt) / price)
  if affordable < out then
    if ARGV[4] == '1' or affordable < tonumber(ARGV[5]) then return refused() end
    out = affordable
  end
end
local amt = math.ceil(in_amt + out * price)
if amt > room then return refused() end
local amt_s = string.format('%.0f', amt)

local tokens = tonumber(ARGV[6]) + out
local rpm, tpm = tonumber(ARGV[7]), tonumber(ARGV[8])
if rpm >= 0 and tonumber(redis.call('GET', KEYS[6]) or '0') + 1 > rpm then
  return {'rate', 'requests'}
end
if tpm >= 0 and tonumber(redis.call('GET', KEYS[7]) or '0') + tokens > tpm then
  return {'rate', 'tokens'}
end
local tokens_s = string.format('%.0f', tokens)
local rate = ''
if rpm >= 0 or tpm >= 0 then
  redis.call('INCR', KEYS[6])
  redis.call('EXPIRE', KEYS[6], ARGV[11])
  redis.call('INCRBY', KEYS[7], tokens_s)
  redis.call('EXPIRE', KEYS[7], ARGV[11])
  rate = KEYS[7]
end
for i = 1, #counters do
  redis.call('INCRBY', counters[i], amt_s)
  if ttls[i] > 0 then redis.call('EXPIRE', counters[i], ttls[i]) end
end
redis.call('DECRBY', KEYS[2], amt_s)
redis.call('HSET', KEYS[3], 'amt', amt_s, 'tok', tokens_s, 'epoch', epoch,
  'keys', table.concat(counters, ' '), 'rate', rate, 'proc', ARGV[13], 'at', ARGV[14])
redis.call('ZADD', KEYS[4], ARGV[9], ARGV[10])
redis.call('SADD', KEYS[5], ARGV[10])
local reply = {'ok', epoch, string.format('%.0f', out), amt_s}
for i = 1, #matched do reply[#reply + 1] = matched[i] end
return reply
