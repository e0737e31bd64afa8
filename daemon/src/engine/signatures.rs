//! The keys behind provable authorship (see `chatsync_model::authorship` for the scheme): this
//! device signs attestations for its own changes with its device key, and checks other devices'
//! attestations against the public key its id names. Attestations for this device's changes are
//! made when they are sent, never stored: the key can always make them again.

use std::{collections::BTreeMap, str::FromStr};

use automerge::ActorId;
use chatsync_model::{
    ChatDoc, ChatId, DeviceId,
    authorship::{self, Attestation},
};
use libp2p::identity::{Keypair, PublicKey};

use super::{EngineError, cache::LoadedChat};
use crate::store::Store;

/// Multihash code of the identity "hash" (the key itself), which device ids use.
const IDENTITY_MULTIHASH: u64 = 0x00;

/// Signs for this device; checks others.
#[derive(Clone)]
pub struct Signer {
    keypair: Keypair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(keypair: Keypair) -> Signer {
        Signer { keypair }
    }

    fn sign(&self, statement: &[u8]) -> Result<Vec<u8>, EngineError> {
        self.keypair
            .sign(statement)
            .map_err(|e| EngineError::Internal(format!("cannot sign: {e}")))
    }

    /// Whether `signature` is `device`'s signature over `statement`.
    pub fn verify(&self, device: &DeviceId, statement: &[u8], signature: &[u8]) -> bool {
        public_key(device).is_some_and(|key| key.verify(statement, signature))
    }
}

/// The public key a device id names, if it names one.
pub fn public_key(device: &DeviceId) -> Option<PublicKey> {
    let peer = libp2p::PeerId::from_str(device.as_str()).ok()?;
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != IDENTITY_MULTIHASH {
        return None;
    }
    let key = PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    (key.to_peer_id() == peer).then_some(key)
}

/// The newest attested change of each actor of a chat: other devices' as received, this
/// device's signed when first needed.
///
/// Only attestations of applied changes are passed on: one whose change still waits for its
/// dependencies would vouch for nothing the other device can check, and the actor's applied
/// changes would travel unsigned. Those wait here, in memory like the changes they prove, and
/// take over when their change is applied.
#[derive(Debug, Default)]
pub struct Tops {
    by_actor: BTreeMap<ActorId, (u64, Attestation)>,
    waiting: BTreeMap<ActorId, authorship::ActorTop>,
}

impl Tops {
    /// The attestations kept in the store for `chat`.
    pub fn load(store: &Store, chat: &ChatId) -> Result<Tops, EngineError> {
        let mut tops = Tops::default();
        for (actor, seq, attestation) in store.attestations(chat)? {
            tops.by_actor
                .insert(ActorId::from(actor), (seq, attestation));
        }
        Ok(tops)
    }

    /// Keeps `top` if it is newer than what is kept for its actor. Returns whether it was.
    pub fn offer(&mut self, top: authorship::ActorTop) -> bool {
        match self.by_actor.get(&top.actor) {
            Some((seq, _)) if *seq >= top.seq => false,
            _ => {
                self.by_actor.insert(top.actor, (top.seq, top.attestation));
                true
            }
        }
    }
}

/// Stores the attestations that arrived with other devices' changes, newest per actor, once
/// `doc` has applied their change; the others wait (see [`Tops`]). Also takes up those that
/// waited and whose change `doc` has applied since.
pub fn keep_received(
    store: &Store,
    chat: &ChatId,
    tops: &mut Tops,
    doc: &mut ChatDoc,
    received: Vec<authorship::ActorTop>,
    own: &DeviceId,
) -> Result<(), EngineError> {
    for top in received {
        if authorship::device_of_actor(&top.actor).as_ref() == Some(own) {
            continue;
        }
        if doc.has_change(&top.attestation.hash) {
            keep(store, chat, tops, top)?;
        } else if tops.waiting.get(&top.actor).is_none_or(|w| w.seq < top.seq) {
            tops.waiting.insert(top.actor.clone(), top);
        }
    }
    let applied: Vec<ActorId> = tops
        .waiting
        .iter()
        .filter(|(_, top)| doc.has_change(&top.attestation.hash))
        .map(|(actor, _)| actor.clone())
        .collect();
    for actor in applied {
        if let Some(top) = tops.waiting.remove(&actor) {
            keep(store, chat, tops, top)?;
        }
    }
    Ok(())
}

fn keep(
    store: &Store,
    chat: &ChatId,
    tops: &mut Tops,
    top: authorship::ActorTop,
) -> Result<(), EngineError> {
    let (actor, seq, attestation) = (top.actor.clone(), top.seq, top.attestation.clone());
    if tops.offer(top) {
        store.put_attestation(chat, actor.to_bytes(), seq, &attestation)?;
    }
    Ok(())
}

/// The attestations to send with changes of `actors` (all of the chat's when `None`): this
/// device's own signed now (once per change), others' as kept.
pub fn attestations_for(
    signer: &Signer,
    own: &DeviceId,
    chat: &ChatId,
    loaded: &mut LoadedChat,
    actors: Option<Vec<ActorId>>,
) -> Result<Vec<Attestation>, EngineError> {
    let actors = match actors {
        Some(actors) => actors,
        None => loaded.doc.actors(),
    };
    let mut out = Vec::with_capacity(actors.len());
    for actor in actors {
        if authorship::device_of_actor(&actor).as_ref() == Some(own) {
            if let Some(attestation) =
                own_attestation(signer, chat, &mut loaded.doc, &mut loaded.tops, &actor)?
            {
                out.push(attestation);
            }
        } else if let Some((_, attestation)) = loaded.tops.by_actor.get(&actor) {
            out.push(attestation.clone());
        }
    }
    Ok(out)
}

/// This device's attestation for its newest change under `actor`, signed if not yet.
fn own_attestation(
    signer: &Signer,
    chat: &ChatId,
    doc: &mut ChatDoc,
    tops: &mut Tops,
    actor: &ActorId,
) -> Result<Option<Attestation>, EngineError> {
    let newest = if doc.actor() == actor {
        doc.last_local_change()
    } else {
        match tops.by_actor.get(actor) {
            // An earlier run's actor never gets new changes: what was signed stays right.
            Some((_, attestation)) => return Ok(Some(attestation.clone())),
            None => doc.newest_change_of(actor),
        }
    };
    let Some((seq, hash)) = newest else {
        return Ok(None);
    };
    if let Some((kept, attestation)) = tops.by_actor.get(actor)
        && *kept == seq
    {
        return Ok(Some(attestation.clone()));
    }
    let attestation = Attestation {
        hash,
        signature: signer.sign(&authorship::statement(chat, &hash))?,
    };
    tops.by_actor
        .insert(actor.clone(), (seq, attestation.clone()));
    Ok(Some(attestation))
}

#[cfg(test)]
mod tests {
    use chatsync_model::{Device, MessageId};

    use super::*;

    fn device(keypair: &Keypair, session: &[u8]) -> Device {
        let id = DeviceId::new(keypair.public().to_peer_id().to_base58()).unwrap();
        Device::with_session(id, "d", session).unwrap()
    }

    #[test]
    fn an_attestation_of_a_change_still_waiting_is_kept_back_until_the_change_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (writer_key, here_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (writer, here) = (device(&writer_key, b"w"), device(&here_key, b"h"));
        let chat = ChatId::new("c1").unwrap();
        let mut theirs = ChatDoc::create(chat.clone(), "t", &writer, 1).unwrap();
        let mut ours = ChatDoc::load(&theirs.save(), &here).unwrap();
        let mut changes = Vec::new();
        for (i, text) in ["one", "two"].into_iter().enumerate() {
            let before = theirs.heads();
            theirs
                .post(
                    &writer,
                    MessageId::new(format!("m{i}")).unwrap(),
                    text,
                    None,
                    2,
                )
                .unwrap();
            changes.push(
                theirs
                    .automerge_mut()
                    .get_changes(&before)
                    .remove(0)
                    .clone(),
            );
        }
        let top_of = |change: &automerge::Change| authorship::ActorTop {
            actor: change.actor_id().clone(),
            seq: change.seq(),
            attestation: Attestation {
                hash: change.hash(),
                signature: writer_key
                    .sign(&authorship::statement(&chat, &change.hash()))
                    .unwrap(),
            },
        };
        let (first, second) = (changes[0].clone(), changes[1].clone());

        // The second change arrives first: it waits, and so does its attestation.
        ours.apply_changes(vec![second.clone()]).unwrap();
        assert!(!ours.has_change(&second.hash()));
        let mut tops = Tops::default();
        keep_received(
            &store,
            &chat,
            &mut tops,
            &mut ours,
            vec![top_of(&second)],
            &here.id,
        )
        .unwrap();
        assert!(tops.by_actor.is_empty());
        assert!(store.attestations(&chat).unwrap().is_empty());

        // The first arrives with its own attestation: both apply, the newest is kept and stored.
        ours.apply_changes(vec![first.clone()]).unwrap();
        keep_received(
            &store,
            &chat,
            &mut tops,
            &mut ours,
            vec![top_of(&first)],
            &here.id,
        )
        .unwrap();
        let kept = &tops.by_actor[second.actor_id()];
        assert_eq!((kept.0, kept.1.hash), (second.seq(), second.hash()));
        assert!(tops.waiting.is_empty());
        let stored = store.attestations(&chat).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].2.hash, second.hash());
    }
}
