//! Local SMTP AUTH: argon2id password hashes of `[[user]]` logins, a per-address limit
//! on failures that counts attempts still running, and a bound on verifications at once,
//! so a brute force from one address is cut off instead of getting unlimited guesses and
//! a flood cannot spend the machine's CPU and memory on argon2.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::config::UserConfig;

/// Failures (and attempts running) allowed per address in a rolling minute.
const FAILURES_PER_MINUTE: u32 = 5;

/// A PHC string for `password` (argon2id, random salt): what `password_hash` holds.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A hash that matches nothing, verified for unknown logins so that they cost the same
/// time as known ones.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$bWFpbGdhdGUtZHVtbXk$K9mL8dQdYbJX5tU5XGq0x2i8uWzQm6h5gKQWwMfC1kI";

/// Checks a login and password against the users (CPU-heavy: call off the runtime).
pub fn verify(users: &[UserConfig], login: &str, password: &str) -> bool {
    let user = users.iter().find(|u| u.login.as_deref() == Some(login));
    let hash = user
        .and_then(|u| u.password_hash.as_deref())
        .unwrap_or(DUMMY_HASH);
    let ok = PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false);
    ok && user.is_some()
}

/// Who may try a password now: failed and running attempts per client address (an IPv6
/// client counted by its /64, which one host usually has whole), and the verifications
/// running at once for everyone. An attempt counts against its address from the moment
/// it starts, so a hundred attempts opened at once from one address get no more
/// verifications than the quota; a success is given back.
#[derive(Debug)]
pub struct FailureLimiter {
    by_client: Mutex<HashMap<IpAddr, Tries>>,
    verifying: std::sync::Arc<tokio::sync::Semaphore>,
}

/// One client address's failures in the last minute and its attempts running.
#[derive(Debug, Default)]
struct Tries {
    failed: std::collections::VecDeque<Instant>,
    running: u32,
}

/// Client addresses followed at most (an attacker with many addresses fills it; past
/// it, a new address is refused until old entries expire).
const MAX_CLIENTS: usize = 100_000;

/// The address an attempt is counted under: IPv4 as it is (an IPv4-mapped IPv6 address
/// as its IPv4), IPv6 by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter::new(4)
    }
}

/// An attempt under way: ended with [`Attempt::done`]; dropped unfinished, it counts as a
/// failure.
#[derive(Debug)]
pub struct Attempt<'a> {
    limiter: &'a FailureLimiter,
    key: IpAddr,
    ok: Option<bool>,
}

impl Attempt<'_> {
    /// Waits for a verification slot (at most `auth_concurrency` run at once).
    pub async fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.limiter.verifying.clone().acquire_owned().await.ok()
    }

    /// The attempt's outcome.
    pub fn done(mut self, ok: bool) {
        self.ok = Some(ok);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let ok = self.ok.unwrap_or(false);
        if let Ok(mut map) = self.limiter.by_client.lock() {
            let t = map.entry(self.key).or_default();
            t.running = t.running.saturating_sub(1);
            if !ok {
                t.failed.push_back(Instant::now());
                if t.failed.len() as u32 >= FAILURES_PER_MINUTE {
                    tracing::warn!(client = %self.key, "too many AUTH failures from this address; blocked for a minute after the last");
                }
            }
        }
    }
}

impl FailureLimiter {
    /// At most `concurrency` verifications at once (at least 1).
    pub fn new(concurrency: usize) -> FailureLimiter {
        FailureLimiter {
            by_client: Mutex::new(HashMap::new()),
            verifying: std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
        }
    }

    /// Starts an attempt from `ip`, or None when its address has used its quota (its
    /// failures in the last minute and its attempts running together).
    pub fn begin(&self, ip: IpAddr) -> Option<Attempt<'_>> {
        let key = client_key(ip);
        let mut map = self.by_client.lock().ok()?;
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        if map.len() >= MAX_CLIENTS {
            map.retain(|_, t| {
                t.failed.retain(|at| now.duration_since(*at) < minute);
                t.running > 0 || !t.failed.is_empty()
            });
            if map.len() >= MAX_CLIENTS && !map.contains_key(&key) {
                return None;
            }
        }
        let t = map.entry(key).or_default();
        while t
            .failed
            .front()
            .is_some_and(|at| now.duration_since(*at) >= minute)
        {
            t.failed.pop_front();
        }
        if t.failed.len() as u32 + t.running >= FAILURES_PER_MINUTE {
            return None;
        }
        t.running += 1;
        Some(Attempt {
            limiter: self,
            key,
            ok: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let users: Vec<UserConfig> = toml::from_str::<crate::config::Config>(&format!(
            "[[user]]\nname = \"erp\"\nlogin = \"erp\"\npassword_hash = \"{h}\"\n"
        ))
        .unwrap()
        .user;
        assert!(verify(&users, "erp", "correct horse"));
        assert!(!verify(&users, "erp", "wrong"));
        assert!(!verify(&users, "nobody", "correct horse"));
    }

    #[test]
    fn failures_block_an_address() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..FAILURES_PER_MINUTE {
            l.begin(ip).unwrap().done(false);
        }
        assert!(l.begin(ip).is_none(), "past the quota the address waits");
        assert!(l.begin(other).is_some());
    }

    #[test]
    fn attempts_running_count_and_a_success_is_given_back() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let running: Vec<_> = (0..FAILURES_PER_MINUTE)
            .map(|_| l.begin(ip).unwrap())
            .collect();
        assert!(l.begin(ip).is_none(), "attempts in flight count");
        for a in running {
            a.done(true);
        }
        for _ in 0..20 {
            l.begin(ip).unwrap().done(true);
        }
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let l = FailureLimiter::default();
        for i in 0..FAILURES_PER_MINUTE {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            l.begin(ip).unwrap().done(false);
        }
        assert!(l.begin("2001:db8:1:2:ffff::9".parse().unwrap()).is_none());
        assert!(l.begin("2001:db8:1:3::1".parse().unwrap()).is_some());
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }
}
