//! One step of a sync conversation about one chat, without IO: what the daemon's engine does
//! with the document under the chat's lock, and what the simulator
//! (`crdt-model/tests/simulator/`) runs on many replicas at once.
//!
//! A conversation is Automerge's sync protocol between two replicas, as a strict sequence of
//! messages: the side that runs it sends, the other answers, and so on until neither has
//! anything to say. Each side keeps one [`automerge::sync::State`] per conversation. Two
//! conversations about one chat between the same two replicas (each side may run one after a
//! change of its own) must not share a state: Automerge assumes the messages of one state
//! arrive in order and that nothing it sent was lost. When a message is lost or refused, the
//! side that notices drops its state, and the next conversation starts afresh.
//!
//! Every message that carries changes is sealed with the attestations that prove who wrote
//! them, after [`Proofs::seal_sync_message`] made it provable on its own; every message that
//! arrives is checked before Automerge sees it ([`ChatDoc::receive_sync_message`]).

use automerge::sync::State;

use crate::{
    ChatDoc, DeviceId, ModelError, Touched,
    authorship::{self, Provenance, Standing, VerifyFn},
    equivocation::Evidence,
    proofs::{ProofWrites, Proofs, SignFn},
};

/// What a replica needs to sign its own changes and check others'.
pub struct Keys<'a> {
    /// The device this replica belongs to.
    pub own: &'a DeviceId,
    pub sign: &'a SignFn<'a>,
    pub verify: &'a VerifyFn<'a>,
    /// Where each device stands in this replica's roster.
    pub standing: &'a dyn Fn(&DeviceId) -> Standing,
}

/// The next message of a conversation, if any, and whether this replica now knows that the
/// other one has exactly its changes.
#[derive(Debug)]
pub struct Step {
    pub message: Option<Vec<u8>>,
    pub in_sync: bool,
}

/// What taking a message did: the reply, what it brought (to persist and announce) and the
/// attestations to persist before the changes.
#[derive(Debug)]
pub struct Taken {
    /// The reply; an error here is this replica's own (it could not make its message), never
    /// the other's: what arrived was applied and must be persisted all the same.
    pub reply: Result<Step, ModelError>,
    /// The messages the changes added or changed, and how.
    pub touched: Vec<Touched>,
    /// The changes that were applied, encoded for the store (empty if none).
    pub changes: Vec<u8>,
    /// Attestations to store before `changes`, and to forget after them (see
    /// [`Proofs::take_received`]).
    pub proofs: ProofWrites,
}

/// The next message this replica sends in the conversation `state` tracks, sealed.
pub fn next_step(
    doc: &mut ChatDoc,
    proofs: &mut Proofs,
    state: &mut State,
    keys: &Keys<'_>,
) -> Result<Step, ModelError> {
    let heads = doc.heads();
    let message = match doc.generate_sync_message(state) {
        Some(m) => proofs.seal_sync_message(doc, state, &m, keys.own, keys.sign)?,
        None => None,
    };
    Ok(Step {
        message,
        in_sync: in_sync(state, &heads),
    })
}

/// Starts a fresh conversation from what the other replica's summary said it has (`theirs`,
/// its heads), when this replica has all of those changes: the first message then carries
/// every change after them, as it would after the other side's first answer. Without it, a
/// replica that runs the conversation and is ahead first sends a Bloom filter of its whole
/// history, and the changes go out only a round trip later. Returns whether it did.
///
/// Heads the other replica has moved past since only cost changes it already has (it skips
/// them); a replica that no longer has what its summary said (it dropped a banned device's
/// changes) answers with what it has, and the conversation goes on from that.
pub fn start_from_summary(
    doc: &mut ChatDoc,
    state: &mut State,
    theirs: &[automerge::ChangeHash],
) -> bool {
    let fresh =
        state.their_heads.is_none() && !state.have_responded && state.sent_hashes.is_empty();
    if !fresh || theirs.is_empty() || !doc.has_all(theirs) {
        return false;
    }
    state.their_heads = Some(theirs.to_vec());
    state.their_need = Some(Vec::new());
    state.their_have = Some(vec![automerge::sync::Have {
        last_sync: theirs.to_vec(),
        bloom: automerge::sync::BloomFilter::default(),
    }]);
    // Every device that speaks this sync protocol reads Automerge's second message format.
    state.their_capabilities = Some(vec![automerge::sync::Capability::MessageV2]);
    true
}

/// Takes a sealed message of the conversation `state` tracks: checks and applies it, and
/// works out the reply. On an error nothing was applied, and the caller must drop `state`
/// (it may count changes that were refused).
pub fn take_message(
    doc: &mut ChatDoc,
    proofs: &mut Proofs,
    state: &mut State,
    sealed: &[u8],
    keys: &Keys<'_>,
) -> Result<Taken, ModelError> {
    let (attestations, body) = authorship::open(sealed)?;
    let chat = doc.id().clone();
    let proof = Provenance {
        chat: &chat,
        attestations: &attestations,
        verify: keys.verify,
        standing: keys.standing,
    };
    let received = match doc.receive_sync_message(state, body, &proof) {
        Err(ModelError::Automerge(automerge::AutomergeError::DuplicateSeqNumber(seq, actor))) => {
            // A change that clashes with one this replica holds: an equivocation, shown with
            // the evidence when both changes' signatures can be found.
            let tops = proofs.kept_by_device_of(&actor);
            let evidence = Evidence::from_clash(doc, &tops, body, &attestations, &actor, seq);
            return Err(match evidence {
                Some(evidence) => ModelError::Equivocation(Box::new(evidence)),
                None => automerge::AutomergeError::DuplicateSeqNumber(seq, actor).into(),
            });
        }
        received => received?,
    };
    let writes = proofs.take_received(received.tops, doc, keys.own);
    let reply = next_step(doc, proofs, state, keys);
    Ok(Taken {
        reply,
        touched: received.touched,
        changes: received.changes,
        proofs: writes,
    })
}

/// Whether a sealed sync message carries any change: so that a device short of disk space can
/// still answer devices that only read. The body is checked as a received message is before
/// Automerge decodes it; a message that cannot be read counts as carrying changes (taking it
/// refuses it anyway).
pub fn carries_changes(sealed: &[u8]) -> bool {
    let Ok((_, body)) = authorship::open(sealed) else {
        return true;
    };
    crate::chat::decode_sync_message(body)
        .and_then(|message| authorship::changes_of_sync_message(&message))
        .map_or(true, |changes| !changes.is_empty())
}

/// Whether there is nothing to start: the other device is known to have exactly `heads` from
/// the conversation it runs with this device (`answering`). After taking a device's changes,
/// this device tells every device of them, the one they came from too; without this, every post
/// would cost that device a second conversation to learn what it already knows, and carry its
/// own changes back to it. The caller then brings its own conversation with the device up to
/// date ([`know_peer_has`]).
pub fn peer_has_exactly(answering: Option<&State>, heads: &[automerge::ChangeHash]) -> bool {
    answering.is_some_and(|state| in_sync(state, heads))
}

/// Brings the conversation this device runs with another (`running`) up to what the other
/// device said in its own conversation: it has exactly `heads`, which are this device's heads
/// too, and needs nothing. The state is then as if that device had just said so here as well,
/// so that the next message carries exactly the changes newer than `heads` (not every change
/// since the conversation last spoke, which would be the device's own changes sent back).
pub fn know_peer_has(running: &mut State, heads: &[automerge::ChangeHash]) {
    running.shared_heads = heads.to_vec();
    running.last_sent_heads = heads.to_vec();
    running.their_heads = Some(heads.to_vec());
    running.their_need = Some(Vec::new());
    running.their_have = Some(vec![automerge::sync::Have {
        last_sync: heads.to_vec(),
        bloom: automerge::sync::BloomFilter::default(),
    }]);
    // Everything sent so far is below `heads`, which the device has.
    running.sent_hashes.clear();
    running.have_responded = true;
    running.in_flight = false;
}

pub fn in_sync(state: &State, ours: &[automerge::ChangeHash]) -> bool {
    let Some(theirs) = &state.their_heads else {
        return false;
    };
    let mut theirs = theirs.clone();
    let mut ours = ours.to_vec();
    theirs.sort_unstable();
    ours.sort_unstable();
    theirs == ours
}
