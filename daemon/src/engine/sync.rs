//! The engine's side of syncing chats with other devices: summaries of every chat's heads,
//! rounds of Automerge's sync protocol per device and chat, whole documents for chats a device
//! does not have yet, and the list of chats changed locally that devices should hear about.
//!
//! What arrives is persisted exactly like a local change (one chunk, one group-commit flush)
//! before it is announced; the network module carries the bytes.

use std::collections::{BTreeSet, HashMap};

use automerge::sync::State;
use chatsync_model::{
    ChatDoc, ChatId, DeviceId, Message, TouchKind, Touched,
    authorship::{self, Provenance, Standing},
    exchange,
    proofs::Proofs,
};

use super::{
    Engine, EngineError, Event, MessageEventKind, cache::LoadedChat, heads_hex, now_ms, signatures,
};
use crate::store::ChatRecord;

/// Largest sync message or document accepted from a device.
pub const MAX_SYNC_BYTES: usize = 256 * 1024 * 1024;
/// Sync states kept at most (one per device and chat in conversation).
const MAX_SYNC_STATES: usize = 16 * 1024;

/// Chats changed locally since the network last asked: a set, so a burst of posts in one chat
/// is one entry, and its size is bounded by the number of chats.
#[derive(Default)]
pub struct ChangedChats {
    chats: std::sync::Mutex<BTreeSet<ChatId>>,
    notify: tokio::sync::Notify,
}

impl ChangedChats {
    pub fn mark(&self, chat: &ChatId) {
        self.chats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chat.clone());
        self.notify.notify_one();
    }

    /// Waits until some chat changed, and takes the set.
    pub async fn take(&self) -> BTreeSet<ChatId> {
        loop {
            let taken = std::mem::take(&mut *self.chats.lock().unwrap_or_else(|p| p.into_inner()));
            if !taken.is_empty() {
                return taken;
            }
            self.notify.notified().await;
        }
    }
}

/// Which side of a conversation about a chat this device is on. Both devices can run a session
/// about the same chat at once (each after a change of its own); each conversation is a strict
/// request-answer sequence, and keeps its own Automerge sync state, so that the two never
/// interleave in one state (Automerge's protocol assumes messages of one conversation arrive
/// in order, and that nothing it sent was lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncRole {
    /// This device runs the session: it sent the first message and applies the answers.
    Running,
    /// The other device runs it: this device applies its requests and answers them.
    Answering,
}

type SyncKey = (DeviceId, ChatId, SyncRole);

/// Per device, chat and role: how far the sync protocol has got.
#[derive(Default)]
pub struct SyncStates {
    states: std::sync::Mutex<HashMap<SyncKey, Slot>>,
    /// The heads each device's latest summary listed for the chats this device is about to run
    /// sessions about, and when: the first message of each can then carry the changes
    /// ([`exchange::start_from_summary`]). Taken by that first message.
    summary_heads: std::sync::Mutex<HashMap<(DeviceId, ChatId), NotedHeads>>,
}

/// Heads a summary listed, and when it came.
type NotedHeads = (std::time::Instant, Vec<automerge::ChangeHash>);

/// How long the heads a summary listed are used to start a session: a session that starts later
/// starts as usual (stale heads would only make it send changes the other device has).
const SUMMARY_HEADS_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// A conversation's state, or the mark it leaves while a message of it is made or taken.
enum Slot {
    Here(State),
    /// Taken out by [`SyncStates::with`], which puts it back unless the conversation was
    /// forgotten meanwhile (the mark is gone then).
    Out,
}

impl SyncStates {
    /// Runs `f` on the conversation's state. The map is locked only to take the state out and
    /// to put it back, not while `f` works (applying a catch-up takes a while, and the chats of
    /// other conversations are worked on meanwhile). Callers hold the chat's lock, so no two
    /// calls work on one conversation at once.
    fn with<T>(&self, key: SyncKey, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = {
            let mut states = self.lock();
            if !states.contains_key(&key) && states.len() >= MAX_SYNC_STATES {
                // A fresh state only costs a larger first message next time.
                states.clear();
            }
            match states.insert(key.clone(), Slot::Out) {
                Some(Slot::Here(state)) => state,
                Some(Slot::Out) | None => State::new(),
            }
        };
        let result = f(&mut state);
        let mut states = self.lock();
        if let Some(slot @ Slot::Out) = states.get_mut(&key) {
            *slot = Slot::Here(state);
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SyncKey, Slot>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the heads `device`'s summary listed for `chat` (see `summary_heads`).
    fn note_summary_heads(
        &self,
        device: &DeviceId,
        chat: &ChatId,
        heads: Vec<automerge::ChangeHash>,
    ) {
        let mut noted = self.summary_heads.lock().unwrap_or_else(|p| p.into_inner());
        if noted.len() >= MAX_SYNC_STATES {
            noted.clear();
        }
        noted.insert(
            (device.clone(), chat.clone()),
            (std::time::Instant::now(), heads),
        );
    }

    /// Takes the heads noted for `device` and `chat`, if they are recent.
    fn take_summary_heads(
        &self,
        device: &DeviceId,
        chat: &ChatId,
    ) -> Option<Vec<automerge::ChangeHash>> {
        let (at, heads) = self
            .summary_heads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(device.clone(), chat.clone()))?;
        (at.elapsed() < SUMMARY_HEADS_FRESH_FOR).then_some(heads)
    }

    /// Whether `device` is known to have exactly `heads` of `chat` already
    /// ([`exchange::peer_has_exactly`]); if so, the conversation this device runs with it is
    /// brought up to that ([`exchange::know_peer_has`]).
    fn peer_has_exactly(
        &self,
        device: &DeviceId,
        chat: &ChatId,
        heads: &[automerge::ChangeHash],
    ) -> bool {
        let mut states = self.lock();
        let answering = match states.get(&(device.clone(), chat.clone(), SyncRole::Answering)) {
            Some(Slot::Here(state)) => Some(state),
            Some(Slot::Out) | None => None,
        };
        if !exchange::peer_has_exactly(answering, heads) {
            return false;
        }
        match states.get_mut(&(device.clone(), chat.clone(), SyncRole::Running)) {
            Some(Slot::Here(running)) => exchange::know_peer_has(running, heads),
            // Being worked on: that conversation goes on as it is.
            Some(Slot::Out) => return false,
            None => {}
        }
        true
    }

    fn forget(&self, device: &DeviceId) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(d, _, _), _| d != device);
        self.summary_heads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(d, _), _| d != device);
    }

    /// Forgets every conversation about `chat`, with any device.
    pub(super) fn forget_chat_everywhere(&self, chat: &ChatId) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, c, _), _| c != chat);
    }

    /// Forgets both conversations with `device` about `chat`.
    fn forget_chat(&self, device: &DeviceId, chat: &ChatId) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        for role in [SyncRole::Running, SyncRole::Answering] {
            states.remove(&(device.clone(), chat.clone(), role));
        }
    }
}

/// One step of a sync session: the next message to send, if any, and whether this device now
/// knows that the other one has exactly its changes.
pub use exchange::Step as SyncStep;

/// How another device's copy of a chat compares with this one, from its heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    Same,
    /// The other device has changes this one lacks (and may lack some of this one's).
    Behind,
    /// This device has changes the other lacks, and nothing the other has is missing here.
    Ahead,
}

impl Engine {
    /// Every chat and its heads, without loading any document; at most `limit` chats, the
    /// most recently active first.
    pub fn summary(&self, limit: usize) -> Vec<(ChatId, Vec<String>)> {
        let records = self.read_records();
        let mut by_activity: Vec<(&ChatId, &ChatRecord)> = records.iter().collect();
        if by_activity.len() > limit {
            by_activity.sort_unstable_by_key(|(_, r)| std::cmp::Reverse(r.last_activity));
            by_activity.truncate(limit);
        }
        by_activity
            .into_iter()
            .map(|(id, r)| (id.clone(), r.heads.clone()))
            .collect()
    }

    /// How another device's copy of `chat`, with heads `theirs` (hex), compares with this one.
    /// Loads the chat only when the heads differ (and then it is about to be synced anyway).
    pub async fn compare_heads(
        &self,
        chat: &ChatId,
        theirs: &[String],
    ) -> Result<Relation, EngineError> {
        let ours = self
            .read_records()
            .get(chat)
            .map(|r| r.heads.clone())
            .ok_or_else(|| EngineError::NotFound(format!("no chat {chat}")))?;
        if same_heads(&ours, theirs) {
            return Ok(Relation::Same);
        }
        let Ok(theirs) = theirs
            .iter()
            .map(|hex| hex.parse::<automerge::ChangeHash>())
            .collect::<Result<Vec<_>, _>>()
        else {
            return Ok(Relation::Behind);
        };
        let handle = self.chat(chat).await?;
        let mut loaded = handle.lock().await;
        let all_known = loaded
            .doc
            .automerge_mut()
            .get_missing_deps(&theirs)
            .is_empty();
        Ok(if all_known {
            Relation::Ahead
        } else {
            Relation::Behind
        })
    }

    /// Whether this device has a chat.
    pub fn has_chat(&self, chat: &ChatId) -> bool {
        self.read_records().contains_key(chat)
    }

    /// Chats changed locally since the last call (waits for at least one).
    pub async fn changed_chats(&self) -> BTreeSet<ChatId> {
        self.changed.take().await
    }

    /// Notes the heads `device`'s summary listed for `chat`, which this device is about to run a
    /// session about: its first message can then carry the changes the device lacks
    /// ([`exchange::start_from_summary`]).
    pub fn note_summary_heads(&self, device: &DeviceId, chat: &ChatId, heads: &[String]) {
        let Ok(heads) = heads
            .iter()
            .map(|hex| hex.parse::<automerge::ChangeHash>())
            .collect::<Result<Vec<_>, _>>()
        else {
            return;
        };
        self.sync_states.note_summary_heads(device, chat, heads);
    }

    /// Forgets sync progress with a device (it disconnected; the next session starts afresh).
    pub fn forget_peer(&self, device: &DeviceId) {
        self.sync_states.forget(device);
    }

    /// Forgets sync progress with a device about one chat (both conversations): a message
    /// generated for it was not sent or not taken, so the state must not assume the device has
    /// what it carried.
    pub fn forget_sync(&self, device: &DeviceId, chat: &ChatId) {
        self.sync_states.forget_chat(device, chat);
    }

    /// The next sync message for `device` about `chat` in the conversation this device runs
    /// (none if it is up to date), made provable and sealed (`chatsync_model::exchange`).
    pub async fn sync_message(
        &self,
        device: &DeviceId,
        chat: &ChatId,
    ) -> Result<SyncStep, EngineError> {
        // Sent only once durable, like every answer made from the document: a change goes to
        // other devices only after it is saved here.
        self.read_durable(chat, |loaded| {
            let LoadedChat { doc, proofs, .. } = loaded;
            if self
                .sync_states
                .peer_has_exactly(device, chat, &doc.heads())
            {
                return Ok(SyncStep {
                    message: None,
                    in_sync: true,
                });
            }
            let no_standings = HashMap::new();
            let key = (device.clone(), chat.clone(), SyncRole::Running);
            let summary_heads = self.sync_states.take_summary_heads(device, chat);
            self.sync_states
                .with(key, |state| {
                    if let Some(heads) = summary_heads {
                        exchange::start_from_summary(doc, state, &heads);
                    }
                    self.with_keys(&no_standings, |keys| {
                        exchange::next_step(doc, proofs, state, keys)
                    })
                })
                .map_err(|e| EngineError::Internal(format!("cannot make a sync message: {e}")))
        })
        .await
    }

    /// Runs `f` with this device's keys and `standings` as its roster.
    pub(super) fn with_keys<T>(
        &self,
        standings: &HashMap<DeviceId, Standing>,
        f: impl FnOnce(&exchange::Keys<'_>) -> T,
    ) -> T {
        let sign = |statement: &[u8]| self.signer.sign(statement);
        let verify = |d: &DeviceId, statement: &[u8], signature: &[u8]| {
            self.signer.verify(d, statement, signature)
        };
        let standing = |d: &DeviceId| standings.get(d).copied().unwrap_or(Standing::Unknown);
        f(&exchange::Keys {
            own: &self.device.id,
            sign: &sign,
            verify: &verify,
            standing: &standing,
        })
    }

    /// Where each device stands in this device's roster, for checking who wrote changes.
    pub(super) async fn standings(&self) -> std::sync::Arc<super::devices::Standings> {
        self.roster.lock().await.standings()
    }

    /// Applies a sync message from `device` about `chat` in the conversation where this device
    /// plays `role`, persists what it brought, and returns the reply (no message when there is
    /// nothing more to say).
    pub async fn receive_sync(
        &self,
        device: &DeviceId,
        chat: &ChatId,
        role: SyncRole,
        message: &[u8],
    ) -> Result<SyncStep, EngineError> {
        if message.len() > MAX_SYNC_BYTES {
            return Err(EngineError::Misbehaviour("sync message too large".into()));
        }
        match self.committer.check_room_for(message.len()) {
            Ok(()) => {}
            Err(e @ EngineError::StorageFull(_)) => {
                // Short of space, a device that only reads is still answered: what it sends
                // writes nothing. (Decoded twice then, only while the disk is full.)
                let writes = std::panic::catch_unwind(|| exchange::carries_changes(message));
                if writes.unwrap_or(true) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        let standings = self.standings().await;
        let handle = self.chat(chat).await?;
        let write = self.committer.begin();
        let brought: bool;
        let (reply, receipt) = {
            let mut loaded = handle.lock().await;
            // From here to the submission nothing waits: a caller that goes away meanwhile
            // cannot leave what arrived in memory unwritten.
            let write = write.reserve().await?;
            if loaded.waited_too_long(std::time::Instant::now()) {
                // The states count what is dropped as received: the next sessions start
                // afresh, and bring again whatever of it was honest.
                self.sync_states.forget_chat_everywhere(chat);
                loaded.waiting_progress = None;
                match loaded.doc.drop_waiting() {
                    Ok(dropped) => tracing::warn!(
                        %chat, dropped,
                        "changes waited too long for their dependencies; dropped them"
                    ),
                    Err(e) => tracing::error!(%chat, error = %e, "cannot drop waiting changes"),
                }
            }
            let title_before = loaded.doc.title();
            let key = (device.clone(), chat.clone(), role);
            let applying = std::time::Instant::now();
            let taken = self.sync_states.with(key, |state| {
                let LoadedChat { doc, proofs, .. } = &mut *loaded;
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.with_keys(&standings, |keys| {
                        exchange::take_message(doc, proofs, state, message, keys)
                    })
                }))
            });
            let taken = match taken {
                Ok(Ok(taken)) => taken,
                Ok(Err(chatsync_model::ModelError::Equivocation(evidence))) => {
                    // The changes clash with an equivocation: drop what the evidence bans (if
                    // it is news here) and show the other device the evidence.
                    self.sync_states.forget_chat(device, chat);
                    let shown = evidence.encode();
                    self.resolve_equivocation(chat, &mut loaded, *evidence, write, &standings)?;
                    return Err(EngineError::Equivocation(shown));
                }
                Ok(Err(e)) => {
                    // The state may count changes that were refused; the next session starts
                    // afresh.
                    self.sync_states.forget_chat(device, chat);
                    self.report_equivocation(&e, chat);
                    return Err(refusal(e, Some(device)));
                }
                Err(_) => {
                    // Automerge gave up half-way: the copy in memory cannot be trusted, and the
                    // store holds every change of the chat once the writes still queued in the
                    // committer are made, so the chat is reloaded from it after those.
                    tracing::warn!(%device, %chat, "a sync message made Automerge panic; reloading the chat");
                    self.sync_states.forget_chat(device, chat);
                    drop(write);
                    self.committer.barrier().await?;
                    let (compacting, next_seq) = (loaded.compacting, loaded.next_seq);
                    *loaded = super::load_chat(&self.store, chat, &self.device, next_seq)?;
                    loaded.compacting = compacting;
                    return Err(EngineError::Misbehaviour(
                        "the data from the other device could not be processed".into(),
                    ));
                }
            };
            loaded.note_waiting(std::time::Instant::now());
            let exchange::Taken {
                reply,
                touched,
                changes,
                proofs,
            } = taken;
            self.metrics
                .apply_seconds
                .observe(applying.elapsed().as_secs_f64());
            self.metrics.messages_received.inc_by(touched.len() as u64);
            // Before the chunk: an attestation in the store without its change is passed over
            // at the next load, a change without its attestation could not be passed on.
            if let Err(e) = signatures::persist(&self.store, chat, proofs.store) {
                // What arrived is in memory and cannot be stored: nothing more may be written,
                // and nothing read from this copy is shown (see `read_durable`).
                self.committer.fail(&e.to_string());
                loaded.last_write = Some(super::commit::Receipt::failed(e.clone()));
                return Err(e);
            }
            let forget = signatures::forget(chat, proofs.forget);
            brought = !changes.is_empty();
            let receipt = if changes.is_empty() {
                forget.map(|forget| write.submit(vec![forget], Vec::new()))
            } else {
                let (store_write, record, renamed) = self.chunk_write(
                    chat,
                    &mut loaded,
                    changes,
                    now_ms(),
                    Some(title_before),
                    None,
                )?;
                let mut events = message_events(chat, &loaded.doc, touched);
                if renamed {
                    events.push(Event::ChatUpdated {
                        chat: chat.clone(),
                        record: record.clone(),
                    });
                }
                let writes = std::iter::once(store_write).chain(forget).collect();
                Some(write.submit(writes, events))
            };
            if let Some(receipt) = &receipt
                && brought
            {
                loaded.last_write = Some(receipt.clone());
            }
            // The reply may carry changes still on their way to the disk; it waits for them.
            let receipt = receipt.or_else(|| loaded.unsettled_write());
            self.cache.update_estimate(chat, loaded.estimated_bytes());
            (reply, receipt)
        };
        if let Some(receipt) = receipt {
            receipt.durable().await?;
        }
        if brought {
            // Other devices may want what just arrived.
            self.changed.mark(chat);
        }
        reply.map_err(|e| {
            // Ours, not the other device's: the next session starts afresh.
            self.sync_states.forget_chat(device, chat);
            EngineError::Internal(format!("cannot make a sync message: {e}"))
        })
    }

    /// Reports the device that signed both changes when `e` is a clash of sequence numbers whose
    /// evidence could not be made (see `chatsync_model::equivocation::Evidence::from_clash`).
    fn report_equivocation(&self, e: &chatsync_model::ModelError, chat: &ChatId) {
        if let chatsync_model::ModelError::Automerge(automerge::AutomergeError::DuplicateSeqNumber(
            seq,
            actor,
        )) = e
            && let Some(device) = chatsync_model::authorship::device_of_actor(actor)
        {
            self.report_equivocator(&device, chat, *seq);
        }
    }

    /// The whole document of a chat, for a device that does not have it, sealed with the
    /// attestations of every actor in it.
    pub async fn export_chat(&self, chat: &ChatId) -> Result<Vec<u8>, EngineError> {
        let sign = |statement: &[u8]| self.signer.sign(statement);
        // What this device can prove of the chat, and the attestations for it; saved from the
        // snapshot beside further writes, and sent once all of it is durable.
        let (snapshot, attestations) = self
            .read_durable(chat, |loaded| {
                let LoadedChat { doc, proofs, .. } = loaded;
                proofs
                    .document_to_send(doc, &self.device.id, &sign)
                    .map_err(|e| EngineError::Internal(format!("cannot copy chat {chat}: {e}")))
            })
            .await?;
        let bytes = tokio::task::spawn_blocking(move || snapshot.save())
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(authorship::seal(&attestations, &bytes))
    }

    /// Stores a chat received whole from another device. A chat this device already has is
    /// left alone (the sync protocol brings it up to date).
    pub async fn import_chat(&self, chat: &ChatId, bytes: &[u8]) -> Result<(), EngineError> {
        if bytes.len() > MAX_SYNC_BYTES {
            return Err(EngineError::Misbehaviour("document too large".into()));
        }
        // One import at a time: two answers to the same fetch must not both create the chat.
        let _importing = self.imports.lock().await;
        if self.has_chat(chat) {
            return Ok(());
        }
        self.committer.check_room_for(bytes.len())?;
        let (attestations, body) =
            authorship::open(bytes).map_err(|e| EngineError::Misbehaviour(e.to_string()))?;
        let body = body.to_vec();
        let standings = self.standings().await;
        let device = self.device.clone();
        let engine_chat = chat.clone();
        let signer = self.signer.clone();
        let (mut doc, received, body) = tokio::task::spawn_blocking(move || {
            contain_panic(|| {
                let (doc, tops) = load_checked(
                    &engine_chat,
                    &body,
                    &device,
                    &attestations,
                    &standings,
                    &signer,
                )
                .map_err(|e| refusal(e, None))?;
                Ok((doc, tops, body))
            })
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        let info = doc.info();
        let record = ChatRecord {
            title: info.title,
            created_at: info.created_at,
            created_by: info.created_by.to_string(),
            messages: info.messages as u64,
            last_activity: now_ms(),
            heads: heads_hex(&mut doc),
            next_seq: 0,
            own_newest: Some(crate::store::OwnNewest::of(&mut doc, &self.device.id)),
            unchecked: false,
        };
        let mut proofs = Proofs::default();
        let kept = proofs.take_received(received, &mut doc, &self.device.id);
        signatures::persist(&self.store, chat, kept.store)?;
        self.add_chat(chat, doc, proofs, &record, &body).await?;
        // A chat received whole brought every message in it.
        self.metrics.messages_received.inc_by(record.messages);
        // Passed on at once: every other connected device that lacks it fetches it from here,
        // however many devices away the one that created it is.
        self.changed.mark(chat);
        Ok(())
    }
}

/// Events for messages a sync brought, of the kind the model read off the changes.
///
/// [`TouchKind::Other`] has no event kind of its own: a field that replicas of this version
/// write only when posting (the author's name, the time, the reply, ...) or one this version does
/// not know, changed by a replica of another version or a misbehaving one. It becomes `Edited`:
/// it may have changed what the message shows and nothing here can tell whether it did, so
/// subscribers re-read the message rather than risk showing a stale one.
fn message_events(chat: &ChatId, doc: &ChatDoc, touched: Vec<Touched>) -> Vec<Event> {
    touched
        .into_iter()
        .filter_map(|Touched { id, kind }| {
            let message: Message = doc.message(&id)?;
            let kind = match kind {
                TouchKind::Created => MessageEventKind::Created,
                TouchKind::Edited | TouchKind::Other => MessageEventKind::Edited,
                TouchKind::Deleted => MessageEventKind::Deleted,
                TouchKind::Reaction => MessageEventKind::Reaction,
            };
            Some(Event::Message {
                kind,
                chat: chat.clone(),
                message,
            })
        })
        .collect()
}

/// The error for changes refused by the model: why, for the other device's logs and ours.
/// Changes by devices this one does not trust can come from an honest device that has not yet
/// heard of a roster change, changes whose proof has not reached this device yet from one that
/// holds them before their proof (`chatsync_model::proofs`), and a batch too large to take at
/// once from one in a large catch-up. A change whose actor and sequence number this device
/// already holds with other contents comes from a device that equivocated (signed two different
/// changes as one): an honest device passing on what it took from that device is not to blame,
/// the device itself is when it sends it. Anything else the model refuses, no honest device
/// sends.
fn refusal(e: chatsync_model::ModelError, sender: Option<&DeviceId>) -> EngineError {
    let why = format!("refused sync data: {e}");
    match e {
        chatsync_model::ModelError::Untrusted(_)
        | chatsync_model::ModelError::Unproven(_)
        | chatsync_model::ModelError::NewerSchema(_) => EngineError::Forbidden(why),
        chatsync_model::ModelError::TooLarge(_) => EngineError::Invalid(why),
        chatsync_model::ModelError::Automerge(automerge::AutomergeError::DuplicateSeqNumber(
            seq,
            ref actor,
        )) => {
            let equivocator = chatsync_model::authorship::device_of_actor(actor);
            tracing::warn!(
                device = ?equivocator.as_ref().map(DeviceId::as_str),
                seq,
                from = ?sender.map(DeviceId::as_str),
                "a device signed two different changes with one sequence number (equivocation); \
                 the second one to arrive is refused"
            );
            if equivocator.is_none() || equivocator.as_ref() == sender {
                EngineError::Misbehaviour(why)
            } else {
                EngineError::Forbidden(format!(
                    "{why} (device {} equivocated; the device that passed it on is not to blame)",
                    equivocator.as_ref().map_or("?", DeviceId::as_str)
                ))
            }
        }
        _ => EngineError::Misbehaviour(why),
    }
}

/// A whole chat `chat` from outside this device's store (another device, a backup), with every
/// check (`ChatDoc::load_untrusted`) against this device's keys and roster `standings`; also
/// refused if it is another chat.
pub(super) fn load_checked(
    chat: &ChatId,
    bytes: &[u8],
    device: &chatsync_model::Device,
    attestations: &[authorship::Attestation],
    standings: &HashMap<DeviceId, Standing>,
    signer: &super::signatures::Signer,
) -> Result<(ChatDoc, Vec<authorship::ActorTop>), chatsync_model::ModelError> {
    let standing = |d: &DeviceId| standings.get(d).copied().unwrap_or(Standing::Unknown);
    let verify =
        |d: &DeviceId, statement: &[u8], signature: &[u8]| signer.verify(d, statement, signature);
    let proof = Provenance {
        chat,
        attestations,
        verify: &verify,
        standing: &standing,
    };
    let (doc, tops) = ChatDoc::load_untrusted(bytes, device, &proof)?;
    if doc.id() != chat {
        return Err(chatsync_model::ModelError::Invalid(format!(
            "the document sent as chat {chat} is chat {}",
            doc.id()
        )));
    }
    Ok((doc, tops))
}

/// Whether two lists of heads (hex) hold the same hashes, in any order.
pub fn same_heads(a: &[String], b: &[String]) -> bool {
    chatsync_model::sync::wire::summary_matches(a, b)
}

/// Runs Automerge on bytes from another device, turning a panic inside it into an error: a
/// malformed message must cost that one exchange, not the daemon.
pub(super) fn contain_panic<T>(
    f: impl FnOnce() -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(_) => Err(EngineError::Misbehaviour(
            "the data from the other device could not be processed".into(),
        )),
    }
}
