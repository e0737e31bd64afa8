//! Dropping what a ban covers ([`crate::equivocation`]) from a chat, and writing again what
//! this device loses of its own by it.
//!
//! What this device lost is read off the document before and after the drop, place by place,
//! rather than off the dropped changes: the places a device owns are few and known (its own
//! messages' fields, its reaction key in each message, its read marker, and the title when its
//! rename was the one shown), and a value that differs there was written by a dropped change.
//! Reactions to a message that another device has to write again are lost: the message is not
//! there to react to until its author writes it again.

use std::collections::HashSet;

use automerge::{
    ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value,
    transaction::Transactable,
};

use super::ChatDoc;
use crate::{
    Device, ModelError,
    access::{get_map, write_change},
    authorship,
    equivocation::{Bans, Evidence},
    layout::EntryMaps,
    schema as s,
};

/// Writes in one change of what a device writes again at most, and their bytes: far below
/// what every device takes in one change (`wire_check::WireLimits`).
const MAX_RESTORES_PER_CHANGE: usize = 2_000;
const MAX_RESTORE_BYTES_PER_CHANGE: usize = 256 * 1024;

/// What [`ChatDoc::exclude_banned`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Excluded {
    /// Changes dropped.
    pub dropped: usize,
    /// Whether this device wrote again what it lost of its own (one change, under the new
    /// actor).
    pub rewritten: bool,
}

impl ChatDoc {
    /// Takes checked evidence ([`Evidence::check`]). Returns whether it bans more than before;
    /// then [`exclude_banned`](Self::exclude_banned) drops what it bans.
    pub fn ban(&mut self, evidence: Evidence) -> Result<bool, ModelError> {
        self.bans.add(evidence)
    }

    /// What this replica does not keep, with the evidence.
    pub fn bans(&self) -> &Bans {
        &self.bans
    }

    /// Puts back what was banned for `actor` before [`ban`](Self::ban) (`None`: nothing), for
    /// evidence whose changes could not be dropped.
    pub fn unban(&mut self, actor: &ActorId, before: Option<Evidence>) {
        self.bans.undo(actor, before);
    }

    /// Drops every change the bans cover and every change built on one, then writes again, as
    /// one change, what this device had written that the drop took away. When anything was
    /// dropped, the document writes under `fresh_actor` from then on, whoever wrote what was
    /// dropped: this device's dropped changes may still be held elsewhere until the evidence
    /// gets there, and a new change with one of their sequence numbers would be an
    /// equivocation of its own. Changes waiting for their dependencies are dropped too (the
    /// document is rebuilt; see [`drop_waiting`](Self::drop_waiting)).
    pub fn exclude_banned(
        &mut self,
        device: &Device,
        fresh_actor: ActorId,
        now_ms: i64,
    ) -> Result<Excluded, ModelError> {
        if self.bans.is_empty() {
            return Ok(Excluded::default());
        }
        // In the order they were applied: a change comes after its dependencies.
        let changes = self.doc.get_changes(&[]);
        let mut dropped: HashSet<ChangeHash> = HashSet::new();
        for change in &changes {
            if self.bans.bans(change.actor_id(), change.seq())
                || change.deps().iter().any(|d| dropped.contains(d))
            {
                dropped.insert(change.hash());
            }
        }
        if dropped.is_empty() {
            return Ok(Excluded::default());
        }
        // What is kept holds the dependencies of all it holds: it is what its heads reach.
        let mut depended_on: HashSet<ChangeHash> = HashSet::new();
        for change in changes.iter().filter(|c| !dropped.contains(&c.hash())) {
            depended_on.extend(change.deps().iter().copied());
        }
        let heads: Vec<ChangeHash> = changes
            .iter()
            .map(|c| c.hash())
            .filter(|h| !dropped.contains(h) && !depended_on.contains(h))
            .collect();
        if heads.is_empty() {
            return Err(ModelError::Invalid(
                "the chat was created by the device that equivocated, with the change it \
                 signed twice: nothing of it can be kept"
                    .into(),
            ));
        }
        let mut rebuilt = self.doc.fork_at(&heads)?.with_actor(fresh_actor);
        let mut unsaved = Vec::new();
        let lost = own_losses(&self.doc, &rebuilt, self.schema, &device.id);
        let rewritten = !lost.is_empty();
        // In changes of bounded size: every device takes each of them (`wire_check`).
        let mut rest = lost.into_iter().peekable();
        while rest.peek().is_some() {
            let (mut ops, mut bytes) = (0, 0);
            let group: Vec<Restore> = std::iter::from_fn(|| {
                if ops >= MAX_RESTORES_PER_CHANGE || bytes >= MAX_RESTORE_BYTES_PER_CHANGE {
                    return None;
                }
                let restore = rest.next()?;
                ops += 1;
                bytes += restore.size();
                Some(restore)
            })
            .collect();
            write_change(&mut rebuilt, &mut unsaved, now_ms, |doc| {
                group.into_iter().try_for_each(|restore| restore.apply(doc))
            })?;
        }
        let mut chat = Self::wrap(rebuilt)?;
        chat.unsaved_local = unsaved;
        chat.bans = std::mem::take(&mut self.bans);
        *self = chat;
        Ok(Excluded {
            dropped: dropped.len(),
            rewritten,
        })
    }
}

/// One value this device had written that the drop took away.
enum Restore {
    /// Put a value at a key of a map (`path` names the map from the root: empty for the root,
    /// `[messages, bucket, id]` for a message, `[messages, id]` in a chat without buckets).
    Put {
        path: Vec<String>,
        key: String,
        value: ScalarValue,
    },
    /// Delete a key the drop brought back.
    Delete { path: Vec<String>, key: String },
    /// Create a message's map in the map of entries at `path` (its fields follow as `Put`s).
    NewMessage { path: Vec<String>, id: String },
}

impl Restore {
    /// Roughly the bytes it adds to a change.
    fn size(&self) -> usize {
        match self {
            Restore::Put { key, value, .. } => {
                key.len()
                    + 32
                    + match value {
                        ScalarValue::Str(s) => s.len(),
                        ScalarValue::Bytes(b) => b.len(),
                        _ => 8,
                    }
            }
            Restore::Delete { key, .. } => key.len() + 32,
            Restore::NewMessage { id, .. } => id.len() + 32,
        }
    }

    fn apply(self, doc: &mut AutoCommit) -> Result<(), automerge::AutomergeError> {
        let find = |doc: &AutoCommit, path: &[String]| {
            let mut obj = automerge::ROOT;
            for key in path {
                obj = get_map(doc, &obj, key)
                    .ok_or(automerge::AutomergeError::InvalidObjId(key.clone()))?;
            }
            Ok::<ObjId, automerge::AutomergeError>(obj)
        };
        match self {
            Restore::Put { path, key, value } => {
                let obj = find(doc, &path)?;
                doc.put(&obj, key, value)
            }
            Restore::Delete { path, key } => {
                let obj = find(doc, &path)?;
                doc.delete(&obj, key)
            }
            Restore::NewMessage { path, id } => {
                let entries = find(doc, &path)?;
                doc.put_object(&entries, id, ObjType::Map).map(|_| ())
            }
        }
    }
}

/// The values `own` had written in `before` that `after` (the document without the dropped
/// changes) lacks, as writes that bring them back.
fn own_losses(
    before: &AutoCommit,
    after: &AutoCommit,
    schema: i64,
    own: &crate::DeviceId,
) -> Vec<Restore> {
    let is_own = |id: &ObjId| made_by(id, own);
    let mut out = Vec::new();
    // A rename of this device's that was the one shown.
    if let Ok(Some((Value::Scalar(title), id))) = before.get(automerge::ROOT, s::TITLE)
        && is_own(&id)
        && scalar(after, &automerge::ROOT, s::TITLE).as_ref() != Some(title.as_ref())
    {
        out.push(Restore::Put {
            path: vec![],
            key: s::TITLE.into(),
            value: title.into_owned(),
        });
    }
    if let (Some(read_before), Some(read_after)) = (
        get_map(before, &automerge::ROOT, s::READ),
        get_map(after, &automerge::ROOT, s::READ),
    ) && let Some(marker) = scalar(before, &read_before, own.as_str())
        && scalar(after, &read_after, own.as_str()).as_ref() != Some(&marker)
    {
        out.push(Restore::Put {
            path: vec![s::READ.into()],
            key: own.as_str().into(),
            value: marker,
        });
    }
    let (Ok(entries_before), Ok(entries_after)) = (
        EntryMaps::read(before, schema),
        EntryMaps::read(after, schema),
    ) else {
        return out;
    };
    for ((map_before, bucket), (map_after, _)) in entries_before.maps().zip(entries_after.maps()) {
        let mut map_path = vec![s::MESSAGES.to_string()];
        map_path.extend(bucket.map(crate::layout::bucket_key));
        own_losses_in(
            before, after, map_before, map_after, &map_path, own, &mut out,
        );
    }
    out
}

/// [`own_losses`] among the messages of one map of entries (`map_path` from the root).
fn own_losses_in(
    before: &AutoCommit,
    after: &AutoCommit,
    map_before: &ObjId,
    map_after: &ObjId,
    map_path: &[String],
    own: &crate::DeviceId,
    out: &mut Vec<Restore>,
) {
    let is_own = |id: &ObjId| made_by(id, own);
    let own_key = s::reaction_key(own.as_str());
    for item in before.map_range(map_before, ..) {
        let automerge::ValueRef::Object(ObjType::Map) = item.value else {
            continue;
        };
        let id = item.key.to_string();
        let obj_before = item.id();
        let mut path = map_path.to_vec();
        path.push(id.clone());
        let obj_after = get_map(after, map_after, &id);
        if is_own(&obj_before) {
            // This device's message: every field but other devices' reactions is its own.
            let deleted =
                scalar(before, &obj_before, s::DELETED) == Some(ScalarValue::Boolean(true));
            let mine = |key: &str| !key.starts_with(s::REACTION_PREFIX) || key == own_key;
            let obj_after = match obj_after {
                Some(obj) if obj == obj_before => Some(obj),
                // Written again by this device's own earlier rebuild, or never kept.
                _ => {
                    out.push(Restore::NewMessage {
                        path: map_path.to_vec(),
                        id: id.clone(),
                    });
                    None
                }
            };
            for key in before.keys(&obj_before).filter(|k| mine(k)) {
                let Some(value) = scalar(before, &obj_before, &key) else {
                    continue;
                };
                let now = obj_after.as_ref().and_then(|o| scalar(after, o, &key));
                if now.as_ref() != Some(&value) {
                    out.push(Restore::Put {
                        path: path.clone(),
                        key,
                        value,
                    });
                }
            }
            if let Some(obj_after) = &obj_after {
                // Keys this device had removed: its reaction, or every reaction when it deleted
                // the message.
                for key in after.keys(obj_after) {
                    let gone = before
                        .get(&obj_before, key.as_str())
                        .ok()
                        .flatten()
                        .is_none();
                    if gone && (mine(&key) || deleted) {
                        out.push(Restore::Delete {
                            path: path.clone(),
                            key,
                        });
                    }
                }
            }
        } else if let Some(obj_after) = obj_after.filter(|o| *o == obj_before) {
            // Another device's message, still there: this device's reaction to it.
            let reaction_before = scalar(before, &obj_before, &own_key);
            let reaction_after = scalar(after, &obj_after, &own_key);
            match (reaction_before, reaction_after) {
                (Some(value), now) if now.as_ref() != Some(&value) => out.push(Restore::Put {
                    path,
                    key: own_key.clone(),
                    value,
                }),
                (None, Some(_)) => out.push(Restore::Delete {
                    path,
                    key: own_key.clone(),
                }),
                _ => {}
            }
        }
    }
}

/// Whether `own` made the object or operation `id`.
fn made_by(id: &ObjId, own: &crate::DeviceId) -> bool {
    match id {
        ObjId::Id(_, actor, _) => authorship::device_of_actor(actor).as_ref() == Some(own),
        ObjId::Root => false,
    }
}

fn scalar(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ScalarValue> {
    crate::access::get_scalar(doc, obj, key)
}
