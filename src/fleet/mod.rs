//! Fleet mode (SPEC "Fleet: many nodes, one mailbox"): the only module that knows Redis.
//! Every provider's per-minute window, rolling 24-hour recipient window and connection
//! leases live in Redis (or Valkey) under `key_prefix`, keyed by provider name, so all
//! nodes that name a provider the same share one mailbox's limits. Each decision is one
//! Lua script (check and reserve together, on the Redis server's clock, so skewed node
//! clocks agree). Accepting mail never waits for Redis; when it cannot be reached, each
//! node keeps to its share (limit / `expected_nodes`), says so once, and goes back to the
//! shared windows by itself, adding the sends it made meanwhile.

pub mod sign;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::config::FleetConfig;

/// One Redis call may take this long before the store counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// A connection lease expires this long after its last renewal (a dead node's lease
/// frees itself).
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// While the fleet store is down, how often a call tries it again (the others keep to
/// the node's share at once).
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How often a node writes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);

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
const RESERVE: &str = r#"
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
const GIVE_BACK: &str = r#"
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
const LEASE: &str = r#"
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
const RENEW: &str = r#"
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
const STAMP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 3 do
  local m = KEYS[tonumber(ARGV[i]) + 1]
  redis.call('ZADD', m, now - tonumber(ARGV[i + 2]), ARGV[i + 1])
end
for _, m in ipairs(KEYS) do redis.call('PEXPIRE', m, 120000) end
return 1
"#;

/// The fleet store's answer for one dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go: the send is reserved in the shared windows; `bypassed` when the per-minute
    /// window was full and the message goes regardless (after ten deferrals).
    Go {
        /// The full per-minute window was passed over.
        bypassed: bool,
    },
    /// The shared per-minute window is full: wait this many ms.
    Wait(u64),
    /// The shared daily recipient window is full: wait this many ms.
    DailyQuota(u64),
}

/// One send to check and reserve (see [`Fleet::reserve`]).
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The provider whose windows count it.
    pub provider: &'a str,
    /// Its per-minute limit (0 none).
    pub per_minute: u32,
    /// Its daily recipient limit (0 none).
    pub per_day: u32,
    /// The message.
    pub id: &'a str,
    /// Its recipients in this send.
    pub rcpts: u32,
    /// Pass a full per-minute window (after ten throttle deferrals).
    pub bypass_minute: bool,
}

/// The fleet store's answer for a batch of sends.
#[derive(Debug, Default)]
pub struct Reserved {
    /// One per ask, in order.
    pub decisions: Vec<Decision>,
    /// Providers another node waits for a connection lease of.
    pub wanted: Vec<String>,
}

/// The leases of one provider a node renews and frees in one [`Fleet::renew`] call.
#[derive(Debug)]
pub struct LeaseBook<'a> {
    /// The provider.
    pub provider: &'a str,
    /// Its fleet-wide `max_connections`.
    pub max: usize,
    /// Tokens kept.
    pub renew: &'a [String],
    /// Tokens given back.
    pub free: &'a [String],
}

/// One send as the reserve script takes it.
struct Item {
    provider: String,
    per_minute: u32,
    per_day: u32,
    member: String,
    rcpts: u32,
    bypass: bool,
    at_ms: u64,
}

/// A send reserved locally while the store was away, to add to the shared windows.
#[derive(Debug, Clone)]
struct Owed {
    provider: String,
    member: String,
    rcpts: u32,
    at_ms: u64,
}

/// The nodes this node may call, and those it refused.
#[derive(Debug, Default)]
pub struct Peers {
    /// (node, status URL) of each node whose heartbeat verifies.
    pub nodes: Vec<(String, String)>,
    /// (name, why) of each heartbeat refused.
    pub refused: Vec<(String, String)>,
}

/// The fleet store client of one node.
pub struct Fleet {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    node: String,
    prefix: String,
    expected: u32,
    /// How the other nodes reach this node's status listener.
    status_url: Option<String>,
    /// 0 not asked yet, 1 up, 2 down.
    up: AtomicU8,
    /// While down: no call is tried before this instant (the store is probed at most
    /// every [`PROBE_EVERY`], so a store that hangs costs the mail nothing).
    next_probe: Mutex<Option<std::time::Instant>>,
    reserve: redis::Script,
    give_back: redis::Script,
    lease: redis::Script,
    renew: redis::Script,
    stamp: redis::Script,
    owed: Mutex<Vec<Owed>>,
    /// Sends accepted upstream whose place in the minute window is still to be moved to
    /// that time: (provider, member, when).
    accepted: Mutex<Vec<(String, String, std::time::Instant)>>,
    /// Where each answered call's round trip is recorded (`/metrics`).
    round_trips: Option<prometheus_client::metrics::histogram::Histogram>,
    /// The fleet secret: heartbeats are signed and checked with it, and calls between
    /// nodes. Without it, heartbeats are shown but no node is ever called.
    secret: Option<Arc<sign::FleetSecret>>,
    /// What was refused, counted (`mailgate_fleet_rejected_total{what}`).
    rejected: Option<
        prometheus_client::metrics::family::Family<
            crate::metrics::WhatLabel,
            prometheus_client::metrics::counter::Counter,
        >,
    >,
    /// The node names whose heartbeat was refused, each logged once.
    refused_beats: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.node)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// The host name, for the default node name (read once).
fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
    .clone()
}

/// This node's name: `fleet.node`, else the host name (in a fleet and out of one: the
/// name alerts and the fleet view give this machine).
pub fn node_name(config: &crate::config::Config) -> String {
    config
        .fleet
        .as_ref()
        .and_then(|f| f.node.clone())
        .unwrap_or_else(hostname)
}

/// Why the fleet store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The configuration cannot work (URL, password file).
    #[error("fleet: {0}")]
    Config(String),
}

impl Fleet {
    /// Records each answered call's round trip in `h`.
    pub fn timing_calls_in(mut self, h: prometheus_client::metrics::histogram::Histogram) -> Fleet {
        self.round_trips = Some(h);
        self
    }

    /// Counts what this node refuses from the fleet in `family`.
    pub fn counting_rejections_in(
        mut self,
        family: prometheus_client::metrics::family::Family<
            crate::metrics::WhatLabel,
            prometheus_client::metrics::counter::Counter,
        >,
    ) -> Fleet {
        self.rejected = Some(family);
        self
    }

    /// Counts one refusal of `what` (`heartbeat`, `peer-call` or `value`).
    pub fn count_rejected(&self, what: &str) {
        self.count_rejections(what, 1);
    }

    fn count_rejections(&self, what: &str, n: u64) {
        if let Some(f) = &self.rejected {
            f.get_or_create(&crate::metrics::WhatLabel {
                what: what.to_string(),
            })
            .inc_by(n);
        }
    }

    /// Values of the fleet store that a script found out of bounds and repaired: counted
    /// (`value`) and logged, at most once a minute.
    fn repaired(&self, n: u64, what: &str) {
        if n == 0 {
            return;
        }
        self.count_rejections("value", n);
        static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if crate::time::once_per(&LAST, Duration::from_secs(60)) {
            tracing::warn!(
                values = n,
                what,
                "the fleet store held values no node writes (entries dated in the future, a sum that is not its entries'); they were removed or made again: someone else writes to this Redis"
            );
        }
    }

    /// The fleet secret, when `secret_file` is set.
    pub fn secret(&self) -> Option<&Arc<sign::FleetSecret>> {
        self.secret.as_ref()
    }

    /// The client of `[fleet]`; it connects on first use (and again by itself).
    pub fn new(c: &FleetConfig) -> Result<Fleet, FleetError> {
        let mut info: redis::ConnectionInfo = c
            .redis_url
            .as_str()
            .parse()
            .map_err(|e| FleetError::Config(format!("redis_url {:?}: {e}", c.redis_url)))?;
        if let Some(f) = &c.password_file {
            let pw = std::fs::read_to_string(f)
                .map_err(|e| FleetError::Config(format!("password_file {}: {e}", f.display())))?;
            info.redis.password = Some(pw.trim().to_string());
        }
        let client = match &c.ca_file {
            Some(f) => {
                let pem = std::fs::read(f)
                    .map_err(|e| FleetError::Config(format!("ca_file {}: {e}", f.display())))?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => redis::Client::open(info),
        }
        .map_err(|e| FleetError::Config(e.to_string()))?;
        let secret = match &c.secret_file {
            Some(p) => Some(Arc::new(
                sign::FleetSecret::load(p).map_err(FleetError::Config)?,
            )),
            None => None,
        };
        Ok(Fleet {
            client,
            conn: tokio::sync::Mutex::new(None),
            node: c.node.clone().unwrap_or_else(hostname),
            prefix: c.key_prefix.clone(),
            expected: c.expected_nodes.max(1),
            status_url: c.status_url.clone(),
            up: AtomicU8::new(0),
            next_probe: Mutex::new(None),
            reserve: redis::Script::new(RESERVE),
            give_back: redis::Script::new(GIVE_BACK),
            lease: redis::Script::new(LEASE),
            renew: redis::Script::new(RENEW),
            stamp: redis::Script::new(STAMP),
            accepted: Mutex::new(Vec::new()),
            owed: Mutex::new(Vec::new()),
            round_trips: None,
            secret,
            rejected: None,
            refused_beats: Mutex::new(HashSet::new()),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the fleet store answered the last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) == 1
    }

    /// Nodes that share the limits while the store is away.
    pub fn expected_nodes(&self) -> u32 {
        self.expected
    }

    fn key(&self, kind: &str, provider: &str) -> String {
        format!("{}{kind}:{provider}", self.prefix)
    }

    fn mark(&self, up: bool, why: Option<&str>) {
        if let Ok(mut next) = self.next_probe.lock() {
            *next = (!up).then(|| std::time::Instant::now() + PROBE_EVERY);
        }
        let was = self.up.swap(if up { 1 } else { 2 }, Ordering::Relaxed);
        match (was, up) {
            (0 | 1, false) => tracing::warn!(
                node = %self.node,
                error = why.unwrap_or(""),
                "fleet store unreachable: keeping to this node's share of every limit (limit / expected_nodes) until it is back"
            ),
            (0 | 2, true) => {
                tracing::info!(node = %self.node, "fleet store reachable: shared limits in force")
            }
            _ => {}
        }
    }

    /// The connection, made when there is none (a manager reconnects by itself after).
    async fn connection(&self) -> Option<ConnectionManager> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            return Some(c.clone());
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1);
        match tokio::time::timeout(
            CALL_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await
        {
            Ok(Ok(c)) => {
                *g = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                self.mark(false, Some(&e.to_string()));
                None
            }
            Err(_) => {
                // The manager retries what fails (a refused TLS certificate too) until the
                // time is up; the first time, one plain attempt names the cause.
                let mut why = "connecting timed out".to_string();
                if self.up.load(Ordering::Relaxed) != 2
                    && let Ok(Err(e)) = tokio::time::timeout(
                        CALL_TIMEOUT,
                        self.client.get_multiplexed_async_connection(),
                    )
                    .await
                {
                    why = format!("cannot connect: {e}");
                }
                self.mark(false, Some(&why));
                None
            }
        }
    }

    /// Runs one call with the timeout; None (and marked down) when the store fails.
    async fn call<T: redis::FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(ConnectionManager) -> redis::RedisResult<T>,
    ) -> Option<T> {
        // A store known to be down is not waited for again until the next probe.
        let wait = self
            .next_probe
            .lock()
            .ok()
            .and_then(|n| *n)
            .is_some_and(|at| std::time::Instant::now() < at);
        if wait {
            return None;
        }
        let conn = self.connection().await?;
        let started = std::time::Instant::now();
        match tokio::time::timeout(CALL_TIMEOUT, f(conn)).await {
            Ok(Ok(v)) => {
                if let Some(h) = &self.round_trips {
                    h.observe(started.elapsed().as_secs_f64());
                }
                if !self.is_up() {
                    self.mark(true, None);
                    Box::pin(self.repay()).await;
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.mark(false, Some(&e.to_string()));
                None
            }
            Err(_) => {
                self.mark(false, Some("no answer within 500 ms"));
                None
            }
        }
    }

    /// Checks and reserves a batch of sends in one call, in order (each sees the ones
    /// before it): one decision per ask, and the providers another node waits for a
    /// connection lease of. None: the store is away (the caller keeps to its local
    /// share, see [`Fleet::share`]).
    pub async fn reserve(&self, asks: &[Ask<'_>]) -> Option<Reserved> {
        if asks.is_empty() {
            return Some(Reserved::default());
        }
        let items: Vec<Item> = asks
            .iter()
            .map(|a| Item {
                provider: a.provider.to_string(),
                per_minute: a.per_minute,
                per_day: a.per_day,
                member: format!("{}:{}", self.node, a.id),
                rcpts: a.rcpts,
                bypass: a.bypass_minute,
                at_ms: 0,
            })
            .collect();
        let (providers, invocation) = self.reserve_invocation(&items);
        let out: Vec<u64> = self
            .call(async |mut c| invocation.invoke_async(&mut c).await)
            .await?;
        self.repaired(out.last().copied().unwrap_or(0), "the shared windows");
        let decisions = out
            .chunks(2)
            .take(items.len())
            .map(|d| match d {
                [0, b] => Decision::Go { bypassed: *b == 1 },
                [1, ms] => Decision::Wait(*ms),
                [_, ms] => Decision::DailyQuota(*ms),
                _ => Decision::Wait(1000),
            })
            .collect();
        let wanted = providers
            .into_iter()
            .zip(out.iter().skip(items.len() * 2))
            .filter(|(_, w)| **w == 1)
            .map(|(p, _)| p)
            .collect();
        Some(Reserved { decisions, wanted })
    }

    /// The script invocation of a batch, and its providers in the order of their keys.
    fn reserve_invocation(&self, items: &[Item]) -> (Vec<String>, redis::ScriptInvocation<'_>) {
        let mut providers: Vec<String> = Vec::new();
        for i in items {
            if !providers.contains(&i.provider) {
                providers.push(i.provider.clone());
            }
        }
        let mut inv = self.reserve.prepare_invoke();
        for p in &providers {
            inv.key(self.key("minute", p))
                .key(self.key("day", p))
                .key(self.key("daysum", p))
                .key(self.key("want", p));
        }
        inv.arg(&self.node);
        for i in items {
            let at = providers.iter().position(|p| *p == i.provider).unwrap_or(0);
            inv.arg(at)
                .arg(i.per_minute)
                .arg(i.per_day)
                .arg(&i.member)
                .arg(i.rcpts)
                .arg(u8::from(i.bypass))
                .arg(i.at_ms);
        }
        (providers, inv)
    }

    /// Notes a send made on the local share while the store was away; it is added to the
    /// shared windows when the store answers again, so the next minute is no burst.
    pub fn owe(&self, provider: &str, id: &str, rcpts: u32, at_ms: u64) {
        if let Ok(mut g) = self.owed.lock() {
            g.push(Owed {
                provider: provider.to_string(),
                member: format!("{}:{id}", self.node),
                rcpts,
                at_ms,
            });
        }
    }

    /// Forgets an owed send that did not happen after all.
    pub fn forgive(&self, id: &str) {
        let member = format!("{}:{id}", self.node);
        if let Ok(mut g) = self.owed.lock() {
            g.retain(|o| o.member != member);
        }
    }

    /// Adds the owed sends (the store came back, maybe empty after a restart), in one
    /// call.
    async fn repay(&self) {
        let owed: Vec<Owed> = self
            .owed
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        if owed.is_empty() {
            return;
        }
        let Some(mut c) = self.connection().await else {
            return;
        };
        let n = owed.len();
        let items: Vec<Item> = owed
            .into_iter()
            .map(|o| Item {
                provider: o.provider,
                per_minute: 0,
                per_day: 0,
                member: o.member,
                rcpts: o.rcpts,
                bypass: true,
                at_ms: o.at_ms,
            })
            .collect();
        let (_, invocation) = self.reserve_invocation(&items);
        let _: redis::RedisResult<Vec<u64>> = invocation.invoke_async(&mut c).await;
        tracing::info!(
            sends = n,
            "fleet: sends made while the store was away added to the shared windows"
        );
    }

    /// Notes that a reserved send was accepted upstream now; [`Fleet::stamp_accepted`]
    /// moves its place in the shared minute window to this time.
    pub fn accepted(&self, provider: &str, id: &str) {
        if let Ok(mut g) = self.accepted.lock() {
            g.push((
                provider.to_string(),
                format!("{}:{id}", self.node),
                std::time::Instant::now(),
            ));
        }
    }

    /// Moves the sends accepted since the last call to their times in the shared minute
    /// windows, in one call (the lease keeper calls it every half second, well within the
    /// minute that matters). Kept for the next call when the store does not answer.
    pub async fn stamp_accepted(&self) {
        let batch: Vec<(String, String, std::time::Instant)> = self
            .accepted
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        if batch.is_empty() {
            return;
        }
        let mut providers: Vec<&str> = Vec::new();
        for (p, _, _) in &batch {
            if !providers.contains(&p.as_str()) {
                providers.push(p);
            }
        }
        let mut inv = self.stamp.prepare_invoke();
        for p in &providers {
            inv.key(self.key("minute", p));
        }
        for (p, member, at) in &batch {
            let at_index = providers.iter().position(|x| x == p).unwrap_or(0);
            let age = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
            inv.arg(at_index).arg(member).arg(age);
        }
        let done: Option<u8> = self
            .call(async |mut c| inv.invoke_async(&mut c).await)
            .await;
        if done.is_none()
            && let Ok(mut g) = self.accepted.lock()
        {
            // At most a minute's worth is worth keeping: older ones left the window.
            g.extend(
                batch
                    .into_iter()
                    .filter(|(_, _, at)| at.elapsed() < std::time::Duration::from_secs(60)),
            );
        }
    }

    /// Gives back a reservation whose send did not happen.
    pub async fn give_back(&self, provider: &str, id: &str, rcpts: u32) {
        let (minute, day, sum) = (
            self.key("minute", provider),
            self.key("day", provider),
            self.key("daysum", provider),
        );
        let member = format!("{}:{id}", self.node);
        let script = &self.give_back;
        let _: Option<u8> = self
            .call(async |mut c| {
                script
                    .key(&minute)
                    .key(&day)
                    .key(&sum)
                    .arg(&member)
                    .arg(rcpts)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
    }

    /// Takes one of `max` connection leases of `provider`; Some(true) taken, Some(false)
    /// all held (this node then says it waits), None the store is away.
    pub async fn lease(&self, provider: &str, max: usize, token: &str) -> Option<bool> {
        let (key, want) = (self.key("leases", provider), self.key("want", provider));
        let script = &self.lease;
        let (got, repaired): (u8, u64) = self
            .call(async |mut c| {
                script
                    .key(&key)
                    .key(&want)
                    .arg(max)
                    .arg(token)
                    .arg(crate::time::duration_ms(LEASE_TTL))
                    .arg(&self.node)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        self.repaired(repaired, "the connection leases");
        Some(got == 1)
    }

    /// Renews the leases this node holds and frees those it gives back, every provider
    /// in one call: the tokens lost (they had lapsed and another node took the place),
    /// and the providers another node waits for a lease of. None: the store is away.
    pub async fn renew(&self, held: &[LeaseBook<'_>]) -> Option<(Vec<String>, Vec<String>)> {
        if held.is_empty() {
            return Some((Vec::new(), Vec::new()));
        }
        let mut inv = self.renew.prepare_invoke();
        for b in held {
            inv.key(self.key("leases", b.provider))
                .key(self.key("want", b.provider));
        }
        inv.arg(crate::time::duration_ms(LEASE_TTL)).arg(&self.node);
        for b in held {
            inv.arg(b.max)
                .arg(b.renew.len())
                .arg(b.renew)
                .arg(b.free.len())
                .arg(b.free);
        }
        let (lost, wanted, repaired): (Vec<String>, Vec<usize>, u64) = self
            .call(async |mut c| inv.invoke_async(&mut c).await)
            .await?;
        self.repaired(repaired, "the connection leases");
        let wanted = wanted
            .into_iter()
            .filter_map(|i| held.get(i).map(|b| b.provider.to_string()))
            .collect();
        Some((lost, wanted))
    }

    /// Frees a lease.
    pub async fn unlease(&self, provider: &str, token: &str) {
        let key = self.key("leases", provider);
        let _: Option<()> = self
            .call(async |mut c| {
                redis::cmd("ZREM")
                    .arg(&key)
                    .arg(token)
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    /// A lease token of this node.
    pub fn token(&self, id: &str) -> String {
        format!("{}:{id}", self.node)
    }

    /// Writes this node's heartbeat (expires by itself): its queue and the events of its
    /// open alert conditions.
    pub async fn heartbeat(&self, queue: serde_json::Value, alerts: &[String]) {
        let key = format!("{}node:{}", self.prefix, self.node);
        let value = serde_json::json!({
            "node": self.node,
            "version": env!("CARGO_PKG_VERSION"),
            "queue": queue,
            "at_ms": crate::time::now_ms(),
            "status_url": self.status_url,
            "alerts": alerts,
        })
        .to_string();
        let value = match &self.secret {
            Some(s) => s.seal_beat(&value),
            None => value,
        };
        let ttl = crate::time::duration_ms(HEARTBEAT_EVERY * 5);
        let names = format!("{}nodes", self.prefix);
        let _: Option<()> = self
            .call(async |mut c| {
                redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("PX")
                    .arg(ttl)
                    .ignore()
                    .sadd(&names, &self.node)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    /// The heartbeats of the nodes alive (a name whose heartbeat key has expired is a
    /// node gone, and leaves the set of names).
    async fn beats(&self) -> Option<Vec<serde_json::Value>> {
        self.checked_beats().await.map(|(b, _)| b)
    }

    /// [`Fleet::beats`], and the names whose heartbeat was refused, with why.
    async fn checked_beats(&self) -> Option<(Vec<serde_json::Value>, Vec<(String, String)>)> {
        // The set of names (never KEYS, which scans the whole keyspace).
        let names_key = format!("{}nodes", self.prefix);
        let names: Vec<String> = self
            .call(async |mut c| {
                redis::cmd("SMEMBERS")
                    .arg(&names_key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let keys: Vec<String> = names
            .iter()
            .map(|n| format!("{}node:{n}", self.prefix))
            .collect();
        let raw: Vec<Option<String>> = if keys.is_empty() {
            Vec::new()
        } else {
            self.call(async |mut c| redis::cmd("MGET").arg(&keys).query_async(&mut c).await)
                .await?
        };
        let mut beats = Vec::new();
        let mut refused = Vec::new();
        let mut gone = Vec::new();
        for (name, beat) in names.iter().zip(raw) {
            let Some(beat) = beat else {
                gone.push(name.clone());
                continue;
            };
            match self.checked_beat(name, &beat) {
                Ok(v) => beats.push(v),
                Err(why) => {
                    self.refuse_beat(name, &why);
                    refused.push((name.clone(), why));
                }
            }
        }
        if !gone.is_empty() {
            let _: Option<()> = self
                .call(async |mut c| {
                    redis::cmd("SREM")
                        .arg(&names_key)
                        .arg(&gone)
                        .query_async(&mut c)
                        .await
                })
                .await;
        }
        Some((beats, refused))
    }

    /// A heartbeat read under `name`: its JSON when it verifies with the fleet secret
    /// (without a secret, any JSON: shown, never called) and names the node it is stored
    /// under. Err: why it is refused.
    fn checked_beat(&self, name: &str, stored: &str) -> Result<serde_json::Value, String> {
        let json = match &self.secret {
            Some(s) => s.open_beat(stored).map_err(|e| e.to_string())?,
            // Unsigned, or signed by a node that has a secret this one lacks.
            None => stored
                .strip_prefix("v1.")
                .and_then(|r| r.split_once('.'))
                .map_or(stored, |(_, j)| j),
        };
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|_| "not a heartbeat (JSON)".to_string())?;
        if v["node"].as_str() != Some(name) {
            return Err("it names another node than the key it is stored under".into());
        }
        Ok(v)
    }

    /// A heartbeat refused: counted each time, logged once per node name.
    fn refuse_beat(&self, name: &str, why: &str) {
        self.count_rejected("heartbeat");
        let first = self
            .refused_beats
            .lock()
            .is_ok_and(|mut s| s.len() < 1000 && s.insert(name.to_string()));
        if first {
            tracing::warn!(
                node = %name.chars().take(100).collect::<String>().escape_debug(),
                why,
                "ignored a fleet heartbeat that does not verify: a node with another fleet.secret_file, or someone who can write to the fleet store"
            );
        }
    }

    /// The other nodes alive that publish a `status_url` this node may call, from
    /// heartbeats that verify with the fleet secret, each URL `https://` (or `http://` to
    /// loopback); and the names refused. None while the store is away; no node without
    /// a secret.
    pub async fn peers(&self) -> Option<Peers> {
        let (beats, mut refused) = self.checked_beats().await?;
        if self.secret.is_none() {
            return Some(Peers::default());
        }
        let mut nodes = Vec::new();
        for v in beats {
            let (Some(node), Some(url)) = (v["node"].as_str(), v["status_url"].as_str()) else {
                continue;
            };
            let url = url.trim_end_matches('/');
            if node == self.node {
                continue;
            }
            match crate::config::peer_url(url) {
                Ok(()) => nodes.push((node.to_string(), url.to_string())),
                Err(why) => {
                    self.count_rejected("value");
                    tracing::warn!(node = %node.escape_debug(), why, "a fleet node publishes a status_url this node does not call");
                    refused.push((node.to_string(), format!("its status_url {why}")));
                }
            }
        }
        Some(Peers { nodes, refused })
    }

    /// The nodes' heartbeats, and per provider the fleet-wide use: (sends in the last
    /// minute, recipients in the last day, leases held).
    pub async fn overview(
        &self,
        providers: &[String],
    ) -> Option<(Vec<serde_json::Value>, Vec<(String, u64, u64, u64)>)> {
        let nodes = self
            .beats()
            .await?
            .into_iter()
            .map(|v| {
                let age = crate::time::now_ms().saturating_sub(v["at_ms"].as_u64().unwrap_or(0))
                    / 1000;
                serde_json::json!({
                    "node": v["node"], "version": v["version"], "queue": v["queue"], "last_seen_seconds": age,
                    "alerts": v.get("alerts").cloned().unwrap_or_else(|| serde_json::json!([])),
                })
            })
            .collect();
        let mut use_ = Vec::new();
        for p in providers {
            let (minute, sum, leases) = (
                self.key("minute", p),
                self.key("daysum", p),
                self.key("leases", p),
            );
            let (m, d, l): (u64, Option<String>, u64) = self
                .call(async |mut c| {
                    let t: (u64, u64) = redis::cmd("TIME").query_async(&mut c).await?;
                    let now = t.0 * 1000 + t.1 / 1000;
                    redis::pipe()
                        .zcount(&minute, now.saturating_sub(60_000), "+inf")
                        .get(&sum)
                        .zcount(&leases, now, "+inf")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            // Shown only: a sum someone else wrote is not trusted to be a count.
            let d = d.and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            use_.push((p.clone(), m, d, l));
        }
        Some((nodes, use_))
    }

    /// A connection limit as this node's share while the store is away (at least 1).
    pub fn share_of(&self, max: usize) -> usize {
        (max / self.expected as usize).max(1)
    }

    /// The connection leases a node keeps while another waits: `max / expected_nodes`
    /// rounded up, so the shares cover every lease and no lease bounces between nodes.
    pub fn fair_share(&self, max: usize) -> usize {
        max.div_ceil(self.expected as usize).max(1)
    }

    /// A limit as this node's share while the store is away (at least 1; 0 stays none).
    pub fn share(&self, limit: u32) -> u32 {
        if limit == 0 {
            0
        } else {
            (limit / self.expected).max(1)
        }
    }
}
