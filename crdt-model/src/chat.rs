//! [`ChatDoc`]: one chat's Automerge document and its display-order index.
//!
//! Every mutation is one Automerge change, committed at once, so that the caller can persist it
//! (see [`ChatDoc::take_local_changes`]) before anyone else sees it.
//!
//! Keeping the index up to date must not cost time proportional to the length of the chat, so
//! neither Automerge's patch log (measured here, it made each post cost time proportional to the
//! chat) nor a diff of the document before and after a merge (it walks the whole document: one
//! new message arriving in a 50,000-message chat took about 120 ms) is used. Instead:
//! - a local operation re-indexes the one message it touched;
//! - changes from other replicas (the sync protocol, [`ChatDoc::merge`],
//!   [`ChatDoc::apply_changes`]) are read operation by operation. Each operation names the map
//!   it writes; `message_of_object` traces a message's own map back to the message, so only the
//!   messages the changes wrote to are re-read. The field names tell what happened to each
//!   message ([`TouchKind`]), which callers could otherwise only guess from its new state.
//!
//! What would still grow with the chat when changes arrive is Automerge 0.12 applying them: it
//! scans the operations of every map a change writes to, and each new message is an entry of a
//! map of entries. Chats of schema 3 spread their entries over 64 buckets to keep that map
//! small ([`crate::layout`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, ReadDoc,
    transaction::{CommitOptions, Transactable},
};

use crate::{
    Attachment, ChatId, Clock, DeviceId, MessageId, ModelError,
    access::{change_time, check_text, get_int, get_map, get_str, write_change},
    attachment,
    authorship::{self, ActorTop, Provenance},
    header::Header,
    layout::{EntryKeys, EntryMaps},
    limits::{MAX_DEVICE_NAME_BYTES, MAX_REACTION_BYTES, MAX_TEXT_BYTES, MAX_TITLE_BYTES},
    message::{Message, OrderKey},
    schema as s,
    touched::{MessageWrites, OpKey, Place, PlaceWrites, TouchKind, Touched},
};

mod exclusion;
mod maps;
mod read;
mod receive;
pub use exclusion::Excluded;
use maps::MapKey;
pub(crate) use maps::MessageMaps;

/// The device making local changes: who it is, what it is called, and the Automerge actor its
/// changes are written under.
#[derive(Clone, Debug)]
pub struct Device {
    pub id: DeviceId,
    pub name: String,
    pub actor: ActorId,
}

impl Device {
    /// A device writing under an actor that is its id alone. The daemon uses
    /// [`Device::with_session`]; this form serves tests and tools that never publish changes.
    pub fn new(id: DeviceId, name: impl Into<String>) -> Result<Self, ModelError> {
        let name = name.into();
        check_text("device name", &name, MAX_DEVICE_NAME_BYTES, false)?;
        let actor = ActorId::from(id.as_str().as_bytes());
        Ok(Device { id, name, actor })
    }

    /// A device writing under a fresh actor for this run (`session`: random bytes chosen at
    /// start-up), so that it never reuses an actor and sequence number it already published,
    /// whatever happened to its store (see [`crate::authorship`]).
    pub fn with_session(
        id: DeviceId,
        name: impl Into<String>,
        session: &[u8],
    ) -> Result<Self, ModelError> {
        let mut device = Device::new(id, name)?;
        device.actor = crate::authorship::actor_for(&device.id, session);
        Ok(device)
    }
}

/// Chat-level facts, cheap to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatInfo {
    pub id: ChatId,
    pub title: String,
    pub created_at: i64,
    pub created_by: DeviceId,
    pub messages: usize,
}

/// What a sync message brought: the messages it added or changed (each with what happened to
/// it) and its changes, encoded for the store.
#[derive(Debug, Default)]
pub struct SyncReceived {
    pub touched: Vec<Touched>,
    pub changes: Vec<u8>,
    /// The attested newest change of each actor that wrote in what arrived, to keep and pass on.
    pub tops: Vec<ActorTop>,
}

/// A point-in-time copy of a chat document, made by [`ChatDoc::snapshot`].
pub struct Snapshot(AutoCommit);

impl Snapshot {
    /// The document as it was when the snapshot was taken, compacted: its applied changes
    /// only, never ones still waiting for their dependencies (see [`save_applied`]).
    pub fn save(mut self) -> Vec<u8> {
        save_applied(&mut self.0)
    }

    pub(crate) fn automerge_mut(&mut self) -> &mut AutoCommit {
        &mut self.0
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

/// A chat document plus its display-order index.
pub struct ChatDoc {
    doc: AutoCommit,
    id: ChatId,
    /// The schema the chat was created with: it fixes where messages' entries are.
    schema: i64,
    entries: EntryMaps,
    /// `entries` as changes name them, kept for reading every received change.
    entry_keys: EntryKeys,
    read: ObjId,
    order: BTreeSet<OrderKey>,
    /// Every message in `order`, with its place there and the map that holds it now (so that
    /// reading a message does not look its map up among the entries again).
    keys: HashMap<MessageId, Indexed>,
    /// The message each message map belongs to: how an operation in a received change is traced
    /// to the message it writes (see `chat/maps.rs`).
    maps: MessageMaps,
    /// Largest clock of any message, for stamping the next one.
    max_clock: Clock,
    /// Encoded local changes not yet handed out by [`ChatDoc::take_local_changes`].
    unsaved_local: Vec<u8>,
    /// Received changes that passed the authorship check and wait (in Automerge's queue) for
    /// their dependencies; at most [`MAX_WAITING_CHANGES`].
    waiting: HashMap<ChangeHash, authorship::ChangeMeta>,
    /// How many waiting changes have been applied since the document was loaded: a count that
    /// moves shows that what waits is being completed (see [`ChatDoc::drop_waiting`]).
    released_from_waiting: u64,
    /// Changes this replica does not keep: a device's that equivocated, from the sequence
    /// number it used twice (see [`crate::equivocation`]).
    bans: crate::equivocation::Bans,
}

/// A sync message from another replica, checked before Automerge decodes it (Automerge trusts
/// what it decodes; see [`crate::wire_check`]).
pub(crate) fn decode_sync_message(message: &[u8]) -> Result<automerge::sync::Message, ModelError> {
    crate::wire_check::check_sync_message(message, &crate::wire_check::WireLimits::default())
        .map_err(|e| ModelError::Invalid(format!("refused sync message: {e}")))?;
    automerge::sync::Message::decode(message)
        .map_err(|e| ModelError::Invalid(format!("bad sync message: {e}")))
}

/// Saves the changes a document has applied. Automerge's plain `save` appends the changes
/// still waiting in its queue for their dependencies; those are not part of the chat (nothing
/// shows them, nobody vouched for what they wait for), and a store that kept them would bring
/// them back at every load, beyond the per-device bound on what waits and out of reach of its
/// expiry.
fn save_applied(doc: &mut AutoCommit) -> Vec<u8> {
    doc.save_with_options(automerge::SaveOptions {
        deflate: true,
        retain_orphans: false,
    })
}

/// Received changes by one device that may wait for their dependencies at once, per chat: while
/// some of its changes wait, a sync message that could take their count over this is refused
/// unless it brings a dependency they wait for (other devices' changes are not held up). Honest devices send dependencies first, but Automerge's sync protocol leaves a
/// change out when the other side's Bloom filter wrongly says it has it (about 1 in 100), and
/// then everything after it in the batch waits until the next round brings it: that round must
/// get through. One message can still leave more waiting; its size is bounded by the sync
/// message limit, and the total by [`MAX_WAITING_CHANGES_AT_ALL`].
pub const MAX_WAITING_CHANGES: usize = 10_000;
/// Waiting changes per chat at most, whatever a message brings.
pub const MAX_WAITING_CHANGES_AT_ALL: usize = 100_000;

impl std::fmt::Debug for ChatDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatDoc")
            .field("id", &self.id)
            .field("messages", &self.order.len())
            .finish()
    }
}

impl ChatDoc {
    /// Creates a new chat. The genesis change creates every shared container.
    pub fn create(
        id: ChatId,
        title: &str,
        device: &Device,
        now_ms: i64,
    ) -> Result<Self, ModelError> {
        check_text("title", title, MAX_TITLE_BYTES, false)?;
        let mut doc = AutoCommit::new().with_actor(device.actor.clone());
        doc.put(automerge::ROOT, s::SCHEMA, s::SCHEMA_VERSION)?;
        doc.put(automerge::ROOT, s::ID, id.as_str())?;
        doc.put(automerge::ROOT, s::TITLE, title)?;
        doc.put(automerge::ROOT, s::CREATED_AT, now_ms)?;
        doc.put(automerge::ROOT, s::CREATED_BY, device.id.as_str())?;
        EntryMaps::create(&mut doc, s::SCHEMA_VERSION)?;
        doc.put_object(automerge::ROOT, s::READ, ObjType::Map)?;
        doc.commit_with(CommitOptions::default().with_time(change_time(now_ms)));
        Self::from_doc(doc, device)
    }

    /// Loads a chat from saved bytes: a full save, optionally followed by incremental saves
    /// (loading them in one call is far faster than applying them one by one).
    pub fn load(bytes: &[u8], device: &Device) -> Result<Self, ModelError> {
        let doc = AutoCommit::load(bytes).map_err(|e| ModelError::Corrupt(e.to_string()))?;
        Self::from_doc(doc, device)
    }

    /// [`load`](Self::load) for bytes from another device (a whole chat sent by a peer): they
    /// must pass [`crate::wire_check::check_chunks`] before Automerge parses them. Bytes from
    /// this device's own store can use `load`.
    ///
    /// Every change must be proven ([`authorship::check_batch`]) and allowed (each device
    /// writes only its own messages, reactions and read marker). Returns the chat and the
    /// attested newest change of each actor in it.
    pub fn load_untrusted(
        bytes: &[u8],
        device: &Device,
        proof: &Provenance<'_>,
    ) -> Result<(Self, Vec<ActorTop>), ModelError> {
        crate::wire_check::check_chunks(bytes, &crate::wire_check::WireLimits::default())
            .map_err(|e| ModelError::Corrupt(format!("refused document: {e}")))?;
        let mut doc = AutoCommit::load(bytes).map_err(|e| ModelError::Corrupt(e.to_string()))?;
        if !doc.get_missing_deps(&[]).is_empty() {
            // Honest devices send only what they have applied (`Snapshot::save`).
            return Err(ModelError::Corrupt(
                "refused document: it holds changes without their dependencies".into(),
            ));
        }
        let all = authorship::metas_of(doc.document(), &[]);
        let tops = authorship::check_batch(&all, &[], proof)?;
        let mut chat = Self::from_doc(doc, device)?;
        let changes = chat.doc.get_changes(&[]);
        let writes = MessageWrites::collect(&changes, &chat.entry_keys, &chat.read, &chat.maps);
        if let Some(why) = writes.violation {
            return Err(ModelError::Forbidden(format!("refused document: {why}")));
        }
        Ok((chat, tops))
    }

    /// Wraps an Automerge document, checking its shape and building the index.
    pub fn from_doc(mut doc: AutoCommit, device: &Device) -> Result<Self, ModelError> {
        doc.set_actor(device.actor.clone());
        Self::wrap(doc)
    }

    /// [`from_doc`](Self::from_doc) for a document that already writes under its actor.
    fn wrap(doc: AutoCommit) -> Result<Self, ModelError> {
        let schema = match get_int(&doc, &automerge::ROOT, s::SCHEMA) {
            Some(v) if (1..=s::SCHEMA_VERSION).contains(&v) => v,
            Some(v) if v > s::SCHEMA_VERSION => {
                return Err(ModelError::NewerSchema(format!(
                    "document schema {v} is newer than this version's ({})",
                    s::SCHEMA_VERSION
                )));
            }
            Some(v) => {
                return Err(ModelError::Corrupt(format!(
                    "document schema {v} is not supported"
                )));
            }
            None => return Err(ModelError::Corrupt("no schema version".into())),
        };
        let id = get_str(&doc, &automerge::ROOT, s::ID)
            .and_then(|v| ChatId::new(v).ok())
            .ok_or_else(|| ModelError::Corrupt("missing or invalid chat id".into()))?;
        let entries = EntryMaps::read(&doc, schema)?;
        let entry_keys = entries.keys();
        let read = get_map(&doc, &automerge::ROOT, s::READ)
            .ok_or_else(|| ModelError::Corrupt("missing read map".into()))?;
        let mut chat = ChatDoc {
            doc,
            id,
            schema,
            entries,
            entry_keys,
            read,
            order: BTreeSet::new(),
            keys: HashMap::new(),
            maps: MessageMaps::default(),
            max_clock: Clock::ZERO,
            unsaved_local: Vec::new(),
            waiting: HashMap::new(),
            released_from_waiting: 0,
            bans: Default::default(),
        };
        chat.reindex_all();
        Ok(chat)
    }

    pub fn id(&self) -> &ChatId {
        &self.id
    }

    pub fn title(&self) -> String {
        get_str(&self.doc, &automerge::ROOT, s::TITLE).unwrap_or_default()
    }

    pub fn info(&self) -> ChatInfo {
        ChatInfo {
            id: self.id.clone(),
            title: self.title(),
            created_at: get_int(&self.doc, &automerge::ROOT, s::CREATED_AT).unwrap_or(0),
            created_by: get_str(&self.doc, &automerge::ROOT, s::CREATED_BY)
                .and_then(|v| DeviceId::new(v).ok())
                .unwrap_or_else(|| DeviceId::new("unknown").expect("literal id is valid")),
            messages: self.order.len(),
        }
    }

    /// Number of messages, deleted ones included (they keep their place).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The message with this id.
    pub fn message(&self, id: &MessageId) -> Option<Message> {
        let (obj, maker) = self.located(id)?;
        read::read_message(&self.doc, id, &obj, maker)
    }

    /// The messages of `keys`, in their order: in one pass over the document when they are
    /// many and a large share of the chat, else one by one (see `chat/read.rs`).
    fn read_keys<'k>(&self, keys: impl Iterator<Item = &'k OrderKey>) -> Vec<Message> {
        let wanted: Vec<(&MessageId, ObjId, &DeviceId)> = keys
            .filter_map(|k| {
                let (obj, maker) = self.located(&k.id)?;
                Some((&k.id, obj, maker))
            })
            .collect();
        if wanted.len() >= read::ONE_PASS_FROM && wanted.len() * 4 >= self.order.len() {
            return read::read_messages(&self.doc, &wanted);
        }
        wanted
            .into_iter()
            .filter_map(|(id, obj, maker)| read::read_message(&self.doc, id, &obj, maker))
            .collect()
    }

    /// Ids of messages whose id starts with `prefix`, at most `limit` of them; just the one
    /// when `prefix` is itself a message's id.
    pub fn find_messages(&self, prefix: &str, limit: usize) -> Vec<MessageId> {
        if limit == 0 {
            return Vec::new();
        }
        // An exact id wins over longer ids it is a prefix of.
        if let Ok(id) = MessageId::new(prefix)
            && self.keys.contains_key(&id)
        {
            return vec![id];
        }
        self.keys
            .keys()
            .filter(|id| id.as_str().starts_with(prefix))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The last `limit` messages in display order, oldest first.
    pub fn last(&self, limit: usize) -> Vec<Message> {
        self.page_before(None, limit)
    }

    /// Up to `limit` messages that come just before `before` (or the end) in display order,
    /// oldest first.
    pub fn page_before(&self, before: Option<&MessageId>, limit: usize) -> Vec<Message> {
        let keys: Vec<&OrderKey> = match before.and_then(|id| self.order_key(id)) {
            Some(bound) => self.order.range(..bound).rev().take(limit).collect(),
            None if before.is_some() => Vec::new(),
            None => self.order.iter().rev().take(limit).collect(),
        };
        self.read_keys(keys.into_iter().rev())
    }

    /// Up to `limit` messages that come just after `after` in display order, oldest first.
    pub fn page_after(&self, after: &MessageId, limit: usize) -> Vec<Message> {
        let Some(bound) = self.order_key(after) else {
            return Vec::new();
        };
        self.read_keys(self.order.range(bound..).skip(1).take(limit))
    }

    /// Every message in display order.
    pub fn messages(&self) -> impl Iterator<Item = Message> + '_ {
        self.order.iter().filter_map(|k| self.message(&k.id))
    }

    /// Ids of every message in display order.
    pub fn message_ids(&self) -> impl Iterator<Item = &MessageId> + '_ {
        self.order.iter().map(|k| &k.id)
    }

    /// Posts a new message. `id` must be fresh; `reply_to`, if given, must be in the chat.
    pub fn post(
        &mut self,
        device: &Device,
        id: MessageId,
        text: &str,
        reply_to: Option<&MessageId>,
        now_ms: i64,
    ) -> Result<Message, ModelError> {
        self.post_with(device, id, text, reply_to, &[], now_ms)
    }

    /// Posts a new message with attachments; the text may then be empty. The caller has the
    /// attachments' bytes (the document only describes them: see [`crate::attachment`]).
    pub fn post_with(
        &mut self,
        device: &Device,
        id: MessageId,
        text: &str,
        reply_to: Option<&MessageId>,
        attachments: &[Attachment],
        now_ms: i64,
    ) -> Result<Message, ModelError> {
        check_text(
            "message text",
            text,
            MAX_TEXT_BYTES,
            !attachments.is_empty(),
        )?;
        attachment::check_list(attachments)?;
        if self.keys.contains_key(&id) {
            return Err(ModelError::Invalid(format!("message {id} already exists")));
        }
        if let Some(parent) = reply_to
            && !self.keys.contains_key(parent)
        {
            return Err(ModelError::MessageNotFound(parent.clone()));
        }
        let clock = Clock::tick(self.max_clock, now_ms).ok_or_else(|| {
            ModelError::Invalid(
                "this chat's clock has run out: a device stamped a message with a clock \
                 thousands of years ahead"
                    .into(),
            )
        })?;
        let entry_map = self.entries.map_for(id.as_str()).clone();
        let header = Header {
            author: device.id.clone(),
            author_name: device.name.clone(),
            ts: now_ms,
            clock,
            reply_to: reply_to.cloned(),
        };
        let mut created = None;
        self.write(now_ms, None, |doc| {
            let obj = doc.put_object(&entry_map, id.as_str(), ObjType::Map)?;
            doc.put(&obj, s::HEADER, header.encode())?;
            doc.put(&obj, s::TEXT, text)?;
            if !attachments.is_empty() {
                doc.put(&obj, s::ATTACHMENTS, attachment::encode(attachments))?;
            }
            created = Some(obj);
            Ok(())
        })?;
        // The new message's map and order key are known: index it without reading it back.
        // (The write above made the map, or failed and returned.)
        if let Some(obj) = created {
            let key = OrderKey {
                clock,
                author: device.id.clone(),
                id: id.clone(),
            };
            if let Some(map) = self.maps.remember(&obj, &id) {
                self.insert_key(key, map);
            }
        }
        Ok(Message {
            id,
            author: device.id.clone(),
            author_name: device.name.clone(),
            ts: now_ms,
            clock,
            text: text.to_string(),
            reply_to: reply_to.cloned(),
            edited_at: None,
            deleted: false,
            reactions: BTreeMap::new(),
            attachments: attachments.to_vec(),
        })
    }

    /// Replaces the text of one of this device's messages.
    pub fn edit(
        &mut self,
        device: &Device,
        id: &MessageId,
        text: &str,
        now_ms: i64,
    ) -> Result<Message, ModelError> {
        check_text("message text", text, MAX_TEXT_BYTES, false)?;
        let (msg, obj) = self.own_live_message(device, id, "edit")?;
        if msg.text == text {
            return Ok(msg);
        }
        self.write(now_ms, Some(id), |doc| {
            doc.put(&obj, s::TEXT, text)?;
            doc.put(&obj, s::EDITED_AT, now_ms)
        })?;
        self.require_message(id)
    }

    /// Deletes one of this device's messages: its text and reactions go, its place stays.
    /// Deleting twice is not an error.
    pub fn delete(
        &mut self,
        device: &Device,
        id: &MessageId,
        now_ms: i64,
    ) -> Result<Message, ModelError> {
        let msg = self.require_message(id)?;
        if msg.deleted {
            return Ok(msg);
        }
        let (_, obj) = self.own_live_message(device, id, "delete")?;
        let reacted: Vec<String> = self
            .doc
            .keys(&obj)
            .filter(|k| k.starts_with(s::REACTION_PREFIX))
            .collect();
        let has_attachments = !msg.attachments.is_empty();
        self.write(now_ms, Some(id), |doc| {
            doc.put(&obj, s::DELETED, true)?;
            doc.put(&obj, s::TEXT, "")?;
            if has_attachments {
                doc.delete(&obj, s::ATTACHMENTS)?;
            }
            for key in &reacted {
                doc.delete(&obj, key.as_str())?;
            }
            Ok(())
        })?;
        self.require_message(id)
    }

    /// Sets (`Some`) or clears (`None`) this device's reaction to a message.
    pub fn react(
        &mut self,
        device: &Device,
        id: &MessageId,
        reaction: Option<&str>,
        now_ms: i64,
    ) -> Result<Message, ModelError> {
        if let Some(r) = reaction {
            check_reaction(r)?;
        }
        let msg = self.require_message(id)?;
        if msg.deleted {
            return Err(ModelError::Deleted(id.clone()));
        }
        if msg.reactions.get(&device.id).map(String::as_str) == reaction {
            return Ok(msg);
        }
        let obj = self.message_obj(id)?;
        let key = s::reaction_key(device.id.as_str());
        self.write(now_ms, Some(id), |doc| match reaction {
            Some(r) => doc.put(&obj, key.as_str(), r),
            None => doc.delete(&obj, key.as_str()),
        })?;
        self.require_message(id)
    }

    /// Moves this device's read marker forward to `id`. Markers never move backwards: marking
    /// an older message read changes nothing. Returns whether the marker moved.
    pub fn mark_read(
        &mut self,
        device: &Device,
        id: &MessageId,
        now_ms: i64,
    ) -> Result<bool, ModelError> {
        let new_key = self
            .order_key(id)
            .ok_or_else(|| ModelError::MessageNotFound(id.clone()))?;
        if let Some(current) = self.read_marker(&device.id)
            && let Some(current_key) = self.order_key(&current)
            && current_key >= new_key
        {
            return Ok(false);
        }
        let read = self.read.clone();
        self.write(now_ms, None, |doc| {
            doc.put(&read, device.id.as_str(), id.as_str())
        })?;
        Ok(true)
    }

    /// The last message this device has read, if any.
    pub fn read_marker(&self, device: &DeviceId) -> Option<MessageId> {
        get_str(&self.doc, &self.read, device.as_str()).and_then(|v| MessageId::new(v).ok())
    }

    /// Every device's read marker.
    pub fn read_markers(&self) -> BTreeMap<DeviceId, MessageId> {
        self.doc
            .map_range(&self.read, ..)
            .filter_map(|item| {
                let device = DeviceId::new(item.key.as_ref()).ok()?;
                let msg = match item.value {
                    automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(v)) => {
                        MessageId::new(v).ok()?
                    }
                    _ => return None,
                };
                Some((device, msg))
            })
            .collect()
    }

    /// Messages after `device`'s read marker that other devices wrote and that are not deleted.
    pub fn unread_count(&self, device: &DeviceId) -> usize {
        let start = self
            .read_marker(device)
            .and_then(|m| self.order_key(&m).cloned());
        let range: Box<dyn Iterator<Item = &OrderKey>> = match &start {
            Some(k) => Box::new(self.order.range(k..).skip(1)),
            None => Box::new(self.order.iter()),
        };
        range
            .filter(|k| &k.author != device)
            .filter(|k| self.message(&k.id).is_some_and(|m| !m.deleted))
            .count()
    }

    /// Renames the chat.
    pub fn set_title(&mut self, title: &str, now_ms: i64) -> Result<(), ModelError> {
        check_text("title", title, MAX_TITLE_BYTES, false)?;
        if self.title() != title {
            self.write(now_ms, None, |doc| {
                doc.put(automerge::ROOT, s::TITLE, title)
            })?;
        }
        Ok(())
    }

    /// Merges another replica of this chat into this one, without checking who wrote its changes
    /// (see [`apply_changes`](Self::apply_changes)). Returns the ids of messages that were added
    /// or changed.
    pub fn merge(&mut self, other: &mut ChatDoc) -> Result<Vec<MessageId>, ModelError> {
        if other.id != self.id {
            return Err(ModelError::Invalid(format!(
                "cannot merge chat {} into chat {}",
                other.id, self.id
            )));
        }
        let before = self.doc.get_heads();
        self.doc.merge(&mut other.doc)?;
        self.check_schema_after(&before)?;
        self.refresh_index_since(&before)
    }

    /// Applies changes from another replica, in one batch, without checking who wrote them:
    /// for changes this device already trusts (its own tools, tests). Bytes from peers go
    /// through [`receive_sync_message`](Self::receive_sync_message). Returns the ids of messages
    /// that were added or changed.
    pub fn apply_changes(
        &mut self,
        changes: Vec<automerge::Change>,
    ) -> Result<Vec<MessageId>, ModelError> {
        let metas: Vec<authorship::ChangeMeta> = changes
            .iter()
            .map(|c| authorship::ChangeMeta {
                hash: c.hash(),
                actor: c.actor_id().clone(),
                seq: c.seq(),
                deps: c.deps().to_vec(),
            })
            .collect();
        let before = self.doc.get_heads();
        self.doc.apply_changes_batch(changes)?;
        self.check_schema_after(&before)?;
        let applied = self.doc.get_changes(&before);
        let touched = self.refresh_index_since(&before)?;
        // Changes left waiting for dependencies are this replica's to vouch for from now on.
        self.track_waiting(metas, &applied);
        Ok(touched)
    }

    /// Whether the change is applied (not merely waiting for its dependencies).
    pub fn has_change(&mut self, hash: &ChangeHash) -> bool {
        self.doc.get_change_by_hash(hash).is_some()
    }

    /// Whether every one of `hashes` is a change applied here.
    pub fn has_all(&mut self, hashes: &[ChangeHash]) -> bool {
        hashes
            .iter()
            .all(|hash| self.doc.get_change_meta_by_hash(hash).is_some())
    }

    /// Drops everything applied since `before` (the index has not been touched yet).
    fn revert_to(&mut self, before: &[ChangeHash]) -> Result<(), ModelError> {
        let actor = self.doc.get_actor().clone();
        self.doc = self.doc.fork_at(before)?.with_actor(actor);
        Ok(())
    }

    /// Refuses what was just merged if it changed the document's identity or layout (a schema
    /// newer than this version's or of another layout, another chat id, containers replaced):
    /// the document goes back to `before`. The buckets in the container are guarded by the
    /// rule that nobody writes to the container after the genesis (`touched.rs`).
    fn check_schema_after(&mut self, before: &[ChangeHash]) -> Result<(), ModelError> {
        let same_layout = |v: i64| {
            (1..=s::SCHEMA_VERSION).contains(&v)
                && crate::layout::is_bucketed(v) == crate::layout::is_bucketed(self.schema)
        };
        let intact = get_int(&self.doc, &automerge::ROOT, s::SCHEMA).is_some_and(same_layout)
            && get_str(&self.doc, &automerge::ROOT, s::ID).as_deref() == Some(self.id.as_str())
            && get_map(&self.doc, &automerge::ROOT, s::MESSAGES).as_ref()
                == Some(self.entries.container())
            && get_map(&self.doc, &automerge::ROOT, s::READ).as_ref() == Some(&self.read);
        if intact {
            return Ok(());
        }
        let schema = get_int(&self.doc, &automerge::ROOT, s::SCHEMA);
        self.revert_to(before)?;
        if let Some(v) = schema.filter(|v| *v > s::SCHEMA_VERSION) {
            return Err(ModelError::NewerSchema(format!(
                "the changes move the chat to schema {v}, newer than this version's ({})",
                s::SCHEMA_VERSION
            )));
        }
        Err(ModelError::Corrupt(
            "the changes would alter the chat's identity or layout (schema, id or containers)"
                .into(),
        ))
    }

    /// One message of Automerge's sync protocol for the replica whose progress `state` tracks,
    /// or `None` when that replica has everything this one has (as far as `state` knows).
    pub fn generate_sync_message(&mut self, state: &mut automerge::sync::State) -> Option<Vec<u8>> {
        use automerge::sync::SyncDoc;
        self.doc
            .sync()
            .generate_sync_message(state)
            .map(|m| m.encode())
    }

    /// Applies a sync message from another replica. Returns the messages it added or changed
    /// (each with what happened to it) and the encoded changes it brought (empty if none), to
    /// persist.
    pub fn receive_sync_message(
        &mut self,
        state: &mut automerge::sync::State,
        message: &[u8],
        proof: &Provenance<'_>,
    ) -> Result<SyncReceived, ModelError> {
        let message = decode_sync_message(message)?;
        let carried = authorship::changes_of_sync_message(&message)?;
        let new = self.unknown_changes(carried);
        self.bans.refuse_banned(&new)?;
        let waiting: Vec<authorship::ChangeMeta> = self.waiting.values().cloned().collect();
        let tops = authorship::check_batch(&new, &waiting, proof)?;
        self.check_room_to_wait(&new)?;
        let before = self.doc.get_heads();
        receive::receive(&mut self.doc, state, message)?;
        self.check_schema_after(&before)?;
        let new_changes = self.doc.get_changes(&before);
        let touched = self.refresh_index_from(&new_changes, &before)?;
        self.track_waiting(new, &new_changes);
        Ok(SyncReceived {
            touched,
            changes: concat_raw(&new_changes),
            tops,
        })
    }

    /// How many received changes wait for their dependencies.
    pub fn waiting_changes(&self) -> usize {
        self.waiting.len()
    }

    /// How many waiting changes have been applied since the document was loaded.
    pub fn released_from_waiting(&self) -> u64 {
        self.released_from_waiting
    }

    /// Whether anything waits in Automerge's queue for its dependencies (including changes a
    /// store kept from before [`save_applied`]).
    pub fn has_waiting_changes(&mut self) -> bool {
        !self.waiting.is_empty() || !self.doc.get_missing_deps(&[]).is_empty()
    }

    /// Drops every change waiting for its dependencies, for when they have waited too long:
    /// the dependencies never came (a device that builds on changes it never sends), and what
    /// waits holds memory and the sender's share of the bound. Honest changes among them come
    /// again in a later sync, once the sync states that counted them are forgotten (the caller
    /// does that). The document is rebuilt from its applied changes, which takes as long as a
    /// load. Returns how many tracked changes were dropped.
    pub fn drop_waiting(&mut self) -> Result<usize, ModelError> {
        let dropped = self.waiting.len();
        if self.doc.get_missing_deps(&[]).is_empty() {
            self.waiting.clear();
            return Ok(dropped);
        }
        let actor = self.doc.get_actor().clone();
        let bytes = save_applied(&mut self.doc);
        let mut doc = AutoCommit::load(&bytes).map_err(|e| ModelError::Corrupt(e.to_string()))?;
        doc.set_actor(actor);
        let mut rebuilt = Self::wrap(doc)?;
        rebuilt.unsaved_local = std::mem::take(&mut self.unsaved_local);
        rebuilt.bans = std::mem::take(&mut self.bans);
        *self = rebuilt;
        Ok(dropped)
    }

    /// Refuses a batch that could leave too many changes waiting for their dependencies. The
    /// limit is per author (the device a change's actor belongs to, the only one that can vouch
    /// for it): a device that floods the chat with changes built on one it never sends fills
    /// its own share only, and every other device's changes still get through. Over the share,
    /// a batch is taken only if it brings a change that waiting ones wait for (the round after
    /// a Bloom filter hid one), and never past [`MAX_WAITING_CHANGES_AT_ALL`] in all.
    fn check_room_to_wait(&mut self, new: &[authorship::ChangeMeta]) -> Result<(), ModelError> {
        if self.waiting.is_empty() || new.is_empty() {
            return Ok(());
        }
        let author = |c: &authorship::ChangeMeta| authorship::device_of_actor(&c.actor);
        let mut adding: HashMap<Option<DeviceId>, usize> = HashMap::new();
        for change in new {
            *adding.entry(author(change)).or_default() += 1;
        }
        // One pass over what waits, counting only the authors this batch brings.
        let mut already: HashMap<&Option<DeviceId>, usize> = HashMap::new();
        for change in self.waiting.values() {
            let who = author(change);
            if let Some((key, _)) = adding.get_key_value(&who) {
                *already.entry(key).or_default() += 1;
            }
        }
        let total = self.waiting.len() + new.len();
        let over_share = already.iter().any(|(who, waiting)| {
            waiting + adding.get(*who).copied().unwrap_or(0) > MAX_WAITING_CHANGES
        });
        if !over_share && total <= MAX_WAITING_CHANGES_AT_ALL {
            return Ok(());
        }
        let missing: std::collections::HashSet<ChangeHash> =
            self.doc.get_missing_deps(&[]).into_iter().collect();
        let brings_missing = new.iter().any(|c| missing.contains(&c.hash));
        if brings_missing && total <= MAX_WAITING_CHANGES_AT_ALL {
            return Ok(());
        }
        Err(ModelError::TooLarge(format!(
            "too many changes waiting for their dependencies (at most {MAX_WAITING_CHANGES} by \
             one device, or more with a message that brings what they wait for; \
             {MAX_WAITING_CHANGES_AT_ALL} in all)"
        )))
    }

    /// The changes of `carried` this replica has neither applied nor queued.
    fn unknown_changes(
        &mut self,
        carried: Vec<authorship::ChangeMeta>,
    ) -> Vec<authorship::ChangeMeta> {
        if carried.is_empty() {
            return carried;
        }
        let hashes: Vec<ChangeHash> = carried.iter().map(|c| c.hash).collect();
        let missing: std::collections::HashSet<ChangeHash> =
            self.doc.get_missing_deps(&hashes).into_iter().collect();
        carried
            .into_iter()
            .filter(|c| missing.contains(&c.hash) && !self.waiting.contains_key(&c.hash))
            .collect()
    }

    /// Remembers which of `new` wait for dependencies after a receive that applied `applied`,
    /// and forgets waiting changes that were applied.
    fn track_waiting(&mut self, new: Vec<authorship::ChangeMeta>, applied: &[Change]) {
        let applied: std::collections::HashSet<ChangeHash> =
            applied.iter().map(|c| c.hash()).collect();
        let before = self.waiting.len();
        self.waiting.retain(|hash, _| !applied.contains(hash));
        self.released_from_waiting += (before - self.waiting.len()) as u64;
        for change in new {
            if !applied.contains(&change.hash) {
                self.waiting.insert(change.hash, change);
            }
        }
    }

    /// The actor this replica writes under.
    pub fn actor(&self) -> &automerge::ActorId {
        self.doc.get_actor()
    }

    /// The newest change this replica wrote under its current actor: sequence number and hash.
    pub fn last_local_change(&mut self) -> Option<(u64, ChangeHash)> {
        self.doc
            .get_last_local_change()
            .map(|c| (c.seq(), c.hash()))
    }

    /// The newest change of `actor` in this document, by a walk over every change's metadata:
    /// for attesting this device's own changes from an earlier run when no attestation was kept.
    pub fn newest_change_of(&mut self, actor: &automerge::ActorId) -> Option<(u64, ChangeHash)> {
        self.doc
            .get_changes_meta(&[])
            .into_iter()
            .filter(|m| m.actor.as_ref() == actor)
            .max_by_key(|m| m.seq)
            .map(|m| (m.seq, m.hash))
    }

    /// The newest change `device` wrote here, under any of its actors: actor, sequence number
    /// and hash. Every change a replica writes depends on everything it held, its own earlier
    /// changes included, so this one change reaches all of the device's changes in the
    /// document (what one attestation over it vouches for, see [`authorship`]). Newest is the
    /// one with the highest first operation counter (a change's counters start above its
    /// dependencies'). A walk over every change's metadata.
    pub fn newest_change_by(
        &mut self,
        device: &DeviceId,
    ) -> Option<(automerge::ActorId, u64, ChangeHash)> {
        self.doc
            .get_changes_meta(&[])
            .into_iter()
            .filter(|m| authorship::device_of_actor(&m.actor).as_ref() == Some(device))
            .max_by_key(|m| (m.start_op, m.max_op, m.seq))
            .map(|m| (m.actor.into_owned(), m.seq, m.hash))
    }

    /// The actors that wrote in this document.
    pub fn actors(&mut self) -> Vec<automerge::ActorId> {
        let mut actors: Vec<automerge::ActorId> = self
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| m.actor.into_owned())
            .collect();
        actors.sort();
        actors.dedup();
        actors
    }

    /// Current heads of the document.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// A copy of the document as it is now, to save without holding up the chat (saving a
    /// large chat takes far longer than copying it).
    pub fn snapshot(&mut self) -> Snapshot {
        Snapshot(self.doc.fork())
    }

    /// A copy of the document as it was at `heads` (which must be changes it has).
    pub fn snapshot_at(&mut self, heads: &[ChangeHash]) -> Result<Snapshot, ModelError> {
        Ok(Snapshot(self.doc.fork_at(heads)?))
    }

    /// The full document, compacted, without changes still waiting for their dependencies
    /// (see [`save_applied`]). Resets the incremental-save point.
    pub fn save(&mut self) -> Vec<u8> {
        save_applied(&mut self.doc)
    }

    /// Changes since the last [`save`](Self::save) or `save_incremental`, in a form that can be
    /// appended to a saved document and loaded with it in one call. Its cost grows with the
    /// document; to persist one local operation, use [`last_local_change`](Self::last_local_change).
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.doc.save_incremental()
    }

    /// The encoded local changes made since the last call, in a form that can be appended to
    /// a saved document and loaded with it in one call; empty when nothing changed. Cheap at any
    /// document size: this is how a caller persists each local operation.
    pub fn take_local_changes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.unsaved_local)
    }

    /// The underlying Automerge document, for reading changes out of it (`get_changes`).
    /// Changes written through it bypass the model's rules and its index (until a reload).
    pub fn automerge_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// Runs `ops` as one change: committed (and indexed) if they all succeed, rolled back
    /// otherwise, so that a failed operation never leaves half its writes behind.
    fn write(
        &mut self,
        now_ms: i64,
        touched: Option<&MessageId>,
        ops: impl FnOnce(&mut AutoCommit) -> Result<(), automerge::AutomergeError>,
    ) -> Result<(), ModelError> {
        write_change(&mut self.doc, &mut self.unsaved_local, now_ms, ops)?;
        if let Some(id) = touched {
            self.reindex_message(id);
        }
        Ok(())
    }

    fn require_message(&self, id: &MessageId) -> Result<Message, ModelError> {
        self.message(id)
            .ok_or_else(|| ModelError::MessageNotFound(id.clone()))
    }

    fn message_obj(&self, id: &MessageId) -> Result<ObjId, ModelError> {
        get_map(&self.doc, self.entries.map_for(id.as_str()), id.as_str())
            .ok_or_else(|| ModelError::MessageNotFound(id.clone()))
    }

    /// A message that `device` wrote and that is not deleted, with its object id.
    fn own_live_message(
        &self,
        device: &Device,
        id: &MessageId,
        what: &str,
    ) -> Result<(Message, ObjId), ModelError> {
        let msg = self.require_message(id)?;
        if msg.author != device.id {
            return Err(ModelError::Forbidden(format!(
                "only the device that wrote a message can {what} it"
            )));
        }
        if msg.deleted {
            return Err(ModelError::Deleted(id.clone()));
        }
        Ok((msg, self.message_obj(id)?))
    }

    /// Builds the index from the whole document, in one pass over it: looking each message's
    /// header up by key would seek through the document once per message, which cost as much as
    /// Automerge's own load.
    fn reindex_all(&mut self) {
        self.order.clear();
        self.keys.clear();
        self.maps.clear();
        self.max_clock = Clock::ZERO;
        let entry_maps: HashMap<ObjId, Option<u8>> = self
            .entries
            .maps()
            .map(|(obj, bucket)| (obj.clone(), bucket))
            .collect();
        let mut entries: Vec<(MessageId, ObjId)> = Vec::new();
        let mut facts: HashMap<ObjId, OrderFacts> = HashMap::new();
        // The items of one object come one after the other under one shared id: each object is
        // looked up among the entry maps once, not once per item.
        let mut current: Option<(std::sync::Arc<ObjId>, Option<Option<u8>>)> = None;
        for automerge::iter::DocObjItem { obj, item } in self.doc.iter() {
            let automerge::iter::DocItem::Map(item) = item else {
                continue;
            };
            let entry_map = match &current {
                Some((seen, bucket)) if std::sync::Arc::ptr_eq(seen, &obj) => *bucket,
                _ => {
                    let bucket = entry_maps.get(&*obj).copied();
                    current = Some((obj.clone(), bucket));
                    bucket
                }
            };
            if let Some(bucket) = entry_map {
                // An entry outside its id's bucket is no message (no replica writes one).
                if matches!(item.value, automerge::ValueRef::Object(ObjType::Map))
                    && bucket.is_none_or(|b| crate::layout::bucket_of(&item.key) == b)
                    && let Ok(id) = MessageId::new(item.key.as_ref())
                {
                    entries.push((id, item.id()));
                }
                continue;
            }
            let automerge::ValueRef::Scalar(value) = &item.value else {
                continue;
            };
            if OrderFacts::FIELDS.contains(&item.key.as_ref()) {
                let facts = facts.entry((*obj).clone()).or_default();
                facts.set(&item.key, value.into());
            }
        }
        for (id, obj) in entries {
            let Some(map) = self.maps.remember(&obj, &id) else {
                continue;
            };
            if let Some(facts) = facts.get(&obj) {
                self.index_with(id, map, facts);
            }
        }
    }

    /// Brings the index up to date with everything applied since `before`. Returns the ids of
    /// the messages that were added or changed.
    fn refresh_index_since(&mut self, before: &[ChangeHash]) -> Result<Vec<MessageId>, ModelError> {
        if self.doc.get_heads() == before {
            return Ok(Vec::new());
        }
        let changes = self.doc.get_changes(before);
        Ok(self
            .refresh_index_from(&changes, before)?
            .into_iter()
            .map(|t| t.id)
            .collect())
    }

    /// Brings the index up to date with `changes`, just applied on top of `before`, and says
    /// what they did to each message. Re-reads only the messages the changes wrote to, found by
    /// walking their operations: the cost follows the size of the changes, not of the chat.
    /// Messages that are not in the index afterwards (malformed ones) are not reported.
    ///
    /// Changes that write where their device may not (another device's message, reaction or
    /// read marker) are refused: the document goes back to `before` and nothing is reported.
    fn refresh_index_from(
        &mut self,
        changes: &[Change],
        before: &[ChangeHash],
    ) -> Result<Vec<Touched>, ModelError> {
        let writes = MessageWrites::collect(changes, &self.entry_keys, &self.read, &self.maps);
        // A batch that writes to many of the chat's messages (a catch-up) is read in one pass
        // over the document, not by looking each message up.
        let whole = writes.len() >= REINDEX_WHOLE_FROM && writes.len() * 4 >= self.order.len();
        if let Some(why) = writes
            .violation
            .clone()
            .or_else(|| self.replaced_entry(&writes, whole))
        {
            self.revert_to(before)?;
            return Err(ModelError::Forbidden(format!("refused changes: {why}")));
        }
        let was_indexed: Vec<bool> = writes
            .iter()
            .map(|(id, _)| self.keys.contains_key(id))
            .collect();
        if whole {
            self.reindex_all();
        }
        let mut touched = Vec::new();
        for ((id, places), was_indexed) in writes.into_iter().zip(was_indexed) {
            let object = match whole {
                true => self.located(&id).map(|(obj, _)| obj),
                false => self.reindex_message(&id),
            };
            if !self.keys.contains_key(&id) {
                continue;
            }
            let kind = if was_indexed {
                self.kind_of_changes(&id, object.as_ref(), &places, before)
            } else {
                Some(TouchKind::Created)
            };
            if let Some(kind) = kind {
                touched.push(Touched { id, kind });
            }
        }
        Ok(touched)
    }

    /// A write that replaced or removed the entry of a message another device wrote, if any:
    /// only a message's author may touch its entry once it exists.
    ///
    /// What held an entry before the batch is read off the document as it is now, not as it was
    /// at `before` (a read at past heads costs far more): every value then either is still there,
    /// or was replaced by one of the batch's writes, which names it. That can also name a value
    /// already replaced before the batch (a writer that had not seen the newer one); its owner
    /// counts too, and an honest device's write only ever names its own values.
    /// `whole`: read every entry in one pass rather than each written one by itself.
    fn replaced_entry(&self, writes: &MessageWrites, whole: bool) -> Option<String> {
        let entries_now = whole.then(|| self.entry_values(writes));
        for (id, places) in writes.iter() {
            for place in places.iter().filter(|p| p.place == Place::Entry) {
                let now = match &entries_now {
                    Some(entries) => entries.get(id.as_str()).cloned().unwrap_or_default(),
                    None => value_ids(
                        &self.doc,
                        self.entries.map_for(id.as_str()),
                        id.as_str(),
                        None,
                    ),
                };
                let existing = now
                    .iter()
                    .chain(&place.replaced)
                    .filter(|op| !place.ops.contains(op));
                for old in existing {
                    let owner = old.device();
                    if let Some(writer) = place.ops.iter().find(|op| op.device() != owner) {
                        return Some(format!(
                            "device {} replaced message {id}, which device {} wrote",
                            writer.device().map(|d| d.to_string()).unwrap_or_default(),
                            owner.map(|d| d.to_string()).unwrap_or_default(),
                        ));
                    }
                }
            }
        }
        None
    }

    /// The values now at the entries `writes` wrote to, by message id, read in one pass over
    /// the maps of entries.
    fn entry_values(&self, writes: &MessageWrites) -> HashMap<String, Vec<OpKey>> {
        let written: std::collections::HashSet<&str> = writes
            .iter()
            .filter(|(_, places)| places.iter().any(|p| p.place == Place::Entry))
            .map(|(id, _)| id.as_str())
            .collect();
        let mut values = HashMap::new();
        for (map, _) in self.entries.maps() {
            for item in self.doc.map_range(map, ..) {
                if !written.contains(item.key.as_ref()) {
                    continue;
                }
                let ids = match item.conflict {
                    true => value_ids(&self.doc, map, &item.key, None),
                    false => OpKey::of(&item.id()).into_iter().collect(),
                };
                values.insert(item.key.into_owned(), ids);
            }
        }
        values
    }

    /// What writes to an indexed message changed: the most significant kind among the places
    /// whose values they changed, or `None` if every write arrived already overwritten.
    /// `object` is the message's map now.
    fn kind_of_changes(
        &self,
        id: &MessageId,
        object: Option<&ObjId>,
        places: &[PlaceWrites],
        before: &[ChangeHash],
    ) -> Option<TouchKind> {
        places
            .iter()
            .filter(|writes| self.changed_values(id, object, writes, before))
            .map(|writes| writes.kind)
            .reduce(TouchKind::most_significant)
    }

    /// Whether `writes` changed the values at their place: one of them is among the values now,
    /// or (for a deletion, or a write that arrived overwritten, which leaves no value of its own)
    /// the values differ from those at `before`. Writes to a map that no longer holds the
    /// message change nothing it shows.
    fn changed_values(
        &self,
        id: &MessageId,
        object: Option<&ObjId>,
        writes: &PlaceWrites,
        before: &[ChangeHash],
    ) -> bool {
        let (obj, key) = match &writes.place {
            Place::Entry => (self.entries.map_for(id.as_str()), id.as_str()),
            Place::Field {
                object: written,
                field,
            } => match object {
                Some(current) if OpKey::of(current).as_ref() == Some(written) => {
                    (current, field.as_str())
                }
                _ => return false,
            },
        };
        let now = value_ids(&self.doc, obj, key, None);
        if now.iter().any(|op| writes.ops.contains(op)) {
            return true;
        }
        now != value_ids(&self.doc, obj, key, Some(before))
    }

    /// Re-reads one message into the index. Returns the map that holds the message now, if any.
    fn reindex_message(&mut self, id: &MessageId) -> Option<ObjId> {
        if let Some(old) = self.keys.remove(id) {
            self.order.remove(&old.key);
        }
        let obj = get_map(&self.doc, self.entries.map_for(id.as_str()), id.as_str())?;
        let map = self.maps.remember(&obj, id)?;
        self.index_message(id.clone(), &obj, map);
        Some(obj)
    }

    /// The map that holds an indexed message, and the device whose actor made it (the index
    /// holds only messages whose author is that device).
    fn located(&self, id: &MessageId) -> Option<(ObjId, &DeviceId)> {
        let indexed = self.keys.get(id)?;
        Some((self.maps.obj_id(indexed.map), &indexed.key.author))
    }

    fn index_message(&mut self, id: MessageId, obj: &ObjId, map: MapKey) {
        // One pass over the message's fields: a lookup per field seeks through the document
        // each time.
        let mut facts = OrderFacts::default();
        for item in self.doc.map_range(obj, ..) {
            if let automerge::ValueRef::Scalar(value) = &item.value
                && OrderFacts::FIELDS.contains(&item.key.as_ref())
            {
                facts.set(&item.key, value.into());
            }
        }
        self.index_with(id, map, &facts);
    }

    /// Indexes message `id`, whose map is `map`, by what its map says of its place.
    fn index_with(&mut self, id: MessageId, map: MapKey, facts: &OrderFacts) {
        let Some((clock, author)) = facts.clock_and_author() else {
            return;
        };
        // A message names its author, and that must be the device whose actor made its map, or
        // any device could post as another. The index keeps the maps' one copy of its id.
        let author = match self.maps.device_of(map) {
            Some(device) if *device == author => device.clone(),
            _ => return,
        };
        self.insert_key(OrderKey { clock, author, id }, map);
    }

    fn insert_key(&mut self, key: OrderKey, map: MapKey) {
        self.max_clock = self.max_clock.max(key.clock);
        self.order.insert(key.clone());
        self.keys.insert(key.id.clone(), Indexed { key, map });
    }

    /// Where a message stands in the display order.
    fn order_key(&self, id: &MessageId) -> Option<&OrderKey> {
        self.keys.get(id).map(|indexed| &indexed.key)
    }
}

/// Messages a batch of received changes writes to, at least, for the index to be rebuilt in one
/// pass over the whole document rather than message by message (when they are also a quarter
/// of the chat or more).
const REINDEX_WHOLE_FROM: usize = 64;

/// A message in the index: its place in the display order and the map that holds it.
#[derive(Debug)]
struct Indexed {
    key: OrderKey,
    map: MapKey,
}

/// The fields of a message's map that place it in the display order: its header, or, in a
/// message a schema 1 replica wrote, its clock and author fields.
#[derive(Debug, Default)]
struct OrderFacts {
    header: Option<automerge::ScalarValue>,
    clock: Option<automerge::ScalarValue>,
    author: Option<automerge::ScalarValue>,
}

impl OrderFacts {
    const FIELDS: [&str; 3] = [s::HEADER, s::CLOCK, s::AUTHOR];

    fn set(&mut self, field: &str, value: automerge::ScalarValue) {
        let slot = match field {
            s::HEADER => &mut self.header,
            s::CLOCK => &mut self.clock,
            _ => &mut self.author,
        };
        *slot = Some(value);
    }

    /// The message's clock and author; `None` for a malformed message (never indexed). A header
    /// that does not decode is not made up for by the schema 1 fields; one that is no string
    /// counts as no header.
    fn clock_and_author(&self) -> Option<(Clock, DeviceId)> {
        use automerge::ScalarValue as V;
        if let Some(V::Str(header)) = &self.header {
            let h = Header::decode(header)?;
            return Some((h.clock, h.author));
        }
        let clock = match self.clock.as_ref()? {
            V::Int(v) => *v,
            V::Uint(v) => i64::try_from(*v).ok()?,
            _ => return None,
        };
        let V::Str(author) = self.author.as_ref()? else {
            return None;
        };
        Some((
            Clock::from_stored(clock)?,
            DeviceId::new(author.as_str()).ok()?,
        ))
    }
}

/// Ids of the operations whose values `obj` holds at `key`, now or at `heads`, sorted. More
/// than one when concurrent writes conflict.
fn value_ids(doc: &AutoCommit, obj: &ObjId, key: &str, heads: Option<&[ChangeHash]>) -> Vec<OpKey> {
    let values = match heads {
        None => doc.get_all(obj, key),
        Some(heads) => doc.get_all_at(obj, key, heads),
    };
    let mut ids: Vec<OpKey> = values
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, id)| OpKey::of(id))
        .collect();
    ids.sort();
    ids
}

/// The encoded form of `changes`, one after the other, as a saved document's incremental
/// chunks are.
fn concat_raw(changes: &[Change]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(changes.iter().map(|c| c.raw_bytes().len()).sum());
    for change in changes {
        bytes.extend_from_slice(change.raw_bytes());
    }
    bytes
}

fn check_reaction(r: &str) -> Result<(), ModelError> {
    if r.is_empty() || r.len() > MAX_REACTION_BYTES {
        return Err(ModelError::Invalid(format!(
            "a reaction must be 1 to {MAX_REACTION_BYTES} bytes"
        )));
    }
    if r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ModelError::Invalid(
            "a reaction must not contain spaces or control characters".into(),
        ));
    }
    Ok(())
}
