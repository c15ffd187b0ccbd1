//! `mailgate gen-cert`: a self-signed certificate and key for the listener's STARTTLS
//! (rcgen), for sites without their own CA.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Args;

use super::exit;

/// Flags of `gen-cert`.
#[derive(Debug, Args)]
pub struct GenCertArgs {
    /// DNS name clients use to reach mailgate (repeatable).
    #[arg(long = "name", required = true)]
    pub names: Vec<String>,
    /// IP address clients use to reach mailgate (repeatable).
    #[arg(long = "ip")]
    pub ips: Vec<std::net::IpAddr>,
    /// Directory for mailgate.crt and mailgate.key.
    #[arg(long, default_value = "certs")]
    pub out_dir: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

fn write(path: &std::path::Path, bytes: &[u8], mode: u32, force: bool) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(mode);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    o.open(path)?.write_all(bytes)
}

/// Runs `gen-cert`.
pub fn gen_cert(args: &GenCertArgs) -> i32 {
    let mut sans: Vec<String> = args.names.clone();
    sans.extend(args.ips.iter().map(ToString::to_string));
    let result = (|| -> Result<(String, String), String> {
        let mut params = rcgen::CertificateParams::new(sans).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, args.names[0].clone());
        let now = std::time::SystemTime::now();
        params.not_before = now.into();
        params.not_after =
            (now + std::time::Duration::from_secs(u64::from(args.days) * 86_400)).into();
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok((cert.pem(), key.serialize_pem()))
    })();
    let (cert, key) = match result {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot make the certificate: {e}");
            return exit::FAILED;
        }
    };
    let crt = args.out_dir.join("mailgate.crt");
    let kf = args.out_dir.join("mailgate.key");
    let done = std::fs::create_dir_all(&args.out_dir)
        .and_then(|()| write(&kf, key.as_bytes(), 0o600, args.force))
        .and_then(|()| write(&crt, cert.as_bytes(), 0o644, args.force));
    if let Err(e) = done {
        eprintln!(
            "cannot write {} / {}: {e} (use --force to replace)",
            crt.display(),
            kf.display()
        );
        return exit::FAILED;
    }
    println!("wrote {} and {}", crt.display(), kf.display());
    println!(
        "add to [smtp]:\n  tls_cert = \"{}\"\n  tls_key  = \"{}\"",
        crt.display(),
        kf.display()
    );
    exit::OK
}
