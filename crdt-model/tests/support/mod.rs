//! Attestations for tests: every device "signs" with a keyed hash of its id. Not secure (anyone
//! can compute it), which is fine here: these tests are about which changes need which
//! attestation, and the daemon's tests cover real Ed25519 signatures.
#![allow(dead_code)]

use chatsync_model::{
    ChatDoc, DeviceId,
    authorship::{self, Attestation, Provenance, Standing},
    exchange::Keys,
};
use sha2::{Digest, Sha256};

/// The test "signature" of `device` over `statement`.
pub fn sign(device: &DeviceId, statement: &[u8]) -> Vec<u8> {
    let first = Sha256::new()
        .chain_update(device.as_str())
        .chain_update([0])
        .chain_update(statement)
        .finalize();
    let second = Sha256::new().chain_update(first).finalize();
    [first.as_slice(), second.as_slice()].concat()
}

pub fn verify(device: &DeviceId, statement: &[u8], signature: &[u8]) -> bool {
    sign(device, statement) == signature
}

pub fn everyone_trusted(_: &DeviceId) -> Standing {
    Standing::Trusted
}

/// Runs `f` with the keys of device `own`: these "signatures", every device trusted.
pub fn with_keys<T>(own: &DeviceId, f: impl FnOnce(&Keys<'_>) -> T) -> T {
    let sign = |statement: &[u8]| Some(sign(own, statement));
    f(&Keys {
        own,
        sign: &sign,
        verify: &verify,
        standing: &everyone_trusted,
    })
}

/// Attestations of the newest change of every actor in `doc`, as its device would send them.
pub fn attest_all(doc: &mut ChatDoc) -> Vec<Attestation> {
    let chat = doc.id().clone();
    let mut out = Vec::new();
    for actor in doc.actors() {
        let (Some(device), Some((_, hash))) = (
            authorship::device_of_actor(&actor),
            doc.newest_change_of(&actor),
        ) else {
            continue;
        };
        out.push(Attestation {
            hash,
            signature: sign(&device, &authorship::statement(&chat, &hash)),
        });
    }
    out
}

/// What a receiver needs to check a batch of `chat` sent with `attestations`, every device
/// trusted.
pub fn proof<'a>(
    chat: &'a chatsync_model::ChatId,
    attestations: &'a [Attestation],
) -> Provenance<'a> {
    Provenance {
        chat,
        attestations,
        verify: &verify,
        standing: &everyone_trusted,
    }
}

/// Sends a sync message from `from` to `to` with `from`'s attestations; returns what `to`
/// received.
pub fn deliver(
    from: &mut ChatDoc,
    to: &mut ChatDoc,
    state: &mut automerge::sync::State,
    message: &[u8],
) -> Result<chatsync_model::SyncReceived, chatsync_model::ModelError> {
    let attestations = attest_all(from);
    let chat = to.id().clone();
    to.receive_sync_message(state, message, &proof(&chat, &attestations))
}

/// Attestations for every change a sync message carries, each signed by the device its actor
/// names: what any sender able to sign as those devices could attach.
pub fn attest_message(chat: &chatsync_model::ChatId, message: &[u8]) -> Vec<Attestation> {
    let Ok(decoded) = automerge::sync::Message::decode(message) else {
        return Vec::new();
    };
    let Ok(changes) = authorship::changes_of_sync_message(&decoded) else {
        return Vec::new();
    };
    changes
        .iter()
        .filter_map(|c| {
            let device = authorship::device_of_actor(&c.actor)?;
            Some(Attestation {
                hash: c.hash,
                signature: sign(&device, &authorship::statement(chat, &c.hash)),
            })
        })
        .collect()
}

/// `doc` receives `message` with attestations for every change in it.
pub fn receive(
    doc: &mut ChatDoc,
    state: &mut automerge::sync::State,
    message: &[u8],
) -> Result<chatsync_model::SyncReceived, chatsync_model::ModelError> {
    let chat = doc.id().clone();
    let attestations = attest_message(&chat, message);
    doc.receive_sync_message(state, message, &proof(&chat, &attestations))
}
