//! Free space on the disk that holds the store, and the reserve kept on it.
//!
//! Why a reserve: sled 0.34 cannot recover from a write that fails for want of space. The write
//! fails, every later one does too, closing can hang, and a snapshot half written at the next
//! open leaves the store unopenable (see [`super::Store::open`]). So new writes are refused
//! while less than the reserve is free: what is already under way (a group commit, a
//! compaction, sled's own log and snapshot) still fits, nothing fails half way, and writing
//! resumes by itself as soon as space comes back. Reads never need space.

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Free space is measured again at most this often (a `statvfs` call).
const MEASURE_EVERY: Duration = Duration::from_millis(100);

/// Bytes free on the file system holding `dir`, for an unprivileged writer.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Ok(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// The store's disk: how much is free, and whether new writes may begin.
#[derive(Debug)]
pub struct Space {
    dir: PathBuf,
    reserve: u64,
    /// Bytes free when last measured.
    free: AtomicU64,
    /// Whether less than the reserve was free when last measured.
    full: AtomicBool,
    measured_at: Mutex<Option<Instant>>,
}

impl Space {
    pub fn new(dir: &Path, reserve: u64) -> Space {
        Space {
            dir: dir.to_path_buf(),
            reserve,
            free: AtomicU64::new(u64::MAX),
            full: AtomicBool::new(false),
            measured_at: Mutex::new(None),
        }
    }

    /// Whether a new write may begin: at least the reserve is free. `Err` carries the bytes
    /// free. Measures again if the last measure is older than [`MEASURE_EVERY`]; a disk that
    /// cannot be measured counts as having room (the write itself then says what is wrong).
    pub fn room(&self) -> Result<(), u64> {
        self.measure_if_stale();
        if self.full.load(Ordering::Acquire) {
            Err(self.free.load(Ordering::Acquire))
        } else {
            Ok(())
        }
    }

    /// Whether a write of about `bytes` may begin: [`Self::room`], and the reserve still free
    /// after it. A write is counted twice over: sled's log holds a value until its segment is
    /// rewritten elsewhere. So one large write (a sync message of hundreds of MiB) cannot fill
    /// the disk past the reserve on its own. `Err` carries the bytes free.
    pub fn room_for(&self, bytes: u64) -> Result<(), u64> {
        self.room()?;
        let free = self.free.load(Ordering::Acquire);
        if free != u64::MAX && free < self.reserve.saturating_add(bytes.saturating_mul(2)) {
            return Err(free);
        }
        Ok(())
    }

    /// Bytes free when last measured (measured now if never).
    pub fn free(&self) -> Option<u64> {
        self.measure_if_stale();
        Some(self.free.load(Ordering::Acquire)).filter(|f| *f != u64::MAX)
    }

    /// Whether new writes are refused for want of space.
    pub fn is_full(&self) -> bool {
        self.measure_if_stale();
        self.full.load(Ordering::Acquire)
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    fn measure_if_stale(&self) {
        let mut at = self.measured_at.lock().unwrap_or_else(|p| p.into_inner());
        if at.is_some_and(|t| t.elapsed() < MEASURE_EVERY) {
            return;
        }
        *at = Some(Instant::now());
        let Ok(free) = free_bytes(&self.dir) else {
            return;
        };
        self.free.store(free, Ordering::Release);
        let full = free < self.reserve;
        if self.full.swap(full, Ordering::AcqRel) != full {
            if full {
                tracing::error!(
                    free,
                    reserve = self.reserve,
                    dir = %self.dir.display(),
                    "the disk holding the store is nearly full; refusing new writes until space is \
                     freed (reads keep working)"
                );
            } else {
                tracing::info!(free, "space is back on the store's disk; writing again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_a_zero_reserve_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let never = Space::new(dir.path(), 0);
        assert!(never.room().is_ok());
        assert!(!never.is_full());
        let always = Space::new(dir.path(), u64::MAX);
        let Err(reported) = always.room() else {
            panic!("room on a disk smaller than the reserve");
        };
        assert!(reported > 0 && reported < u64::MAX);
        assert!(always.is_full());
    }

    #[test]
    fn a_write_that_would_eat_into_the_reserve_is_refused_beforehand() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let space = Space::new(dir.path(), 1 << 20);
        assert!(space.room_for(0).is_ok());
        assert!(space.room_for(1024).is_ok());
        // Twice the write, plus the reserve, must be free.
        assert!(space.room_for(free).is_err());
        assert!(space.room_for(u64::MAX).is_err());
        assert!(
            !space.is_full(),
            "a refused large write does not stop small ones"
        );
    }
}
