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
mod errors;
mod grants;
mod identity;
pub mod jwt;
pub mod login;
pub mod signin;

use crate::config::{OAuth2Config, OAuthFlow, ProviderConfig};
use crate::secrets::{Secret, SecretError, SecretStore};
use crate::time::now_ms;
pub use endpoints::{Endpoints, default_token_url};
use errors::{ErrorResponse, error_chain, local, not_a_token, platform_words};
pub use errors::{TokenError, classify_token_error};
use signin::SignIn;

/// A token is renewed this long before it expires (half its life when that is shorter).
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// A delegated provider's refresh token is used at least this often, even with no mail,
/// so that it never ages out while mailgate runs.
pub const KEEP_ALIVE: Duration = Duration::from_secs(12 * 3600);

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
    timeout: Duration,
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
        let claims = jwt_claims(self.id_token.as_ref()?)?;
        ["preferred_username", "email", "upn"]
            .iter()
            .find_map(|k| claims.get(*k)?.as_str().map(String::from))
    }
}

/// The claims of a JWT, read and not verified (for what mailgate only shows or checks
/// for its own sake: who signed in, when a federated token ends).
fn jwt_claims(jwt: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl TokenSource {
    /// The token source of a provider's `[provider.oauth2]` table.
    pub fn new(p: &ProviderConfig, secrets: SecretStore) -> TokenSource {
        let config = p.oauth2().cloned().unwrap_or_default();
        // Every request to the identity platform (connect, headers, a body trickled a
        // byte at a time) ends within the provider's `timeout`.
        let timeout = p.step_timeout();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout);
        if config.flow == OAuthFlow::ManagedIdentity {
            // The metadata endpoint is on the machine's own link: never through a proxy
            // (HTTP_PROXY and the like would send the request, and IMDS refuses
            // forwarded requests anyway).
            builder = builder.no_proxy();
        }
        let http = builder.build().unwrap_or_default();
        TokenSource {
            provider: p.name.get_ref().clone(),
            username: p
                .username()
                .map(String::from)
                .or_else(|| config.subject.clone()),
            endpoints: Endpoints::of(p),
            config,
            secrets,
            http,
            timeout,
            state: Mutex::new(State::default()),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// How long one request to the identity platform may take (the provider's `timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
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
                ages_out_ms: self.endpoints.ages_out_ms(g.last_used_ms, g.renewed_ms),
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
    /// nothing was due (or the platform refused the sign-in: that waits for a new login).
    pub async fn keep_alive(&self) -> Option<Result<(), TokenError>> {
        if !self.flow().is_delegated() {
            return None;
        }
        let sign_in = self.sign_in().ok().flatten()?;
        // A refused sign-in waits for a new login; asking again changes nothing.
        if sign_in.refused.is_some()
            || now_ms().saturating_sub(sign_in.last_used_ms) < crate::time::duration_ms(KEEP_ALIVE)
        {
            return None;
        }
        let _one_at_a_time = self.fetch.lock().await;
        Some(self.fetch_and_keep().await.map(|_| ()))
    }

    /// The XOAUTH2 user when the provider sets none (a service account's `subject`).
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// POSTs a form to an endpoint of the identity platform; the answer's status and body.
    async fn post_form(
        &self,
        url: &str,
        form: &[(&str, String)],
    ) -> Result<(u16, String), reqwest::Error> {
        answer(self.http.post(url).form(form)).await
    }
}

/// Sends a request to an identity endpoint: the answer's status and body.
async fn answer(req: reqwest::RequestBuilder) -> Result<(u16, String), reqwest::Error> {
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}
