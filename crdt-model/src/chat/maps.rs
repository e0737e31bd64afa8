//! The map each message lives in, held compactly.
//!
//! The index names a message's map twice: to read the message ([`MessageMaps::obj_id`]) and to
//! trace an operation in a received change back to the message it writes
//! ([`MessageMaps::message_of`]). Automerge's `ObjId` carries its actor's bytes on the heap
//! (a device's actor is its id and a session, longer than the sixteen bytes kept inline): two
//! such ids a message were about a quarter of an index that took more memory than the whole
//! document. A chat has a handful of actors: each is stored once here, and a map is named by
//! its counter and the actor's number ([`MapKey`]).

use std::collections::HashMap;

use automerge::{ActorId, ObjId};

use crate::{DeviceId, MessageId, authorship::device_of_actor, touched::OpKey};

/// A message's map: the counter of the operation that made it and its actor's number in
/// [`MessageMaps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct MapKey {
    counter: u64,
    actor: u32,
}

#[derive(Default)]
pub(crate) struct MessageMaps {
    /// Every actor that made a message's map, by number, with the device it belongs to: a
    /// message's author must be that device, and the index keeps this one copy of its id.
    actors: Vec<(ActorId, Option<DeviceId>)>,
    numbers: HashMap<ActorId, u32>,
    /// The message each map belongs to. Malformed messages (not in the index) are here too, so
    /// that a change completing one is noticed. An entry can outlive its map's place among the
    /// entries (when a peer replaces a message's map); every use checks it.
    messages: HashMap<MapKey, MessageId>,
}

impl MessageMaps {
    pub(super) fn clear(&mut self) {
        self.messages.clear();
    }

    /// Notes that `obj` is the map of message `id`, and gives its key. `None` for the root,
    /// which is no message's map.
    pub(super) fn remember(&mut self, obj: &ObjId, id: &MessageId) -> Option<MapKey> {
        let key = self.key_of(obj)?;
        self.messages.insert(key, id.clone());
        Some(key)
    }

    /// The key of `obj`, numbering its actor if it is new.
    fn key_of(&mut self, obj: &ObjId) -> Option<MapKey> {
        let ObjId::Id(counter, actor, _) = obj else {
            return None;
        };
        let actor = match self.numbers.get(actor) {
            Some(n) => *n,
            None => {
                // A chat's actors are bounded by its document; u32 is far beyond any.
                let n = u32::try_from(self.actors.len()).ok()?;
                self.actors.push((actor.clone(), device_of_actor(actor)));
                self.numbers.insert(actor.clone(), n);
                n
            }
        };
        Some(MapKey {
            counter: *counter,
            actor,
        })
    }

    /// The message whose map an operation names as its object, if it is one.
    pub(crate) fn message_of(&self, object: &OpKey) -> Option<&MessageId> {
        let actor = *self.numbers.get(&object.actor)?;
        self.messages.get(&MapKey {
            counter: object.counter,
            actor,
        })
    }

    /// The map `key` names, as Automerge's id of it.
    pub(super) fn obj_id(&self, key: MapKey) -> ObjId {
        // The third field is only a hint of the actor's place in the document; Automerge looks
        // the actor up when the hint is wrong.
        ObjId::Id(key.counter, self.actors[key.actor as usize].0.clone(), 0)
    }

    /// The device whose actor made the map `key` names; `None` for an actor that names none.
    pub(super) fn device_of(&self, key: MapKey) -> Option<&DeviceId> {
        self.actors.get(key.actor as usize)?.1.as_ref()
    }
}
