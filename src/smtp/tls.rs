//! STARTTLS on the listener: the rustls server configuration (ring provider) from the
//! PEM files of `smtp.tls_cert` and `smtp.tls_key`.

use std::path::Path;
use std::sync::Arc;

/// Builds the TLS acceptor; the error names the file and what is wrong with it.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    // (the SMTP listener's keys are named without their section, as before)
    let (chain, key) = crate::pem::chain_and_key("", cert, key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("tls_cert/tls_key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
