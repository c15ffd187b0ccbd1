//! The file backend under the store: redb's own `FileBackend`, plus a switch that makes
//! writes fail as a full disk would, so the "never acknowledge what was not committed"
//! path can be exercised for real.

use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// A `FileBackend` whose writes and syncs fail with `ENOSPC` while `fail` is set, except
/// while the database is being opened (`opening`): opening rewrites the header in place,
/// in blocks the file already has, which a real full disk allows; so the writer can reopen
/// the file after a failed commit, as it can on a real full disk.
#[derive(Debug)]
pub(super) struct SwitchableBackend {
    inner: FileBackend,
    fail: Arc<AtomicBool>,
    opening: Arc<AtomicBool>,
}

impl SwitchableBackend {
    pub(super) fn new(inner: FileBackend, fail: Arc<AtomicBool>, opening: Arc<AtomicBool>) -> Self {
        SwitchableBackend {
            inner,
            fail,
            opening,
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.fail.load(Ordering::Relaxed) && !self.opening.load(Ordering::Relaxed) {
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for SwitchableBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.check()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }

    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }

    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }

    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }

    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }

    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

/// The environment variable naming a flag file for fault injection: while that file
/// exists, every write to the store fails as on a full disk. For the reliability tests,
/// which run the real binary; unset in production, where it costs nothing.
pub const FAULT_ENV: &str = "MAILGATE_FAULT_STORE_WRITES";

/// The environment variable of the read fault: a body holding its value makes the read
/// panic, as redb does on some damaged pages. For the reliability tests only.
pub const READ_PANIC_ENV: &str = "MAILGATE_FAULT_STORE_READ_PANIC";

/// Starts the fault-injection watcher when [`FAULT_ENV`] is set: the switch follows the
/// flag file's existence (checked now, then every 50 ms while the store lives).
pub(super) fn fault_injection<T: Send + Sync + 'static>(
    alive: std::sync::Weak<T>,
    fail: Arc<AtomicBool>,
) {
    let Some(flag) = std::env::var_os(FAULT_ENV).map(std::path::PathBuf::from) else {
        return;
    };
    tracing::warn!(flag = %flag.display(), "store fault injection is on ({FAULT_ENV})");
    fail.store(flag.exists(), Ordering::Relaxed);
    let _ = std::thread::Builder::new()
        .name("mailgate-store-fault".into())
        .spawn(move || {
            while alive.upgrade().is_some() {
                fail.store(flag.exists(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
}
