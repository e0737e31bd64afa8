//! Taking a sync message into a document in time that does not grow with the chat's history.
//!
//! Automerge's `receive_sync_message` trims the conversation's `sent_hashes` (the changes sent
//! so far, not to be sent again) by walking every ancestor of the message's heads: the whole
//! history, on every message, even when nothing was sent. In a live chat that walk became the
//! largest cost of a received post after a few thousand messages, and grew with every one.
//!
//! [`receive`] hands Automerge the message without its heads (so the walk has nowhere to
//! start), lets it apply the changes and take the message's needs, Bloom filters and flags,
//! then sets the fields the heads decide exactly as Automerge sets them. Only the trim differs
//! in how it is computed: the changes not covered by the heads come from Automerge's
//! per-actor clocks (`get_changes_meta`), whose cost is what the other side lacks, not the
//! history, and the trim is skipped when nothing was sent.

use std::collections::{BTreeSet, HashSet};

use automerge::{AutoCommit, AutomergeError, ChangeHash, sync::SyncDoc};

/// Applies `message` to `doc` in the conversation `state` tracks, leaving `state` as
/// Automerge's own `receive_sync_message` would.
pub(super) fn receive(
    doc: &mut AutoCommit,
    state: &mut automerge::sync::State,
    mut message: automerge::sync::Message,
) -> Result<(), AutomergeError> {
    let heads = std::mem::take(&mut message.heads);
    let brings_changes = !message.changes.is_empty();
    let sync_reset = message
        .flags
        .is_some_and(|f| f.contains(automerge::sync::MessageFlags::SYNC_RESET));
    let before: Vec<ChangeHash> = doc.get_heads();
    let mut shared_heads = std::mem::take(&mut state.shared_heads);
    let mut last_sent_heads = std::mem::take(&mut state.last_sent_heads);
    let mut sent_hashes = std::mem::take(&mut state.sent_hashes);
    if let Err(e) = doc.sync().receive_sync_message(state, message) {
        // As Automerge leaves them on an error: the state stays usable by callers that keep it.
        state.shared_heads = shared_heads;
        state.last_sent_heads = last_sent_heads;
        state.sent_hashes = sent_hashes;
        return Err(e);
    }
    if sync_reset {
        sent_hashes.clear();
    }
    // A read-only conversation applies nothing, so its heads do not move.
    if brings_changes && !state.read_only {
        shared_heads = advance_heads(&before, &doc.get_heads(), &shared_heads);
    }
    let known: Vec<ChangeHash> = heads
        .iter()
        .filter(|h| doc.get_change_meta_by_hash(h).is_some())
        .copied()
        .collect();
    trim_sent(doc, &known, &mut sent_hashes);
    if !brings_changes && heads == before {
        last_sent_heads.clone_from(&heads);
    }
    if known.len() == heads.len() {
        shared_heads.clone_from(&heads);
        // The other side has lost everything: start again from nothing.
        if heads.is_empty() {
            last_sent_heads.clear();
            sent_hashes.clear();
        }
    } else {
        shared_heads.extend(known);
        shared_heads.sort();
        shared_heads.dedup();
    }
    state.shared_heads = shared_heads;
    state.last_sent_heads = last_sent_heads;
    state.sent_hashes = sent_hashes;
    state.their_heads = Some(heads);
    Ok(())
}

/// Drops from `sent` the changes that `known` (heads of the other side that this document
/// has) descend from: the other side has them.
fn trim_sent(doc: &mut AutoCommit, known: &[ChangeHash], sent: &mut BTreeSet<ChangeHash>) {
    if sent.is_empty() || known.is_empty() {
        return;
    }
    let beyond: HashSet<ChangeHash> = doc
        .get_changes_meta(known)
        .into_iter()
        .map(|m| m.hash)
        .collect();
    sent.retain(|h| beyond.contains(h));
}

/// The shared heads after changes took this document from `old` heads to `new` ones: the new
/// heads, and the old shared heads that are still heads.
fn advance_heads(old: &[ChangeHash], new: &[ChangeHash], shared: &[ChangeHash]) -> Vec<ChangeHash> {
    let mut advanced: Vec<ChangeHash> = new
        .iter()
        .filter(|h| !old.contains(h))
        .chain(shared.iter().filter(|h| new.contains(h)))
        .copied()
        .collect();
    advanced.sort();
    advanced.dedup();
    advanced
}

#[cfg(test)]
mod tests {
    use automerge::{ROOT, ReadDoc, sync::State, transaction::Transactable};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;

    /// Replicas that write, and sync in random pairs with messages sometimes dropped (the state
    /// of a conversation that lost one is dropped too, as the daemon does). Every message is
    /// taken twice, by [`receive`] and by Automerge's own on a copy: the states must match.
    #[test]
    fn leaves_the_state_as_automerge_does() {
        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let replicas = rng.random_range(2..=4);
            let mut docs: Vec<AutoCommit> = (0..replicas)
                .map(|i| AutoCommit::new().with_actor(automerge::ActorId::from(vec![i as u8 + 1])))
                .collect();
            let mut states: Vec<Vec<State>> = vec![vec![State::new(); replicas]; replicas];
            for step in 0..300 {
                let a = rng.random_range(0..replicas);
                if rng.random_bool(0.3) {
                    docs[a]
                        .put(ROOT, format!("k{}", rng.random_range(0..50)), step)
                        .unwrap();
                    docs[a].commit();
                    continue;
                }
                let b = (a + rng.random_range(1..replicas)) % replicas;
                let Some(message) = docs[a].sync().generate_sync_message(&mut states[a][b]) else {
                    continue;
                };
                if rng.random_bool(0.05) {
                    states[a][b] = State::new();
                    states[b][a] = State::new();
                    continue;
                }
                let mut their_doc = docs[b].clone();
                let mut their_state = states[b][a].clone();
                their_doc
                    .sync()
                    .receive_sync_message(&mut their_state, message.clone())
                    .unwrap();
                receive(&mut docs[b], &mut states[b][a], message).unwrap();
                assert_eq!(states[b][a], their_state, "seed {seed} step {step}");
                assert_eq!(docs[b].get_heads(), their_doc.get_heads());
            }
            // And the conversations still bring every replica to the same document.
            for _ in 0..20 {
                for a in 0..replicas {
                    for b in 0..replicas {
                        if a == b {
                            continue;
                        }
                        let message = docs[a].sync().generate_sync_message(&mut states[a][b]);
                        if let Some(m) = message {
                            receive(&mut docs[b], &mut states[b][a], m).unwrap();
                        }
                    }
                }
            }
            let heads = docs[0].get_heads();
            for doc in &mut docs {
                assert_eq!(doc.get_heads(), heads, "seed {seed}");
                assert!(doc.length(ROOT) > 0);
            }
        }
    }
}
