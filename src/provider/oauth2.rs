//! OAuth2 for upstreams (`[provider.oauth2]`): the client credentials grant against the
//! Microsoft identity platform, with a client secret or a client certificate (a JWT
//! client assertion signed RS256). One token per provider, shared by all its
//! connections, cached until five minutes before it expires, dropped when the upstream
//! rejects it. Token endpoint failures become diagnoses; the mail is deferred.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;

use super::diagnosis::Code;
use crate::config::{OAuth2Config, ProviderKind};
use crate::secrets::Secret;
use crate::time::now_ms;

/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// The Microsoft identity platform token endpoint of a tenant.
pub fn default_token_url(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
}

/// The default scope of a provider kind.
pub fn default_scope(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Graph => "https://graph.microsoft.com/.default",
        _ => "https://outlook.office365.com/.default",
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// Diagnosis code.
    pub code: Code,
    /// The endpoint's answer or the local error (never the secret).
    pub reply: String,
}

#[derive(Debug, Clone)]
struct Token {
    value: Secret,
    expires_at: Instant,
    expires_at_ms: u64,
}

/// What `/status` shows of a provider's token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStatus {
    /// A valid token is held.
    pub valid: bool,
    /// When it expires (ms since the epoch).
    pub expires_at_ms: Option<u64>,
    /// The last token error.
    pub last_error: Option<String>,
    /// Tokens fetched since start.
    pub fetched: u64,
}

#[derive(Debug, Default)]
struct State {
    token: Option<Token>,
    last_error: Option<String>,
    fetched: u64,
}

/// The token source of one provider.
#[derive(Debug)]
pub struct TokenSource {
    config: OAuth2Config,
    token_url: String,
    scope: String,
    http: reqwest::Client,
    state: Mutex<State>,
    /// Serialises fetches so concurrent connections share one request.
    fetch: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// The diagnosis of a token endpoint error.
pub fn classify_token_error(status: u16, body: &str) -> TokenError {
    let e: ErrorResponse = serde_json::from_str(body).unwrap_or_default();
    let aadsts =
        |n: u64| e.error_codes.contains(&n) || e.error_description.contains(&format!("AADSTS{n}"));
    let consent = [65001u64, 650057, 650052, 500011, 7000112, 50020]
        .iter()
        .any(|n| aadsts(*n))
        || e.error_description.to_ascii_lowercase().contains("consent");
    let code = if consent {
        Code::OAuthConsentRequired
    } else if matches!(e.error.as_str(), "invalid_client" | "unauthorized_client")
        || [7000215u64, 7000222, 700016, 700027, 90002]
            .iter()
            .any(|n| aadsts(*n))
    {
        Code::OAuthInvalidClient
    } else if status >= 500 {
        Code::OAuthEndpointUnreachable
    } else {
        Code::OAuthInvalidClient
    };
    let first_line = e.error_description.lines().next().unwrap_or("").to_string();
    TokenError {
        code,
        reply: if e.error.is_empty() {
            format!(
                "token endpoint answered HTTP {status}: {}",
                body.chars().take(300).collect::<String>()
            )
        } else {
            format!(
                "token endpoint answered HTTP {status}: {}: {first_line}",
                e.error
            )
        },
    }
}

fn local(code: Code, reply: impl Into<String>) -> TokenError {
    TokenError {
        code,
        reply: reply.into(),
    }
}

impl TokenSource {
    /// The token source of a provider's `[provider.oauth2]` table.
    pub fn new(config: &OAuth2Config, kind: ProviderKind) -> TokenSource {
        let token_url = config
            .token_url
            .clone()
            .unwrap_or_else(|| default_token_url(config.tenant_id.as_deref().unwrap_or("common")));
        let scope = config
            .scope
            .clone()
            .unwrap_or_else(|| default_scope(kind).to_string());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        TokenSource {
            config: config.clone(),
            token_url,
            scope,
            http,
            state: Mutex::new(State::default()),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// What `/status` shows.
    pub fn status(&self) -> TokenStatus {
        let Ok(s) = self.state.lock() else {
            return TokenStatus::default();
        };
        let valid = s
            .token
            .as_ref()
            .is_some_and(|t| t.expires_at > Instant::now());
        TokenStatus {
            valid,
            expires_at_ms: s.token.as_ref().filter(|_| valid).map(|t| t.expires_at_ms),
            last_error: s.last_error.clone(),
            fetched: s.fetched,
        }
    }

    fn cached(&self) -> Option<Secret> {
        let s = self.state.lock().ok()?;
        s.token
            .as_ref()
            .filter(|t| t.expires_at > Instant::now() + RENEW_BEFORE)
            .map(|t| t.value.clone())
    }

    /// Forgets the token (the upstream rejected it).
    pub fn invalidate(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.token = None;
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

    async fn fetch_token(&self) -> Result<Token, TokenError> {
        let client_id = self.config.client_id.clone().unwrap_or_default();
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        match (
            self.client_secret()?,
            &self.config.certificate_file,
            &self.config.private_key_file,
        ) {
            (Some(secret), _, _) => form.push(("client_secret", secret.expose().to_string())),
            (None, Some(cert), Some(key)) => {
                let jwt = client_assertion(cert, key, &client_id, &self.token_url, now_ms())?;
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
        let started = Instant::now();
        let resp = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                local(
                    Code::OAuthEndpointUnreachable,
                    format!(
                        "token endpoint {} unreachable: {}",
                        self.token_url,
                        without_url(&e)
                    ),
                )
            })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(classify_token_error(status, &body));
        }
        let t: TokenResponse = serde_json::from_str(&body).map_err(|e| {
            local(
                Code::OAuthEndpointUnreachable,
                format!("token endpoint answered something that is not a token: {e}"),
            )
        })?;
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3600));
        tracing::info!(token_url = %self.token_url, expires_in = lifetime.as_secs(), "OAuth2 token acquired");
        Ok(Token {
            value: Secret::new(t.access_token),
            expires_at: started + lifetime,
            expires_at_ms: now_ms() + crate::time::duration_ms(lifetime),
        })
    }
}

/// A reqwest error's text without the URL's query (which never holds secrets here, but
/// keep messages short).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// The signed JWT client assertion (RFC 7523) of Microsoft's certificate credentials:
/// RS256, `x5t` and `x5t#S256` thumbprints of the certificate, `aud` the token URL, `iss`
/// and `sub` the client id, valid ten minutes.
pub fn client_assertion(
    cert_file: &Path,
    key_file: &Path,
    client_id: &str,
    token_url: &str,
    now: u64,
) -> Result<String, TokenError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cfg =
        |what: &str, e: &dyn std::fmt::Display| local(Code::ProviderConfig, format!("{what}: {e}"));
    let cert = CertificateDer::from_pem_file(cert_file)
        .map_err(|e| cfg(&format!("certificate_file {}", cert_file.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| cfg(&format!("private_key_file {}", key_file.display()), &e))?;
    let pair = match &key {
        PrivateKeyDer::Pkcs8(k) => ring::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => ring::signature::RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => {
            return Err(local(
                Code::ProviderConfig,
                format!(
                    "private_key_file {}: an RSA key is needed (PKCS#8 or PKCS#1)",
                    key_file.display()
                ),
            ));
        }
    }
    .map_err(|e| cfg(&format!("private_key_file {}", key_file.display()), &e))?;
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref());
    let sha256 = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5t": B64URL.encode(sha1.as_ref()),
        "x5t#S256": B64URL.encode(sha256.as_ref()),
    });
    let secs = now / 1000;
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).map_err(|e| cfg("random", &e))?;
    let claims = serde_json::json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "nbf": secs,
        "iat": secs,
        "exp": secs + 600,
    });
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|e| cfg("signing the client assertion", &e))?;
    Ok(format!("{signing_input}.{}", B64URL.encode(sig)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_endpoint_errors_are_diagnosed() {
        let e = classify_token_error(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#,
        );
        assert_eq!(e.code, Code::OAuthInvalidClient);
        assert!(e.reply.contains("AADSTS7000215"));
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS65001: The user or administrator has not consented to use the application","error_codes":[65001]}"#,
        );
        assert_eq!(e.code, Code::OAuthConsentRequired);
        let e = classify_token_error(
            400,
            r#"{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named https://outlook.office365.com was not found in the tenant","error_codes":[500011]}"#,
        );
        assert_eq!(e.code, Code::OAuthConsentRequired);
        assert_eq!(
            classify_token_error(503, "busy").code,
            Code::OAuthEndpointUnreachable
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(
            default_token_url("contoso.onmicrosoft.com"),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            default_scope(ProviderKind::Smtp),
            "https://outlook.office365.com/.default"
        );
        assert_eq!(
            default_scope(ProviderKind::Graph),
            "https://graph.microsoft.com/.default"
        );
    }
}
