//! Configuration: TOML text -> typed [`Config`], with every problem reported as
//! `file:line:col: message`. The whole schema of SPEC.md is parsed here, even the parts
//! that later stages act on, so the format is settled in one place.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use serde_spanned::Spanned;

/// The configuration path used when neither `--config` nor `MAILGATE_CONFIG` is given.
pub const DEFAULT_PATH: &str = "config/mailgate.toml";

/// One problem found in a configuration file, located by line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong, in words for an administrator.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every problem of one configuration file (at least one).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A byte count: an integer, or a string such as `"35MB"` (KB/MB/GB are powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n >= 0 => Ok(ByteSize(n as u64)),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "a size cannot be negative: {n}"
            ))),
            Raw::Text(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"35MB"`, `"512 KiB"`, `"1024"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid size {text:?}: expected bytes or a number with B, KB, MB or GB");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// A duration written as `"30s"`, `"5m"`, `"2d"` (or combinations such as `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

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
        }
    }
}

impl SmtpConfig {
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
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: Spanned::new(0..0, "127.0.0.1:8525".to_string()),
            token_file: None,
            token: None,
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
    /// First retry delay.
    pub retry_initial: Dur,
    /// Largest retry delay.
    pub retry_max: Dur,
    /// A message still undelivered this long after it arrived is failed.
    pub give_up_after: Dur,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        DistributorConfig {
            enabled: true,
            default_provider: Spanned::new(0..0, "outbox".to_string()),
            retry_initial: Dur(Duration::from_secs(60)),
            retry_max: Dur(Duration::from_secs(1800)),
            give_up_after: Dur(Duration::from_secs(2 * 86_400)),
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

/// The kind of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// One .eml file per message.
    Eml,
    /// SMTP submission upstream.
    Smtp,
    /// Microsoft Graph sendMail.
    Graph,
}

/// Transport security towards an smtp upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain connect, then STARTTLS, required.
    #[default]
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
    /// No TLS at all.
    None,
}

/// `[provider.oauth2]`: client credentials grant.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth2Config {
    /// Entra tenant.
    pub tenant_id: Option<String>,
    /// App registration id.
    pub client_id: Option<String>,
    /// Client secret (prefer a file or env).
    pub client_secret: Option<String>,
    /// File holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// Client certificate (PEM) for a JWT assertion.
    pub certificate_file: Option<PathBuf>,
    /// Private key (PEM) for `certificate_file`.
    pub private_key_file: Option<PathBuf>,
    /// Token endpoint; default from `tenant_id`.
    pub token_url: Option<String>,
    /// Scope; default depends on the provider kind.
    pub scope: Option<String>,
}

/// `[[provider]]`: where mail goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name.
    pub name: Spanned<String>,
    /// eml, smtp or graph.
    pub kind: ProviderKind,
    /// eml: output directory.
    pub directory: Option<PathBuf>,
    /// smtp: upstream host (DNS name or IP literal).
    pub host: Option<String>,
    /// smtp: upstream port (default 587, 465 for `tls = "tls"`, 25 for none).
    pub port: Option<u16>,
    /// smtp: transport security.
    #[serde(default)]
    pub tls: TlsMode,
    /// smtp: extra trusted CA (PEM).
    pub ca_file: Option<PathBuf>,
    /// smtp: account name; when set, AUTH is mandatory.
    pub username: Option<String>,
    /// smtp: password inline.
    pub password: Option<String>,
    /// smtp: password from a file.
    pub password_file: Option<PathBuf>,
    /// smtp: password from an environment variable.
    pub password_env: Option<String>,
    /// Messages per rolling minute (0 = none).
    pub per_minute_limit: Option<u32>,
    /// Recipients per rolling 24 hours (0 = none).
    pub per_day_recipient_limit: Option<u32>,
    /// Concurrent upstream connections / deliveries.
    #[serde(default = "default_provider_connections")]
    pub max_connections: usize,
    /// Upstream I/O timeout.
    pub timeout: Option<Dur>,
    /// graph: base URL without version path.
    pub graph_url: Option<String>,
    /// OAuth2 settings.
    pub oauth2: Option<OAuth2Config>,
}

fn default_provider_connections() -> usize {
    4
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
    /// `[[provider]]`
    pub provider: Vec<ProviderConfig>,
    /// `[[user]]`
    pub user: Vec<UserConfig>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot read the configuration: {e}"),
            }])
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let locate = |span: Option<Range<usize>>, message: String| {
            let (line, col) = line_col(text, span.map_or(0, |s| s.start));
            ConfigError {
                file: file.to_path_buf(),
                line,
                col,
                message,
            }
        };
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![locate(e.span(), e.message().trim().to_string())]))?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(
                problems
                    .into_iter()
                    .map(|(span, msg)| locate(Some(span), msg))
                    .collect(),
            ))
        }
    }

    /// The provider of this name.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.provider.iter().find(|p| p.name.get_ref() == name)
    }

    /// Semantic checks the schema cannot express; each problem with its byte span.
    fn validate(&self) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
        if self.smtp.listen.is_empty() {
            out.push((0..0, "smtp.listen needs at least one address".into()));
        }
        for l in &self.smtp.listen {
            if l.get_ref().parse::<SocketAddr>().is_err() {
                out.push((
                    l.span(),
                    format!(
                        "invalid listen address {:?}: expected IP:PORT such as 127.0.0.1:2525 or [::1]:2525",
                        l.get_ref()
                    ),
                ));
            }
        }
        match (&self.smtp.tls_cert, &self.smtp.tls_key) {
            (Some(c), None) => out.push((c.span(), "tls_cert is set but tls_key is not".into())),
            (None, Some(k)) => out.push((k.span(), "tls_key is set but tls_cert is not".into())),
            _ => {}
        }
        if self.smtp.max_connections == 0 {
            out.push((0..0, "smtp.max_connections must be at least 1".into()));
        }
        match self.status.listen_addr() {
            None => out.push((
                self.status.listen.span(),
                format!(
                    "invalid status listen address {:?}",
                    self.status.listen.get_ref()
                ),
            )),
            Some(addr)
                if !addr.ip().is_loopback()
                    && self.status.token.is_none()
                    && self.status.token_file.is_none() =>
            {
                out.push((
                    self.status.listen.span(),
                    "status.listen is not a loopback address: set status.token_file so the admin API is not open to the network".into(),
                ));
            }
            Some(_) => {}
        }
        let d = &self.distributor;
        if d.retry_initial.0.is_zero() || d.retry_initial > d.retry_max {
            out.push((
                0..0,
                "distributor.retry_initial must be above zero and not above retry_max".into(),
            ));
        }
        let mut names = HashSet::new();
        for p in &self.provider {
            if !names.insert(p.name.get_ref().as_str()) {
                out.push((
                    p.name.span(),
                    format!("duplicate provider name {:?}", p.name.get_ref()),
                ));
            }
            out.extend(validate_provider(p));
        }
        if self.provider(d.default_provider.get_ref()).is_none() {
            out.push((
                d.default_provider.span(),
                format!(
                    "default_provider {:?} names no [[provider]]",
                    d.default_provider.get_ref()
                ),
            ));
        }
        let mut users = HashSet::new();
        let mut logins = HashSet::new();
        for u in &self.user {
            if !users.insert(u.name.get_ref().as_str()) {
                out.push((
                    u.name.span(),
                    format!("duplicate user name {:?}", u.name.get_ref()),
                ));
            }
            if let Some(login) = &u.login {
                if !logins.insert(login.as_str()) {
                    out.push((u.name.span(), format!("duplicate user login {login:?}")));
                }
                if u.password_hash.is_none() {
                    out.push((
                        u.name.span(),
                        format!("user {:?} has a login but no password_hash (make one with `mailgate hash-password`)", u.name.get_ref()),
                    ));
                }
            }
            if let Some(p) = &u.provider
                && self.provider(p.get_ref()).is_none()
            {
                out.push((
                    p.span(),
                    format!("provider {:?} names no [[provider]]", p.get_ref()),
                ));
            }
        }
        out
    }
}

fn validate_provider(p: &ProviderConfig) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    let span = p.name.span();
    let name = p.name.get_ref();
    let secrets = [
        p.password.is_some(),
        p.password_file.is_some(),
        p.password_env.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if secrets > 1 {
        out.push((
            span.clone(),
            format!("provider {name:?}: set only one of password, password_file, password_env"),
        ));
    }
    if p.max_connections == 0 {
        out.push((
            span.clone(),
            format!("provider {name:?}: max_connections must be at least 1"),
        ));
    }
    match p.kind {
        ProviderKind::Eml => {
            if p.directory.is_none() {
                out.push((
                    span.clone(),
                    format!("provider {name:?}: kind = \"eml\" needs directory"),
                ));
            }
        }
        ProviderKind::Smtp => {
            if p.host.as_deref().is_none_or(str::is_empty) {
                out.push((
                    span.clone(),
                    format!("provider {name:?}: kind = \"smtp\" needs host"),
                ));
            }
            if p.oauth2.is_some() && p.username.is_none() {
                out.push((
                    span.clone(),
                    format!("provider {name:?}: [provider.oauth2] needs username (the mailbox to send as)"),
                ));
            }
        }
        ProviderKind::Graph => {
            if p.oauth2.is_none() {
                out.push((
                    span.clone(),
                    format!("provider {name:?}: kind = \"graph\" needs a [provider.oauth2] table"),
                ));
            }
        }
    }
    if let Some(o) = &p.oauth2 {
        if o.client_id.is_none() {
            out.push((
                span.clone(),
                format!("provider {name:?}: [provider.oauth2] needs client_id"),
            ));
        }
        if o.tenant_id.is_none() && o.token_url.is_none() {
            out.push((
                span.clone(),
                format!("provider {name:?}: [provider.oauth2] needs tenant_id or token_url"),
            ));
        }
        let secrets = [
            o.client_secret.is_some(),
            o.client_secret_file.is_some(),
            o.client_secret_env.is_some(),
            o.certificate_file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if secrets != 1 {
            out.push((span.clone(), format!("provider {name:?}: [provider.oauth2] needs exactly one of client_secret, client_secret_file, client_secret_env, certificate_file")));
        }
        if o.certificate_file.is_some() != o.private_key_file.is_some() {
            out.push((span, format!("provider {name:?}: [provider.oauth2] certificate_file and private_key_file go together")));
        }
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("t.toml")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const OUTBOX: &str =
        "[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"outbox\"\n";

    #[test]
    fn shipped_default_is_valid() {
        let text = include_str!("../config/mailgate.toml");
        let c = Config::parse(text, Path::new("config/mailgate.toml")).expect("valid");
        assert_eq!(
            c.smtp.listen_addrs(),
            vec!["127.0.0.1:2525".parse().unwrap()]
        );
        assert_eq!(c.store.path, PathBuf::from("data/mailgate.redb"));
        assert_eq!(c.distributor.default_provider.get_ref(), "outbox");
        assert_eq!(c.provider[0].kind, ProviderKind::Eml);
    }

    #[test]
    fn unknown_key_is_located() {
        let e = errors(&format!(
            "{OUTBOX}[smtp]\nhostname = \"x\"\nmax_mesage_size = 5\n"
        ));
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("t.toml:7:1: "), "{e:?}");
        assert!(e[0].contains("max_mesage_size"), "{e:?}");
    }

    #[test]
    fn bad_size_and_duration_are_located() {
        let e = errors(&format!(
            "{OUTBOX}[smtp]\nmax_message_size = \"35 parsecs\"\n"
        ));
        assert!(e[0].starts_with("t.toml:6:20: "), "{e:?}");
        assert!(e[0].contains("invalid size"), "{e:?}");
        let e = errors(&format!("{OUTBOX}[distributor]\nretry_max = \"soon\"\n"));
        assert!(e[0].starts_with("t.toml:6:13: "), "{e:?}");
        assert!(e[0].contains("invalid duration"), "{e:?}");
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("35MB"), Ok(35 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("-1").is_err());
        let c = Config::parse(
            &format!("{OUTBOX}[smtp]\nmax_message_size = 1000\nidle_timeout = \"2d\"\n"),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(c.smtp.max_message_size, ByteSize(1000));
        assert_eq!(c.smtp.idle_timeout.0, Duration::from_secs(172_800));
    }

    #[test]
    fn duplicate_provider_and_dangling_references() {
        let text = format!(
            "{OUTBOX}\n[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"b\"\n\n[distributor]\ndefault_provider = \"nowhere\"\n\n[[user]]\nname = \"erp\"\nprovider = \"gone\"\n"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e.iter()
                .any(|m| m.starts_with("t.toml:7:8: ") && m.contains("duplicate provider")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("t.toml:12:20: ") && m.contains("nowhere")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("t.toml:16:12: ") && m.contains("gone")),
            "{e:?}"
        );
    }

    #[test]
    fn non_loopback_status_needs_token() {
        let e = errors(&format!("{OUTBOX}[status]\nlisten = \"0.0.0.0:8525\"\n"));
        assert!(
            e[0].starts_with("t.toml:6:10: ") && e[0].contains("token_file"),
            "{e:?}"
        );
        assert!(
            errors(&format!(
                "{OUTBOX}[status]\nlisten = \"0.0.0.0:8525\"\ntoken_file = \"t\"\n"
            ))
            .is_empty()
        );
    }

    #[test]
    fn full_schema_of_spec_parses() {
        let text = r#"
[smtp]
listen = ["127.0.0.1:2525", "[::1]:2525"]
hostname = "relay.contoso.com"
max_message_size = "35MB"
max_recipients = 500
reject_single_label_domains = true
allowed_networks = ["127.0.0.0/8", "::1/128"]
require_auth = false
bare_newlines = "reject"
long_lines = "encode"
tls_cert = "certs/mailgate.crt"
tls_key  = "certs/mailgate.key"
max_connections = 1000
idle_timeout = "5m"
[store]
path = "data/mailgate.redb"
min_free_space = "200MB"
[history]
retention_days = 30
[status]
listen = "127.0.0.1:8525"
[distributor]
enabled = true
default_provider = "office365"
retry_initial = "1m"
retry_max = "30m"
give_up_after = "2d"
[rewrite]
default_sender = "noreply@contoso.com"
reply_to_original = false
[[provider]]
name = "outbox"
kind = "eml"
directory = "outbox"
[[provider]]
name = "office365"
kind = "smtp"
host = "smtp.office365.com"
port = 587
tls = "starttls"
username = "relay@contoso.com"
password_file = "/etc/mailgate/office365.pass"
per_minute_limit = 30
per_day_recipient_limit = 10000
max_connections = 4
[provider.oauth2]
tenant_id = "t"
client_id = "c"
client_secret_file = "s"
scope = "https://outlook.office365.com/.default"
[[provider]]
name = "exchange"
kind = "graph"
[provider.oauth2]
tenant_id = "t"
client_id = "c"
certificate_file = "c.pem"
private_key_file = "k.pem"
[[user]]
name = "erp"
login = "erp"
password_hash = "$argon2id$..."
email = "erp@contoso.com"
sender_email = "billing@contoso.com"
provider = "office365"
match_senders = ["noreply@erp.local", "*@legacy.local"]
send_mode = "on-behalf-of"
"#;
        let c = Config::parse(text, Path::new("t")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.smtp.listen_addrs().len(), 2);
        assert_eq!(c.smtp.bare_newlines, BareNewlines::Reject);
        assert_eq!(c.provider.len(), 3);
        assert_eq!(c.provider[1].tls, TlsMode::Starttls);
        assert_eq!(c.user[0].send_mode, SendMode::OnBehalfOf);
        assert_eq!(c.provider[2].kind, ProviderKind::Graph);
    }
}
