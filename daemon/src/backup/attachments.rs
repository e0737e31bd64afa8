//! Attachments in backups: every blob this device holds, cut into pieces of about an object's
//! size, each piece an object like any other (encrypted, named by the HMAC of its contents), and
//! listed on attachment pages that the manifest names.
//!
//! A blob is immutable and named by its hash, so a blob listed in the newest snapshot is listed
//! again without being read; the same bytes on two devices backing up to one repository make the
//! same pieces, stored once. Which page lists a blob depends only on its hash and the number of
//! pages, so a backup after a few new photos writes their pieces and their pages only.
//!
//! A restore brings back each blob the device lacks, piece by piece into the blob store, which
//! hashes what it receives: bytes that do not hash to the name the page gives are refused. Blobs
//! that do not fit the quota or the disk are left in the backup, and counted.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use chatsync_model::BlobHash;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    BackupError,
    repository::{Codec, Manifest, Repository},
};
use crate::blobs::{BlobError, Blobs, pipe};

/// Blobs per attachment page, about: pages are a power of two in number.
const BLOBS_PER_PAGE: usize = 256;

/// One blob in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    /// Its BLAKE3 hash (hex).
    pub hash: String,
    pub size: u64,
    /// The objects holding its bytes, in order.
    pub pieces: Vec<String>,
}

/// What the attachments added to a snapshot.
#[derive(Debug, Default)]
pub struct BackedUp {
    pub pages: Vec<String>,
    pub blobs: u64,
    pub bytes: u64,
    pub written_bytes: u64,
    pub written_objects: usize,
}

/// What a restore did with the attachments.
#[derive(Debug, Default, Clone, Copy)]
pub struct Restored {
    pub restored: usize,
    /// Left in the backup: over the quota, or no room on the disk.
    pub skipped: usize,
}

/// Backs up every blob in `blobs`, reusing the entries of `previous` (the newest snapshot).
pub async fn back_up(
    repo: &Repository,
    blobs: &Arc<Blobs>,
    previous: Option<&Manifest>,
    piece_bytes: usize,
) -> Result<BackedUp, BackupError> {
    let known: HashMap<String, BlobEntry> = match previous {
        Some(manifest) => entries(repo, manifest)
            .await?
            .into_iter()
            .map(|e| (e.hash.clone(), e))
            .collect(),
        None => HashMap::new(),
    };
    let store = blobs.clone();
    let held = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|e| BackupError::Internal(e.to_string()))?
        .map_err(|e| BackupError::Internal(format!("attachment store: {e}")))?;
    let mut done = BackedUp::default();
    let mut listed = Vec::with_capacity(held.len());
    for hash in held {
        let hex = hash.to_hex();
        let entry = match known.get(&hex) {
            Some(entry) => entry.clone(),
            None => match back_up_blob(repo, blobs, &hash, piece_bytes, &mut done).await? {
                Some(entry) => entry,
                // Removed meanwhile: no longer named by any message.
                None => continue,
            },
        };
        done.blobs += 1;
        done.bytes += entry.size;
        listed.push(entry);
    }
    let count = listed.len().div_ceil(BLOBS_PER_PAGE).next_power_of_two();
    let mut pages: Vec<Vec<BlobEntry>> = vec![Vec::new(); count];
    for entry in listed {
        pages[page_of(&entry.hash, count)].push(entry);
    }
    for mut page in pages {
        page.sort_by(|a, b| a.hash.cmp(&b.hash));
        let body = serde_json::to_vec(&page).map_err(|e| BackupError::Internal(e.to_string()))?;
        let (name, bytes) = repo.put(&body, Codec::Deflate).await?;
        done.written_bytes += bytes;
        done.written_objects += usize::from(bytes > 0);
        done.pages.push(name);
    }
    Ok(done)
}

/// Writes one blob's pieces; `None` if the blob is gone.
async fn back_up_blob(
    repo: &Repository,
    blobs: &Arc<Blobs>,
    hash: &BlobHash,
    piece_bytes: usize,
    done: &mut BackedUp,
) -> Result<Option<BlobEntry>, BackupError> {
    let path = blobs.path(hash);
    let Some(size) = blobs.len(hash) else {
        return Ok(None);
    };
    let mut pieces = Vec::with_capacity((size / piece_bytes as u64) as usize + 1);
    let mut offset = 0u64;
    while offset < size {
        let len = piece_bytes.min((size - offset) as usize);
        let path = path.clone();
        let piece = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len];
            std::fs::File::open(&path)?.read_exact_at(&mut buf, offset)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|e| BackupError::Internal(e.to_string()))?;
        let piece = match piece {
            Ok(piece) => piece,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BackupError::Internal(format!("attachment {hash}: {e}"))),
        };
        let (name, bytes) = repo.put(&piece, Codec::Stored).await?;
        done.written_bytes += bytes;
        done.written_objects += usize::from(bytes > 0);
        pieces.push(name);
        offset += len as u64;
    }
    Ok(Some(BlobEntry {
        hash: hash.to_hex(),
        size,
        pieces,
    }))
}

/// The blobs a snapshot lists (each on the page its hash belongs to, none twice).
pub async fn entries(
    repo: &Repository,
    manifest: &Manifest,
) -> Result<Vec<BlobEntry>, BackupError> {
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    let count = manifest.attachment_pages.len();
    for (at, name) in manifest.attachment_pages.iter().enumerate() {
        for entry in page(repo, name).await? {
            if BlobHash::from_hex(&entry.hash).is_err()
                || page_of(&entry.hash, count) != at
                || !seen.insert(entry.hash.clone())
            {
                return Err(BackupError::Damaged(format!(
                    "attachment {} is listed out of place in its snapshot",
                    entry.hash
                )));
            }
            all.push(entry);
        }
    }
    Ok(all)
}

/// The blobs one attachment page lists, as they are.
pub async fn page(repo: &Repository, name: &str) -> Result<Vec<BlobEntry>, BackupError> {
    serde_json::from_slice(&repo.get(name).await?)
        .map_err(|e| BackupError::Damaged(format!("an attachment page is unreadable: {e}")))
}

/// Reads a blob's pieces back and checks they hash to its name; returns the bytes read.
pub async fn verify(repo: &Repository, entry: &BlobEntry) -> Result<u64, BackupError> {
    let mut hasher = blake3::Hasher::new();
    let mut read = 0u64;
    for piece in &entry.pieces {
        let bytes = repo.get(piece).await?;
        read += bytes.len() as u64;
        hasher.update(&bytes);
    }
    if read != entry.size || hasher.finalize().to_hex().as_str() != entry.hash {
        return Err(BackupError::Damaged(format!(
            "attachment {} does not match its hash",
            entry.hash
        )));
    }
    Ok(read)
}

/// Brings back the blobs of `manifest` that `blobs` lacks.
pub async fn restore(
    repo: &Repository,
    blobs: &Arc<Blobs>,
    manifest: &Manifest,
) -> Result<Restored, BackupError> {
    let mut restored = Restored::default();
    for entry in entries(repo, manifest).await? {
        let hash = BlobHash::from_hex(&entry.hash)
            .map_err(|e| BackupError::Damaged(format!("attachment page: {e}")))?;
        if blobs.has(&hash) {
            continue;
        }
        let (tx, rx) = mpsc::channel(pipe::QUEUE);
        let store = blobs.clone();
        let size = entry.size;
        let import = tokio::task::spawn_blocking(move || {
            store.import_checked(pipe::ChannelReader::new(rx), Some(size), Some(hash))
        });
        let mut sent = Ok(());
        for piece in &entry.pieces {
            match repo.get(piece).await {
                Ok(bytes) => {
                    if tx.send(Ok(bytes.into())).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("a piece could not be read")))
                        .await;
                    sent = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        let imported = import
            .await
            .map_err(|e| BackupError::Internal(e.to_string()))?;
        sent?;
        match imported {
            Ok(_) => {
                blobs.claim([hash]);
                restored.restored += 1;
            }
            Err(BlobError::Quota { .. } | BlobError::DiskFull { .. }) => restored.skipped += 1,
            // Bytes that are not the attachment (a piece swapped by whoever holds the
            // repository's key): nothing of them is kept, and the rest is restored.
            Err(e @ (BlobError::WrongHash { .. } | BlobError::WrongLength { .. })) => {
                tracing::warn!(%hash, error = %e, "an attachment in the backup is damaged");
                restored.skipped += 1;
            }
            Err(e) => return Err(BackupError::Internal(e.to_string())),
        }
    }
    Ok(restored)
}

/// The page a blob is listed on, of `count` (a power of two): the hash is uniform already.
fn page_of(hash: &str, count: usize) -> usize {
    let prefix = u64::from_str_radix(hash.get(..16).unwrap_or("0"), 16).unwrap_or(0);
    (prefix % count.max(1) as u64) as usize
}
