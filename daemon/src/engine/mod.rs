//! The engine: every chat, every rule about changing one, and the path from an operation to a
//! durable, published change.
//!
//! An operation (post, edit, ...) runs like this:
//! 1. find the chat (by id, title or prefix, see [`resolve`]) and load it if needed ([`cache`]);
//! 2. under the chat's lock, apply the change to the document ([`chatsync_model::ChatDoc`]) and
//!    append its bytes to the store as one chunk;
//! 3. submit the change's events to the committer ([`commit`]) and release the lock;
//! 4. wait until a flush has made the chunk durable; only then does the caller get its answer,
//!    and only then are the events published.
//!
//! Compaction folds a chat's chunks into one base in the background once they outweigh it.

pub mod cache;
pub mod commit;
mod copies;
mod devices;
pub mod equivocation;
mod error;
pub mod events;
mod recovery;
pub mod resolve;
mod signatures;
mod sync;

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use chatsync_model::{ChatDoc, ChatId, Device, Message, MessageId};
use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

pub use copies::{KeptAttestation, KeptEvidence, RestoredChat, StoredChat};
pub use devices::Trust;
pub use error::EngineError;
pub use events::{Event, MessageEventKind, SyncStatus};
pub use sync::{MAX_SYNC_BYTES, Relation, SyncRole, SyncStep, same_heads};

use self::{
    cache::{ChatCache, ChatHandle, LoadedChat},
    commit::Committer,
};
use crate::store::{ChatRecord, OwnNewest, Store};

/// Settings the engine needs from the daemon's config.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub memory_budget_bytes: u64,
    pub idle_unload: Duration,
    /// Whether the device's name was set by its owner (flag or config file). If not (it is the
    /// host name), the name the device has in the roster wins: the one given when it joined
    /// (`chatsync join --name`) or set later on any device.
    pub name_configured: bool,
    /// Bytes kept free on the store's disk: new writes are refused below it (`store::Space`).
    pub reserve_bytes: u64,
}

/// Most messages one read returns.
pub const MAX_PAGE: usize = 1000;

pub struct Engine {
    store: Store,
    device: Device,
    /// The device's name now (see [`EngineConfig::name_configured`]).
    name: std::sync::RwLock<String>,
    name_configured: bool,
    /// Every chat's record. A write's record is put here by the committer once the write is
    /// durable (lists and counts show only what is on disk), except its chunk number, which
    /// goes up at once (a chat loaded again meanwhile must not reuse it).
    records: commit::Records,
    cache: ChatCache,
    committer: Committer,
    events: broadcast::Sender<Event>,
    /// Background compactions, waited for at shutdown.
    background: TaskTracker,
    /// Compactions copying and saving a chat at once, at most [`COMPACTIONS_AT_ONCE`]: each
    /// holds a full copy of its chat's document while it saves.
    compaction_slots: Arc<tokio::sync::Semaphore>,
    roster: tokio::sync::Mutex<devices::LoadedRoster>,
    /// Signs this device's attestations and checks other devices'.
    signer: signatures::Signer,
    /// Chats changed locally, for the network to sync.
    changed: sync::ChangedChats,
    sync_states: sync::SyncStates,
    /// Held while a chat received whole is stored.
    imports: tokio::sync::Mutex<()>,
    /// The devices that may connect, for the network task.
    trust: tokio::sync::watch::Sender<Trust>,
    /// Devices caught signing two different changes with one sequence number.
    equivocations: equivocation::Equivocations,
    /// What the daemon counts as it works (`crate::metrics`).
    metrics: crate::metrics::Metrics,
}

/// A chat as listed: its id and record.
#[derive(Clone, Debug)]
pub struct ChatSummary {
    pub id: ChatId,
    pub record: ChatRecord,
}

/// Statistics for `status`.
#[derive(Clone, Debug)]
pub struct EngineStats {
    pub chats: usize,
    pub loaded_chats: usize,
    pub loaded_bytes_estimate: u64,
    pub store_bytes: u64,
    pub store_healthy: bool,
    /// New writes are refused for want of space (`store::Space`).
    pub store_full: bool,
    /// Bytes free on the store's disk, if it could be measured.
    pub store_free_bytes: Option<u64>,
}

impl Engine {
    /// Starts the engine over an open store. Reads only the chat records, no documents.
    /// `keypair` is the device key (`device.id` names its public half).
    pub fn start(
        store: Store,
        device: Device,
        keypair: libp2p::identity::Keypair,
        config: EngineConfig,
    ) -> Result<Arc<Engine>, EngineError> {
        let mut records: BTreeMap<_, _> = store.chat_records()?.into_iter().collect();
        recovery::settle_records(&store, &mut records, &device)?;
        let records: commit::Records = Arc::new(RwLock::new(records));
        let roster = devices::LoadedRoster::open(&store, &device, config.name_configured)?;
        let name = if config.name_configured {
            device.name.clone()
        } else {
            roster
                .own_name(&device.id)
                .unwrap_or_else(|| device.name.clone())
        };
        let (trust, _) = tokio::sync::watch::channel(roster.trust(&device.id));
        let (events, _) = broadcast::channel(events::EVENT_BUFFER);
        let metrics = crate::metrics::Metrics::default();
        let engine = Arc::new(Engine {
            committer: Committer::start(
                store.clone(),
                events.clone(),
                Arc::new(crate::store::Space::new(store.dir(), config.reserve_bytes)),
                records.clone(),
                metrics.durable_write_seconds.clone(),
            )
            .map_err(|e| EngineError::Internal(format!("cannot start the committer: {e}")))?,
            store,
            device,
            name: std::sync::RwLock::new(name),
            name_configured: config.name_configured,
            records: records.clone(),
            cache: ChatCache::new(config.memory_budget_bytes),
            events,
            background: TaskTracker::new(),
            compaction_slots: Arc::new(tokio::sync::Semaphore::new(COMPACTIONS_AT_ONCE)),
            roster: tokio::sync::Mutex::new(roster),
            signer: signatures::Signer::new(keypair),
            trust,
            changed: sync::ChangedChats::default(),
            sync_states: sync::SyncStates::default(),
            imports: tokio::sync::Mutex::new(()),
            equivocations: Default::default(),
            metrics,
        });
        tokio::spawn(unload_idle_chats(
            Arc::downgrade(&engine),
            config.idle_unload,
        ));
        Ok(engine)
    }

    /// This device's id and actor. Its name can change while the daemon runs: see
    /// [`Engine::device_name`] and [`Engine::writer`].
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// This device's name now.
    /// Where `device` was caught equivocating, if it was (see [`equivocation`]).
    pub fn equivocation(
        &self,
        device: &chatsync_model::DeviceId,
    ) -> Option<equivocation::Equivocation> {
        self.equivocations.of(device)
    }

    pub fn device_name(&self) -> String {
        self.name.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This device as the author of a change: its current name on it.
    fn writer(&self) -> Device {
        Device {
            name: self.device_name(),
            ..self.device.clone()
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Where events that are not durable changes (the network's) are published.
    pub fn event_sender(&self) -> broadcast::Sender<Event> {
        self.events.clone()
    }

    /// The devices that may connect, and those removed, kept up to date as the roster changes.
    pub fn trust(&self) -> tokio::sync::watch::Receiver<Trust> {
        self.trust.subscribe()
    }

    /// The store, for what other parts of the daemon keep beside the chats (the network's
    /// remembered addresses).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the daemon counts as it works.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Memory the chats held in memory may take (`[store] memory_budget_mb`).
    pub fn memory_budget_bytes(&self) -> u64 {
        self.cache.budget_bytes()
    }

    pub fn stats(&self) -> EngineStats {
        let (loaded_chats, loaded_bytes_estimate) = self.cache.stats();
        EngineStats {
            chats: self.read_records().len(),
            loaded_chats,
            loaded_bytes_estimate,
            store_bytes: self.store.size_on_disk(),
            store_healthy: self.committer.is_healthy(),
            store_full: self.committer.space().is_full(),
            store_free_bytes: self.committer.space().free(),
        }
    }

    /// Shuts the engine down: waits for background work and pending writes, flushes the
    /// store, and closes it (releasing its lock) before returning.
    pub async fn close(self) -> Result<(), EngineError> {
        self.background.close();
        self.background.wait().await;
        // Every write is made and answered; if all of them succeeded, every record accounts
        // for its chunks.
        let settled = self.committer.is_healthy();
        self.committer.close().await;
        let store = self.store;
        tokio::task::spawn_blocking(move || {
            if settled {
                store.settle()?;
            }
            store.flush()?;
            if !store.close(STORE_RELEASE_TIMEOUT) {
                tracing::warn!(
                    "the store is still locked {STORE_RELEASE_TIMEOUT:?} after it was closed"
                );
            }
            Ok::<(), crate::store::StoreError>(())
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        Ok(())
    }

    pub fn list_chats(&self) -> Vec<ChatSummary> {
        let mut chats: Vec<ChatSummary> = self
            .read_records()
            .iter()
            .map(|(id, record)| ChatSummary {
                id: id.clone(),
                record: record.clone(),
            })
            .collect();
        chats.sort_by(|a, b| {
            b.record
                .last_activity
                .cmp(&a.record.last_activity)
                .then_with(|| a.id.cmp(&b.id))
        });
        chats
    }

    /// Finds a chat by id, unique title, or unambiguous id prefix.
    pub fn resolve_chat(&self, reference: &str) -> Result<ChatSummary, EngineError> {
        let records = self.read_records();
        let id = resolve::resolve_chat(&records, reference)?;
        let record = records
            .get(&id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no chat {id}")))?;
        Ok(ChatSummary { id, record })
    }

    /// Creates a chat. With an idempotency `key`, the chat's id comes from the key: a retry
    /// with the same key and title answers with the chat the first attempt made.
    pub async fn create_chat(
        &self,
        title: &str,
        key: Option<&str>,
    ) -> Result<ChatSummary, EngineError> {
        refuse_id_like_title(title)?;
        let id = ChatId::new(match key {
            Some(key) => keyed_id("chat", &self.device.id, "", key),
            None => random_id(),
        })?;
        // Two requests with one key at once: one creates, the other finds it (the lock that
        // keeps two imports of one chat apart).
        let _creating = match key {
            Some(_) => Some(self.imports.lock().await),
            None => None,
        };
        if key.is_some()
            && !self.read_records().contains_key(&id)
            && let Some(earlier) = self.cache.loaded(&id)
        {
            // An earlier attempt's creation, perhaps still on its way to the disk (its request
            // went away meanwhile): waited for, never made twice. If it failed, its copy goes.
            let pending = earlier.lock().await.unsettled_write();
            if let Some(pending) = pending {
                let _ = pending.durable().await;
            }
            if !self.read_records().contains_key(&id) {
                self.cache.forget(&id);
            }
        }
        let existing = key.and(self.read_records().get(&id).cloned());
        if let Some(record) = existing {
            if record.title == title && record.created_by == self.device.id.as_str() {
                // Answered only once the first attempt's write is durable.
                self.committer.barrier().await?;
                return Ok(ChatSummary { id, record });
            }
            return Err(EngineError::Conflict(
                "this idempotency key was used to create another chat".into(),
            ));
        }
        self.committer.check_healthy()?;
        let now = now_ms();
        let mut doc = ChatDoc::create(id.clone(), title, &self.writer(), now)?;
        let bytes = doc.save();
        let record = ChatRecord {
            title: title.to_string(),
            created_at: now,
            created_by: self.device.id.to_string(),
            messages: 0,
            last_activity: now,
            heads: heads_hex(&mut doc),
            next_seq: 0,
            own_newest: Some(OwnNewest::of(&mut doc, &self.device.id)),
            unchecked: false,
        };
        self.add_chat(&id, doc, Default::default(), &record, &bytes)
            .await?;
        self.changed.mark(&id);
        Ok(ChatSummary { id, record })
    }

    /// Stores a chat this device did not have (`bytes` is its saved document), keeps the
    /// document in memory, lists it, and returns once that is durable.
    async fn add_chat(
        &self,
        id: &ChatId,
        doc: ChatDoc,
        proofs: chatsync_model::proofs::Proofs,
        record: &ChatRecord,
        bytes: &[u8],
    ) -> Result<(), EngineError> {
        // Its place in the queue first: from the copy in memory to the submission nothing waits.
        let write = self.committer.begin().reserve().await?;
        // In memory before it is listed, so that nobody loads a second copy from the store.
        // Unreachable until then (lookups go through the list): should the write fail, the
        // copy is unloaded as idle.
        let Some(handle) = self.cache.insert_new(
            id.clone(),
            LoadedChat {
                doc,
                proofs,
                next_seq: 0,
                base_bytes: bytes.len() as u64,
                chunks: 0,
                chunk_bytes: 0,
                compacting: false,
                rebuilds: 0,
                last_write: None,
                waiting_progress: None,
            },
        ) else {
            return Err(EngineError::Internal(format!(
                "chat {id} is already in memory; not writing it again"
            )));
        };
        let event = Event::ChatCreated {
            chat: id.clone(),
            record: record.clone(),
        };
        // Listed by the committer once durable, before the event goes out.
        let create = commit::StoreWrite::NewChat {
            chat: id.clone(),
            record: record.clone(),
            bytes: bytes.to_vec(),
        };
        let receipt = write.submit(vec![create], vec![event]);
        // A new copy: nobody else holds its lock yet.
        if let Ok(mut loaded) = handle.try_lock() {
            loaded.last_write = Some(receipt.clone());
        }
        receipt.durable().await
    }

    pub async fn rename_chat(
        &self,
        chat: &ChatId,
        title: &str,
    ) -> Result<ChatSummary, EngineError> {
        refuse_id_like_title(title)?;
        self.mutate(chat, Title::MayChange, |doc, _device, now| {
            doc.set_title(title, now)?;
            Ok(((), Vec::new()))
        })
        .await?;
        let record = self
            .read_records()
            .get(chat)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no chat {chat}")))?;
        Ok(ChatSummary {
            id: chat.clone(),
            record,
        })
    }

    /// Messages in display order, oldest first: the last `limit`, or the `limit` before
    /// `before`.
    pub async fn messages(
        &self,
        chat: &ChatId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, EngineError> {
        self.read_durable(chat, |loaded| {
            let before = match before {
                Some(r) => Some(resolve::resolve_message(&loaded.doc, r)?),
                None => None,
            };
            Ok(loaded.doc.page_before(before.as_ref(), limit.min(MAX_PAGE)))
        })
        .await
    }

    /// The attachments the messages of a chat name (a deleted message names none).
    pub async fn attachments_of(
        &self,
        chat: &ChatId,
    ) -> Result<Vec<chatsync_model::Attachment>, EngineError> {
        self.read_durable(chat, |loaded| {
            Ok(loaded.doc.messages().flat_map(|m| m.attachments).collect())
        })
        .await
    }

    pub async fn message(&self, chat: &ChatId, reference: &str) -> Result<Message, EngineError> {
        self.read_durable(chat, |loaded| {
            let id = resolve::resolve_message(&loaded.doc, reference)?;
            loaded
                .doc
                .message(&id)
                .ok_or_else(|| EngineError::NotFound(format!("no message {id}")))
        })
        .await
    }

    /// Reads a chat, answering only once everything the answer shows is durable: `read` runs
    /// under the chat's lock, then the answer waits for the chat's newest write still on its
    /// way to the disk (`LoadedChat::last_write`). Waiting outside the lock keeps writers
    /// going; a write made meanwhile is not in the answer, so it need not be waited for.
    pub(super) async fn read_durable<T>(
        &self,
        chat: &ChatId,
        read: impl FnOnce(&mut LoadedChat) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let handle = self.chat(chat).await?;
        let (answer, pending) = {
            let mut loaded = handle.lock().await;
            (read(&mut loaded)?, loaded.unsettled_write())
        };
        if let Some(receipt) = pending {
            receipt.durable().await?;
        }
        Ok(answer)
    }

    /// Posts a message. With an idempotency `key`, the message's id comes from the key: a
    /// retry with the same key and text answers with the message the first attempt posted.
    pub async fn post(
        &self,
        chat: &ChatId,
        text: &str,
        reply_to: Option<&str>,
        key: Option<&str>,
    ) -> Result<Message, EngineError> {
        self.post_with_attachments(chat, text, reply_to, &[], key)
            .await
    }

    /// Posts a message with attachments whose bytes the caller has stored (see `blobs`).
    pub async fn post_with_attachments(
        &self,
        chat: &ChatId,
        text: &str,
        reply_to: Option<&str>,
        attachments: &[chatsync_model::Attachment],
        key: Option<&str>,
    ) -> Result<Message, EngineError> {
        let id = MessageId::new(match key {
            Some(key) => keyed_id("post", &self.device.id, chat.as_str(), key),
            None => random_id(),
        })?;
        self.mutate(chat, Title::Kept, |doc, device, now| {
            let parent = reply_to
                .map(|r| resolve::resolve_message(doc, r))
                .transpose()?;
            if let Some(posted) = doc.message(&id) {
                // Only a key can repeat an id: this is a retry, or a key used twice.
                if posted.author == device.id
                    && posted.text == text
                    && posted.reply_to == parent
                    && posted.attachments == attachments
                {
                    return Ok((posted, Vec::new()));
                }
                return Err(EngineError::Conflict(
                    "this idempotency key was used for another message in this chat".into(),
                ));
            }
            let msg = doc.post_with(device, id, text, parent.as_ref(), attachments, now)?;
            Ok(message_event(chat, MessageEventKind::Created, msg))
        })
        .await
        .inspect(|_| self.metrics.count_write("post"))
    }

    pub async fn edit(
        &self,
        chat: &ChatId,
        reference: &str,
        text: &str,
    ) -> Result<Message, EngineError> {
        self.mutate(chat, Title::Kept, |doc, device, now| {
            let id = resolve::resolve_message(doc, reference)?;
            let msg = doc.edit(device, &id, text, now)?;
            Ok(message_event(chat, MessageEventKind::Edited, msg))
        })
        .await
        .inspect(|_| self.metrics.count_write("edit"))
    }

    pub async fn delete(&self, chat: &ChatId, reference: &str) -> Result<Message, EngineError> {
        self.mutate(chat, Title::Kept, |doc, device, now| {
            let id = resolve::resolve_message(doc, reference)?;
            let msg = doc.delete(device, &id, now)?;
            Ok(message_event(chat, MessageEventKind::Deleted, msg))
        })
        .await
        .inspect(|_| self.metrics.count_write("delete"))
    }

    pub async fn react(
        &self,
        chat: &ChatId,
        reference: &str,
        reaction: Option<&str>,
    ) -> Result<Message, EngineError> {
        self.mutate(chat, Title::Kept, |doc, device, now| {
            let id = resolve::resolve_message(doc, reference)?;
            let msg = doc.react(device, &id, reaction, now)?;
            Ok(message_event(chat, MessageEventKind::Reaction, msg))
        })
        .await
        .inspect(|_| self.metrics.count_write("reaction"))
    }

    /// Moves this device's read marker to a message (or the newest one). Returns the marker.
    pub async fn mark_read(
        &self,
        chat: &ChatId,
        reference: Option<&str>,
    ) -> Result<Option<MessageId>, EngineError> {
        self.mutate(chat, Title::Kept, |doc, device, now| {
            let id = match reference {
                Some(r) => resolve::resolve_message(doc, r)?,
                None => match doc.message_ids().last() {
                    Some(id) => id.clone(),
                    None => return Ok((None, Vec::new())),
                },
            };
            let events = if doc.mark_read(device, &id, now)? {
                vec![Event::ReadMarker {
                    chat: chat.clone(),
                    device: device.id.clone(),
                    message: id,
                }]
            } else {
                Vec::new()
            };
            Ok((doc.read_marker(&device.id), events))
        })
        .await
    }

    /// This device's read marker and unread count in a chat.
    pub async fn read_state(
        &self,
        chat: &ChatId,
    ) -> Result<(Option<MessageId>, usize), EngineError> {
        self.read_durable(chat, |loaded| {
            Ok((
                loaded.doc.read_marker(&self.device.id),
                loaded.doc.unread_count(&self.device.id),
            ))
        })
        .await
    }

    /// Runs one local change: apply, submit its chunk to the committer, wait until durable.
    async fn mutate<T>(
        &self,
        chat: &ChatId,
        title: Title,
        op: impl FnOnce(&mut ChatDoc, &Device, i64) -> Result<(T, Vec<Event>), EngineError>,
    ) -> Result<T, EngineError> {
        self.committer.check_healthy()?;
        let handle = self.chat(chat).await?;
        let write = self.committer.begin();
        let (value, receipt) = {
            let mut loaded = handle.lock().await;
            // From here to the submission nothing waits: a request cancelled meanwhile cannot
            // leave the change in memory unwritten.
            let write = write.reserve().await?;
            let title_before = (title == Title::MayChange).then(|| loaded.doc.title());
            let now = now_ms();
            let (value, mut events) = op(&mut loaded.doc, &self.writer(), now)?;
            let chunk = loaded.doc.take_local_changes();
            if chunk.is_empty() {
                // Nothing changed (an edit to the same text, a post retried with its key): nothing
                // to persist, but what made it so may still be on its way to the disk, and the
                // answer must not come before it (`barrier` waits for every earlier write).
                drop(loaded);
                drop(write);
                self.committer.barrier().await?;
                return Ok(value);
            }
            // The change just made, under the session's actor, is this device's newest (the
            // actor is new each run).
            let own = loaded.doc.last_local_change().map(|(seq, hash)| {
                let actor = loaded.doc.actor().clone();
                OwnNewest::from_change(Some((&actor, seq, &hash)))
            });
            let (store_write, record, renamed) =
                self.chunk_write(chat, &mut loaded, chunk, now, title_before, own)?;
            if renamed {
                events.push(Event::ChatUpdated {
                    chat: chat.clone(),
                    record: record.clone(),
                });
            }
            let receipt = write.submit(vec![store_write], events);
            loaded.last_write = Some(receipt.clone());
            self.cache.update_estimate(chat, loaded.estimated_bytes());
            if loaded.wants_compaction() {
                self.start_compaction(chat, &handle, &mut loaded);
            }
            (value, receipt)
        };
        receipt.durable().await?;
        self.changed.mark(chat);
        Ok(value)
    }

    /// Starts the compaction of chats unused for `quiet` that wrote enough since their last
    /// one, up to [`SETTLING_BYTES_AT_ONCE`] (the rest wait for the next call). A chat being
    /// used is skipped.
    fn settle_quiet_chats(&self, quiet: Duration) {
        let mut started = 0;
        for (chat, handle) in self.cache.quiet(quiet) {
            if started >= SETTLING_BYTES_AT_ONCE {
                return;
            }
            let Ok(mut loaded) = handle.try_lock() else {
                continue;
            };
            if loaded.wants_settling() {
                started += self
                    .start_compaction(&chat, &handle, &mut loaded)
                    .unwrap_or(0);
            }
        }
    }

    /// Starts folding a chat's chunks into its base in the background; returns the bytes that
    /// writes. A compaction writes the whole chat again: it starts only while that leaves the
    /// reserve free (the chunks stay until there is room).
    fn start_compaction(
        &self,
        chat: &ChatId,
        handle: &ChatHandle,
        loaded: &mut LoadedChat,
    ) -> Option<usize> {
        let rewrite = (loaded.base_bytes + loaded.chunk_bytes) as usize;
        self.committer.check_room_for(rewrite).ok()?;
        loaded.compacting = true;
        self.background.spawn(compact(
            (*self.committer).clone(),
            self.compaction_slots.clone(),
            chat.clone(),
            handle.clone(),
        ));
        Some(rewrite)
    }

    /// The store write for a change already applied to `loaded.doc`: its chunk and the chat's
    /// record brought up to date (written together, see `commit`; the committer puts the record
    /// in memory once it is durable). Updates the chunk bookkeeping and, at once, the record's
    /// chunk number. `own` is this device's newest change, when the write holds changes of its
    /// own (the record keeps the one it names otherwise). Also says whether the title changed
    /// (worth an event; counters change with every post and are not announced separately).
    fn chunk_write(
        &self,
        chat: &ChatId,
        loaded: &mut LoadedChat,
        chunk: Vec<u8>,
        now: i64,
        title_before: Option<String>,
        own: Option<OwnNewest>,
    ) -> Result<(commit::StoreWrite, ChatRecord, bool), EngineError> {
        let mut record = self
            .read_records()
            .get(chat)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("no chat {chat}")))?;
        // From the document, not the record in memory: that one may lag a write not yet
        // durable (a rename, say, which a second one may already have reversed).
        let doc_title = loaded.doc.title();
        let renamed = title_before.is_some_and(|before| before != doc_title);
        record.title = doc_title;
        record.messages = loaded.doc.len() as u64;
        record.last_activity = now;
        record.heads = heads_hex(&mut loaded.doc);
        if own.is_some() {
            record.own_newest = own;
        }
        let seq = loaded.next_seq;
        loaded.next_seq += 1;
        record.next_seq = loaded.next_seq;
        if let Some(current) = self.write_records().get_mut(chat) {
            current.next_seq = current.next_seq.max(record.next_seq);
        }
        loaded.chunks += 1;
        loaded.chunk_bytes += chunk.len() as u64;
        Ok((
            commit::StoreWrite::Chunk {
                chat: chat.clone(),
                seq,
                bytes: chunk,
                record: record.clone(),
            },
            record,
            renamed,
        ))
    }

    /// The chat, loading it from the store if it is not in memory.
    async fn chat(&self, chat: &ChatId) -> Result<ChatHandle, EngineError> {
        let Some((recorded_seq, unchecked)) = self
            .read_records()
            .get(chat)
            .map(|r| (r.next_seq, r.unchecked))
        else {
            return Err(EngineError::NotFound(format!("no chat {chat}")));
        };
        let handle = self
            .cache
            .get_or_load(chat, || {
                let store = self.store.clone();
                let device = self.device.clone();
                let id = chat.clone();
                let signer = self.signer.clone();
                async move {
                    // A chat restored from a backup is checked like one from another device.
                    let standings = match unchecked {
                        true => Some(self.standings().await),
                        false => None,
                    };
                    tokio::task::spawn_blocking(move || match standings {
                        None => load_chat(&store, &id, &device, recorded_seq),
                        Some(standings) => copies::load_restored(
                            &store,
                            &id,
                            &device,
                            recorded_seq,
                            &standings,
                            &signer,
                        ),
                    })
                    .await
                    .map_err(|e| EngineError::Internal(format!("loading a chat failed: {e}")))?
                }
            })
            .await?;
        if unchecked && let Some(record) = self.write_records().get_mut(chat) {
            // Stored with its next write; until then each start checks it again.
            record.unchecked = false;
        }
        Ok(handle)
    }

    fn read_records(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ChatId, ChatRecord>> {
        self.records.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_records(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ChatId, ChatRecord>> {
        self.records.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a change can have changed the chat's title. Reading the title back is an Automerge
/// lookup, which every post would pay for otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Title {
    /// A local message operation: it never touches the title.
    Kept,
    /// A rename, or changes from another device.
    MayChange,
}

fn message_event(chat: &ChatId, kind: MessageEventKind, message: Message) -> (Message, Vec<Event>) {
    let event = Event::Message {
        kind,
        chat: chat.clone(),
        message: message.clone(),
    };
    (message, vec![event])
}

/// Loads a chat from the store. `recorded_seq` is its record's next chunk number: numbering goes
/// on from it even when compaction has folded every chunk.
fn load_chat(
    store: &Store,
    id: &ChatId,
    device: &Device,
    recorded_seq: u64,
) -> Result<LoadedChat, EngineError> {
    load_chat_with(store, id, device, recorded_seq, |bytes| {
        ChatDoc::load(bytes, device)
            .map_err(|e| EngineError::Storage(format!("chat {id} cannot be loaded: {e}")))
    })
}

/// [`load_chat`], with `open` making the document of the stored bytes.
fn load_chat_with(
    store: &Store,
    id: &ChatId,
    device: &Device,
    recorded_seq: u64,
    open: impl FnOnce(&[u8]) -> Result<ChatDoc, EngineError>,
) -> Result<LoadedChat, EngineError> {
    let started = std::time::Instant::now();
    let stored = store
        .load_chat(id)?
        .ok_or_else(|| EngineError::Storage(format!("chat {id} has a record but no document")))?;
    let mut doc = open(&stored.bytes)?;
    let last_chunk = stored.next_seq.max(recorded_seq).checked_sub(1);
    let rewritten = equivocation::apply_stored(store, id, &mut doc, device, last_chunk)?;
    let proofs = signatures::load_proofs(store, id, &mut doc)?;
    let doc_waits = doc.has_waiting_changes();
    tracing::debug!(
        chat = %id,
        messages = doc.len(),
        chunks = stored.chunks,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "loaded chat"
    );
    Ok(LoadedChat {
        doc,
        proofs,
        next_seq: stored.next_seq.max(recorded_seq),
        base_bytes: rewritten.unwrap_or(stored.base_bytes),
        chunks: if rewritten.is_some() {
            0
        } else {
            stored.chunks
        },
        chunk_bytes: if rewritten.is_some() {
            0
        } else {
            stored.chunk_bytes
        },
        compacting: false,
        rebuilds: 0,
        last_write: None,
        // Changes a store kept from before they were left out of saves start to wait now.
        waiting_progress: doc_waits.then(|| (std::time::Instant::now(), 0)),
    })
}

/// Folds a chat's chunks into its base. The chat is locked only to copy it; the slow part
/// (saving and compressing the copy) runs beside further writes, which only append chunks
/// after the ones being folded. The new base goes through the committer, so it is written
/// after the chunks it folds (they may still be queued there). It waits for one of the
/// `slots` before it copies the chat: after a catch-up of 100 chats, copies of all of them at
/// once added a fifth to the daemon's memory.
async fn compact(
    queue: commit::Queue,
    slots: Arc<tokio::sync::Semaphore>,
    chat: ChatId,
    handle: ChatHandle,
) {
    // (The semaphore is never closed; if it were, the compaction would go ahead unbounded.)
    let _slot = slots.acquire_owned().await.ok();
    let started = std::time::Instant::now();
    let (snapshot, through, folded_chunks, folded_bytes, rebuilds) = {
        let mut loaded = handle.lock().await;
        (
            loaded.doc.snapshot(),
            loaded.next_seq.checked_sub(1),
            loaded.chunks,
            loaded.chunk_bytes,
            loaded.rebuilds,
        )
    };
    let result = match tokio::task::spawn_blocking(move || snapshot.save()).await {
        Ok(base) => {
            let base_bytes = base.len();
            match through {
                Some(through) => {
                    let write = commit::StoreWrite::Compact {
                        chat: chat.clone(),
                        base,
                        through,
                    };
                    // Submitted under the lock, and only if the chat was not stored anew
                    // meanwhile: the copy may hold changes dropped since.
                    let submitted = {
                        let loaded = handle.lock().await;
                        if loaded.rebuilds == rebuilds {
                            Some(queue.begin().submit(vec![write], Vec::new()).await)
                        } else {
                            None
                        }
                    };
                    match submitted {
                        Some(Ok(receipt)) => receipt.durable().await.map(|()| base_bytes),
                        Some(Err(e)) => Err(e),
                        None => Err(EngineError::Internal(
                            "the chat was stored anew during the compaction".into(),
                        )),
                    }
                }
                None => Ok(base_bytes),
            }
        }
        Err(e) => Err(EngineError::Internal(format!(
            "the compaction task failed: {e}"
        ))),
    };
    let mut loaded = handle.lock().await;
    loaded.compacting = false;
    match result {
        Ok(base_bytes) => {
            tracing::debug!(
                chat = %chat,
                chunks = folded_chunks,
                base_bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "compacted chat"
            );
            loaded.base_bytes = base_bytes as u64;
            // Saturating: dropping an equivocation's changes may have folded them meanwhile.
            loaded.chunks = loaded.chunks.saturating_sub(folded_chunks);
            loaded.chunk_bytes = loaded.chunk_bytes.saturating_sub(folded_bytes);
        }
        Err(e) => tracing::warn!(chat = %chat, error = %e, "compaction failed; will retry"),
    }
}

/// Compactions that copy and save a chat at the same time (see `compact`): the saves run on
/// blocking threads, and more at once than there are cores only adds copies in memory.
const COMPACTIONS_AT_ONCE: usize = 2;

/// Longest wait at shutdown for the store's lock to be released (see `Store::close`).
const STORE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a chat goes unused before what it wrote since its last compaction is folded (see
/// `LoadedChat::wants_settling`), unless it is unloaded sooner.
const SETTLE_AFTER: Duration = Duration::from_secs(10);

/// Most bytes that compactions of quiet chats started at once write (the rest wait for the next
/// round, a second later).
const SETTLING_BYTES_AT_ONCE: usize = 8 << 20;

async fn unload_idle_chats(engine: std::sync::Weak<Engine>, idle: Duration) {
    let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let settle_after = SETTLE_AFTER.min(idle / 2);
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.settle_quiet_chats(settle_after);
        let n = engine.cache.evict_idle(idle);
        if n > 0 {
            tracing::debug!(unloaded = n, "unloaded idle chats");
        }
    }
}

/// A document's heads as hex strings, as chat records keep them.
fn heads_hex(doc: &mut ChatDoc) -> Vec<String> {
    doc.heads().iter().map(|h| h.to_string()).collect()
}

/// A fresh random id: 128 bits, as 32 lowercase hex digits.
/// A title written as a chat id would hide the chat whose id it is (`resolve.rs`).
fn refuse_id_like_title(title: &str) -> Result<(), EngineError> {
    if resolve::looks_like_an_id(title) {
        return Err(EngineError::Invalid(
            "a title may not look like a chat id (32 hexadecimal digits)".into(),
        ));
    }
    Ok(())
}

pub fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The id a request with an idempotency key gives what it creates: the same for the same
/// device, kind, scope (the chat, for a post) and key, unrelated otherwise.
pub fn keyed_id(kind: &str, device: &chatsync_model::DeviceId, scope: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"chatsync idempotency key\0")
        .chain_update(kind.as_bytes())
        .chain_update(b"\0")
        .chain_update(device.as_str().as_bytes())
        .chain_update(b"\0")
        .chain_update(scope.as_bytes())
        .chain_update(b"\0")
        .chain_update(key.as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
