//! The roster: which devices may sync with this one. The engine keeps it in memory (it is
//! small) and persists every change like a chat's: one chunk, then a group-commit flush.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use automerge::ChangeHash;
use chatsync_model::{Device, DeviceId, RosterDoc, RosterEntry, authorship::Standing};

use super::{Engine, EngineError, Event, commit::Committer, now_ms};
use crate::store::Store;

/// The roster document and its next chunk number.
#[derive(Debug)]
pub struct LoadedRoster {
    doc: RosterDoc,
    next_seq: u64,
    /// [`LoadedRoster::standings`] as of the roster's heads it was worked out at.
    standings: Option<(Vec<ChangeHash>, Arc<Standings>)>,
}

/// Where each device stands in the roster, for checking who wrote changes.
pub type Standings = HashMap<DeviceId, Standing>;

/// Who this device deals with, as the roster says: kept current for the network.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trust {
    /// Devices this one may connect to and sync with (this one included).
    pub trusted: BTreeSet<DeviceId>,
    /// Devices removed from the mesh: refused even where devices that are not paired are
    /// admitted (while an invitation is open).
    pub removed: BTreeSet<DeviceId>,
}

impl LoadedRoster {
    /// Every device in the roster, removed ones included.
    pub fn entries(&self) -> Vec<RosterEntry> {
        self.doc.entries()
    }

    /// Where each device stands. Every received sync message asks, and reading every entry of
    /// the roster each time was a measurable part of taking a post: the answer is kept until
    /// the roster's heads move.
    pub fn standings(&mut self) -> Arc<Standings> {
        let heads = self.doc.heads();
        if let Some((at, standings)) = &self.standings
            && *at == heads
        {
            return standings.clone();
        }
        let standings: Arc<Standings> = Arc::new(
            self.entries()
                .into_iter()
                .map(|e| {
                    let standing = if e.trusted() {
                        Standing::Trusted
                    } else {
                        Standing::Removed
                    };
                    (e.id, standing)
                })
                .collect(),
        );
        self.standings = Some((heads, standings.clone()));
        standings
    }

    /// The devices this one may connect to and sync with, this one included; none at all
    /// once another device has removed this one. A removed device is cut off from the whole
    /// mesh: trusting nobody, it drops its connections and stops dialling, instead of calling
    /// on the devices it still lists (which would show them as connected while any of them has
    /// its pairing window open and admits it as a device that comes to pair).
    pub fn trust(&self, this_device: &DeviceId) -> Trust {
        let (trusted, removed) = self
            .doc
            .entries()
            .into_iter()
            .partition::<Vec<_>, _>(RosterEntry::trusted);
        Trust {
            trusted: if self.doc.is_trusted(this_device) {
                trusted.into_iter().map(|e| e.id).collect()
            } else {
                BTreeSet::new()
            },
            removed: removed.into_iter().map(|e| e.id).collect(),
        }
    }

    /// This device's name in the roster, while it is in it.
    pub fn own_name(&self, this_device: &DeviceId) -> Option<String> {
        self.doc
            .entry(this_device)
            .filter(RosterEntry::trusted)
            .map(|e| e.name)
    }

    /// Loads the roster, or creates one holding only this device on first start. A name the
    /// owner configured replaces the device's own name in it.
    pub fn open(
        store: &Store,
        device: &Device,
        name_configured: bool,
    ) -> Result<LoadedRoster, EngineError> {
        match store.load_roster()? {
            Some(stored) => {
                let mut roster = LoadedRoster {
                    doc: RosterDoc::load(&stored.bytes, device).map_err(|e| {
                        EngineError::Storage(format!("the roster cannot be loaded: {e}"))
                    })?,
                    next_seq: stored.next_seq,
                    standings: None,
                };
                // The device's own name follows its configuration, when it has one.
                if name_configured
                    && roster
                        .doc
                        .entry(&device.id)
                        .is_some_and(|e| e.trusted() && e.name != device.name)
                {
                    roster.doc.add(device, &device.id, &device.name, now_ms())?;
                    let chunk = roster.doc.take_local_changes();
                    store.append_roster_chunk(roster.next_seq, &chunk)?;
                    store.flush()?;
                    roster.next_seq += 1;
                }
                Ok(roster)
            }
            None => {
                let mut doc = RosterDoc::new(device, now_ms())?;
                store.create_roster(&doc.save())?;
                store.flush()?;
                // Everything so far is in the saved document.
                doc.take_local_changes();
                Ok(LoadedRoster {
                    doc,
                    next_seq: 0,
                    standings: None,
                })
            }
        }
    }
}

/// Checks that `id` is a device id: the text form of a device's public key.
fn parse_device_id(id: &str) -> Result<DeviceId, EngineError> {
    let invalid = || {
        EngineError::Invalid(format!(
            "{id:?} is not a device id (device ids look like 12D3KooW...; `chatsync status` shows a device's)"
        ))
    };
    // A device id names a public key: decode that key, so that a string that merely parses as
    // a peer id is not taken for a device.
    let device = DeviceId::new(id).map_err(|_| invalid())?;
    let key = super::signatures::public_key(&device).ok_or_else(invalid)?;
    if key.to_peer_id().to_base58() != id {
        return Err(invalid());
    }
    Ok(device)
}

impl Engine {
    /// Every device in the roster, removed ones included.
    pub async fn devices(&self) -> Vec<RosterEntry> {
        self.roster.lock().await.doc.entries()
    }

    /// Whether a device may sync with this one.
    pub async fn is_trusted(&self, id: &DeviceId) -> bool {
        self.roster.lock().await.doc.is_trusted(id)
    }

    /// Adds a device to the roster (or renames it). Without a name it is called after the end
    /// of its id, which is the distinctive part.
    pub async fn add_device(
        &self,
        id: &str,
        name: Option<&str>,
    ) -> Result<RosterEntry, EngineError> {
        let id = parse_device_id(id)?;
        let default_name;
        let name = match name {
            Some(n) => n,
            None => {
                let tail = &id.as_str()[id.as_str().len().saturating_sub(6)..];
                default_name = format!("device {tail}");
                &default_name
            }
        };
        self.change_roster(|doc, device, now| {
            let entry = doc.add(device, &id, name, now)?;
            Ok((entry.clone(), Event::DeviceAdded { entry }))
        })
        .await
    }

    /// Removes a device from the roster for good, by id or unique name.
    pub async fn remove_device(&self, reference: &str) -> Result<RosterEntry, EngineError> {
        let id = {
            let roster = self.roster.lock().await;
            resolve_device(&roster.doc, reference)?
        };
        self.change_roster(|doc, device, now| {
            let entry = doc.remove(device, &id, now)?;
            Ok((entry.clone(), Event::DeviceRemoved { entry }))
        })
        .await
    }

    /// The whole roster, for another device.
    pub async fn roster_bytes(&self) -> Vec<u8> {
        self.roster.lock().await.doc.save()
    }

    /// Merges a roster sent by another device and persists what it brought. Returns whether
    /// this device's roster changed. Removals are final (see `RosterDoc`), so a device cannot
    /// undo its own removal this way.
    pub async fn merge_roster(&self, bytes: &[u8]) -> Result<bool, EngineError> {
        self.committer.check_healthy()?;
        // Bytes from another device: Automerge may panic on them (a paired device can sign
        // what it likes). Loaded and merged into a copy, with panics contained, so that a bad
        // roster costs that one exchange (an offence) and leaves this device's roster as it was.
        let mut theirs = super::sync::contain_panic(|| {
            RosterDoc::load_untrusted(bytes, &self.device)
                .map_err(|e| EngineError::Misbehaviour(e.to_string()))
        })?;
        let write = self.committer.begin();
        // Held until the merge is durable: nobody reads (or sends on) a roster that a crash
        // could take back.
        let mut roster = self.roster.lock().await;
        let before_entries = roster.doc.entries();
        let before = roster.doc.heads();
        let mut merged = RosterDoc::load(&roster.doc.save(), &self.device)?;
        super::sync::contain_panic(|| {
            merged
                .merge(&mut theirs)
                .map_err(|e| EngineError::Misbehaviour(e.to_string()))
        })?;
        if merged.heads() == before {
            return Ok(false);
        }
        roster.doc = merged;
        let chunk = roster.doc.save_after(&before);
        persist_roster_chunk(&self.store, &self.committer, roster.next_seq, &chunk)?;
        roster.next_seq += 1;
        let mut events = Vec::new();
        for entry in roster.doc.entries() {
            match before_entries.iter().find(|e| e.id == entry.id) {
                None if entry.trusted() => events.push(Event::DeviceAdded { entry }),
                Some(old) if old.trusted() && !entry.trusted() => {
                    events.push(Event::DeviceRemoved { entry })
                }
                _ => {}
            }
        }
        let me_removed = !roster.doc.is_trusted(&self.device.id);
        write.submit(Vec::new(), events).await?.durable().await?;
        if me_removed {
            tracing::warn!("this device was removed from the mesh by another device");
        }
        self.follow_roster(&roster);
        Ok(true)
    }

    /// Publishes who is trusted now, and takes this device's name from the roster unless its
    /// owner configured one. Called under the roster's lock, so that racing changes always
    /// leave the latest roster.
    fn follow_roster(&self, roster: &LoadedRoster) {
        self.trust.send_replace(roster.trust(&self.device.id));
        if !self.name_configured
            && let Some(name) = roster.own_name(&self.device.id)
        {
            *self.name.write().unwrap_or_else(|p| p.into_inner()) = name;
        }
    }

    /// When this device was removed from the mesh, if it was (another device revoked it).
    pub async fn removed_from_mesh(&self) -> Option<i64> {
        self.roster
            .lock()
            .await
            .doc
            .entry(&self.device.id)
            .and_then(|e| e.removed_at)
    }

    async fn change_roster(
        &self,
        op: impl FnOnce(&mut RosterDoc, &Device, i64) -> Result<(RosterEntry, Event), EngineError>,
    ) -> Result<RosterEntry, EngineError> {
        self.committer.check_healthy()?;
        let write = self.committer.begin();
        // Held until the change is durable: nobody reads (or sends on) a roster that a crash
        // could take back. A device removed here must not hear of it before its removal's
        // event is out.
        let mut roster = self.roster.lock().await;
        let (entry, event) = op(&mut roster.doc, &self.device, now_ms())?;
        let chunk = roster.doc.take_local_changes();
        if chunk.is_empty() {
            return Ok(entry);
        }
        persist_roster_chunk(&self.store, &self.committer, roster.next_seq, &chunk)?;
        roster.next_seq += 1;
        write
            .submit(Vec::new(), vec![event])
            .await?
            .durable()
            .await?;
        self.follow_roster(&roster);
        Ok(entry)
    }
}

fn persist_roster_chunk(
    store: &Store,
    committer: &Committer,
    seq: u64,
    chunk: &[u8],
) -> Result<(), EngineError> {
    store.append_roster_chunk(seq, chunk).map_err(|e| {
        // As with chats: memory now holds a change the store does not.
        committer.fail(&e.to_string());
        EngineError::from(e)
    })
}

fn resolve_device(doc: &RosterDoc, reference: &str) -> Result<DeviceId, EngineError> {
    let entries = doc.entries();
    if let Some(e) = entries.iter().find(|e| e.id.as_str() == reference) {
        return Ok(e.id.clone());
    }
    let named: Vec<&RosterEntry> = entries.iter().filter(|e| e.name == reference).collect();
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(EngineError::NotFound(format!(
            "no device {reference:?} in the roster"
        ))),
        many => Err(EngineError::Ambiguous {
            what: format!("device {reference:?}"),
            candidates: many
                .iter()
                .map(|e| format!("{} ({})", e.id, e.name))
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_that_name_a_public_key_are_device_ids() {
        let real = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_base58();
        assert_eq!(parse_device_id(&real).unwrap().as_str(), real);
        for bad in [
            "12D3KooWnope",
            "nonsense",
            "",
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        ] {
            assert!(
                matches!(parse_device_id(bad), Err(EngineError::Invalid(_))),
                "{bad:?} was accepted"
            );
        }
    }
}
