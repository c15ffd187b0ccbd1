//! Local SMTP AUTH: argon2id password hashes of `[[user]]` logins, and a per-address
//! limit on failures (governor's keyed limiter), so a brute force from one address is
//! cut off instead of getting unlimited guesses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::UserConfig;

/// Failures allowed per address before it must wait (refilled at one per 12 s).
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

/// Failed AUTH attempts per client address.
#[derive(Debug)]
pub struct FailureLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        let n = NonZeroU32::new(FAILURES_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        FailureLimiter {
            limiter: RateLimiter::keyed(Quota::per_minute(n)),
            blocked: Mutex::new(HashMap::new()),
        }
    }
}

impl FailureLimiter {
    /// Whether `ip` may try to authenticate now.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        let Ok(mut blocked) = self.blocked.lock() else {
            return true;
        };
        let now = Instant::now();
        blocked.retain(|_, until| *until > now);
        !blocked.contains_key(&ip)
    }

    /// Records a failure; past the quota the address is blocked until it refills.
    pub fn failed(&self, ip: IpAddr) {
        if let Err(not_until) = self.limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let wait = wait.max(Duration::from_secs(1));
            if let Ok(mut blocked) = self.blocked.lock() {
                blocked.insert(ip, Instant::now() + wait);
            }
            tracing::warn!(client = %ip, wait_s = wait.as_secs(), "too many AUTH failures from this address; blocked");
        }
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
            assert!(l.allowed(ip));
            l.failed(ip);
        }
        assert!(l.allowed(ip));
        l.failed(ip);
        assert!(!l.allowed(ip), "past the quota the address waits");
        assert!(l.allowed(other));
    }
}
