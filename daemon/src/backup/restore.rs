//! Restoring a snapshot: reading each chat's packs back out of their bundles, putting its
//! document together, and handing the chats to the engine in batches (`engine/copies.rs` writes
//! the ones this device lacks and merges the others).

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::Arc,
    time::Instant,
};

use chatsync_model::ChatId;

use super::{
    BackupError, Backups, ChatEntry, FIRST_RESTORE_BATCH_CHATS, Progress, RESTORE_BATCH_BYTES,
    RESTORE_BATCH_CHATS, RestoreReport, Secret, Target, canonical_target,
    keys::{RepositoryKeys, recovery_passphrase},
    pack::{self, Pack},
    repository::{PackRef, Repository},
};
use crate::engine::{EngineError, RestoredChat};

/// Largest chat document restored (a chat's document is at most 256 MiB).
const MAX_CHAT_BYTES: u64 = 256 << 20;
/// Bytes of decoded bundles a reader keeps, about (a bundle is about `backup.object_kib`).
const BUNDLE_CACHE_BYTES: usize = 64 << 20;

impl Backups {
    /// Restores the newest snapshot at `target` (or the one whose id starts with `snapshot`)
    /// onto this device, opening the repository with `secret`; then keeps its settings here,
    /// so that this device goes on backing up to it. The backup's copy of a chat this device
    /// has is merged into it. Running it again after an interruption finishes the job.
    pub async fn restore(
        &self,
        target: &str,
        cwd: Option<&Path>,
        secret: Secret,
        snapshot: Option<&str>,
    ) -> Result<RestoreReport, BackupError> {
        let _running = self.running.lock().await;
        let started = Instant::now();
        let parsed = Target::parse(target, cwd)?;
        let passphrase = match secret {
            Secret::Passphrase(p) => p,
            Secret::RecoveryKey(typed) => recovery_passphrase(&typed)?,
            Secret::NewRecoveryKey => {
                return Err(BackupError::Invalid(
                    "a restore needs the recovery key that was shown at init".into(),
                ));
            }
        };
        let op = parsed.operator()?;
        let config = Repository::config(&op).await?;
        let keys = RepositoryKeys::unwrap(&config, &passphrase)?;
        let repo = Repository::with_keys(op, keys.clone());
        let manifests = repo.manifests().await?;
        let manifest = match snapshot {
            None => manifests.last(),
            Some(id) => manifests.iter().rev().find(|m| m.id(&keys).starts_with(id)),
        }
        .ok_or_else(|| {
            BackupError::NotFound(match snapshot {
                None => "the repository holds no snapshot yet".into(),
                Some(id) => format!("no snapshot {id} in the repository"),
            })
        })?;
        let roster = repo.get(&manifest.roster).await?;
        self.engine
            .merge_roster(&roster)
            .await
            .map_err(|e| BackupError::Damaged(format!("the roster does not load: {e}")))?;
        let mut entries = repo.entries(manifest).await?;
        // In the order of their bundles, so that each bundle is read once.
        entries.sort_by(|a, b| a.packs.first().cmp(&b.packs.first()));
        let mut report = RestoreReport {
            snapshot: manifest.id(&keys),
            restored: 0,
            already_here: 0,
            merged_messages: 0,
            not_merged: 0,
            messages: manifest.messages,
            attachments: 0,
            attachments_skipped: 0,
            elapsed_ms: 0,
        };
        let mut progress = Progress::new(&self.engine, true, entries.len());
        let mut reader = PackReader::new(&repo);
        // Small batches first, so that chats appear at once; larger ones after, for speed.
        let mut batch: Vec<RestoredChat> = Vec::new();
        let mut batch_bytes = 0;
        let mut batch_limit = FIRST_RESTORE_BATCH_CHATS;
        let count = entries.len();
        for (at, entry) in entries.into_iter().enumerate() {
            let chat = reader.chat(entry).await?;
            progress.advance();
            batch_bytes += chat.document.len();
            batch.push(chat);
            let last = at + 1 == count;
            if last || batch.len() >= batch_limit || batch_bytes >= RESTORE_BATCH_BYTES {
                self.restore_batch(std::mem::take(&mut batch), &mut report)
                    .await?;
                batch_bytes = 0;
                batch_limit = (batch_limit * 2).min(RESTORE_BATCH_CHATS);
            }
        }
        // The attachments after the chats that name them.
        if let Some(blobs) = &self.blobs {
            let restored = super::attachments::restore(&repo, blobs, manifest).await?;
            report.attachments = restored.restored;
            report.attachments_skipped = restored.skipped;
        }
        progress.finish();
        self.save_settings(&canonical_target(&parsed, target), &keys)?;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Writes the chats of `batch` this device lacks, and merges the others into its own.
    async fn restore_batch(
        &self,
        batch: Vec<RestoredChat>,
        report: &mut RestoreReport,
    ) -> Result<(), BackupError> {
        let count = batch.len();
        let present = self
            .engine
            .restore_chats(batch)
            .await
            .map_err(|e| match e {
                EngineError::Invalid(why) => BackupError::Damaged(why),
                other => BackupError::Internal(format!("cannot restore: {other}")),
            })?;
        report.restored += count - present.len();
        for copy in present {
            report.already_here += 1;
            let chat = copy.id.clone();
            match self.engine.merge_copy(copy).await {
                Ok(touched) => report.merged_messages += touched,
                Err(e) => {
                    tracing::warn!(%chat, error = %e, "cannot merge the backup's copy of a chat");
                    report.not_merged += 1;
                }
            }
        }
        Ok(())
    }
}

/// Reads packs out of a repository's bundles, keeping the latest bundles read (a restore reads
/// the chats in the order of their bundles; the chunks added by later backups of many chats
/// share bundles too).
pub(super) struct PackReader<'a> {
    repo: &'a Repository,
    bundles: HashMap<String, Arc<Vec<Vec<u8>>>>,
    order: VecDeque<(String, usize)>,
    bytes: usize,
    /// Bundles read, and their bytes.
    pub read: usize,
    pub read_bytes: u64,
}

impl<'a> PackReader<'a> {
    pub fn new(repo: &'a Repository) -> PackReader<'a> {
        PackReader {
            repo,
            bundles: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            read: 0,
            read_bytes: 0,
        }
    }

    /// The pack `at` points to, read and checked.
    pub async fn pack(&mut self, at: &PackRef) -> Result<Pack, BackupError> {
        let bundle = match self.bundles.get(&at.object) {
            Some(bundle) => bundle.clone(),
            None => {
                let bytes = self.repo.get(&at.object).await?;
                let bundle = Arc::new(pack::decode_bundle(&bytes)?);
                self.read += 1;
                self.read_bytes += bytes.len() as u64;
                self.keep(at.object.clone(), bundle.clone(), bytes.len());
                bundle
            }
        };
        let packed = bundle.get(at.index as usize).ok_or_else(|| {
            BackupError::Damaged(format!(
                "object {} holds no chat at place {}",
                at.object, at.index
            ))
        })?;
        pack::decode(packed)
    }

    fn keep(&mut self, name: String, bundle: Arc<Vec<Vec<u8>>>, bytes: usize) {
        while self.bytes + bytes > BUNDLE_CACHE_BYTES
            && let Some((old, old_bytes)) = self.order.pop_front()
        {
            self.bundles.remove(&old);
            self.bytes -= old_bytes;
        }
        self.bytes += bytes;
        self.order.push_back((name.clone(), bytes));
        self.bundles.insert(name, bundle);
    }

    /// A chat of a snapshot put back together: the whole copy, then each set of chunks added
    /// after it. The newest pack's attestations and evidence are the chat's (each backup wrote
    /// all of them, for everything up to it).
    pub async fn chat(&mut self, entry: ChatEntry) -> Result<RestoredChat, BackupError> {
        let id = ChatId::new(entry.id.as_str())
            .map_err(|e| BackupError::Damaged(format!("a snapshot names a bad chat: {e}")))?;
        if entry.packs.is_empty() || entry.packs.len() > super::MAX_CHAIN + 1 {
            return Err(BackupError::Damaged(format!(
                "chat {id} names {} objects",
                entry.packs.len()
            )));
        }
        let mut document = Vec::with_capacity(entry.bytes.min(MAX_CHAT_BYTES) as usize);
        let (mut attestations, mut evidence) = (Vec::new(), Vec::new());
        for at in &entry.packs {
            let pack = self.pack(at).await?;
            if (document.len() + pack.document.len()) as u64 > entry.bytes.min(MAX_CHAT_BYTES) {
                return Err(BackupError::Damaged(format!(
                    "chat {id} holds more than the {} bytes its snapshot says",
                    entry.bytes
                )));
            }
            document.extend_from_slice(&pack.document);
            (attestations, evidence) = (pack.attestations, pack.evidence);
        }
        if document.len() as u64 != entry.bytes {
            return Err(BackupError::Damaged(format!(
                "chat {id} holds {} bytes, not the {} its snapshot says",
                document.len(),
                entry.bytes
            )));
        }
        Ok(RestoredChat {
            id,
            record: crate::store::ChatRecord {
                title: entry.title,
                created_at: entry.created_at,
                created_by: entry.created_by,
                messages: entry.messages,
                last_activity: entry.last_activity,
                heads: entry.heads,
                // Chunks written after the restore are numbered on from the backup's, so that a
                // device that goes on backing up to the repository adds them to the chat's
                // chain rather than taking them for ones it has.
                next_seq: entry.next_chunk,
                own_newest: None,
                unchecked: true,
            },
            document,
            attestations,
            evidence,
        })
    }
}
