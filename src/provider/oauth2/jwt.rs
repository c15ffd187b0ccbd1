//! Signed JWT assertions (RFC 7523), RS256 with ring: Microsoft's certificate client
//! assertion and a Google service account's grant assertion.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;

use super::{TokenError, local};
use crate::diagnosis::Code;

fn config_error(what: &str, e: &dyn std::fmt::Display) -> TokenError {
    local(Code::ProviderConfig, format!("{what}: {e}"))
}

/// An RSA key pair from PEM (PKCS#8 or PKCS#1); `what` names it in errors.
fn rsa_key(pem: &[u8], what: &str) -> Result<ring::signature::RsaKeyPair, TokenError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| config_error(what, &e))?;
    match &key {
        PrivateKeyDer::Pkcs8(k) => ring::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => ring::signature::RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => {
            return Err(local(
                Code::ProviderConfig,
                format!("{what}: an RSA key is needed (PKCS#8 or PKCS#1)"),
            ));
        }
    }
    .map_err(|e| config_error(what, &e))
}

/// `header.claims.signature`, signed RS256.
fn sign(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    key: &ring::signature::RsaKeyPair,
) -> Result<String, TokenError> {
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|e| config_error("signing the assertion", &e))?;
    Ok(format!("{signing_input}.{}", B64URL.encode(sig)))
}

/// The signed JWT client assertion of Microsoft's certificate credentials: RS256, `x5t`
/// and `x5t#S256` thumbprints of the certificate, `aud` the token URL, `iss` and `sub` the
/// client id, valid ten minutes.
pub fn client_assertion(
    cert_file: &Path,
    key_file: &Path,
    client_id: &str,
    token_url: &str,
    now: u64,
) -> Result<String, TokenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::from_pem_file(cert_file)
        .map_err(|e| config_error(&format!("certificate_file {}", cert_file.display()), &e))?;
    let what = format!("private_key_file {}", key_file.display());
    let pem = std::fs::read(key_file).map_err(|e| config_error(&what, &e))?;
    let key = rsa_key(&pem, &what)?;
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
    getrandom::fill(&mut jti).map_err(|e| config_error("random", &e))?;
    let claims = serde_json::json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "nbf": secs,
        "iat": secs,
        "exp": secs + 600,
    });
    sign(&header, &claims, &key)
}

/// The fields of a Google service account key file that a grant needs.
#[derive(Deserialize)]
pub struct ServiceAccount {
    /// `service_account`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The account's address: the assertion's `iss`.
    pub client_email: String,
    /// The RSA key (PEM, PKCS#8).
    pub private_key: String,
    /// The key's id: the header's `kid`.
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// The token endpoint the key belongs to.
    #[serde(default)]
    pub token_uri: Option<String>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads a service account key file (the JSON Google Cloud offers for download).
    pub fn read(path: &Path) -> Result<ServiceAccount, TokenError> {
        let what = format!("service_account_file {}", path.display());
        let text = std::fs::read(path).map_err(|e| config_error(&what, &e))?;
        let sa: ServiceAccount = serde_json::from_slice(&text).map_err(|e| {
            config_error(
                &what,
                &format!("not a service account key (JSON with client_email and private_key): {e}"),
            )
        })?;
        if !sa.kind.is_empty() && sa.kind != "service_account" {
            return Err(local(
                Code::ProviderConfig,
                format!(
                    "{what}: is a {:?} key, not a service account key (type \"service_account\")",
                    sa.kind
                ),
            ));
        }
        Ok(sa)
    }

    /// The grant assertion (RFC 7523 section 2.1, Google's "Using OAuth 2.0 for
    /// Server to Server Applications"): `iss` the service account, `sub` the mailbox it
    /// acts for, `aud` the token endpoint, `scope`, valid one hour.
    pub fn assertion(
        &self,
        subject: &str,
        token_url: &str,
        scope: &str,
        now: u64,
    ) -> Result<String, TokenError> {
        let key = rsa_key(
            self.private_key.as_bytes(),
            "service_account_file private_key",
        )?;
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let secs = now / 1000;
        let claims = serde_json::json!({
            "iss": self.client_email,
            "sub": subject,
            "aud": token_url,
            "scope": scope,
            "iat": secs,
            "exp": secs + 3600,
        });
        sign(&header, &claims, &key)
    }
}
