//! Upstream TLS trust against a real TLS upstream, certificates made at test time (rcgen,
//! and openssl the way administrators make a self-signed one): each cause of a refusal is
//! named with the certificate's subject, issuer and SHA-256 and a fix for that cause; a
//! self-signed certificate in ca_file and a pinned fingerprint are trusted.

mod common;

use std::process::Command;

use common::upstream::{Script, TestCa, Upstream, server_tls};
use common::{TestEnv, bin};
use rcgen::{CertificateParams, KeyPair};

async fn upstream(cert: &str, key: &str) -> Upstream {
    Upstream::start(Script {
        starttls: true,
        tls: Some(server_tls(cert, key)),
        ..Script::default()
    })
    .await
}

/// `mailgate verify --provider up` against `up` with these provider lines.
async fn verify(up: &Upstream, extra: &str) -> (i32, String) {
    let env = TestEnv::new(
        "",
        &format!(
            "[[provider]]\nname = \"up\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n{extra}\n",
            up.addr.port()
        ),
    );
    let cfg = env.config_path.to_str().unwrap().to_string();
    let o = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(["--config", &cfg, "verify", "--provider", "up"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    drop(env);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A certificate for 127.0.0.1 from `ca` with its own validity.
fn issued(
    ca_params: &CertificateParams,
    ca_key: &KeyPair,
    names: &[&str],
    from: (i32, u8, u8),
    to: (i32, u8, u8),
) -> (String, String) {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "relay.internal");
    p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    let key = KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_params(ca_params, ca_key);
    let cert = p.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Names, validity from and to, the cause and the fix expected.
type Case<'a> = (
    &'a [&'a str],
    (i32, u8, u8),
    (i32, u8, u8),
    &'a str,
    &'a str,
);

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_made_with_openssl_is_trusted_in_ca_file() {
    if !common::have("openssl") {
        common::skip("openssl is not installed (.ci/run installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let _ok = common::succeeded(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=relay.internal",
            ])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&k)
            .arg("-out")
            .arg(&c),
    );
    let (cert, key) = (
        std::fs::read_to_string(&c).unwrap(),
        std::fs::read_to_string(&k).unwrap(),
    );
    assert!(
        String::from_utf8_lossy(
            &Command::new("openssl")
                .args(["x509", "-noout", "-text", "-in"])
                .arg(&c)
                .output()
                .unwrap()
                .stdout
        )
        .contains("CA:TRUE")
    );
    let up = upstream(&cert, &key).await;

    // Not in ca_file: refused as self-signed, with its fingerprint and both fixes.
    let (code, out) = verify(&up, "").await;
    assert_eq!(code, 1, "{out}");
    let fp = mailgate::provider::smtp::tls::fingerprint(&der(&cert));
    common::assert_has(
        &out,
        &[
            "the certificate is self-signed",
            "subject \"CN=relay.internal\", issuer \"CN=relay.internal\"",
        ],
    );
    assert!(out.contains(&format!("SHA-256 {fp}")), "{out}");
    assert!(
        out.contains("put this certificate (PEM) in the provider's ca_file")
            && out.contains(&format!("tls_fingerprint = \"sha256:{fp}\"")),
        "{out}"
    );
    assert!(out.contains("diagnosis: tls-certificate"), "{out}");
    assert!(!out.contains("CaUsedAsEndEntity"), "{out}");

    // In ca_file: trusted as that exact certificate.
    let (code, out) = verify(&up, &format!("ca_file = \"{}\"", c.display())).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("connected; STARTTLS, TLS 1."), "{out}");

    // Pinned instead: trusted too; a wrong pin is a fingerprint mismatch.
    let (code, out) = verify(
        &up,
        &format!("tls_fingerprint = \"sha256:{}\"", fp.to_lowercase()),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let wrong = "00".repeat(32);
    let (code, out) = verify(&up, &format!("tls_fingerprint = \"sha256:{wrong}\"")).await;
    assert_eq!(code, 1);
    assert!(out.contains("fingerprint mismatch"), "{out}");
    assert!(
        out.contains(&format!("set tls_fingerprint = \"sha256:{fp}\"")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cause_of_a_refusal_is_named_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_p, ca_k, ca_pem) = ca("Contoso Internal CA");
    let ca_file = write(dir.path(), "ca.pem", &ca_pem);
    let with_ca = format!("ca_file = \"{ca_file}\"");
    let cases: [Case; 3] = [
        (
            &["127.0.0.1"],
            (2020, 1, 1),
            (2021, 1, 1),
            "the certificate has expired",
            "renew the server's certificate",
        ),
        (
            &["127.0.0.1"],
            (2090, 1, 1),
            (2091, 1, 1),
            "the certificate is not valid yet",
            "check the clocks",
        ),
        (
            &["other.example"],
            (2024, 1, 1),
            (2090, 1, 1),
            "name mismatch",
            "set the provider's host to a name the certificate lists",
        ),
    ];
    for (names, from, to, cause, fix) in cases {
        let (cert, key) = issued(&ca_p, &ca_k, names, from, to);
        let up = upstream(&cert, &key).await;
        let (code, out) = verify(&up, &with_ca).await;
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(cause), "{cause}: {out}");
        assert!(out.contains(fix), "{fix}: {out}");
        assert!(out.contains("issuer \"CN=Contoso Internal CA\""), "{out}");
    }
    // A CA nobody named: unknown issuer; the fix names ca_file (and that it lacks it).
    let other = TestCa::new("Someone Else CA");
    let (cert, key) = other.issue(&["127.0.0.1"]);
    let up = upstream(&cert, &key).await;
    let (code, out) = verify(&up, &with_ca).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("unknown issuer")
            && out.contains(&format!("ca_file {ca_file} does not hold it")),
        "{out}"
    );
    // A valid chain verifies.
    let (cert, key) = issued(&ca_p, &ca_k, &["127.0.0.1"], (2024, 1, 1), (2090, 1, 1));
    let up = upstream(&cert, &key).await;
    let (code, out) = verify(&up, &with_ca).await;
    assert_eq!(code, 0, "{out}");
}
