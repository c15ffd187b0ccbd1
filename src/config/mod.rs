//! Configuration: TOML text -> typed [`Config`], with every problem reported as
//! `file:line:col: message`. The whole schema of SPEC.md is parsed here, even the parts
//! that later stages act on, so the format is settled in one place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_spanned::Spanned;

mod alerts;
mod cloud;
mod provider;
mod read;
mod routes;
mod validate;
mod values;

pub use read::{ConfigError, ConfigErrors, Source};
pub use values::{ByteSize, Dur, parse_size};

pub use validate::{MIN_FLEET_SECRET, loopback_host, peer_url, readable_by_others};

pub use alerts::{AlertConfig, AlertEvent, AlertFormat};
pub use cloud::{Cloud, CloudHosts};
pub use provider::{
    CommonSettings, EmlSettings, GraphSettings, Issuer, KindConfig, KindSettings, OAuth2Config,
    OAuthFlow, ProviderConfig, ProviderKind, SecretSource, SmtpSettings, TlsMode,
    parse_fingerprint,
};
pub use routes::{Chains, RouteConfig};

/// The configuration path used when neither `--config` nor `MAILGATE_CONFIG` is given.
pub const DEFAULT_PATH: &str = "config/mailgate.toml";

/// The files looked for, in order, when neither `--config` nor `MAILGATE_CONFIG` names one.
pub const SEARCH_PATH: [&str; 2] = [DEFAULT_PATH, "/etc/mailgate/mailgate.toml"];

/// The shipped `config/mailgate.toml`, compiled in: what `serve` runs on when no file is
/// found (listener 127.0.0.1:2525, store under `data/`, the `outbox` eml provider).
pub const BUILT_IN: &str = include_str!("../../config/mailgate.toml");

/// What to do with a bare CR or LF inside DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BareNewlines {
    /// Store a bare CR or LF as CRLF.
    #[default]
    Normalize,
    /// Refuse the message with `554 5.6.0`.
    Reject,
}

/// What to do with a line longer than 998 octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LongLines {
    /// Re-encode the body part as quoted-printable, fold long headers.
    #[default]
    Encode,
    /// Refuse the message with `554 5.6.0`.
    Reject,
}

/// `[smtp]`: the local submission listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Listener addresses.
    pub listen: Vec<Spanned<String>>,
    /// Banner and EHLO name.
    pub hostname: String,
    /// Largest message accepted (SIZE).
    pub max_message_size: ByteSize,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Refuse `user@contoso` at RCPT.
    pub reject_single_label_domains: bool,
    /// Networks that may submit without AUTH.
    pub allowed_networks: Vec<IpNet>,
    /// Every client must authenticate.
    pub require_auth: bool,
    /// Bare CR/LF handling.
    pub bare_newlines: BareNewlines,
    /// Handling of lines over 998 octets.
    pub long_lines: LongLines,
    /// Certificate chain (PEM) enabling STARTTLS.
    pub tls_cert: Option<Spanned<PathBuf>>,
    /// Private key (PEM) for `tls_cert`.
    pub tls_key: Option<Spanned<PathBuf>>,
    /// Concurrent sessions.
    pub max_connections: usize,
    /// A silent client is disconnected after this long.
    pub idle_timeout: Dur,
    /// On shutdown, how long open sessions may take to finish.
    pub shutdown_timeout: Dur,
    /// New connections per minute from one address outside `allowed_networks` (0 = no
    /// limit).
    pub connection_rate_limit: u32,
    /// Connections open at once from one address outside `allowed_networks` (0 = no
    /// limit), so strangers cannot take every slot from local clients.
    pub max_connections_per_address: usize,
    /// The slowest DATA accepted after its first minute, in bytes per second (0 = none).
    pub min_data_rate: ByteSize,
    /// Password verifications (argon2, CPU and memory heavy) running at once, for all
    /// clients together.
    pub auth_concurrency: usize,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec![Spanned::new(0..0, "127.0.0.1:2525".to_string())],
            hostname: "localhost".into(),
            max_message_size: ByteSize(35 << 20),
            max_recipients: 500,
            reject_single_label_domains: true,
            allowed_networks: vec![
                "127.0.0.0/8".parse().expect("literal network"),
                "::1/128".parse().expect("literal network"),
            ],
            require_auth: false,
            bare_newlines: BareNewlines::Normalize,
            long_lines: LongLines::Encode,
            tls_cert: None,
            tls_key: None,
            max_connections: 1000,
            idle_timeout: Dur(Duration::from_secs(300)),
            shutdown_timeout: Dur(Duration::from_secs(30)),
            connection_rate_limit: 120,
            max_connections_per_address: 10,
            min_data_rate: ByteSize(1024),
            auth_concurrency: 4,
        }
    }
}

impl SmtpConfig {
    /// The keys a running listener cannot change (it is bound, its limits built), each
    /// with a rendering to compare. Every field is named, the live ones as `_`, so a new
    /// key cannot be added without saying which it is.
    fn start_only(&self) -> Vec<(&'static str, String)> {
        let SmtpConfig {
            listen,
            hostname: _,
            max_message_size: _,
            max_recipients: _,
            reject_single_label_domains: _,
            allowed_networks: _,
            require_auth: _,
            bare_newlines: _,
            long_lines: _,
            tls_cert,
            tls_key,
            max_connections,
            idle_timeout,
            shutdown_timeout,
            connection_rate_limit,
            max_connections_per_address,
            min_data_rate,
            auth_concurrency,
        } = self;
        let path = |p: &Option<Spanned<PathBuf>>| format!("{:?}", p.as_ref().map(|p| p.get_ref()));
        vec![
            (
                "smtp.listen",
                format!(
                    "{:?}",
                    listen.iter().map(|l| l.get_ref()).collect::<Vec<_>>()
                ),
            ),
            ("smtp.tls_cert", path(tls_cert)),
            ("smtp.tls_key", path(tls_key)),
            ("smtp.max_connections", format!("{max_connections}")),
            ("smtp.idle_timeout", format!("{idle_timeout:?}")),
            ("smtp.shutdown_timeout", format!("{shutdown_timeout:?}")),
            (
                "smtp.connection_rate_limit",
                format!("{connection_rate_limit}"),
            ),
            (
                "smtp.max_connections_per_address",
                format!("{max_connections_per_address}"),
            ),
            ("smtp.min_data_rate", format!("{min_data_rate:?}")),
            ("smtp.auth_concurrency", format!("{auth_concurrency}")),
        ]
    }

    /// The parsed listener addresses (validated at load time).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .iter()
            .filter_map(|s| s.get_ref().parse().ok())
            .collect()
    }
}

/// `[store]`: the durable queue and history.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The redb file.
    pub path: PathBuf,
    /// Below this much free disk, new mail gets `452 4.3.1`.
    pub min_free_space: ByteSize,
}

/// The directory a store file is in (`.` for a bare file name): where the files that
/// live beside the store are (the maildrop, the secrets, the admin token).
pub fn store_dir(store: &Path) -> PathBuf {
    store
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("data/mailgate.redb"),
            min_free_space: ByteSize(200 << 20),
        }
    }
}

/// `[history]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Days finished records are kept (0 = 30).
    pub retention_days: u32,
}

impl HistoryConfig {
    /// The retention window with the 0-means-30 rule applied.
    pub fn retention(&self) -> Duration {
        let days = if self.retention_days == 0 {
            30
        } else {
            self.retention_days
        };
        Duration::from_secs(u64::from(days) * 86_400)
    }
}

/// `[status]`: the HTTP status endpoint and admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Listener address.
    pub listen: Spanned<String>,
    /// A file holding the bearer token for `/api/`.
    pub token_file: Option<PathBuf>,
    /// The bearer token itself (prefer `token_file`).
    pub token: Option<String>,
    /// Certificate chain (PEM): the status listener speaks HTTPS (re-read when the file
    /// changes, so a renewed certificate needs no restart).
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A TLS proxy stands in front of a listener that is not on loopback.
    pub behind_proxy: bool,
    /// The names browsers and other nodes reach this listener by, besides `localhost`
    /// and IP addresses (any other `Host` gets `421`, so DNS rebinding finds nothing).
    pub hostnames: Vec<String>,
    /// A sign-in to the pages lasts this long.
    pub session_ttl: Dur,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: Spanned::new(0..0, "127.0.0.1:8525".to_string()),
            token_file: None,
            token: None,
            tls_cert: None,
            tls_key: None,
            behind_proxy: false,
            hostnames: Vec::new(),
            session_ttl: Dur(Duration::from_secs(12 * 3600)),
        }
    }
}

impl StatusConfig {
    /// The parsed listener address (validated at load time).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.get_ref().parse().ok()
    }
}

/// `[distributor]`: scheduling and retries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributorConfig {
    /// The batch processing switch.
    pub enabled: bool,
    /// Provider for mail of no user (or a user without `provider`).
    pub default_provider: Spanned<String>,
    /// The default chain instead of `default_provider`: later ones are fallbacks.
    pub default_providers: Option<Vec<Spanned<String>>>,
    /// First retry delay.
    pub retry_initial: Dur,
    /// Largest retry delay.
    pub retry_max: Dur,
    /// A message still undelivered this long after it arrived is failed.
    pub give_up_after: Dur,
    /// The `queue-stuck` alert fires when the oldest waiting message is older.
    pub stuck_after: Dur,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        DistributorConfig {
            enabled: true,
            default_provider: Spanned::new(0..0, "outbox".to_string()),
            default_providers: None,
            retry_initial: Dur(Duration::from_secs(60)),
            retry_max: Dur(Duration::from_secs(1800)),
            give_up_after: Dur(Duration::from_secs(2 * 86_400)),
            stuck_after: Dur(Duration::from_secs(3600)),
        }
    }
}

/// Who receives a delivery status notification when a message fails (`[notify] bounce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BounceMode {
    /// The rewritten sender.
    #[default]
    Sender,
    /// Nobody.
    Off,
}

/// `[notify]` (SPEC "Telling people"): notices to the sender.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// `sender` or `off`.
    pub bounce: BounceMode,
    /// One delay notice when a message has waited this long (`"0"`: never).
    pub delay_warning: Dur,
    /// From of the notices (default: the provider's `username`, else the rewritten
    /// sender).
    pub from: Option<Spanned<String>>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            bounce: BounceMode::Sender,
            delay_warning: Dur(Duration::from_secs(4 * 3600)),
            from: None,
        }
    }
}

/// `[rewrite]`: the sender rules.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RewriteConfig {
    /// From for mail that matches no user.
    pub default_sender: Option<String>,
    /// Put the original From into Reply-To when there is none.
    pub reply_to_original: bool,
}

/// How the sender appears when a user's mail is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SendMode {
    /// From and envelope become the target.
    #[default]
    SendAs,
    /// Sender header and envelope name the provider account.
    OnBehalfOf,
}

/// `[[user]]`: a local sender identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Name shown in history.
    pub name: Spanned<String>,
    /// Local SMTP AUTH user name.
    pub login: Option<String>,
    /// argon2id PHC string.
    pub password_hash: Option<String>,
    /// Default send-from address.
    pub email: Option<String>,
    /// Override of the send-from address.
    pub sender_email: Option<String>,
    /// Provider for this user's mail.
    pub provider: Option<Spanned<String>>,
    /// This user's chain instead of `provider`: later ones are fallbacks.
    pub providers: Option<Vec<Spanned<String>>>,
    /// Envelope/header senders that identify this user.
    #[serde(default)]
    pub match_senders: Vec<String>,
    /// send-as or on-behalf-of.
    #[serde(default)]
    pub send_mode: SendMode,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[smtp]`
    pub smtp: SmtpConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[history]`
    pub history: HistoryConfig,
    /// `[status]`
    pub status: StatusConfig,
    /// `[distributor]`
    pub distributor: DistributorConfig,
    /// `[rewrite]`
    pub rewrite: RewriteConfig,
    /// `[[provider]]` (read one by one: see `read.rs`).
    #[serde(skip)]
    pub provider: Vec<ProviderConfig>,
    /// `[[user]]`
    pub user: Vec<UserConfig>,
    /// `[[route]]`: recipients that take their own provider chain.
    pub route: Vec<RouteConfig>,
    /// `[notify]`: bounces and delay notices to the sender.
    pub notify: NotifyConfig,
    /// `[[alert]]`: who is told when mailgate needs a person.
    pub alert: Vec<AlertConfig>,
    /// `[fleet]`: many nodes share each provider's limits through Redis.
    pub fleet: Option<FleetConfig>,
    /// `[sendmail]`: local names at the sendmail door.
    pub sendmail: SendmailConfig,
}

/// `[sendmail]` (SPEC "Local names"): where mail for a bare name (`root`) goes. Read by
/// each `sendmail` run, so a change needs no reload.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SendmailConfig {
    /// An aliases(5) file such as `/etc/aliases`.
    pub aliases: Option<PathBuf>,
    /// Where mail for a local name without an alias goes.
    pub admin_address: Option<Spanned<String>>,
}

/// `[fleet]` (SPEC "Fleet: many nodes, one mailbox").
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://host:port/db` or `rediss://` (TLS), Redis or Valkey.
    pub redis_url: String,
    /// A file holding the Redis password (AUTH).
    pub password_file: Option<PathBuf>,
    /// `rediss://`: the CA (PEM) that signed the Redis server's certificate, when it is
    /// not a public one.
    pub ca_file: Option<PathBuf>,
    /// This node's name (default: the host name).
    pub node: Option<String>,
    /// Prefix of every key mailgate writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Nodes sharing the limits, used only while the fleet store is unreachable (each
    /// node then keeps to limit / expected_nodes).
    #[serde(default = "default_expected_nodes")]
    pub expected_nodes: u32,
    /// How the other nodes reach this node's status listener (`http://app01:8525`), for
    /// one view of the fleet's history; published in this node's heartbeat.
    pub status_url: Option<String>,
    /// The fleet secret (at least 32 bytes, the same on every node): heartbeats and
    /// calls between nodes are signed with it. Required with `status_url`.
    pub secret_file: Option<PathBuf>,
    /// The CA (PEM) that signed the other nodes' status certificates, when it is not a
    /// public one (`status_url = "https://..."`).
    pub status_ca_file: Option<PathBuf>,
}

fn default_key_prefix() -> String {
    "mailgate:".into()
}

fn default_expected_nodes() -> u32 {
    1
}

impl Config {
    /// The settings a reload cannot apply (SIGHUP reports them as needing a restart),
    /// each with a rendering to compare. Every section and start-only key is named
    /// where it is destructured, so a new one cannot be forgotten: the live ones are `_`.
    pub fn start_only(&self) -> Vec<(&'static str, String)> {
        let Config {
            smtp,
            store:
                StoreConfig {
                    path,
                    min_free_space: _,
                },
            history: HistoryConfig { retention_days: _ },
            status:
                StatusConfig {
                    listen,
                    token_file,
                    token,
                    tls_cert,
                    tls_key,
                    behind_proxy,
                    hostnames: _,
                    session_ttl,
                },
            distributor: _,
            rewrite: _,
            provider: _,
            user: _,
            route: _,
            notify: _,
            alert: _,
            fleet,
            sendmail: _,
        } = self;
        let mut out = smtp.start_only();
        out.extend([
            ("store.path", format!("{path:?}")),
            (
                "history.retention_days",
                format!("{:?}", self.history.retention()),
            ),
            ("status.listen", listen.get_ref().clone()),
            ("status.token_file", format!("{token_file:?}")),
            // Only the key's name is ever reported, never this rendering.
            ("status.token", format!("{token:?}")),
            // The certificate files are re-read when they change; their paths are not.
            ("status.tls_cert", format!("{tls_cert:?}")),
            ("status.tls_key", format!("{tls_key:?}")),
            ("status.behind_proxy", format!("{behind_proxy}")),
            ("status.session_ttl", format!("{session_ttl:?}")),
            ("fleet", format!("{fleet:?}")),
        ]);
        out
    }

    /// Where the admin token is: `status.token_file`, else `admin.token` beside the
    /// store (made by the daemon on first start).
    pub fn token_path(&self) -> PathBuf {
        match &self.status.token_file {
            Some(p) => p.clone(),
            None => store_dir(&self.store.path).join("admin.token"),
        }
    }

    /// The provider of this name.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.provider.iter().find(|p| p.name.get_ref() == name)
    }

    /// The words for a provider name this configuration does not hold, naming those it
    /// does, so a typo is seen at once.
    pub fn no_such_provider(&self, name: &str) -> String {
        let names: Vec<&str> = self
            .provider
            .iter()
            .map(|p| p.name.get_ref().as_str())
            .collect();
        format!(
            "no provider named {name:?} in the configuration (its providers: {})",
            names.join(", ")
        )
    }
}

#[cfg(test)]
mod tests;

/// The configuration in force, shared by every stage and replaced whole by a reload.
#[derive(Debug)]
pub struct Live(std::sync::RwLock<std::sync::Arc<Config>>);

impl Live {
    /// Puts `config` in force.
    pub fn new(config: Config) -> Live {
        Live(std::sync::RwLock::new(std::sync::Arc::new(config)))
    }

    /// The configuration in force now.
    pub fn get(&self) -> std::sync::Arc<Config> {
        self.0
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Replaces it (reload).
    pub fn set(&self, config: std::sync::Arc<Config>) {
        match self.0.write() {
            Ok(mut g) => *g = config,
            Err(p) => *p.into_inner() = config,
        }
    }
}
