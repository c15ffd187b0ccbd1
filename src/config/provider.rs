//! `[[provider]]` and `[provider.oauth2]`: where mail goes and how mailgate signs in there
//! (the kinds, transport security, the OAuth2 flows and whose endpoints they default to).

use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{Cloud, Dur};

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

impl ProviderKind {
    /// The name in the configuration (`kind = "..."`), and everywhere it is shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Eml => "eml",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Graph => "graph",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// How a provider gets its OAuth2 access tokens (`[provider.oauth2] flow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OAuthFlow {
    /// App-only: the app's secret or certificate (Microsoft 365 SMTP.SendAsApp, Graph).
    #[default]
    ClientCredentials,
    /// RFC 8628: a mailbox signs in once (`mailgate oauth2 login`); Outlook.com, Hotmail,
    /// a Microsoft 365 mailbox signing in itself.
    DeviceCode,
    /// RFC 6749 with PKCE (RFC 7636): browser sign-in redirected to the loopback; Gmail.
    AuthorizationCode,
    /// RFC 7523: a Google service account with domain-wide delegation.
    JwtBearer,
    /// No secret: an Azure managed identity's token from the instance metadata endpoint
    /// (or App Service's `IDENTITY_ENDPOINT`).
    #[serde(rename = "managed-identity", alias = "managed_identity")]
    ManagedIdentity,
    /// No secret: client credentials whose `client_assertion` is the federated token
    /// Kubernetes projects into the pod (`federated_token_file`), re-read every time.
    #[serde(rename = "workload-identity", alias = "workload_identity")]
    WorkloadIdentity,
}

impl OAuthFlow {
    /// The name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthFlow::ClientCredentials => "client_credentials",
            OAuthFlow::DeviceCode => "device_code",
            OAuthFlow::AuthorizationCode => "authorization_code",
            OAuthFlow::JwtBearer => "jwt_bearer",
            OAuthFlow::ManagedIdentity => "managed-identity",
            OAuthFlow::WorkloadIdentity => "workload-identity",
        }
    }

    /// Whether a mailbox signs in (`mailgate oauth2 login`) and mailgate holds its
    /// refresh token.
    pub fn is_delegated(self) -> bool {
        matches!(self, OAuthFlow::DeviceCode | OAuthFlow::AuthorizationCode)
    }

    /// Whether the identity is the machine's or the pod's, with no secret in mailgate.
    pub fn is_secretless(self) -> bool {
        matches!(
            self,
            OAuthFlow::ManagedIdentity | OAuthFlow::WorkloadIdentity
        )
    }
}

/// `[provider.oauth2]`: how the provider gets OAuth2 access tokens.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth2Config {
    /// The grant (default `client_credentials`).
    pub flow: OAuthFlow,
    /// Device authorization endpoint (`device_code`); default from the issuer.
    pub device_code_url: Option<String>,
    /// Authorization endpoint (`authorization_code`); default from the issuer.
    pub authorize_url: Option<String>,
    /// Token revocation endpoint (RFC 7009), used by `oauth2 logout`; default Google's.
    pub revoke_url: Option<String>,
    /// `workload-identity`: the projected service-account token, re-read for every
    /// token request (default `$AZURE_FEDERATED_TOKEN_FILE`).
    pub federated_token_file: Option<PathBuf>,
    /// Google service account key file (JSON) for `jwt_bearer`.
    pub service_account_file: Option<PathBuf>,
    /// The mailbox a `jwt_bearer` service account acts for.
    pub subject: Option<String>,
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
    /// A delegated sign-in's refresh token ends this long after it was issued, used or
    /// not: a Google app whose publishing status is "Testing" (`"7d"`).
    pub refresh_token_lifetime: Option<Dur>,
    /// When the client secret expires (`YYYY-MM-DD`, as Entra shows it): the
    /// `sign-in-expiring` alert fires 14 days before.
    pub client_secret_expires: Option<String>,
    /// Client certificate (PEM) for a JWT assertion.
    pub certificate_file: Option<PathBuf>,
    /// Private key (PEM) for `certificate_file`.
    pub private_key_file: Option<PathBuf>,
    /// Token endpoint; default from `tenant_id`.
    pub token_url: Option<String>,
    /// Scope; default depends on the provider kind.
    pub scope: Option<String>,
}

/// `[[provider]]`: where mail goes. `kind` picks the arm of [`KindSettings`] that holds
/// the kind's own keys; the keys every kind has are in [`CommonSettings`]. Read by
/// [`read_provider`](super::provider_read), which keeps every key's line and column.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Unique name.
    pub name: Spanned<String>,
    /// The kind and its own settings.
    pub settings: KindSettings,
    /// The settings of every kind.
    pub common: CommonSettings,
}

/// The keys of `[[provider]]` that every kind has (besides `name` and `kind`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonSettings {
    /// Messages per rolling minute (0 = none).
    pub per_minute_limit: Option<u32>,
    /// Recipients per rolling 24 hours (0 = none).
    pub per_day_recipient_limit: Option<u32>,
    /// Concurrent upstream connections / deliveries.
    #[serde(default = "default_provider_connections")]
    pub max_connections: usize,
    /// How long one step of an exchange with the upstream may take (default 60 s).
    pub timeout: Option<Dur>,
    /// Consecutive unavailability failures (connection, TLS, sign-in, configuration)
    /// after which the provider is skipped for `circuit_cooldown` (default 5; 0: never).
    pub circuit_open_after: Option<u32>,
    /// How long an open circuit skips the provider before one message tries it
    /// (default 5 minutes).
    pub circuit_cooldown: Option<Dur>,
}

/// Each kind's own keys, tagged by `kind = "..."`: a new kind is one arm here (and in
/// [`KindSettings::read`]), its settings struct, and its file under `provider/`.
#[derive(Debug, Clone)]
pub enum KindSettings {
    /// `kind = "eml"`.
    Eml(EmlSettings),
    /// `kind = "smtp"` (this and graph boxed: far larger than eml's).
    Smtp(Box<SmtpSettings>),
    /// `kind = "graph"`.
    Graph(Box<GraphSettings>),
}

/// `kind = "eml"`: one .eml file per message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmlSettings {
    /// Output directory.
    pub directory: Option<PathBuf>,
}

/// `kind = "smtp"`: an SMTP submission server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Upstream host (DNS name or IP literal); default the SMTP host of `cloud` when
    /// that is set.
    pub host: Option<String>,
    /// The Microsoft cloud of the tenant (default `global`): the SMTP host, sign-in host
    /// and scopes of that cloud.
    pub cloud: Option<Cloud>,
    /// Upstream port (default 587, 465 for `tls = "tls"`, 25 for none).
    pub port: Option<u16>,
    /// Transport security.
    #[serde(default)]
    pub tls: TlsMode,
    /// Extra trusted CA (PEM), or the exact (self-signed) server certificate.
    pub ca_file: Option<PathBuf>,
    /// Pin of the server certificate, `sha256:AB:CD:...`.
    pub tls_fingerprint: Option<String>,
    /// Account name; when set, AUTH is mandatory.
    pub username: Option<String>,
    /// Password inline.
    pub password: Option<String>,
    /// Password from a file.
    pub password_file: Option<PathBuf>,
    /// Password from an environment variable.
    pub password_env: Option<String>,
    /// A client certificate (PEM, the chain from the end entity) presented on STARTTLS or
    /// implicit TLS: how Exchange Online's inbound connector recognises the sender.
    pub tls_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM) inline.
    pub tls_client_key: Option<String>,
    /// The client certificate's private key from a file.
    pub tls_client_key_file: Option<PathBuf>,
    /// The client certificate's private key from an environment variable.
    pub tls_client_key_env: Option<String>,
    /// OAuth2 settings (XOAUTH2).
    pub oauth2: Option<OAuth2Config>,
}

/// `kind = "graph"`: Microsoft Graph sendMail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSettings {
    /// Base URL without version path (default: the Graph host of `cloud`).
    pub graph_url: Option<String>,
    /// The Microsoft cloud of the tenant (default `global`): the Graph and sign-in hosts
    /// and scopes of that cloud.
    pub cloud: Option<Cloud>,
    /// Exchange keeps a copy of each message in Sent Items (default true).
    pub save_to_sent_items: Option<bool>,
    /// OAuth2 settings.
    pub oauth2: Option<OAuth2Config>,
}

impl KindSettings {
    /// The keys of `kind`'s own settings.
    pub fn keys(kind: ProviderKind) -> &'static [&'static str] {
        match kind {
            ProviderKind::Eml => super::read::fields_of::<EmlSettings>(),
            ProviderKind::Smtp => super::read::fields_of::<SmtpSettings>(),
            ProviderKind::Graph => super::read::fields_of::<GraphSettings>(),
        }
    }

    /// Reads `kind`'s own settings from `table` (the provider's table without `name`,
    /// `kind` and the common keys), each error at its key or value.
    pub(super) fn read<'de, D>(kind: ProviderKind, table: D) -> Result<KindSettings, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        Ok(match kind {
            ProviderKind::Eml => KindSettings::Eml(EmlSettings::deserialize(table)?),
            ProviderKind::Smtp => KindSettings::Smtp(Box::new(SmtpSettings::deserialize(table)?)),
            ProviderKind::Graph => {
                KindSettings::Graph(Box::new(GraphSettings::deserialize(table)?))
            }
        })
    }

    /// The tag.
    pub fn kind(&self) -> ProviderKind {
        match self {
            KindSettings::Eml(_) => ProviderKind::Eml,
            KindSettings::Smtp(_) => ProviderKind::Smtp,
            KindSettings::Graph(_) => ProviderKind::Graph,
        }
    }

    /// The arm's settings, as what every kind says about itself.
    pub fn of_kind(&self) -> &dyn KindConfig {
        match self {
            KindSettings::Eml(s) => s,
            KindSettings::Smtp(s) => s.as_ref(),
            KindSettings::Graph(s) => s.as_ref(),
        }
    }
}

/// What a kind's settings say about the provider, whatever the kind: each settings
/// struct implements it beside its keys.
pub trait KindConfig {
    /// The settings this kind needs that are missing, each in one sentence.
    fn problems(&self) -> Vec<String>;
    /// The limits the upstream sets when none are configured, (messages a minute,
    /// recipients a day), 0 = none.
    fn default_limits(&self) -> (u32, u32) {
        (0, 0)
    }
    /// Where it sends, for people.
    fn upstream(&self) -> String;
    /// The `[provider.oauth2]` table, for kinds that have one.
    fn oauth2(&self) -> Option<&OAuth2Config> {
        None
    }
    /// The Microsoft cloud its hosts and scopes default to.
    fn cloud(&self) -> Cloud {
        Cloud::Global
    }
}

impl KindConfig for EmlSettings {
    fn problems(&self) -> Vec<String> {
        match self.directory {
            None => vec!["kind = \"eml\" needs directory".to_string()],
            Some(_) => vec![],
        }
    }

    fn upstream(&self) -> String {
        self.directory
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    }
}

impl KindConfig for SmtpSettings {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.host().is_none_or(str::is_empty) {
            out.push(
                "kind = \"smtp\" needs host (or cloud, whose SMTP host it then is)".to_string(),
            );
        }
        let key = self.client_key_source();
        if let Some(why) = key.problem() {
            out.push(why);
        }
        // A certificate without a key here may have it in the secrets file: `check-config`
        // asks `secrets::client_certs_without_key`.
        if self.tls_client_cert.is_none() && key.given() > 0 {
            out.push(
                "tls_client_key_file (or tls_client_key, tls_client_key_env) needs tls_client_cert"
                    .into(),
            );
        }
        if self.tls_client_cert.is_some() && self.tls == TlsMode::None {
            out.push(
                "tls_client_cert is presented in TLS: it needs tls = \"starttls\" or \"tls\""
                    .into(),
            );
        }
        let subject = self.oauth2.as_ref().and_then(|o| o.subject.as_ref());
        if self.oauth2.is_some() && self.username.is_none() && subject.is_none() {
            out.push("[provider.oauth2] needs username (the mailbox to send as)".to_string());
        }
        out
    }

    /// The SMTP AUTH host of any Microsoft cloud (smtp.office365.com, .us, the China
    /// cloud's) allows 30 messages a minute and 10,000 recipients a day per mailbox.
    fn default_limits(&self) -> (u32, u32) {
        if Cloud::ALL.iter().any(|c| self.host_is(c.hosts().smtp_host)) {
            (30, 10_000)
        } else {
            (0, 0)
        }
    }

    /// With the port: two providers on one host are told apart.
    fn upstream(&self) -> String {
        format!("{}:{}", self.host().unwrap_or_default(), self.port())
    }

    fn oauth2(&self) -> Option<&OAuth2Config> {
        self.oauth2.as_ref()
    }

    fn cloud(&self) -> Cloud {
        self.cloud.unwrap_or_default()
    }
}

impl KindConfig for GraphSettings {
    fn problems(&self) -> Vec<String> {
        match self.oauth2 {
            None => vec!["kind = \"graph\" needs a [provider.oauth2] table".to_string()],
            Some(_) => vec![],
        }
    }

    fn upstream(&self) -> String {
        self.graph_url
            .clone()
            .unwrap_or_else(|| self.cloud().hosts().graph.to_string())
    }

    fn oauth2(&self) -> Option<&OAuth2Config> {
        self.oauth2.as_ref()
    }

    fn cloud(&self) -> Cloud {
        self.cloud.unwrap_or_default()
    }
}

fn default_provider_connections() -> usize {
    4
}

/// Whose identity platform a provider's OAuth2 endpoints default to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    /// The Microsoft identity platform (login.microsoftonline.com).
    Microsoft,
    /// Google (oauth2.googleapis.com).
    Google,
}

impl ProviderConfig {
    /// How long one step of an exchange with this provider may take (`timeout`, default
    /// 60 s): a connect, a handshake, a command and its reply, a token request.
    pub fn step_timeout(&self) -> std::time::Duration {
        self.common
            .timeout
            .map_or(std::time::Duration::from_secs(60), |d| d.0)
            .max(std::time::Duration::from_millis(1))
    }

    /// The circuit settings in force: failures to open it (0: never) and its cool-down.
    pub fn circuit(&self) -> (u32, std::time::Duration) {
        (
            self.common.circuit_open_after.unwrap_or(5),
            self.common
                .circuit_cooldown
                .map_or(std::time::Duration::from_secs(300), |d| d.0),
        )
    }

    /// Google for an smtp provider whose host is `smtp.gmail.com`, for `jwt_bearer`
    /// (Google service accounts) and for a scope of Google's (`https://mail.google.com/`,
    /// a Gmail relay reached under another name), otherwise Microsoft.
    pub fn oauth_issuer(&self) -> Issuer {
        let gmail = self.smtp().is_some_and(|s| s.host_is("smtp.gmail.com"));
        let google = self.oauth2().is_some_and(|o| {
            o.flow == OAuthFlow::JwtBearer
                || o.scope
                    .as_deref()
                    .is_some_and(|s| s.starts_with("https://mail.google.com/"))
        });
        if gmail || google {
            Issuer::Google
        } else {
            Issuer::Microsoft
        }
    }
}

/// A secret given one of three ways (`KEY`, `KEY_file`, `KEY_env`): the one rule "at most
/// one of them" lives here, and [`crate::secrets::resolve`] reads whichever is set.
#[derive(Debug, Clone, Copy)]
pub struct SecretSource<'a> {
    /// The key's name (`password`, `client_secret`).
    pub key: &'static str,
    /// The value inline.
    pub value: Option<&'a str>,
    /// A file holding it (one trailing line end stripped).
    pub file: Option<&'a std::path::Path>,
    /// An environment variable holding it.
    pub env: Option<&'a str>,
}

impl SecretSource<'_> {
    /// How many of the three are set.
    pub fn given(&self) -> usize {
        usize::from(self.value.is_some())
            + usize::from(self.file.is_some())
            + usize::from(self.env.is_some())
    }

    /// The sentence for more than one, or None.
    pub fn problem(&self) -> Option<String> {
        (self.given() > 1).then(|| {
            let k = self.key;
            format!("set only one of {k}, {k}_file, {k}_env")
        })
    }
}

impl SmtpSettings {
    /// `password`, `password_file`, `password_env`.
    pub fn password_source(&self) -> SecretSource<'_> {
        SecretSource {
            key: "password",
            value: self.password.as_deref(),
            file: self.password_file.as_deref(),
            env: self.password_env.as_deref(),
        }
    }

    /// `tls_client_key`, `tls_client_key_file`, `tls_client_key_env`.
    pub fn client_key_source(&self) -> SecretSource<'_> {
        SecretSource {
            key: "tls_client_key",
            value: self.tls_client_key.as_deref(),
            file: self.tls_client_key_file.as_deref(),
            env: self.tls_client_key_env.as_deref(),
        }
    }

    /// The host: `host`, else the SMTP host of `cloud` when that is set.
    pub fn host(&self) -> Option<&str> {
        self.host
            .as_deref()
            .or_else(|| self.cloud.map(|c| c.hosts().smtp_host))
    }

    /// Whether the host is `host`.
    fn host_is(&self, host: &str) -> bool {
        self.host().is_some_and(|h| h.eq_ignore_ascii_case(host))
    }

    /// The port, else the one its `tls` mode uses (587, 465, 25).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
            TlsMode::None => 25,
        })
    }
}

impl OAuth2Config {
    /// `client_secret`, `client_secret_file`, `client_secret_env`.
    pub fn client_secret_source(&self) -> SecretSource<'_> {
        SecretSource {
            key: "client_secret",
            value: self.client_secret.as_deref(),
            file: self.client_secret_file.as_deref(),
            env: self.client_secret_env.as_deref(),
        }
    }
}

/// Parses `sha256:AB:CD:...` (hex, colons optional, any case) into the 32 bytes.
pub fn parse_fingerprint(text: &str) -> Result<Vec<u8>, String> {
    let hex: String = text
        .trim()
        .strip_prefix("sha256:")
        .or_else(|| text.trim().strip_prefix("SHA256:"))
        .unwrap_or(text.trim())
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "tls_fingerprint {text:?} is not a SHA-256 fingerprint (sha256: and 64 hex digits, colons optional)"
        ));
    }
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// What a provider needs and defaults to, whatever its kind (each kind's part is its
/// [`KindConfig`]).
impl ProviderConfig {
    /// The kind (`kind = "..."`).
    pub fn kind(&self) -> ProviderKind {
        self.settings.kind()
    }

    /// The `[provider.oauth2]` table, for kinds that have one.
    pub fn oauth2(&self) -> Option<&OAuth2Config> {
        self.settings.of_kind().oauth2()
    }

    /// The Microsoft cloud its hosts and scopes default to (`cloud`, default global).
    pub fn cloud(&self) -> Cloud {
        self.settings.of_kind().cloud()
    }

    /// The smtp settings, when the provider is one.
    pub fn smtp(&self) -> Option<&SmtpSettings> {
        match &self.settings {
            KindSettings::Smtp(s) => Some(s),
            _ => None,
        }
    }

    /// The mailbox an smtp provider signs in as (`username`).
    pub fn username(&self) -> Option<&str> {
        self.smtp().and_then(|s| s.username.as_deref())
    }

    /// The settings this kind needs that are missing, each in one sentence.
    pub fn kind_problems(&self) -> Vec<String> {
        self.settings.of_kind().problems()
    }

    /// The limits in force, (messages a minute, recipients a day), 0 = none: the ones set,
    /// else the kind's defaults.
    pub fn limits(&self) -> (u32, u32) {
        let (minute, day) = self.settings.of_kind().default_limits();
        (
            self.common.per_minute_limit.unwrap_or(minute),
            self.common.per_day_recipient_limit.unwrap_or(day),
        )
    }

    /// Where it sends, for people: the host, the eml directory, or Microsoft Graph.
    pub fn upstream(&self) -> String {
        self.settings.of_kind().upstream()
    }
}
