//! [`RosterDoc`]: the replicated list of the devices in a mesh — who may sync.
//!
//! Every device holds a copy and they merge like chats. Two rules shape the document:
//! - Every device starts from the same, deterministic genesis change (fixed actor, fixed time,
//!   fixed content), so rosters created independently on two devices share their containers
//!   and merge instead of hiding each other's entries.
//! - Entries are flat keys in maps created by that genesis (`names`, `added_by`, `added_at`,
//!   `removed`), never per-device nested maps, for the same reason. Removal is a key in
//!   `removed` that is never taken away, so a removal wins over any concurrent or later re-add:
//!   a removed device needs a new identity to join again.

use std::collections::BTreeMap;

use automerge::{
    ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc,
    transaction::{CommitOptions, Transactable},
};
use serde::{Deserialize, Serialize};

use crate::{
    Device, DeviceId, ModelError,
    access::{check_text, get_int, get_map, get_str, truncate_utf8, write_change},
    limits::MAX_DEVICE_NAME_BYTES,
};

const SCHEMA: &str = "schema";
const KIND: &str = "kind";
const KIND_ROSTER: &str = "chatsync-roster";
const NAMES: &str = "names";
const ADDED_BY: &str = "added_by";
const ADDED_AT: &str = "added_at";
const REMOVED: &str = "removed";
const SCHEMA_VERSION: i64 = 1;
/// Actor of the shared genesis change. No device writes under it afterwards.
const GENESIS_ACTOR: &[u8] = b"chatsync-roster-genesis";

/// One device in the roster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub id: DeviceId,
    pub name: String,
    /// Device that added it (itself, for the device that started the mesh).
    pub added_by: Option<DeviceId>,
    pub added_at: Option<i64>,
    /// When it was removed, if it was; a removed device is never trusted again.
    pub removed_at: Option<i64>,
}

impl RosterEntry {
    pub fn trusted(&self) -> bool {
        self.removed_at.is_none()
    }
}

pub struct RosterDoc {
    doc: AutoCommit,
    names: ObjId,
    added_by: ObjId,
    added_at: ObjId,
    removed: ObjId,
    unsaved_local: Vec<u8>,
}

impl std::fmt::Debug for RosterDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RosterDoc").finish_non_exhaustive()
    }
}

impl RosterDoc {
    /// A new roster holding only `device`: the shared genesis, then `device` adding itself.
    pub fn new(device: &Device, now_ms: i64) -> Result<Self, ModelError> {
        let mut doc = AutoCommit::new().with_actor(ActorId::from(GENESIS_ACTOR));
        doc.put(automerge::ROOT, SCHEMA, SCHEMA_VERSION)?;
        doc.put(automerge::ROOT, KIND, KIND_ROSTER)?;
        for map in [NAMES, ADDED_BY, ADDED_AT, REMOVED] {
            doc.put_object(automerge::ROOT, map, ObjType::Map)?;
        }
        doc.commit_with(CommitOptions::default().with_time(0));
        let mut roster = Self::from_doc(doc, device)?;
        roster.add(device, &device.id, &device.name, now_ms)?;
        Ok(roster)
    }

    /// Loads a saved roster (a full save, optionally followed by incremental changes).
    pub fn load(bytes: &[u8], device: &Device) -> Result<Self, ModelError> {
        let doc = AutoCommit::load(bytes).map_err(|e| ModelError::Corrupt(e.to_string()))?;
        Self::from_doc(doc, device)
    }

    fn from_doc(mut doc: AutoCommit, device: &Device) -> Result<Self, ModelError> {
        doc.set_actor(device.actor.clone());
        if get_str(&doc, &automerge::ROOT, KIND).as_deref() != Some(KIND_ROSTER) {
            return Err(ModelError::Corrupt("not a roster document".into()));
        }
        match get_int(&doc, &automerge::ROOT, SCHEMA) {
            Some(v) if (1..=SCHEMA_VERSION).contains(&v) => {}
            _ => return Err(ModelError::Corrupt("unsupported roster schema".into())),
        }
        let map = |key: &str| {
            get_map(&doc, &automerge::ROOT, key)
                .ok_or_else(|| ModelError::Corrupt(format!("roster has no {key} map")))
        };
        Ok(RosterDoc {
            names: map(NAMES)?,
            added_by: map(ADDED_BY)?,
            added_at: map(ADDED_AT)?,
            removed: map(REMOVED)?,
            doc,
            unsaved_local: Vec::new(),
        })
    }

    /// Adds (or renames) a device. A removed device cannot be added again.
    pub fn add(
        &mut self,
        by: &Device,
        id: &DeviceId,
        name: &str,
        now_ms: i64,
    ) -> Result<RosterEntry, ModelError> {
        check_text("device name", name, MAX_DEVICE_NAME_BYTES, false)?;
        if let Some(entry) = self.entry(id) {
            if !entry.trusted() {
                return Err(ModelError::Forbidden(format!(
                    "device {id} was removed from the mesh and cannot be added again"
                )));
            }
            if entry.name == name {
                return Ok(entry);
            }
        }
        let known = self.entry(id).is_some();
        let (names, added_by, added_at) = (
            self.names.clone(),
            self.added_by.clone(),
            self.added_at.clone(),
        );
        self.write(now_ms, |doc| {
            doc.put(&names, id.as_str(), name)?;
            if !known {
                doc.put(&added_by, id.as_str(), by.id.as_str())?;
                doc.put(&added_at, id.as_str(), now_ms)?;
            }
            Ok(())
        })?;
        self.entry(id)
            .ok_or_else(|| ModelError::Corrupt(format!("device {id} vanished")))
    }

    /// Removes a device for good. A device cannot remove itself.
    pub fn remove(
        &mut self,
        by: &Device,
        id: &DeviceId,
        now_ms: i64,
    ) -> Result<RosterEntry, ModelError> {
        if *id == by.id {
            return Err(ModelError::Forbidden(
                "a device cannot remove itself from the mesh".into(),
            ));
        }
        let entry = self
            .entry(id)
            .ok_or_else(|| ModelError::Invalid(format!("device {id} is not in the roster")))?;
        if !entry.trusted() {
            return Ok(entry);
        }
        let removed = self.removed.clone();
        self.write(now_ms, |doc| doc.put(&removed, id.as_str(), now_ms))?;
        self.entry(id)
            .ok_or_else(|| ModelError::Corrupt(format!("device {id} vanished")))
    }

    /// One device's entry.
    pub fn entry(&self, id: &DeviceId) -> Option<RosterEntry> {
        let removed_at = get_int(&self.doc, &self.removed, id.as_str()).or_else(|| {
            // Any value under `removed` counts, whatever its type: removal is sticky.
            self.doc
                .get(&self.removed, id.as_str())
                .ok()
                .flatten()
                .map(|_| 0)
        });
        let mut name = get_str(&self.doc, &self.names, id.as_str())?;
        truncate_utf8(&mut name, MAX_DEVICE_NAME_BYTES);
        Some(RosterEntry {
            id: id.clone(),
            name,
            added_by: get_str(&self.doc, &self.added_by, id.as_str())
                .and_then(|v| DeviceId::new(v).ok()),
            added_at: get_int(&self.doc, &self.added_at, id.as_str()),
            removed_at,
        })
    }

    /// Every device ever added, removed ones included, by id.
    pub fn entries(&self) -> Vec<RosterEntry> {
        let mut ids: BTreeMap<DeviceId, ()> = BTreeMap::new();
        for key in self.doc.keys(&self.names) {
            if let Ok(id) = DeviceId::new(key) {
                ids.insert(id, ());
            }
        }
        ids.keys().filter_map(|id| self.entry(id)).collect()
    }

    /// Whether `id` may sync with this device: in the roster and not removed.
    pub fn is_trusted(&self, id: &DeviceId) -> bool {
        self.entry(id).is_some_and(|e| e.trusted())
    }

    /// Loads a roster sent by another device: checked by [`crate::wire_check::check_chunks`]
    /// before Automerge parses it, and refused unless it is a roster.
    pub fn load_untrusted(bytes: &[u8], device: &Device) -> Result<Self, ModelError> {
        crate::wire_check::check_chunks(bytes, &crate::wire_check::WireLimits::default())
            .map_err(|e| ModelError::Corrupt(format!("refused roster: {e}")))?;
        Self::load(bytes, device)
    }

    /// The changes since `heads`, in a form that loads after a save of the roster as it was.
    pub fn save_after(&mut self, heads: &[ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    /// Merges another replica of the roster.
    pub fn merge(&mut self, other: &mut RosterDoc) -> Result<(), ModelError> {
        self.doc.merge(&mut other.doc)?;
        Ok(())
    }

    /// The encoded local changes since the last call (see `ChatDoc::take_local_changes`).
    pub fn take_local_changes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.unsaved_local)
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    fn write(
        &mut self,
        now_ms: i64,
        ops: impl FnOnce(&mut AutoCommit) -> Result<(), automerge::AutomergeError>,
    ) -> Result<(), ModelError> {
        write_change(&mut self.doc, &mut self.unsaved_local, now_ms, ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> Device {
        Device::new(DeviceId::new(id).unwrap(), id).unwrap()
    }

    #[test]
    fn a_new_roster_trusts_only_its_device() {
        let a = dev("dev-a");
        let r = RosterDoc::new(&a, 5).unwrap();
        assert!(r.is_trusted(&a.id));
        assert!(!r.is_trusted(&DeviceId::new("dev-b").unwrap()));
        let entries = r.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].added_by.as_ref(), Some(&a.id));
        assert_eq!(entries[0].added_at, Some(5));
    }

    #[test]
    fn independently_created_rosters_merge_without_losing_entries() {
        let (a, b) = (dev("dev-a"), dev("dev-b"));
        let mut ra = RosterDoc::new(&a, 1).unwrap();
        let mut rb = RosterDoc::new(&b, 2).unwrap();
        ra.add(&a, &b.id, "b", 3).unwrap();
        rb.add(&b, &a.id, "a", 4).unwrap();
        ra.merge(&mut rb).unwrap();
        rb.merge(&mut ra).unwrap();
        assert_eq!(ra.entries(), rb.entries());
        assert!(ra.is_trusted(&a.id) && ra.is_trusted(&b.id));
    }

    #[test]
    fn removal_wins_over_a_concurrent_re_add_and_is_final() {
        let (a, b, c) = (dev("dev-a"), dev("dev-b"), dev("dev-c"));
        let mut ra = RosterDoc::new(&a, 1).unwrap();
        ra.add(&a, &b.id, "b", 2).unwrap();
        ra.add(&a, &c.id, "c", 2).unwrap();
        let mut rb = RosterDoc::load(&ra.save(), &b).unwrap();
        ra.remove(&a, &c.id, 3).unwrap();
        // Concurrently, b renames (re-adds) c.
        rb.add(&b, &c.id, "c again", 3).unwrap();
        ra.merge(&mut rb).unwrap();
        rb.merge(&mut ra).unwrap();
        assert!(!ra.is_trusted(&c.id));
        assert!(!rb.is_trusted(&c.id));
        assert!(matches!(
            rb.add(&b, &c.id, "c", 4),
            Err(ModelError::Forbidden(_))
        ));
    }

    #[test]
    fn a_device_cannot_remove_itself_and_unknown_devices_are_refused() {
        let a = dev("dev-a");
        let mut r = RosterDoc::new(&a, 1).unwrap();
        assert!(matches!(
            r.remove(&a, &a.id, 2),
            Err(ModelError::Forbidden(_))
        ));
        assert!(matches!(
            r.remove(&a, &DeviceId::new("dev-x").unwrap(), 2),
            Err(ModelError::Invalid(_))
        ));
    }

    #[test]
    fn local_changes_reload_after_the_save() {
        let (a, b) = (dev("dev-a"), dev("dev-b"));
        let mut r = RosterDoc::new(&a, 1).unwrap();
        let mut bytes = r.save();
        r.take_local_changes();
        r.add(&a, &b.id, "b", 2).unwrap();
        bytes.extend(r.take_local_changes());
        let loaded = RosterDoc::load(&bytes, &a).unwrap();
        assert!(loaded.is_trusted(&b.id));
        assert!(RosterDoc::load(b"garbage", &a).is_err());
    }
}
