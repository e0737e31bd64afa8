//! A device signs two different changes with one actor and sequence number and gives one to
//! each of two devices. The honest devices find out when they sync, agree on what to keep from
//! the evidence alone, write again what they lost of their own, and end with the same chat.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use automerge::{ActorId, sync::State};
use chatsync_model::{
    ChatDoc, ChatId, Device, DeviceId, MessageId, ModelError,
    equivocation::Evidence,
    exchange::{self, Keys},
    proofs::Proofs,
};

struct Replica {
    device: Device,
    doc: ChatDoc,
    proofs: Proofs,
    /// New actors handed out to this replica's rebuilds.
    rebuilds: u32,
}

impl Replica {
    fn new(id: &str, doc: ChatDoc) -> Self {
        let device = device(id, "1");
        let mut doc = doc;
        doc.automerge_mut().set_actor(device.actor.clone());
        Replica {
            device,
            doc,
            proofs: Proofs::default(),
            rebuilds: 0,
        }
    }

    /// A new device that gets the chat whole from `from`, with the proofs of every change in
    /// it, as a device joining a chat does.
    fn import(id: &str, from: &mut Replica) -> Self {
        let signer = from.device.id.clone();
        let sign = |s: &[u8]| Some(support::sign(&signer, s));
        let (snapshot, attestations) = from
            .proofs
            .document_to_send(&mut from.doc, &from.device.id, &sign)
            .unwrap();
        let device = device(id, "1");
        let chat = from.doc.id().clone();
        let (mut doc, tops) = ChatDoc::load_untrusted(
            &snapshot.save(),
            &device,
            &support::proof(&chat, &attestations),
        )
        .unwrap();
        let mut proofs = Proofs::default();
        proofs.take_received(tops, &mut doc, &device.id);
        Replica {
            device,
            doc,
            proofs,
            rebuilds: 0,
        }
    }

    fn post(&mut self, id: &str, text: &str, at: i64) {
        self.doc
            .post(&self.device, mid(id), text, None, at)
            .unwrap();
    }

    /// Checks evidence as any replica would, bans what it proves, and drops it.
    fn take_evidence(&mut self, evidence: &Evidence) -> bool {
        let chat = self.doc.id().clone();
        evidence.check(&chat, &support::verify).unwrap();
        if !self.doc.ban(evidence.clone()).unwrap() {
            return false;
        }
        self.rebuilds += 1;
        let fresh = chatsync_model::authorship::actor_for(
            &self.device.id,
            format!("rebuild{}", self.rebuilds).as_bytes(),
        );
        self.doc.exclude_banned(&self.device, fresh, 5_000).unwrap();
        self.proofs.retain_held(&mut self.doc);
        true
    }

    fn texts(&self) -> Vec<String> {
        self.doc.messages().map(|m| m.text).collect()
    }
}

fn device(id: &str, session: &str) -> Device {
    Device::with_session(DeviceId::new(id).unwrap(), id, session.as_bytes()).unwrap()
}

fn mid(s: &str) -> MessageId {
    MessageId::new(s).unwrap()
}

fn keys<'a>(own: &'a DeviceId, sign: &'a dyn Fn(&[u8]) -> Option<Vec<u8>>) -> Keys<'a> {
    Keys {
        own,
        sign,
        verify: &support::verify,
        standing: &support::everyone_trusted,
    }
}

/// One conversation, `from` running it, until neither side has anything to say. An
/// equivocation met on the way is returned, as the side that met it would answer.
fn converse(from: &mut Replica, to: &mut Replica) -> Result<(), Box<Evidence>> {
    converse_with(from, to, false)
}

/// [`converse`]; `from_may_refuse`: `from` is the device that equivocated, and may refuse
/// what is built on its other branch (it keeps no proof of its own changes to make evidence
/// from): the conversation then ends.
fn converse_with(
    from: &mut Replica,
    to: &mut Replica,
    from_may_refuse: bool,
) -> Result<(), Box<Evidence>> {
    let (mut running, mut answering) = (State::new(), State::new());
    let (from_id, to_id) = (from.device.id.clone(), to.device.id.clone());
    let from_sign = |s: &[u8]| Some(support::sign(&from_id, s));
    let to_sign = |s: &[u8]| Some(support::sign(&to_id, s));
    let mut message = exchange::next_step(
        &mut from.doc,
        &mut from.proofs,
        &mut running,
        &keys(&from_id, &from_sign),
    )
    .unwrap()
    .message;
    for _ in 0..100 {
        let Some(sent) = message.take() else {
            return Ok(());
        };
        let taken = exchange::take_message(
            &mut to.doc,
            &mut to.proofs,
            &mut answering,
            &sent,
            &keys(&to_id, &to_sign),
        );
        let reply = match taken {
            Ok(taken) => taken.reply.unwrap().message,
            Err(ModelError::Equivocation(evidence)) => return Err(evidence),
            Err(e) => panic!("{e}"),
        };
        let Some(reply) = reply else {
            return Ok(());
        };
        let taken = exchange::take_message(
            &mut from.doc,
            &mut from.proofs,
            &mut running,
            &reply,
            &keys(&from_id, &from_sign),
        );
        message = match taken {
            Ok(taken) => taken.reply.unwrap().message,
            Err(ModelError::Equivocation(evidence)) => return Err(evidence),
            Err(_) if from_may_refuse => return Ok(()),
            Err(e) => panic!("{e}"),
        };
    }
    panic!("the conversation did not end");
}

/// Syncs two replicas both ways, as devices do; evidence met on the way is taken by both (the
/// one that met it answers the other with it).
fn sync(a: &mut Replica, b: &mut Replica) {
    for _ in 0..4 {
        let met = converse(a, b).err().or_else(|| converse(b, a).err());
        match met {
            Some(evidence) => {
                a.take_evidence(&evidence);
                b.take_evidence(&evidence);
            }
            None => return,
        }
    }
    panic!("the replicas kept meeting evidence");
}

/// Chat `c` created by the device that will equivocate, with one honest post of its, copied
/// to two honest devices; then the device signs "left" for one and "right" for the other
/// under one actor and sequence number.
fn equivocated() -> (Replica, Replica, Replica, Replica) {
    let mallory = device("mallory", "1");
    let mut doc = ChatDoc::create(ChatId::new("c").unwrap(), "plans", &mallory, 1_000).unwrap();
    doc.post(&mallory, mid("m0"), "honest start", None, 1_100)
        .unwrap();
    let bytes = doc.save();
    let mut left = Replica::new("mallory", ChatDoc::load(&bytes, &mallory).unwrap());
    let mut right = Replica::new("mallory", ChatDoc::load(&bytes, &mallory).unwrap());
    let alice = Replica::import("alice", &mut left);
    let bob = Replica::import("bob", &mut left);
    left.post("m-left", "left", 1_200);
    right.post("m-right", "right", 1_200);
    assert_eq!(
        left.doc.last_local_change().unwrap().0,
        right.doc.last_local_change().unwrap().0,
        "one sequence number, two changes"
    );
    (left, right, alice, bob)
}

#[test]
fn honest_devices_that_took_one_change_each_converge_and_keep_their_own_writes() {
    let (mut left, mut right, mut alice, mut bob) = equivocated();
    sync(&mut left, &mut alice);
    sync(&mut right, &mut bob);
    assert!(alice.texts().contains(&"left".to_string()));
    assert!(bob.texts().contains(&"right".to_string()));

    // Each builds on what it took: a post, a reaction, an edit, a rename, a read marker.
    alice.post("a1", "alice after left", 2_000);
    alice
        .doc
        .react(&alice.device, &mid("m0"), Some("👍"), 2_100)
        .unwrap();
    alice.doc.set_title("alice's title", 2_200).unwrap();
    bob.post("b1", "bob after right", 2_000);
    bob.doc
        .edit(&bob.device, &mid("b1"), "bob after right, edited", 2_300)
        .unwrap();
    bob.doc.mark_read(&bob.device, &mid("b1"), 2_400).unwrap();

    sync(&mut alice, &mut bob);

    let expected = vec![
        "honest start".to_string(),
        "alice after left".to_string(),
        "bob after right, edited".to_string(),
    ];
    assert_eq!(alice.texts(), expected);
    assert_eq!(bob.texts(), expected);
    assert_eq!(alice.doc.heads().len(), bob.doc.heads().len());
    let (mut a_heads, mut b_heads) = (alice.doc.heads(), bob.doc.heads());
    a_heads.sort();
    b_heads.sort();
    assert_eq!(a_heads, b_heads, "same changes on both");
    for replica in [&alice, &bob] {
        assert_eq!(replica.doc.title(), "alice's title");
        let m0 = replica.doc.message(&mid("m0")).unwrap();
        assert_eq!(
            m0.reactions.get(&alice.device.id).map(String::as_str),
            Some("👍")
        );
        assert_eq!(replica.doc.read_marker(&bob.device.id), Some(mid("b1")));
        assert!(replica.doc.message(&mid("m-left")).is_none());
        assert!(replica.doc.message(&mid("m-right")).is_none());
    }
    // The rebuilt replicas write under new actors: their old ones' sequence numbers were used
    // by the dropped changes.
    assert_ne!(alice.doc.actor(), &alice.device.actor);
    assert_ne!(bob.doc.actor(), &bob.device.actor);
}

#[test]
fn a_device_that_holds_one_branch_learns_of_the_other_from_the_evidence() {
    let (mut left, mut right, mut alice, mut bob) = equivocated();
    let mut carol = Replica::import("carol", &mut bob);
    sync(&mut left, &mut alice);
    sync(&mut right, &mut bob);
    sync(&mut bob, &mut carol);
    carol.post("c1", "carol after right", 3_000);
    assert!(carol.texts().contains(&"right".to_string()));

    sync(&mut alice, &mut bob);
    assert_eq!(carol.rebuilds, 0);
    // Carol still holds "right": bob refuses it with the evidence, and she drops it too.
    sync(&mut carol, &mut bob);
    assert_eq!(carol.rebuilds, 1);
    sync(&mut carol, &mut alice);
    for replica in [&alice, &bob, &carol] {
        assert_eq!(
            replica.texts(),
            vec!["honest start".to_string(), "carol after right".to_string()]
        );
    }
    // The device that equivocated gets nothing more in: its later changes under that actor are
    // refused with the evidence.
    left.post("m-late", "late", 4_000);
    let met = converse(&mut left, &mut alice);
    assert!(met.is_err());
    assert!(alice.doc.message(&mid("m-late")).is_none());
}

#[test]
fn evidence_is_checked_on_its_own() {
    let (mut left, mut right, mut alice, mut bob) = equivocated();
    sync(&mut left, &mut alice);
    sync(&mut right, &mut bob);
    let evidence = converse(&mut alice, &mut bob).expect_err("a clash");
    let chat = ChatId::new("c").unwrap();
    let bytes = evidence.encode();
    let decoded = Evidence::decode(&bytes).unwrap();
    assert_eq!(
        decoded.check(&chat, &support::verify).unwrap().seq,
        evidence.seq
    );
    // Another chat's statement, a wrong key, and damaged bytes are refused.
    assert!(
        decoded
            .check(&ChatId::new("d").unwrap(), &support::verify)
            .is_err()
    );
    assert!(
        decoded
            .check(&chat, &|_: &DeviceId, _: &[u8], _: &[u8]| false)
            .is_err()
    );
    for cut in [0, 4, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            Evidence::decode(&bytes[..cut]).is_err() || {
                Evidence::decode(&bytes[..cut])
                    .unwrap()
                    .check(&chat, &support::verify)
                    .is_err()
            }
        );
    }
    for at in (0..bytes.len()).step_by(97) {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x55;
        if let Ok(evidence) = Evidence::decode(&flipped) {
            let outcome = std::panic::catch_unwind(|| evidence.check(&chat, &support::verify));
            if let Ok(Ok(ban)) = outcome {
                // Only a flip that leaves the proof intact may pass (in a part nothing reads).
                assert_eq!(ban.actor, evidence.actor);
            }
        }
    }
    // Evidence naming a sequence number the branches do not clash at proves nothing.
    let mut shifted = bytes.clone();
    let at = shifted.len() - 1;
    shifted[at] ^= 1;
    assert!(
        Evidence::decode(&shifted)
            .unwrap()
            .check(&chat, &support::verify)
            .is_err()
    );
    let _: ActorId = evidence.actor.clone();
}

/// Random histories around an equivocation: three honest devices post, edit and sync in a
/// random order while the device that equivocated hands its two branches (and more posts on
/// each) to whoever it meets. After everyone syncs with everyone, all hold the same chat, with
/// every honest post once, as its author last wrote it, and none of the equivocator's from the
/// clashing sequence number on. `CHATSYNC_EQUIVOCATION_SEEDS=<n>` runs more seeds.
#[test]
fn random_histories_around_an_equivocation_converge_with_every_honest_write() {
    let seeds: u64 = std::env::var("CHATSYNC_EQUIVOCATION_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(150);
    let only: Option<u64> = std::env::var("CHATSYNC_EQUIVOCATION_SEED")
        .ok()
        .and_then(|n| n.parse().ok());
    for seed in only.map_or(0..seeds, |s| s..s + 1) {
        if let Err(e) = std::panic::catch_unwind(|| random_history(seed)) {
            eprintln!("failed with seed {seed}");
            std::panic::resume_unwind(e);
        }
    }
}

fn random_history(seed: u64) {
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    use std::collections::BTreeMap;

    let mut rng = StdRng::seed_from_u64(seed);
    let (left, right, alice, mut bob) = equivocated();
    let carol = Replica::import("carol", &mut bob);
    let mut branches = [left, right];
    let mut honest = [alice, bob, carol];
    // Honest messages: id -> (author, text as last written).
    let mut written: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut clock = 10_000;
    for step in 0..40 {
        clock += 10;
        let who = rng.random_range(0..honest.len());
        match rng.random_range(0..10) {
            0..=3 => {
                let id = format!("h{who}-{step}");
                let text = format!("post {step} by {who}");
                honest[who].post(&id, &text, clock);
                written.insert(id, (who, text));
            }
            4 => {
                let own: Vec<String> = written
                    .iter()
                    .filter(|(_, (author, _))| *author == who)
                    .map(|(id, _)| id.clone())
                    .collect();
                if own.is_empty() {
                    continue;
                }
                let id = &own[rng.random_range(0..own.len())];
                let text = format!("edit {step} by {who}");
                let replica = &mut honest[who];
                replica
                    .doc
                    .edit(&replica.device, &mid(id), &text, clock)
                    .unwrap();
                written.insert(id.clone(), (who, text));
            }
            5 => {
                let branch = rng.random_range(0..2);
                branches[branch].post(&format!("m{branch}-{step}"), "more from mallory", clock);
            }
            6 => {
                let branch = rng.random_range(0..2);
                hand_over(&mut branches[branch], &mut honest[who]);
            }
            _ => {
                let other = (who + rng.random_range(1..honest.len())) % honest.len();
                let (a, b) = pick_two(&mut honest, who, other);
                sync(a, b);
            }
        }
    }
    // Everyone meets everyone, until nothing changes (a replica may have to hear from a
    // change's author again before it can pass the change on: see `proofs`).
    for _ in 0..8 {
        let before: Vec<_> = honest.iter_mut().map(|r| r.doc.heads()).collect();
        for i in 0..honest.len() {
            for j in i + 1..honest.len() {
                let (a, b) = pick_two(&mut honest, i, j);
                sync(a, b);
            }
        }
        if honest.iter_mut().map(|r| r.doc.heads()).collect::<Vec<_>>() == before {
            break;
        }
    }
    let mut first = honest[0].doc.heads();
    first.sort();
    for replica in &mut honest {
        let mut heads = replica.doc.heads();
        heads.sort();
        assert_eq!(heads, first, "seed {seed}: replicas differ");
        for (id, (_, text)) in &written {
            let message = replica.doc.message(&mid(id));
            assert_eq!(
                message.map(|m| m.text),
                Some(text.clone()),
                "seed {seed}: message {id} on {}",
                replica.device.id
            );
        }
        assert_eq!(
            replica
                .doc
                .messages()
                .filter(|m| m.id.as_str().starts_with('h'))
                .count(),
            written.len(),
            "seed {seed}: every honest post once"
        );
        let banned = replica.doc.bans().evidence().count();
        if banned > 0 {
            assert!(replica.doc.message(&mid("m-left")).is_none());
            assert!(replica.doc.message(&mid("m-right")).is_none());
        }
    }
}

/// Two different replicas of `list`, mutably.
fn pick_two<T>(list: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (low, high) = list.split_at_mut(j);
        (&mut low[i], &mut high[0])
    } else {
        let (low, high) = list.split_at_mut(i);
        (&mut high[0], &mut low[j])
    }
}

/// The equivocator syncs one of its branches with an honest device; evidence met on the way
/// is taken by the honest device (the equivocator ignores it).
fn hand_over(branch: &mut Replica, to: &mut Replica) {
    for _ in 0..3 {
        match converse_with(branch, to, true) {
            Ok(()) => return,
            Err(evidence) => {
                to.take_evidence(&evidence);
            }
        }
    }
}

#[test]
fn evidence_against_a_chats_first_change_leaves_the_chat_as_it_is() {
    // The chat's creator makes its first change twice: nothing of the chat could be kept.
    let mallory = device("mallory", "1");
    let chat = ChatId::new("c").unwrap();
    let mut one = Replica::new(
        "mallory",
        ChatDoc::create(chat.clone(), "one", &mallory, 1_000).unwrap(),
    );
    let mut two = Replica::new(
        "mallory",
        ChatDoc::create(chat.clone(), "two", &mallory, 1_000).unwrap(),
    );
    let mut alice = Replica::import("alice", &mut one);
    let mut bob = Replica::import("bob", &mut two);
    alice.post("a1", "still here", 2_000);
    let evidence = converse(&mut bob, &mut alice).expect_err("a clash");
    assert_eq!(evidence.seq, 1);
    evidence.check(&chat, &support::verify).unwrap();
    let before = alice.texts();
    let actor = evidence.actor.clone();
    let banned_before = alice.doc.bans().of_actor(&actor).cloned();
    assert!(alice.doc.ban(*evidence).unwrap());
    let fresh = chatsync_model::authorship::actor_for(&alice.device.id, b"fresh");
    assert!(
        alice
            .doc
            .exclude_banned(&alice.device, fresh, 3_000)
            .is_err()
    );
    alice.doc.unban(&actor, banned_before);
    assert!(alice.doc.bans().is_empty());
    assert_eq!(alice.texts(), before);
}

#[test]
fn evidence_is_made_when_the_equivocator_signs_under_another_actor_or_piles_changes_on() {
    let (mut left, mut right, mut alice, mut bob) = equivocated();
    // On one branch it goes on under a second actor, and signs only that actor's changes; on
    // the other it piles up seventy more changes before anyone meets.
    let mut later = Replica::new(
        "mallory",
        ChatDoc::load(&left.doc.save(), &left.device).unwrap(),
    );
    later.device = device("mallory", "2");
    later
        .doc
        .automerge_mut()
        .set_actor(later.device.actor.clone());
    later.post("m-later", "under another actor", 1_300);
    for n in 0..70 {
        right.post(&format!("m-right-{n}"), "more", 1_300 + n);
    }
    sync(&mut later, &mut alice);
    sync(&mut right, &mut bob);
    assert!(alice.texts().contains(&"under another actor".to_string()));
    alice.post("a1", "alice", 2_000);
    bob.post("b1", "bob", 2_000);
    sync(&mut alice, &mut bob);
    assert_eq!(alice.texts(), bob.texts());
    assert_eq!(
        alice.texts(),
        vec![
            "honest start".to_string(),
            "alice".to_string(),
            "bob".to_string()
        ]
    );
    let _ = &mut left;
}

#[test]
fn a_device_that_lost_much_writes_it_again_in_changes_every_device_takes() {
    let (mut left, mut right, mut alice, mut bob) = equivocated();
    sync(&mut left, &mut alice);
    sync(&mut right, &mut bob);
    // Three thousand posts of 400 bytes built on the clashing change: over a megabyte to write
    // again, more than one change may hold.
    let text = "x".repeat(400);
    for n in 0..3_000 {
        alice.post(&format!("a{n}"), &text, 2_000 + n);
    }
    sync(&mut alice, &mut bob);
    assert_eq!(alice.texts().len(), 3_001);
    assert_eq!(alice.texts(), bob.texts());
}
