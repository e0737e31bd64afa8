//! A download under way: the bytes and hashes received so far, and how far they are verified.
//!
//! Ranges are requested from the first byte not yet verified to the end, so verified bytes
//! always form a prefix of the blob. The prefix's length (`.have`) is written only after the
//! bytes and hashes it covers are synced: after a crash the download resumes from there, and
//! whatever was written past it is simply received again.

use std::{
    fs::{self, File, OpenOptions},
    io,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use bao_tree::{BaoTree, io::outboard::PostOrderOutboard};
use chatsync_model::BlobHash;

use super::{BLOCK_SIZE, BlobError, Blobs, GROUP_BYTES, with_suffix};

/// One download, held by the one task that writes it.
pub struct Partial {
    blobs: Arc<Blobs>,
    pub hash: BlobHash,
    pub size: u64,
    data_path: PathBuf,
    have_path: PathBuf,
    pub(super) data: File,
    pub(super) outboard: PostOrderOutboard<File>,
    /// Bytes from the start that are verified and synced.
    have: u64,
    /// Bytes from the start verified since the last sync.
    pub(super) verified: u64,
    /// Length of the data file as counted in the store's usage.
    counted: u64,
}

impl Blobs {
    /// Opens the download of a blob of `size` bytes, resuming what an earlier one left;
    /// `None` when this blob is being downloaded already. Blocks.
    pub fn start_download(
        self: &Arc<Self>,
        hash: BlobHash,
        size: u64,
    ) -> Result<Option<Partial>, BlobError> {
        if size > chatsync_model::attachment::MAX_ATTACHMENT_BYTES {
            return Err(BlobError::TooLarge(size));
        }
        {
            let mut downloading = self.downloading.lock().unwrap_or_else(|e| e.into_inner());
            if !downloading.insert(hash) {
                return Ok(None);
            }
        }
        match self.open_partial(hash, size) {
            Ok(partial) => Ok(Some(partial)),
            Err(e) => {
                self.done_downloading(&hash);
                Err(e)
            }
        }
    }

    fn open_partial(self: &Arc<Self>, hash: BlobHash, size: u64) -> Result<Partial, BlobError> {
        let data_path = self.dir.join("partial").join(hash.to_hex());
        let have_path = with_suffix(&data_path, ".have");
        let outboard_path = with_suffix(&data_path, ".obao");
        let open = |path: &PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        };
        let data = open(&data_path)?;
        let outboard = open(&outboard_path)?;
        let counted = data.metadata()?.len();
        // A download of another size (the message said otherwise) starts over.
        let have = match read_progress(&self.dir.join("partial"), &hash) {
            Some((len, have)) if len == size => have,
            _ => 0,
        };
        if counted < size {
            self.make_room(size - counted)?;
        }
        Ok(Partial {
            blobs: self.clone(),
            hash,
            size,
            data_path,
            have_path,
            data,
            outboard: PostOrderOutboard {
                root: blake3::Hash::from_bytes(hash.0),
                tree: BaoTree::new(size, BLOCK_SIZE),
                data: outboard,
            },
            have,
            verified: have,
            counted,
        })
    }

    /// Drops an unfinished download that nothing is writing; false if one is. Blocks.
    pub fn discard_download(&self, hash: BlobHash) -> io::Result<bool> {
        let downloading = self.downloading.lock().unwrap_or_else(|e| e.into_inner());
        if downloading.contains(&hash) {
            return Ok(false);
        }
        let data = self.dir.join("partial").join(hash.to_hex());
        let len = fs::metadata(&data).map_or(0, |m| m.len());
        for path in [
            data.clone(),
            with_suffix(&data, ".obao"),
            with_suffix(&data, ".have"),
        ] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.used.fetch_sub(len, Ordering::Relaxed);
        self.partial_bytes.fetch_sub(len, Ordering::Relaxed);
        Ok(true)
    }

    fn done_downloading(&self, hash: &BlobHash) {
        self.downloading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
    }
}

/// What a download's `.have` file says: the blob's size and the bytes verified.
pub(super) fn read_progress(partial_dir: &Path, hash: &BlobHash) -> Option<(u64, u64)> {
    let text = fs::read_to_string(partial_dir.join(format!("{}.have", hash.to_hex()))).ok()?;
    let (size, have) = text.trim().split_once(' ')?;
    let (size, have): (u64, u64) = (size.parse().ok()?, have.parse().ok()?);
    let aligned = have % GROUP_BYTES == 0 || have == size;
    (have <= size && aligned).then_some((size, have))
}

impl Partial {
    /// Bytes from the start verified and on disk: where the next request starts.
    pub fn have(&self) -> u64 {
        self.have
    }

    /// Counts data written up to `end` in the store's usage.
    pub(super) fn grew_to(&mut self, end: u64) {
        if end > self.counted {
            let grown = end - self.counted;
            self.blobs.used.fetch_add(grown, Ordering::Relaxed);
            self.blobs.partial_bytes.fetch_add(grown, Ordering::Relaxed);
            self.counted = end;
        }
    }

    /// Syncs what was verified since the last call and records it. Blocks.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        if self.verified == self.have {
            return Ok(());
        }
        self.data.sync_data()?;
        self.outboard.data.sync_data()?;
        let tmp = with_suffix(&self.have_path, ".tmp");
        fs::write(&tmp, format!("{} {}", self.size, self.verified))?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &self.have_path)?;
        self.have = self.verified;
        Ok(())
    }

    /// Moves the complete, verified blob into the store. Blocks.
    pub fn finish(mut self) -> io::Result<()> {
        if self.verified != self.size {
            return Err(io::Error::other(format!(
                "the download of {} is not complete ({} of {} bytes)",
                self.hash, self.verified, self.size
            )));
        }
        self.data.set_len(self.size)?;
        self.data.sync_all()?;
        self.outboard.data.sync_all()?;
        let outboard_path = with_suffix(&self.data_path, ".obao");
        let installed = self.blobs.install(
            &self.hash,
            self.size,
            &self.data_path,
            &outboard_path,
            false,
        )?;
        let _ = fs::remove_file(&self.have_path);
        // The bytes moved from the downloads to the blobs (usage unchanged), or were dropped.
        self.blobs
            .partial_bytes
            .fetch_sub(self.counted, Ordering::Relaxed);
        if !installed {
            self.blobs.used.fetch_sub(self.counted, Ordering::Relaxed);
        }
        self.counted = 0;
        Ok(())
    }

    /// Drops the download and what it received (the blob is no longer wanted). Blocks.
    pub fn discard(mut self) -> io::Result<()> {
        for path in [
            self.data_path.clone(),
            with_suffix(&self.data_path, ".obao"),
            self.have_path.clone(),
        ] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.blobs.used.fetch_sub(self.counted, Ordering::Relaxed);
        self.blobs
            .partial_bytes
            .fetch_sub(self.counted, Ordering::Relaxed);
        self.counted = 0;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        self.blobs.done_downloading(&self.hash);
    }
}
