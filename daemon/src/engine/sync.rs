//! The engine's side of syncing chats with other devices: summaries of every chat's heads,
//! rounds of Automerge's sync protocol per device and chat, whole documents for chats a device
//! does not have yet, and the list of chats changed locally that devices should hear about.
//!
//! What arrives is persisted exactly like a local change (one chunk, one group-commit flush)
//! before it is announced; the network module carries the bytes.

use std::collections::{BTreeSet, HashMap};

use automerge::sync::State;
use chatsync_model::{ChatDoc, ChatId, DeviceId, Message, TouchKind, Touched};

use super::{Engine, EngineError, Event, MessageEventKind, heads_hex, now_ms};
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

/// Per device and chat: how far the sync protocol has got.
#[derive(Default)]
pub struct SyncStates {
    states: std::sync::Mutex<HashMap<(DeviceId, ChatId), State>>,
}

impl SyncStates {
    fn with<T>(&self, key: (DeviceId, ChatId), f: impl FnOnce(&mut State) -> T) -> T {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if !states.contains_key(&key) && states.len() >= MAX_SYNC_STATES {
            // A fresh state only costs a larger first message next time.
            states.clear();
        }
        f(states.entry(key).or_default())
    }

    fn forget(&self, device: &DeviceId) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(d, _), _| d != device);
    }

    fn forget_chat(&self, device: &DeviceId, chat: &ChatId) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(device.clone(), chat.clone()));
    }
}

/// One step of a sync session: the next message to send, if any, and whether this device now
/// knows that the other one has exactly its changes.
#[derive(Debug)]
pub struct SyncStep {
    pub message: Option<Vec<u8>>,
    pub in_sync: bool,
}

/// How another device's copy of a chat compares with this one, from its heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    Same,
    /// The other device has changes this one lacks (and may lack some of this one's).
    Behind,
    /// This device has changes the other lacks, and nothing the other has is missing here.
    Ahead,
}

/// Whether the other side (as far as `state` knows) has exactly `ours` heads.
fn in_sync(state: &State, ours: &[automerge::ChangeHash]) -> bool {
    let Some(theirs) = &state.their_heads else {
        return false;
    };
    let mut theirs = theirs.clone();
    let mut ours = ours.to_vec();
    theirs.sort_unstable();
    ours.sort_unstable();
    theirs == ours
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

    /// Forgets sync progress with a device (it disconnected; the next session starts afresh).
    pub fn forget_peer(&self, device: &DeviceId) {
        self.sync_states.forget(device);
    }

    /// Forgets sync progress with a device about one chat: a message generated for it was not
    /// sent, so the state must not assume the device has what it carried.
    pub fn forget_sync(&self, device: &DeviceId, chat: &ChatId) {
        self.sync_states.forget_chat(device, chat);
    }

    /// The next sync message for `device` about `chat` (none if it is up to date).
    pub async fn sync_message(
        &self,
        device: &DeviceId,
        chat: &ChatId,
    ) -> Result<SyncStep, EngineError> {
        let handle = self.chat(chat).await?;
        let mut loaded = handle.lock().await;
        let heads = loaded.doc.heads();
        Ok(self
            .sync_states
            .with((device.clone(), chat.clone()), |state| SyncStep {
                message: loaded.doc.generate_sync_message(state),
                in_sync: in_sync(state, &heads),
            }))
    }

    /// Applies a sync message from `device` about `chat`, persists what it brought, and
    /// returns the reply (no message when there is nothing more to say).
    pub async fn receive_sync(
        &self,
        device: &DeviceId,
        chat: &ChatId,
        message: &[u8],
    ) -> Result<SyncStep, EngineError> {
        if message.len() > MAX_SYNC_BYTES {
            return Err(EngineError::Invalid("sync message too large".into()));
        }
        self.committer.check_healthy()?;
        let handle = self.chat(chat).await?;
        let write = self.committer.begin();
        let (reply, receipt) = {
            let mut loaded = handle.lock().await;
            let key = (device.clone(), chat.clone());
            let received = self.sync_states.with(key.clone(), |state| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    loaded.doc.receive_sync_message(state, message)
                }))
            });
            let received = match received {
                Ok(received) => {
                    received.map_err(|e| EngineError::Invalid(format!("bad sync data: {e}")))?
                }
                Err(_) => {
                    // Automerge gave up half-way: the copy in memory cannot be trusted, and the
                    // store holds exactly what was acknowledged, so the chat is reloaded.
                    tracing::warn!(%device, %chat, "a sync message made Automerge panic; reloading the chat");
                    self.sync_states.forget_chat(device, chat);
                    let compacting = loaded.compacting;
                    *loaded = super::load_chat(&self.store, chat, &self.device)?;
                    loaded.compacting = compacting;
                    return Err(EngineError::Invalid(
                        "the data from the other device could not be processed".into(),
                    ));
                }
            };
            let chatsync_model::SyncReceived { touched, changes } = received;
            let receipt = if changes.is_empty() {
                None
            } else {
                let (record, renamed) =
                    self.persist_chunk(chat, &mut loaded, &changes, now_ms())?;
                let mut events = message_events(chat, &loaded.doc, touched);
                if renamed {
                    events.push(Event::ChatUpdated {
                        chat: chat.clone(),
                        record,
                    });
                }
                Some(write.submit(events).await?)
            };
            let heads = loaded.doc.heads();
            let reply = self.sync_states.with(key, |state| SyncStep {
                message: loaded.doc.generate_sync_message(state),
                in_sync: in_sync(state, &heads),
            });
            self.cache.update_estimate(chat, loaded.estimated_bytes());
            (reply, receipt)
        };
        if let Some(receipt) = receipt {
            receipt.durable().await?;
            // Other devices may want what just arrived.
            self.changed.mark(chat);
        }
        Ok(reply)
    }

    /// The whole document of a chat, for a device that does not have it.
    pub async fn export_chat(&self, chat: &ChatId) -> Result<Vec<u8>, EngineError> {
        let handle = self.chat(chat).await?;
        let mut loaded = handle.lock().await;
        Ok(loaded.doc.snapshot().save())
    }

    /// Stores a chat received whole from another device. A chat this device already has is
    /// left alone (the sync protocol brings it up to date).
    pub async fn import_chat(&self, chat: &ChatId, bytes: &[u8]) -> Result<(), EngineError> {
        if bytes.len() > MAX_SYNC_BYTES {
            return Err(EngineError::Invalid("document too large".into()));
        }
        // One import at a time: two answers to the same fetch must not both create the chat.
        let _importing = self.imports.lock().await;
        if self.has_chat(chat) {
            return Ok(());
        }
        self.committer.check_healthy()?;
        let device = self.device.clone();
        let owned = bytes.to_vec();
        let mut doc = tokio::task::spawn_blocking(move || {
            contain_panic(|| {
                ChatDoc::load_untrusted(&owned, &device)
                    .map_err(|e| EngineError::Invalid(format!("bad chat document: {e}")))
            })
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        if doc.id() != chat {
            return Err(EngineError::Invalid(format!(
                "the document sent as chat {chat} is chat {}",
                doc.id()
            )));
        }
        let info = doc.info();
        let record = ChatRecord {
            title: info.title,
            created_at: info.created_at,
            created_by: info.created_by.to_string(),
            messages: info.messages as u64,
            last_activity: now_ms(),
            heads: heads_hex(&mut doc),
        };
        self.add_chat(chat, doc, &record, bytes).await
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

/// Whether two lists of heads (hex) hold the same hashes, in any order.
pub fn same_heads(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|h| b.contains(h))
}

/// Runs Automerge on bytes from another device, turning a panic inside it into an error: a
/// malformed message must cost that one exchange, not the daemon.
fn contain_panic<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(_) => Err(EngineError::Invalid(
            "the data from the other device could not be processed".into(),
        )),
    }
}
