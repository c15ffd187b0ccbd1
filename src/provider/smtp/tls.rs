//! Upstream TLS trust (SPEC "Upstream TLS trust"): mailgate does the TLS handshake itself
//! with rustls (ring) and hands the encrypted stream to lettre, so it decides what is
//! trusted and can say why a certificate was refused.
//!
//! A server certificate is accepted when:
//! - `tls_fingerprint` is set: its SHA-256 matches the pin (whoever issued it); nothing
//!   else is accepted then;
//! - else it is exactly a certificate in `ca_file` (a self-signed server certificate, as
//!   `openssl req -x509` makes it with `CA:TRUE`, is trusted as that certificate);
//! - else it verifies (chain, validity, name) against the system roots plus `ca_file`.
//!
//! A refusal is recorded with its cause, the certificate's subject, issuer and SHA-256, and
//! a fix for that cause; there is no "verify = off".

use std::io;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// What was learnt of the server's certificate during a handshake.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Why it was refused, with the fix (None: accepted, or not reached).
    pub refusal: Option<String>,
    /// Subject, issuer and not-after of the end-entity certificate.
    pub summary: Option<String>,
}

/// The verifier of one provider.
#[derive(Debug)]
pub struct Trust {
    webpki: Arc<dyn ServerCertVerifier>,
    exact: Vec<Vec<u8>>,
    pin: Option<Vec<u8>>,
    ca_file: Option<String>,
    seen: Mutex<Seen>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// SHA-256 of a certificate, as `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Subject, issuer and validity of a certificate, for people.
fn describe(der: &[u8]) -> (String, String, String) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => (
            c.subject().to_string(),
            c.issuer().to_string(),
            c.validity().not_after.to_string(),
        ),
        Err(_) => ("(unparsable)".into(), "(unparsable)".into(), "?".into()),
    }
}

impl Trust {
    /// The verifier for `host` with the system roots, `ca_file` (PEM, read by the caller)
    /// and an optional pin.
    pub fn new(ca_pem: Option<(&str, &[u8])>, pin: Option<Vec<u8>>) -> Result<Trust, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        let mut exact = Vec::new();
        if let Some((name, pem)) = ca_pem {
            let mut found = 0;
            for c in rustls_pemfile_certs(pem).map_err(|e| format!("ca_file {name}: {e}"))? {
                exact.push(c.as_ref().to_vec());
                // A self-signed end-entity certificate may not be a valid root for webpki;
                // it is trusted as that exact certificate either way.
                let _ = roots.add(c);
                found += 1;
            }
            if found == 0 {
                return Err(format!("ca_file {name}: no PEM certificate in it"));
            }
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("TLS roots: {e}"))?;
        Ok(Trust {
            webpki,
            exact,
            pin,
            ca_file: ca_pem.map(|(n, _)| n.to_string()),
            seen: Mutex::new(Seen::default()),
            provider,
        })
    }

    /// What the last handshake learnt (and forgets it).
    pub fn take_seen(&self) -> Seen {
        self.seen
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default()
    }

    fn refuse(&self, der: &[u8], cause: &str, fix: String) -> rustls::Error {
        let (subject, issuer, until) = describe(der);
        let why = format!(
            "{cause}; certificate subject \"{subject}\", issuer \"{issuer}\", valid until {until}, SHA-256 {}. Fix: {fix}",
            fingerprint(der)
        );
        if let Ok(mut g) = self.seen.lock() {
            g.refusal = Some(why.clone());
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            io::Error::other(why),
        ))))
    }

    fn fix_for(&self, e: &CertificateError, der: &[u8]) -> (&'static str, String) {
        let pin = format!("tls_fingerprint = \"sha256:{}\"", fingerprint(der));
        let self_signed = matches!(x509_parser::parse_x509_certificate(der), Ok((_, c)) if c.subject() == c.issuer());
        match e {
            CertificateError::UnknownIssuer | CertificateError::Other(_) if self_signed => (
                "the certificate is self-signed",
                format!("put this certificate (PEM) in the provider's ca_file, or pin it with {pin}"),
            ),
            CertificateError::UnknownIssuer => (
                "the certificate's issuer is not trusted (unknown issuer)",
                format!(
                    "set ca_file to the PEM certificate of the CA that issued it{}, or pin the server certificate with {pin}",
                    self.ca_file.as_deref().map(|f| format!(" (ca_file {f} does not hold it)")).unwrap_or_default()
                ),
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                "the certificate has expired",
                "renew the server's certificate; mailgate does not accept an expired one".into(),
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                "the certificate is not valid yet",
                "check the clocks of this machine and the server, or the certificate's start date".into(),
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => (
                "the certificate is not issued for this host name (name mismatch)",
                "set the provider's host to a name the certificate lists, or issue a certificate for this name".into(),
            ),
            _ => (
                "the certificate could not be verified",
                format!("check the server's certificate chain; or pin it with {pin}"),
            ),
        }
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let der = end_entity.as_ref();
        let (subject, issuer, until) = describe(der);
        if let Ok(mut g) = self.seen.lock() {
            *g = Seen {
                refusal: None,
                summary: Some(format!(
                    "subject \"{subject}\", issuer \"{issuer}\", valid until {until}"
                )),
            };
        }
        if let Some(pin) = &self.pin {
            let got = ring::digest::digest(&ring::digest::SHA256, der);
            return if got.as_ref() == pin.as_slice() {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(self.refuse(
                    der,
                    "the certificate does not match tls_fingerprint (fingerprint mismatch)",
                    format!(
                        "if the server's certificate was replaced on purpose, set tls_fingerprint = \"sha256:{}\"",
                        fingerprint(der)
                    ),
                ))
            };
        }
        if self.exact.iter().any(|c| c.as_slice() == der) {
            return Ok(ServerCertVerified::assertion());
        }
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(e)) => {
                let (cause, fix) = self.fix_for(&e, der);
                Err(self.refuse(der, cause, fix))
            }
            Err(other) => Err(other),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate chain and its key, presented when the server asks.
pub type Identity = (
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Reads a client certificate chain (`cert_pem`, from `cert_name`) and its key
/// (`key_pem`); the error names what is wrong with which.
pub fn identity(cert_name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<Identity, String> {
    let certs =
        rustls_pemfile_certs(cert_pem).map_err(|e| format!("tls_client_cert {cert_name}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_client_cert {cert_name}: no PEM certificate in it"
        ));
    }
    Ok((certs, private_key(key_pem)?))
}

/// A client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
pub fn private_key(key_pem: &[u8]) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls_client_key: not a PEM private key: {e}"))
}

/// Subject, issuer and end of validity of the first certificate of `pem`, for people
/// (`mailgate verify`, the `sign-in-expiring` alert).
pub fn summary_of(pem: &[u8]) -> Option<(String, String, String)> {
    let der = rustls_pemfile_certs(pem).ok()?.into_iter().next()?;
    Some(describe(der.as_ref()))
}

/// The rustls client configuration of a provider, with its client certificate when it
/// has one.
pub fn client_config(
    trust: Arc<Trust>,
    identity: Option<Identity>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = trust.provider.clone();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(trust);
    let config = match identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("tls_client_cert and its key: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// What a TLS alert about certificates means for the client certificate, when the
/// server sent one (`error` is the failure's text): the sentence, with its fix.
pub fn client_cert_refusal(error: &str, presented: bool) -> Option<String> {
    const ABOUT_CERTIFICATES: [&str; 6] = [
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "CertificateUnknown",
        "UnsupportedCertificate",
        "CertificateExpired",
    ];
    let alert = ABOUT_CERTIFICATES.iter().find(|a| error.contains(*a))?;
    Some(if presented {
        format!(
            "the server refused mailgate's client certificate (TLS alert {alert}). Fix: present a certificate the server trusts (for an Exchange Online connector, one issued by a public CA whose subject is a domain the connector names) in tls_client_cert, with its key"
        )
    } else {
        format!(
            "the server asks for a client certificate and mailgate presented none (TLS alert {alert}). Fix: set tls_client_cert and tls_client_key_file on this provider"
        )
    })
}
