//! Small state files written whole (`alerts.json`, `providers.json`): a reader sees the
//! old content or the new, never a part.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes`: written to `<path>.tmp`, synced, renamed over it (its
/// mode from the daemon's umask).
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
