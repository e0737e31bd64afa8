//! What received changes did to each message, read off their operations.
//!
//! Every operation in a change names the object it writes and the key it writes under. An
//! operation on a map of entries (`messages`, or one of its buckets: see [`crate::layout`])
//! writes the entry of the message whose id is the key; one on a message's own map writes one of
//! that message's fields. Walking the operations of a batch
//! therefore finds every message the batch wrote to, at a cost that grows with the batch and not
//! with the chat, and the field names say what kind of change it was.
//!
//! A write is not always a change: an operation can arrive already overwritten (a device clears
//! its reaction while the author, concurrently, deletes the message and with it that reaction).
//! [`ChatDoc`](crate::ChatDoc) checks each written place against the document before reporting
//! it; this module only reads the changes.
//!
//! Automerge 0.12 shows a change's operations only through [`Change::decode`], whose types live
//! in its `legacy` module (public, but hidden from its documentation). Operation and object ids
//! there are a counter and an actor, which is what [`OpKey`] holds.

use std::collections::HashMap;

use automerge::{ActorId, Change, ObjId, ScalarValue, legacy};

use crate::{
    DeviceId, MessageId, authorship::device_of_actor, layout::EntryKeys, layout::bucket_of,
    schema as s,
};

/// What a batch of received changes did to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TouchKind {
    /// The message is new to this replica.
    Created,
    /// Its text changed.
    Edited,
    /// It was deleted.
    Deleted,
    /// A device set, replaced or cleared its reaction.
    Reaction,
    /// Anything else: a field that replicas of this version write only when posting (author,
    /// time, clock, reply), a field this version does not know, or the message's whole entry
    /// replaced.
    Other,
}

impl TouchKind {
    /// The kind a write to `field` of a message stands for. Setting `deleted` is a deletion; any
    /// other write to it (no replica of this version makes one) is not.
    fn of_field(field: &str, action: &legacy::OpType) -> Self {
        match field {
            s::DELETED if matches!(action, legacy::OpType::Put(ScalarValue::Boolean(true))) => {
                TouchKind::Deleted
            }
            s::TEXT | s::EDITED_AT => TouchKind::Edited,
            f if f.starts_with(s::REACTION_PREFIX) => TouchKind::Reaction,
            _ => TouchKind::Other,
        }
    }

    /// Of two things done to one message, the one to report: Created, then Deleted, Edited,
    /// Reaction, Other.
    pub(crate) fn most_significant(self, other: Self) -> Self {
        if other.significance() > self.significance() {
            other
        } else {
            self
        }
    }

    fn significance(self) -> u8 {
        match self {
            TouchKind::Created => 4,
            TouchKind::Deleted => 3,
            TouchKind::Edited => 2,
            TouchKind::Reaction => 1,
            TouchKind::Other => 0,
        }
    }
}

/// A message that received changes added or changed, and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Touched {
    pub id: MessageId,
    pub kind: TouchKind,
}

/// The id of an operation, or of the object it created, as changes carry it: counter and actor.
/// An [`ObjId`] also carries a document-specific actor index; this does not, so that ids read
/// from a change and from the document compare equal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct OpKey {
    pub(crate) counter: u64,
    pub(crate) actor: ActorId,
}

impl OpKey {
    /// The device whose actor made the operation.
    pub(crate) fn device(&self) -> Option<DeviceId> {
        device_of_actor(&self.actor)
    }

    /// The key of `obj`; `None` for the root, which no operation created.
    pub(crate) fn of(obj: &ObjId) -> Option<Self> {
        match obj {
            ObjId::Root => None,
            ObjId::Id(counter, actor, _) => Some(OpKey {
                counter: *counter,
                actor: actor.clone(),
            }),
        }
    }
}

/// Where a write landed in a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// The message's entry in its map of entries (the key is the message id).
    Entry,
    /// A field of the message's own map, `object`.
    Field { object: OpKey, field: String },
}

/// The writes a batch made at one place of one message.
#[derive(Debug)]
pub(crate) struct PlaceWrites {
    pub place: Place,
    /// The most significant kind among the writes.
    pub kind: TouchKind,
    /// Ids of the writing operations.
    pub ops: Vec<OpKey>,
    /// The values the writing operations replace, as their writers saw them (each operation
    /// names the ones it overwrites).
    pub replaced: Vec<OpKey>,
}

/// The writes of a batch of changes, message by message, in the order the messages first
/// appear in the batch.
#[derive(Debug, Default)]
pub(crate) struct MessageWrites {
    messages: Vec<(MessageId, Vec<PlaceWrites>)>,
    position: HashMap<MessageId, usize>,
    /// The first write a device was not allowed to make, if any (see [`check_write`]).
    pub violation: Option<String>,
}

impl MessageWrites {
    /// Reads the writes to messages out of `changes`. `entries` are the maps of message
    /// entries; `message_of_object` traces a message's own map to the message.
    /// `read` is the map of read markers. Writes a device may not make are noted in
    /// [`violation`](Self::violation).
    pub(crate) fn collect(
        changes: &[Change],
        entries: &EntryKeys,
        read: &ObjId,
        message_of_object: &crate::chat::MessageMaps,
    ) -> Self {
        let read = OpKey::of(read);
        let mut writes = MessageWrites::default();
        for change in changes {
            let change = change.decode();
            let writer = device_of_actor(&change.actor_id);
            let counters = change.start_op.get()..;
            let ops = change.start_op.get()..change.start_op.get() + change.operations.len() as u64;
            // The genesis change creates the container of buckets, and the buckets in it.
            let creates_container = entries
                .container
                .as_ref()
                .is_some_and(|c| c.actor == change.actor_id && ops.contains(&c.counter));
            for (mut op, counter) in change.operations.into_iter().zip(counters) {
                if writes.violation.is_none()
                    && let Err(why) = check_write(
                        &op,
                        writer.as_ref(),
                        entries,
                        creates_container,
                        read.as_ref(),
                    )
                {
                    writes.violation = Some(why);
                }
                let replaced = std::mem::replace(&mut op.pred, legacy::SortedVec::new());
                if let Some((id, place, kind)) = locate(op, entries, message_of_object) {
                    let op = OpKey {
                        counter,
                        actor: change.actor_id.clone(),
                    };
                    let replaced = replaced
                        .into_iter()
                        .map(|legacy::OpId(counter, actor)| OpKey { counter, actor });
                    writes.add(id, place, kind, op, replaced);
                }
            }
        }
        writes
    }

    fn add(
        &mut self,
        id: MessageId,
        place: Place,
        kind: TouchKind,
        op: OpKey,
        replaced: impl Iterator<Item = OpKey>,
    ) {
        let index = match self.position.get(&id) {
            Some(&index) => index,
            None => {
                self.position.insert(id.clone(), self.messages.len());
                self.messages.push((id, Vec::new()));
                self.messages.len() - 1
            }
        };
        let places = &mut self.messages[index].1;
        match places.iter_mut().find(|w| w.place == place) {
            Some(w) => {
                w.kind = w.kind.most_significant(kind);
                w.ops.push(op);
                w.replaced.extend(replaced);
            }
            None => places.push(PlaceWrites {
                place,
                kind,
                ops: vec![op],
                replaced: replaced.collect(),
            }),
        }
    }
}

impl MessageWrites {
    /// How many messages the changes wrote to.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// The writes, message by message, without consuming them.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(MessageId, Vec<PlaceWrites>)> {
        self.messages.iter()
    }
}

/// Whether the device that wrote a change (`writer`) may make operation `op`:
/// - an entry of a map of entries may be created by anyone (who may replace one is checked
///   by [`ChatDoc`](crate::ChatDoc), which needs the document as it was before the change),
///   in the bucket of its id;
/// - the container of buckets takes writes only in the change that creates it
///   (`creates_container`);
/// - a read marker belongs to the device it is keyed by;
/// - any other object (a message's own map) belongs to the device that created it, its author;
///   the exception is a reaction key, which belongs to the device it names (its author may
///   clear it too, as deleting a message does).
fn check_write(
    op: &legacy::Op,
    writer: Option<&DeviceId>,
    entries: &EntryKeys,
    creates_container: bool,
    read: Option<&OpKey>,
) -> Result<(), String> {
    let legacy::ObjectId::Id(legacy::OpId(counter, creator)) = &op.obj else {
        return Ok(());
    };
    let Some(writer) = writer else {
        return Err("a change by an actor that names no device".into());
    };
    let object = OpKey {
        counter: *counter,
        actor: creator.clone(),
    };
    let key = match &op.key {
        legacy::Key::Map(key) => key.as_str(),
        legacy::Key::Seq(_) => "",
    };
    if let Some(bucket) = entries.maps.get(&object) {
        return match bucket {
            Some(b) if bucket_of(key) != *b => Err(format!(
                "device {writer} put message {key:?} in a bucket other than its own"
            )),
            _ => Ok(()),
        };
    }
    if entries.bucketed && Some(&object) == entries.container.as_ref() {
        return if creates_container {
            Ok(())
        } else {
            Err(format!(
                "device {writer} rewrote the chat's message buckets"
            ))
        };
    }
    if Some(&object) == read {
        return if key == writer.as_str() {
            Ok(())
        } else {
            Err(format!("device {writer} moved the read marker of {key:?}"))
        };
    }
    if device_of_actor(creator).as_ref() == Some(writer) {
        return Ok(());
    }
    match key.strip_prefix(s::REACTION_PREFIX) {
        Some(reactor) if reactor == writer.as_str() => Ok(()),
        _ => Err(format!(
            "device {writer} wrote {key:?} in a message by another device"
        )),
    }
}

impl IntoIterator for MessageWrites {
    type Item = (MessageId, Vec<PlaceWrites>);
    type IntoIter = std::vec::IntoIter<Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.messages.into_iter()
    }
}

/// The message `op` writes to, where, and what kind of write it is; `None` when it writes
/// anything other than a message (title, read markers, ...) or a message entry under a key that
/// is not a valid message id.
fn locate(
    op: legacy::Op,
    entries: &EntryKeys,
    message_of_object: &crate::chat::MessageMaps,
) -> Option<(MessageId, Place, TouchKind)> {
    let (legacy::ObjectId::Id(legacy::OpId(counter, actor)), legacy::Key::Map(key)) =
        (op.obj, op.key)
    else {
        return None;
    };
    let object = OpKey { counter, actor };
    if entries.maps.contains_key(&object) {
        // For a message this replica already has, a write to its entry replaces (or removes)
        // its whole map.
        let id = MessageId::new(key.as_str()).ok()?;
        return Some((id, Place::Entry, TouchKind::Other));
    }
    let id = message_of_object.message_of(&object)?.clone();
    let kind = TouchKind::of_field(key.as_str(), &op.action);
    let field = key.to_string();
    Some((id, Place::Field { object, field }, kind))
}
