//! Encrypted backups of every chat, to storage the user already has, and restores from them
//! onto any device.
//!
//! A snapshot holds each chat's document as the store keeps it, with the attestations that
//! prove who wrote every change, and the roster. A chat is backed up whole once; while its
//! stored base stays the same, later backups add only the chunks written since (see
//! `repository.rs` for the layout, `pack.rs` for a chat's objects, and `engine/copies.rs` for
//! why the stored bytes are copied rather than the document saved again). Restoring writes each
//! chat the device lacks into its store as it was, and merges the copy into each chat the
//! device has. The restored device keeps its own identity and actors (never the old device's
//! keys): the attestations let it prove every message's authorship to other devices, and it
//! can pair with a surviving device afterwards (the chats then merge change by change, nothing
//! twice).
//!
//! - `target.rs`: where the backup goes (a directory, S3, WebDAV) and the storage it opens.
//! - `keys.rs`: the repository's secrets, object encryption (age) and names (HMAC).
//! - `repository.rs`: objects, index pages and manifests on the storage.
//! - `pack.rs`: what a chat's packs, and the bundles that hold them, are made of.
//! - `snapshot.rs`: making a snapshot; `restore.rs`: restoring one.
//! - `retention.rs`: which snapshots a retention policy keeps.
//! - this file: the daemon's side: the settings kept on this device; `init`, `now`,
//!   `snapshots`, `verify`, `restore` and `prune`; and the schedule the daemon runs.
//!
//! A restored device takes the repository over and goes on backing up to it. Should the device
//! it replaces still back up there too, each keeps its own snapshots (a snapshot is named by its
//! number and device) and builds each backup on its own newest; a restore takes the newest.
//!
//! The repository's secrets live on this device (`backup.json` in the data directory, mode
//! 0600) so that it can back up without asking, and in the repository encrypted with the
//! user's passphrase or recovery key, so that a new device can restore.

mod attachments;
mod keys;
mod pack;
mod repository;
mod restore;
mod retention;
mod snapshot;
mod target;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use keys::{new_recovery_key, recovery_passphrase};
pub use repository::{ChatEntry, Manifest};
pub use retention::Retention;
pub use target::Target;

use crate::engine::Engine;
use keys::RepositoryKeys;
use repository::Repository;

/// Why a backup operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BackupError {
    /// The passphrase or recovery key does not open the repository.
    #[error("wrong passphrase or recovery key: it does not open this backup")]
    WrongKey,
    /// Something in the repository is not what was written: altered, truncated, swapped,
    /// missing, or from another repository.
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    /// The target could not be read or written.
    #[error("the backup target cannot be reached: {0}")]
    Unreachable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

/// How the repository's secrets are protected in the repository.
pub enum Secret {
    Passphrase(SecretString),
    /// A recovery key as the user typed it.
    RecoveryKey(String),
    /// Make a recovery key (it is returned once, to show).
    NewRecoveryKey,
}

/// What `init` made.
#[derive(Clone, Debug)]
pub struct Initialized {
    pub target: String,
    pub repository: String,
    /// The recovery key, when one was made: shown once, never stored.
    pub recovery_key: Option<String>,
}

/// What one backup did.
#[derive(Clone, Debug)]
pub struct BackupReport {
    pub snapshot: String,
    pub seq: u64,
    pub chats: usize,
    pub messages: u64,
    /// Attachments the snapshot holds.
    pub attachments: u64,
    /// Bytes written to the target (objects that were there already are not written again).
    pub bytes_written: u64,
    pub objects_written: usize,
    pub elapsed_ms: u64,
}

/// One snapshot as listed.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    pub id: String,
    pub seq: u64,
    pub created_at: i64,
    pub device: String,
    pub chats: usize,
    pub messages: u64,
    pub bytes: u64,
}

/// What a verification read.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub objects: usize,
    pub bytes: u64,
    pub elapsed_ms: u64,
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub snapshot: String,
    /// Chats brought back.
    pub restored: usize,
    /// Chats this device had already: the backup's copy was merged into them.
    pub already_here: usize,
    /// Messages those merges added or changed.
    pub merged_messages: usize,
    /// Chats this device had whose copy could not be merged (each logged with why).
    pub not_merged: usize,
    pub messages: u64,
    /// Attachments brought back, and those left in the backup for want of room here.
    pub attachments: usize,
    pub attachments_skipped: usize,
    pub elapsed_ms: u64,
}

/// The backup settings kept on this device.
#[derive(Serialize, Deserialize)]
struct Settings {
    /// The target as the user gave it (credentials in it stay on this device).
    target: String,
    keys: serde_json::Value,
    /// The newest backup that succeeded.
    #[serde(default)]
    last: Option<LastBackup>,
}

/// A backup that succeeded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastBackup {
    /// When it finished (ms since the epoch).
    pub at: i64,
    pub snapshot: String,
}

/// Where backups stand, for `chatsync status`.
#[derive(Clone, Debug, Default)]
pub struct BackupStatus {
    /// Where backups go (`None`: not set up).
    pub target: Option<String>,
    pub last: Option<LastBackup>,
    /// The newest failure since the last success: when, and why.
    pub failure: Option<(i64, String)>,
    /// When the daemon backs up next by itself (ms since the epoch).
    pub next_at: Option<i64>,
}

/// What pruning removed.
#[derive(Clone, Debug, Default)]
pub struct Pruned {
    pub snapshots: usize,
    pub objects: usize,
    pub bytes: u64,
}

/// The scheduler's view: the newest failure since the last success, and the next run.
type Schedule = (Option<(i64, String)>, Option<i64>);

/// First wait before backing up again after a failure; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: std::time::Duration = std::time::Duration::from_secs(60);
const MAX_RETRY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Objects written this recently are never pruned: they may belong to a backup under way.
pub const PRUNE_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest object size a configuration may ask for (objects are read back whole).
const MAX_OBJECT_TARGET: usize = 64 << 20;
/// Objects read or written at once.
const PARALLEL_OBJECTS: usize = 8;
/// Objects a chat's entry names at most before the next backup writes it whole again.
const MAX_CHAIN: usize = 32;
/// The chunks a chat's entry adds to its whole copy, at most, before the next backup writes it
/// whole again: this many times the whole copy's bytes, plus [`CHAIN_SLACK_BYTES`]. (Chunks
/// are single changes, far less compact than a whole document; the store folds them into its
/// base at about the same point, which makes the next backup write the chat whole anyway.)
const MAX_CHAIN_FACTOR: u64 = 4;
const CHAIN_SLACK_BYTES: u64 = 64 << 10;
/// Chats written to the store together by a restore: first, at most (and about this many
/// bytes).
const FIRST_RESTORE_BATCH_CHATS: usize = 8;
const RESTORE_BATCH_CHATS: usize = 256;
const RESTORE_BATCH_BYTES: usize = 16 << 20;

/// The daemon's backups: one repository at a time.
pub struct Backups {
    engine: Arc<Engine>,
    settings_file: PathBuf,
    /// One backup, prune or restore at a time.
    running: tokio::sync::Mutex<()>,
    schedule: std::sync::Mutex<Schedule>,
    /// A bundle of packs is written once it holds this many bytes (and attachments are cut
    /// into pieces of this size).
    object_bytes: usize,
    /// Attachments' bytes, backed up beside the chats (`attachments.rs`).
    blobs: Option<Arc<crate::blobs::Blobs>>,
}

impl Backups {
    pub fn new(engine: Arc<Engine>, data_dir: &Path) -> Backups {
        Backups {
            engine,
            settings_file: data_dir.join("backup.json"),
            running: tokio::sync::Mutex::new(()),
            schedule: std::sync::Mutex::new((None, None)),
            object_bytes: snapshot::BUNDLE_BYTES,
            blobs: None,
        }
    }

    /// Backs up the attachments in `blobs` too, and restores them there.
    pub fn with_blobs(mut self, blobs: Arc<crate::blobs::Blobs>) -> Backups {
        self.blobs = Some(blobs);
        self
    }

    /// Gathers packs into objects of about `bytes` (the config's `backup.object_kib`).
    pub fn with_object_bytes(mut self, bytes: usize) -> Backups {
        self.object_bytes = bytes.clamp(1, MAX_OBJECT_TARGET);
        self
    }

    /// Where backups stand.
    pub fn status(&self) -> BackupStatus {
        let (failure, next_at) = self
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let settings = self.read_settings().ok().flatten();
        BackupStatus {
            target: settings
                .as_ref()
                .and_then(|s| Target::parse(&s.target, None).ok())
                .map(|t| t.display()),
            last: settings.and_then(|s| s.last),
            failure,
            next_at,
        }
    }

    /// Backs up every `every` once backups are set up, keeping what `retention` says; after a
    /// failure (the target unreachable, say), tries again after a minute, then after ever
    /// longer waits up to an hour. Returns when `stop` is cancelled.
    pub async fn run_schedule(
        self: Arc<Self>,
        every: std::time::Duration,
        retention: Retention,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut retry = FIRST_RETRY;
        loop {
            let now = crate::engine::now_ms();
            let status = self.status();
            let wait = if status.target.is_none() {
                // Not set up: look again in a minute.
                FIRST_RETRY
            } else if status.failure.is_some() {
                retry
            } else {
                let due = status
                    .last
                    .as_ref()
                    .map_or(now, |l| l.at.saturating_add(every.as_millis() as i64));
                std::time::Duration::from_millis(due.saturating_sub(now).max(0) as u64)
            };
            if status.target.is_some() {
                self.set_schedule(|s| s.1 = Some(now.saturating_add(wait.as_millis() as i64)));
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if self.status().target.is_none() {
                continue;
            }
            let outcome = tokio::select! {
                // Dropping the backup half way leaves every earlier snapshot whole.
                _ = stop.cancelled() => return,
                outcome = self.now() => outcome,
            };
            match outcome {
                Ok(report) => {
                    retry = FIRST_RETRY;
                    tracing::info!(snapshot = %report.snapshot, bytes = report.bytes_written, "backed up");
                    if let Err(e) = self.prune(retention, PRUNE_GRACE).await {
                        tracing::warn!(error = %e, "cannot remove old snapshots");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_secs = retry.as_secs(), "backup failed");
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    fn set_schedule(&self, f: impl FnOnce(&mut Schedule)) {
        f(&mut self.schedule.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Removes the snapshots `retention` does not keep, then the objects no kept snapshot
    /// names (an interrupted prune leaves only objects, removed by the next).
    /// Objects younger than `grace` are left (a backup of another device writing to the same
    /// repository may be under way).
    pub async fn prune(
        &self,
        retention: Retention,
        grace: std::time::Duration,
    ) -> Result<Pruned, BackupError> {
        let _running = self.running.lock().await;
        let repo = self.open_configured()?;
        let manifests = repo.manifests().await?;
        let times: Vec<(u64, i64)> = manifests.iter().map(|m| (m.seq, m.created_at)).collect();
        let keep = retention::keep(&times, retention);
        let mut pruned = Pruned::default();
        for manifest in manifests.iter().filter(|m| !keep.contains(&m.seq)) {
            repo.delete_manifest(manifest).await?;
            pruned.snapshots += 1;
        }
        let mut used = std::collections::HashSet::new();
        for manifest in manifests.iter().filter(|m| keep.contains(&m.seq)) {
            used.insert(manifest.roster.clone());
            // Snapshots share most pages (a page that did not change keeps its name): each
            // is read once.
            for page in &manifest.pages {
                if used.insert(page.clone()) {
                    for entry in repo.page(page).await? {
                        used.extend(entry.packs.into_iter().map(|at| at.object));
                    }
                }
            }
            for page in &manifest.attachment_pages {
                if used.insert(page.clone()) {
                    for entry in attachments::page(&repo, page).await? {
                        used.extend(entry.pieces);
                    }
                }
            }
        }
        (pruned.objects, pruned.bytes) = repo.delete_unused(&used, grace).await?;
        Ok(pruned)
    }

    /// Creates a repository at `target` and keeps its settings here. `cwd` resolves a
    /// relative directory.
    pub async fn init(
        &self,
        target: &str,
        cwd: Option<&Path>,
        secret: Secret,
    ) -> Result<Initialized, BackupError> {
        let _running = self.running.lock().await;
        let parsed = Target::parse(target, cwd)?;
        let (passphrase, recovery_key) = match secret {
            Secret::Passphrase(p) => (p, None),
            Secret::RecoveryKey(typed) => (recovery_passphrase(&typed)?, None),
            Secret::NewRecoveryKey => {
                let key = new_recovery_key();
                (recovery_passphrase(&key)?, Some(key))
            }
        };
        check_passphrase(&passphrase)?;
        let keys = RepositoryKeys::generate();
        let config = keys.wrap(&passphrase)?;
        let op = parsed.operator()?;
        Repository::create(op, keys.clone(), config).await?;
        self.save_settings(&canonical_target(&parsed, target), &keys)?;
        Ok(Initialized {
            target: parsed.display(),
            repository: keys.repository.clone(),
            recovery_key,
        })
    }

    /// Backs up every chat now.
    pub async fn now(&self) -> Result<BackupReport, BackupError> {
        let outcome = self.back_up().await;
        match &outcome {
            Ok(report) => {
                self.set_schedule(|s| s.0 = None);
                if let Some(mut settings) = self.read_settings()? {
                    settings.last = Some(LastBackup {
                        at: crate::engine::now_ms(),
                        snapshot: report.snapshot.clone(),
                    });
                    self.write_settings(&settings)?;
                }
            }
            Err(e) => {
                let why = e.to_string();
                self.set_schedule(|s| s.0 = Some((crate::engine::now_ms(), why)));
            }
        }
        outcome
    }

    /// The snapshots in the configured repository, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, BackupError> {
        let repo = self.open_configured()?;
        Ok(repo
            .manifests()
            .await?
            .into_iter()
            .map(|m| info(&m, repo.keys()))
            .collect())
    }

    /// Reads back every object of every snapshot in the configured repository (or of the one
    /// whose id starts with `snapshot`) and checks it. Returns how many snapshots and objects
    /// were checked and their bytes.
    pub async fn verify(&self, snapshot: Option<&str>) -> Result<VerifyReport, BackupError> {
        let started = Instant::now();
        let repo = self.open_configured()?;
        let manifests: Vec<Manifest> = repo
            .manifests()
            .await?
            .into_iter()
            .filter(|m| snapshot.is_none_or(|id| m.id(repo.keys()).starts_with(id)))
            .collect();
        if manifests.is_empty() {
            return Err(BackupError::NotFound(match snapshot {
                Some(id) => format!("no snapshot {id} in the repository"),
                None => "the repository holds no snapshot yet".into(),
            }));
        }
        let mut reader = restore::PackReader::new(&repo);
        let mut checked = std::collections::BTreeSet::new();
        let mut verified_blobs = std::collections::HashSet::new();
        let mut bytes = 0;
        for manifest in &manifests {
            if checked.insert(manifest.roster.clone()) {
                bytes += repo.get(&manifest.roster).await?.len() as u64;
            }
            checked.extend(manifest.pages.iter().cloned());
            for entry in repo.entries(manifest).await? {
                // Each chat put back together as a restore would (every pack read and checked,
                // each bundle once).
                checked.extend(entry.packs.iter().map(|at| at.object.clone()));
                reader.chat(entry).await?;
            }
            checked.extend(manifest.attachment_pages.iter().cloned());
            for entry in attachments::entries(&repo, manifest).await? {
                // Each attachment read back whole and hashed, once.
                if verified_blobs.insert(entry.hash.clone()) {
                    checked.extend(entry.pieces.iter().cloned());
                    bytes += attachments::verify(&repo, &entry).await?;
                }
            }
        }
        bytes += reader.read_bytes;
        Ok(VerifyReport {
            snapshots: manifests.len(),
            objects: checked.len(),
            bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    fn open_configured(&self) -> Result<Repository, BackupError> {
        let (target, keys) = self.settings()?.ok_or_else(|| {
            BackupError::NotFound("backups are not set up: run `chatsync backup init`".into())
        })?;
        let op = Target::parse(&target, None)?.operator()?;
        Ok(Repository::with_keys(op, keys))
    }

    fn settings(&self) -> Result<Option<(String, RepositoryKeys)>, BackupError> {
        let Some(settings) = self.read_settings()? else {
            return Ok(None);
        };
        let keys = RepositoryKeys::from_local(settings.keys.to_string().as_bytes())?;
        Ok(Some((settings.target, keys)))
    }

    fn read_settings(&self) -> Result<Option<Settings>, BackupError> {
        let bytes = match std::fs::read(&self.settings_file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(BackupError::Internal(format!(
                    "cannot read backup settings: {e}"
                )));
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BackupError::Damaged(format!("the local backup settings: {e}")))
    }

    fn save_settings(&self, target: &str, keys: &RepositoryKeys) -> Result<(), BackupError> {
        let keys: serde_json::Value = serde_json::from_slice(&keys.to_local())
            .map_err(|e| BackupError::Internal(e.to_string()))?;
        self.write_settings(&Settings {
            target: target.to_string(),
            keys,
            last: None,
        })
    }

    fn write_settings(&self, settings: &Settings) -> Result<(), BackupError> {
        let bytes = serde_json::to_vec_pretty(settings)
            .map_err(|e| BackupError::Internal(e.to_string()))?;
        crate::files::write_private(&self.settings_file, &bytes)
            .map_err(|e| BackupError::Internal(format!("cannot keep the backup settings: {e}")))
    }
}

/// Progress events of one backup or restore: one as it starts, at most four a second as chats
/// are done, and one at the end.
struct Progress<'a> {
    engine: &'a Engine,
    restoring: bool,
    done: usize,
    total: usize,
    last: Instant,
}

impl<'a> Progress<'a> {
    fn new(engine: &'a Engine, restoring: bool, total: usize) -> Progress<'a> {
        let mut progress = Progress {
            engine,
            restoring,
            done: 0,
            total,
            last: Instant::now(),
        };
        progress.send();
        progress
    }

    /// Counts one chat done.
    fn advance(&mut self) {
        self.done = (self.done + 1).min(self.total);
        if self.last.elapsed() >= std::time::Duration::from_millis(250) {
            self.send();
        }
    }

    fn finish(&mut self) {
        self.done = self.total;
        self.send();
    }

    fn send(&mut self) {
        self.last = Instant::now();
        // Nobody listening is fine.
        let _ = self
            .engine
            .event_sender()
            .send(crate::engine::Event::BackupProgress {
                restoring: self.restoring,
                done: self.done,
                total: self.total,
            });
    }
}

/// A passphrase worth protecting a backup with.
fn check_passphrase(passphrase: &SecretString) -> Result<(), BackupError> {
    use age::secrecy::ExposeSecret;
    if passphrase.expose_secret().chars().count() < 8 {
        return Err(BackupError::Invalid(
            "the passphrase must be at least 8 characters (or use a recovery key)".into(),
        ));
    }
    Ok(())
}

/// The target as kept in the settings: a directory made absolute.
fn canonical_target(parsed: &Target, typed: &str) -> String {
    match parsed {
        Target::Directory(path) => path.display().to_string(),
        _ => typed.trim().to_string(),
    }
}

fn info(manifest: &Manifest, keys: &RepositoryKeys) -> SnapshotInfo {
    SnapshotInfo {
        id: manifest.id(keys),
        seq: manifest.seq,
        created_at: manifest.created_at,
        device: manifest.device.clone(),
        chats: manifest.chats,
        messages: manifest.messages,
        bytes: manifest.bytes,
    }
}
