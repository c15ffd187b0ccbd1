//! The secretless grants (SPEC "flow = managed-identity | workload-identity"): a managed
//! identity's token from Azure's instance metadata endpoint (or App Service's
//! `IDENTITY_ENDPOINT`), and workload identity federation, whose client assertion is the
//! service-account token Kubernetes projects into the pod, re-read for every request
//! because it rotates. Every request is bounded by the provider's `timeout`; each way it
//! can fail says which step (endpoint unreachable, no identity assigned, token file
//! missing or expired) as `identity-unavailable`.

use std::path::PathBuf;

use serde::Deserialize;

use super::{TokenError, TokenResponse, TokenSource, classify_token_error, error_chain, local};
use crate::diagnosis::Code;
use crate::time::now_ms;

/// Azure's instance metadata service (IMDS) token endpoint, on every Azure VM.
pub const IMDS_TOKEN_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// The IMDS API version asked for.
const IMDS_API_VERSION: &str = "2018-02-01";
/// App Service's (and Functions') identity API version.
const APP_SERVICE_API_VERSION: &str = "2019-08-01";

/// What a managed identity endpoint answers: IMDS gives `expires_in` (seconds, as a
/// string), App Service `expires_on` (Unix seconds, a string or a number).
#[derive(Deserialize)]
struct IdentityAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

/// A number sent as a JSON number or a string of digits.
fn number(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn unavailable(reply: impl Into<String>) -> TokenError {
    local(Code::IdentityUnavailable, reply)
}

/// Which managed identity endpoint this process sees: App Service's when both
/// `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set, else the instance metadata service.
enum Endpoint {
    Imds(String),
    AppService { url: String, header: String },
}

impl TokenSource {
    fn identity_endpoint(&self) -> Endpoint {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (env("IDENTITY_ENDPOINT"), env("IDENTITY_HEADER")) {
            (Some(url), Some(header)) => Endpoint::AppService {
                url: self.config.token_url.clone().unwrap_or(url),
                header,
            },
            _ => Endpoint::Imds(
                self.config
                    .token_url
                    .clone()
                    .unwrap_or_else(|| IMDS_TOKEN_URL.to_string()),
            ),
        }
    }

    /// `flow = "managed-identity"`: a token for the provider's resource (Exchange Online
    /// or Graph of its cloud), for the system-assigned identity or the user-assigned one
    /// `client_id` names.
    pub(super) async fn managed_identity(&self) -> Result<TokenResponse, TokenError> {
        let resource = self.endpoints.resource.clone();
        let mut query = vec![("resource", resource)];
        if let Some(id) = &self.config.client_id {
            query.push(("client_id", id.clone()));
        }
        let (what, request) = match self.identity_endpoint() {
            Endpoint::Imds(url) => {
                query.push(("api-version", IMDS_API_VERSION.into()));
                let r = self.http.get(&url).header("Metadata", "true").query(&query);
                (format!("the instance metadata endpoint {url}"), r)
            }
            Endpoint::AppService { url, header } => {
                query.push(("api-version", APP_SERVICE_API_VERSION.into()));
                let r = self
                    .http
                    .get(&url)
                    .header("X-IDENTITY-HEADER", header)
                    .query(&query);
                (format!("App Service's identity endpoint {url}"), r)
            }
        };
        let (status, body) = super::answer(request).await.map_err(|e| {
            unavailable(if e.is_timeout() {
                format!(
                    "managed identity: {what} did not answer within {} (is mailgate running on an Azure VM or App Service with an identity?)",
                    crate::provider::stage::words(self.timeout())
                )
            } else {
                format!(
                    "managed identity: {what} is unreachable: {} (is mailgate running on an Azure VM or App Service with an identity?)",
                    error_chain(&e)
                )
            })
        })?;
        if !(200..300).contains(&status) {
            let words = super::platform_words(status, &body);
            let lower = body.to_ascii_lowercase();
            return Err(
                if lower.contains("identity not found") || lower.contains("no managed identity") {
                    unavailable(match &self.config.client_id {
                        Some(id) => format!(
                            "managed identity: no user-assigned identity with client_id {id} is assigned to this machine ({what} answered {words})"
                        ),
                        None => format!(
                            "managed identity: no identity is assigned to this machine ({what} answered {words})"
                        ),
                    })
                } else if status >= 500 || status == 429 || status == 404 {
                    unavailable(format!("managed identity: {what} answered {words}"))
                } else {
                    let mut e = classify_token_error(status, &body, false);
                    e.reply = format!("managed identity: {what} answered {words}");
                    e
                },
            );
        }
        let a: IdentityAnswer = serde_json::from_str(&body).map_err(|e| {
            unavailable(format!(
                "managed identity: {what} answered something that is not a token: {e}"
            ))
        })?;
        let now = now_ms() / 1000;
        let expires_in = number(a.expires_in.as_ref())
            .or_else(|| number(a.expires_on.as_ref()).map(|on| on.saturating_sub(now)));
        Ok(TokenResponse {
            access_token: a.access_token,
            expires_in,
            refresh_token: None,
            id_token: None,
        })
    }

    /// The federated token file: `federated_token_file`, else the workload identity
    /// webhook's `AZURE_FEDERATED_TOKEN_FILE`.
    fn federated_token_file(&self) -> Option<PathBuf> {
        self.config.federated_token_file.clone().or_else(|| {
            std::env::var_os("AZURE_FEDERATED_TOKEN_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// `flow = "workload-identity"`: client credentials whose client assertion is the
    /// federated token file's content as it is now.
    pub(super) async fn workload_identity(&self) -> Result<TokenResponse, TokenError> {
        let Some(path) = self.federated_token_file() else {
            return Err(unavailable(
                "workload identity: no federated_token_file in [provider.oauth2] and AZURE_FEDERATED_TOKEN_FILE is not set (the pod needs the label azure.workload.identity/use: \"true\" and a service account with the azure.workload.identity/client-id annotation)",
            ));
        };
        let shown = path.display();
        let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
            unavailable(format!(
                "workload identity: the federated token file {shown} cannot be read: {e}"
            ))
        })?;
        let assertion = text.trim();
        if assertion.is_empty() {
            return Err(unavailable(format!(
                "workload identity: the federated token file {shown} is empty"
            )));
        }
        if let Some(exp) = super::jwt_claims(assertion).and_then(|c| c.get("exp")?.as_u64())
            && exp.saturating_mul(1000) <= now_ms()
        {
            return Err(unavailable(format!(
                "workload identity: the federated token in {shown} expired at {} (kubelet renews the projected token; is the volume still mounted?)",
                crate::time::rfc3339(exp * 1000)
            )));
        }
        let client_id = self
            .config
            .client_id
            .clone()
            .or_else(|| std::env::var("AZURE_CLIENT_ID").ok().filter(|v| !v.is_empty()))
            .ok_or_else(|| {
                unavailable("workload identity: no client_id in [provider.oauth2] and AZURE_CLIENT_ID is not set (the service account's azure.workload.identity/client-id annotation sets it)")
            })?;
        let form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", client_id),
            ("scope", self.endpoints.scope.clone()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ),
            ("client_assertion", assertion.to_string()),
        ];
        self.post_token(&self.endpoints.token_url, &form).await
    }
}
