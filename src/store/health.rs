//! Whether the store can be trusted right now: the last commit's result, and whether the
//! path still names the file the daemon has open (a store deleted or replaced under a
//! running daemon must stop it acknowledging mail, loudly, instead of writing into a file
//! nobody will ever open again).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

/// How often the path is compared with the open file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The store's health, shared by the writer, the watcher and the status endpoint.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// The last data commit failed (cleared by the next one that succeeds).
    pub(super) commit_error: Mutex<Option<String>>,
    /// Why the store file can no longer be used (deleted or replaced); set once, for good.
    pub(super) lost: Mutex<Option<String>>,
    pub(super) lost_flag: AtomicBool,
}

impl Health {
    pub(super) fn commit_result(&self, r: &Result<(), super::StoreError>) {
        if let Ok(mut g) = self.commit_error.lock() {
            *g = r.as_ref().err().map(|e| e.to_string());
        }
    }

    pub(super) fn lost(&self) -> Option<String> {
        if !self.lost_flag.load(Ordering::Relaxed) {
            return None;
        }
        self.lost.lock().ok().and_then(|g| g.clone())
    }

    fn set_lost(&self, why: String) {
        if let Ok(mut g) = self.lost.lock()
            && g.is_none()
        {
            *g = Some(why);
            self.lost_flag.store(true, Ordering::Relaxed);
        }
    }

    /// What is wrong, in one sentence, or None.
    pub(super) fn trouble(&self) -> Option<String> {
        self.lost().or_else(|| {
            self.commit_error
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .map(|e| format!("the last store commit failed: {e}"))
        })
    }
}

/// The identity of a file: device and inode.
pub(super) fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Watches `path` until the store is gone: when it no longer names the open file
/// (`id`), the store is marked lost and one loud line says what happened and what to do.
pub(super) fn watch(shared: Weak<super::Shared>, path: PathBuf, id: (u64, u64), fd: String) {
    let spawned = std::thread::Builder::new()
        .name("mailgate-store-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(WATCH_EVERY);
                let Some(shared) = shared.upgrade() else { return };
                if shared.closed.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(why) = changed(&path, id) {
                    tracing::error!(
                        path = %path.display(),
                        open_file = %fd,
                        "the store file was {why} while mailgate runs: new mail is refused with 451 and nothing is sent. \
                         Mail queued so far is still in the open file: copy it out (cp {fd} SAVED.redb), stop mailgate, \
                         put SAVED.redb back at the store path and start mailgate again"
                    );
                    shared.health.set_lost(format!(
                        "the store file {} was {why} while mailgate runs; restore it and restart",
                        path.display()
                    ));
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the store file for deletion");
    }
}

fn changed(path: &Path, id: (u64, u64)) -> Option<&'static str> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("deleted"),
        Err(_) => None,
        Ok(m) if identity(&m) != id => Some("replaced"),
        Ok(_) => None,
    }
}
