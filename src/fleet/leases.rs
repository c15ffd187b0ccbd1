//! Fleet-wide connection leases: at most `max_connections` connections to a provider
//! across the fleet, each lease renewed while used and expiring by itself.

use super::*;

impl Fleet {
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
}
