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

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{ActorId, ChangeHash};

use crate::{
    ChatDoc, DeviceId, ModelError, Snapshot,
    authorship::{self, ActorTop, Attestation},
};

/// Signs a statement with this device's key; `None` if the key cannot sign (the batch then goes
/// out unproven, and the receiver refuses it without blame).
pub type SignFn<'a> = dyn Fn(&[u8]) -> Option<Vec<u8>> + 'a;

/// What storage must do after a receive ([`Proofs::take_received`]).
#[derive(Debug, Default)]
pub struct ProofWrites {
    /// Attestations newly in charge: store them before the chunk with their changes.
    pub store: Vec<ActorTop>,
    /// Attestations (actor, sequence number) two generations old: forget them after the chunk
    /// of this receive, in storage order. The one they were replaced by vouches for their
    /// changes and is in storage behind the chunk with its change, and so stays in charge
    /// whatever a crash keeps.
    pub forget: Vec<(ActorId, u64)>,
}

/// The attestations one replica keeps for one chat.
#[derive(Debug, Default)]
pub struct Proofs {
    /// Per actor, the newest attestation of an applied change: sequence number and attestation.
    kept: BTreeMap<ActorId, (u64, Attestation)>,
    /// Per actor, the sequence number of the stored attestation the kept one replaced.
    replaced: BTreeMap<ActorId, u64>,
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

    /// Forgets the attestations whose change `doc` no longer holds, after changes were dropped
    /// from it ([`ChatDoc::exclude_banned`]). The actor's remaining changes then go out only
    /// with a newer attestation (its device signs its own when sending).
    pub fn retain_held(&mut self, doc: &mut ChatDoc) {
        self.kept.retain(|_, (_, a)| doc.has_change(&a.hash));
        self.waiting.clear();
    }

    /// The attestations kept for every actor of `actor`'s device, that of `actor` first.
    pub fn kept_by_device_of(&self, actor: &ActorId) -> Vec<Attestation> {
        let device = authorship::device_of_actor(actor);
        let mut out: Vec<Attestation> = self
            .kept
            .get(actor)
            .map(|(_, a)| a.clone())
            .into_iter()
            .collect();
        out.extend(
            self.kept
                .iter()
                .filter(|(other, _)| {
                    *other != actor && authorship::device_of_actor(other) == device
                })
                .map(|(_, (_, a))| a.clone()),
        );
        out
    }

    /// The attestation kept for `actor`, if any: sequence number and attestation.
    pub fn kept(&self, actor: &ActorId) -> Option<&(u64, Attestation)> {
        self.kept.get(actor)
    }

    /// Takes the attested tops a received batch proved (from [`ChatDoc::receive_sync_message`]
    /// or [`ChatDoc::load_untrusted`]), once `doc` has applied it. Returns those to persist now
    /// (newer than what was kept, and their change applied; also those that waited and whose
    /// change applied since), and those storage may forget. This device's own are skipped: it
    /// signs its own when sending.
    pub fn take_received(
        &mut self,
        received: Vec<ActorTop>,
        doc: &mut ChatDoc,
        own: &DeviceId,
    ) -> ProofWrites {
        let mut persist = ProofWrites::default();
        for top in received {
            if authorship::device_of_actor(&top.actor).as_ref() == Some(own) {
                continue;
            }
            if doc.has_change(&top.attestation.hash) {
                self.keep(top, &mut persist);
            } else if self.waiting.get(&top.actor).is_none_or(|w| w.seq < top.seq) {
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

    fn keep(&mut self, top: ActorTop, persist: &mut ProofWrites) {
        if self
            .kept
            .get(&top.actor)
            .is_some_and(|(seq, _)| *seq >= top.seq)
        {
            return;
        }
        if let Some((old, _)) = self
            .kept
            .insert(top.actor.clone(), (top.seq, top.attestation.clone()))
            && let Some(older) = self.replaced.insert(top.actor.clone(), old)
        {
            persist.forget.push((top.actor.clone(), older));
        }
        persist.store.push(top);
    }

    /// Completes a sync message generated for the replica whose progress `state` tracks (see
    /// the module docs) and seals it with the attestations of every actor in it. Changes this
    /// replica cannot prove yet ([`Proofs::provable`]) are taken out, with everything in the
    /// message built on them. When that leaves a message that carried changes with none, there
    /// is nothing to send (`None`): the other side would only ask for them again, and the
    /// conversation would go round and round for as long as the proof takes. It goes quiet
    /// instead; once this replica's heads change, or the chat counts as stalled and both sides
    /// start afresh (`net/progress.rs` in the daemon), the changes are offered again.
    ///
    /// A whole document goes as it is when this replica can prove all of it. Otherwise, with
    /// the other side's heads known, the message carries instead the changes it may lack, as a
    /// batch like any other: only those need proving, and a change this replica cannot prove
    /// (its attestation went with changes dropped for an equivocation, say) holds up nothing
    /// the other side already has. With the heads unknown, the document is cut to what this
    /// replica can prove.
    pub fn seal_sync_message(
        &mut self,
        doc: &mut ChatDoc,
        state: &automerge::sync::State,
        message: &[u8],
        own: &DeviceId,
        sign: &SignFn<'_>,
    ) -> Result<Option<Vec<u8>>, ModelError> {
        let mut decoded = automerge::sync::Message::decode(message)
            .map_err(|e| ModelError::Invalid(format!("cannot read own sync message: {e}")))?;
        let (carried, replaced) = match carried_changes(&decoded)? {
            Some(carried) => (carried, false),
            None => {
                // A whole document (Automerge sends one when the other side lacks most of it).
                let heads = match self.cut(doc, own) {
                    Ok(None) => {
                        let attestations = self.for_every_actor(doc, own, sign);
                        return Ok(Some(authorship::seal(&attestations, message)));
                    }
                    Ok(Some(heads)) => Some(heads),
                    // Nothing provable to send yet: as for a batch whose every change was
                    // withheld.
                    Err(ModelError::Unproven(_)) => None,
                    Err(e) => return Err(e),
                };
                match state.their_heads.as_deref() {
                    // The other side's heads are known: what it may lack are the changes they
                    // do not reach, and only those need proving. They go as a batch.
                    Some(theirs) if !theirs.is_empty() => {
                        (changes_they_lack(doc, state, theirs), true)
                    }
                    _ => {
                        let Some(heads) = heads else {
                            return Ok(None);
                        };
                        let (part, attestations) = self.part_at(doc, &heads, own, sign)?;
                        decoded.changes = vec![part.save()].into();
                        return Ok(Some(authorship::seal(&attestations, &decoded.encode())));
                    }
                }
            }
        };
        if carried.is_empty() && asks_for_what_was_withheld(doc, state) {
            // Automerge does not send a change twice in one conversation, and the other side
            // asks for one this replica held back: the two would go round and round.
            return Ok(None);
        }
        if carried.is_empty() && !replaced {
            return Ok(Some(authorship::seal(&[], message)));
        }
        let lacks_nothing = carried.is_empty();
        let mut batch = Batch::new(carried);
        batch.changed = replaced;
        let mut not_shared: Option<HashSet<ChangeHash>> = None;
        'settle: loop {
            let newest = batch.newest_per_actor();
            for (actor, (_, newest_hash)) in newest {
                // The change whose attestation goes along: this device signs its own newest in
                // the batch; another device's is the one kept.
                let top = if authorship::device_of_actor(&actor).as_ref() == Some(own) {
                    newest_hash
                } else {
                    let kept = self.kept.get(&actor).map(|k| k.0);
                    let too_new = batch.of_actor_beyond(&actor, kept);
                    if !too_new.is_empty() {
                        let shared = not_shared.get_or_insert_with(|| not_shared_in(doc, state));
                        match self
                            .vouched_by_another_actor(doc, &actor, &too_new, &batch, shared, own)
                        {
                            Some(path) if path.is_empty() => continue,
                            Some(path) => batch.add(path),
                            None => batch.drop_with_dependents(too_new),
                        }
                        continue 'settle;
                    }
                    match self.kept.get(&actor) {
                        Some((_, attestation)) => attestation.hash,
                        None => continue,
                    }
                };
                let shared = not_shared.get_or_insert_with(|| not_shared_in(doc, state));
                let floor = batch.lowest_start_op(&actor);
                let path = path_to(doc, top, &batch, shared, floor);
                if path.is_empty() {
                    continue;
                }
                // A change taken out before stays out: what is built on it cannot be proven.
                if path
                    .iter()
                    .all(|c| self.provable(c, own) && !batch.dropped.contains(&c.hash()))
                {
                    batch.add(path);
                } else {
                    // The way to the attested change passes a change this replica cannot
                    // prove: the actor's changes wait until it can.
                    let all = batch.of_actor_beyond(&actor, Some(0));
                    batch.drop_with_dependents(all);
                }
                continue 'settle;
            }
            break;
        }
        if batch.changes.is_empty() && !lacks_nothing {
            return Ok(None);
        }
        let attestations = self.attest(doc, batch.newest_per_actor(), own, sign);
        if !batch.changed {
            return Ok(Some(authorship::seal(&attestations, message)));
        }
        let changes = batch.into_chunks();
        decoded.changes = match decoded.version {
            automerge::sync::MessageVersion::V1 => changes.into(),
            _ if changes.is_empty() => automerge::sync::ChunkList::empty(),
            _ => vec![changes.concat()].into(),
        };
        Ok(Some(authorship::seal(&attestations, &decoded.encode())))
    }

    /// Changes of `actor` that its own kept attestation does not cover (`uncovered`, all in the
    /// batch) may be covered by the attestation kept for another actor of the same device: a
    /// change the device wrote later, under a new actor, built on them. That is how the rest of
    /// an actor's changes is proven once the attestation kept for it went with changes dropped
    /// for an equivocation ([`Proofs::retain_held`]). Returns the changes to add to the batch
    /// for the receiver to follow such an attestation down to them (empty: nothing to add), or
    /// `None` when no kept attestation covers them.
    fn vouched_by_another_actor(
        &self,
        doc: &mut ChatDoc,
        actor: &ActorId,
        uncovered: &[ChangeHash],
        batch: &Batch,
        not_shared: &HashSet<ChangeHash>,
        own: &DeviceId,
    ) -> Option<Vec<automerge::Change>> {
        let device = authorship::device_of_actor(actor)?;
        let floor = batch.lowest_start_op(actor);
        let candidates: Vec<ChangeHash> = self
            .kept
            .iter()
            .filter(|(other, _)| {
                *other != actor && authorship::device_of_actor(other).as_ref() == Some(&device)
            })
            .map(|(_, (_, attestation))| attestation.hash)
            .collect();
        for top in candidates {
            let path = path_to(doc, top, batch, not_shared, floor);
            let of_device = |c: &automerge::Change| {
                authorship::device_of_actor(c.actor_id()).as_ref() == Some(&device)
            };
            let provable = path.iter().all(|c| {
                (of_device(c) || self.provable(c, own)) && !batch.dropped.contains(&c.hash())
            });
            if provable && reaches(top, batch, &path, uncovered) {
                return Some(path);
            }
        }
        None
    }

    /// The changes in `metas` that `provable` leaves out but an attestation kept for another
    /// actor of the same device reaches. One walk back from the kept attestations of each such
    /// device.
    fn vouched_by_devices(
        &self,
        metas: &[automerge::ChangeMetadata<'_>],
        provable: &dyn Fn(&automerge::ChangeMetadata<'_>) -> bool,
    ) -> HashSet<ChangeHash> {
        let devices: HashSet<DeviceId> = metas
            .iter()
            .filter(|m| !provable(m))
            .filter_map(|m| authorship::device_of_actor(&m.actor))
            .collect();
        let by_hash: HashMap<ChangeHash, &automerge::ChangeMetadata<'_>> =
            metas.iter().map(|m| (m.hash, m)).collect();
        let mut vouched = HashSet::new();
        for device in devices {
            let of_device =
                |actor: &ActorId| authorship::device_of_actor(actor).as_ref() == Some(&device);
            let mut stack: Vec<ChangeHash> = self
                .kept
                .iter()
                .filter(|(actor, _)| of_device(actor))
                .map(|(_, (_, attestation))| attestation.hash)
                .collect();
            let mut seen: HashSet<ChangeHash> = HashSet::new();
            while let Some(hash) = stack.pop() {
                if !seen.insert(hash) {
                    continue;
                }
                let Some(meta) = by_hash.get(&hash) else {
                    continue;
                };
                if of_device(&meta.actor) {
                    vouched.insert(hash);
                }
                stack.extend(meta.deps.iter().copied());
            }
        }
        vouched
    }

    /// Whether this replica can prove `change` to another: its own device's changes it signs
    /// itself; another device's only up to the attestation kept for the actor (an actor's
    /// changes form a chain, each built on the one before).
    fn provable(&self, change: &automerge::Change, own: &DeviceId) -> bool {
        authorship::device_of_actor(change.actor_id()).as_ref() == Some(own)
            || self
                .kept
                .get(change.actor_id())
                .is_some_and(|(seq, _)| change.seq() <= *seq)
    }

    /// The heads of the part of `doc` this replica can prove to another, or `None` when it can
    /// prove all of it. Costs a walk over every change's metadata; for whole documents only.
    ///
    /// A change is out if it cannot be proven ([`Proofs::provable`]), if it is built on one
    /// that is out, or if the attested change of its actor is out (then nothing vouches for it).
    fn provable_heads(&self, doc: &mut ChatDoc, own: &DeviceId) -> Option<Vec<ChangeHash>> {
        let metas = doc.automerge_mut().document().get_changes_meta(&[]);
        let own_actor = |m: &automerge::ChangeMetadata<'_>| {
            authorship::device_of_actor(&m.actor).as_ref() == Some(own)
        };
        let provable_meta = |m: &automerge::ChangeMetadata<'_>| {
            own_actor(m)
                || self
                    .kept
                    .get(m.actor.as_ref())
                    .is_some_and(|(seq, _)| m.seq <= *seq)
        };
        if metas.iter().all(provable_meta) {
            return None;
        }
        // Changes of an actor whose own attestation is gone may be vouched for by the device's
        // attestation of a later change under another actor (see `vouched_by_another_actor`).
        let vouched = self.vouched_by_devices(&metas, &provable_meta);
        let provable_meta =
            |m: &automerge::ChangeMetadata<'_>| provable_meta(m) || vouched.contains(&m.hash);
        let mut out: HashSet<ChangeHash> = HashSet::new();
        loop {
            let before = out.len();
            // In causal order, so one pass carries "built on" all the way.
            for m in &metas {
                let attested_out = !own_actor(m)
                    && self
                        .kept
                        .get(m.actor.as_ref())
                        .is_some_and(|(_, a)| out.contains(&a.hash));
                if !out.contains(&m.hash)
                    && (!provable_meta(m) || attested_out || m.deps.iter().any(|d| out.contains(d)))
                {
                    out.insert(m.hash);
                }
            }
            if out.len() == before {
                break;
            }
        }
        let mut has_children: HashSet<ChangeHash> = HashSet::new();
        for m in metas.iter().filter(|m| !out.contains(&m.hash)) {
            has_children.extend(m.deps.iter().copied());
        }
        Some(
            metas
                .iter()
                .filter(|m| !out.contains(&m.hash) && !has_children.contains(&m.hash))
                .map(|m| m.hash)
                .collect(),
        )
    }

    /// The document to send whole to a replica that lacks it: a copy of `doc` cut to what this
    /// replica can prove, and the attestations of every actor in it.
    pub fn document_to_send(
        &mut self,
        doc: &mut ChatDoc,
        own: &DeviceId,
        sign: &SignFn<'_>,
    ) -> Result<(Snapshot, Vec<Attestation>), ModelError> {
        match self.cut(doc, own)? {
            None => {
                let mut snapshot = doc.snapshot();
                let newest = newest_per_actor(snapshot.automerge_mut().document());
                let attestations = self.attest(doc, newest, own, sign);
                Ok((snapshot, attestations))
            }
            Some(heads) => self.part_at(doc, &heads, own, sign),
        }
    }

    /// Where a whole document must be cut before it goes out: `None` if it can go as it is,
    /// else the heads of what this replica can prove ([`Proofs::provable_heads`]). Automerge
    /// saves the changes still waiting for their dependencies too: they are nobody's to vouch
    /// for here, so a document with some is cut at its heads.
    fn cut(
        &self,
        doc: &mut ChatDoc,
        own: &DeviceId,
    ) -> Result<Option<Vec<ChangeHash>>, ModelError> {
        match self.provable_heads(doc, own) {
            None if nothing_waits(doc) => Ok(None),
            None => Ok(Some(doc.heads())),
            Some(heads) if heads.is_empty() => Err(ModelError::Unproven(
                "nothing of this chat can be proven here yet".into(),
            )),
            Some(heads) => Ok(Some(heads)),
        }
    }

    /// A copy of `doc` as it was at `heads`, with the attestations of every actor in it.
    fn part_at(
        &mut self,
        doc: &mut ChatDoc,
        heads: &[ChangeHash],
        own: &DeviceId,
        sign: &SignFn<'_>,
    ) -> Result<(Snapshot, Vec<Attestation>), ModelError> {
        let mut snapshot = doc.snapshot_at(heads)?;
        let newest = newest_per_actor(snapshot.automerge_mut().document());
        let attestations = self.attest(doc, newest, own, sign);
        Ok((snapshot, attestations))
    }

    /// Attestations for every actor of `doc`, each for its newest change there.
    fn for_every_actor(
        &mut self,
        doc: &mut ChatDoc,
        own: &DeviceId,
        sign: &SignFn<'_>,
    ) -> Vec<Attestation> {
        let newest = newest_per_actor(doc.automerge_mut().document());
        self.attest(doc, newest, own, sign)
    }

    /// This device's own attestations for `newest` (actor -> newest change in what is sent),
    /// and the kept ones of other devices' actors.
    fn attest(
        &mut self,
        doc: &mut ChatDoc,
        newest: BTreeMap<ActorId, (u64, ChangeHash)>,
        own: &DeviceId,
        sign: &SignFn<'_>,
    ) -> Vec<Attestation> {
        let mut out = Vec::new();
        for (actor, (seq, hash)) in newest {
            if authorship::device_of_actor(&actor).as_ref() == Some(own) {
                out.extend(self.own(doc, &actor, seq, hash, sign));
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

/// The newest change of each actor in `doc`: sequence number and hash.
fn newest_per_actor(doc: &automerge::Automerge) -> BTreeMap<ActorId, (u64, ChangeHash)> {
    let mut newest: BTreeMap<ActorId, (u64, ChangeHash)> = BTreeMap::new();
    for m in doc.get_changes_meta(&[]) {
        let entry = newest
            .entry(m.actor.into_owned())
            .or_insert((m.seq, m.hash));
        if m.seq > entry.0 {
            *entry = (m.seq, m.hash);
        }
    }
    newest
}

/// A change carried by a message, with its bytes.
type Carried = (authorship::ChangeMeta, Vec<u8>, u64);

/// Whether no change waits in Automerge's queue for its dependencies (every such change has a
/// missing dependency).
fn nothing_waits(doc: &mut ChatDoc) -> bool {
    doc.automerge_mut().get_missing_deps(&[]).is_empty()
}

/// Whether the other side asks for changes this replica has: in a message that carries none,
/// those are changes it held back earlier in the conversation (unprovable yet).
fn asks_for_what_was_withheld(doc: &mut ChatDoc, state: &automerge::sync::State) -> bool {
    state
        .their_need
        .iter()
        .flatten()
        .any(|hash| doc.has_change(hash))
}

/// The changes of `doc` the other side of the conversation `state` tracks may lack, in causal
/// order, each with its bytes, worked out as Automerge does for a batch: those its heads
/// (`theirs`, some perhaps unknown here) do not reach and, since the last sync, its Bloom
/// filter does not hold, with everything built on them, and whatever it asked for.
fn changes_they_lack(
    doc: &mut ChatDoc,
    state: &automerge::sync::State,
    theirs: &[ChangeHash],
) -> Vec<Carried> {
    let mut known: Vec<ChangeHash> = theirs
        .iter()
        .copied()
        .filter(|h| doc.has_change(h))
        .collect();
    let haves = state.their_have.as_deref().unwrap_or_default();
    for have in haves {
        known.extend(have.last_sync.iter().filter(|h| doc.has_change(h)));
    }
    let need: HashSet<ChangeHash> = state.their_need.iter().flatten().copied().collect();
    let mut sending: HashSet<ChangeHash> = HashSet::new();
    let mut out = Vec::new();
    for change in doc.automerge_mut().get_changes(&known) {
        let hash = change.hash();
        let held = haves.iter().any(|have| have.bloom.contains_hash(&hash));
        if !held || need.contains(&hash) || change.deps().iter().any(|d| sending.contains(d)) {
            sending.insert(hash);
            out.push((
                meta_of(&change),
                change.raw_bytes().to_vec(),
                change.start_op().get(),
            ));
        }
    }
    out
}

/// The changes a sync message carries, each with its bytes; `None` when it carries a whole
/// document.
fn carried_changes(message: &automerge::sync::Message) -> Result<Option<Vec<Carried>>, ModelError> {
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
            out.push((meta_of(&change), chunk.to_vec(), change.start_op().get()));
        }
    }
    Ok(Some(out))
}

fn meta_of(change: &automerge::Change) -> authorship::ChangeMeta {
    authorship::ChangeMeta {
        hash: change.hash(),
        actor: change.actor_id().clone(),
        seq: change.seq(),
        deps: change.deps().to_vec(),
    }
}

/// The changes of an outgoing message while it is being made provable, in the order they go.
struct Batch {
    changes: Vec<Carried>,
    /// The dependencies of each change in the batch.
    deps: HashMap<ChangeHash, Vec<ChangeHash>>,
    dropped: HashSet<ChangeHash>,
    /// Whether anything was added or dropped.
    changed: bool,
}

impl Batch {
    fn new(changes: Vec<Carried>) -> Batch {
        let deps = changes
            .iter()
            .map(|(m, _, _)| (m.hash, m.deps.clone()))
            .collect();
        Batch {
            changes,
            deps,
            dropped: HashSet::new(),
            changed: false,
        }
    }

    /// The lowest start op of `actor`'s changes in the batch: nothing with a lower one is built
    /// on any of them.
    fn lowest_start_op(&self, actor: &ActorId) -> u64 {
        self.changes
            .iter()
            .filter(|(m, _, _)| &m.actor == actor)
            .map(|(_, _, start)| *start)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The dependencies of a change in the batch; `None` if it is not in it.
    fn deps_of(&self, hash: &ChangeHash) -> Option<&[ChangeHash]> {
        self.deps.get(hash).map(Vec::as_slice)
    }

    /// The changes of `actor` with a sequence number above `seq` (all of them for `None`).
    fn of_actor_beyond(&self, actor: &ActorId, seq: Option<u64>) -> Vec<ChangeHash> {
        self.changes
            .iter()
            .filter(|(m, _, _)| &m.actor == actor && seq.is_none_or(|s| m.seq > s))
            .map(|(m, _, _)| m.hash)
            .collect()
    }

    fn newest_per_actor(&self) -> BTreeMap<ActorId, (u64, ChangeHash)> {
        let mut newest: BTreeMap<ActorId, (u64, ChangeHash)> = BTreeMap::new();
        for (m, _, _) in &self.changes {
            let entry = newest.entry(m.actor.clone()).or_insert((m.seq, m.hash));
            if m.seq > entry.0 {
                *entry = (m.seq, m.hash);
            }
        }
        newest
    }

    /// Takes out `hashes` and every change in the batch built on them.
    fn drop_with_dependents(&mut self, hashes: Vec<ChangeHash>) {
        // One walk over the batch's dependents, whatever order the batch is in.
        let mut dependents: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
        for (m, _, _) in &self.changes {
            for dep in &m.deps {
                dependents.entry(*dep).or_default().push(m.hash);
            }
        }
        let mut out: HashSet<ChangeHash> = hashes.iter().copied().collect();
        let mut stack = hashes;
        while let Some(hash) = stack.pop() {
            for dependent in dependents.get(&hash).into_iter().flatten() {
                if out.insert(*dependent) {
                    stack.push(*dependent);
                }
            }
        }
        self.changes.retain(|(m, _, _)| !out.contains(&m.hash));
        self.deps.retain(|h, _| !out.contains(h));
        self.dropped.extend(out);
        self.changed = true;
    }

    /// Adds changes found by [`path_to`] (the attested change first): dependencies go first.
    fn add(&mut self, path: Vec<automerge::Change>) {
        for change in path.into_iter().rev() {
            if let std::collections::hash_map::Entry::Vacant(entry) = self.deps.entry(change.hash())
            {
                entry.insert(change.deps().to_vec());
                self.changes.push((
                    meta_of(&change),
                    change.raw_bytes().to_vec(),
                    change.start_op().get(),
                ));
                self.changed = true;
            }
        }
    }

    fn into_chunks(self) -> Vec<Vec<u8>> {
        self.changes
            .into_iter()
            .map(|(_, bytes, _)| bytes)
            .collect()
    }
}

/// Whether every change of `targets` is reached from `top` through dependencies within the
/// batch and `path`.
fn reaches(
    top: ChangeHash,
    batch: &Batch,
    path: &[automerge::Change],
    targets: &[ChangeHash],
) -> bool {
    let in_path: HashMap<ChangeHash, &[ChangeHash]> =
        path.iter().map(|c| (c.hash(), c.deps())).collect();
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    let mut stack = vec![top];
    while let Some(hash) = stack.pop() {
        if !seen.insert(hash) {
            continue;
        }
        if let Some(deps) = batch.deps_of(&hash).or_else(|| in_path.get(&hash).copied()) {
            stack.extend(deps.iter().copied());
        }
    }
    targets.iter().all(|t| seen.contains(t))
}

/// The changes of `doc` the other side of the conversation `state` tracks may lack: those its
/// last shared heads and its last heads do not reach.
fn not_shared_in(doc: &mut ChatDoc, state: &automerge::sync::State) -> HashSet<ChangeHash> {
    let known = state
        .shared_heads
        .iter()
        .chain(state.their_heads.iter().flatten());
    not_shared_with(doc, known)
}

/// The changes of `doc` that are not ancestors of `shared` (heads both sides are known to
/// have): what the other side may lack.
fn not_shared_with<'h>(
    doc: &mut ChatDoc,
    shared: impl Iterator<Item = &'h ChangeHash>,
) -> HashSet<ChangeHash> {
    let shared: Vec<ChangeHash> = shared.copied().filter(|h| doc.has_change(h)).collect();
    doc.automerge_mut()
        .document()
        .get_changes_meta(&shared)
        .into_iter()
        .map(|m| m.hash)
        .collect()
}

/// The changes from `top` back through its dependencies that are neither in the batch nor
/// shared, `top` first: what the batch lacks for the receiver to follow the dependencies from
/// the attested change `top` down to every change of the actor it covers. Changes in the batch
/// are walked through (a hole can sit below one); shared ones end the walk, and so do changes
/// whose start op is below `floor` (the lowest of the actor's changes in the batch): nothing
/// below it is built on them, so no path to them passes there, and history the receiver may
/// well hold is never offered.
fn path_to(
    doc: &mut ChatDoc,
    top: ChangeHash,
    batch: &Batch,
    not_shared: &HashSet<ChangeHash>,
    floor: u64,
) -> Vec<automerge::Change> {
    let mut out = Vec::new();
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    let mut stack = vec![top];
    while let Some(hash) = stack.pop() {
        if !not_shared.contains(&hash) || !seen.insert(hash) {
            continue;
        }
        if let Some(deps) = batch.deps_of(&hash) {
            stack.extend(deps.iter().copied());
            continue;
        }
        let Some(change) = doc.automerge_mut().get_change_by_hash(&hash) else {
            continue;
        };
        if change.start_op().get() < floor {
            continue;
        }
        stack.extend(change.deps().iter().copied());
        out.push(change);
    }
    out
}
