//! The maildrop: where the sendmail door leaves a message when the daemon cannot be
//! reached (`maildrop/` beside the store), and the daemon's intake of it. A file is
//! written as a temporary file, fsynced, renamed to `<ULID>.mail` and the directory
//! fsynced, so a file with the final name is complete. The daemon takes files in at start
//! and every few seconds, commits each as a submission from the local host, and removes
//! it only after the commit; a file it cannot take is moved aside to `maildrop/bad/`
//! (mode 0700).
//!
//! The directory is writable by every local user (mode 1733), so what is in it is
//! untrusted (SPEC "Trust boundaries"): only regular files are taken, opened without
//! following a link and without blocking (a FIFO never stalls the intake), checked with
//! `fstat` on the open file, read off the async runtime and at most
//! `smtp.max_message_size` of them; the submitting user is the file's owner, never what
//! its content says; the envelope passes the SMTP door's policy.
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
    /// The Unix user who ran sendmail, as the door wrote it: for the log only (the
    /// intake names the file's owner; this may be forged).
    #[serde(default)]
    pub user: Option<String>,
}

/// The maildrop directory of a store path.
pub fn dir_for(store: &Path) -> PathBuf {
    crate::config::store_dir(store).join("maildrop")
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

/// A maildrop file as taken in: its envelope, message and the owner's user name.
#[derive(Debug)]
pub struct Dropped {
    /// The envelope line.
    pub env: Envelope,
    /// The message.
    pub raw: Vec<u8>,
    /// The file owner's Unix user name.
    pub owner: String,
}

/// The limits the intake applies to a file.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest message (plus its envelope line).
    pub max_size: u64,
    /// The most recipients.
    pub max_recipients: usize,
    /// Whether `user@contoso` may pass.
    pub allow_single_label: bool,
}

/// The longest envelope line read.
const MAX_ENVELOPE: usize = 1 << 20;

/// Reads one maildrop file as untrusted input (blocking: call it off the runtime): a
/// regular file (no link followed, no FIFO waited on), at most `max_size` bytes and an
/// envelope line, whose envelope passes the door's policy. Err: why not.
pub fn read(path: &Path, limits: Limits) -> Result<Dropped, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                "a symbolic link, not a file".to_string()
            } else {
                e.to_string()
            }
        })?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let cap = limits.max_size + MAX_ENVELOPE as u64;
    if meta.len() > cap {
        return Err(format!(
            "{} bytes, more than smtp.max_message_size allows",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > cap {
        return Err("the file grew past smtp.max_message_size while it was read".into());
    }
    let nl =
        memchr::memchr(b'\n', &bytes[..bytes.len().min(MAX_ENVELOPE)]).ok_or("no envelope line")?;
    let env: Envelope =
        serde_json::from_slice(&bytes[..nl]).map_err(|e| format!("envelope: {e}"))?;
    if let Some(why) = crate::address::envelope_problem(
        &env.from,
        &env.rcpts,
        limits.max_recipients,
        limits.allow_single_label,
    ) {
        return Err(why);
    }
    if (bytes.len() - nl - 1) as u64 > limits.max_size {
        return Err("the message is larger than smtp.max_message_size".into());
    }
    bytes.drain(..=nl);
    Ok(Dropped {
        env,
        raw: bytes,
        owner: crate::unix::user_name(meta.uid()),
    })
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
/// read others' files (mode 1733, like /tmp without listing), and `bad/` only the
/// daemon's (0700).
pub fn prepare(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("bad"))?;
    std::fs::set_permissions(dir.join("bad"), std::fs::Permissions::from_mode(0o700))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1733))
}

/// Takes in every waiting file once; returns how many were committed. Every file is
/// read (and set aside) off the async runtime.
pub async fn take_in(pipeline: &Pipeline, dir: &Path) -> usize {
    let config = pipeline.config();
    let limits = Limits {
        max_size: config.smtp.max_message_size.0,
        max_recipients: config.smtp.max_recipients,
        allow_single_label: !config.smtp.reject_single_label_domains,
    };
    let scan = dir.to_path_buf();
    let Ok(files) = tokio::task::spawn_blocking(move || waiting(&scan)).await else {
        return 0;
    };
    let mut n = 0;
    for path in files {
        let p = path.clone();
        let Ok(read) = tokio::task::spawn_blocking(move || read(&p, limits)).await else {
            continue;
        };
        let d = match read {
            Ok(d) => d,
            Err(why) => {
                aside(dir, &path, &why).await;
                continue;
            }
        };
        let sub = Submission {
            origin: Origin::Maildrop,
            client: Client {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                helo: None,
                auth_login: None,
                local_user: Some(d.owner.clone()),
            },
            mail_from: d.env.from.clone(),
            rcpts: d.env.rcpts.clone(),
            raw: d.raw,
            longest_line: None,
            as_user: None,
            provider: None,
        };
        match pipeline.commit(sub).await {
            Ok(id) => {
                // Removed only now that the message is committed.
                let (p, d2) = (path.clone(), dir.to_path_buf());
                let removed = tokio::task::spawn_blocking(move || {
                    let r = std::fs::remove_file(&p);
                    if let Ok(d) = std::fs::File::open(&d2) {
                        let _ = d.sync_all();
                    }
                    r
                })
                .await;
                if let Ok(Err(e)) = removed {
                    tracing::error!(file = %path.display(), error = %e, "cannot remove a maildrop file after its commit; it may be taken in twice");
                }
                tracing::info!(id = %id, file = %path.display(), user = %d.owner, "maildrop: taken in");
                n += 1;
            }
            Err(SubmitError::Unfit(why)) => aside(dir, &path, &why).await,
            Err(SubmitError::Store(e)) => {
                tracing::warn!(file = %path.display(), error = %e, "maildrop: the store cannot commit; the file stays for the next round");
                return n;
            }
        }
    }
    n
}

async fn aside(dir: &Path, path: &Path, why: &str) {
    let (d, p, w) = (dir.to_path_buf(), path.to_path_buf(), why.to_string());
    let _ = tokio::task::spawn_blocking(move || set_aside(&d, &p, &w)).await;
}

fn set_aside(dir: &Path, path: &Path, why: &str) {
    use std::os::unix::fs::DirBuilderExt;
    let to = dir.join("bad").join(path.file_name().unwrap_or_default());
    let _ = std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.join("bad"));
    // What it says is a stranger's: one line, escaped.
    let why = why.escape_debug().to_string();
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
