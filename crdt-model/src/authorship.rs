//! Provable authorship: which device wrote a change, and the proof that it did.
//!
//! **Actors name devices.** Every Automerge actor is `device id, '/', session`, where the session
//! is random bytes chosen each time the device's daemon starts ([`actor_for`]). The device is
//! therefore read off any change ([`device_of_actor`]), and a device never writes two changes
//! under one actor and sequence number: not after a crash, not after its store is restored from
//! a backup, because a new start is a new actor.
//!
//! **Attestations prove it.** A device signs `(chat id, hash of its newest change under an
//! actor)` ([`statement`]). A change hash covers the hashes of the change's dependencies, and
//! every change an actor makes depends (through its dependencies) on the actor's previous one,
//! so one signature over the newest change vouches for every earlier change of that actor, and
//! for every change of the device's other actors it was built on. Devices keep the newest
//! attestation of every actor and send it along with changes.
//!
//! **Receivers check before applying** ([`check_batch`]): for each device with changes in a
//! batch, the batch must hold an attested change of that device, every attestation must be the
//! device's signature, and every change of the device in the batch must be reached from one of
//! its attested ones through dependencies inside the batch (or changes still waiting for
//! theirs). The attested change may be under another of the device's actors: after changes were
//! dropped for an equivocation (`crate::equivocation`), the attestations a replica kept for the
//! rest of an actor's changes may be gone, and what the device wrote since, under a new actor,
//! vouches for them.
//! A wrong signature is an offence (no honest device sends one); a change no attestation
//! reaches is only *unproven* ([`ModelError::Unproven`]): it is refused, never applied, but an
//! honest device can send one, so nobody is blamed.
//!
//! **Senders make every batch provable** (`crate::proofs`): a batch of changes is completed
//! with the changes that lead from it to the attested change of each of its actors, and a
//! device signs its own newest change in the batch, so that the receiver can check the batch on
//! its own, whatever subset and order of changes reached it before (Automerge's sync leaves a
//! change out when the other side's Bloom filter wrongly claims it, about 1 in 100).
//! A change claiming another device's actor is never reached from that device's attested
//! changes unless the device really built on it;
//! forging one means breaking SHA-256 or Ed25519. Signatures are checked by the caller
//! ([`Provenance::verify`]), which holds the keys; this module only does the graph work.
//!
//! **Removed devices.** Changes by a device removed from the mesh are accepted only when a
//! device still in the mesh built on them: they are reached from a trusted device's attested
//! change. What a removed device wrote before anyone saw the removal, and others answered,
//! stays; what it writes afterwards is refused everywhere.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{ActorId, ChangeHash};

use crate::{ChatId, DeviceId, ModelError};

/// Separates the device id from the session in an actor.
const SESSION_SEPARATOR: u8 = b'/';
/// Domain of the signed statement, so that the signature cannot be taken for another purpose.
const STATEMENT_DOMAIN: &[u8] = b"chatsync change attestation v1\0";
/// Length of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Attestations accepted with one batch at most (one per actor that wrote in it).
pub const MAX_ATTESTATIONS: usize = 4096;
/// Work the coverage check may do for one batch at most: it walks the batch once per actor
/// with changes in it. Honest batches stay far below (100,000 changes by 100 actors is 10^7).
const MAX_COVERAGE_STEPS: usize = 64 * 1024 * 1024;

/// The actor a device writes under in one run of its daemon.
pub fn actor_for(device: &DeviceId, session: &[u8]) -> ActorId {
    let mut bytes = device.as_str().as_bytes().to_vec();
    bytes.push(SESSION_SEPARATOR);
    bytes.extend_from_slice(session);
    ActorId::from(bytes)
}

/// The device an actor belongs to; `None` for actors that name no device.
pub fn device_of_actor(actor: &ActorId) -> Option<DeviceId> {
    let bytes = actor.to_bytes();
    let id = match bytes.iter().position(|b| *b == SESSION_SEPARATOR) {
        Some(at) => &bytes[..at],
        None => bytes,
    };
    DeviceId::new(std::str::from_utf8(id).ok()?).ok()
}

/// What a device signs to vouch for its changes in a chat up to `hash`.
pub fn statement(chat: &ChatId, hash: &ChangeHash) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATEMENT_DOMAIN.len() + chat.as_str().len() + 33);
    out.extend_from_slice(STATEMENT_DOMAIN);
    out.extend_from_slice(chat.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(&hash.0);
    out
}

/// A device's signature over [`statement`] for one of its changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    pub hash: ChangeHash,
    pub signature: Vec<u8>,
}

/// What a batch's check needs to know of one change.
#[derive(Clone, Debug)]
pub struct ChangeMeta {
    pub hash: ChangeHash,
    pub actor: ActorId,
    pub seq: u64,
    pub deps: Vec<ChangeHash>,
}

/// Where a device stands in the mesh, as far as this replica knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Trusted,
    Removed,
    Unknown,
}

/// Checks that a signature is a device's over a statement: `(device, statement, signature)`.
pub type VerifyFn<'a> = dyn Fn(&DeviceId, &[u8], &[u8]) -> bool + 'a;

/// What the caller knows that the check needs: the attestations sent with the batch, signature
/// checks and the roster.
pub struct Provenance<'a> {
    pub chat: &'a ChatId,
    pub attestations: &'a [Attestation],
    /// Whether `signature` is `device`'s signature over `statement`.
    pub verify: &'a VerifyFn<'a>,
    pub standing: &'a dyn Fn(&DeviceId) -> Standing,
}

/// The newest attested change of one actor after a batch was accepted: what to keep and pass
/// on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorTop {
    pub actor: ActorId,
    pub seq: u64,
    pub attestation: Attestation,
}

/// Checks a batch of changes new to this replica (changes it already applied or holds in
/// `waiting` must be left out). `waiting` are changes received and checked before that still
/// wait for their dependencies: their dependencies are followed too, and their attestations
/// still count. Returns the attested tops of the actors in the batch.
pub fn check_batch(
    new: &[ChangeMeta],
    waiting: &[ChangeMeta],
    proof: &Provenance<'_>,
) -> Result<Vec<ActorTop>, ModelError> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    if proof.attestations.len() > MAX_ATTESTATIONS {
        return Err(refused("too many attestations"));
    }
    let all: Vec<&ChangeMeta> = new.iter().chain(waiting).collect();
    let index: HashMap<ChangeHash, usize> =
        all.iter().enumerate().map(|(i, c)| (c.hash, i)).collect();
    let is_new = |i: usize| i < new.len();
    // The attested changes of each device, whichever of its actors wrote them. Each vouches
    // for its own ancestors, so a device's changes are covered by any of them; the newest of
    // each actor is the one kept and passed on.
    let mut attested: BTreeMap<DeviceId, Vec<(usize, &Attestation)>> = BTreeMap::new();
    for attestation in proof.attestations {
        if let Some(&at) = index.get(&attestation.hash)
            && let Some(device) = device_of_actor(&all[at].actor)
        {
            attested.entry(device).or_default().push((at, attestation));
        }
    }
    let mut devices: BTreeMap<DeviceId, (Standing, HashSet<&ActorId>)> = BTreeMap::new();
    // The device of each actor already seen: a batch holds many changes of few actors.
    let mut device_of: HashMap<&ActorId, DeviceId> = HashMap::new();
    for change in new {
        if device_of.contains_key(&change.actor) {
            continue;
        }
        let device = device_of_actor(&change.actor).ok_or_else(|| {
            refused(&format!(
                "a change by actor {} names no device",
                change.actor
            ))
        })?;
        device_of.insert(&change.actor, device.clone());
        if let Some((_, actors)) = devices.get_mut(&device) {
            actors.insert(&change.actor);
            continue;
        }
        let standing = (proof.standing)(&device);
        if standing == Standing::Unknown {
            return Err(ModelError::Untrusted(format!(
                "a change by device {device}, which is not in this device's roster"
            )));
        }
        devices.insert(device, (standing, HashSet::from([&change.actor])));
    }
    if devices.len().saturating_mul(all.len()) > MAX_COVERAGE_STEPS {
        return Err(ModelError::TooLarge(format!(
            "{} changes by {} devices in one batch are too many to check",
            all.len(),
            devices.len()
        )));
    }
    let mut result: BTreeMap<&ActorId, ActorTop> = BTreeMap::new();
    let mut vouched_by_trusted: HashSet<usize> = HashSet::new();
    let mut removed_changes: Vec<usize> = Vec::new();
    for (device, (standing, actors)) in &devices {
        let Some(signed) = attested.get(device) else {
            return Err(unproven(&format!(
                "changes by device {device} came without its signature"
            )));
        };
        for (at, attestation) in signed {
            if attestation.signature.len() != SIGNATURE_BYTES
                || !(proof.verify)(
                    device,
                    &statement(proof.chat, &attestation.hash),
                    &attestation.signature,
                )
            {
                return Err(refused(&format!(
                    "the signature of device {device} over its changes is not valid"
                )));
            }
            let change = all[*at];
            if result
                .get(&change.actor)
                .is_none_or(|top| top.seq < change.seq)
            {
                result.insert(
                    &change.actor,
                    ActorTop {
                        actor: change.actor.clone(),
                        seq: change.seq,
                        attestation: (*attestation).clone(),
                    },
                );
            }
        }
        let starts: Vec<usize> = signed.iter().map(|(at, _)| *at).collect();
        let reached = reach(&all, &index, &starts);
        let own = |i: &usize| is_new(*i) && actors.contains(&&all[*i].actor);
        if let Some(stray) = (0..all.len()).filter(own).find(|i| !reached[*i]) {
            return Err(unproven(&format!(
                "change {} claims to be by device {device} but is not covered by its signature",
                all[stray].hash
            )));
        }
        match standing {
            Standing::Trusted => {
                vouched_by_trusted.extend((0..all.len()).filter(|i| reached[*i]));
            }
            _ => removed_changes.extend((0..all.len()).filter(own)),
        }
    }
    if let Some(late) = removed_changes
        .into_iter()
        .find(|i| !vouched_by_trusted.contains(i))
    {
        let device = device_of_actor(&all[late].actor)
            .map(|d| d.to_string())
            .unwrap_or_default();
        return Err(ModelError::Untrusted(format!(
            "change {} is by device {device}, which was removed from the mesh",
            all[late].hash
        )));
    }
    Ok(result.into_values().collect())
}

/// Which changes of the batch are reached from `from` (themselves included) through
/// dependencies inside the batch.
fn reach(all: &[&ChangeMeta], index: &HashMap<ChangeHash, usize>, from: &[usize]) -> Vec<bool> {
    let mut reached = vec![false; all.len()];
    let mut stack = from.to_vec();
    for at in from {
        reached[*at] = true;
    }
    while let Some(at) = stack.pop() {
        for dep in &all[at].deps {
            if let Some(&d) = index.get(dep)
                && !reached[d]
            {
                reached[d] = true;
                stack.push(d);
            }
        }
    }
    reached
}

/// Data no honest device sends: a forged or garbled attestation.
fn refused(why: &str) -> ModelError {
    ModelError::Invalid(format!("bad authorship proof: {why}"))
}

/// Changes this replica cannot prove yet; see [`ModelError::Unproven`].
fn unproven(why: &str) -> ModelError {
    ModelError::Unproven(why.to_string())
}

/// Marks a [`seal`]ed payload, and its version.
const ENVELOPE_MAGIC: &[u8; 4] = b"CSa1";
const ATTESTATION_BYTES: usize = 32 + SIGNATURE_BYTES;

/// A sync message or document with the attestations that prove its changes, as one payload:
/// magic, attestation count (u32, big-endian), attestations (hash, signature), then the bytes.
pub fn seal(attestations: &[Attestation], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + attestations.len() * ATTESTATION_BYTES + body.len());
    out.extend_from_slice(ENVELOPE_MAGIC);
    out.extend_from_slice(&(attestations.len() as u32).to_be_bytes());
    for a in attestations {
        out.extend_from_slice(&a.hash.0);
        out.extend_from_slice(&a.signature);
    }
    out.extend_from_slice(body);
    out
}

/// Splits a [`seal`]ed payload from another device into its attestations and bytes.
pub fn open(payload: &[u8]) -> Result<(Vec<Attestation>, &[u8]), ModelError> {
    let bad = |why: &str| ModelError::Invalid(format!("bad signed payload: {why}"));
    let rest = payload
        .strip_prefix(ENVELOPE_MAGIC.as_slice())
        .ok_or_else(|| bad("not a signed payload of this version"))?;
    let (count, rest) = rest.split_at_checked(4).ok_or_else(|| bad("truncated"))?;
    let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]) as usize;
    if count > MAX_ATTESTATIONS {
        return Err(bad("too many attestations"));
    }
    let (list, body) = rest
        .split_at_checked(count * ATTESTATION_BYTES)
        .ok_or_else(|| bad("truncated"))?;
    let attestations = list
        .chunks_exact(ATTESTATION_BYTES)
        .map(|a| {
            let mut hash = [0; 32];
            hash.copy_from_slice(&a[..32]);
            Attestation {
                hash: ChangeHash(hash),
                signature: a[32..].to_vec(),
            }
        })
        .collect();
    Ok((attestations, body))
}

/// The changes carried by a sync message, read without applying them: change chunks are parsed
/// one by one; a whole document (Automerge sends one when most changes are missing) is loaded
/// on its own to list its changes. The message must have passed the wire check.
pub fn changes_of_sync_message(
    message: &automerge::sync::Message,
) -> Result<Vec<ChangeMeta>, ModelError> {
    let mut out = Vec::new();
    for entry in message.changes.iter() {
        for (document, chunk) in split(entry)? {
            if document {
                out.extend(changes_of_document(chunk)?);
            } else {
                let change = automerge::Change::try_from(chunk)
                    .map_err(|e| ModelError::Invalid(format!("bad change in sync message: {e}")))?;
                out.push(ChangeMeta {
                    hash: change.hash(),
                    actor: change.actor_id().clone(),
                    seq: change.seq(),
                    deps: change.deps().to_vec(),
                });
            }
        }
    }
    Ok(out)
}

/// Every change in a saved document (which must have passed the wire check).
pub fn changes_of_document(bytes: &[u8]) -> Result<Vec<ChangeMeta>, ModelError> {
    let doc = automerge::Automerge::load(bytes)
        .map_err(|e| ModelError::Invalid(format!("bad document: {e}")))?;
    Ok(metas_of(&doc, &[]))
}

/// Metadata of the changes in `doc` after `have`.
pub(crate) fn metas_of(doc: &automerge::Automerge, have: &[ChangeHash]) -> Vec<ChangeMeta> {
    doc.get_changes_meta(have)
        .into_iter()
        .map(|m| ChangeMeta {
            hash: m.hash,
            actor: m.actor.into_owned(),
            seq: m.seq,
            deps: m.deps,
        })
        .collect()
}

/// The actors whose changes a sync message carries; `None` when it carries a whole document
/// (then every actor's attestation may be needed).
pub fn actors_of_sync_message(message: &[u8]) -> Option<Vec<ActorId>> {
    let message = automerge::sync::Message::decode(message).ok()?;
    let mut actors = Vec::new();
    for entry in message.changes.iter() {
        for (document, chunk) in split(entry).ok()? {
            if document {
                return None;
            }
            let change = automerge::Change::try_from(chunk).ok()?;
            if !actors.contains(change.actor_id()) {
                actors.push(change.actor_id().clone());
            }
        }
    }
    Some(actors)
}

fn split(entry: &[u8]) -> Result<Vec<(bool, &[u8])>, ModelError> {
    crate::wire_check::split_chunks(entry)
        .map_err(|e| ModelError::Invalid(format!("bad changes in sync message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> DeviceId {
        DeviceId::new(id).unwrap()
    }

    #[test]
    fn actors_name_their_device_with_or_without_a_session() {
        let a = dev("12D3KooWabc");
        assert_eq!(
            device_of_actor(&actor_for(&a, &[1, 2, 3, 0xff])),
            Some(a.clone())
        );
        assert_eq!(
            device_of_actor(&ActorId::from(a.as_str().as_bytes())),
            Some(a)
        );
        assert_eq!(device_of_actor(&ActorId::from(&[0xffu8, 0xfe][..])), None);
        assert_eq!(device_of_actor(&ActorId::from(&b"/x"[..])), None);
    }

    #[test]
    fn sealed_payloads_open_and_damaged_ones_are_refused() {
        let atts = vec![
            Attestation {
                hash: ChangeHash([7; 32]),
                signature: vec![9; SIGNATURE_BYTES],
            };
            3
        ];
        let sealed = seal(&atts, b"body");
        let (got, body) = open(&sealed).unwrap();
        assert_eq!((got, body), (atts, &b"body"[..]));
        for cut in 0..sealed.len() - 4 {
            assert!(open(&sealed[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = sealed.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(open(&huge).is_err());
        assert!(open(b"garbage").is_err());
    }

    #[test]
    fn statements_bind_the_chat_and_the_change() {
        let h1 = ChangeHash([1; 32]);
        let h2 = ChangeHash([2; 32]);
        let c1 = ChatId::new("c1").unwrap();
        let c2 = ChatId::new("c2").unwrap();
        assert_ne!(statement(&c1, &h1), statement(&c2, &h1));
        assert_ne!(statement(&c1, &h1), statement(&c1, &h2));
    }
}
