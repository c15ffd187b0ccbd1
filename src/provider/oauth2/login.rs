//! `mailgate oauth2 login`: the delegated sign-ins. The device authorization grant
//! (RFC 8628) and the authorization code grant with PKCE (RFC 6749, RFC 7636) redirected
//! to a listener on 127.0.0.1; the refresh token they yield is sealed in the secrets file.
//! Errors are the platform's own words; no code or token is ever printed.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;

use super::signin::{self, SignIn};
use super::{ErrorResponse, TokenResponse, TokenSource, error_chain, not_a_token, platform_words};
use crate::config::Issuer;
use crate::secrets::Secret;
use crate::time::now_ms;

/// Why a sign-in did not complete: the platform's words, or what stopped it here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoginError(pub String);

impl From<String> for LoginError {
    fn from(s: String) -> LoginError {
        LoginError(s)
    }
}

impl From<&str> for LoginError {
    fn from(s: &str) -> LoginError {
        LoginError(s.to_string())
    }
}

/// What the device authorization endpoint answered.
#[derive(Deserialize)]
pub struct DeviceAuthorization {
    device_code: String,
    /// The code the person types in.
    pub user_code: String,
    /// Where they type it (Google says `verification_url`).
    #[serde(alias = "verification_url")]
    pub verification_uri: String,
    /// The platform's sentence for the person.
    #[serde(default)]
    pub message: Option<String>,
    /// How long the code is valid (seconds).
    #[serde(default = "fifteen_minutes")]
    pub expires_in: u64,
    /// How often to poll (seconds).
    #[serde(default = "five_seconds")]
    pub interval: u64,
}

fn fifteen_minutes() -> u64 {
    900
}

fn five_seconds() -> u64 {
    5
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A browser sign-in in progress: the URL to open and what checks its answer.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    /// The authorization URL.
    pub url: String,
    /// Where the browser is sent back.
    pub redirect_uri: String,
    state: String,
    verifier: Secret,
}

impl AuthorizationRequest {
    /// The `state` the answer must carry.
    pub fn state(&self) -> &str {
        &self.state
    }
}

fn random_b64(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let _ = getrandom::fill(&mut b);
    B64URL.encode(b)
}

/// What the loopback listener got.
#[derive(Debug)]
enum Redirect {
    Code(Secret),
    Refused(String),
}

/// The query of a redirect to the loopback, as the listener or a pasted address gives it.
fn redirect_of(query: &[(String, String)], state: &str) -> Result<Redirect, LoginError> {
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("state") != Some(state) {
        return Err(
            "the answer does not carry this sign-in's state (an old or forged redirect); ignored"
                .into(),
        );
    }
    if let Some(error) = get("error") {
        let words = get("error_description").unwrap_or("");
        return Ok(Redirect::Refused(if words.is_empty() {
            error.to_string()
        } else {
            format!("{error}: {words}")
        }));
    }
    match get("code") {
        Some(c) if !c.is_empty() => Ok(Redirect::Code(Secret::new(c))),
        _ => Err("the redirect carries neither a code nor an error".into()),
    }
}

impl TokenSource {
    /// Starts a device sign-in (RFC 8628 section 3.1).
    pub async fn device_authorization(&self) -> Result<DeviceAuthorization, LoginError> {
        let url = self.endpoints.device_code_url.clone().ok_or(
            "this provider's issuer has no device authorization endpoint (set device_code_url)",
        )?;
        let body = self
            .accepted(
                "device authorization",
                &url,
                &[
                    ("client_id", self.client_id()),
                    ("scope", self.endpoints.scope.clone()),
                ],
            )
            .await?;
        serde_json::from_str(&body).map_err(|e| {
            LoginError(format!(
                "the device authorization endpoint answered something unexpected: {e}"
            ))
        })
    }

    /// Polls the token endpoint until the person has signed in (RFC 8628 section 3.4),
    /// at the given interval plus 5 seconds per `slow_down`; stops at `access_denied`,
    /// `expired_token`, any other error, or when the code expires. `on_slow_down` hears
    /// each new interval.
    pub async fn poll_device(
        &self,
        auth: &DeviceAuthorization,
        mut on_slow_down: impl FnMut(Duration),
    ) -> Result<TokenResponse, LoginError> {
        let deadline = Instant::now() + Duration::from_secs(auth.expires_in.max(1));
        let mut interval = Duration::from_secs(auth.interval.max(1));
        let form = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:device_code".to_string(),
            ),
            ("client_id", self.client_id()),
            ("device_code", auth.device_code.clone()),
        ];
        loop {
            if Instant::now() + interval > deadline {
                return Err(
                    "expired_token: the code expired before the sign-in was completed; run the command again".into(),
                );
            }
            tokio::time::sleep(interval).await;
            let (status, body) = match self.post_form(&self.endpoints.token_url, &form).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "token endpoint unreachable while waiting for the sign-in; trying again");
                    continue;
                }
            };
            if (200..300).contains(&status) {
                return serde_json::from_str(&body).map_err(|e| LoginError(not_a_token(&e)));
            }
            let e: ErrorResponse = serde_json::from_str(&body).unwrap_or_default();
            match e.error.as_str() {
                "authorization_pending" => {}
                "slow_down" => {
                    interval += Duration::from_secs(5);
                    on_slow_down(interval);
                }
                _ => return Err(platform_words(status, &body).into()),
            }
        }
    }

    /// The authorization URL of a browser sign-in redirected to `redirect_uri`, with a
    /// fresh `state` and PKCE S256 challenge.
    pub fn authorization_request(
        &self,
        redirect_uri: &str,
    ) -> Result<AuthorizationRequest, LoginError> {
        let base = self
            .endpoints
            .authorize_url
            .clone()
            .ok_or("this provider has no authorization endpoint (set authorize_url)")?;
        let verifier = random_b64(32);
        let challenge = B64URL.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        let state = random_b64(16);
        let mut params: Vec<(&str, String)> = vec![
            ("client_id", self.client_id()),
            ("response_type", "code".into()),
            ("redirect_uri", redirect_uri.into()),
            ("scope", self.endpoints.scope.clone()),
            ("state", state.clone()),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256".into()),
        ];
        if self.endpoints.issuer == Issuer::Google {
            // Without these Google issues no refresh token.
            params.push(("access_type", "offline".into()));
            params.push(("prompt", "consent".into()));
        }
        if let Some(u) = &self.username {
            params.push(("login_hint", u.clone()));
        }
        let url = reqwest::Url::parse_with_params(&base, &params)
            .map_err(|e| format!("authorize_url {base}: {e}"))?;
        Ok(AuthorizationRequest {
            url: url.to_string(),
            redirect_uri: redirect_uri.to_string(),
            state,
            verifier: Secret::new(verifier),
        })
    }

    /// Exchanges the authorization code (with the PKCE verifier) for tokens.
    async fn exchange_code(
        &self,
        req: &AuthorizationRequest,
        code: &Secret,
    ) -> Result<TokenResponse, LoginError> {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "authorization_code".into()),
            ("client_id", self.client_id()),
            ("code", code.expose().to_string()),
            ("redirect_uri", req.redirect_uri.clone()),
            ("code_verifier", req.verifier.expose().to_string()),
        ];
        if let Some(secret) = self.client_secret().map_err(|e| e.reply)? {
            form.push(("client_secret", secret.expose().to_string()));
        }
        let body = self
            .accepted("token", &self.endpoints.token_url, &form)
            .await?;
        serde_json::from_str(&body).map_err(|e| LoginError(not_a_token(&e)))
    }

    /// Waits for the browser's redirect on `listener` (or an address pasted into
    /// `pasted`), for at most `wait`, then exchanges its code. The browser is told the
    /// outcome in plain text.
    pub async fn complete_authorization(
        &self,
        req: &AuthorizationRequest,
        listener: tokio::net::TcpListener,
        mut pasted: tokio::sync::mpsc::Receiver<String>,
        wait: Duration,
    ) -> Result<TokenResponse, LoginError> {
        use axum::extract::{Query, State};
        type Answer = tokio::sync::mpsc::Sender<Redirect>;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Redirect>(1);
        let state = std::sync::Arc::new((req.state.clone(), tx));
        async fn back(
            State(s): State<std::sync::Arc<(String, Answer)>>,
            Query(q): Query<Vec<(String, String)>>,
        ) -> (axum::http::StatusCode, String) {
            match redirect_of(&q, &s.0) {
                Ok(r) => {
                    let refused = matches!(r, Redirect::Refused(_));
                    let _ = s.1.send(r).await;
                    if refused {
                        (
                            axum::http::StatusCode::OK,
                            "mailgate: the sign-in was refused; the terminal says why.\n".into(),
                        )
                    } else {
                        (
                            axum::http::StatusCode::OK,
                            "mailgate: signed in. You can close this window.\n".into(),
                        )
                    }
                }
                Err(why) => (
                    axum::http::StatusCode::BAD_REQUEST,
                    format!("mailgate: {why}\n"),
                ),
            }
        }
        let app = axum::Router::new()
            .route("/", axum::routing::get(back))
            .with_state(state);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        let outcome = loop {
            tokio::select! {
                r = rx.recv() => break r.ok_or_else(|| "the loopback listener stopped".to_string()),
                Some(line) = pasted.recv() => {
                    let Ok(url) = reqwest::Url::parse(line.trim()) else { continue };
                    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                    match redirect_of(&q, &req.state) {
                        Ok(r) => break Ok(r),
                        Err(why) => eprintln!("{why}"),
                    }
                }
                () = &mut deadline => break Err(format!("no sign-in arrived within {} minutes; run the command again", wait.as_secs() / 60)),
            }
        };
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        self.redeem(req, outcome?).await
    }

    /// The end of a browser sign-in whose redirect arrived elsewhere (the pages' callback):
    /// checks the query's `state` against `req`, then exchanges the code.
    pub async fn finish_authorization(
        &self,
        req: &AuthorizationRequest,
        query: &[(String, String)],
    ) -> Result<TokenResponse, LoginError> {
        self.redeem(req, redirect_of(query, &req.state)?).await
    }

    /// The tokens for a redirect's code, or the platform's refusal.
    async fn redeem(
        &self,
        req: &AuthorizationRequest,
        redirect: Redirect,
    ) -> Result<TokenResponse, LoginError> {
        match redirect {
            Redirect::Code(code) => self.exchange_code(req, &code).await,
            Redirect::Refused(words) => Err(format!("the sign-in was refused: {words}").into()),
        }
    }

    /// Stores a new sign-in (replacing any before it) and returns it.
    pub fn keep_sign_in(&self, resp: &TokenResponse) -> Result<SignIn, LoginError> {
        let Some(refresh_token) = resp.refresh_token.clone() else {
            return Err(match self.endpoints.issuer {
                Issuer::Microsoft => "the identity platform issued no refresh token: the scope must include offline_access".into(),
                Issuer::Google => "Google issued no refresh token: remove mailgate from the account's third-party access (Google Account > Security) and sign in again".into(),
            });
        };
        let now = now_ms();
        let sign_in = SignIn {
            refresh_token,
            previous: None,
            account: resp.account().or_else(|| self.username.clone()),
            signed_in_ms: now,
            last_used_ms: now,
            renewed_ms: now,
            refused: None,
        };
        let held = self.secrets.lock().map_err(|e| e.to_string())?;
        signin::save(&self.secrets, &held, &self.provider, &sign_in).map_err(|e| e.to_string())?;
        self.reset();
        Ok(sign_in)
    }

    /// Forgets the stored sign-in; false when there was none.
    pub fn forget_sign_in(&self) -> Result<bool, LoginError> {
        self.reset();
        signin::forget(&self.secrets, &self.provider).map_err(|e| LoginError(e.to_string()))
    }

    /// Revokes the stored refresh token at the platform (RFC 7009), where it has a
    /// revocation endpoint (Google); `Ok(false)` when it has none or nobody signed in.
    pub async fn revoke_sign_in(&self) -> Result<bool, LoginError> {
        let Some(url) = self.endpoints.revoke_url.clone() else {
            return Ok(false);
        };
        let Some(sign_in) = self.sign_in().map_err(|e| LoginError(e.to_string()))? else {
            return Ok(false);
        };
        self.accepted(
            "revocation",
            &url,
            &[
                ("token", sign_in.refresh_token.clone()),
                ("token_type_hint", "refresh_token".into()),
            ],
        )
        .await?;
        Ok(true)
    }

    /// POSTs a form to the `what` endpoint at `url`: the body of a success answer, else
    /// what stopped it in the platform's words.
    async fn accepted(
        &self,
        what: &str,
        url: &str,
        form: &[(&str, String)],
    ) -> Result<String, LoginError> {
        let (status, body) = self.post_form(url, form).await.map_err(|e| {
            LoginError(format!(
                "{what} endpoint {url} unreachable: {}",
                error_chain(&e)
            ))
        })?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(LoginError(format!(
                "the {what} endpoint refused: {}",
                platform_words(status, &body)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_redirect_needs_this_sign_ins_state() {
        assert!(redirect_of(&q(&[("code", "c"), ("state", "other")]), "s").is_err());
        assert!(redirect_of(&q(&[("code", "c")]), "s").is_err());
        assert!(matches!(
            redirect_of(&q(&[("code", "c"), ("state", "s")]), "s"),
            Ok(Redirect::Code(_))
        ));
        match redirect_of(
            &q(&[
                ("error", "access_denied"),
                ("error_description", "The user said no"),
                ("state", "s"),
            ]),
            "s",
        ) {
            Ok(Redirect::Refused(w)) => assert_eq!(w, "access_denied: The user said no"),
            other => panic!("{other:?}"),
        }
    }
}
