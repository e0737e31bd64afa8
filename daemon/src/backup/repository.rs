//! A backup repository on its storage: the `config` object, content-addressed objects, and one
//! manifest per snapshot.
//!
//! ```text
//! config                      the repository's secrets, encrypted with the passphrase
//!                             (objects hold bundles of chat packs, index pages, the roster,
//!                             pieces of attachments and attachment pages alike)
//! objects/<2 hex>/<64 hex>    an object, named by the HMAC of its contents (keys.rs)
//! snapshots/<64 hex>          a manifest, named by the HMAC of its number
//! ```
//!
//! A manifest names the roster's object and the snapshot's index pages; each page lists some
//! of the chats ([`ChatEntry`]), and each chat names its packs in bundle objects (`pack.rs`). Which page a chat
//! is on depends only on its id and the number of pages, so a backup after a few chats changed
//! writes those chats' new objects, their pages, and a small manifest: pages and objects that
//! did not change have the same contents, hence the same name, and are not written again.
//!
//! An object's first byte says how the rest is stored: as it is, or compressed (deflate).
//!
//! Objects are written before the manifest that names them, and each object or manifest is
//! written whole or not at all (a directory target writes it beside the repository and moves it
//! into place; an S3 store takes an object in one request), so an interrupted backup leaves
//! every earlier snapshot intact; what it did write is found by name and not written again by
//! the next one. A manifest holds its own HMAC (over its body, under the master secret), its
//! repository's id, and its number, which its name must match: a manifest altered, moved to
//! another name, or taken from another repository is refused.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::{BackupError, keys::RepositoryKeys};

const CONFIG: &str = "config";
const OBJECTS: &str = "objects/";
const SNAPSHOTS: &str = "snapshots/";
/// Where a directory target writes objects before moving them into place (`target.rs`).
const PARTIAL: &str = ".partial/";
/// Version of the manifest, its pages and entries.
const MANIFEST_FORMAT: u32 = 2;
/// Largest object or manifest read, and largest an object inflates to (a chat's document is at
/// most 256 MiB).
const MAX_OBJECT_BYTES: u64 = 300 << 20;
/// Chats per index page, about: pages are a power of two in number.
const CHATS_PER_PAGE: usize = 16;

/// How an object's contents are stored, its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Stored = 0,
    Deflate = 1,
}

/// What one snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub repository: String,
    /// Snapshots are numbered from 1 in the order they were made.
    pub seq: u64,
    /// When it was made (ms since the epoch).
    pub created_at: i64,
    /// The device that made it.
    pub device: String,
    /// The object holding the roster.
    pub roster: String,
    /// The objects listing the chats ([`Repository::entries`]).
    pub pages: Vec<String>,
    /// Totals over the chats, for listing snapshots without reading their pages.
    pub chats: usize,
    pub messages: u64,
    /// Bytes of the chats' documents.
    pub bytes: u64,
    /// The objects listing the attachments (`attachments.rs`); absent in snapshots made
    /// before attachments were backed up.
    #[serde(default)]
    pub attachment_pages: Vec<String>,
    #[serde(default)]
    pub attachments: u64,
    #[serde(default)]
    pub attachment_bytes: u64,
}

/// Where one of a chat's packs is: a bundle object, and the pack's place in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PackRef {
    pub object: String,
    pub index: u32,
}

/// One chat in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEntry {
    pub id: String,
    pub title: String,
    pub created_at: i64,
    pub created_by: String,
    pub messages: u64,
    pub last_activity: i64,
    /// The chat's heads when it was backed up: a chat whose heads are the same next time is
    /// not read again.
    pub heads: Vec<String>,
    /// The chat's packs (`pack.rs`), in order: the first a whole copy of its document as
    /// stored, each further one the chunks stored after those before it.
    pub packs: Vec<PackRef>,
    /// Bytes of the document in the first object, and in all of them.
    pub whole_bytes: u64,
    pub bytes: u64,
    /// Where the store stood: a digest of the chat's base, and the number of the chunk after
    /// the last one backed up. While the base stays the same, the next backup takes only the
    /// chunks from there.
    pub base_digest: String,
    pub next_chunk: u64,
}

impl Manifest {
    /// The id users see: the start of the manifest's name.
    pub fn id(&self, keys: &RepositoryKeys) -> String {
        manifest_name(keys, self.seq, &self.device)[..12].to_string()
    }
}

/// A repository opened with its keys.
#[derive(Clone, Debug)]
pub struct Repository {
    op: opendal::Operator,
    keys: RepositoryKeys,
}

impl Repository {
    /// Creates a repository on `op`, with `config` (the keys wrapped by the caller). Refuses a
    /// storage that already holds one.
    pub async fn create(
        op: opendal::Operator,
        keys: RepositoryKeys,
        config: Vec<u8>,
    ) -> Result<Repository, BackupError> {
        if exists(&op, CONFIG).await? {
            return Err(BackupError::Invalid(
                "the target already holds a backup repository: restore from it, or choose \
                 another target"
                    .into(),
            ));
        }
        op.write(CONFIG, config).await.map_err(unreachable)?;
        Ok(Repository { op, keys })
    }

    /// The repository on `op`, with keys this device keeps.
    pub fn with_keys(op: opendal::Operator, keys: RepositoryKeys) -> Repository {
        Repository { op, keys }
    }

    /// The `config` object of the repository on `op` (to open with a passphrase).
    pub async fn config(op: &opendal::Operator) -> Result<Vec<u8>, BackupError> {
        if !exists(op, CONFIG).await? {
            return Err(BackupError::NotFound(
                "no backup repository at this target".into(),
            ));
        }
        read(op, CONFIG).await
    }

    pub fn keys(&self) -> &RepositoryKeys {
        &self.keys
    }

    /// Writes an object holding `payload`, stored as `codec` says, unless one is there
    /// already. Returns its name and the bytes written (0 when it was there).
    pub async fn put(&self, payload: &[u8], codec: Codec) -> Result<(String, u64), BackupError> {
        // What could not be read back is not written.
        if payload.len() as u64 > MAX_OBJECT_BYTES - (MAX_OBJECT_BYTES >> 3) {
            return Err(BackupError::Invalid(format!(
                "an object of {} bytes is too large to back up",
                payload.len()
            )));
        }
        let keys = self.keys.clone();
        let payload = payload.to_vec();
        // Compressing, naming and encrypting are the CPU's work: off the async threads, so that
        // objects are sealed on every core while others are written.
        let (name, contents) = tokio::task::spawn_blocking(move || {
            let contents = encode_contents(&payload, codec)?;
            Ok::<_, BackupError>((keys.object_name(&contents), contents))
        })
        .await
        .map_err(|e| BackupError::Internal(e.to_string()))??;
        let path = object_path(&name);
        if exists(&self.op, &path).await? {
            return Ok((name, 0));
        }
        let keys = self.keys.clone();
        let sealed = tokio::task::spawn_blocking(move || keys.seal(&contents))
            .await
            .map_err(|e| BackupError::Internal(e.to_string()))??;
        let len = sealed.len() as u64;
        self.op.write(&path, sealed).await.map_err(unreachable)?;
        Ok((name, len))
    }

    /// The payload of object `name`, checked against its name.
    pub async fn get(&self, name: &str) -> Result<Vec<u8>, BackupError> {
        if name.len() != 64 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(BackupError::Damaged(format!(
                "a manifest names a bad object {name:?}"
            )));
        }
        let path = object_path(name);
        if !exists(&self.op, &path).await? {
            return Err(BackupError::Damaged(format!("object {name} is missing")));
        }
        let sealed = read(&self.op, &path).await?;
        let (keys, name) = (self.keys.clone(), name.to_string());
        tokio::task::spawn_blocking(move || decode_contents(&name, &keys.open(&name, &sealed)?))
            .await
            .map_err(|e| BackupError::Internal(e.to_string()))?
    }

    /// Writes the index pages listing `entries`; returns their names, and the bytes and objects
    /// written.
    pub async fn put_pages(
        &self,
        entries: Vec<ChatEntry>,
    ) -> Result<(Vec<String>, u64, usize), BackupError> {
        let count = entries.len().div_ceil(CHATS_PER_PAGE).next_power_of_two();
        let mut pages: Vec<Vec<ChatEntry>> = vec![Vec::new(); count];
        for entry in entries {
            let page = self.page_of(&entry.id, count);
            pages[page].push(entry);
        }
        let mut names = Vec::with_capacity(count);
        let (mut written, mut objects) = (0, 0);
        for mut page in pages {
            page.sort_by(|a, b| a.id.cmp(&b.id));
            let body =
                serde_json::to_vec(&page).map_err(|e| BackupError::Internal(e.to_string()))?;
            let (name, bytes) = self.put(&body, Codec::Deflate).await?;
            names.push(name);
            written += bytes;
            objects += usize::from(bytes > 0);
        }
        Ok((names, written, objects))
    }

    /// The chats a snapshot holds, read from its pages (each checked: every chat on the page
    /// its id belongs to, none twice).
    pub async fn entries(&self, manifest: &Manifest) -> Result<Vec<ChatEntry>, BackupError> {
        use futures_util::StreamExt;
        let pages: Vec<Result<Vec<u8>, BackupError>> =
            futures_util::stream::iter(manifest.pages.clone())
                .map(|name| async move { self.get(&name).await })
                .buffered(super::PARALLEL_OBJECTS)
                .collect()
                .await;
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::with_capacity(manifest.chats.min(1 << 16));
        for (at, page) in pages.into_iter().enumerate() {
            for entry in decode_page(&page?)? {
                if self.page_of(&entry.id, manifest.pages.len()) != at
                    || !seen.insert(entry.id.clone())
                {
                    return Err(BackupError::Damaged(format!(
                        "chat {} is listed out of place in its snapshot",
                        entry.id
                    )));
                }
                entries.push(entry);
            }
        }
        if entries.len() != manifest.chats {
            return Err(BackupError::Damaged(format!(
                "the snapshot lists {} chats in its pages, not {}",
                entries.len(),
                manifest.chats
            )));
        }
        Ok(entries)
    }

    /// The chats an index page lists, as they are (without the checks of [`Self::entries`]:
    /// for collecting the objects they name).
    pub async fn page(&self, name: &str) -> Result<Vec<ChatEntry>, BackupError> {
        decode_page(&self.get(name).await?)
    }

    /// The page a chat is listed on, of `count` (a power of two).
    fn page_of(&self, chat: &str, count: usize) -> usize {
        let mac = self.keys.mac("page", chat.as_bytes());
        (u64::from_be_bytes(mac[..8].try_into().unwrap_or_default()) % count.max(1) as u64) as usize
    }

    /// Writes a manifest (after every object it names).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<u64, BackupError> {
        let body =
            serde_json::to_vec(manifest).map_err(|e| BackupError::Internal(e.to_string()))?;
        let mut plain = body.clone();
        plain.extend_from_slice(&self.keys.mac("manifest", &body));
        let sealed = self.keys.seal(&plain)?;
        let len = sealed.len() as u64;
        let path = format!(
            "{SNAPSHOTS}{}",
            manifest_name(&self.keys, manifest.seq, &manifest.device)
        );
        self.op.write(&path, sealed).await.map_err(unreachable)?;
        Ok(len)
    }

    /// Every snapshot, oldest first, each checked.
    pub async fn manifests(&self) -> Result<Vec<Manifest>, BackupError> {
        let entries = self.op.list(SNAPSHOTS).await.map_err(unreachable)?;
        let mut out = Vec::new();
        for entry in entries {
            let name = entry.name().to_string();
            if name.is_empty() || entry.metadata().is_dir() {
                continue;
            }
            let sealed = read(&self.op, &format!("{SNAPSHOTS}{name}")).await?;
            out.push(self.check_manifest(&name, &sealed)?);
        }
        out.sort_by_key(|m| (m.seq, m.created_at));
        Ok(out)
    }

    fn check_manifest(&self, name: &str, sealed: &[u8]) -> Result<Manifest, BackupError> {
        let damaged = |why: &str| BackupError::Damaged(format!("snapshot {name}: {why}"));
        let plain = self.keys.decrypt(&format!("snapshot {name}"), sealed)?;
        let (body, mac) = plain
            .split_last_chunk::<32>()
            .ok_or_else(|| damaged("truncated"))?;
        if &self.keys.mac("manifest", body) != mac {
            return Err(damaged("altered (its signature does not match)"));
        }
        let manifest: Manifest =
            serde_json::from_slice(body).map_err(|e| damaged(&format!("unreadable: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(damaged("written by another version"));
        }
        if manifest.repository != self.keys.repository {
            return Err(damaged("from another repository"));
        }
        if manifest_name(&self.keys, manifest.seq, &manifest.device) != name {
            return Err(damaged("moved: it is not the snapshot its name says"));
        }
        Ok(manifest)
    }

    /// A new manifest by `device`, numbered after every snapshot there, and the newest snapshot
    /// `device` made there. (Two devices backing up to one repository, a restored device and the
    /// one it replaced, say, may both make a snapshot with one number: each keeps its own.)
    pub async fn next_manifest(
        &self,
        device: &str,
        now: i64,
    ) -> Result<(Manifest, Option<Manifest>), BackupError> {
        let manifests = self.manifests().await?;
        let seq = manifests.last().map_or(1, |m| m.seq + 1);
        let newest = manifests.into_iter().rev().find(|m| m.device == device);
        let next = Manifest {
            format: MANIFEST_FORMAT,
            repository: self.keys.repository.clone(),
            seq,
            created_at: now,
            device: device.to_string(),
            roster: String::new(),
            pages: Vec::new(),
            chats: 0,
            messages: 0,
            bytes: 0,
            attachment_pages: Vec::new(),
            attachments: 0,
            attachment_bytes: 0,
        };
        Ok((next, newest))
    }
}

impl Repository {
    /// Deletes a snapshot (its objects stay until [`Repository::delete_unused`]).
    pub async fn delete_manifest(&self, manifest: &Manifest) -> Result<(), BackupError> {
        let path = format!(
            "{SNAPSHOTS}{}",
            manifest_name(&self.keys, manifest.seq, &manifest.device)
        );
        self.op.delete(&path).await.map_err(unreachable)
    }

    /// Deletes every object not in `used` (the objects of the snapshots kept) and older than
    /// `grace`, and what writes cut off part-way left in a directory target's `.partial/` (see
    /// `target.rs`) as old. Returns how many, and their bytes.
    pub async fn delete_unused(
        &self,
        used: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> Result<(usize, u64), BackupError> {
        let mut unused = self
            .op
            .list_with(OBJECTS)
            .recursive(true)
            .await
            .map_err(unreachable)?;
        unused.retain(|entry| !used.contains(entry.name()));
        match self.op.list(PARTIAL).await {
            Ok(partial) => unused.extend(partial),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {}
            Err(e) => return Err(unreachable(e)),
        }
        let (mut deleted, mut bytes) = (0, 0);
        for entry in unused {
            if entry.metadata().is_dir() {
                continue;
            }
            // Written within `grace`: it may belong to a backup still under way.
            let meta = self.op.stat(entry.path()).await.map_err(unreachable)?;
            let now_secs = crate::engine::now_ms() / 1000;
            let recent = !grace.is_zero()
                && meta.last_modified().is_none_or(|at| {
                    now_secs - at.into_inner().as_second() < grace.as_secs() as i64
                });
            if recent {
                continue;
            }
            bytes += meta.content_length();
            self.op.delete(entry.path()).await.map_err(unreachable)?;
            deleted += 1;
        }
        Ok((deleted, bytes))
    }
}

fn decode_page(bytes: &[u8]) -> Result<Vec<ChatEntry>, BackupError> {
    serde_json::from_slice(bytes)
        .map_err(|e| BackupError::Damaged(format!("an index page is unreadable: {e}")))
}

/// An object's contents: its codec byte, then `payload` stored as the codec says.
fn encode_contents(payload: &[u8], codec: Codec) -> Result<Vec<u8>, BackupError> {
    match codec {
        Codec::Stored => {
            let mut out = Vec::with_capacity(payload.len() + 1);
            out.push(Codec::Stored as u8);
            out.extend_from_slice(payload);
            Ok(out)
        }
        Codec::Deflate => {
            let mut encoder = flate2::write::DeflateEncoder::new(
                vec![Codec::Deflate as u8],
                flate2::Compression::default(),
            );
            encoder
                .write_all(payload)
                .and_then(|()| encoder.finish())
                .map_err(|e| BackupError::Internal(format!("cannot compress: {e}")))
        }
    }
}

/// The payload of an object's contents (at most [`MAX_OBJECT_BYTES`] once inflated).
fn decode_contents(name: &str, contents: &[u8]) -> Result<Vec<u8>, BackupError> {
    match contents.split_first() {
        Some((&0, payload)) => Ok(payload.to_vec()),
        Some((&1, compressed)) => {
            let mut payload = Vec::new();
            flate2::read::DeflateDecoder::new(compressed)
                .take(MAX_OBJECT_BYTES + 1)
                .read_to_end(&mut payload)
                .map_err(|e| {
                    BackupError::Damaged(format!("object {name} does not inflate: {e}"))
                })?;
            if payload.len() as u64 > MAX_OBJECT_BYTES {
                return Err(BackupError::Damaged(format!(
                    "object {name} inflates too large"
                )));
            }
            Ok(payload)
        }
        _ => Err(BackupError::Damaged(format!(
            "object {name} is stored in a way this version does not know"
        ))),
    }
}

/// A manifest's name: an HMAC of its number and the device that made it.
fn manifest_name(keys: &RepositoryKeys, seq: u64, device: &str) -> String {
    let mut named = seq.to_be_bytes().to_vec();
    named.extend_from_slice(device.as_bytes());
    hex::encode(keys.mac("snapshot", &named))
}

fn object_path(name: &str) -> String {
    format!("{OBJECTS}{}/{name}", &name[..2])
}

fn unreachable(e: opendal::Error) -> BackupError {
    BackupError::Unreachable(e.to_string())
}

async fn exists(op: &opendal::Operator, path: &str) -> Result<bool, BackupError> {
    match op.stat(path).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(unreachable(e)),
    }
}

async fn read(op: &opendal::Operator, path: &str) -> Result<Vec<u8>, BackupError> {
    let meta = op.stat(path).await.map_err(unreachable)?;
    if meta.content_length() > MAX_OBJECT_BYTES {
        return Err(BackupError::Damaged(format!(
            "{path} is too large to be ours"
        )));
    }
    Ok(op.read(path).await.map_err(unreachable)?.to_vec())
}
