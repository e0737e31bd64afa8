//! The engine's side of syncing chats with other devices: summaries of every chat's heads,
//! rounds of Automerge's sync protocol per device and chat, whole documents for chats a device
//! does not have yet, and the list of chats changed locally that devices should hear about.
//!
//! What arrives is persisted exactly like a local change (one chunk, one group-commit flush)
//! before it is announced; the network module carries the bytes.

use std::collections::{BTreeSet, HashMap};

use automerge::sync::State;
use chatsync_model::{ChatDoc, ChatId, DeviceId, Message, TouchKind, Touched};

use super::{Engine, EngineError, Event, MessageEventKind, cache::LoadedChat, heads_hex, now_ms};
use crate::store::ChatRecord;

/// Largest sync message or document accepted from a device.
pub const MAX_SYNC_BYTES: usize = 16 * 1024 * 1024;
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
}

impl Engine {
    /// Every chat and its heads, without loading any document.
    pub fn summary(&self) -> Vec<(ChatId, Vec<String>)> {
        self.read_records()
            .iter()
            .map(|(id, r)| (id.clone(), r.heads.clone()))
            .collect()
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

    /// The next sync message for `device` about `chat`, or `None` if it is up to date.
    pub async fn sync_message(
        &self,
        device: &DeviceId,
        chat: &ChatId,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let handle = self.chat(chat).await?;
        let mut loaded = handle.lock().await;
        Ok(self
            .sync_states
            .with((device.clone(), chat.clone()), |state| {
                loaded.doc.generate_sync_message(state)
            }))
    }

    /// Applies a sync message from `device` about `chat`, persists what it brought, and
    /// returns the reply (`None` when there is nothing more to say).
    pub async fn receive_sync(
        &self,
        device: &DeviceId,
        chat: &ChatId,
        message: &[u8],
    ) -> Result<Option<Vec<u8>>, EngineError> {
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
                contain_panic(|| {
                    loaded
                        .doc
                        .receive_sync_message(state, message)
                        .map_err(|e| EngineError::Invalid(format!("bad sync data: {e}")))
                })
            })?;
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
            let reply = self
                .sync_states
                .with(key, |state| loaded.doc.generate_sync_message(state));
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
                ChatDoc::load(&owned, &device)
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
        let write = self.committer.begin();
        self.store.create_chat(chat, &record, bytes)?;
        self.cache.insert_new(
            chat.clone(),
            LoadedChat {
                doc,
                next_seq: 0,
                base_bytes: bytes.len() as u64,
                chunks: 0,
                chunk_bytes: 0,
                compacting: false,
            },
        );
        // Listed only once in memory, so that nobody loads a second copy from the store.
        self.write_records().insert(chat.clone(), record.clone());
        let receipt = write
            .submit(vec![Event::ChatCreated {
                chat: chat.clone(),
                record,
            }])
            .await?;
        receipt.durable().await
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
