//! Policy at the door: the settings a session consults (sizes, networks, recipient rules,
//! free disk). Built from the configuration; no I/O except through the [`SpaceCheck`] it
//! is given. Address syntax is in [`crate::address`].

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

pub use crate::address::{AddressProblem, canonical_address, check_address};
use crate::config::{BareNewlines, Config};
pub use crate::store::space::{DiskSpace, FixedSpace, SpaceCheck};

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
