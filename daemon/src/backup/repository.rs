//! A backup repository on its storage: the `config` object, content-addressed objects, and one
//! manifest per snapshot.
//!
//! ```text
//! config                      the repository's secrets, encrypted with the passphrase
//! objects/<2 hex>/<64 hex>    an object, named by the HMAC of its contents (keys.rs)
//! snapshots/<64 hex>          a manifest, named by the HMAC of its number
//! ```
//!
//! Objects are written before the manifest that names them, and each object or manifest is
//! written whole or not at all (a directory target writes it beside the repository and moves it
//! into place; an S3 store takes an object in one request), so an interrupted backup leaves
//! every earlier snapshot intact; what it did write is found by name and not written again by
//! the next one. A manifest holds its own HMAC (over its body, under the master secret), its
//! repository's id, and its number, which its name must match: a manifest altered, moved to
//! another name, or taken from another repository is refused.

use serde::{Deserialize, Serialize};

use super::{BackupError, keys::RepositoryKeys};

const CONFIG: &str = "config";
const OBJECTS: &str = "objects/";
const SNAPSHOTS: &str = "snapshots/";
/// Version of the manifest.
const MANIFEST_FORMAT: u32 = 1;
/// Largest object or manifest read (a chat's document is at most 256 MiB).
const MAX_OBJECT_BYTES: u64 = 300 << 20;

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
    pub chats: Vec<ChatEntry>,
}

/// One chat in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEntry {
    pub id: String,
    pub title: String,
    pub messages: u64,
    /// The object holding the chat: its whole document, sealed with the attestations that
    /// prove every change in it (as a device sends it to another).
    pub object: String,
    pub bytes: u64,
    /// The chat's heads when it was backed up: a chat whose heads are the same next time is
    /// not read again.
    #[serde(default)]
    pub heads: Vec<String>,
}

impl Manifest {
    /// The id users see: the start of the manifest's name.
    pub fn id(&self, keys: &RepositoryKeys) -> String {
        manifest_name(keys, self.seq)[..12].to_string()
    }

    pub fn messages(&self) -> u64 {
        self.chats.iter().map(|c| c.messages).sum()
    }

    /// Bytes of the objects it names (the roster excluded).
    pub fn bytes(&self) -> u64 {
        self.chats.iter().map(|c| c.bytes).sum()
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

    /// Writes an object holding `payload` unless one is there already. Returns its name and
    /// the bytes written (0 when it was there).
    pub async fn put(&self, payload: &[u8]) -> Result<(String, u64), BackupError> {
        let name = self.keys.object_name(payload);
        let path = object_path(&name);
        if exists(&self.op, &path).await? {
            return Ok((name, 0));
        }
        let sealed = self.keys.seal(payload)?;
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
        self.keys.open(name, &sealed)
    }

    /// Writes a manifest (after every object it names).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<u64, BackupError> {
        let body =
            serde_json::to_vec(manifest).map_err(|e| BackupError::Internal(e.to_string()))?;
        let mut plain = body.clone();
        plain.extend_from_slice(&self.keys.mac("manifest", &body));
        let sealed = self.keys.seal(&plain)?;
        let len = sealed.len() as u64;
        let path = format!("{SNAPSHOTS}{}", manifest_name(&self.keys, manifest.seq));
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
        out.sort_by_key(|m| m.seq);
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
        if manifest_name(&self.keys, manifest.seq) != name {
            return Err(damaged("moved: it is not the snapshot its name says"));
        }
        Ok(manifest)
    }

    /// A new manifest numbered after every snapshot there, and the newest snapshot there.
    pub async fn next_manifest(
        &self,
        device: &str,
        now: i64,
    ) -> Result<(Manifest, Option<Manifest>), BackupError> {
        let newest = self.manifests().await?.pop();
        let seq = newest.as_ref().map_or(1, |m| m.seq + 1);
        let next = Manifest {
            format: MANIFEST_FORMAT,
            repository: self.keys.repository.clone(),
            seq,
            created_at: now,
            device: device.to_string(),
            roster: String::new(),
            chats: Vec::new(),
        };
        Ok((next, newest))
    }
}

impl Repository {
    /// Deletes snapshot `seq` (its objects stay until [`Repository::delete_unused`]).
    pub async fn delete_manifest(&self, seq: u64) -> Result<(), BackupError> {
        let path = format!("{SNAPSHOTS}{}", manifest_name(&self.keys, seq));
        self.op.delete(&path).await.map_err(unreachable)
    }

    /// Deletes every object no snapshot in `kept` names and older than `grace`. Returns how
    /// many, and their bytes.
    pub async fn delete_unused(
        &self,
        kept: &[Manifest],
        grace: std::time::Duration,
    ) -> Result<(usize, u64), BackupError> {
        let used: std::collections::HashSet<&str> = kept
            .iter()
            .flat_map(|m| {
                std::iter::once(m.roster.as_str()).chain(m.chats.iter().map(|c| c.object.as_str()))
            })
            .collect();
        let entries = self
            .op
            .list_with(OBJECTS)
            .recursive(true)
            .await
            .map_err(unreachable)?;
        let (mut deleted, mut bytes) = (0, 0);
        for entry in entries {
            if entry.metadata().is_dir() || used.contains(entry.name()) {
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

fn manifest_name(keys: &RepositoryKeys, seq: u64) -> String {
    hex::encode(keys.mac("snapshot", &seq.to_be_bytes()))
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
