//! OAuth2 for upstreams (`[provider.oauth2]`), every flow of SPEC.md: the client
//! credentials grant (a client secret, or a certificate's signed assertion), a Google
//! service account's JWT grant, and the delegated flows (`device_code`,
//! `authorization_code`) whose refresh token `mailgate oauth2 login` obtained. One access
//! token per provider, shared by all its connections, cached until shortly before it
//! expires, dropped when the upstream rejects it. A delegated provider renews through its
//! stored refresh token and writes every rotated one back (sealed, under the secrets
//! lock) before it is used again. Token endpoint failures become diagnoses; the mail is
//! deferred. No token, code or secret is ever logged or put in a reply.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

pub mod endpoints;
pub mod jwt;
pub mod login;
pub mod signin;

use super::diagnosis::Code;
use crate::config::{OAuth2Config, OAuthFlow, ProviderConfig};
use crate::secrets::{Secret, SecretError, SecretStore, SecretsLock};
use crate::time::now_ms;
pub use endpoints::{Endpoints, default_token_url};
use signin::SignIn;

/// A token is renewed this long before it expires (half its life when that is shorter).
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// A delegated provider's refresh token is used at least this often, even with no mail,
/// so that it never ages out while mailgate runs.
pub const KEEP_ALIVE: Duration = Duration::from_secs(12 * 3600);

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// Diagnosis code.
    pub code: Code,
    /// The endpoint's answer or the local error (never a secret or a token).
    pub reply: String,
}

#[derive(Debug, Clone)]
struct Token {
    value: Secret,
    expires_at: Instant,
    renew_at: Instant,
    expires_at_ms: u64,
}

/// What `/status` shows of a provider's sign-in (delegated flows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignInStatus {
    /// Who signed in.
    pub account: Option<String>,
    /// When (ms since the epoch).
    pub signed_in_ms: u64,
    /// When the refresh token was last used.
    pub last_used_ms: u64,
    /// When the platform last issued a new one.
    pub renewed_ms: u64,
    /// When it ages out if it is not used again.
    pub ages_out_ms: u64,
    /// The platform's last refusal.
    pub refused: Option<String>,
}

/// What `/status` shows of a provider's token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStatus {
    /// The grant (`flow`).
    pub flow: &'static str,
    /// A valid access token is held.
    pub valid: bool,
    /// When it expires (ms since the epoch).
    pub expires_at_ms: Option<u64>,
    /// The last token error.
    pub last_error: Option<String>,
    /// Tokens fetched since start.
    pub fetched: u64,
    /// Delegated flows: whether a mailbox has signed in.
    pub signed_in: Option<bool>,
    /// Delegated flows: the stored sign-in.
    pub sign_in: Option<SignInStatus>,
}

#[derive(Debug, Default)]
struct State {
    token: Option<Token>,
    last_error: Option<String>,
    fetched: u64,
    /// A renewed sign-in the secrets file could not take; used and saved again first.
    unsaved: Option<SignIn>,
}

/// The token source of one provider.
#[derive(Debug)]
pub struct TokenSource {
    provider: String,
    username: Option<String>,
    config: OAuth2Config,
    endpoints: Endpoints,
    secrets: SecretStore,
    http: reqwest::Client,
    state: Mutex<State>,
    /// Serialises fetches so concurrent connections share one request.
    fetch: tokio::sync::Mutex<()>,
}

/// A token endpoint's success answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenResponse {
    /// Who signed in, from the id_token's `preferred_username` or `email` (the token came
    /// straight from the token endpoint over TLS, so its claims are read, not verified).
    pub fn account(&self) -> Option<String> {
        use base64::Engine;
        let payload = self.id_token.as_ref()?.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        ["preferred_username", "email", "upn"]
            .iter()
            .find_map(|k| claims.get(*k)?.as_str().map(String::from))
    }
}

#[derive(Deserialize, Default)]
pub(super) struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

impl ErrorResponse {
    fn aadsts(&self, n: u64) -> bool {
        self.error_codes.contains(&n) || self.error_description.contains(&format!("AADSTS{n}"))
    }
}

/// What an identity platform's refusal means, in words, for the codes administrators
/// meet (kept beside the platform's own words in the reply).
pub(super) fn explain(e: &ErrorResponse) -> Option<&'static str> {
    const KNOWN: [(u64, &str); 9] = [
        (
            7000218,
            "the app registration is not a public client: in Entra admin center > App registrations > the app > Authentication, set Allow public client flows to Yes",
        ),
        (
            700082,
            "the refresh token expired after 90 days without use: mailgate renews it every 12 hours while it runs, so mailgate was stopped that long or the sign-in was never used",
        ),
        (
            70043,
            "a Conditional Access sign-in frequency policy requires a new sign-in: exclude the mailbox from it or lengthen its sign-in frequency to sign in less often",
        ),
        (
            70044,
            "the session expired under a sign-in frequency policy: sign in again",
        ),
        (
            50173,
            "the grant was revoked: the account's password was changed or its sessions were revoked since the sign-in",
        ),
        (
            700025,
            "a public client must not send a secret: remove client_secret, client_secret_file and client_secret_env from [provider.oauth2] (or turn the app registration into a confidential client)",
        ),
        (
            50076,
            "multi-factor authentication is now required: the next sign-in does it",
        ),
        (
            50079,
            "the account must register for multi-factor authentication: the next sign-in does it",
        ),
        (
            65001,
            "the consent given at sign-in was withdrawn: the next sign-in asks for it",
        ),
    ];
    if let Some((_, words)) = KNOWN.iter().find(|(n, _)| e.aadsts(*n)) {
        return Some(words);
    }
    if e.error == "invalid_grant"
        && e.error_codes.is_empty()
        && !e.error_description.contains("AADSTS")
    {
        return Some(
            "Google refused the refresh token: it was revoked (Google Account > Security > Third-party connections), the password was changed, it went unused for six months, or the OAuth client is in Testing status, whose refresh tokens expire after 7 days (publish the app to get lasting ones)",
        );
    }
    None
}

/// The diagnosis of a token endpoint error; `delegated` for a grant that uses a refresh
/// token (an `invalid_grant` then means the mailbox must sign in again).
pub fn classify_token_error(status: u16, body: &str, delegated: bool) -> TokenError {
    let e: ErrorResponse = serde_json::from_str(body).unwrap_or_default();
    let reauthorize = matches!(
        e.error.as_str(),
        "invalid_grant" | "interaction_required" | "consent_required" | "login_required"
    );
    let consent = [65001u64, 650057, 650052, 500011, 7000112, 50020]
        .iter()
        .any(|n| e.aadsts(*n))
        || e.error_description.to_ascii_lowercase().contains("consent");
    let code = if delegated && reauthorize {
        Code::OAuthReauthorize
    } else if consent {
        Code::OAuthConsentRequired
    } else if matches!(e.error.as_str(), "invalid_client" | "unauthorized_client")
        || [7000215u64, 7000222, 700016, 700027, 90002, 700025]
            .iter()
            .any(|n| e.aadsts(*n))
    {
        Code::OAuthInvalidClient
    } else if status >= 500 {
        Code::OAuthEndpointUnreachable
    } else {
        Code::OAuthInvalidClient
    };
    let first_line = e.error_description.lines().next().unwrap_or("").to_string();
    let mut reply = if e.error.is_empty() {
        format!(
            "token endpoint answered HTTP {status}: {}",
            body.chars().take(300).collect::<String>()
        )
    } else {
        format!(
            "token endpoint answered HTTP {status}: {}: {first_line}",
            e.error
        )
    };
    if let Some(words) = explain(&e) {
        reply.push_str(" (");
        reply.push_str(words);
        reply.push(')');
    }
    TokenError { code, reply }
}

fn local(code: Code, reply: impl Into<String>) -> TokenError {
    TokenError {
        code,
        reply: reply.into(),
    }
}

/// A reqwest error's text with its causes.
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

impl TokenSource {
    /// The token source of a provider's `[provider.oauth2]` table.
    pub fn new(p: &ProviderConfig, secrets: SecretStore) -> TokenSource {
        let config = p.oauth2.clone().unwrap_or_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        TokenSource {
            provider: p.name.get_ref().clone(),
            username: p.username.clone().or_else(|| config.subject.clone()),
            endpoints: Endpoints::of(p),
            config,
            secrets,
            http,
            state: Mutex::new(State::default()),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// The grant.
    pub fn flow(&self) -> OAuthFlow {
        self.config.flow
    }

    /// The endpoints and scope.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The provider's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The stored sign-in (delegated flows): the unsaved renewal, else the secrets file.
    fn sign_in(&self) -> Result<Option<SignIn>, SecretError> {
        if let Some(s) = self.state.lock().ok().and_then(|s| s.unsaved.clone()) {
            return Ok(Some(s));
        }
        signin::load(&self.secrets, &self.provider)
    }

    /// Whether a mailbox has signed in (always true for the app-only flows).
    pub fn signed_in(&self) -> bool {
        !self.flow().is_delegated() || matches!(self.sign_in(), Ok(Some(_)))
    }

    /// What `/status` shows.
    pub fn status(&self) -> TokenStatus {
        let sign_in = if self.flow().is_delegated() {
            Some(self.sign_in().ok().flatten())
        } else {
            None
        };
        let Ok(s) = self.state.lock() else {
            return TokenStatus::default();
        };
        let valid = s
            .token
            .as_ref()
            .is_some_and(|t| t.expires_at > Instant::now());
        let limit = crate::time::duration_ms(self.endpoints.inactivity_limit());
        TokenStatus {
            flow: self.flow().as_str(),
            valid,
            expires_at_ms: s.token.as_ref().filter(|_| valid).map(|t| t.expires_at_ms),
            last_error: s.last_error.clone(),
            fetched: s.fetched,
            signed_in: sign_in.as_ref().map(Option::is_some),
            sign_in: sign_in.flatten().map(|g| SignInStatus {
                account: g.account.clone(),
                signed_in_ms: g.signed_in_ms,
                last_used_ms: g.last_used_ms,
                renewed_ms: g.renewed_ms,
                ages_out_ms: g.last_used_ms.max(g.renewed_ms) + limit,
                refused: g.refused.clone(),
            }),
        }
    }

    fn cached(&self) -> Option<Secret> {
        let s = self.state.lock().ok()?;
        s.token
            .as_ref()
            .filter(|t| t.renew_at > Instant::now())
            .map(|t| t.value.clone())
    }

    /// Forgets the access token (the upstream rejected it).
    pub fn invalidate(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.token = None;
        }
    }

    /// Forgets everything held in memory (after `oauth2 login` or `logout` changed the
    /// stored sign-in): the next token comes from the secrets file as it is now.
    pub fn reset(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.token = None;
            s.unsaved = None;
            s.last_error = None;
        }
    }

    /// A valid token: the cached one, or a new one from the token endpoint.
    pub async fn token(&self) -> Result<Secret, TokenError> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let _one_at_a_time = self.fetch.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        self.fetch_and_keep().await
    }

    async fn fetch_and_keep(&self) -> Result<Secret, TokenError> {
        let result = self.fetch_token().await;
        if let Ok(mut s) = self.state.lock() {
            match &result {
                Ok(t) => {
                    s.token = Some(t.clone());
                    s.fetched += 1;
                    s.last_error = None;
                }
                Err(e) => s.last_error = Some(e.reply.clone()),
            }
        }
        result.map(|t| t.value)
    }

    /// Delegated flows: uses the refresh token when it was last used more than
    /// [`KEEP_ALIVE`] ago, so that it never ages out while mailgate runs. `None` when
    /// nothing was due.
    pub async fn keep_alive(&self) -> Option<Result<(), TokenError>> {
        if !self.flow().is_delegated() {
            return None;
        }
        let last = self.sign_in().ok().flatten()?.last_used_ms;
        if now_ms().saturating_sub(last) < crate::time::duration_ms(KEEP_ALIVE) {
            return None;
        }
        let _one_at_a_time = self.fetch.lock().await;
        Some(self.fetch_and_keep().await.map(|_| ()))
    }

    fn client_secret(&self) -> Result<Option<Secret>, TokenError> {
        let c = &self.config;
        if let Some(s) = &c.client_secret {
            return Ok(Some(Secret::new(s.clone())));
        }
        if let Some(p) = &c.client_secret_file {
            let t = std::fs::read_to_string(p).map_err(|e| {
                local(
                    Code::ProviderConfig,
                    format!("client_secret_file {}: {e}", p.display()),
                )
            })?;
            return Ok(Some(Secret::new(
                t.trim_end_matches(['\r', '\n']).to_string(),
            )));
        }
        if let Some(v) = &c.client_secret_env {
            return std::env::var(v).map(|s| Some(Secret::new(s))).map_err(|_| {
                local(
                    Code::ProviderConfig,
                    format!("environment variable {v} (client_secret_env) is not set"),
                )
            });
        }
        Ok(None)
    }

    fn client_id(&self) -> String {
        self.config.client_id.clone().unwrap_or_default()
    }

    /// POSTs a grant to the token endpoint (`url`); the answer or its diagnosis.
    async fn post_token(
        &self,
        url: &str,
        form: &[(&str, String)],
    ) -> Result<TokenResponse, TokenError> {
        let resp = self.http.post(url).form(form).send().await.map_err(|e| {
            local(
                Code::OAuthEndpointUnreachable,
                format!("token endpoint {url} unreachable: {}", error_chain(&e)),
            )
        })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(classify_token_error(
                status,
                &body,
                self.flow().is_delegated(),
            ));
        }
        serde_json::from_str(&body).map_err(|e| {
            local(
                Code::OAuthEndpointUnreachable,
                format!("token endpoint answered something that is not a token: {e}"),
            )
        })
    }

    async fn fetch_token(&self) -> Result<Token, TokenError> {
        let started = Instant::now();
        let resp = match self.flow() {
            OAuthFlow::ClientCredentials => self.client_credentials().await?,
            OAuthFlow::JwtBearer => self.jwt_bearer().await?,
            OAuthFlow::DeviceCode | OAuthFlow::AuthorizationCode => self.refresh().await?,
        };
        let lifetime = Duration::from_secs(resp.expires_in.unwrap_or(3600));
        tracing::info!(
            provider = %self.provider,
            flow = self.flow().as_str(),
            expires_in = lifetime.as_secs(),
            "OAuth2 access token acquired"
        );
        Ok(Token {
            value: Secret::new(resp.access_token),
            expires_at: started + lifetime,
            renew_at: started + lifetime - RENEW_BEFORE.min(lifetime / 2),
            expires_at_ms: now_ms() + crate::time::duration_ms(lifetime),
        })
    }

    async fn client_credentials(&self) -> Result<TokenResponse, TokenError> {
        let client_id = self.client_id();
        let url = &self.endpoints.token_url;
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", client_id.clone()),
            ("scope", self.endpoints.scope.clone()),
        ];
        match (
            self.client_secret()?,
            &self.config.certificate_file,
            &self.config.private_key_file,
        ) {
            (Some(secret), _, _) => form.push(("client_secret", secret.expose().to_string())),
            (None, Some(cert), Some(key)) => {
                let jwt = jwt::client_assertion(cert, key, &client_id, url, now_ms())?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", jwt));
            }
            _ => {
                return Err(local(
                    Code::ProviderConfig,
                    "[provider.oauth2] has no client secret and no certificate",
                ));
            }
        }
        self.post_token(url, &form).await
    }

    /// A Google service account's grant (RFC 7523): the assertion names the mailbox.
    async fn jwt_bearer(&self) -> Result<TokenResponse, TokenError> {
        let Some(path) = &self.config.service_account_file else {
            return Err(local(
                Code::ProviderConfig,
                "[provider.oauth2] flow = \"jwt_bearer\" needs service_account_file",
            ));
        };
        let account = jwt::ServiceAccount::read(path)?;
        let url = match (&self.config.token_url, &account.token_uri) {
            (Some(u), _) | (None, Some(u)) => u.clone(),
            (None, None) => self.endpoints.token_url.clone(),
        };
        let subject = self.config.subject.clone().unwrap_or_default();
        let assertion = account.assertion(&subject, &url, &self.endpoints.scope, now_ms())?;
        let form = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string(),
            ),
            ("assertion", assertion),
        ];
        self.post_token(&url, &form).await
    }

    /// Takes the secrets lock on the blocking pool (another process may hold it for the
    /// length of one token request).
    async fn lock_secrets(&self) -> Result<SecretsLock, TokenError> {
        let secrets = self.secrets.clone();
        tokio::task::spawn_blocking(move || secrets.lock())
            .await
            .map_err(|e| local(Code::ProviderConfig, e.to_string()))?
            .map_err(|e| local(Code::ProviderConfig, e.to_string()))
    }

    async fn post_refresh(&self, refresh_token: &str) -> Result<TokenResponse, TokenError> {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "refresh_token".into()),
            ("client_id", self.client_id()),
            ("refresh_token", refresh_token.to_string()),
            ("scope", self.endpoints.scope.clone()),
        ];
        if let Some(secret) = self.client_secret()? {
            form.push(("client_secret", secret.expose().to_string()));
        }
        self.post_token(&self.endpoints.token_url, &form).await
    }

    /// The delegated flows' renewal: under the secrets lock, the stored refresh token is
    /// exchanged, and the answer (a rotated refresh token) is saved before the access
    /// token is handed out. The token before a rotation stays as `previous` until the new
    /// one has worked once, and is tried when the platform refuses the new one.
    async fn refresh(&self) -> Result<TokenResponse, TokenError> {
        let held = self.lock_secrets().await?;
        let mut sign_in = match self.sign_in() {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(local(
                    Code::OAuthNotSignedIn,
                    format!(
                        "provider {:?} uses flow = \"{}\" and no mailbox has signed in: run `mailgate oauth2 login --provider {}`",
                        self.provider,
                        self.flow().as_str(),
                        self.provider
                    ),
                ));
            }
            Err(SecretError::Undecryptable(_)) => {
                return Err(local(
                    Code::PasswordUndecryptable,
                    format!(
                        "the stored OAuth2 sign-in of provider {:?} cannot be decrypted with this installation's key: run `mailgate oauth2 login --provider {}` again",
                        self.provider, self.provider
                    ),
                ));
            }
            Err(e) => return Err(local(Code::ProviderConfig, e.to_string())),
        };
        let mut used = sign_in.refresh_token.clone();
        let mut result = self.post_refresh(&used).await;
        if let (Err(e), Some(previous)) = (&result, sign_in.previous.clone())
            && e.code == Code::OAuthReauthorize
        {
            tracing::warn!(provider = %self.provider, "the identity platform refused the newest refresh token; trying the one before it");
            if let Ok(r) = self.post_refresh(&previous).await {
                result = Ok(r);
                used = previous;
            }
        }
        let now = now_ms();
        match result {
            Ok(resp) => {
                let rotated = resp.refresh_token.as_ref().is_some_and(|r| *r != used);
                sign_in.previous = rotated.then(|| used.clone());
                sign_in.refresh_token = resp.refresh_token.clone().unwrap_or(used);
                if rotated {
                    sign_in.renewed_ms = now;
                }
                sign_in.last_used_ms = now;
                sign_in.refused = None;
                if let Some(a) = resp.account() {
                    sign_in.account = Some(a);
                }
                self.persist(&held, sign_in);
                Ok(resp)
            }
            Err(e) => {
                if e.code == Code::OAuthReauthorize {
                    sign_in.refused = Some(e.reply.clone());
                    self.persist(&held, sign_in);
                }
                Err(e)
            }
        }
    }

    /// Writes a renewed sign-in back; one that cannot be written is kept in memory, used
    /// from there and written again at the next renewal.
    fn persist(&self, held: &SecretsLock, sign_in: SignIn) {
        let unsaved = match signin::save(&self.secrets, held, &self.provider, &sign_in) {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(provider = %self.provider, error = %e, "cannot save the renewed OAuth2 sign-in; it is kept in memory and saved at the next renewal");
                Some(sign_in)
            }
        };
        if let Ok(mut s) = self.state.lock() {
            s.unsaved = unsaved;
        }
    }

    /// The XOAUTH2 user when the provider sets none (a service account's `subject`).
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_endpoint_errors_are_diagnosed() {
        let e = classify_token_error(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#,
            false,
        );
        assert_eq!(e.code, Code::OAuthInvalidClient);
        assert!(e.reply.contains("AADSTS7000215"));
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS65001: The user or administrator has not consented to use the application","error_codes":[65001]}"#,
            false,
        );
        assert_eq!(e.code, Code::OAuthConsentRequired);
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named https://outlook.office365.com was not found in the tenant","error_codes":[500011]}"#,
            false,
        );
        assert_eq!(e.code, Code::OAuthConsentRequired);
        assert_eq!(
            classify_token_error(503, "busy", false).code,
            Code::OAuthEndpointUnreachable
        );
    }

    #[test]
    fn a_refused_refresh_token_means_sign_in_again_with_the_reason() {
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: x","error_codes":[700082]}"#,
            true,
        );
        assert_eq!(e.code, Code::OAuthReauthorize);
        assert!(
            e.reply.contains(
                "invalid_grant: AADSTS700082: The refresh token has expired due to inactivity."
            ),
            "{}",
            e.reply
        );
        assert!(e.reply.contains("90 days without use"), "{}", e.reply);
        assert!(!e.reply.contains("Trace ID"));
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS70043: The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.","error_codes":[70043]}"#,
            true,
        );
        assert_eq!(e.code, Code::OAuthReauthorize);
        assert!(e.reply.contains("sign-in frequency policy"), "{}", e.reply);
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is needed.","error_codes":[50173]}"#,
            true,
        );
        assert!(e.reply.contains("password was changed"), "{}", e.reply);
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            true,
        );
        assert_eq!(e.code, Code::OAuthReauthorize);
        assert!(
            e.reply.contains("Google refused the refresh token"),
            "{}",
            e.reply
        );
        let e = classify_token_error(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' should be presented.","error_codes":[700025]}"#,
            true,
        );
        assert_eq!(e.code, Code::OAuthInvalidClient);
        assert!(
            e.reply.contains("a public client must not send a secret"),
            "{}",
            e.reply
        );
        // The same invalid_grant in the app-only flow is about the app, not a sign-in.
        assert_ne!(
            classify_token_error(
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS700082: x"}"#,
                false
            )
            .code,
            Code::OAuthReauthorize
        );
    }
}
