//! The eml provider ("use an email app"): writes `<directory>/<ID>.eml` atomically:
//! a temporary file, fsync, rename, fsync of the directory. A reader never sees a
//! half-written file, and a file that exists survives a crash.

use std::path::{Path, PathBuf};

use super::{Delivery, Outcome};
use crate::diagnosis::Code;
use crate::store::Body;

/// Writes each message as one file.
#[derive(Debug)]
pub struct EmlProvider {
    dir: PathBuf,
    timeout: std::time::Duration,
}

fn write_atomically(dir: &Path, name: &str, body: &Body) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    {
        // Piece by piece: a large body is never read whole.
        let mut f = std::fs::File::create(&tmp)?;
        body.write_to(&mut f)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &dest)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(dest)
}

impl EmlProvider {
    /// A provider writing into `dir` (created when needed); a write may take `timeout`
    /// plus the message's size at 64 KB/s (a hung network file system).
    pub fn new(dir: PathBuf, timeout: std::time::Duration) -> EmlProvider {
        EmlProvider { dir, timeout }
    }

    /// The provider's `timeout`.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// `mailgate verify`: the directory exists (or is made) and takes a file.
    pub fn verify(&self) -> Result<String, (Code, String)> {
        let probe = self.dir.join(".mailgate-verify");
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&probe, b""))
            .and_then(|()| std::fs::remove_file(&probe))
            .map(|()| format!("{} is writable", self.dir.display()))
            .map_err(|e| {
                (
                    Code::ProviderConfig,
                    format!("{} is not writable: {e}", self.dir.display()),
                )
            })
    }

    /// Writes the message; a failure to write is transient (disk full, permissions).
    pub async fn deliver(&self, d: &Delivery) -> Outcome {
        let dir = self.dir.clone();
        let name = format!("{}.eml", d.id);
        let raw = d.body.clone();
        super::stage::enter("writing the file");
        let result = tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &raw))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match result {
            Ok(path) => Outcome::Sent {
                reply: format!("written to {}", path.display()),
            },
            Err(e) => Outcome::Transient {
                reply: format!(
                    "cannot write to the outbox directory {}: {e} (it must exist or be creatable, be writable by mailgate, and have free space)",
                    self.dir.display()
                ),
                code: Code::ProviderConfig,
            },
        }
    }
}

impl super::Deliver for EmlProvider {
    async fn deliver(&self, d: &Delivery) -> Outcome {
        EmlProvider::deliver(self, d).await
    }

    async fn verify(&self) -> Result<String, (Code, String)> {
        EmlProvider::verify(self)
    }

    /// The write of the file: `timeout` plus the body at 64 KB/s.
    fn attempt_once(&self, d: &Delivery) -> std::time::Duration {
        super::stage::body_bound(self.timeout, d.body.len() as usize)
    }
}
