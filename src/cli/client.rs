//! The CLI's way to the daemon: HTTP (HTTPS when the listener has TLS) to
//! `status.listen`, with the admin token. A daemon that does not answer is reported in one line.

use std::net::SocketAddr;

use crate::config::Config;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the status address.
    #[error("mailgate is not running at {0}")]
    NotRunning(SocketAddr),
    /// The daemon answered with an error.
    #[error("{0}")]
    Api(String),
    /// The daemon answered with a 404.
    #[error("{0}")]
    NotFound(String),
    /// Anything else on the way.
    #[error("the call to the daemon's admin API failed: {0}")]
    Http(String),
}

/// A client for one daemon.
#[derive(Debug)]
pub struct AdminClient {
    addr: SocketAddr,
    /// `https` when the status listener has TLS.
    scheme: &'static str,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// The client for the daemon of this configuration.
    pub fn new(config: &Config) -> Result<AdminClient, ClientError> {
        let token = crate::status::state::load_token(config)
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let (addr, scheme, http) = http_to(config, crate::CLI_TIMEOUT)?;
        Ok(AdminClient {
            addr,
            scheme,
            token,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_connect() {
                ClientError::NotRunning(self.addr)
            } else {
                ClientError::Http(e.to_string())
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body);
        // The daemon's own sentence, without HTTP jargon; what to do next where it helps.
        match status {
            reqwest::StatusCode::NOT_FOUND => Err(ClientError::NotFound(msg)),
            reqwest::StatusCode::UNAUTHORIZED => Err(ClientError::Api(format!(
                "the daemon refused the admin token ({msg}); check status.token_file"
            ))),
            s if s.is_server_error() => Err(ClientError::Api(format!(
                "{msg} (the daemon could not do it; its log says more)"
            ))),
            _ => Err(ClientError::Api(msg)),
        }
    }

    /// POST JSON to a path and decode the JSON answer.
    pub async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        self.json(self.http.post(self.url(path)).json(body)).await
    }

    /// Sends a request and decodes its JSON answer.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// GET a path's raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// GET a record with `?wait=`: the call may take `wait` (the daemon caps it at 10
    /// minutes) plus the usual time.
    pub async fn get_json_waiting<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        wait: std::time::Duration,
    ) -> Result<T, ClientError> {
        let wait_s = format!("{}ms", wait.as_millis());
        self.json(
            self.http
                .get(self.url(path))
                .query(&[("wait", wait_s)])
                .timeout(wait.min(std::time::Duration::from_secs(600)) + crate::CLI_TIMEOUT),
        )
        .await
    }

    /// GET a path and decode its JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.json(self.http.get(self.url(path)).query(query)).await
    }
}

/// The status listener of `config` and an HTTP client for it (HTTPS trusting the
/// daemon's own certificate when the listener has TLS), each call within `timeout`.
fn http_to(
    config: &Config,
    timeout: std::time::Duration,
) -> Result<(SocketAddr, &'static str, reqwest::Client), ClientError> {
    let addr = config
        .status
        .listen_addr()
        .ok_or_else(|| ClientError::Http("invalid status.listen".into()))?;
    let mut builder = reqwest::Client::builder().timeout(timeout).no_proxy();
    let scheme = match &config.status.tls_cert {
        Some(cert) => {
            builder = builder.use_preconfigured_tls(own_certificate(cert)?);
            "https"
        }
        None => "http",
    };
    let http = builder
        .build()
        .map_err(|e| ClientError::Http(e.to_string()))?;
    Ok((addr, scheme, http))
}

/// How long `mailgate health` waits for `/healthz`.
pub const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `mailgate health`: whether the daemon's `/healthz` says ok within
/// [`HEALTH_TIMEOUT`] (no token: `/healthz` is open); the reason when not.
pub async fn health(config: &Config) -> Result<(), String> {
    let (addr, scheme, http) = http_to(config, HEALTH_TIMEOUT).map_err(|e| e.to_string())?;
    let resp = http
        .get(format!("{scheme}://{addr}/healthz"))
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() {
                ClientError::NotRunning(addr).to_string()
            } else if e.is_timeout() {
                format!("no answer from {scheme}://{addr}/healthz within 5 s")
            } else {
                format!("{scheme}://{addr}/healthz: {e}")
            }
        })?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body = crate::text::clipped(body.trim(), 300);
    if status.is_success() && body == "ok" {
        Ok(())
    } else {
        Err(format!("/healthz answered {}: {body}", status.as_u16()))
    }
}

/// A TLS client that trusts exactly the daemon's own certificate (the first of
/// `status.tls_cert`), whatever name it carries: the CLI talks to the listener of its
/// own configuration, often by an address its certificate does not name. A certificate
/// file the CLI cannot read leaves the system roots.
fn own_certificate(cert: &std::path::Path) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pin = CertificateDer::pem_file_iter(cert)
        .ok()
        .and_then(|mut certs| certs.next())
        .and_then(Result::ok)
        .map(|der| {
            ring::digest::digest(&ring::digest::SHA256, der.as_ref())
                .as_ref()
                .to_vec()
        });
    let trust = crate::provider::smtp::tls::Trust::new(None, pin).map_err(ClientError::Http)?;
    let config = crate::provider::smtp::tls::client_config(std::sync::Arc::new(trust), None)
        .map_err(ClientError::Http)?;
    Ok(std::sync::Arc::unwrap_or_clone(config))
}
