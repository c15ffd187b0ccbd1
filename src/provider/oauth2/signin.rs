//! A delegated provider's sign-in: the refresh token `mailgate oauth2 login` obtained and
//! what is known of it, sealed in the secrets file like a password (`oauth2:NAME`). The
//! daemon rewrites it at every renewal, under the secrets lock, before the new refresh
//! token is used; the one before stays until the new one has worked once.

use serde::{Deserialize, Serialize};

use crate::secrets::{Secret, SecretError, SecretStore, SecretsLock};

/// The secrets-file entry of a provider's sign-in.
fn entry(provider: &str) -> String {
    format!("oauth2:{provider}")
}

/// A stored sign-in.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignIn {
    /// The refresh token in force.
    pub refresh_token: String,
    /// The refresh token before the last rotation, kept until `refresh_token` has worked.
    #[serde(default)]
    pub previous: Option<String>,
    /// Who signed in (`preferred_username` or `email` of the id_token, else the
    /// provider's username).
    #[serde(default)]
    pub account: Option<String>,
    /// When `oauth2 login` succeeded (ms since the epoch).
    pub signed_in_ms: u64,
    /// When the refresh token was last used successfully (the platform's inactivity
    /// clock starts here).
    pub last_used_ms: u64,
    /// When the platform last issued a new refresh token.
    pub renewed_ms: u64,
    /// The platform's last refusal of it (cleared by a success or a new login).
    #[serde(default)]
    pub refused: Option<String>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("account", &self.account)
            .field("signed_in_ms", &self.signed_in_ms)
            .field("last_used_ms", &self.last_used_ms)
            .field("renewed_ms", &self.renewed_ms)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

/// The stored sign-in of a provider, if any.
pub fn load(secrets: &SecretStore, provider: &str) -> Result<Option<SignIn>, SecretError> {
    let Some(sealed) = secrets.get(&entry(provider))? else {
        return Ok(None);
    };
    serde_json::from_str(sealed.expose())
        .map(Some)
        .map_err(|_| SecretError::Undecryptable(provider.to_string()))
}

/// Stores a provider's sign-in (the caller holds the secrets lock).
pub fn save(
    secrets: &SecretStore,
    held: &SecretsLock,
    provider: &str,
    sign_in: &SignIn,
) -> Result<(), SecretError> {
    let json = serde_json::to_string(sign_in).map_err(|e| SecretError::Io(e.to_string()))?;
    secrets.set_locked(held, &entry(provider), &Secret::new(json))
}

/// Forgets a provider's sign-in; false when there was none.
pub fn forget(secrets: &SecretStore, provider: &str) -> Result<bool, SecretError> {
    let held = secrets.lock()?;
    secrets.clear_locked(&held, &entry(provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_round_trip_and_debug_hides_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::beside(&dir.path().join("mailgate.redb"));
        assert!(load(&store, "outlook").unwrap().is_none());
        let s = SignIn {
            refresh_token: "RT-secret-1".into(),
            previous: Some("RT-secret-0".into()),
            account: Some("me@outlook.com".into()),
            signed_in_ms: 1,
            last_used_ms: 2,
            renewed_ms: 3,
            refused: None,
        };
        let held = store.lock().unwrap();
        save(&store, &held, "outlook", &s).unwrap();
        drop(held);
        assert_eq!(load(&store, "outlook").unwrap(), Some(s.clone()));
        let raw = std::fs::read_to_string(dir.path().join("secrets.json")).unwrap();
        assert!(!raw.contains("RT-secret"), "sealed, not plain");
        assert!(!format!("{s:?}").contains("RT-secret"));
        // A password of the same provider is a different entry.
        assert!(store.get("outlook").unwrap().is_none());
        assert!(forget(&store, "outlook").unwrap());
        assert!(load(&store, "outlook").unwrap().is_none());
    }
}
