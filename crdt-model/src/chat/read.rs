//! Reading messages out of the document for display.
//!
//! A message is a map of its own. Automerge's `map_range` over one map sets up a cursor on every
//! column of the document each time it is called; for a page of a hundred messages that cost
//! more than loading the chat had (a restarted device reading each of its chats once spent a
//! third of its time there). A page that covers a large share of the chat is therefore read in
//! one pass over the whole document, which visits every map once and keeps the fields of the
//! messages asked for ([`read_messages`]); a small page of a long chat looks each message up
//! ([`read_message`]). Both read a message's fields with the same [`Fields`], so they agree.

use std::collections::{BTreeMap, HashMap};

use automerge::{AutoCommit, ObjId, ReadDoc, ScalarValueRef as V, ValueRef};

use crate::{
    DeviceId, Message, MessageId,
    access::truncate_utf8,
    attachment::{self, Attachment},
    header::Header,
    limits::{MAX_DEVICE_NAME_BYTES, MAX_TEXT_BYTES},
    schema as s,
};

use super::check_reaction;

/// Pages of at least this many messages that cover at least a quarter of the chat are read in
/// one pass over the document (see the module docs).
pub(super) const ONE_PASS_FROM: usize = 32;

/// Reads one message, or `None` when its required fields are missing or malformed (a replica
/// skips what it cannot show rather than failing the whole chat). `maker` is the device whose
/// actor made the message's map: the only author it may name.
pub(super) fn read_message(
    doc: &AutoCommit,
    id: &MessageId,
    obj: &ObjId,
    maker: &DeviceId,
) -> Option<Message> {
    let mut fields = Fields::default();
    for item in doc.map_range(obj, ..) {
        fields.take(&item.key, &item.value);
    }
    fields.into_message(id, maker)
}

/// Reads the messages `wanted` (each id with its map and the device that made it) in one pass
/// over the document, in the order given; a message that cannot be shown is left out, as
/// [`read_message`] would.
pub(super) fn read_messages(
    doc: &AutoCommit,
    wanted: &[(&MessageId, ObjId, &DeviceId)],
) -> Vec<Message> {
    let mut fields: HashMap<&ObjId, Fields> = wanted
        .iter()
        .map(|(_, obj, _)| (obj, Fields::default()))
        .collect();
    for automerge::iter::DocObjItem { obj, item } in doc.iter() {
        let automerge::iter::DocItem::Map(item) = item else {
            continue;
        };
        if let Some(f) = fields.get_mut(&*obj) {
            f.take(&item.key, &item.value);
        }
    }
    wanted
        .iter()
        .filter_map(|(id, obj, maker)| fields.remove(obj)?.into_message(id, maker))
        .collect()
}

/// What a message's map says, gathered field by field in any order.
#[derive(Default)]
struct Fields {
    author: Option<DeviceId>,
    author_name: Option<String>,
    text: Option<String>,
    reply_to: Option<MessageId>,
    ts: i64,
    clock: Option<crate::Clock>,
    edited_at: Option<i64>,
    deleted: bool,
    /// `Some(None)`: a header this version cannot read.
    header: Option<Option<Header>>,
    /// `Some(None)`: a list this version cannot read.
    attachments: Option<Option<Vec<Attachment>>>,
    reactions: BTreeMap<DeviceId, String>,
}

impl Fields {
    fn take(&mut self, key: &str, value: &ValueRef<'_>) {
        match (key, value) {
            (s::HEADER, ValueRef::Scalar(V::Str(v))) => self.header = Some(Header::decode(v)),
            (s::AUTHOR, ValueRef::Scalar(V::Str(v))) => {
                self.author = DeviceId::new(v.as_ref()).ok()
            }
            (s::AUTHOR_NAME, ValueRef::Scalar(V::Str(v))) => self.author_name = Some(v.to_string()),
            (s::TEXT, ValueRef::Scalar(V::Str(v))) => self.text = Some(v.to_string()),
            (s::REPLY_TO, ValueRef::Scalar(V::Str(v))) => {
                self.reply_to = MessageId::new(v.as_ref()).ok()
            }
            (s::TS, ValueRef::Scalar(V::Int(v))) => self.ts = *v,
            (s::CLOCK, ValueRef::Scalar(V::Int(v))) => self.clock = crate::Clock::from_stored(*v),
            (s::EDITED_AT, ValueRef::Scalar(V::Int(v))) => self.edited_at = Some(*v),
            (s::DELETED, ValueRef::Scalar(V::Boolean(v))) => self.deleted = *v,
            (s::ATTACHMENTS, ValueRef::Scalar(V::Str(v))) => {
                self.attachments = Some(attachment::decode(v))
            }
            (key, ValueRef::Scalar(V::Str(v))) if key.starts_with(s::REACTION_PREFIX) => {
                if let Ok(device) = DeviceId::new(&key[s::REACTION_PREFIX.len()..])
                    && check_reaction(v).is_ok()
                {
                    self.reactions.insert(device, v.to_string());
                }
            }
            _ => {}
        }
    }

    fn into_message(self, id: &MessageId, maker: &DeviceId) -> Option<Message> {
        let Fields {
            mut author,
            mut author_name,
            text,
            mut reply_to,
            mut ts,
            mut clock,
            edited_at,
            deleted,
            header,
            attachments,
            mut reactions,
        } = self;
        match header {
            Some(Some(h)) => {
                author = Some(h.author);
                author_name = Some(h.author_name);
                ts = h.ts;
                clock = Some(h.clock);
                reply_to = h.reply_to;
            }
            // A header this version cannot read: what it says is unknown.
            Some(None) => return None,
            // Written by a schema 1 replica: the fields read above.
            None => {}
        }
        let mut text = if deleted {
            String::new()
        } else {
            text.unwrap_or_default()
        };
        truncate_utf8(&mut text, MAX_TEXT_BYTES);
        let mut author_name = author_name.unwrap_or_default();
        truncate_utf8(&mut author_name, MAX_DEVICE_NAME_BYTES);
        if deleted {
            reactions.clear();
        }
        let attachments = match attachments {
            // A list this version cannot read: the message is not shown, as with its header.
            Some(None) => return None,
            Some(Some(_)) if deleted => Vec::new(),
            Some(Some(list)) => list,
            None => Vec::new(),
        };
        let author = author?;
        if author != *maker {
            return None;
        }
        Some(Message {
            id: id.clone(),
            author,
            author_name,
            ts,
            clock: clock?,
            text,
            reply_to,
            edited_at,
            deleted,
            reactions,
            attachments,
        })
    }
}
