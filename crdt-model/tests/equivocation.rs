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
    let alice = Replica::new("alice", ChatDoc::load(&bytes, &mallory).unwrap());
    let bob = Replica::new("bob", ChatDoc::load(&bytes, &mallory).unwrap());
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
    let mut carol = Replica::new(
        "carol",
        ChatDoc::load(&bob.doc.save(), &bob.device).unwrap(),
    );
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
