//! Chats copied out for backups, and written back by restores, as the store keeps them.
//!
//! A backup copies each chat's stored bytes ([`Store::chat_copy`]) rather than loading the
//! document and saving it again: loading is most of the cost of reading a chat, and the
//! store's chunk numbers let the next backup take only the chunks written since. The copy
//! carries what proves every change in it to other devices: the attestations the store keeps
//! for other devices' changes; this device's signature over its newest change, which its
//! record names (`ChatRecord::own_newest`), so the chat need not be loaded for it; and the
//! evidence of any equivocation.
//!
//! A restore writes a chat this device lacks straight into the store, marked unchecked
//! (`ChatRecord::unchecked`): its first load puts it through every check of a chat from
//! another device ([`load_restored`]), proofs of authorship and each device's rights, so that a
//! restore is fast and still trusts nothing it read, whoever made the backup. (The repository's
//! objects are authenticated, so only a device holding its keys can have made them; one of the
//! user's devices that went bad could have.) A chat that fails the checks stays in the store,
//! unread, with an error that says why. A chat this device has already gets the copy merged in
//! after the same checks, and written like changes from another device.

use std::collections::{HashMap, HashSet};

use automerge::{ActorId, ChangeHash};
use chatsync_model::{
    ChatDoc, ChatId, DeviceId, MessageId,
    authorship::{self, ActorTop, Attestation, Standing},
};

use super::{
    ChatRecord, Engine, EngineError, Event, MessageEventKind, OwnNewest, commit, now_ms,
    signatures,
    sync::{contain_panic, load_checked},
};
use crate::store::ChatCopy;

/// Copies of one chat tried, at most, while it keeps being written.
const MAX_COPY_ATTEMPTS: usize = 8;

/// An attestation as the store keeps it: the attested change's actor and sequence number, and
/// the attestation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptAttestation {
    pub actor: Vec<u8>,
    pub seq: u64,
    pub attestation: Attestation,
}

/// Evidence of an equivocation as the store keeps it (`chatsync_model::equivocation::Evidence`).
pub type KeptEvidence = crate::store::ActorEvidence;

/// A chat's stored document and what proves it, copied for a backup.
#[derive(Clone, Debug)]
pub struct StoredChat {
    pub document: ChatCopy,
    pub attestations: Vec<KeptAttestation>,
    pub evidence: Vec<KeptEvidence>,
}

/// A chat to restore: its record and its document as a backup holds them.
#[derive(Clone, Debug)]
pub struct RestoredChat {
    pub id: ChatId,
    pub record: ChatRecord,
    /// Loadable in one call (a stored base and chunks, one after the other).
    pub document: Vec<u8>,
    pub attestations: Vec<KeptAttestation>,
    pub evidence: Vec<KeptEvidence>,
}

impl Engine {
    /// A chat's stored document, with the attestations of every device that wrote in it (this
    /// device's signed now) and any evidence of an equivocation.
    ///
    /// The record's newest change of this device must be the copy's: it is only brought up to
    /// date once a write is durable, and the store holds the write's chunk before that. So a
    /// chat in memory is copied under its lock once its writes are durable (nothing more can be
    /// written meanwhile), and a chat not in memory (nothing written is on its way) is copied
    /// unless it was loaded, and so perhaps written, meanwhile.
    pub async fn copy_chat(&self, chat: &ChatId) -> Result<StoredChat, EngineError> {
        for _ in 0..MAX_COPY_ATTEMPTS {
            if let Some(handle) = self.cache.loaded(chat) {
                let mut loaded = handle.lock().await;
                if let Some(pending) = loaded.unsettled_write() {
                    pending.durable().await?;
                }
                let (record, stored) = self.read_stored(chat).await?;
                let own = match record.own_newest {
                    Some(own) if stored.evidence.is_empty() => own,
                    _ => OwnNewest::of(&mut loaded.doc, &self.device.id),
                };
                return self.with_own_attestation(chat, stored, own);
            }
            let (record, stored) = self.read_stored(chat).await?;
            let unchanged = self.cache.loaded(chat).is_none()
                && self
                    .read_records()
                    .get(chat)
                    .is_some_and(|now| now.next_seq == record.next_seq);
            if !unchanged {
                continue;
            }
            if record.unchecked {
                // Restored and not loaded since: this device wrote nothing in it, and what
                // proves it is what the restore stored (checked when it is first loaded).
                return Ok(stored);
            }
            match record.own_newest {
                // Evidence applied as the chat loaded may have dropped the change a record
                // names; records of older builds name none. The chat is loaded to find it.
                Some(own) if stored.evidence.is_empty() => {
                    return self.with_own_attestation(chat, stored, own);
                }
                _ => {
                    self.chat(chat).await?;
                }
            }
        }
        Err(EngineError::Internal(format!(
            "chat {chat} kept being written while it was copied"
        )))
    }

    /// The chat's record, then its stored document, attestations and evidence.
    async fn read_stored(&self, chat: &ChatId) -> Result<(ChatRecord, StoredChat), EngineError> {
        let record = self
            .read_records()
            .get(chat)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no chat {chat}")))?;
        let store = self.store.clone();
        let id = chat.clone();
        let (document, attestations, evidence) = tokio::task::spawn_blocking(move || {
            Ok::<_, EngineError>((
                store.chat_copy(&id)?,
                store.attestations(&id)?,
                store.evidence(&id)?,
            ))
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        let document = document.ok_or_else(|| EngineError::NotFound(format!("no chat {chat}")))?;
        let attestations = attestations
            .into_iter()
            .map(|(actor, seq, attestation)| KeptAttestation {
                actor,
                seq,
                attestation,
            })
            .collect();
        Ok((
            record,
            StoredChat {
                document,
                attestations,
                evidence,
            },
        ))
    }

    /// `stored` with this device's attestation over its newest change there, `own`.
    fn with_own_attestation(
        &self,
        chat: &ChatId,
        mut stored: StoredChat,
        own: OwnNewest,
    ) -> Result<StoredChat, EngineError> {
        if let OwnNewest::Change { actor, seq, hash } = own {
            let unreadable = || EngineError::Internal(format!("chat {chat}: bad record"));
            let hash: ChangeHash = hash.parse().map_err(|_| unreadable())?;
            let actor = hex::decode(actor).map_err(|_| unreadable())?;
            let signature = self
                .signer
                .sign(&authorship::statement(chat, &hash))
                .ok_or_else(|| EngineError::Internal("cannot sign".into()))?;
            stored.attestations.push(KeptAttestation {
                actor,
                seq,
                attestation: Attestation { hash, signature },
            });
        }
        Ok(stored)
    }

    /// Writes the chats this device lacks into the store (their attestations and evidence
    /// first), lists them once durable, and returns the ones it has already (to merge, see
    /// [`Engine::merge_copy`]). Each document must be loadable in one call; its chunks' shapes
    /// are checked before anything is written.
    pub async fn restore_chats(
        &self,
        chats: Vec<RestoredChat>,
    ) -> Result<Vec<RestoredChat>, EngineError> {
        // One import at a time: nothing else may create these chats meanwhile.
        let _importing = self.imports.lock().await;
        let (present, absent): (Vec<RestoredChat>, Vec<RestoredChat>) =
            chats.into_iter().partition(|c| self.has_chat(&c.id));
        if absent.is_empty() {
            return Ok(present);
        }
        self.committer
            .check_room_for(absent.iter().map(|c| c.document.len()).sum())?;
        let absent = tokio::task::spawn_blocking(move || {
            let limits = chatsync_model::wire_check::WireLimits::default();
            for chat in &absent {
                chatsync_model::wire_check::check_chunks(&chat.document, &limits).map_err(|e| {
                    EngineError::Invalid(format!("chat {} does not load: {e}", chat.id))
                })?;
            }
            Ok::<_, EngineError>(absent)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        let mut writes = Vec::with_capacity(absent.len());
        let mut events = Vec::with_capacity(absent.len());
        for chat in absent {
            let RestoredChat {
                id,
                mut record,
                document,
                attestations,
                evidence,
            } = chat;
            // All of them, this device's own too (a backup it made of itself): they prove the
            // chat when it is first loaded, and a kept attestation of its own is one it need not
            // sign again.
            let mut holds_own = false;
            for kept in attestations {
                holds_own |= authorship::device_of_actor(&ActorId::from(kept.actor.as_slice()))
                    .as_ref()
                    == Some(&self.device.id);
                self.store
                    .put_attestation(&id, &kept.actor, kept.seq, &kept.attestation)?;
            }
            for (actor, bytes) in evidence {
                // Applied as the chat loads (it drops changes): only evidence that checks, and
                // is kept under the actor it bans.
                let verify = |d: &DeviceId, statement: &[u8], signature: &[u8]| {
                    self.signer.verify(d, statement, signature)
                };
                let checked = chatsync_model::equivocation::Evidence::decode(&bytes)
                    .and_then(|evidence| evidence.check(&id, &verify));
                match checked {
                    Ok(ban) if ban.actor.to_bytes() == actor.as_slice() => {
                        self.store.put_evidence(&id, &actor, &bytes)?;
                    }
                    Ok(_) | Err(_) => {
                        tracing::warn!(chat = %id, "a backup's evidence of an equivocation does not check; left out");
                    }
                }
            }
            record.unchecked = true;
            // Found by a walk when first needed if the chat holds changes of this device's.
            record.own_newest = (!holds_own).then_some(OwnNewest::NoChange);
            events.push(Event::ChatCreated {
                chat: id.clone(),
                record: record.clone(),
            });
            writes.push(commit::StoreWrite::NewChat {
                chat: id,
                record,
                bytes: document,
            });
        }
        let write = self.committer.begin().reserve().await?;
        write.submit(writes, events).durable().await?;
        Ok(present)
    }

    /// Merges a copy of a chat this device has into it (see the module docs), writing what it
    /// brought like changes from another device. Returns how many messages it added or changed.
    pub async fn merge_copy(&self, copy: RestoredChat) -> Result<usize, EngineError> {
        let RestoredChat {
            id: chat,
            document,
            attestations,
            evidence,
            ..
        } = copy;
        let device = self.device.clone();
        let standings = self.standings().await;
        let signer = self.signer.clone();
        let id = chat.clone();
        let proving: Vec<Attestation> =
            attestations.iter().map(|k| k.attestation.clone()).collect();
        let mut other = tokio::task::spawn_blocking(move || {
            let attestations = proving;
            let (doc, _) =
                checked_load(&id, &document, &device, &attestations, &standings, &signer)?;
            Ok::<_, EngineError>(doc)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        let handle = self.chat(&chat).await?;
        let write = self.committer.begin();
        let (receipt, touched) = {
            let mut loaded = handle.lock().await;
            let write = write.reserve().await?;
            if !evidence.is_empty() || !loaded.doc.bans().is_empty() {
                return Err(EngineError::Invalid(format!(
                    "chat {chat} dropped the changes of a device that equivocated; the \
                     backup's copy is not merged into it (the other devices bring what it lacks)"
                )));
            }
            let title_before = loaded.doc.title();
            let known: HashSet<MessageId> = loaded.doc.message_ids().cloned().collect();
            let before = loaded.doc.heads();
            let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                loaded.doc.merge(&mut other)
            }));
            let touched = match merged {
                Ok(Ok(touched)) => touched,
                failed => {
                    // Automerge may have taken part of it: the copy in memory is put back as
                    // the store holds it, once the writes still queued are made.
                    drop(write);
                    let reloaded = match self.committer.barrier().await {
                        Ok(()) => {
                            super::load_chat(&self.store, &chat, &self.device, loaded.next_seq)
                        }
                        Err(e) => Err(e),
                    };
                    match reloaded {
                        Ok(fresh) => {
                            let (compacting, rebuilds) = (loaded.compacting, loaded.rebuilds);
                            *loaded = fresh;
                            loaded.compacting = compacting;
                            // A compaction under way must not write its copy.
                            loaded.rebuilds = rebuilds + 1;
                        }
                        Err(e) => {
                            // Not to be read again from memory: the next use loads the store's.
                            // A compaction of this copy under way must not write it either: the
                            // copy loaded next may compact past it first.
                            loaded.rebuilds += 1;
                            self.cache.forget(&chat);
                            return Err(e);
                        }
                    }
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the copy could not be processed".into(),
                    };
                    return Err(EngineError::Invalid(format!(
                        "cannot merge the copy: {why}"
                    )));
                }
            };
            let chunk = loaded.doc.automerge_mut().save_after(&before);
            if chunk.is_empty() {
                return Ok(0);
            }
            let tops = attestations
                .into_iter()
                .map(|kept| ActorTop {
                    actor: ActorId::from(kept.actor),
                    seq: kept.seq,
                    attestation: kept.attestation,
                })
                .collect();
            let super::LoadedChat { doc, proofs, .. } = &mut *loaded;
            let proofs = proofs.take_received(tops, doc, &self.device.id);
            // Before the chunk, as for changes from another device (see `receive_sync`).
            if let Err(e) = signatures::persist(&self.store, &chat, proofs.store) {
                self.committer.fail(&e.to_string());
                loaded.last_write = Some(commit::Receipt::failed(e.clone()));
                return Err(e);
            }
            let forget = signatures::forget(&chat, proofs.forget);
            let (store_write, record, renamed) = self.chunk_write(
                &chat,
                &mut loaded,
                chunk,
                now_ms(),
                Some(title_before),
                None,
            )?;
            let mut events: Vec<Event> = touched
                .iter()
                .filter_map(|id| {
                    let kind = if known.contains(id) {
                        MessageEventKind::Edited
                    } else {
                        MessageEventKind::Created
                    };
                    Some(Event::Message {
                        kind,
                        chat: chat.clone(),
                        message: loaded.doc.message(id)?,
                    })
                })
                .collect();
            if renamed {
                events.push(Event::ChatUpdated {
                    chat: chat.clone(),
                    record,
                });
            }
            let writes = std::iter::once(store_write).chain(forget).collect();
            let receipt = write.submit(writes, events);
            loaded.last_write = Some(receipt.clone());
            self.cache.update_estimate(&chat, loaded.estimated_bytes());
            (receipt, touched.len())
        };
        receipt.durable().await?;
        self.changed.mark(&chat);
        Ok(touched)
    }
}

/// Loads a chat restored from a backup with every check of a chat from another device (see the
/// module docs), against this device's roster `standings`.
pub(super) fn load_restored(
    store: &crate::store::Store,
    id: &ChatId,
    device: &chatsync_model::Device,
    recorded_seq: u64,
    standings: &HashMap<DeviceId, Standing>,
    signer: &signatures::Signer,
) -> Result<super::LoadedChat, EngineError> {
    let attestations: Vec<Attestation> = store
        .attestations(id)?
        .into_iter()
        .map(|(_, _, attestation)| attestation)
        .collect();
    super::load_chat_with(store, id, device, recorded_seq, |bytes| {
        let (doc, _) =
            checked_load(id, bytes, device, &attestations, standings, signer).map_err(|e| {
                EngineError::Invalid(format!(
                    "chat {id} came from a backup and fails the checks of a chat from another \
                     device, so it is not shown (it stays in the store): {e}"
                ))
            })?;
        Ok(doc)
    })
}

/// [`load_checked`], its refusal an [`EngineError::Invalid`] and a panic inside Automerge an
/// error.
fn checked_load(
    id: &ChatId,
    bytes: &[u8],
    device: &chatsync_model::Device,
    attestations: &[Attestation],
    standings: &HashMap<DeviceId, Standing>,
    signer: &signatures::Signer,
) -> Result<(ChatDoc, Vec<ActorTop>), EngineError> {
    contain_panic(|| {
        load_checked(id, bytes, device, attestations, standings, signer)
            .map_err(|e| EngineError::Invalid(e.to_string()))
    })
}
