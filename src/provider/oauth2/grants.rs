//! The grants of a [`TokenSource`]: client credentials (a secret, or a certificate's
//! assertion), a Google service account's JWT grant, and the delegated flows' renewal
//! through the stored refresh token, under the secrets lock, rotation saved before use.

use std::time::{Duration, Instant};

use super::signin::{self, SignIn};
use super::{
    RENEW_BEFORE, Token, TokenError, TokenResponse, TokenSource, classify_token_error, error_chain,
    jwt, local, not_a_token,
};
use crate::config::OAuthFlow;
use crate::diagnosis::Code;
use crate::secrets::{Secret, SecretError, SecretsLock};
use crate::time::now_ms;

impl TokenSource {
    pub(super) fn client_secret(&self) -> Result<Option<Secret>, TokenError> {
        crate::secrets::resolve(&self.config.client_secret_source())
            .map_err(|e| local(Code::ProviderConfig, e.to_string()))
    }

    pub(super) fn client_id(&self) -> String {
        self.config.client_id.clone().unwrap_or_default()
    }

    /// POSTs a grant to the token endpoint (`url`); the answer or its diagnosis.
    pub(super) async fn post_token(
        &self,
        url: &str,
        form: &[(&str, String)],
    ) -> Result<TokenResponse, TokenError> {
        let (status, body) = self.post_form(url, form).await.map_err(|e| {
            local(
                Code::OAuthEndpointUnreachable,
                if e.is_timeout() {
                    format!(
                        "token endpoint {url}: no answer within {}",
                        crate::provider::stage::words(self.timeout())
                    )
                } else {
                    format!("token endpoint {url} unreachable: {}", error_chain(&e))
                },
            )
        })?;
        if !(200..300).contains(&status) {
            return Err(classify_token_error(
                status,
                &body,
                self.flow().is_delegated(),
            ));
        }
        serde_json::from_str(&body)
            .map_err(|e| local(Code::OAuthEndpointUnreachable, not_a_token(&e)))
    }

    pub(super) async fn fetch_token(&self) -> Result<Token, TokenError> {
        let started = Instant::now();
        let resp = match self.flow() {
            OAuthFlow::ClientCredentials => self.client_credentials().await?,
            OAuthFlow::JwtBearer => self.jwt_bearer().await?,
            OAuthFlow::DeviceCode | OAuthFlow::AuthorizationCode => self.refresh().await?,
            OAuthFlow::ManagedIdentity => self.managed_identity().await?,
            OAuthFlow::WorkloadIdentity => self.workload_identity().await?,
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
}
