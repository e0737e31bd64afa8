//! The store: every chat document on disk, in sled. Only this module knows sled.
//!
//! Layout (every value starts with a one-byte format version, [`FORMAT`]):
//! - tree `meta`: `schema` -> the store schema version; `unsettled` -> the chats whose chunks
//!   are being written ([`Unsettled`], JSON; see "Crash consistency" below).
//! - tree `chats.v1`: chat id -> [`ChatRecord`] (JSON): title and counters, so that listing and
//!   resolving chats never has to load a document.
//! - tree `roster.v1`: the roster document (devices that may sync), in the same base-and-chunks
//!   layout as a chat, under the fixed id `roster`.
//! - tree `network.v1`: what the network remembers between runs (JSON): `listen` -> the ports
//!   this device last listened on ([`ListenPorts`]); `reached/DEVICE` -> addresses that reached
//!   a roster device, most recent first.
//! - tree `attestations.v2`: `chat id, 0, actor, seq (u64 big-endian)` -> another device's
//!   signature over that change (`hash, signature`), to pass its changes on; older ones of an
//!   actor are removed once a newer one's change is known to be stored. `attestations.v1`
//!   (one per chat and actor, from earlier versions) is still read.
//! - tree `docs.v1`: `chat id, 0, 'B'` -> the compacted document (an Automerge save);
//!   `chat id, 0, 'C', seq (u64 big-endian)` -> one incremental chunk (the changes of one
//!   operation). Loading a chat concatenates the base and its chunks in key order and hands them
//!   to Automerge in one call.
//!
//! Why chunks: a post must not rewrite the whole chat. Each operation appends one small chunk;
//! compaction ([`Store::compact`]) later folds them into the base in one atomic batch.
//!
//! Durability: writes land in sled's log; [`Store::flush`] makes everything written before it
//! durable. The engine acknowledges an operation only after a flush that started after its
//! write (group commit, see `engine::commit`).
//!
//! Crash consistency: after a crash sled recovers a prefix of its log (its recovery stops at
//! the first torn message), so writes survive in the order they were made. Chunks and records
//! are written with plain inserts, in that order, not in a sled transaction: a transaction (or
//! batch) makes sled write its log buffer out an extra time, a second block-device write per
//! group commit, which cost about a tenth of the post throughput. The price is that a crash
//! may keep a group's chunks but not its records. [`Store::append_chunks`] therefore first
//! notes which chats it is writing (`unsettled`), and each record carries the sequence number
//! of the next chunk: on the next start the engine looks for chunks past their record in the
//! chats noted and rebuilds those records from the documents. A clean stop clears the note
//! ([`Store::settle`]).

use std::path::Path;

use chatsync_model::{
    ChatId,
    authorship::{Attestation, SIGNATURE_BYTES},
};
use serde::{Deserialize, Serialize};

mod copy;
mod keys;
pub(crate) mod space;

pub use copy::ChatCopy;
pub use space::{Space, free_bytes};

/// Key in the `meta` tree of the chats being written ([`Unsettled`]).
const META_UNSETTLED: &[u8] = b"unsettled";
/// Most chats an [`Unsettled`] note names; a write of more notes [`Unsettled::All`].
const MAX_UNSETTLED_CHATS: usize = 1024;

/// The chats whose records may lag behind their chunks: those the last chunk write before a
/// crash was writing (see "Crash consistency" in the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unsettled {
    Chats(Vec<ChatId>),
    /// Too many to name: any chat may.
    All,
}

/// Evidence of an equivocation as kept: the equivocating actor, and the encoded evidence.
pub type ActorEvidence = (Vec<u8>, Vec<u8>);

/// Keys in the `network.v1` tree.
const NETWORK_LISTEN: &[u8] = b"listen";
const NETWORK_REACHED: &[u8] = b"reached/";

/// The ports this device's listeners got when the configuration left the choice to the system
/// (port 0), so that it listens on the same ones after a restart and devices that remember its
/// addresses find it again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenPorts {
    pub tcp: Option<u16>,
    pub quic: Option<u16>,
}

/// Version of the store layout written by this build.
const SCHEMA_VERSION: u32 = 1;
/// Format byte in front of every value.
const FORMAT: u8 = 1;
/// Below this much free space, a store that fails to open is reported as on a full disk.
const OPEN_NEEDS_FREE: u64 = 16 * 1024 * 1024;

/// Removes the snapshots sled left unfinished in `dir` (see [`Store::open`]); returns how many.
fn remove_unfinished_snapshots(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot remove an unfinished snapshot")
                }
            }
        }
    }
    removed
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Sled(#[from] sled::Error),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the store at {path} was written by a newer chatsync (schema {found}, this build reads {SCHEMA_VERSION})"
    )]
    TooNew { path: String, found: u32 },
    /// A read that needs a consistent view kept being overtaken by writes.
    #[error("{0}")]
    Busy(String),
    #[error("another chatsyncd is already using the store at {0}")]
    Locked(String),
    #[error(
        "the disk holding the store at {path} is full ({free} bytes free); free some space and \
         start chatsyncd again (nothing was lost)"
    )]
    Full { path: String, free: u64 },
}

/// What the store keeps about a chat besides its document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRecord {
    pub title: String,
    pub created_at: i64,
    pub created_by: String,
    /// Number of messages, deleted ones included.
    pub messages: u64,
    /// Time of the last local or received change (ms).
    pub last_activity: i64,
    /// The document's heads (hex), so that devices can compare chats without loading them.
    #[serde(default)]
    pub heads: Vec<String>,
    /// Sequence number of the chat's next chunk: the record accounts for every chunk before it.
    /// Chunk numbers keep growing across compactions (loading takes the larger of this and the
    /// last chunk's), so a chunk at or past it was written after the record. 0 in records of
    /// older builds (they wrote record and chunk atomically).
    #[serde(default)]
    pub next_seq: u64,
    /// This device's newest change in the chat, which reaches every change of the device there
    /// (`ChatDoc::newest_change_by`): what a backup signs for them without loading the chat.
    /// `None` when not known (records of older builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_newest: Option<OwnNewest>,
    /// Restored from a backup and not loaded since: its document goes through the checks of a
    /// chat from another device when it is first loaded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchecked: bool,
}

/// This device's newest change in a chat, as its record keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnNewest {
    /// The device wrote nothing in the chat.
    NoChange,
    Change {
        /// The actor (hex), its sequence number, and the change's hash (hex).
        actor: String,
        seq: u64,
        hash: String,
    },
}

impl OwnNewest {
    /// `device`'s newest change in `doc` (a walk over every change).
    pub fn of(doc: &mut chatsync_model::ChatDoc, device: &chatsync_model::DeviceId) -> Self {
        let newest = doc.newest_change_by(device);
        Self::from_change(
            newest
                .as_ref()
                .map(|(actor, seq, hash)| (actor, *seq, hash)),
        )
    }

    pub fn from_change(change: Option<(&automerge::ActorId, u64, &automerge::ChangeHash)>) -> Self {
        match change {
            None => OwnNewest::NoChange,
            Some((actor, seq, hash)) => OwnNewest::Change {
                actor: actor.to_hex_string(),
                seq,
                hash: hash.to_string(),
            },
        }
    }
}

/// A document's stored bytes (a chat's or the roster's), ready to load.
#[derive(Debug)]
pub struct StoredDoc {
    /// Base followed by every chunk, in order: loadable in one `ChatDoc::load` call.
    pub bytes: Vec<u8>,
    /// Sequence number for the next chunk.
    pub next_seq: u64,
    pub base_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
}

#[derive(Clone)]
pub struct Store {
    /// Where the store lives (for measuring the disk's free space).
    dir: std::sync::Arc<Path>,
    db: sled::Db,
    chats: sled::Tree,
    docs: sled::Tree,
    roster: sled::Tree,
    /// Other devices' attestations per chat, actor and sequence number, to pass their changes
    /// on.
    attestations: sled::Tree,
    /// The same, one per chat and actor, as earlier versions wrote them: read, never written.
    attestations_v1: sled::Tree,
    /// Evidence of equivocations, per chat and equivocating actor (see
    /// `chatsync_model::equivocation`): what the chat does not keep, and why.
    evidence: sled::Tree,
    network: sled::Tree,
    meta: sled::Tree,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, using at most `cache_bytes` for sled's page cache.
    ///
    /// sled writes a snapshot on every open, first to `snap.N.generating`, renamed once
    /// complete. When that fails (the disk is full), it leaves the unfinished file behind, and
    /// its next open takes it for the newest snapshot and fails with "corrupted data" for good.
    /// So after an open that fails (not for a lock: then another daemon may be writing one),
    /// unfinished snapshots are removed (sled's log and last complete snapshot still hold
    /// everything) and the open is tried once more; a disk that is still full is then said so.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let first = Self::open_once(dir, cache_bytes);
        let Err(e) = first else {
            return first;
        };
        if matches!(e, StoreError::Locked(_) | StoreError::TooNew { .. }) {
            return Err(e);
        }
        let removed = remove_unfinished_snapshots(dir);
        let result = if removed > 0 {
            tracing::warn!(
                removed,
                error = %e,
                "the store did not open; removed unfinished snapshots and trying again"
            );
            let again = Self::open_once(dir, cache_bytes);
            if again.is_err() {
                remove_unfinished_snapshots(dir);
            }
            again
        } else {
            Err(e)
        };
        result.map_err(|e| match space::free_bytes(dir) {
            Ok(free) if free < OPEN_NEEDS_FREE => StoreError::Full {
                path: dir.display().to_string(),
                free,
            },
            _ => e,
        })
    }

    fn open_once(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked(dir.display().to_string())
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::Locked(dir.display().to_string())
                }
                other => StoreError::Sled(other),
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema")? {
            None => {
                meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("bad schema version record".into()))?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::TooNew {
                        path: dir.display().to_string(),
                        found,
                    });
                }
            }
        }
        Ok(Store {
            dir: dir.into(),
            chats: db.open_tree("chats.v1")?,
            docs: db.open_tree("docs.v1")?,
            roster: db.open_tree("roster.v1")?,
            attestations: db.open_tree("attestations.v2")?,
            attestations_v1: db.open_tree("attestations.v1")?,
            evidence: db.open_tree("evidence.v1")?,
            network: db.open_tree("network.v1")?,
            meta,
            db,
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the store and waits, at most `timeout`, until its lock is released; whether it
    /// was. sled holds the lock (a `flock` on its `db` file) until the last of its internal
    /// handles closes, which its IO threads may do a moment after the store is dropped; a
    /// daemon that stops must not return before another one can open the store.
    pub fn close(self, timeout: std::time::Duration) -> bool {
        let db_file = self.dir.join("db");
        drop(self);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let file = match std::fs::File::open(&db_file) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Err(_) => return false,
            };
            // Dropped at once, which unlocks.
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(_unlocked_on_drop) => return true,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
    }

    /// Every chat record. Records that cannot be read are skipped with a warning.
    pub fn chat_records(&self) -> Result<Vec<(ChatId, ChatRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.chats.iter() {
            let (k, v) = item?;
            let id = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| ChatId::new(s).ok());
            match (id, decode::<ChatRecord>(&v)) {
                (Some(id), Ok(record)) => out.push((id, record)),
                (id, _) => tracing::warn!(?id, "skipping unreadable chat record"),
            }
        }
        Ok(out)
    }

    pub fn put_chat_record(&self, id: &ChatId, record: &ChatRecord) -> Result<(), StoreError> {
        self.chats.insert(id.as_str(), encode(record)?)?;
        Ok(())
    }

    /// Stores a new chat: its record and its first document.
    pub fn create_chat(
        &self,
        id: &ChatId,
        record: &ChatRecord,
        doc: &[u8],
    ) -> Result<(), StoreError> {
        self.docs.insert(keys::base(id), framed(doc))?;
        self.put_chat_record(id, record)
    }

    /// Reads a chat's base and chunks.
    pub fn load_chat(&self, id: &ChatId) -> Result<Option<StoredDoc>, StoreError> {
        load_doc(&self.docs, id)
    }

    /// Reads the roster's base and chunks.
    pub fn load_roster(&self) -> Result<Option<StoredDoc>, StoreError> {
        load_doc(&self.roster, &roster_id())
    }

    /// Stores a new roster document.
    pub fn create_roster(&self, doc: &[u8]) -> Result<(), StoreError> {
        self.roster.insert(keys::base(&roster_id()), framed(doc))?;
        Ok(())
    }

    /// Appends one incremental chunk of the roster.
    pub fn append_roster_chunk(&self, seq: u64, chunk: &[u8]) -> Result<(), StoreError> {
        self.roster
            .insert(keys::chunk(&roster_id(), seq), framed(chunk))?;
        Ok(())
    }

    /// Appends one incremental chunk and the chat's updated record (see [`Store::append_chunks`]).
    pub fn append_chunk(
        &self,
        id: &ChatId,
        seq: u64,
        chunk: &[u8],
        record: &ChatRecord,
    ) -> Result<(), StoreError> {
        self.append_chunks(&[(id, seq, chunk)], &[(id, record)])
    }

    /// Appends incremental chunks (chat, sequence number, bytes) of any chats, then those chats'
    /// updated records. Not atomic: a crash before the next flush may keep the chunks and lose
    /// the records, never the other way round. The chats are first noted as unsettled, so that
    /// the next start finds such records (see "Crash consistency" in the module docs).
    ///
    /// Why many at once: the note, the chunks and the records of a whole group commit
    /// (`engine::commit`) go into sled's log buffer together and out to disk with one flush.
    pub fn append_chunks(
        &self,
        chunks: &[(&ChatId, u64, &[u8])],
        records: &[(&ChatId, &ChatRecord)],
    ) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut chats: Vec<ChatId> = chunks.iter().map(|(id, _, _)| (*id).clone()).collect();
        chats.sort();
        chats.dedup();
        let note = if chats.len() > MAX_UNSETTLED_CHATS {
            Unsettled::All
        } else {
            Unsettled::Chats(chats)
        };
        self.meta.insert(META_UNSETTLED, encode(&note)?)?;
        for (id, seq, chunk) in chunks {
            self.docs.insert(keys::chunk(id, *seq), framed(chunk))?;
        }
        for (id, record) in records {
            self.chats.insert(id.as_str(), encode(record)?)?;
        }
        Ok(())
    }

    /// The chats the last chunk write named, if the store was not closed cleanly after it.
    /// An unreadable note counts as naming every chat.
    pub fn unsettled(&self) -> Result<Option<Unsettled>, StoreError> {
        match self.meta.get(META_UNSETTLED)? {
            None => Ok(None),
            Some(v) => Ok(Some(decode(&v).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unreadable note of unsettled chats; checking them all");
                Unsettled::All
            }))),
        }
    }

    /// Clears the note of unsettled chats: every record accounts for its chunks. Call only when
    /// no chunk write is under way (and before the closing flush).
    pub fn settle(&self) -> Result<(), StoreError> {
        self.meta.remove(META_UNSETTLED)?;
        Ok(())
    }

    /// Whether the chat has a chunk numbered `seq` or higher.
    pub fn has_chunks_from(&self, id: &ChatId, seq: u64) -> Result<bool, StoreError> {
        match self.docs.range(keys::chunk(id, seq)..).next().transpose()? {
            Some((key, _)) => Ok(key.starts_with(&keys::chunks_prefix(id))),
            None => Ok(false),
        }
    }

    /// Replaces a chat's base with `doc` and removes the chunks up to `through_seq`, in one
    /// atomic batch. `doc` must contain everything those chunks did.
    pub fn compact(&self, id: &ChatId, doc: &[u8], through_seq: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(keys::base(id), framed(doc));
        for item in self.docs.scan_prefix(keys::chunks_prefix(id)) {
            let (k, _) = item?;
            match keys::parse(id, &k) {
                Some(keys::DocKey::Chunk(seq)) if seq <= through_seq => batch.remove(k),
                _ => {}
            }
        }
        self.docs.apply_batch(batch)?;
        Ok(())
    }

    /// Keeps an attestation of another device's change in a chat (see
    /// `chatsync_model::proofs`), under its actor and sequence number. Older ones of the same
    /// actor stay until [`Store::remove_attestations`]: written before the chunk with their
    /// change, a newer one may name a change a crash lost, and the older one still vouches.
    pub fn put_attestation(
        &self,
        chat: &ChatId,
        actor: &[u8],
        seq: u64,
        attestation: &Attestation,
    ) -> Result<(), StoreError> {
        let mut value = vec![FORMAT];
        value.extend_from_slice(&attestation.hash.0);
        value.extend_from_slice(&attestation.signature);
        self.attestations
            .insert(keys::attestation(chat, actor, seq), value)?;
        Ok(())
    }

    /// Forgets attestations a newer one of the same actor replaced.
    pub fn remove_attestations(
        &self,
        chat: &ChatId,
        stale: &[(Vec<u8>, u64)],
    ) -> Result<(), StoreError> {
        for (actor, seq) in stale {
            self.attestations
                .remove(keys::attestation(chat, actor, *seq))?;
        }
        Ok(())
    }

    /// The attestations kept for a chat: actor, sequence number of the attested change, and
    /// the attestation. Records that cannot be read are skipped (they are only needed to pass
    /// changes on; the device that wrote them can sign again).
    pub fn attestations(
        &self,
        chat: &ChatId,
    ) -> Result<Vec<(Vec<u8>, u64, Attestation)>, StoreError> {
        let prefix = keys::prefix(chat);
        let mut out = Vec::new();
        for item in self.attestations.scan_prefix(&prefix) {
            let (key, value) = item?;
            let parsed = keys::parse_attestation(chat, &key)
                .zip(value.strip_prefix(&[FORMAT]).and_then(attestation_from));
            match parsed {
                Some(((actor, seq), attestation)) => out.push((actor, seq, attestation)),
                None => tracing::warn!(%chat, "skipping an unreadable attestation record"),
            }
        }
        // Written by earlier versions: one per actor, `seq, hash, signature`.
        for item in self.attestations_v1.scan_prefix(&prefix) {
            let (key, value) = item?;
            let actor = key[prefix.len()..].to_vec();
            let Some((seq, rest)) = value.split_first_chunk::<8>() else {
                continue;
            };
            if let Some(attestation) = attestation_from(rest) {
                out.push((actor, u64::from_be_bytes(*seq), attestation));
            }
        }
        Ok(out)
    }

    /// Keeps evidence that the device behind `actor` equivocated in a chat, replacing what was
    /// kept for that actor (evidence is only kept when it bans more).
    pub fn put_evidence(
        &self,
        chat: &ChatId,
        actor: &[u8],
        evidence: &[u8],
    ) -> Result<(), StoreError> {
        let mut key = keys::prefix(chat);
        key.extend_from_slice(actor);
        let mut value = vec![FORMAT];
        value.extend_from_slice(evidence);
        self.evidence.insert(key, value)?;
        Ok(())
    }

    /// The evidence kept for a chat, one per equivocating actor: the actor, and the evidence.
    /// Records of another format are skipped.
    pub fn evidence(&self, chat: &ChatId) -> Result<Vec<ActorEvidence>, StoreError> {
        let prefix = keys::prefix(chat);
        let mut out = Vec::new();
        for item in self.evidence.scan_prefix(&prefix) {
            let (key, value) = item?;
            match value.strip_prefix(&[FORMAT]) {
                Some(evidence) => out.push((key[prefix.len()..].to_vec(), evidence.to_vec())),
                None => tracing::warn!(%chat, "skipping an unreadable evidence record"),
            }
        }
        Ok(out)
    }

    /// The ports this device listened on last time (see `net/remembered.rs`).
    pub fn listen_ports(&self) -> Result<ListenPorts, StoreError> {
        match self.network.get(NETWORK_LISTEN)? {
            Some(v) => decode(&v),
            None => Ok(ListenPorts::default()),
        }
    }

    pub fn put_listen_ports(&self, ports: &ListenPorts) -> Result<(), StoreError> {
        self.network.insert(NETWORK_LISTEN, encode(ports)?)?;
        Ok(())
    }

    /// Addresses that reached each device, most recent first. Records that cannot be read are
    /// skipped (they are only a head start for finding the device).
    pub fn reached_addresses(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.network.scan_prefix(NETWORK_REACHED) {
            let (key, value) = item?;
            let device = String::from_utf8_lossy(&key[NETWORK_REACHED.len()..]).into_owned();
            match decode::<Vec<String>>(&value) {
                Ok(addresses) => out.push((device, addresses)),
                Err(e) => tracing::warn!(%device, error = %e, "skipping unreadable addresses"),
            }
        }
        Ok(out)
    }

    pub fn put_reached_addresses(
        &self,
        device: &str,
        addresses: &[String],
    ) -> Result<(), StoreError> {
        let key = [NETWORK_REACHED, device.as_bytes()].concat();
        self.network.insert(key, encode(&addresses)?)?;
        Ok(())
    }

    pub fn forget_reached_addresses(&self, device: &str) -> Result<(), StoreError> {
        self.network
            .remove([NETWORK_REACHED, device.as_bytes()].concat())?;
        Ok(())
    }

    /// Makes every write made before this call durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// The fixed id the roster is kept under in its tree.
fn roster_id() -> ChatId {
    ChatId::new("roster").expect("a valid literal id")
}

/// Reads a document's base and chunks from `tree`: the base first, then the chunks in order.
fn load_doc(tree: &sled::Tree, id: &ChatId) -> Result<Option<StoredDoc>, StoreError> {
    let mut stored = StoredDoc {
        bytes: Vec::new(),
        next_seq: 0,
        base_bytes: 0,
        chunks: 0,
        chunk_bytes: 0,
    };
    let mut found = false;
    for item in tree.scan_prefix(keys::prefix(id)) {
        let (k, v) = item?;
        let payload = unframe(&v)?;
        match keys::parse(id, &k) {
            Some(keys::DocKey::Base) => {
                stored.base_bytes = payload.len() as u64;
            }
            Some(keys::DocKey::Chunk(seq)) => {
                stored.chunks += 1;
                stored.chunk_bytes += payload.len() as u64;
                stored.next_seq = seq + 1;
            }
            None => {
                return Err(StoreError::Corrupt(format!(
                    "unexpected key in document {id}: {k:?}"
                )));
            }
        }
        found = true;
        stored.bytes.extend_from_slice(payload);
    }
    Ok(found.then_some(stored))
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 1);
    v.push(FORMAT);
    v.extend_from_slice(payload);
    v
}

fn unframe(value: &[u8]) -> Result<&[u8], StoreError> {
    match value.split_first() {
        Some((&FORMAT, rest)) => Ok(rest),
        Some((v, _)) => Err(StoreError::Corrupt(format!("unknown value format {v}"))),
        None => Err(StoreError::Corrupt("empty value".into())),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(framed(&json))
}

fn decode<T: for<'de> Deserialize<'de>>(value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(unframe(value)?).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests;

/// An attestation stored as `hash, signature`.
fn attestation_from(bytes: &[u8]) -> Option<Attestation> {
    if bytes.len() != 32 + SIGNATURE_BYTES {
        return None;
    }
    let mut hash = [0; 32];
    hash.copy_from_slice(&bytes[..32]);
    Some(Attestation {
        hash: automerge::ChangeHash(hash),
        signature: bytes[32..].to_vec(),
    })
}
