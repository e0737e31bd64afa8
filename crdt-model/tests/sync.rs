//! Automerge's sync protocol through `ChatDoc`: replicas that exchange sync messages until both
//! are quiet end up equal, and each reports what it received.
#![allow(clippy::unwrap_used)]

mod support;

use automerge::{ReadDoc, sync::State, transaction::Transactable};
use chatsync_model::{
    ChatDoc, ChatId, Device, DeviceId, MessageId, TouchKind, Touched, layout, schema,
};

fn dev(id: &str) -> Device {
    Device::new(DeviceId::new(id).unwrap(), id).unwrap()
}

fn mid(s: &str) -> MessageId {
    MessageId::new(s).unwrap()
}

fn touched(id: &str, kind: TouchKind) -> Touched {
    Touched { id: mid(id), kind }
}

/// What one side received in a run of the protocol.
#[derive(Debug, Default)]
struct Received {
    touched: Vec<Touched>,
    bytes: usize,
}

/// Runs the protocol both ways until neither side has anything to say. Returns what each side
/// received.
fn sync(a: &mut ChatDoc, b: &mut ChatDoc) -> (Received, Received) {
    let (mut sa, mut sb) = (State::new(), State::new());
    let (mut got_a, mut got_b) = (Received::default(), Received::default());
    for _ in 0..20 {
        let to_b = a.generate_sync_message(&mut sa);
        let to_a = b.generate_sync_message(&mut sb);
        if to_b.is_none() && to_a.is_none() {
            return (got_a, got_b);
        }
        for (doc, state, message, got) in [
            (&mut *b, &mut sb, to_b, &mut got_b),
            (&mut *a, &mut sa, to_a, &mut got_a),
        ] {
            if let Some(m) = message {
                let received = support::receive(doc, state, &m).unwrap();
                got.touched.extend(received.touched);
                got.bytes += received.changes.len();
            }
        }
    }
    panic!("sync did not settle");
}

/// Device `a`'s chat with messages `m1` and `m2`, and a replica of it on device `b`.
fn pair() -> (Device, ChatDoc, Device, ChatDoc) {
    let (da, db) = (dev("dev-a"), dev("dev-b"));
    let mut a = ChatDoc::create(ChatId::new("c").unwrap(), "t", &da, 1).unwrap();
    a.post(&da, mid("m1"), "one", None, 10).unwrap();
    a.post(&da, mid("m2"), "two", None, 11).unwrap();
    let b = ChatDoc::load(&a.save(), &db).unwrap();
    (da, a, db, b)
}

#[test]
fn replicas_converge_and_report_what_arrived() {
    let (da, db) = (dev("dev-a"), dev("dev-b"));
    let mut a = ChatDoc::create(ChatId::new("c").unwrap(), "t", &da, 1).unwrap();
    let mut b = ChatDoc::load(&a.save(), &db).unwrap();
    for i in 0..5 {
        a.post(
            &da,
            MessageId::new(format!("a{i}")).unwrap(),
            "from a",
            None,
            10 + i,
        )
        .unwrap();
        b.post(
            &db,
            MessageId::new(format!("b{i}")).unwrap(),
            "from b",
            None,
            10 + i,
        )
        .unwrap();
    }
    let (got_a, got_b) = sync(&mut a, &mut b);
    assert!(got_a.bytes > 0 && got_b.bytes > 0);
    let ids = |c: &ChatDoc| c.message_ids().cloned().collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.len(), 10);
    // The changes each side received reload on top of its old save.
    let (again_a, again_b) = sync(&mut a, &mut b);
    assert_eq!(
        (again_a.bytes, again_b.bytes),
        (0, 0),
        "a settled pair exchanges nothing new"
    );
}

#[test]
fn garbage_sync_messages_are_errors() {
    let da = dev("dev-a");
    let mut a = ChatDoc::create(ChatId::new("c").unwrap(), "t", &da, 1).unwrap();
    let mut state = State::new();
    assert!(support::receive(&mut a, &mut state, b"not a sync message").is_err());
    assert!(support::receive(&mut a, &mut state, &[]).is_err());
}

// ---------------------------------------------------------------------------------------------
// What a received sync message did to each message
// ---------------------------------------------------------------------------------------------

#[test]
fn new_posts_are_reported_created_in_posting_order() {
    let (da, mut a, _, mut b) = pair();
    for (i, id) in ["n3", "n1", "n2"].into_iter().enumerate() {
        a.post(&da, mid(id), "new", None, 20 + i as i64).unwrap();
    }
    let (got_a, got_b) = sync(&mut a, &mut b);
    assert_eq!(
        got_b.touched,
        [
            touched("n3", TouchKind::Created),
            touched("n1", TouchKind::Created),
            touched("n2", TouchKind::Created),
        ]
    );
    assert!(got_a.touched.is_empty());
    assert_eq!(b.len(), 5);
}

#[test]
fn an_edit_is_reported_edited() {
    let (da, mut a, _, mut b) = pair();
    a.edit(&da, &mid("m1"), "one, edited", 20).unwrap();
    let (_, got_b) = sync(&mut a, &mut b);
    assert_eq!(got_b.touched, [touched("m1", TouchKind::Edited)]);
    assert_eq!(b.message(&mid("m1")).unwrap().text, "one, edited");
}

#[test]
fn a_deletion_is_reported_deleted() {
    let (da, mut a, db, mut b) = pair();
    b.react(&db, &mid("m2"), Some("👍"), 20).unwrap();
    let (got_a, _) = sync(&mut a, &mut b);
    assert_eq!(got_a.touched, [touched("m2", TouchKind::Reaction)]);
    // The deletion also removes b's reaction: still one entry, a deletion.
    a.delete(&da, &mid("m2"), 30).unwrap();
    let (_, got_b) = sync(&mut a, &mut b);
    assert_eq!(got_b.touched, [touched("m2", TouchKind::Deleted)]);
    assert!(b.message(&mid("m2")).unwrap().deleted);
}

#[test]
fn setting_replacing_and_clearing_a_reaction_are_reported_reaction() {
    let (_, mut a, db, mut b) = pair();
    for reaction in [Some("👍"), Some("❤️"), None] {
        b.react(&db, &mid("m1"), reaction, 20).unwrap();
        let (got_a, got_b) = sync(&mut a, &mut b);
        assert_eq!(got_a.touched, [touched("m1", TouchKind::Reaction)]);
        assert!(got_b.touched.is_empty());
        let shown = a.message(&mid("m1")).unwrap().reactions;
        assert_eq!(shown.get(&db.id).map(String::as_str), reaction);
    }
}

#[test]
fn a_batch_that_does_several_things_reports_the_most_significant_once() {
    let (da, mut a, db, mut b) = pair();
    // Created beats everything done to the new message in the same batch.
    a.post(&da, mid("n1"), "new", None, 20).unwrap();
    a.edit(&da, &mid("n1"), "new, edited", 21).unwrap();
    a.react(&da, &mid("n1"), Some("👍"), 22).unwrap();
    a.delete(&da, &mid("n1"), 23).unwrap();
    let (_, got_b) = sync(&mut a, &mut b);
    assert_eq!(got_b.touched, [touched("n1", TouchKind::Created)]);

    // Edited beats a reaction.
    a.react(&da, &mid("m1"), Some("👍"), 30).unwrap();
    a.edit(&da, &mid("m1"), "one, edited", 31).unwrap();
    a.react(&da, &mid("m1"), Some("😂"), 32).unwrap();
    let (_, got_b) = sync(&mut a, &mut b);
    assert_eq!(got_b.touched, [touched("m1", TouchKind::Edited)]);

    // Deleted beats an edit and a reaction.
    a.edit(&da, &mid("m2"), "two, edited", 40).unwrap();
    a.react(&da, &mid("m2"), Some("👍"), 41).unwrap();
    a.delete(&da, &mid("m2"), 42).unwrap();
    let (_, got_b) = sync(&mut a, &mut b);
    assert_eq!(got_b.touched, [touched("m2", TouchKind::Deleted)]);

    // Both sides change messages at once: each hears about the other's.
    a.edit(&da, &mid("m1"), "one, again", 50).unwrap();
    b.react(&db, &mid("m1"), Some("👍"), 50).unwrap();
    let (got_a, got_b) = sync(&mut a, &mut b);
    assert_eq!(got_a.touched, [touched("m1", TouchKind::Reaction)]);
    assert_eq!(got_b.touched, [touched("m1", TouchKind::Edited)]);
    assert_eq!(
        a.messages().collect::<Vec<_>>(),
        b.messages().collect::<Vec<_>>()
    );
}

#[test]
fn changes_to_no_message_report_nothing() {
    let (da, mut a, _, mut b) = pair();
    a.set_title("renamed", 20).unwrap();
    a.mark_read(&da, &mid("m2"), 21).unwrap();
    let (_, got_b) = sync(&mut a, &mut b);
    assert!(got_b.bytes > 0, "the changes arrived");
    assert!(got_b.touched.is_empty(), "{:?}", got_b.touched);
    assert_eq!(b.title(), "renamed");
    assert_eq!(b.read_marker(&da.id), Some(mid("m2")));
}

/// A device clears its reaction while the author, concurrently, deletes the message (which
/// removes that reaction too). The clear changes nothing for a replica that has the deletion.
#[test]
fn a_write_that_arrives_already_overwritten_is_not_reported() {
    let (da, mut a, db, mut b) = pair();
    b.react(&db, &mid("m1"), Some("👍"), 20).unwrap();
    sync(&mut a, &mut b);
    a.delete(&da, &mid("m1"), 30).unwrap();
    b.react(&db, &mid("m1"), None, 30).unwrap();
    let (got_a, got_b) = sync(&mut a, &mut b);
    assert!(got_a.bytes > 0, "the clear arrived");
    assert!(got_a.touched.is_empty(), "{:?}", got_a.touched);
    assert_eq!(got_b.touched, [touched("m1", TouchKind::Deleted)]);
}

/// A field this version does not write after posting (here one it does not know at all).
#[test]
fn other_fields_are_reported_other() {
    let (_, mut a, _, mut b) = pair();
    let doc = a.automerge_mut();
    let messages = layout::entry_map(doc, "m1").unwrap();
    let (_, m1) = doc.get(&messages, "m1").unwrap().unwrap();
    doc.put(&m1, "pinned", true).unwrap();
    doc.commit();
    let (_, got_b) = sync(&mut a, &mut b);
    assert_eq!(got_b.touched, [touched("m1", TouchKind::Other)]);
}

/// A message written without a clock cannot be shown; it is reported once a later change
/// completes it, as new.
#[test]
fn a_malformed_message_is_reported_created_once_complete() {
    let (_, mut a, _, mut b) = pair();
    let doc = a.automerge_mut();
    let messages = layout::entry_map(doc, "half").unwrap();
    let half = doc
        .put_object(&messages, "half", automerge::ObjType::Map)
        .unwrap();
    doc.put(&half, schema::AUTHOR, "dev-a").unwrap();
    doc.put(&half, schema::TEXT, "no clock yet").unwrap();
    doc.commit();
    let (_, got_b) = sync(&mut a, &mut b);
    assert!(got_b.touched.is_empty(), "{:?}", got_b.touched);
    assert_eq!(b.len(), 2);

    let doc = a.automerge_mut();
    doc.put(&half, schema::CLOCK, 1_000_i64).unwrap();
    doc.commit();
    let (_, got_b) = sync(&mut a, &mut b);
    assert_eq!(got_b.touched, [touched("half", TouchKind::Created)]);
    assert_eq!(b.message(&mid("half")).unwrap().text, "no clock yet");
}

/// A sync message that carries exactly `changes`.
fn carrying(changes: &[automerge::Change]) -> Vec<u8> {
    automerge::sync::Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: changes
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect::<Vec<_>>()
            .into(),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    }
    .encode()
}

/// `doc` receives `changes` in one message, with an attestation of `top` only, as the sender
/// of a batch attests its newest change.
fn receive_with_top(
    doc: &mut ChatDoc,
    state: &mut State,
    changes: &[automerge::Change],
    top: &automerge::Change,
) -> Result<chatsync_model::SyncReceived, chatsync_model::ModelError> {
    let chat = doc.id().clone();
    let device = chatsync_model::authorship::device_of_actor(top.actor_id()).unwrap();
    let statement = chatsync_model::authorship::statement(&chat, &top.hash());
    let attestations = [chatsync_model::authorship::Attestation {
        hash: top.hash(),
        signature: support::sign(&device, &statement),
    }];
    doc.receive_sync_message(
        state,
        &carrying(changes),
        &support::proof(&chat, &attestations),
    )
}

#[test]
fn a_long_wait_for_a_change_the_bloom_filter_hid_ends_when_it_arrives() {
    // Automerge leaves out a change the other side's Bloom filter wrongly claims, and sends
    // what came after it: more than the waiting limit here. The next round brings the change.
    let (da, mut a, _, mut b) = pair();
    let start = a.heads();
    let count = chatsync_model::chat::MAX_WAITING_CHANGES + 50;
    for i in 0..count {
        a.post(&da, mid(&format!("w{i}")), "x", None, 1_000 + i as i64)
            .unwrap();
    }
    let changes = a.automerge_mut().get_changes(&start);
    assert_eq!(changes.len(), count);
    let mut state = State::new();
    let newest = changes.last().unwrap();
    receive_with_top(&mut b, &mut state, &changes[1..], newest).unwrap();
    let had = b.len();
    assert_eq!(had, 2, "nothing can apply without the first change");

    // Over the limit, a message that brings nothing they wait for is refused...
    let before_later = a.heads();
    a.post(&da, mid("later"), "x", None, 1).unwrap();
    let later = a.automerge_mut().get_changes(&before_later);
    let refused = receive_with_top(&mut b, &mut state, &later, &later[0]).unwrap_err();
    assert!(
        matches!(refused, chatsync_model::ModelError::TooLarge(_)),
        "{refused}"
    );
    // ...and the one that brings the missing change is taken: everything applies.
    receive_with_top(&mut b, &mut state, &changes[..1], &changes[0]).unwrap();
    assert_eq!(b.len(), had + count);
}

#[test]
fn a_device_that_floods_the_waiting_changes_holds_up_only_its_own() {
    // Device A sends changes built on one it never sends: more than its share wait.
    let (da, mut a, _, mut b) = pair();
    let dc = dev("dev-c");
    let mut c = ChatDoc::load(&a.save(), &dc).unwrap();
    let start = a.heads();
    let count = chatsync_model::chat::MAX_WAITING_CHANGES + 50;
    for i in 0..count {
        a.post(&da, mid(&format!("w{i}")), "x", None, 1_000 + i as i64)
            .unwrap();
    }
    let changes = a.automerge_mut().get_changes(&start);
    let mut from_a = State::new();
    receive_with_top(&mut b, &mut from_a, &changes[1..], changes.last().unwrap()).unwrap();
    // More from A is refused...
    let before = a.heads();
    a.post(&da, mid("more"), "x", None, 1).unwrap();
    let more = a.automerge_mut().get_changes(&before);
    assert!(receive_with_top(&mut b, &mut from_a, &more, &more[0]).is_err());
    // ...but C's post gets through, and shows.
    let before = c.heads();
    c.post(&dc, mid("from-c"), "hello", None, 2).unwrap();
    let posted = c.automerge_mut().get_changes(&before);
    let mut from_c = State::new();
    receive_with_top(&mut b, &mut from_c, &posted, &posted[0]).unwrap();
    assert!(b.message(&mid("from-c")).is_some());
}

#[test]
fn changes_that_waited_too_long_are_dropped_and_can_come_again() {
    let (da, mut a, _, mut b) = pair();
    let start = a.heads();
    for i in 0..20 {
        a.post(&da, mid(&format!("w{i}")), "x", None, 1_000 + i)
            .unwrap();
    }
    let changes = a.automerge_mut().get_changes(&start);
    let mut from_a = State::new();
    // Everything but the first: all of it waits for the one never sent.
    receive_with_top(&mut b, &mut from_a, &changes[1..], changes.last().unwrap()).unwrap();
    assert_eq!(b.waiting_changes(), 19);
    assert!(b.has_waiting_changes());
    // What waits is no part of the chat: a save leaves it out.
    let saved = ChatDoc::load(&b.save(), &dev("dev-b2")).unwrap();
    let mut saved = saved;
    assert!(!saved.has_waiting_changes());
    let shown = b.page_before(None, 100);
    assert_eq!(b.drop_waiting().unwrap(), 19);
    assert_eq!(b.waiting_changes(), 0);
    assert!(!b.has_waiting_changes());
    assert_eq!(b.page_before(None, 100), shown, "the chat is as it was");
    // The same changes, with the one they wait for, are taken afterwards.
    let mut again = State::new();
    receive_with_top(&mut b, &mut again, &changes, changes.last().unwrap()).unwrap();
    assert_eq!(b.waiting_changes(), 0);
    assert!(b.message(&mid("w19")).is_some());
    assert_eq!(b.len(), a.len());
    // b still writes under its own actor, after its own changes.
    let db = dev("dev-b");
    b.post(&db, mid("after"), "y", None, 5_000).unwrap();
    assert!(!b.take_local_changes().is_empty());
}

/// A conversation started from the heads the other replica's summary listed carries the changes
/// in its first message, and a replica that lacks them all has everything after it; heads this
/// replica does not have leave the conversation to start as usual.
#[test]
fn a_conversation_started_from_a_summary_sends_the_changes_in_its_first_message() {
    use chatsync_model::{exchange, proofs::Proofs};
    let (da, db) = (dev("dev-a"), dev("dev-b"));
    let mut a = ChatDoc::create(ChatId::new("c").unwrap(), "t", &da, 1).unwrap();
    let mut b = ChatDoc::load(&a.save(), &db).unwrap();
    for i in 0..300 {
        a.post(&da, mid(&format!("m{i}")), "hello", None, 10 + i)
            .unwrap();
    }
    let (mut proofs_a, mut proofs_b) = (Proofs::default(), Proofs::default());

    // Heads a does not have: nothing is primed, the first message is a Bloom filter.
    let mut unknown = State::new();
    let stranger = automerge::ChangeHash([7; 32]);
    assert!(!exchange::start_from_summary(
        &mut a,
        &mut unknown,
        &[stranger]
    ));
    assert!(unknown.their_heads.is_none());

    let (mut sa, mut sb) = (State::new(), State::new());
    let b_heads = b.heads();
    assert!(exchange::start_from_summary(&mut a, &mut sa, &b_heads));
    let first = support::with_keys(&da.id, |k| {
        exchange::next_step(&mut a, &mut proofs_a, &mut sa, k)
    })
    .unwrap()
    .message
    .expect("a first message");
    let taken = support::with_keys(&db.id, |k| {
        exchange::take_message(&mut b, &mut proofs_b, &mut sb, &first, k)
    })
    .unwrap();
    assert_eq!(
        taken.touched.len(),
        300,
        "every post came in the first message"
    );
    assert_eq!(b.len(), 300);
    assert_eq!(b.heads(), a.heads());
    // A conversation under way is not started again.
    assert!(!exchange::start_from_summary(&mut a, &mut sa, &b_heads));
}

/// One replica's side of the two conversations it has with another: the one it runs and the
/// one it answers.
struct Side {
    device: Device,
    doc: ChatDoc,
    proofs: chatsync_model::proofs::Proofs,
    running: State,
    answering: State,
}

impl Side {
    fn new(device: Device, doc: ChatDoc) -> Side {
        Side {
            device,
            doc,
            proofs: Default::default(),
            running: State::new(),
            answering: State::new(),
        }
    }
}

/// The changes a sealed sync message carries.
fn changes_carried(sealed: &[u8]) -> usize {
    use chatsync_model::authorship;
    let (_, body) = authorship::open(sealed).unwrap();
    let message = automerge::sync::Message::decode(body).unwrap();
    authorship::changes_of_sync_message(&message).unwrap().len()
}

/// `from` runs a conversation with `to` until it has nothing more to say; how many changes each
/// message `from` sent carried.
fn run_conversation(from: &mut Side, to: &mut Side) -> Vec<usize> {
    use chatsync_model::exchange;
    let mut carried = Vec::new();
    let mut next = support::with_keys(&from.device.id, |k| {
        exchange::next_step(&mut from.doc, &mut from.proofs, &mut from.running, k)
    })
    .unwrap()
    .message;
    while let Some(message) = next {
        let taken = support::with_keys(&to.device.id, |k| {
            exchange::take_message(&mut to.doc, &mut to.proofs, &mut to.answering, &message, k)
        })
        .unwrap();
        carried.push(changes_carried(&message));
        let Some(reply) = taken.reply.unwrap().message else {
            break;
        };
        let answer = support::with_keys(&from.device.id, |k| {
            exchange::take_message(
                &mut from.doc,
                &mut from.proofs,
                &mut from.running,
                &reply,
                k,
            )
        })
        .unwrap();
        next = answer.reply.unwrap().message;
    }
    carried
}

/// A replica that took another's changes while answering it knows, from that conversation,
/// that the other has exactly its heads: it starts nothing to tell it, and when it next has a
/// change of its own, its message carries that change alone, not the other's changes back.
#[test]
fn changes_taken_from_a_device_are_not_sent_back_to_it() {
    use chatsync_model::exchange;
    let (da, ds) = (dev("dev-a"), dev("dev-s"));
    let mut doc = ChatDoc::create(ChatId::new("c").unwrap(), "t", &ds, 1).unwrap();
    let mut a = Side::new(da.clone(), ChatDoc::load(&doc.save(), &da).unwrap());
    let mut s = Side::new(ds.clone(), doc);
    // S has run a conversation with A before (its state there has history).
    s.doc.post(&ds, mid("s0"), "first", None, 2).unwrap();
    assert!(run_conversation(&mut s, &mut a).iter().sum::<usize>() > 0);

    for i in 0..50 {
        a.doc
            .post(&da, mid(&format!("a{i}")), "from a", None, 10 + i)
            .unwrap();
        run_conversation(&mut a, &mut s);
        let heads = s.doc.heads();
        assert!(
            exchange::peer_has_exactly(Some(&s.answering), &heads),
            "S does not know A has what it sent"
        );
        exchange::know_peer_has(&mut s.running, &heads);
    }
    assert_eq!(s.doc.len(), 51);

    // S's own change: one conversation, whose messages carry A that change and nothing else
    // (without what S knew, its first message would carry the whole document back).
    s.doc.post(&ds, mid("s1"), "from s", None, 100).unwrap();
    let carried = run_conversation(&mut s, &mut a);
    assert_eq!(carried.iter().sum::<usize>(), 1, "{carried:?}");
    assert_eq!(carried[0], 1, "the first message carried the change");
    assert_eq!(a.doc.heads(), s.doc.heads());
    assert_eq!(a.doc.len(), 52);
}
