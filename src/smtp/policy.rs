//! Policy at the door: the settings a session consults (sizes, networks, recipient rules,
//! free disk) and the address syntax checks. Built from the configuration; no I/O except
//! through the [`SpaceCheck`] it is given.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{BareNewlines, Config};

/// Answers whether there is room on the disk for new mail.
pub trait SpaceCheck: Send + Sync + fmt::Debug {
    /// True when new mail may be accepted.
    fn has_room(&self) -> bool;
    /// Free and needed bytes, when they can be measured (for `/status` and `/healthz`).
    fn measure(&self) -> Option<(u64, u64)> {
        None
    }
    /// A new `store.min_free_space` (config reload).
    fn set_min_free(&self, _bytes: u64) {}
}

/// Free space on the filesystem holding the store, against `store.min_free_space` plus
/// the room redb needs for its next growth: below 4 GiB it grows its file by doubling, so
/// the next growth may take as much again as the file's size.
#[derive(Debug)]
pub struct DiskSpace {
    /// The store file (its directory is on the filesystem measured).
    pub store: PathBuf,
    /// `store.min_free_space`, live.
    pub min_free: std::sync::atomic::AtomicU64,
}

impl DiskSpace {
    /// Measures the filesystem of `store` against `min_free`.
    pub fn new(store: PathBuf, min_free: u64) -> DiskSpace {
        DiskSpace {
            store,
            min_free: std::sync::atomic::AtomicU64::new(min_free),
        }
    }

    fn dir(&self) -> PathBuf {
        self.store
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| ".".into(), |d| d.to_path_buf())
    }
}

/// Above this size redb grows its file by one 4 GiB region at a time instead of doubling.
const REDB_REGION: u64 = 4 << 30;

impl SpaceCheck for DiskSpace {
    fn has_room(&self) -> bool {
        // If free space cannot be measured, do not refuse mail on that account.
        self.measure().is_none_or(|(free, needed)| free >= needed)
    }

    fn measure(&self) -> Option<(u64, u64)> {
        let min = self.min_free.load(std::sync::atomic::Ordering::Relaxed);
        if min == 0 {
            return None;
        }
        let free = fs4::available_space(self.dir()).ok()?;
        let file = std::fs::metadata(&self.store).map_or(0, |m| m.len());
        let growth = if file < REDB_REGION {
            file
        } else {
            2 * REDB_REGION
        };
        Some((free, min.saturating_add(growth)))
    }

    fn set_min_free(&self, bytes: u64) {
        self.min_free
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A fixed answer (tests, and stores on filesystems that cannot be measured).
#[derive(Debug)]
pub struct FixedSpace(pub bool);

impl SpaceCheck for FixedSpace {
    fn has_room(&self) -> bool {
        self.0
    }
}

/// What a session needs to know of the configuration.
#[derive(Debug)]
pub struct Policy {
    /// Banner and EHLO name.
    pub hostname: String,
    /// SIZE limit.
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Refuse `user@contoso`.
    pub reject_single_label_domains: bool,
    /// Networks that may submit without AUTH.
    pub allowed_networks: Vec<IpNet>,
    /// Everyone must AUTH.
    pub require_auth: bool,
    /// Bare CR/LF handling.
    pub bare_newlines: BareNewlines,
    /// Free-disk check.
    pub space: Arc<dyn SpaceCheck>,
    /// STARTTLS is configured.
    pub tls_enabled: bool,
    /// Some user has a login (AUTH can succeed).
    pub auth_enabled: bool,
    /// Lines over 998 octets are refused instead of re-encoded.
    pub reject_long_lines: bool,
}

impl Policy {
    /// The policy of a configuration, with the given disk check.
    pub fn from_config(c: &Config, space: Arc<dyn SpaceCheck>) -> Policy {
        Policy {
            hostname: c.smtp.hostname.clone(),
            max_message_size: c.smtp.max_message_size.0,
            max_recipients: c.smtp.max_recipients,
            reject_single_label_domains: c.smtp.reject_single_label_domains,
            allowed_networks: c.smtp.allowed_networks.clone(),
            require_auth: c.smtp.require_auth,
            bare_newlines: c.smtp.bare_newlines,
            space,
            tls_enabled: c.smtp.tls_cert.is_some() && c.smtp.tls_key.is_some(),
            auth_enabled: c.user.iter().any(|u| u.login.is_some()),
            reject_long_lines: c.smtp.long_lines == crate::config::LongLines::Reject,
        }
    }

    /// Whether a client address is in `allowed_networks` (IPv4-mapped IPv6 counts as IPv4).
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allowed_networks.iter().any(|n| n.contains(&ip))
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressProblem {
    /// No `@`, empty local part or domain, spaces or control characters.
    Malformed,
    /// Non-ASCII without SMTPUTF8.
    NeedsSmtpUtf8,
    /// The domain has a single label (`user@contoso`).
    SingleLabelDomain,
}

impl fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressProblem::Malformed => "expected local-part@domain",
            AddressProblem::NeedsSmtpUtf8 => "non-ASCII address without SMTPUTF8",
            AddressProblem::SingleLabelDomain => "single label domain",
        })
    }
}

/// RFC 5322 `atext`, plus UTF-8 (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Whether a local part is a dot-atom (`first.last`), which needs no quoting.
fn is_dot_atom(local: &str) -> bool {
    !local.is_empty()
        && local
            .split('.')
            .all(|w| !w.is_empty() && w.chars().all(is_atext))
}

/// The address as it goes on the wire: smtp-proto hands over a quoted local part
/// unquoted (`"a b"@example.com` arrives as `a b@example.com`), so a local part that is
/// not a dot-atom is quoted again (RFC 5321 Quoted-string, `\` and `"` escaped).
pub fn canonical_address(parsed: &str) -> String {
    match parsed.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !is_dot_atom(local) => {
            let mut q = String::with_capacity(local.len() + 2);
            q.push('"');
            for c in local.chars() {
                if c == '"' || c == '\\' {
                    q.push('\\');
                }
                q.push(c);
            }
            q.push('"');
            format!("{q}@{domain}")
        }
        _ => parsed.to_string(),
    }
}

/// Checks `local@domain` (the local part a dot-atom or a quoted string). Single-label
/// domains are reported last, so the caller may let them pass.
pub fn check_address(addr: &str, smtputf8: bool) -> Result<(), AddressProblem> {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(AddressProblem::Malformed);
    };
    let quoted = local.len() >= 2 && local.starts_with('"') && local.ends_with('"');
    if local.is_empty()
        || domain.is_empty()
        || addr.chars().any(|c| c.is_control())
        || domain.chars().any(char::is_whitespace)
        || (!quoted && local.chars().any(char::is_whitespace))
        || domain.contains(['<', '>'])
        || (!quoted && local.contains(['<', '>']))
    {
        return Err(AddressProblem::Malformed);
    }
    if !smtputf8 && !addr.is_ascii() {
        return Err(AddressProblem::NeedsSmtpUtf8);
    }
    if domain.starts_with('[') {
        return if domain.ends_with(']') {
            Ok(())
        } else {
            Err(AddressProblem::Malformed)
        };
    }
    let labels_ok = domain.split('.').all(|l| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    });
    if !labels_ok {
        return Err(AddressProblem::Malformed);
    }
    if !domain.contains('.') {
        return Err(AddressProblem::SingleLabelDomain);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(check_address("a@contoso.com", false), Ok(()));
        assert_eq!(check_address("a@[192.0.2.1]", false), Ok(()));
        assert_eq!(
            check_address("a@contoso", false),
            Err(AddressProblem::SingleLabelDomain)
        );
        assert_eq!(
            check_address("contoso.com", false),
            Err(AddressProblem::Malformed)
        );
        assert_eq!(
            check_address("@contoso.com", false),
            Err(AddressProblem::Malformed)
        );
        assert_eq!(
            check_address("a@b..com", false),
            Err(AddressProblem::Malformed)
        );
        assert_eq!(
            check_address("jdöe@mächine.example", false),
            Err(AddressProblem::NeedsSmtpUtf8)
        );
        assert_eq!(check_address("jdöe@mächine.example", true), Ok(()));
    }
}
