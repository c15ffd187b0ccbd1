//! The fleet's nodes: each node's signed heartbeat, the heartbeats read back and
//! checked, and the view of every node.

use super::*;

impl Fleet {
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
    pub(super) async fn beats(&self) -> Option<Vec<serde_json::Value>> {
        self.checked_beats().await.map(|(b, _)| b)
    }

    /// [`Fleet::beats`], and the names whose heartbeat was refused, with why.
    pub(super) async fn checked_beats(
        &self,
    ) -> Option<(Vec<serde_json::Value>, Vec<(String, String)>)> {
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
    pub(crate) fn checked_beat(
        &self,
        name: &str,
        stored: &str,
    ) -> Result<serde_json::Value, String> {
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
    pub(super) fn refuse_beat(&self, name: &str, why: &str) {
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
}
