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
#[derive(Debug, Default)]
pub struct Tops {
    by_actor: BTreeMap<ActorId, (u64, Attestation)>,
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

/// Stores the attestations that arrived with other devices' changes, newest per actor.
pub fn keep_received(
    store: &Store,
    chat: &ChatId,
    tops: &mut Tops,
    received: Vec<authorship::ActorTop>,
    own: &DeviceId,
) -> Result<(), EngineError> {
    for top in received {
        if authorship::device_of_actor(&top.actor).as_ref() == Some(own) {
            continue;
        }
        let (actor, seq, attestation) = (top.actor.clone(), top.seq, top.attestation.clone());
        if tops.offer(top) {
            store.put_attestation(chat, actor.to_bytes(), seq, &attestation)?;
        }
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
