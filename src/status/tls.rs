//! HTTPS on the status listener (`status.tls_cert`, `status.tls_key`; rustls, ring): the
//! admin token, the sign-in and the fleet's calls cross the network only encrypted.
//! Handshakes run in their own tasks (a client that never finishes one costs a task for
//! ten seconds, never the listener); the certificate is read again when either file
//! changes (checked every five seconds off the runtime), so a renewed certificate needs no
//! restart, and a file that cannot be read keeps the last good one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;

/// A TLS handshake must end within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Handshakes running at once.
const HANDSHAKES: usize = 64;

/// The certificate in use, swapped when its files change.
#[derive(Debug)]
struct Current {
    key: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key.read().ok().map(|k| k.clone())
    }
}

/// Reads the chain and key; the error names the file and what is wrong with it.
fn certified(cert: &std::path::Path, key: &std::path::Path) -> Result<CertifiedKey, String> {
    let (chain, key) = crate::pem::chain_and_key("status.", cert, key)?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("status.tls_cert/tls_key: {e}"))
}

fn modified(paths: &[&PathBuf; 2]) -> [Option<SystemTime>; 2] {
    paths.map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// The status listener as bound: plain HTTP, or HTTPS.
#[derive(Debug)]
pub enum Bound {
    /// Plain HTTP (loopback, or behind a TLS proxy).
    Plain(TcpListener),
    /// HTTPS.
    Tls(TlsListener),
}

/// The status listener with TLS: accepted connections after their handshake.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Wraps `listener` with the certificate of these files (read now: an error stops
    /// the start). The accepting task ends when the returned listener is dropped.
    pub fn new(listener: TcpListener, cert: PathBuf, key: PathBuf) -> Result<TlsListener, String> {
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let current = Arc::new(Current {
            key: RwLock::new(Arc::new(certified(&cert, &key)?)),
        });
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(HANDSHAKES);
        tokio::spawn(watch_files(current, cert, key, tx.clone()));
        tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener { local, ready })
    }
}

/// Accepts connections and runs each handshake in its own task, bounded in time and in
/// number; a finished one is handed to the server.
async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            got = listener.accept() => match got {
                Ok(x) => x,
                Err(_) => {
                    // Out of descriptors, usually: wait a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                let _ = tx.send((tls, peer)).await;
            }
        });
    }
}

/// Reads the certificate again when its files change; stops with the listener.
async fn watch_files(
    current: Arc<Current>,
    cert: PathBuf,
    key: PathBuf,
    alive: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let paths = [cert.clone(), key.clone()];
    let seen = {
        let p = paths.clone();
        tokio::task::spawn_blocking(move || modified(&[&p[0], &p[1]]))
            .await
            .unwrap_or_default()
    };
    let mut seen = seen;
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = alive.closed() => return,
        }
        let p = paths.clone();
        let before = seen;
        let Ok((now, read)) = tokio::task::spawn_blocking(move || {
            let now = modified(&[&p[0], &p[1]]);
            let read = (now != before).then(|| certified(&p[0], &p[1]));
            (now, read)
        })
        .await
        else {
            continue;
        };
        let Some(read) = read else { continue };
        match read {
            Ok(k) => {
                if let Ok(mut g) = current.key.write() {
                    *g = Arc::new(k);
                }
                seen = now;
                tracing::info!(cert = %cert.display(), "status listener: certificate read again");
            }
            Err(why) => {
                // Half-written during a renewal, maybe: tried again at the next look.
                tracing::warn!(error = %why, "status listener: the changed certificate cannot be used; keeping the last good one");
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accepting task is gone (it never ends while this lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
