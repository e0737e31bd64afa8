//! Equivocation: a device signing two different changes with one actor and sequence number,
//! and giving one to some devices and the other to the rest.
//!
//! Automerge holds one change per actor and sequence number, and the two changes number their
//! operations alike, so no replica can hold both. Left alone, the two groups of devices could
//! never again exchange that chat's later changes: everything each group writes builds on the
//! change it took.
//!
//! **The rule.** Once a replica holds [`Evidence`] (both changes, each with the equivocating
//! device's signature over it or a later change of the same actor), it keeps none of that
//! actor's changes from that sequence number on, nor any change built on one of them
//! ([`Bans`], applied by `ChatDoc::exclude_banned`). What a replica keeps then depends only on
//! the evidence and the changes, never on which of the two it took first: replicas with the same
//! evidence and the same changes hold the same document. Each honest device writes again, under
//! a new actor, what it loses of its own (its messages, edits, reactions, read marker, a
//! rename), so nothing an honest device wrote is lost for good, only written a second time.
//!
//! **The evidence travels.** A replica that refuses changes because of a ban answers with the
//! evidence, and the other replica checks it on its own ([`Evidence::check`]): the signatures
//! are the equivocating device's, and no honest device can make them. A replica that received
//! only one of the two changes learns of the other this way.

use std::collections::{BTreeMap, HashMap, VecDeque};

use automerge::{ActorId, Change, ChangeHash};

use crate::{
    ChatDoc, ChatId, DeviceId, ModelError,
    authorship::{self, Attestation, ChangeMeta, VerifyFn},
    wire_check,
};

/// Changes in one branch of the evidence at most: the path from a signed change down to the
/// clashing one, which holds every change of the actor in between (each builds on the one
/// before). A device that piles more than this on a branch before the clash is met is reported
/// but not resolved.
pub const MAX_BRANCH_CHANGES: usize = 2048;
/// Encoded evidence at most: it must fit a request on the wire (8 MiB).
pub const MAX_EVIDENCE_BYTES: usize = 6 << 20;
/// Equivocating actors banned per chat at most, and per device. Each is an actor with changes
/// in the chat whose device signed two changes alike; beyond this, further evidence is refused
/// (the chat stays as it is).
pub const MAX_BANS: usize = 64;
pub const MAX_BANS_PER_DEVICE: usize = 8;
/// Changes visited at most while looking for a branch's path.
const MAX_PATH_SEARCH: usize = 20_000;
const EVIDENCE_MAGIC: &[u8; 4] = b"CSe1";

/// From which sequence number on an actor's changes are not kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub actor: ActorId,
    pub seq: u64,
}

impl Ban {
    /// The device that equivocated.
    pub fn device(&self) -> Option<DeviceId> {
        authorship::device_of_actor(&self.actor)
    }
}

/// Proof that a device signed two different changes with one actor and sequence number: for
/// each of the two, the changes from one the device signed down to it, sealed with the
/// signature ([`authorship::seal`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Evidence {
    pub actor: ActorId,
    pub seq: u64,
    branches: [Vec<u8>; 2],
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evidence")
            .field("actor", &self.actor.to_hex_string())
            .field("seq", &self.seq)
            .field("bytes", &(self.branches[0].len() + self.branches[1].len()))
            .finish()
    }
}

impl Evidence {
    /// Builds the evidence when a received batch clashed with this replica's document: the
    /// batch (`body`, a sync message that passed the authorship check, and its attestations)
    /// holds a change of `actor` numbered `seq` that differs from the one in `doc`.
    /// `local_tops` are the attestations this replica keeps for the actor's device (any of its
    /// actors). `None` when either path is not found, or the evidence exceeds, the limits.
    pub fn from_clash(
        doc: &mut ChatDoc,
        local_tops: &[Attestation],
        body: &[u8],
        attestations: &[Attestation],
        actor: &ActorId,
        seq: u64,
    ) -> Option<Evidence> {
        let received = received_changes(body)?;
        let device = authorship::device_of_actor(actor)?;
        let (local_target, local_branch) = local_tops.iter().find_map(|top| {
            let path = path_down(&top.hash, actor, seq, |h| {
                doc.automerge_mut().get_change_by_hash(h)
            })?;
            let signer = authorship::device_of_actor(path.first()?.actor_id());
            let target = path.last()?.hash();
            (signer.as_ref() == Some(&device)).then(|| (target, branch(top, &path)))
        })?;
        let remote_branch = attestations.iter().find_map(|attestation| {
            let path = path_down(&attestation.hash, actor, seq, |h| {
                received
                    .get(h)
                    .cloned()
                    .or_else(|| doc.automerge_mut().get_change_by_hash(h))
            })?;
            let signer = authorship::device_of_actor(path.first()?.actor_id());
            (signer.as_ref() == Some(&device) && path.last()?.hash() != local_target)
                .then(|| branch(attestation, &path))
        })?;
        let evidence = Evidence {
            actor: actor.clone(),
            seq,
            branches: [local_branch, remote_branch],
        };
        (evidence.encoded_len() <= MAX_EVIDENCE_BYTES).then_some(evidence)
    }

    /// Checks evidence from anywhere (another device, the store) on its own: both branches
    /// sealed by the actor's device, each reaching a change of the actor with the sequence
    /// number, and the two changes different. Returns the ban it proves. Failing evidence is
    /// [`ModelError::Invalid`]: no honest device sends it.
    pub fn check(&self, chat: &ChatId, verify: &VerifyFn<'_>) -> Result<Ban, ModelError> {
        let bad = |why: &str| ModelError::Invalid(format!("bad equivocation evidence: {why}"));
        if self.encoded_len() > MAX_EVIDENCE_BYTES {
            return Err(bad("too large"));
        }
        let device = authorship::device_of_actor(&self.actor)
            .ok_or_else(|| bad("the actor names no device"))?;
        let mut found = Vec::with_capacity(2);
        for sealed in &self.branches {
            let (attestations, body) = authorship::open(sealed)?;
            let [attestation] = attestations.as_slice() else {
                return Err(bad("a branch must carry exactly one signature"));
            };
            wire_check::check_chunks(body, &wire_check::WireLimits::default())
                .map_err(|e| bad(&format!("a branch does not decode: {e}")))?;
            let chunks =
                wire_check::split_chunks(body).map_err(|e| bad(&format!("a branch: {e}")))?;
            if chunks.len() > MAX_BRANCH_CHANGES {
                return Err(bad("a branch is too long"));
            }
            let mut changes: HashMap<ChangeHash, Change> = HashMap::new();
            for (document, chunk) in chunks {
                if document {
                    return Err(bad("a branch holds a whole document"));
                }
                let change = Change::try_from(chunk)
                    .map_err(|e| bad(&format!("a change in a branch does not decode: {e}")))?;
                changes.insert(change.hash(), change);
            }
            let top = changes
                .get(&attestation.hash)
                .ok_or_else(|| bad("the signed change is not in its branch"))?;
            if authorship::device_of_actor(top.actor_id()).as_ref() != Some(&device) {
                return Err(bad("the signed change is by another device"));
            }
            if attestation.signature.len() != authorship::SIGNATURE_BYTES
                || !verify(
                    &device,
                    &authorship::statement(chat, &attestation.hash),
                    &attestation.signature,
                )
            {
                return Err(bad("a signature is not the device's"));
            }
            let path = path_down(&attestation.hash, &self.actor, self.seq, |h| {
                changes.get(h).cloned()
            })
            .ok_or_else(|| bad("a branch does not reach the clashing change"))?;
            found.push(path.last().map(Change::hash));
        }
        if found[0] == found[1] {
            return Err(bad("both branches hold the same change"));
        }
        Ok(Ban {
            actor: self.actor.clone(),
            seq: self.seq,
        })
    }

    /// Bytes of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        4 + 12 + 8 + self.actor.to_bytes().len() + self.branches[0].len() + self.branches[1].len()
    }

    /// The evidence as bytes, for the wire and the store.
    pub fn encode(&self) -> Vec<u8> {
        let actor = self.actor.to_bytes();
        let mut out =
            Vec::with_capacity(24 + actor.len() + self.branches[0].len() + self.branches[1].len());
        out.extend_from_slice(EVIDENCE_MAGIC);
        for part in [actor, &self.branches[0][..], &self.branches[1][..]] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Evidence from bytes (not yet [`check`](Self::check)ed).
    pub fn decode(bytes: &[u8]) -> Result<Evidence, ModelError> {
        let bad = |why: &str| ModelError::Invalid(format!("bad equivocation evidence: {why}"));
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(bad("too large"));
        }
        let mut rest = bytes
            .strip_prefix(EVIDENCE_MAGIC.as_slice())
            .ok_or_else(|| bad("not evidence of this version"))?;
        let mut parts = Vec::with_capacity(3);
        for _ in 0..3 {
            let (len, tail) = rest.split_at_checked(4).ok_or_else(|| bad("truncated"))?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let (part, tail) = tail.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
            parts.push(part);
            rest = tail;
        }
        let seq: [u8; 8] = rest.try_into().map_err(|_| bad("truncated"))?;
        Ok(Evidence {
            actor: ActorId::from(parts[0]),
            seq: u64::from_be_bytes(seq),
            branches: [parts[1].to_vec(), parts[2].to_vec()],
        })
    }
}

/// The actors one replica does not keep changes of, from a sequence number on, with the
/// evidence for each (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Bans {
    by_actor: BTreeMap<ActorId, Evidence>,
}

impl Bans {
    /// Takes checked evidence. Returns whether it bans more than before (a new actor, or an
    /// earlier sequence number of one already banned); the caller then drops what it bans.
    pub fn add(&mut self, evidence: Evidence) -> Result<bool, ModelError> {
        let device = authorship::device_of_actor(&evidence.actor);
        let of_device = self
            .by_actor
            .keys()
            .filter(|a| authorship::device_of_actor(a) == device)
            .count();
        match self.by_actor.get(&evidence.actor) {
            Some(known) if known.seq <= evidence.seq => return Ok(false),
            None if self.by_actor.len() >= MAX_BANS || of_device >= MAX_BANS_PER_DEVICE => {
                return Err(ModelError::TooLarge(format!(
                    "more equivocations in this chat than are kept ({MAX_BANS} in all, \
                     {MAX_BANS_PER_DEVICE} per device)"
                )));
            }
            _ => {}
        }
        self.by_actor.insert(evidence.actor.clone(), evidence);
        Ok(true)
    }

    /// Whether a change of `actor` numbered `seq` is banned.
    pub fn bans(&self, actor: &ActorId, seq: u64) -> bool {
        self.by_actor.get(actor).is_some_and(|e| seq >= e.seq)
    }

    /// Refuses a batch that holds a banned change, with the evidence to show its sender.
    pub fn refuse_banned(&self, batch: &[ChangeMeta]) -> Result<(), ModelError> {
        match batch.iter().find(|c| self.bans(&c.actor, c.seq)) {
            Some(change) => Err(ModelError::Equivocation(Box::new(
                self.by_actor[&change.actor].clone(),
            ))),
            None => Ok(()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_actor.is_empty()
    }

    /// The evidence kept for `actor`, if any.
    pub fn of_actor(&self, actor: &ActorId) -> Option<&Evidence> {
        self.by_actor.get(actor)
    }

    /// Puts back what was kept for `actor` before an [`add`](Self::add) (`None`: nothing).
    pub fn undo(&mut self, actor: &ActorId, before: Option<Evidence>) {
        match before {
            Some(evidence) => self.by_actor.insert(actor.clone(), evidence),
            None => self.by_actor.remove(actor),
        };
    }

    pub fn evidence(&self) -> impl Iterator<Item = &Evidence> {
        self.by_actor.values()
    }
}

/// One branch: the path's changes, sealed with the signature over its first.
fn branch(top: &Attestation, path: &[Change]) -> Vec<u8> {
    let mut body = Vec::new();
    for change in path {
        body.extend_from_slice(change.raw_bytes());
    }
    authorship::seal(std::slice::from_ref(top), &body)
}

/// The changes from `top` down to the change of `actor` numbered `seq`, through dependencies
/// (`lookup` finds a change by hash): the shortest such path, top first. `None` if there is
/// none within the limits.
fn path_down(
    top: &ChangeHash,
    actor: &ActorId,
    seq: u64,
    mut lookup: impl FnMut(&ChangeHash) -> Option<Change>,
) -> Option<Vec<Change>> {
    // Hashes only while searching; the path's changes are looked up again at the end.
    let mut parent: HashMap<ChangeHash, Option<ChangeHash>> = HashMap::new();
    let mut queue = VecDeque::from([(*top, None)]);
    while let Some((hash, from)) = queue.pop_front() {
        if parent.contains_key(&hash) || parent.len() >= MAX_PATH_SEARCH {
            continue;
        }
        let Some(change) = lookup(&hash) else {
            continue;
        };
        parent.insert(hash, from);
        let target = change.actor_id() == actor && change.seq() == seq;
        if target {
            let mut path = vec![];
            let mut at = Some(hash);
            while let Some(h) = at {
                if path.len() >= MAX_BRANCH_CHANGES {
                    return None;
                }
                path.push(lookup(&h)?);
                at = parent.get(&h).copied().flatten();
            }
            path.reverse();
            return Some(path);
        }
        // Below the clashing sequence number, the actor's changes lead away from it.
        if change.actor_id() != actor || change.seq() > seq {
            for dep in change.deps() {
                queue.push_back((*dep, Some(hash)));
            }
        }
    }
    None
}

/// The changes a sync message carries, by hash (the message passed the authorship check).
fn received_changes(body: &[u8]) -> Option<HashMap<ChangeHash, Change>> {
    let message = crate::chat::decode_sync_message(body).ok()?;
    let mut out = HashMap::new();
    for entry in message.changes.iter() {
        for (document, chunk) in wire_check::split_chunks(entry).ok()? {
            if document {
                let doc = automerge::Automerge::load(chunk).ok()?;
                for change in doc.get_changes(&[]) {
                    out.insert(change.hash(), change.clone());
                }
            } else {
                let change = Change::try_from(chunk).ok()?;
                out.insert(change.hash(), change);
            }
        }
    }
    Some(out)
}
