//! One replica's proofs of authorship for one chat: which attestation vouches for each actor's
//! changes here, and how outgoing sync messages are made provable on their own.
//!
//! # Why
//!
//! A receiver applies a batch only when attestations reach every change in it
//! ([`authorship::check_batch`]). Devices keep just the newest attestation of each actor, so a
//! sender must make sure that the attested change is *in* the batch, or the receiver cannot
//! follow the dependencies from it to the changes it covers. Automerge's sync protocol does not
//! promise that: it leaves out a change the other side's Bloom filter wrongly claims (about 1
//! in 100), a change it sent earlier in the same conversation, or one it sends only because the
//! other side asked for it by hash. Under those holes, honest devices used to refuse each other
//! and count it as misconduct. So:
//!
//! - **Completion.** [`Proofs::seal_sync_message`] adds to a batch of changes, for each actor in
//!   it, the attested change and every change between it and the batch (that the other side is
//!   not known to share), following dependencies; the actors of what it adds are covered the
//!   same way. The receiver then checks the batch on its own, whatever reached it before.
//! - **Own changes are signed at the batch's top.** A device signs the newest of its own changes
//!   in the batch, under each of its actors (earlier runs' too): it can sign any of them.
//! - **Only applied attestations vouch.** An attestation whose change still waits for its
//!   dependencies is held ([`Proofs::take_received`]) and takes over when the change applies:
//!   before that, this replica could not send the change it names.
//! - **Durable with what it covers.** The caller persists each kept attestation under its actor
//!   and sequence number *before* the chunk with its change, and [`Proofs::restore`] takes, per
//!   actor, the newest stored attestation whose change the document holds: a crash between
//!   the two leaves the older attestation in charge, never one that names a lost change.
//!
//! No IO: signing is a callback, persisting is the caller's (the engine's store; the
//! simulator's in-memory disk).

use std::collections::{BTreeMap, HashSet};

use automerge::{ActorId, ChangeHash};

use crate::{
    ChatDoc, DeviceId, ModelError,
    authorship::{self, ActorTop, Attestation},
};

/// Signs a statement with this device's key; `None` if the key cannot sign (the batch then goes
/// out unproven, and the receiver refuses it without blame).
pub type SignFn<'a> = dyn Fn(&[u8]) -> Option<Vec<u8>> + 'a;

/// The attestations one replica keeps for one chat.
#[derive(Debug, Default)]
pub struct Proofs {
    /// Per actor, the newest attestation of an applied change: sequence number and attestation.
    kept: BTreeMap<ActorId, (u64, Attestation)>,
    /// Per actor, a newer attestation whose change still waits for its dependencies.
    waiting: BTreeMap<ActorId, ActorTop>,
}

impl Proofs {
    /// The proofs kept in storage for a chat: per actor, the newest attestation whose change
    /// `doc` holds. Older ones for the same actor are returned for the caller to delete.
    pub fn restore(
        stored: Vec<(ActorId, u64, Attestation)>,
        doc: &mut ChatDoc,
    ) -> (Proofs, Vec<(ActorId, u64)>) {
        let mut proofs = Proofs::default();
        let mut by_actor: BTreeMap<ActorId, Vec<(u64, Attestation)>> = BTreeMap::new();
        for (actor, seq, attestation) in stored {
            by_actor.entry(actor).or_default().push((seq, attestation));
        }
        let mut stale = Vec::new();
        for (actor, mut list) in by_actor {
            list.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
            let chosen = list.iter().position(|(_, a)| doc.has_change(&a.hash));
            for (at, (seq, attestation)) in list.into_iter().enumerate() {
                match chosen {
                    Some(c) if at == c => {
                        proofs.kept.insert(actor.clone(), (seq, attestation));
                    }
                    Some(c) if at > c => stale.push((actor.clone(), seq)),
                    // Newer than any applied one: its change was lost in a crash. Left in
                    // storage; a later attestation of the same sequence number replaces it.
                    _ => {}
                }
            }
        }
        (proofs, stale)
    }

    /// The attestation kept for `actor`, if any: sequence number and attestation.
    pub fn kept(&self, actor: &ActorId) -> Option<&(u64, Attestation)> {
        self.kept.get(actor)
    }

    /// Takes the attested tops a received batch proved (from [`ChatDoc::receive_sync_message`]
    /// or [`ChatDoc::load_untrusted`]), once `doc` has applied it. Returns those to persist now:
    /// newer than what was kept, and their change applied (also those that waited and whose
    /// change applied since). This device's own are skipped: it signs its own when sending.
    pub fn take_received(
        &mut self,
        received: Vec<ActorTop>,
        doc: &mut ChatDoc,
        own: &DeviceId,
    ) -> Vec<ActorTop> {
        let mut persist = Vec::new();
        for top in received {
            if authorship::device_of_actor(&top.actor).as_ref() == Some(own) {
                continue;
            }
            if doc.has_change(&top.attestation.hash) {
                self.keep(top, &mut persist);
            } else if self
                .waiting
                .get(&top.actor)
                .is_none_or(|w| w.seq < top.seq)
            {
                self.waiting.insert(top.actor.clone(), top);
            }
        }
        let applied: Vec<ActorId> = self
            .waiting
            .iter()
            .filter(|(_, top)| doc.has_change(&top.attestation.hash))
            .map(|(actor, _)| actor.clone())
            .collect();
        for actor in applied {
            if let Some(top) = self.waiting.remove(&actor) {
                self.keep(top, &mut persist);
            }
        }
        persist
    }

    fn keep(&mut self, top: ActorTop, persist: &mut Vec<ActorTop>) {
        if self.kept.get(&top.actor).is_some_and(|(seq, _)| *seq >= top.seq) {
            return;
        }
        self.kept
            .insert(top.actor.clone(), (top.seq, top.attestation.clone()));
        persist.push(top);
    }

    /// Completes a sync message generated for the replica whose progress `state` tracks (see
    /// the module docs) and seals it with the attestations of every actor in it.
    pub fn seal_sync_message(
        &mut self,
        doc: &mut ChatDoc,
        state: &automerge::sync::State,
        message: &[u8],
        own: &DeviceId,
        sign: &SignFn<'_>,
    ) -> Result<Vec<u8>, ModelError> {
        let mut decoded = automerge::sync::Message::decode(message)
            .map_err(|e| ModelError::Invalid(format!("cannot read own sync message: {e}")))?;
        let Some(carried) = carried_changes(&decoded)? else {
            // A whole document: every actor's attestation.
            let attestations = self.for_every_actor(doc, own, sign);
            return Ok(authorship::seal(&attestations, message));
        };
        if carried.is_empty() {
            return Ok(authorship::seal(&[], message));
        }
        let mut in_batch: HashSet<ChangeHash> = carried.iter().map(|c| c.hash).collect();
        // Newest change of each actor in the batch, by sequence number.
        let mut newest: BTreeMap<ActorId, (u64, ChangeHash)> = BTreeMap::new();
        let note = |newest: &mut BTreeMap<ActorId, (u64, ChangeHash)>,
                        c: &authorship::ChangeMeta| {
            let entry = newest.entry(c.actor.clone()).or_insert((c.seq, c.hash));
            if c.seq > entry.0 {
                *entry = (c.seq, c.hash);
            }
        };
        for c in &carried {
            note(&mut newest, c);
        }
        let mut added: Vec<automerge::Change> = Vec::new();
        let mut not_shared: Option<HashSet<ChangeHash>> = None;
        let mut done: HashSet<ActorId> = HashSet::new();
        let mut attestations = Vec::new();
        loop {
            let Some(actor) = newest.keys().find(|a| !done.contains(*a)).cloned() else {
                break;
            };
            done.insert(actor.clone());
            if authorship::device_of_actor(&actor).as_ref() == Some(own) {
                let (seq, hash) = newest[&actor];
                if let Some(attestation) = self.own(doc, &actor, seq, hash, sign) {
                    attestations.push(attestation);
                }
                continue;
            }
            let Some((_, attestation)) = self.kept.get(&actor).cloned() else {
                // Nothing vouches for this actor's changes here: the batch goes out unproven.
                continue;
            };
            if !in_batch.contains(&attestation.hash) {
                let shared = not_shared
                    .get_or_insert_with(|| not_shared_with(doc, &state.shared_heads));
                for change in path_to(doc, attestation.hash, &in_batch, shared) {
                    in_batch.insert(change.hash());
                    note(
                        &mut newest,
                        &authorship::ChangeMeta {
                            hash: change.hash(),
                            actor: change.actor_id().clone(),
                            seq: change.seq(),
                            deps: Vec::new(),
                        },
                    );
                    added.push(change);
                }
            }
            attestations.push(attestation);
        }
        if added.is_empty() {
            return Ok(authorship::seal(&attestations, message));
        }
        // Dependencies before the changes that need them, so nothing waits needlessly.
        added.reverse();
        let mut chunks: Vec<Vec<u8>> = decoded.changes.iter().map(<[u8]>::to_vec).collect();
        let extra = added.iter().map(|c| c.raw_bytes().to_vec());
        match decoded.version {
            automerge::sync::MessageVersion::V1 => chunks.extend(extra),
            _ => {
                let mut joined = chunks.concat();
                extra.for_each(|bytes| joined.extend_from_slice(&bytes));
                chunks = vec![joined];
            }
        }
        decoded.changes = chunks.into();
        Ok(authorship::seal(&attestations, &decoded.encode()))
    }

    /// Seals a whole document with the attestations of every actor in it.
    pub fn seal_document(
        &mut self,
        doc: &mut ChatDoc,
        body: &[u8],
        own: &DeviceId,
        sign: &SignFn<'_>,
    ) -> Vec<u8> {
        let attestations = self.for_every_actor(doc, own, sign);
        authorship::seal(&attestations, body)
    }

    fn for_every_actor(
        &mut self,
        doc: &mut ChatDoc,
        own: &DeviceId,
        sign: &SignFn<'_>,
    ) -> Vec<Attestation> {
        let mut out = Vec::new();
        for actor in doc.actors() {
            if authorship::device_of_actor(&actor).as_ref() == Some(own) {
                let newest = if doc.actor() == &actor {
                    doc.last_local_change()
                } else {
                    match self.kept.get(&actor) {
                        Some((seq, a)) => Some((*seq, a.hash)),
                        None => doc.newest_change_of(&actor),
                    }
                };
                if let Some((seq, hash)) = newest
                    && let Some(a) = self.own(doc, &actor, seq, hash, sign)
                {
                    out.push(a);
                }
            } else if let Some((_, attestation)) = self.kept.get(&actor) {
                out.push(attestation.clone());
            }
        }
        out
    }

    /// This device's attestation of exactly its change `hash` (sequence `seq` of `actor`):
    /// kept if it was signed before, else signed now. Never a newer one: the receiver may
    /// have no way to follow it back to `hash`.
    fn own(
        &mut self,
        doc: &mut ChatDoc,
        actor: &ActorId,
        seq: u64,
        hash: ChangeHash,
        sign: &SignFn<'_>,
    ) -> Option<Attestation> {
        if let Some((kept, attestation)) = self.kept.get(actor)
            && *kept == seq
        {
            return Some(attestation.clone());
        }
        let signature = sign(&authorship::statement(doc.id(), &hash))?;
        let attestation = Attestation { hash, signature };
        if self.kept.get(actor).is_none_or(|(kept, _)| *kept < seq) {
            self.kept.insert(actor.clone(), (seq, attestation.clone()));
        }
        Some(attestation)
    }
}

/// The changes a sync message carries; `None` when it carries a whole document.
fn carried_changes(
    message: &automerge::sync::Message,
) -> Result<Option<Vec<authorship::ChangeMeta>>, ModelError> {
    let mut out = Vec::new();
    for entry in message.changes.iter() {
        for (document, chunk) in crate::wire_check::split_chunks(entry)
            .map_err(|e| ModelError::Invalid(format!("cannot read own sync message: {e}")))?
        {
            if document {
                return Ok(None);
            }
            let change = automerge::Change::try_from(chunk)
                .map_err(|e| ModelError::Invalid(format!("cannot read own change: {e}")))?;
            out.push(authorship::ChangeMeta {
                hash: change.hash(),
                actor: change.actor_id().clone(),
                seq: change.seq(),
                deps: change.deps().to_vec(),
            });
        }
    }
    Ok(Some(out))
}

/// The changes of `doc` that are not ancestors of `shared` (heads both sides are known to
/// have): what the other side may lack.
fn not_shared_with(doc: &mut ChatDoc, shared: &[ChangeHash]) -> HashSet<ChangeHash> {
    let shared: Vec<ChangeHash> = shared
        .iter()
        .copied()
        .filter(|h| doc.has_change(h))
        .collect();
    doc.automerge_mut()
        .document()
        .get_changes_meta(&shared)
        .into_iter()
        .map(|m| m.hash)
        .collect()
}

/// The changes from `top` back through its dependencies that are neither in the batch nor
/// shared, `top` first: what leads from the batch to the attested change.
fn path_to(
    doc: &mut ChatDoc,
    top: ChangeHash,
    in_batch: &HashSet<ChangeHash>,
    not_shared: &HashSet<ChangeHash>,
) -> Vec<automerge::Change> {
    let mut out = Vec::new();
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    let mut stack = vec![top];
    while let Some(hash) = stack.pop() {
        if in_batch.contains(&hash) || !not_shared.contains(&hash) || !seen.insert(hash) {
            continue;
        }
        let Some(change) = doc.automerge_mut().get_change_by_hash(&hash) else {
            continue;
        };
        stack.extend(change.deps().iter().copied());
        out.push(change);
    }
    out
}
