//! Room on the store's disk: free space against `store.min_free_space` plus what the
//! store file needs for its next growth. Read by the door (452 at MAIL) and `/healthz`.

use std::fmt;
use std::path::PathBuf;

/// Answers whether there is room on the disk for new mail.
pub trait SpaceCheck: Send + Sync + fmt::Debug {
    /// True when new mail may be accepted.
    fn has_room(&self) -> bool;
    /// Free and needed bytes, when they can be measured (for `/status` and `/healthz`).
    fn measure(&self) -> Option<(u64, u64)> {
        None
    }
}

/// Free space on the filesystem holding the store, against `store.min_free_space` plus
/// the room redb needs for its next growth: below 4 GiB it grows its file by doubling, so
/// the next growth may take as much again as the file's size.
#[derive(Debug)]
pub struct DiskSpace {
    /// The store file (its directory is on the filesystem measured).
    pub store: PathBuf,
    /// The configuration in force (`store.min_free_space` applies at once on reload).
    pub live: std::sync::Arc<crate::config::Live>,
}

impl DiskSpace {
    /// Measures the filesystem of `store` against the live `store.min_free_space`.
    pub fn new(store: PathBuf, live: std::sync::Arc<crate::config::Live>) -> DiskSpace {
        DiskSpace { store, live }
    }

    fn dir(&self) -> PathBuf {
        crate::config::store_dir(&self.store)
    }
}

/// Above this size redb grows its file by one 4 GiB region at a time instead of doubling.
const REDB_REGION: u64 = 4 << 30;

impl SpaceCheck for DiskSpace {
    fn has_room(&self) -> bool {
        // If free space cannot be measured, do not refuse mail on that account.
        self.measure().is_none_or(|(free, needed)| free >= needed)
    }

    fn measure(&self) -> Option<(u64, u64)> {
        let min = self.live.get().store.min_free_space.0;
        if min == 0 {
            return None;
        }
        let free = fs4::available_space(self.dir()).ok()?;
        let file = std::fs::metadata(&self.store).map_or(0, |m| m.len());
        let growth = if file < REDB_REGION {
            file
        } else {
            2 * REDB_REGION
        };
        Some((free, min.saturating_add(growth)))
    }
}

/// A fixed answer (tests, and stores on filesystems that cannot be measured).
#[derive(Debug)]
pub struct FixedSpace(pub bool);

impl SpaceCheck for FixedSpace {
    fn has_room(&self) -> bool {
        self.0
    }
}
