//! Fleet mode (SPEC "Fleet: many nodes, one mailbox"): the only module that knows Redis.
//! Every provider's per-minute window, rolling 24-hour recipient window and connection
//! leases live in Redis (or Valkey) under `key_prefix`, keyed by provider name, so all
//! nodes that name a provider the same share one mailbox's limits. Each decision is one
//! Lua script (check and reserve together, on the Redis server's clock, so skewed node
//! clocks agree). Accepting mail never waits for Redis; when it cannot be reached, each
//! node keeps to its share (limit / `expected_nodes`), says so once, and goes back to the
//! shared windows by itself, adding the sends it made meanwhile.

mod leases;
mod nodes;
mod scripts;
pub mod sign;

use scripts::{GIVE_BACK, LEASE, RENEW, RESERVE, STAMP};

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
