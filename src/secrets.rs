//! Secrets: provider passwords from the configuration (`password`, `password_file`,
//! `password_env`) or stored encrypted by `mailgate password set`. Stored secrets are
//! sealed with ChaCha20-Poly1305 under a key specific to this installation
//! (`<store dir>/mailgate.key`, 32 random bytes, mode 0600, created on first use) in
//! `<store dir>/secrets.json`; the provider name is bound in as associated data. A secret
//! that cannot be opened here is reported as undecryptable, never used blank.
//!
//! The same store seals a delegated OAuth2 provider's sign-in (entry `oauth2:NAME`, see
//! `provider::oauth2::signin`). Every change holds the lock of `secrets.lock`, so the
//! daemon and the CLI never overwrite each other.
//!
//! No function here logs or formats a secret; `Secret`'s `Debug` prints `***`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::config::SecretSource;

/// A secret value that does not print itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value, for the one place that needs it (AUTH).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a secret is not available.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The stored secret cannot be opened with this installation's key.
    #[error(
        "the stored password of provider {0:?} cannot be decrypted with this installation's key"
    )]
    Undecryptable(String),
    /// `password_file` or the secrets file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// A `KEY_env` names an unset variable: (variable, key).
    #[error("environment variable {0} ({1}_env) is not set")]
    EnvMissing(String, &'static str),
}

/// The encrypted secrets beside a store.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: PathBuf,
}

const KEY_FILE: &str = "mailgate.key";
const SECRETS_FILE: &str = "secrets.json";
const LOCK_FILE: &str = "secrets.lock";

/// The held lock of the secrets file (see [`SecretStore::lock`]).
#[derive(Debug)]
pub struct SecretsLock {
    _file: std::fs::File,
}

fn io(path: &Path, e: std::io::Error) -> SecretError {
    SecretError::Io(format!("{}: {e}", path.display()))
}

/// A file root writes into the store directory (`sudo mailgate password set`, `sudo
/// mailgate oauth2 login` on a packaged install) gets the directory's owner, so the daemon
/// running as that user can read it. For anyone else the file is theirs already.
fn owned_like_dir(file: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return;
    };
    if let (Ok(d), Ok(f)) = (std::fs::metadata(dir), std::fs::metadata(file))
        && (d.uid() != f.uid() || d.gid() != f.gid())
    {
        // Only root may give a file away; anyone else keeps it.
        let _ = std::os::unix::fs::chown(file, Some(d.uid()), Some(d.gid()));
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
    }
    owned_like_dir(&tmp);
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    // The rename itself must survive a crash: a rotated refresh token is the only valid one.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
    }
    Ok(())
}

impl SecretStore {
    /// The secrets kept beside the store file `store_path`.
    pub fn beside(store_path: &Path) -> SecretStore {
        SecretStore {
            dir: crate::config::store_dir(store_path),
        }
    }

    fn key(&self, create: bool) -> Result<Option<Key>, SecretError> {
        let path = self.dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => Ok(Some(*Key::from_slice(&bytes))),
            Ok(_) => Err(SecretError::Io(format!(
                "{}: not a mailgate key (expected 32 bytes)",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| SecretError::Io(e.to_string()))?;
                write_private(&path, &key)?;
                Ok(Some(*Key::from_slice(&key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn load(&self) -> Result<BTreeMap<String, String>, SecretError> {
        let path = self.dir.join(SECRETS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| SecretError::Io(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn save(&self, map: &BTreeMap<String, String>) -> Result<(), SecretError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let json = serde_json::to_vec_pretty(map).unwrap_or_default();
        write_private(&self.dir.join(SECRETS_FILE), &json)
    }

    /// Takes the secrets file's lock (an exclusive `flock` on `secrets.lock`), which every
    /// change holds, in the daemon and in the CLI; blocks until it is free. Released when
    /// the guard is dropped.
    pub fn lock(&self) -> Result<SecretsLock, SecretError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let path = self.dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        owned_like_dir(&path);
        file.lock().map_err(|e| io(&path, e))?;
        Ok(SecretsLock { _file: file })
    }

    /// Encrypts and stores the secret of a provider (creating the key on first use).
    pub fn set(&self, provider: &str, secret: &Secret) -> Result<(), SecretError> {
        let held = self.lock()?;
        self.set_locked(&held, provider, secret)
    }

    /// [`SecretStore::set`] for a caller that already holds the lock.
    pub fn set_locked(
        &self,
        _held: &SecretsLock,
        provider: &str,
        secret: &Secret,
    ) -> Result<(), SecretError> {
        let key = self
            .key(true)?
            .ok_or_else(|| SecretError::Io("no key".into()))?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| SecretError::Io(e.to_string()))?;
        let sealed = ChaCha20Poly1305::new(&key)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: provider.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Io("encryption failed".into()))?;
        let mut blob = nonce.to_vec();
        blob.extend(sealed);
        let mut map = self.load()?;
        map.insert(provider.to_string(), B64.encode(blob));
        self.save(&map)
    }

    /// Drops the stored secret of a provider; false when there was none.
    pub fn clear(&self, provider: &str) -> Result<bool, SecretError> {
        let held = self.lock()?;
        self.clear_locked(&held, provider)
    }

    /// [`SecretStore::clear`] for a caller that already holds the lock.
    pub fn clear_locked(&self, _held: &SecretsLock, provider: &str) -> Result<bool, SecretError> {
        let mut map = self.load()?;
        let had = map.remove(provider).is_some();
        if had {
            self.save(&map)?;
        }
        Ok(had)
    }

    /// The stored secret of a provider, if any.
    pub fn get(&self, provider: &str) -> Result<Option<Secret>, SecretError> {
        let map = self.load()?;
        let Some(blob) = map.get(provider) else {
            return Ok(None);
        };
        let undecryptable = || SecretError::Undecryptable(provider.to_string());
        let key = self.key(false)?.ok_or_else(undecryptable)?;
        let blob = B64.decode(blob).map_err(|_| undecryptable())?;
        let (nonce, sealed) = blob.split_at_checked(12).ok_or_else(undecryptable)?;
        let plain = ChaCha20Poly1305::new(&key)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: provider.as_bytes(),
                },
            )
            .map_err(|_| undecryptable())?;
        String::from_utf8(plain)
            .map(|s| Some(Secret(s)))
            .map_err(|_| undecryptable())
    }
}

/// Strips one trailing line end (`\r\n` or `\n`), as a file or a pipe adds.
pub fn strip_one_newline(s: &str) -> &str {
    s.strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .unwrap_or(s)
}

/// The secret a [`SecretSource`] names: the value, the file's text (one trailing line end
/// stripped, as a file or a pipe adds), or the variable; `None` when none is set.
pub fn resolve(src: &SecretSource<'_>) -> Result<Option<Secret>, SecretError> {
    if let Some(v) = src.value {
        return Ok(Some(Secret(v.to_string())));
    }
    if let Some(path) = src.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SecretError::Io(format!("{}_file {}: {e}", src.key, path.display())))?;
        return Ok(Some(Secret(strip_one_newline(&text).to_string())));
    }
    if let Some(var) = src.env {
        return std::env::var(var)
            .map(|v| Some(Secret(v)))
            .map_err(|_| SecretError::EnvMissing(var.to_string(), src.key));
    }
    Ok(None)
}

/// The secrets file's entry of a provider's TLS client key (`mailgate password set
/// --provider NAME --tls-client-key`).
pub fn tls_key_entry(provider: &str) -> String {
    format!("tls-client-key:{provider}")
}

/// The providers whose `tls_client_cert` has no key from anywhere: no `tls_client_key`,
/// `_file` or `_env`, and none stored. Each as the sentence `check-config` prints.
pub fn client_certs_without_key(config: &crate::config::Config) -> Vec<String> {
    let store = SecretStore::beside(&config.store.path);
    config
        .provider
        .iter()
        .filter_map(|p| {
            let name = p.name.get_ref();
            let s = p.smtp()?;
            let stored = || matches!(store.get(&tls_key_entry(name)), Ok(Some(_)) | Err(_));
            (s.tls_client_cert.is_some() && s.client_key_source().given() == 0 && !stored())
                .then(|| {
                    format!(
                        "provider {name:?}: tls_client_cert needs its key: tls_client_key_file (or tls_client_key, tls_client_key_env, or `mailgate password set --provider {name} --tls-client-key`)"
                    )
                })
        })
        .collect()
}

/// The password of a provider: `password`, `password_file`, `password_env` (see
/// [`resolve`]), else the stored secret; `None` when there is none.
pub fn provider_password(
    name: &str,
    source: &SecretSource<'_>,
    store: &SecretStore,
) -> Result<Option<Secret>, SecretError> {
    match resolve(source)? {
        Some(s) => Ok(Some(s)),
        None => store.get(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_another_installation_cannot_decrypt() {
        let a = tempfile::tempdir().unwrap();
        let store = SecretStore::beside(&a.path().join("mailgate.redb"));
        assert!(store.get("office365").unwrap().is_none());
        store.set("office365", &Secret::new("hunter2")).unwrap();
        assert_eq!(store.get("office365").unwrap().unwrap().expose(), "hunter2");
        let mode = std::fs::metadata(a.path().join(KEY_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let raw = std::fs::read_to_string(a.path().join(SECRETS_FILE)).unwrap();
        assert!(!raw.contains("hunter2"));

        // The secrets file moved to another installation (another key).
        let b = tempfile::tempdir().unwrap();
        std::fs::copy(a.path().join(SECRETS_FILE), b.path().join(SECRETS_FILE)).unwrap();
        let other = SecretStore::beside(&b.path().join("mailgate.redb"));
        other.set("unrelated", &Secret::new("x")).unwrap();
        assert!(matches!(
            other.get("office365"),
            Err(SecretError::Undecryptable(_))
        ));
        // A secret cannot be moved to another provider name either.
        let mut map = store.load().unwrap();
        let v = map["office365"].clone();
        map.insert("other".into(), v);
        store.save(&map).unwrap();
        assert!(matches!(
            store.get("other"),
            Err(SecretError::Undecryptable(_))
        ));
        assert!(store.clear("office365").unwrap());
        assert!(store.get("office365").unwrap().is_none());
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    }
}
