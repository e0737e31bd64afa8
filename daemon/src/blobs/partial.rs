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

use super::{BLOCK_SIZE, BlobError, Blobs, GROUP_BYTES, sync_dir, with_suffix};

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
    /// Room still set aside for the bytes to come ([`Blobs::reserve`]).
    reserved: u64,
    /// See [`Progress::asked`].
    asked: bool,
}

impl Blobs {
    /// Opens the download of a blob of `size` bytes, resuming what an earlier one left;
    /// `None` when this blob is being downloaded already. Blocks.
    /// `asked`: someone asked for it (see [`Progress::asked`]).
    pub fn start_download(
        self: &Arc<Self>,
        hash: BlobHash,
        size: u64,
        asked: bool,
    ) -> Result<Option<Partial>, BlobError> {
        if size > chatsync_model::attachment::MAX_ATTACHMENT_BYTES {
            return Err(BlobError::TooLarge(size));
        }
        if size == 0 {
            // Nothing to receive, so nothing to check: an empty blob is made here, and only
            // under the hash of nothing (`Attachment::check` refuses any other).
            return Err(BlobError::WrongLength {
                expected: 0,
                actual: 0,
            });
        }
        {
            let mut downloading = self.downloading.lock().unwrap_or_else(|e| e.into_inner());
            if !downloading.insert(hash) {
                return Ok(None);
            }
        }
        match self.open_partial(hash, size, asked) {
            Ok(partial) => Ok(Some(partial)),
            Err(e) => {
                self.done_downloading(&hash);
                Err(e)
            }
        }
    }

    fn open_partial(
        self: &Arc<Self>,
        hash: BlobHash,
        size: u64,
        asked: bool,
    ) -> Result<Partial, BlobError> {
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
        let mut counted = data.metadata()?.len();
        // What an earlier download left counts only if it is all there: its record, bytes up
        // to it, and hashes; a download of another size (the message said otherwise) starts
        // over.
        let earlier = read_progress(&self.dir.join("partial"), &hash);
        let have = match earlier {
            Some(p) if p.size == size && p.have <= counted && outboard.metadata()?.len() > 0 => {
                p.have
            }
            _ => 0,
        };
        let asked = asked || earlier.is_some_and(|p| p.asked && p.size == size);
        if have == 0 && counted > 0 {
            data.set_len(0)?;
            outboard.set_len(0)?;
            self.used.fetch_sub(counted, Ordering::Relaxed);
            self.partial_bytes.fetch_sub(counted, Ordering::Relaxed);
            counted = 0;
        }
        let to_come = size.saturating_sub(counted);
        self.reserve(to_come)?;
        let partial = Partial {
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
            reserved: to_come,
            asked,
        };
        // Recorded from the start, so that a download no device has answered yet is found
        // again (to resume, or to sweep).
        partial.write_progress(have)?;
        Ok(partial)
    }

    /// Drops an unfinished download that nothing is writing; false if one is. Blocks.
    pub fn discard_download(&self, hash: BlobHash) -> io::Result<bool> {
        let downloading = self.downloading.lock().unwrap_or_else(|e| e.into_inner());
        if downloading.contains(&hash) {
            return Ok(false);
        }
        let data = self.dir.join("partial").join(hash.to_hex());
        let len = fs::metadata(&data).map_or(0, |m| m.len());
        // The record first: a crash part-way must not leave it claiming bytes that are gone.
        for path in [
            with_suffix(&data, ".have"),
            data.clone(),
            with_suffix(&data, ".obao"),
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

/// What a download's `.have` file says (`{size} {verified} {asked}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub size: u64,
    /// Bytes from the start verified and synced.
    pub have: u64,
    /// Someone asked for it (rather than the policy fetching it unasked): it may come over a
    /// relay.
    pub asked: bool,
}

pub(super) fn read_progress(partial_dir: &Path, hash: &BlobHash) -> Option<Progress> {
    let text = fs::read_to_string(partial_dir.join(format!("{}.have", hash.to_hex()))).ok()?;
    let mut fields = text.split_whitespace();
    let size: u64 = fields.next()?.parse().ok()?;
    let have: u64 = fields.next()?.parse().ok()?;
    let asked = fields.next() == Some("asked");
    let aligned = have.is_multiple_of(GROUP_BYTES) || have == size;
    (have <= size && aligned).then_some(Progress { size, have, asked })
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
            let released = grown.min(self.reserved);
            self.blobs.release(released);
            self.reserved -= released;
            self.counted = end;
        }
    }

    /// Replaces the record. The directory is synced only when the record is new: a later
    /// rename lost to a crash leaves the earlier record, which claims less.
    fn write_progress(&self, have: u64) -> io::Result<()> {
        let new = !self.have_path.exists();
        let tmp = with_suffix(&self.have_path, ".tmp");
        let asked = if self.asked { " asked" } else { "" };
        fs::write(&tmp, format!("{} {have}{asked}", self.size))?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &self.have_path)?;
        if new {
            sync_dir(self.have_path.parent().unwrap_or(Path::new(".")))?;
        }
        Ok(())
    }

    /// Syncs what was verified since the last call and records it. Blocks.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        if self.verified == self.have {
            return Ok(());
        }
        self.data.sync_data()?;
        self.outboard.data.sync_data()?;
        self.write_progress(self.verified)?;
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
        // The record goes first: a crash before the move leaves bytes without a record (a
        // download that starts over), never a record without its bytes.
        fs::remove_file(&self.have_path)?;
        sync_dir(self.have_path.parent().unwrap_or(Path::new(".")))?;
        let outboard_path = with_suffix(&self.data_path, ".obao");
        let installed = self.blobs.install(
            &self.hash,
            self.size,
            &self.data_path,
            &outboard_path,
            false,
        )?;
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
            self.have_path.clone(),
            self.data_path.clone(),
            with_suffix(&self.data_path, ".obao"),
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
        self.blobs.release(self.reserved);
        self.blobs.done_downloading(&self.hash);
    }
}
