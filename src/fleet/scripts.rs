//! The Lua scripts the fleet store runs: each decision in one script, on the Redis
//! server's clock, checking what it reads before it trusts it.

/// Check-and-reserve of the two windows for a batch of sends, in order (each sees the
/// ones before it), on the server's clock. What it reads is checked first (SPEC "Trust
/// boundaries": a writer of the fleet store may hold mail back a minute, never a day):
/// entries dated after now are removed, a day sum that is not a count is made again
/// from the window's entries, and so is one that would refuse a send. KEYS: per provider of the batch, four: minute
/// zset, day zset, day recipient sum (kept with the zset, so a check is O(log n)), and the
/// key where a node waiting for a connection lease says so. ARGV[1]: this node; then seven
/// per send: provider index (0-based), per_minute, per_day, member, rcpts, bypass_minute
/// (0/1), at_ms (0 = now, checked; else a send made while the store was away, added
/// unchecked at that time, never later than now). Returns two numbers per send ({0,
/// bypassed} go, {1, ms} the minute is full, {2, ms} the day is), then per provider 1
/// when another node waits for one of its connection leases, then how many values
/// were repaired.
pub(super) const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local np = #KEYS / 4
local repaired = 0
-- The recipients an entry of the day window counts (a malformed one counts none).
local function rcpts_of(x)
  return tonumber(string.match(x, ':(%d+)$') or '0') or 0
end
-- The day sum made again from the window's entries.
local function rebuild(d, s)
  local sum = 0
  for _, x in ipairs(redis.call('ZRANGE', d, 0, -1)) do sum = sum + rcpts_of(x) end
  redis.call('SET', s, sum)
  return sum
end
for p = 0, np - 1 do
  local m, d, s = KEYS[p * 4 + 1], KEYS[p * 4 + 2], KEYS[p * 4 + 3]
  redis.call('ZREMRANGEBYSCORE', m, '-inf', now - 60000)
  -- Every real entry is at or before now (its time is taken here, or clamped to now):
  -- one in the future was written by someone else, and would hold mail back longer
  -- than its window.
  repaired = repaired + redis.call('ZREMRANGEBYSCORE', m, '(' .. now, '+inf')
  local future = redis.call('ZREMRANGEBYSCORE', d, '(' .. now, '+inf')
  local sum = tonumber(redis.call('GET', s) or '0')
  if future > 0 or sum == nil or sum < 0 or sum ~= math.floor(sum) then
    repaired = repaired + math.max(future, 1)
    redis.call('ZREMRANGEBYSCORE', d, '-inf', now - 86400000)
    rebuild(d, s)
  else
    local expired = redis.call('ZRANGEBYSCORE', d, '-inf', now - 86400000)
    if #expired > 0 then
      local gone = 0
      for _, x in ipairs(expired) do gone = gone + rcpts_of(x) end
      redis.call('DECRBY', s, gone)
      redis.call('ZREMRANGEBYSCORE', d, '-inf', now - 86400000)
    end
  end
end
local out = {}
for i = 2, #ARGV, 7 do
  local p = tonumber(ARGV[i])
  local m, d, s = KEYS[p * 4 + 1], KEYS[p * 4 + 2], KEYS[p * 4 + 3]
  local pm, pd, rc = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 4])
  local at = math.min(tonumber(ARGV[i + 6]), now)
  local verdict, value = 0, 0
  if at == 0 then
    at = now
    if pd > 0 then
      local used = tonumber(redis.call('GET', s) or '0') or 0
      if used > 0 and used + rc > pd then
        -- Before holding mail for up to a day, the sum must be what the entries add up
        -- to (a sum written by someone else is made again from them).
        local real = rebuild(d, s)
        if real ~= used then repaired = repaired + 1 end
        used = real
      end
      if used > 0 and used + rc > pd then
        local first = redis.call('ZRANGE', d, 0, 0, 'WITHSCORES')
        verdict, value = 2, math.max(1, tonumber(first[2] or now) + 86400000 - now)
      end
    end
    if verdict == 0 and pm > 0 and redis.call('ZCARD', m) >= pm then
      if ARGV[i + 5] == '0' then
        local first = redis.call('ZRANGE', m, 0, 0, 'WITHSCORES')
        verdict, value = 1, math.max(1, tonumber(first[2]) + 60000 - now)
      else
        value = 1
      end
    end
  end
  if verdict == 0 then
    redis.call('ZADD', m, at, ARGV[i + 3])
    if redis.call('ZADD', d, at, ARGV[i + 3] .. ':' .. ARGV[i + 4]) == 1 then
      redis.call('INCRBY', s, rc)
    end
  end
  out[#out + 1] = verdict
  out[#out + 1] = value
end
for p = 0, np - 1 do
  redis.call('PEXPIRE', KEYS[p * 4 + 1], 120000)
  redis.call('PEXPIRE', KEYS[p * 4 + 2], 90000000)
  redis.call('PEXPIRE', KEYS[p * 4 + 3], 90000000)
  local w = redis.call('GET', KEYS[p * 4 + 4])
  out[#out + 1] = (w and w ~= ARGV[1]) and 1 or 0
end
out[#out + 1] = repaired
return out
"#;

/// Gives a reservation back. KEYS: minute zset, day zset, day sum. ARGV: member, rcpts.
pub(super) const GIVE_BACK: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZREM', KEYS[2], ARGV[1] .. ':' .. ARGV[2]) == 1 then
  redis.call('DECRBY', KEYS[3], tonumber(ARGV[2]))
end
return 1
"#;

/// Takes a connection lease when fewer than ARGV[1] are held; a node refused says it
/// waits (for two seconds), so a node holding leases between deliveries gives some back.
/// KEYS: the leases zset (member token, score expiry), the waiting key. ARGV: max, token,
/// ttl_ms, node. Returns {taken (1/0), leases removed for ending beyond their TTL}.
pub(super) const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- A lease ending later than its TTL from now was not written by a node.
local repaired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. (now + tonumber(ARGV[3])), '+inf')
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return {1, repaired}
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', 2000)
return {0, repaired}
"#;

/// Renews and frees a node's leases, every provider in one call. KEYS: per provider two:
/// the leases zset, the waiting key. ARGV[1]: ttl_ms, ARGV[2]: this node; then per
/// provider: max, the count of tokens to renew, those tokens, the count to free, those.
/// A token that lapsed is renewed only while there is room (else it is lost: another
/// node may hold the place now). A lease ending later than its TTL from now is removed.
/// Returns {lost tokens, indexes of the providers another node waits for, leases
/// removed}.
pub(super) const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local lost, wanted = {}, {}
local repaired = 0
local i = 3
for p = 0, #KEYS / 2 - 1 do
  local k = KEYS[p * 2 + 1]
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  repaired = repaired + redis.call('ZREMRANGEBYSCORE', k, '(' .. (now + ttl), '+inf')
  local max, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local first = i + 2
  i = first + n
  local nf = tonumber(ARGV[i])
  for j = i + 1, i + nf do redis.call('ZREM', k, ARGV[j]) end
  i = i + nf + 1
  for j = first, first + n - 1 do
    if redis.call('ZSCORE', k, ARGV[j]) or redis.call('ZCARD', k) < max then
      redis.call('ZADD', k, now + ttl, ARGV[j])
    else
      lost[#lost + 1] = ARGV[j]
    end
  end
  redis.call('PEXPIRE', k, ttl * 2)
  local w = redis.call('GET', KEYS[p * 2 + 2])
  if w and w ~= ARGV[2] then wanted[#wanted + 1] = p end
end
return {lost, wanted, repaired}
"#;

/// Moves sends in the per-minute windows to when they were accepted upstream (they were
/// reserved when admitted; the mailbox counts them when it takes the message, after any
/// wait for a connection and the dialogue). KEYS: the providers' minute zsets. ARGV per
/// send: provider index, member, how long ago it was accepted (ms, by the node's own
/// clock, so a skewed node clock does not matter). A send no longer in the window (its
/// delivery took over a minute) is added again at its time.
pub(super) const STAMP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 3 do
  local m = KEYS[tonumber(ARGV[i]) + 1]
  redis.call('ZADD', m, now - tonumber(ARGV[i + 2]), ARGV[i + 1])
end
for _, m in ipairs(KEYS) do redis.call('PEXPIRE', m, 120000) end
return 1
"#;
