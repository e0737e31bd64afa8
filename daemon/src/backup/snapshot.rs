//! Making a snapshot: each chat's pack (a whole copy of its stored document, or the chunks
//! stored since its last backup), gathered into bundles, then the index pages and the manifest.
//!
//! Chats are taken in the order of their ids and their packs bundled in that order, so a backup
//! cut off part-way and run again makes the same bundles for the chats that did not change
//! meanwhile, and finds them written.

use std::{collections::HashMap, time::Instant};

use futures_util::StreamExt;

use super::{
    BackupError, BackupReport, Backups, CHAIN_SLACK_BYTES, ChatEntry, MAX_CHAIN, MAX_CHAIN_FACTOR,
    PARALLEL_OBJECTS, Progress,
    pack::{self, Bundle},
    repository::{Codec, PackRef, Repository},
};
use crate::engine::{ChatSummary, EngineError};

/// A bundle is written once its packs reach this many bytes, unless configured otherwise
/// (`backup.object_kib`).
pub const BUNDLE_BYTES: usize = 4 << 20;

/// What one chat brings to a snapshot.
enum ChatBackup {
    /// As it was in the newest snapshot.
    Unchanged(ChatEntry),
    /// Its entry, and the pack to add to it (to bundle): a whole copy (the entry has no pack
    /// yet) or the chunks stored since (after the entry's packs).
    Changed {
        entry: ChatEntry,
        pack: Vec<u8>,
        whole: bool,
    },
}

impl Backups {
    pub(super) async fn back_up(&self) -> Result<BackupReport, BackupError> {
        let _running = self.running.lock().await;
        let started = Instant::now();
        let repo = self.open_configured()?;
        let now = crate::engine::now_ms();
        let (mut manifest, newest) = repo
            .next_manifest(self.engine.device().id.as_str(), now)
            .await?;
        // Chats as they were in this device's newest snapshot: one whose heads did not move
        // since is not read again, and one whose stored base stayed the same gets only its new
        // chunks written.
        let before: HashMap<String, ChatEntry> = match &newest {
            Some(newest) => repo
                .entries(newest)
                .await?
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect(),
            None => Default::default(),
        };
        let mut written = Written::default();
        let (roster, roster_bytes) = repo
            .put(&self.engine.roster_bytes().await, Codec::Stored)
            .await?;
        written.note(roster_bytes);
        manifest.roster = roster;
        let chats = self.engine.list_chats();
        let mut progress = Progress::new(&self.engine, false, chats.len());
        let mut entries = Vec::with_capacity(chats.len());
        // Whole copies are mostly Automerge's compressed saves: stored as they are. Chunks
        // are single changes, which compress well.
        let mut wholes = Bundler::new(Codec::Stored);
        let mut chunks = Bundler::new(Codec::Deflate);
        let mut copies = futures_util::stream::iter(chats)
            .map(|summary| {
                let previous = before.get(summary.id.as_str());
                self.back_up_chat(summary, previous)
            })
            .buffered(PARALLEL_OBJECTS);
        while let Some(outcome) = copies.next().await {
            progress.advance();
            match outcome? {
                ChatBackup::Unchanged(entry) => entries.push(entry),
                ChatBackup::Changed { entry, pack, whole } => {
                    entries.push(entry);
                    let bundler = if whole { &mut wholes } else { &mut chunks };
                    if bundler.bundle.bytes() + pack.len() > self.object_bytes {
                        // A large chat goes in an object of its own.
                        written.note(bundler.write(&repo, &mut entries).await?);
                    }
                    bundler.add(entries.len() - 1, pack);
                    if bundler.bundle.bytes() >= self.object_bytes {
                        written.note(bundler.write(&repo, &mut entries).await?);
                    }
                }
            }
        }
        drop(copies);
        written.note(wholes.write(&repo, &mut entries).await?);
        written.note(chunks.write(&repo, &mut entries).await?);
        manifest.chats = entries.len();
        manifest.messages = entries.iter().map(|e| e.messages).sum();
        manifest.bytes = entries.iter().map(|e| e.bytes).sum();
        let (pages, page_bytes, page_objects) = repo.put_pages(entries).await?;
        manifest.pages = pages;
        written.bytes += page_bytes;
        written.objects += page_objects;
        if let Some(blobs) = &self.blobs {
            let attachments =
                super::attachments::back_up(&repo, blobs, newest.as_ref(), self.object_bytes)
                    .await?;
            manifest.attachment_pages = attachments.pages;
            manifest.attachments = attachments.blobs;
            manifest.attachment_bytes = attachments.bytes;
            written.bytes += attachments.written_bytes;
            written.objects += attachments.written_objects;
        }
        progress.finish();
        written.bytes += repo.put_manifest(&manifest).await?;
        Ok(BackupReport {
            snapshot: manifest.id(repo.keys()),
            seq: manifest.seq,
            chats: manifest.chats,
            messages: manifest.messages,
            attachments: manifest.attachments,
            bytes_written: written.bytes,
            objects_written: written.objects,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Backs up one chat: reuses `previous` (its entry in the newest snapshot) when the chat
    /// did not change, makes a pack of the chunks stored since when only chunks were added,
    /// and a whole copy otherwise (or once its chain of packs grew too long or too heavy).
    async fn back_up_chat(
        &self,
        summary: ChatSummary,
        previous: Option<&ChatEntry>,
    ) -> Result<ChatBackup, BackupError> {
        let record = summary.record;
        if let Some(previous) = previous
            && previous.heads == record.heads
            && previous.messages == record.messages
            && previous.title == record.title
        {
            return Ok(ChatBackup::Unchanged(previous.clone()));
        }
        let chat = summary.id;
        let stored = match self.engine.copy_chat(&chat).await {
            Ok(stored) => stored,
            Err(EngineError::NotFound(why)) => {
                return Err(BackupError::Internal(format!(
                    "chat {chat} is listed but cannot be read: {why}"
                )));
            }
            Err(e) => {
                return Err(BackupError::Internal(format!(
                    "cannot read chat {chat}: {e}"
                )));
            }
        };
        use sha2::Digest;
        let base_digest = hex::encode(&sha2::Sha256::digest(&stored.document.base)[..16]);
        let mut entry = ChatEntry {
            id: chat.to_string(),
            title: record.title,
            created_at: record.created_at,
            created_by: record.created_by,
            messages: record.messages,
            last_activity: record.last_activity,
            heads: record.heads,
            packs: Vec::new(),
            whole_bytes: 0,
            bytes: 0,
            next_chunk: stored.document.chunks.last().map_or(0, |(seq, _)| seq + 1),
            base_digest,
        };
        if let Some(previous) = previous.filter(|p| p.base_digest == entry.base_digest) {
            let new: Vec<&[u8]> = stored
                .document
                .chunks
                .iter()
                .filter(|(seq, _)| *seq >= previous.next_chunk)
                .map(|(_, chunk)| chunk.as_slice())
                .collect();
            let added: u64 = new.iter().map(|c| c.len() as u64).sum();
            let chained = previous.bytes.saturating_sub(previous.whole_bytes) + added;
            entry.whole_bytes = previous.whole_bytes;
            entry.bytes = previous.bytes + added;
            entry.next_chunk = entry.next_chunk.max(previous.next_chunk);
            entry.packs = previous.packs.clone();
            if new.is_empty() {
                return Ok(ChatBackup::Unchanged(entry));
            }
            let chain_limit = previous.whole_bytes * MAX_CHAIN_FACTOR + CHAIN_SLACK_BYTES;
            if previous.packs.len() < MAX_CHAIN && chained <= chain_limit {
                let pack = pack::encode(&new.concat(), &stored.attestations, &stored.evidence);
                return Ok(ChatBackup::Changed {
                    entry,
                    pack,
                    whole: false,
                });
            }
            entry.packs.clear();
        }
        let document = stored.document.document();
        entry.whole_bytes = document.len() as u64;
        entry.bytes = entry.whole_bytes;
        let pack = pack::encode(&document, &stored.attestations, &stored.evidence);
        Ok(ChatBackup::Changed {
            entry,
            pack,
            whole: true,
        })
    }
}

/// What a backup wrote: objects and bytes (objects that were there already count for neither).
#[derive(Default)]
struct Written {
    objects: usize,
    bytes: u64,
}

impl Written {
    fn note(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.objects += usize::from(bytes > 0);
    }
}

/// Packs waiting to be written in one bundle, and the entries that will name them.
struct Bundler {
    codec: Codec,
    bundle: Bundle,
    /// Per pack: the index of its chat's entry, and its place in the bundle.
    owners: Vec<(usize, u32)>,
}

impl Bundler {
    fn new(codec: Codec) -> Bundler {
        Bundler {
            codec,
            bundle: Bundle::default(),
            owners: Vec::new(),
        }
    }

    fn add(&mut self, entry: usize, pack: Vec<u8>) {
        let place = self.bundle.add(pack);
        self.owners.push((entry, place));
    }

    /// Writes the bundle (unless it is empty) and adds each pack's place to its entry. Returns
    /// the bytes written (0 when the same bundle was there already).
    async fn write(
        &mut self,
        repo: &Repository,
        entries: &mut [ChatEntry],
    ) -> Result<u64, BackupError> {
        if self.bundle.is_empty() {
            return Ok(0);
        }
        let bundle = std::mem::take(&mut self.bundle);
        let (name, written) = repo.put(&bundle.encode(), self.codec).await?;
        for (entry, index) in self.owners.drain(..) {
            entries[entry].packs.push(PackRef {
                object: name.clone(),
                index,
            });
        }
        Ok(written)
    }
}
