//! A leaf: a certificate chain and its private key from PEM files, as both TLS
//! listeners (SMTP's STARTTLS and the status listener's HTTPS) read them. Each error
//! names the configuration key (`what`), the file and what is wrong with it.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The chain of `cert` and the key of `key`; `what` is the key's section (`smtp.`,
/// `status.`) for the words of an error.
pub fn chain_and_key(
    what: &str,
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{what}tls_cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{what}tls_cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{what}tls_key {}: {e}", key.display()))?;
    Ok((chain, key))
}
