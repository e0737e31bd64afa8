//! Attachments' bytes: a blob store beside the chat store, each blob named by its BLAKE3 hash.
//!
//! Why outside sled and outside the documents: a chat's document is loaded whole and synced
//! change by change; a 2 GiB video in it would be loaded, saved and compared with every chat
//! operation. A blob is a plain file, written once, read in pieces, and moved between devices
//! by `transfer.rs` in verified pieces.
//!
//! Each blob has an *outboard*: the inner hashes of its BLAKE3 tree (post-order, one pair of
//! hashes per 16 KiB group of chunks, about 0.4% of the blob's size). With it, any range of the
//! blob can be sent with the hashes that prove it, and a receiver checks each 16 KiB group as it
//! arrives against the hash the message names (`bao-tree`).
//!
//! Layout under the data directory:
//!
//! ```text
//! blobs/
//!   ab/abcd…ef          a complete blob (named by its hash; the first two digits fan out)
//!   ab/abcd…ef.obao     its outboard
//!   partial/abcd…ef     a download under way: the bytes so far,
//!   partial/abcd…ef.obao  the hashes received so far,
//!   partial/abcd…ef.have  how many bytes from the start are verified and on disk
//!   tmp/                uploads being written (emptied at start)
//!   thumbs/abcd…ef-320.jpg  an image's preview (`thumbnail.rs`)
//! ```
//!
//! Durability: a blob is written and synced under `tmp/` (or `partial/`), then renamed into
//! place, its outboard first, and the directory synced; a blob file that exists is complete.
//! A post that names an attachment is only accepted once its blob is in place, so an
//! acknowledged post never names bytes this device lost.
//!
//! Space: blobs share the disk with the chat store, whose writes must never fail for want of
//! space (see `store/space.rs`). Every write here keeps the store's reserve free, and the
//! blobs together stay under the device's quota (`[attachments] quota_mib`).

mod partial;
pub mod pipe;
pub mod sweep;
pub mod thumbnail;
pub mod transfer;

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bao_tree::{BaoTree, BlockSize, io::outboard::PostOrderOutboard};
use chatsync_model::BlobHash;

pub use partial::{Partial, Progress};

/// BLAKE3 chunks are 1 KiB; the tree is kept per group of 16 (16 KiB). Smaller groups cost
/// more hashes on disk and on the wire; larger ones make a lying device cost more to catch.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
/// Bytes of a group: where resumed downloads restart.
pub const GROUP_BYTES: u64 = 16 * 1024;
/// How often an import checks the disk's free space again.
const SPACE_CHECK_EVERY: u64 = 64 * 1024 * 1024;
/// Buffer for reading and writing blob files.
const IO_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error(
        "the attachment store's quota is {quota} bytes and {used} are used; this needs \
         {needed} more (raise [attachments] quota_mib, or delete messages with attachments)"
    )]
    Quota { quota: u64, used: u64, needed: u64 },
    #[error("the disk is too full to store attachments ({free} bytes free, {reserve} kept free)")]
    DiskFull { free: u64, reserve: u64 },
    #[error("the attachment is {0} bytes; the limit is {max}", max = chatsync_model::attachment::MAX_ATTACHMENT_BYTES)]
    TooLarge(u64),
    #[error("the attachment is {actual} bytes, not the {expected} announced")]
    WrongLength { expected: u64, actual: u64 },
    #[error("the bytes hash to {actual}, not to the attachment's {expected}")]
    WrongHash {
        expected: BlobHash,
        actual: BlobHash,
    },
    #[error("attachment store: {0}")]
    Io(#[from] io::Error),
}

/// What the blob store holds, for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobStats {
    pub blobs: u64,
    /// Bytes of complete blobs (their outboards not counted).
    pub bytes: u64,
    /// Bytes of downloads under way.
    pub partial_bytes: u64,
}

/// The blob store. Shared (`Arc`); every method that touches the disk blocks, so async callers
/// run them on the blocking pool.
#[derive(Debug)]
pub struct Blobs {
    dir: PathBuf,
    quota: u64,
    reserve: u64,
    /// Bytes of complete blobs and downloads under way: what the quota limits.
    used: AtomicU64,
    /// Bytes that writes under way may still add ([`Blobs::reserve`]): counted against the
    /// quota and the disk before they are written, so that writes at once cannot together
    /// overrun either.
    reserved: AtomicU64,
    /// Makes each reservation's check and count one step.
    room: Mutex<()>,
    /// Makes each blob's "is it here? then move it in" one step.
    installing: Mutex<()>,
    /// When each blob was last installed or named by a post in this run: a sweep that began
    /// before leaves it (`sweep.rs`).
    touched: Mutex<HashMap<BlobHash, Instant>>,
    blob_count: AtomicU64,
    partial_bytes: AtomicU64,
    /// Blobs with a download open: one writer per partial file.
    downloading: Mutex<HashSet<BlobHash>>,
    /// Blobs uploaded by this run that no post has named yet, and when: a sweep leaves them
    /// for a while (the post follows its uploads).
    unclaimed: Mutex<HashMap<BlobHash, Instant>>,
    /// Bytes sent to other devices, and received from them, since start.
    pub served_bytes: AtomicU64,
    pub fetched_bytes: AtomicU64,
}

impl Blobs {
    /// Opens (creating) the blob store in `data_dir/blobs`, counting what it holds.
    pub fn open(data_dir: &Path, quota: u64, reserve: u64) -> io::Result<Arc<Blobs>> {
        let dir = data_dir.join("blobs");
        for sub in ["", "partial", "tmp"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        // Uploads cut off by a stop or a crash: nothing refers to them.
        for entry in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        for fan in fs::read_dir(&dir)? {
            let fan = fan?;
            let name = fan.file_name();
            let name = name.to_string_lossy();
            if name.len() != 2 || !fan.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(fan.path())? {
                let entry = entry?;
                if BlobHash::from_hex(&entry.file_name().to_string_lossy()).is_ok() {
                    count += 1;
                    bytes += entry.metadata()?.len();
                }
            }
        }
        let mut partial_bytes = 0;
        for entry in fs::read_dir(dir.join("partial"))? {
            let entry = entry?;
            if BlobHash::from_hex(&entry.file_name().to_string_lossy()).is_ok() {
                partial_bytes += entry.metadata()?.len();
            }
        }
        Ok(Arc::new(Blobs {
            dir,
            quota,
            reserve,
            used: AtomicU64::new(bytes + partial_bytes),
            reserved: AtomicU64::new(0),
            room: Mutex::new(()),
            installing: Mutex::new(()),
            touched: Mutex::new(HashMap::new()),
            blob_count: AtomicU64::new(count),
            partial_bytes: AtomicU64::new(partial_bytes),
            downloading: Mutex::new(HashSet::new()),
            unclaimed: Mutex::new(HashMap::new()),
            served_bytes: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        }))
    }

    /// Most bytes the blobs may take.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    pub fn stats(&self) -> BlobStats {
        BlobStats {
            blobs: self.blob_count.load(Ordering::Relaxed),
            bytes: self
                .used
                .load(Ordering::Relaxed)
                .saturating_sub(self.partial_bytes.load(Ordering::Relaxed)),
            partial_bytes: self.partial_bytes.load(Ordering::Relaxed),
        }
    }

    /// Where a complete blob's bytes are.
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    fn outboard_path(&self, hash: &BlobHash) -> PathBuf {
        with_suffix(&self.path(hash), ".obao")
    }

    /// The size of a blob this device has in full; `None` if it has not.
    pub fn len(&self, hash: &BlobHash) -> Option<u64> {
        fs::metadata(self.path(hash)).ok().map(|m| m.len())
    }

    pub fn has(&self, hash: &BlobHash) -> bool {
        self.len(hash).is_some()
    }

    /// Opens a complete blob for reading, with its outboard for sending verified ranges.
    pub fn open_blob(&self, hash: &BlobHash) -> io::Result<Option<StoredBlob>> {
        let data = match File::open(self.path(hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = data.metadata()?.len();
        let outboard = File::open(self.outboard_path(hash))?;
        Ok(Some(StoredBlob {
            size,
            data,
            outboard: PostOrderOutboard {
                root: blake3::Hash::from_bytes(hash.0),
                tree: BaoTree::new(size, BLOCK_SIZE),
                data: outboard,
            },
        }))
    }

    /// Stores the bytes `source` yields as a blob, hashing them; `expected`, when known, is
    /// their length (a longer or shorter source is refused). Blocks.
    pub fn import(
        &self,
        source: impl Read,
        expected: Option<u64>,
    ) -> Result<(BlobHash, u64), BlobError> {
        self.import_checked(source, expected, None)
    }

    /// [`Self::import`], refusing bytes that do not hash to `hash` (nothing of them is kept).
    pub fn import_checked(
        &self,
        source: impl Read,
        expected: Option<u64>,
        hash: Option<BlobHash>,
    ) -> Result<(BlobHash, u64), BlobError> {
        let mut held = Held {
            blobs: self,
            bytes: 0,
        };
        if let Some(len) = expected {
            held.grow(len)?;
        }
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        let outboard_tmp = with_suffix(&tmp, ".obao");
        let result = self.import_into(source, expected, hash, &tmp, &outboard_tmp, &mut held);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&outboard_tmp);
        }
        result
    }

    fn import_into(
        &self,
        mut source: impl Read,
        expected: Option<u64>,
        expected_hash: Option<BlobHash>,
        tmp: &Path,
        outboard_tmp: &Path,
        held: &mut Held<'_>,
    ) -> Result<(BlobHash, u64), BlobError> {
        if let Some(len) = expected {
            return self.import_known(source, len, expected_hash, tmp, outboard_tmp);
        }
        let mut out = BufWriter::with_capacity(IO_BUFFER, File::create(tmp)?);
        let mut buf = vec![0u8; IO_BUFFER];
        let mut written = 0u64;
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            written += n as u64;
            if written > chatsync_model::attachment::MAX_ATTACHMENT_BYTES {
                return Err(BlobError::TooLarge(written));
            }
            // Of unknown length: room is reserved a step ahead of what is written (or, near
            // the quota, just what is written).
            if written > held.bytes {
                let needed = written - held.bytes;
                if held.grow(SPACE_CHECK_EVERY.max(needed)).is_err() {
                    held.grow(needed)?;
                }
            }
            out.write_all(&buf[..n])?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        // Second pass, from the page cache: the tree needs the size before the first byte.
        let tree = BaoTree::new(written, BLOCK_SIZE);
        let mut outboard = BufWriter::new(File::create(outboard_tmp)?);
        let root = bao_tree::io::sync::outboard_post_order(
            BufReader::with_capacity(IO_BUFFER, File::open(tmp)?),
            tree,
            &mut outboard,
        )?;
        let outboard = outboard.into_inner().map_err(|e| e.into_error())?;
        outboard.sync_all()?;
        self.finish_import(
            BlobHash(*root.as_bytes()),
            written,
            expected_hash,
            tmp,
            outboard_tmp,
        )
    }

    /// Checks an imported blob's hash (when one is expected) and moves it into place.
    fn finish_import(
        &self,
        hash: BlobHash,
        written: u64,
        expected_hash: Option<BlobHash>,
        tmp: &Path,
        outboard_tmp: &Path,
    ) -> Result<(BlobHash, u64), BlobError> {
        if let Some(expected) = expected_hash
            && expected != hash
        {
            return Err(BlobError::WrongHash {
                expected,
                actual: hash,
            });
        }
        if expected_hash.is_none() {
            // An upload: its post follows.
            self.unclaimed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(hash, Instant::now());
        }
        self.install(&hash, written, tmp, outboard_tmp, true)?;
        Ok((hash, written))
    }

    /// An import of known length (room for it is held): one pass, the tree's hashes made as
    /// the bytes are written.
    fn import_known(
        &self,
        source: impl Read,
        len: u64,
        expected_hash: Option<BlobHash>,
        tmp: &Path,
        outboard_tmp: &Path,
    ) -> Result<(BlobHash, u64), BlobError> {
        if len > chatsync_model::attachment::MAX_ATTACHMENT_BYTES {
            return Err(BlobError::TooLarge(len));
        }
        let mut tee = Tee {
            source,
            out: BufWriter::with_capacity(IO_BUFFER, File::create(tmp)?),
            written: 0,
        };
        let mut outboard = BufWriter::new(File::create(outboard_tmp)?);
        let root = match bao_tree::io::sync::outboard_post_order(
            &mut tee,
            BaoTree::new(len, BLOCK_SIZE),
            &mut outboard,
        ) {
            Ok(root) => root,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(BlobError::WrongLength {
                    expected: len,
                    actual: tee.written,
                });
            }
            Err(e) => return Err(e.into()),
        };
        // Nothing may follow the announced length.
        let mut more = [0u8; 1];
        loop {
            match tee.source.read(&mut more) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(BlobError::WrongLength {
                        expected: len,
                        actual: len + 1,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        tee.out
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        outboard
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        self.finish_import(
            BlobHash(*root.as_bytes()),
            len,
            expected_hash,
            tmp,
            outboard_tmp,
        )
    }

    /// Moves a complete, synced blob and its outboard into place, or drops them when the blob
    /// is here already (`false`). `count`: its bytes are not yet in the usage.
    fn install(
        &self,
        hash: &BlobHash,
        len: u64,
        data: &Path,
        outboard: &Path,
        count: bool,
    ) -> io::Result<bool> {
        let _installing = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        self.touch(hash);
        let target = self.path(hash);
        if target.exists() {
            fs::remove_file(data)?;
            fs::remove_file(outboard)?;
            return Ok(false);
        }
        let fan = target.parent().unwrap_or(&self.dir);
        if !fan.exists() {
            fs::create_dir_all(fan)?;
            sync_dir(&self.dir)?;
        }
        fs::rename(outboard, self.outboard_path(hash))?;
        fs::rename(data, &target)?;
        sync_dir(fan)?;
        if count {
            self.used.fetch_add(len, Ordering::Relaxed);
        }
        self.blob_count.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// A post names these blobs: sweeps judge them by the messages from now on (a sweep
    /// already under way, which may have read the chat before the post, leaves them).
    pub fn claim(&self, hashes: impl IntoIterator<Item = BlobHash>) {
        let _installing = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        let mut unclaimed = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
        for hash in hashes {
            unclaimed.remove(&hash);
            self.touch(&hash);
        }
    }

    fn touch(&self, hash: &BlobHash) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*hash, Instant::now());
    }

    /// Whether a sweep that began at `since` must leave a blob: installed or named since, or
    /// uploaded less than `grace` ago with no post naming it yet.
    pub(super) fn kept_from_sweep(
        &self,
        hash: &BlobHash,
        since: Instant,
        grace: std::time::Duration,
    ) -> bool {
        let touched = self
            .touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .is_some_and(|at| *at >= since);
        touched
            || self
                .unclaimed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(hash)
                .is_some_and(|at| at.elapsed() < grace)
    }

    /// Forgets what a sweep that began at `since` no longer needs to know.
    pub(super) fn forget_before(&self, since: Instant, grace: std::time::Duration) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| *at >= since);
        self.unclaimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| at.elapsed() < grace);
    }

    /// Every complete blob.
    pub fn list(&self) -> io::Result<Vec<BlobHash>> {
        let mut found = Vec::new();
        for fan in fs::read_dir(&self.dir)? {
            let fan = fan?;
            if fan.file_name().len() != 2 || !fan.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(fan.path())? {
                if let Ok(hash) = BlobHash::from_hex(&entry?.file_name().to_string_lossy()) {
                    found.push(hash);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Removes a blob unless a sweep that began at `since` must leave it
    /// ([`Self::kept_from_sweep`]); its bytes if it was removed.
    pub(super) fn remove_unless_kept(
        &self,
        hash: &BlobHash,
        since: Instant,
        grace: std::time::Duration,
    ) -> io::Result<Option<u64>> {
        let _installing = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        if self.kept_from_sweep(hash, since, grace) {
            return Ok(None);
        }
        let len = self.len(hash);
        Ok(if self.remove_now(hash)? { len } else { None })
    }

    /// Removes a blob (no message here refers to it any more).
    pub fn remove(&self, hash: &BlobHash) -> io::Result<bool> {
        let _installing = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        self.remove_now(hash)
    }

    fn remove_now(&self, hash: &BlobHash) -> io::Result<bool> {
        let Some(len) = self.len(hash) else {
            return Ok(false);
        };
        fs::remove_file(self.path(hash))?;
        let _ = fs::remove_file(self.outboard_path(hash));
        self.remove_thumbnail(hash);
        self.used.fetch_sub(len, Ordering::Relaxed);
        self.blob_count.fetch_sub(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Sets room aside for `bytes` more: errs unless they fit in the quota, and on the disk
    /// above the store's reserve, besides what the other writes under way set aside. The
    /// caller gives it back with [`Self::release`] as it writes (or stops).
    pub fn reserve(&self, bytes: u64) -> Result<(), BlobError> {
        let _room = self.room.lock().unwrap_or_else(|e| e.into_inner());
        let used = self.used.load(Ordering::Relaxed);
        let reserved = self.reserved.load(Ordering::Relaxed);
        if used.saturating_add(reserved).saturating_add(bytes) > self.quota {
            return Err(BlobError::Quota {
                quota: self.quota,
                used: used + reserved,
                needed: bytes,
            });
        }
        let free = crate::store::space::free_bytes(&self.dir)?;
        // Outboards add under 1% to what the bytes take.
        let wanted = reserved.saturating_add(bytes);
        if free < self.reserve.saturating_add(wanted + wanted / 64) {
            return Err(BlobError::DiskFull {
                free,
                reserve: self.reserve,
            });
        }
        self.reserved.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back room set aside with [`Self::reserve`].
    pub fn release(&self, bytes: u64) {
        let _ = self
            .reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(bytes))
            });
    }

    /// Every blob with a file in `partial/`, whatever state a crash left it in.
    pub fn partial_hashes(&self) -> Vec<BlobHash> {
        let Ok(entries) = fs::read_dir(self.dir.join("partial")) else {
            return Vec::new();
        };
        let mut found: Vec<BlobHash> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                let name = name.to_string_lossy();
                BlobHash::from_hex(name.get(..64)?).ok()
            })
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// Downloads under way, from an earlier run or this one, with what each one's record says.
    pub fn partial_downloads(&self) -> Vec<(BlobHash, Progress)> {
        let Ok(entries) = fs::read_dir(self.dir.join("partial")) else {
            return Vec::new();
        };
        let mut found: Vec<(BlobHash, Progress)> = entries
            .filter_map(|e| {
                let hash = BlobHash::from_hex(&e.ok()?.file_name().to_string_lossy()).ok()?;
                let progress = partial::read_progress(&self.dir.join("partial"), &hash)?;
                Some((hash, progress))
            })
            .collect();
        found.sort_by_key(|(hash, _)| *hash);
        found
    }
}

/// Writes what it reads: an import's one pass, the tree hashing what the file receives.
struct Tee<R> {
    source: R,
    out: BufWriter<File>,
    written: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.source.read(buf)?;
        self.out.write_all(&buf[..n])?;
        self.written += n as u64;
        Ok(n)
    }
}

/// Room an import holds, given back when it ends.
struct Held<'a> {
    blobs: &'a Blobs,
    bytes: u64,
}

impl Held<'_> {
    fn grow(&mut self, bytes: u64) -> Result<(), BlobError> {
        self.blobs.reserve(bytes)?;
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.blobs.release(self.bytes);
    }
}

/// A complete blob, open for reading.
pub struct StoredBlob {
    pub size: u64,
    pub data: File,
    pub outboard: PostOrderOutboard<File>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
