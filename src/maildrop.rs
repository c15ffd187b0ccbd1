//! The maildrop: where the sendmail door leaves a message when the daemon cannot be
//! reached (`maildrop/` beside the store), and the daemon's intake of it. A file is
//! written as a temporary file, fsynced, renamed to `<ULID>.mail` and the directory
//! fsynced, so a file with the final name is complete. The daemon takes files in at start
//! and every few seconds, commits each as a submission from the local host, and removes
//! it only after the commit; a file it cannot read is moved aside to `maildrop/bad/`.
//!
//! Format: one line of JSON (the envelope), then the message bytes (CRLF line ends).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::pipeline::{Client, Origin, Pipeline, Submission, SubmitError};

/// How often the running daemon looks into the maildrop.
pub const SCAN_EVERY: Duration = Duration::from_secs(2);

/// The envelope line of a maildrop file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients.
    pub rcpts: Vec<String>,
    /// The Unix user who ran sendmail, for the log.
    #[serde(default)]
    pub user: Option<String>,
}

/// The maildrop directory of a store path.
pub fn dir_for(store: &Path) -> PathBuf {
    store
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("maildrop")
}

/// Writes one message durably; returns the file's path.
pub fn write(dir: &Path, env: &Envelope, raw: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let id = ulid::Ulid::new().to_string();
    let tmp = dir.join(format!(".tmp-{id}"));
    let path = dir.join(format!("{id}.mail"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let head = serde_json::to_string(env).map_err(std::io::Error::other)?;
        f.write_all(head.as_bytes())?;
        f.write_all(b"\n")?;
        f.write_all(raw)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Reads one maildrop file.
pub fn read(path: &Path) -> Result<(Envelope, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let nl = memchr::memchr(b'\n', &bytes).ok_or("no envelope line")?;
    let env: Envelope =
        serde_json::from_slice(&bytes[..nl]).map_err(|e| format!("envelope: {e}"))?;
    if env.rcpts.is_empty() {
        return Err("the envelope has no recipients".into());
    }
    Ok((env, bytes[nl + 1..].to_vec()))
}

/// The complete files waiting, oldest first.
pub fn waiting(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mail"))
        .collect();
    out.sort();
    out
}

/// Makes the directory so that every local user can drop mail into it but not list or
/// read others' files (mode 1733, like /tmp without listing).
pub fn prepare(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("bad"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1733))
}

/// Takes in every waiting file once; returns how many were committed.
pub async fn take_in(pipeline: &Pipeline, dir: &Path) -> usize {
    let mut n = 0;
    for path in waiting(dir) {
        match read(&path) {
            Ok((env, raw)) => {
                let sub = Submission {
                    origin: Origin::Maildrop,
                    client: Client {
                        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                        helo: None,
                        auth_login: None,
                    },
                    mail_from: env.from.clone(),
                    rcpts: env.rcpts.clone(),
                    raw,
                    longest_line: None,
                    as_user: None,
                    provider: None,
                };
                match pipeline.commit(sub).await {
                    Ok(id) => {
                        // Removed only now that the message is committed.
                        if let Err(e) = std::fs::remove_file(&path) {
                            tracing::error!(file = %path.display(), error = %e, "cannot remove a maildrop file after its commit; it may be taken in twice");
                        }
                        if let Ok(d) = std::fs::File::open(dir) {
                            let _ = d.sync_all();
                        }
                        tracing::info!(id = %id, file = %path.display(), user = env.user.as_deref(), "maildrop: taken in");
                        n += 1;
                    }
                    Err(SubmitError::Unfit(why)) => set_aside(dir, &path, &why),
                    Err(SubmitError::Store(e)) => {
                        tracing::warn!(file = %path.display(), error = %e, "maildrop: the store cannot commit; the file stays for the next round");
                        return n;
                    }
                }
            }
            Err(why) => set_aside(dir, &path, &why),
        }
    }
    n
}

fn set_aside(dir: &Path, path: &Path, why: &str) {
    let to = dir.join("bad").join(path.file_name().unwrap_or_default());
    let _ = std::fs::create_dir_all(dir.join("bad"));
    match std::fs::rename(path, &to) {
        Ok(()) => {
            tracing::error!(file = %path.display(), moved_to = %to.display(), why, "maildrop: a file cannot be taken in; it was moved aside")
        }
        Err(e) => {
            tracing::error!(file = %path.display(), why, error = %e, "maildrop: a file cannot be taken in nor moved aside")
        }
    }
}

/// The daemon's intake: at start, then every [`SCAN_EVERY`], until shutdown.
pub async fn intake(
    pipeline: std::sync::Arc<Pipeline>,
    dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = prepare(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot prepare the maildrop directory");
    }
    loop {
        if *shutdown.borrow() {
            return;
        }
        take_in(&pipeline, &dir).await;
        tokio::select! {
            _ = tokio::time::sleep(SCAN_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}
