//! Small files the daemon keeps beside its store: settings and secrets, written whole.

use std::path::Path;

/// Writes `bytes` to `path` readable by this user only, replacing it whole (a crash leaves the
/// old contents or the new, never a mix).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
