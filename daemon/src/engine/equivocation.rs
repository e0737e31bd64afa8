//! Devices caught equivocating: signing two different changes with one actor and sequence
//! number, one for some devices and the other for the rest. No honest device does that (each
//! run writes under a fresh actor, `Device::with_session`), and Automerge cannot hold both
//! changes. What the devices do about it is the model's rule (`chatsync_model::equivocation`):
//! with the evidence (both changes, signed), every device drops that actor's changes from that
//! sequence number on and everything built on them, and writes again, under a new actor, what
//! it loses of its own. This module applies the rule to a loaded chat and stores the result;
//! it keeps the evidence in the store, so that a chat loaded later drops the same changes
//! ([`apply_stored`]), and answers devices whose changes clash with it with the evidence
//! (`EngineError::Equivocation`), so that they do the same.
//!
//! The device that signed both is reported on the event stream and in `GET /v1/devices`, so
//! that the user can remove it from the mesh. Reports live in memory: after a restart, the
//! stored evidence is still applied, and the next clash reports the device again.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use automerge::ActorId;
use chatsync_model::{
    ChatDoc, ChatId, Device, DeviceId,
    authorship::{self, Standing},
    equivocation::Evidence,
};

use super::{Engine, EngineError, Event, cache::LoadedChat, commit, now_ms, sync::contain_panic};
use crate::store::Store;

/// Devices reported at most: reported devices are in the roster (their changes passed the
/// authorship check), so this is never reached in practice.
const MAX_REPORTED: usize = 1024;

/// Where a device was first caught equivocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    pub chat: ChatId,
    /// The sequence number it used twice.
    pub seq: u64,
    /// When this device noticed (ms since the epoch).
    pub detected_at: i64,
}

#[derive(Default)]
pub struct Equivocations {
    reported: Mutex<BTreeMap<DeviceId, Equivocation>>,
}

impl Equivocations {
    /// Notes that `device` equivocated. Returns whether this is news (the first report of the
    /// device), which is worth an event.
    pub fn note(&self, device: &DeviceId, chat: &ChatId, seq: u64, now: i64) -> bool {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if reported.contains_key(device) || reported.len() >= MAX_REPORTED {
            return false;
        }
        reported.insert(
            device.clone(),
            Equivocation {
                chat: chat.clone(),
                seq,
                detected_at: now,
            },
        );
        true
    }

    /// Where `device` was caught equivocating, if it was.
    pub fn of(&self, device: &DeviceId) -> Option<Equivocation> {
        self.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
            .cloned()
    }
}

impl Engine {
    /// Takes evidence of an equivocation that `from` showed for `chat`: checks it, and drops
    /// what it bans (see the module docs). Evidence that does not check out is misbehaviour.
    pub async fn take_evidence(
        &self,
        from: &DeviceId,
        chat: &ChatId,
        bytes: &[u8],
    ) -> Result<(), EngineError> {
        let evidence =
            Evidence::decode(bytes).map_err(|e| EngineError::Misbehaviour(e.to_string()))?;
        let standings = self.standings().await;
        let handle = self.chat(chat).await?;
        let write = self.committer.begin();
        let receipt = {
            let mut loaded = handle.lock().await;
            let write = write.reserve().await?;
            self.resolve_equivocation(chat, &mut loaded, evidence, write, &standings)?
        };
        tracing::info!(%chat, device = %from, "took evidence of an equivocation");
        if let Some(receipt) = receipt {
            receipt.durable().await?;
        }
        Ok(())
    }

    /// Checks `evidence`, bans what it proves in the loaded chat, drops it, and stores the chat
    /// as it is then through `write`: a new base holding everything, every chunk folded, and
    /// the chunk with what this device wrote again. The evidence is stored first: a crash in
    /// between leaves the store holding what the next load drops ([`apply_stored`]). Returns
    /// the write's receipt; `None` when the evidence bans nothing new.
    pub(super) fn resolve_equivocation(
        &self,
        chat: &ChatId,
        loaded: &mut LoadedChat,
        evidence: Evidence,
        write: commit::Reserved<'_>,
        standings: &HashMap<DeviceId, Standing>,
    ) -> Result<Option<commit::Receipt>, EngineError> {
        let ban = contain_panic(|| {
            self.with_keys(standings, |keys| evidence.check(chat, keys.verify))
                .map_err(|e| EngineError::Misbehaviour(e.to_string()))
        })?;
        // Evidence about an actor with nothing in this chat changes nothing here; it is not
        // kept (a device cannot fill the chat's bans with actors of its making).
        if loaded.doc.newest_change_of(&ban.actor).is_none() {
            return Ok(None);
        }
        let encoded = evidence.encode();
        let before = loaded.doc.bans().of_actor(&ban.actor).cloned();
        if !loaded.doc.ban(evidence)? {
            return Ok(None);
        }
        if let Some(device) = ban.device() {
            self.report_equivocator(&device, chat, ban.seq);
        }
        let title_before = loaded.doc.title();
        let fresh = fresh_actor(&self.device);
        let excluded = match loaded.doc.exclude_banned(&self.device, fresh, now_ms()) {
            Ok(excluded) => excluded,
            Err(e) => {
                // Nothing of the chat would be left (its creator equivocated on the first
                // change): the chat stays as it is, and the evidence is not kept.
                loaded.doc.unban(&ban.actor, before);
                return Err(EngineError::Forbidden(format!(
                    "cannot drop what the evidence bans: {e}"
                )));
            }
        };
        // Stored before the chat without the dropped changes is: a crash in between leaves the
        // store holding what the next load drops. If it cannot be stored, the copy in memory
        // (without them) is not the store's, and nothing more may be written.
        if let Err(e) = self
            .store
            .put_evidence(chat, ban.actor.to_bytes(), &encoded)
        {
            let e = EngineError::from(e);
            self.committer.fail(&e.to_string());
            loaded.last_write = Some(commit::Receipt::failed(e.clone()));
            return Err(e);
        }
        loaded.proofs.retain_held(&mut loaded.doc);
        loaded.waiting_progress = None;
        // What any conversation counted as sent may be gone.
        self.sync_states.forget_chat_everywhere(chat);
        tracing::warn!(
            %chat,
            device = ?ban.device().map(|d| d.to_string()),
            seq = ban.seq,
            dropped = excluded.dropped,
            rewritten = excluded.rewritten,
            "dropped the changes of a device that equivocated, and everything built on them"
        );
        if excluded.dropped == 0 {
            return Ok(None);
        }
        let base = loaded.doc.save();
        let rewritten = loaded.doc.take_local_changes();
        loaded.rebuilds += 1;
        loaded.base_bytes = base.len() as u64;
        let compact = commit::StoreWrite::Compact {
            chat: chat.clone(),
            through: loaded.next_seq.saturating_sub(1),
            base,
        };
        loaded.chunks = 0;
        loaded.chunk_bytes = 0;
        // This device's newest change may be among those dropped: found again.
        let own = crate::store::OwnNewest::of(&mut loaded.doc, &self.device.id);
        let (chunk, record, _) = self.chunk_write(
            chat,
            loaded,
            rewritten,
            now_ms(),
            Some(title_before),
            Some(own),
        )?;
        let receipt = write.submit(
            vec![compact, chunk],
            vec![Event::ChatUpdated {
                chat: chat.clone(),
                record,
            }],
        );
        loaded.last_write = Some(receipt.clone());
        self.changed.mark(chat);
        Ok(Some(receipt))
    }

    /// Reports the device that signed two changes alike: in the log, and once per run on the
    /// event stream and in `GET /v1/devices`.
    pub(super) fn report_equivocator(&self, device: &DeviceId, chat: &ChatId, seq: u64) {
        if self.equivocations.note(device, chat, seq, now_ms()) {
            tracing::error!(
                %device, %chat, seq,
                "device signed two different changes with one sequence number; its changes \
                 from there on are dropped everywhere the evidence reaches: remove it from the \
                 mesh (`chatsync devices remove`)"
            );
            // Not a durable change: straight to the subscribers.
            let _ = self.events.send(Event::Equivocation {
                device: device.clone(),
                chat: chat.clone(),
                seq,
            });
        }
    }
}

/// Applies the evidence stored for a chat to it as it is loaded: bans what it proves and drops
/// it. After a crash between storing evidence and storing the chat without what it bans, the
/// store still holds those changes; they are dropped here, and the chat is stored without them
/// at once (nothing else writes a chat that is not loaded). A chat with evidence writes under
/// a fresh actor each time it is loaded: its session actor may have had changes dropped.
/// Returns whether the chat was stored again, with its new base's size.
pub(super) fn apply_stored(
    store: &Store,
    chat: &ChatId,
    doc: &mut ChatDoc,
    device: &Device,
    last_chunk: Option<u64>,
) -> Result<Option<u64>, EngineError> {
    let stored = store.evidence(chat)?;
    if stored.is_empty() {
        return Ok(None);
    }
    // Whatever the evidence says, this device may have had changes dropped here under its
    // session actor: it writes under a new one.
    let fresh = fresh_actor(device);
    doc.automerge_mut().set_actor(fresh.clone());
    for (_, bytes) in stored {
        // Checked when it was taken; only this device wrote it.
        if let Err(e) = Evidence::decode(&bytes).and_then(|evidence| doc.ban(evidence)) {
            tracing::error!(%chat, error = %e, "stored evidence of an equivocation is unreadable");
        }
    }
    let excluded = match doc.exclude_banned(device, fresh, now_ms()) {
        Ok(excluded) => excluded,
        // Evidence is only stored once its changes could be dropped; a chat is never left
        // unloadable for it.
        Err(e) => {
            tracing::warn!(%chat, error = %e, "cannot drop what stored evidence bans");
            return Ok(None);
        }
    };
    if excluded.dropped == 0 {
        return Ok(None);
    }
    let base = doc.save();
    doc.take_local_changes();
    store.compact(chat, &base, last_chunk.unwrap_or(0))?;
    store.flush()?;
    tracing::warn!(%chat, dropped = excluded.dropped, "dropped changes that stored evidence bans");
    Ok(Some(base.len() as u64))
}

/// A new actor for this device, never used before: random session bytes, as at start-up.
fn fresh_actor(device: &Device) -> ActorId {
    authorship::actor_for(&device.id, &rand::random::<[u8; 8]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_reported_once_where_it_was_first_caught() {
        let reports = Equivocations::default();
        let (x, chat, other) = (
            DeviceId::new("x").unwrap(),
            ChatId::new("c").unwrap(),
            ChatId::new("d").unwrap(),
        );
        assert_eq!(reports.of(&x), None);
        assert!(reports.note(&x, &chat, 3, 100));
        assert!(!reports.note(&x, &other, 7, 200));
        assert_eq!(
            reports.of(&x),
            Some(Equivocation {
                chat,
                seq: 3,
                detected_at: 100
            })
        );
    }
}
