//! Where a chat keeps its messages' entries: one map, or 64 buckets.
//!
//! Automerge 0.12 applies a received operation on a map after a scan of that map's operations,
//! so every message arriving in a chat whose messages share one map costs time in proportion to
//! the chat (`cargo bench -p chatsync-model --bench apply`: 0.3 ms at 1,000 messages, 2 ms at
//! 10,000). Chats of schema 3 spread their messages over [`BUCKETS`] maps instead, by a hash of
//! the message id, so a map holds a 64th of the chat. Every bucket is an object in every chat,
//! paid at every load: 64 keep a received post at 0.1-0.3 ms up to 20,000 messages and add
//! about 0.2 ms to loading a chat of 100 posts (256 gained little more and cost four times as
//! much; docs/benchmarks.md).
//!
//! Every bucket is created in the genesis change, with the container that holds them: a bucket
//! two devices created concurrently would hide one device's entries. After the genesis nobody
//! writes to the container (`touched.rs` refuses it), and an entry in a bucket other than its
//! id's is refused too, so each message has exactly one place to be.
//!
//! Chats of schemas 1 and 2 keep their messages in one map, and stay so: the layout is fixed
//! when a chat is created.

use std::collections::HashMap;

use automerge::{AutoCommit, ObjId, ObjType, ReadDoc, transaction::Transactable};
use sha2::{Digest, Sha256};

use crate::{ModelError, access::get_map, schema as s, touched::OpKey};

/// Buckets of a chat of schema 3 or later.
pub const BUCKETS: usize = 64;

/// The first schema whose messages are spread over buckets.
pub const BUCKETED_SCHEMA: i64 = 3;

/// The bucket of a message id: the top six bits of its SHA-256, so that ids of any form spread
/// evenly.
pub fn bucket_of(id: &str) -> u8 {
    Sha256::digest(id.as_bytes())[0] >> 2
}

/// Every bucket, in order.
fn all_buckets() -> impl Iterator<Item = u8> {
    (0..=u8::MAX).take(BUCKETS)
}

/// The key of bucket `bucket` in the container: two lowercase hex digits.
pub fn bucket_key(bucket: u8) -> String {
    format!("{bucket:02x}")
}

/// The map that holds (or would hold) the entry of message `id` in `doc`, by the document's own
/// schema: for tools and tests that write to a document directly.
pub fn entry_map(doc: &AutoCommit, id: &str) -> Option<ObjId> {
    let container = get_map(doc, &automerge::ROOT, s::MESSAGES)?;
    if !is_bucketed(crate::access::get_int(doc, &automerge::ROOT, s::SCHEMA)?) {
        return Some(container);
    }
    get_map(doc, &container, &bucket_key(bucket_of(id)))
}

/// Every map that holds message entries in `doc`, by the document's own schema: for tools and
/// tests that read a document directly.
pub fn entry_maps(doc: &AutoCommit) -> Vec<ObjId> {
    crate::access::get_int(doc, &automerge::ROOT, s::SCHEMA)
        .and_then(|schema| EntryMaps::read(doc, schema).ok())
        .map(|maps| maps.maps().map(|(obj, _)| obj.clone()).collect())
        .unwrap_or_default()
}

/// Whether documents of `schema` keep their messages in buckets.
pub fn is_bucketed(schema: i64) -> bool {
    schema >= BUCKETED_SCHEMA
}

/// The maps of one document that hold message entries.
#[derive(Clone, Debug)]
pub(crate) struct EntryMaps {
    /// `messages` at the root: the one entry map, or the map of buckets.
    container: ObjId,
    /// The buckets in order, or empty when the container holds the entries itself.
    buckets: Vec<ObjId>,
}

impl EntryMaps {
    /// Creates the container and, for a bucketed schema, every bucket (in the genesis change).
    pub(crate) fn create(
        doc: &mut AutoCommit,
        schema: i64,
    ) -> Result<(), automerge::AutomergeError> {
        let container = doc.put_object(automerge::ROOT, s::MESSAGES, ObjType::Map)?;
        if is_bucketed(schema) {
            for bucket in all_buckets() {
                doc.put_object(&container, bucket_key(bucket), ObjType::Map)?;
            }
        }
        Ok(())
    }

    /// Finds the entry maps of a document of `schema`; every bucket must be there.
    pub(crate) fn read(doc: &AutoCommit, schema: i64) -> Result<Self, ModelError> {
        let container = get_map(doc, &automerge::ROOT, s::MESSAGES)
            .ok_or_else(|| ModelError::Corrupt("missing messages map".into()))?;
        if !is_bucketed(schema) {
            return Ok(EntryMaps {
                container,
                buckets: Vec::new(),
            });
        }
        // One pass over the container: looking each bucket up by key would scan it every time.
        let mut buckets = Vec::with_capacity(BUCKETS);
        for item in doc.map_range(&container, ..) {
            let expected = u8::try_from(buckets.len())
                .ok()
                .map(bucket_key)
                .filter(|key| *key == item.key);
            match (expected, &item.value) {
                (Some(_), automerge::ValueRef::Object(ObjType::Map)) => buckets.push(item.id()),
                _ => {
                    return Err(ModelError::Corrupt(format!(
                        "the messages map holds {:?} where bucket {} should be",
                        item.key,
                        buckets.len()
                    )));
                }
            }
        }
        if buckets.len() != BUCKETS {
            return Err(ModelError::Corrupt(format!(
                "the messages map holds {} of its {BUCKETS} buckets",
                buckets.len()
            )));
        }
        Ok(EntryMaps { container, buckets })
    }

    /// `messages` at the root.
    pub(crate) fn container(&self) -> &ObjId {
        &self.container
    }

    /// The map that holds message `id`'s entry.
    pub(crate) fn map_for(&self, id: &str) -> &ObjId {
        match self.buckets.as_slice() {
            [] => &self.container,
            buckets => &buckets[usize::from(bucket_of(id))],
        }
    }

    /// Every map that holds entries, with its bucket (`None`: any id may be there).
    pub(crate) fn maps(&self) -> impl Iterator<Item = (&ObjId, Option<u8>)> {
        let flat = self.buckets.is_empty().then_some((&self.container, None));
        flat.into_iter().chain(
            self.buckets
                .iter()
                .zip(all_buckets())
                .map(|(obj, b)| (obj, Some(b))),
        )
    }

    /// Their keys, for reading operations off changes.
    pub(crate) fn keys(&self) -> EntryKeys {
        EntryKeys {
            container: OpKey::of(&self.container),
            bucketed: !self.buckets.is_empty(),
            maps: self
                .maps()
                .filter_map(|(obj, bucket)| Some((OpKey::of(obj)?, bucket)))
                .collect(),
        }
    }
}

/// [`EntryMaps`] as changes name objects: what `touched.rs` checks operations against.
#[derive(Clone, Debug, Default)]
pub(crate) struct EntryKeys {
    pub(crate) container: Option<OpKey>,
    /// Whether the container holds buckets (and so takes no writes after the genesis).
    pub(crate) bucketed: bool,
    /// Each entry map, with its bucket (`None`: any id may be there).
    pub(crate) maps: HashMap<OpKey, Option<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_spread_over_every_bucket() {
        let mut counts = [0usize; BUCKETS];
        for n in 0..6_400u32 {
            counts[usize::from(bucket_of(&format!("{n:032x}")))] += 1;
        }
        // 100 each on average; a hash that clumped would leave some far from it.
        assert!(counts.iter().all(|c| (50..=160).contains(c)), "{counts:?}");
    }

    #[test]
    fn bucket_keys_are_two_hex_digits() {
        assert_eq!(bucket_key(0), "00");
        assert_eq!(bucket_key(0x2b), "2b");
        assert_eq!(all_buckets().last(), Some(0x3f));
    }
}
