//! The keys behind provable authorship (see `chatsync_model::authorship` for the scheme and
//! `chatsync_model::proofs` for the book each chat keeps): this device signs attestations for
//! its own changes with its device key, and checks other devices' attestations against the
//! public key its id names. Attestations for this device's changes are made when they are
//! sent, never stored: the key can always make them again. Other devices' are stored under
//! their actor and sequence number, before the chunk with their change.

use std::str::FromStr;

use automerge::ActorId;
use chatsync_model::{ChatDoc, ChatId, DeviceId, authorship::ActorTop, proofs::Proofs};

use libp2p::identity::{Keypair, PublicKey};

use super::EngineError;
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

    /// This device's signature over `statement`; `None` if the key cannot sign (never for the
    /// Ed25519 keys devices have).
    pub fn sign(&self, statement: &[u8]) -> Option<Vec<u8>> {
        self.keypair
            .sign(statement)
            .inspect_err(|e| tracing::error!(error = %e, "cannot sign an attestation"))
            .ok()
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

/// The proofs stored for `chat`, for its document `doc` as loaded; removes those a newer one
/// replaced.
pub fn load_proofs(store: &Store, chat: &ChatId, doc: &mut ChatDoc) -> Result<Proofs, EngineError> {
    let stored = store
        .attestations(chat)?
        .into_iter()
        .map(|(actor, seq, attestation)| (ActorId::from(actor), seq, attestation))
        .collect();
    let (proofs, stale) = Proofs::restore(stored, doc);
    if !stale.is_empty() {
        let stale: Vec<(Vec<u8>, u64)> = stale
            .into_iter()
            .map(|(actor, seq)| (actor.to_bytes().to_vec(), seq))
            .collect();
        store.remove_attestations(chat, &stale)?;
    }
    Ok(proofs)
}

/// Stores the attestations [`Proofs::take_received`] kept. Call before writing the chunk with
/// their changes: an attestation without its change is passed over at the next load, a change
/// without an attestation could not be passed on.
pub fn persist(store: &Store, chat: &ChatId, kept: Vec<ActorTop>) -> Result<(), EngineError> {
    for top in kept {
        store.put_attestation(chat, top.actor.to_bytes(), top.seq, &top.attestation)?;
    }
    Ok(())
}

/// The committer's write that forgets attestations [`Proofs::take_received`] no longer needs,
/// after the chunks submitted before it; `None` if there are none.
pub fn forget(chat: &ChatId, stale: Vec<(ActorId, u64)>) -> Option<super::commit::StoreWrite> {
    (!stale.is_empty()).then(|| super::commit::StoreWrite::ForgetAttestations {
        chat: chat.clone(),
        stale: stale
            .into_iter()
            .map(|(actor, seq)| (actor.to_bytes().to_vec(), seq))
            .collect(),
    })
}
