//! Focused tests of the rules of one chat document: what each operation accepts, refuses and
//! changes, how saving and loading round-trip, and how the display order behaves with wrong
//! device clocks.

#![allow(clippy::unwrap_used)]

use automerge::{ObjType, ROOT, ReadDoc, Value, transaction::Transactable};
use chatsync_model::{
    ChatDoc, ChatId, Clock, Device, DeviceId, Message, MessageId, ModelError,
    header::Header,
    layout,
    limits::{MAX_DEVICE_NAME_BYTES, MAX_REACTION_BYTES, MAX_TEXT_BYTES, MAX_TITLE_BYTES},
    schema,
};
use proptest::prelude::*;

/// A plausible "now" (November 2023), in ms.
const T0: i64 = 1_700_000_000_000;

fn dev(id: &str) -> Device {
    Device::new(DeviceId::new(id).unwrap(), format!("{id} laptop")).unwrap()
}

fn mid(s: &str) -> MessageId {
    MessageId::new(s).unwrap()
}

fn chat_id() -> ChatId {
    ChatId::new("chat-1").unwrap()
}

fn new_chat(d: &Device) -> ChatDoc {
    ChatDoc::create(chat_id(), "Team", d, T0).unwrap()
}

/// Another replica of `c`, as device `d` would get it (from a full save).
fn fork(c: &mut ChatDoc, d: &Device) -> ChatDoc {
    ChatDoc::load(&c.save(), d).unwrap()
}

fn ids(c: &ChatDoc) -> Vec<String> {
    c.message_ids().map(|m| m.to_string()).collect()
}

fn msg_ids(ms: &[Message]) -> Vec<String> {
    ms.iter().map(|m| m.id.to_string()).collect()
}

fn all(c: &ChatDoc) -> Vec<Message> {
    c.messages().collect()
}

/// A chat where `d` posted `m00`..`m{n-1}` one second apart.
fn chat_with(d: &Device, n: usize) -> ChatDoc {
    let mut c = new_chat(d);
    for i in 0..n {
        c.post(
            d,
            mid(&format!("m{i:02}")),
            &format!("text {i}"),
            None,
            T0 + 1_000 * i as i64,
        )
        .unwrap();
    }
    c
}

/// The raw text stored in the document for a message (not the display view).
fn raw_text(c: &mut ChatDoc, id: &str) -> Option<String> {
    raw_field(c, id, schema::TEXT)
}

// ---------------------------------------------------------------------------------------------
// Creating, saving, loading
// ---------------------------------------------------------------------------------------------

#[test]
fn create_sets_chat_facts() {
    let a = dev("dev-a");
    let c = new_chat(&a);
    let info = c.info();
    assert_eq!(info.id, chat_id());
    assert_eq!(info.title, "Team");
    assert_eq!(info.created_at, T0);
    assert_eq!(info.created_by, a.id);
    assert_eq!(info.messages, 0);
    assert_eq!(c.id(), &chat_id());
    assert!(c.is_empty());
    assert_eq!(c.len(), 0);
    assert!(c.read_markers().is_empty());
    assert!(c.last(10).is_empty());
}

#[test]
fn create_refuses_bad_titles() {
    let a = dev("dev-a");
    for bad in ["", "   \n\t", "a\0b"] {
        let r = ChatDoc::create(chat_id(), bad, &a, T0);
        assert!(matches!(r, Err(ModelError::Invalid(_))), "{bad:?}: {r:?}");
    }
    let long = "t".repeat(MAX_TITLE_BYTES + 1);
    assert!(matches!(
        ChatDoc::create(chat_id(), &long, &a, T0),
        Err(ModelError::Invalid(_))
    ));
    let max = "t".repeat(MAX_TITLE_BYTES);
    assert_eq!(
        ChatDoc::create(chat_id(), &max, &a, T0).unwrap().title(),
        max
    );
}

#[test]
fn device_names_are_validated() {
    let id = DeviceId::new("dev-a").unwrap();
    assert!(Device::new(id.clone(), "").is_err());
    assert!(Device::new(id.clone(), " ").is_err());
    assert!(Device::new(id.clone(), "x".repeat(MAX_DEVICE_NAME_BYTES + 1)).is_err());
    assert!(Device::new(id.clone(), "x".repeat(MAX_DEVICE_NAME_BYTES)).is_ok());
    // Same id, same actor: a device continues its own change sequence after a restart.
    let d1 = Device::new(id.clone(), "one").unwrap();
    let d2 = Device::new(id, "two").unwrap();
    assert_eq!(d1.actor, d2.actor);
    assert_ne!(d1.actor, dev("dev-b").actor);
}

/// A chat with every kind of content: edits, replies, reactions, a deletion, read markers and
/// a new title, written by two devices.
fn busy_chat() -> (ChatDoc, Device, Device) {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = new_chat(&a);
    ca.post(&a, mid("m1"), "hello", None, T0 + 1).unwrap();
    ca.post(&a, mid("m2"), "second", None, T0 + 2).unwrap();
    let mut cb = fork(&mut ca, &b);
    cb.post(&b, mid("m3"), "reply", Some(&mid("m1")), T0 + 3)
        .unwrap();
    cb.react(&b, &mid("m1"), Some("👍"), T0 + 4).unwrap();
    cb.mark_read(&b, &mid("m3"), T0 + 5).unwrap();
    ca.merge(&mut cb).unwrap();
    ca.edit(&a, &mid("m1"), "hello, edited", T0 + 6).unwrap();
    ca.delete(&a, &mid("m2"), T0 + 7).unwrap();
    ca.react(&a, &mid("m3"), Some("ok"), T0 + 8).unwrap();
    ca.mark_read(&a, &mid("m3"), T0 + 9).unwrap();
    ca.set_title("Renamed", T0 + 10).unwrap();
    (ca, a, b)
}

#[test]
fn save_and_load_round_trip() {
    let (mut ca, a, b) = busy_chat();
    let bytes = ca.save();
    let loaded = ChatDoc::load(&bytes, &b).unwrap();
    assert_eq!(all(&loaded), all(&ca));
    assert_eq!(ids(&loaded), ["m1", "m2", "m3"]);
    assert_eq!(loaded.info(), ca.info());
    assert_eq!(loaded.title(), "Renamed");
    assert_eq!(loaded.read_markers(), ca.read_markers());
    assert_eq!(loaded.read_markers().len(), 2);
    let m1 = loaded.message(&mid("m1")).unwrap();
    assert_eq!(m1.text, "hello, edited");
    assert_eq!(m1.edited_at, Some(T0 + 6));
    assert_eq!(m1.reactions.get(&b.id).map(String::as_str), Some("👍"));
    let m2 = loaded.message(&mid("m2")).unwrap();
    assert!(m2.deleted);
    assert_eq!(m2.text, "");
    let m3 = loaded.message(&mid("m3")).unwrap();
    assert_eq!(m3.reply_to, Some(mid("m1")));
    assert_eq!(m3.author, b.id);
    assert_eq!(m3.author_name, "dev-b laptop");
    assert_eq!(m3.reactions.get(&a.id).map(String::as_str), Some("ok"));
}

#[test]
fn a_loaded_replica_keeps_working_and_merges_back() {
    let (mut ca, a, b) = busy_chat();
    let mut cb = fork(&mut ca, &b);
    // The clock stamped after a load must come after everything loaded.
    let max = all(&cb).iter().map(|m| m.clock).max().unwrap();
    let m4 = cb.post(&b, mid("m4"), "after load", None, 0).unwrap();
    assert!(m4.clock > max);
    assert_eq!(ids(&cb).last().map(String::as_str), Some("m4"));
    assert_eq!(ca.merge(&mut cb).unwrap(), vec![mid("m4")]);
    assert_eq!(all(&ca), all(&cb));
    // Device a can also restart from its own save and continue its change sequence.
    let mut ca2 = ChatDoc::load(&ca.save(), &a).unwrap();
    ca2.post(&a, mid("m5"), "after restart", None, T0 + 100)
        .unwrap();
    cb.merge(&mut ca2).unwrap();
    assert_eq!(ids(&cb), ["m1", "m2", "m3", "m4", "m5"]);
}

#[test]
fn save_plus_incremental_chunks_load_in_one_call() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut c = new_chat(&a);
    c.post(&a, mid("m1"), "one", None, T0 + 1).unwrap();
    let mut bytes = c.save();
    let base_len = bytes.len();

    c.post(&a, mid("m2"), "two", Some(&mid("m1")), T0 + 2)
        .unwrap();
    let chunk1 = c.save_incremental();
    assert!(!chunk1.is_empty());
    c.react(&a, &mid("m1"), Some("👍"), T0 + 3).unwrap();
    c.edit(&a, &mid("m2"), "two!", T0 + 4).unwrap();
    c.mark_read(&a, &mid("m2"), T0 + 5).unwrap();
    let chunk2 = c.save_incremental();
    assert!(!chunk2.is_empty());
    // Nothing new: nothing to append.
    assert!(c.save_incremental().is_empty());

    // The base alone is the state at the time of the full save.
    assert_eq!(ids(&ChatDoc::load(&bytes, &b).unwrap()), ["m1"]);

    bytes.extend_from_slice(&chunk1);
    let partial = ChatDoc::load(&bytes, &b).unwrap();
    assert_eq!(ids(&partial), ["m1", "m2"]);
    assert!(partial.message(&mid("m1")).unwrap().reactions.is_empty());

    bytes.extend_from_slice(&chunk2);
    assert!(bytes.len() > base_len);
    let loaded = ChatDoc::load(&bytes, &b).unwrap();
    assert_eq!(all(&loaded), all(&c));
    assert_eq!(loaded.read_markers(), c.read_markers());
    assert_eq!(loaded.message(&mid("m2")).unwrap().text, "two!");
}

#[test]
fn incremental_chunks_without_a_full_save_also_load() {
    let a = dev("dev-a");
    let mut c = new_chat(&a);
    let mut bytes = c.save_incremental();
    assert!(!bytes.is_empty(), "the genesis change must be saved");
    c.post(&a, mid("m1"), "one", None, T0 + 1).unwrap();
    bytes.extend(c.save_incremental());
    c.post(&a, mid("m2"), "two", None, T0 + 2).unwrap();
    bytes.extend(c.save_incremental());
    let loaded = ChatDoc::load(&bytes, &a).unwrap();
    assert_eq!(all(&loaded), all(&c));
    assert_eq!(loaded.info(), c.info());
}

#[test]
fn loading_garbage_is_an_error_not_a_panic() {
    let a = dev("dev-a");
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 64],
        b"not an automerge document at all".to_vec(),
        // Automerge's magic bytes followed by junk.
        [
            &[0x85, 0x6f, 0x4a, 0x83][..],
            &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4][..],
        ]
        .concat(),
    ];
    // A simple deterministic pseudo-random stream.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [1usize, 7, 100, 1000] {
        inputs.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect(),
        );
    }
    for bytes in &inputs {
        let r = ChatDoc::load(bytes, &a);
        assert!(matches!(r, Err(ModelError::Corrupt(_))), "{bytes:?}: {r:?}");
    }
}

#[test]
fn truncated_and_bit_flipped_saves_are_refused() {
    let (mut c, a, _) = busy_chat();
    let good = c.save();
    assert!(ChatDoc::load(&good, &a).is_ok());
    for len in 0..good.len() {
        let r = ChatDoc::load(&good[..len], &a);
        assert!(r.is_err(), "prefix of {len} bytes loaded: {r:?}");
    }
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            // Must not panic. A flip is caught by the checksum, so it must not load either.
            let r = ChatDoc::load(&bad, &a);
            assert!(r.is_err(), "byte {i} ^ {bit:#x} loaded: {r:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn loading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let a = dev("dev-a");
        prop_assert!(ChatDoc::load(&bytes, &a).is_err());
    }

    #[test]
    fn loading_a_mangled_save_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let a = dev("dev-a");
        let mut c = chat_with(&a, 3);
        let mut bytes = c.save();
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep.max(1));
        // Either refused, or (if the edits happened to be no-ops) a well-formed chat.
        if let Ok(loaded) = ChatDoc::load(&bytes, &a) {
            prop_assert_eq!(loaded.messages().count(), loaded.len());
        }
    }
}

/// Builds an Automerge document by hand, to test what `load` makes of shapes the model never
/// writes itself.
fn raw_doc(build: impl FnOnce(&mut automerge::AutoCommit)) -> Vec<u8> {
    let mut doc = automerge::AutoCommit::new();
    build(&mut doc);
    doc.commit();
    doc.save()
}

#[test]
fn documents_that_are_not_chats_are_refused() {
    let a = dev("dev-a");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "empty document",
            raw_doc(|d| {
                d.put(ROOT, "x", 1).unwrap();
            }),
        ),
        (
            "schema is a string",
            raw_doc(|d| {
                d.put(ROOT, schema::SCHEMA, "1").unwrap();
                d.put(ROOT, schema::ID, "chat-1").unwrap();
                d.put_object(ROOT, schema::MESSAGES, ObjType::Map).unwrap();
                d.put_object(ROOT, schema::READ, ObjType::Map).unwrap();
            }),
        ),
        (
            "schema zero",
            raw_doc(|d| {
                d.put(ROOT, schema::SCHEMA, 0).unwrap();
                d.put(ROOT, schema::ID, "chat-1").unwrap();
                d.put_object(ROOT, schema::MESSAGES, ObjType::Map).unwrap();
                d.put_object(ROOT, schema::READ, ObjType::Map).unwrap();
            }),
        ),
        (
            "no chat id",
            raw_doc(|d| {
                d.put(ROOT, schema::SCHEMA, 1).unwrap();
                d.put_object(ROOT, schema::MESSAGES, ObjType::Map).unwrap();
                d.put_object(ROOT, schema::READ, ObjType::Map).unwrap();
            }),
        ),
        (
            "invalid chat id",
            raw_doc(|d| {
                d.put(ROOT, schema::SCHEMA, 1).unwrap();
                d.put(ROOT, schema::ID, "not a valid id").unwrap();
                d.put_object(ROOT, schema::MESSAGES, ObjType::Map).unwrap();
                d.put_object(ROOT, schema::READ, ObjType::Map).unwrap();
            }),
        ),
        (
            "messages is a list",
            raw_doc(|d| {
                d.put(ROOT, schema::SCHEMA, 1).unwrap();
                d.put(ROOT, schema::ID, "chat-1").unwrap();
                d.put_object(ROOT, schema::MESSAGES, ObjType::List).unwrap();
                d.put_object(ROOT, schema::READ, ObjType::Map).unwrap();
            }),
        ),
        (
            "no read map",
            raw_doc(|d| {
                d.put(ROOT, schema::SCHEMA, 1).unwrap();
                d.put(ROOT, schema::ID, "chat-1").unwrap();
                d.put_object(ROOT, schema::MESSAGES, ObjType::Map).unwrap();
            }),
        ),
    ];
    for (what, bytes) in cases {
        let r = ChatDoc::load(&bytes, &a);
        assert!(matches!(r, Err(ModelError::Corrupt(_))), "{what}: {r:?}");
    }
    // The same shape with everything present is accepted: the refusals above are specific.
    let ok = raw_doc(|d| {
        d.put(ROOT, schema::SCHEMA, 1).unwrap();
        d.put(ROOT, schema::ID, "chat-1").unwrap();
        d.put_object(ROOT, schema::MESSAGES, ObjType::Map).unwrap();
        d.put_object(ROOT, schema::READ, ObjType::Map).unwrap();
    });
    assert!(ChatDoc::load(&ok, &a).unwrap().is_empty());
}

#[test]
fn a_newer_schema_version_is_refused() {
    let a = dev("dev-a");
    let mut c = chat_with(&a, 2);
    // The current version loads.
    assert_eq!(ChatDoc::load(&c.save(), &a).unwrap().len(), 2);

    let doc = c.automerge_mut();
    doc.put(ROOT, schema::SCHEMA, schema::SCHEMA_VERSION + 1)
        .unwrap();
    doc.commit();
    let bytes = c.save();
    let r = ChatDoc::load(&bytes, &a);
    assert!(matches!(r, Err(ModelError::NewerSchema(_))), "{r:?}");

    let doc = automerge::AutoCommit::load(&bytes).unwrap();
    let r = ChatDoc::from_doc(doc, &a);
    assert!(matches!(r, Err(ModelError::NewerSchema(_))), "{r:?}");

    // Also when the newer version only arrives in an incremental chunk after a good save.
    let mut c = chat_with(&a, 1);
    let mut bytes = c.save();
    c.automerge_mut()
        .put(ROOT, schema::SCHEMA, schema::SCHEMA_VERSION + 7)
        .unwrap();
    c.automerge_mut().commit();
    bytes.extend(c.save_incremental());
    assert!(matches!(
        ChatDoc::load(&bytes, &a),
        Err(ModelError::NewerSchema(_))
    ));
}

/// A chat created before buckets (schema 2) keeps every message in one map, and stays so:
/// posts, reactions and sync between its replicas all work as before, and neither a move to
/// buckets nor a move back is taken from a peer (the layout is fixed at creation).
#[test]
fn chats_without_buckets_keep_working_and_keep_their_layout() {
    let (a, b) = (dev("dev-a"), dev("dev-b"));
    let flat = raw_doc(|d| {
        d.put(ROOT, schema::SCHEMA, 2).unwrap();
        d.put(ROOT, schema::ID, "chat-1").unwrap();
        d.put(ROOT, schema::TITLE, "Old").unwrap();
        d.put(ROOT, schema::CREATED_AT, T0).unwrap();
        d.put(ROOT, schema::CREATED_BY, "dev-a").unwrap();
        d.put_object(ROOT, schema::MESSAGES, ObjType::Map).unwrap();
        d.put_object(ROOT, schema::READ, ObjType::Map).unwrap();
    });
    let mut ca = ChatDoc::load(&flat, &a).unwrap();
    let mut cb = ChatDoc::load(&flat, &b).unwrap();
    ca.post(&a, mid("m1"), "one", None, T0 + 1).unwrap();
    cb.post(&b, mid("m2"), "two", None, T0 + 2).unwrap();
    ca.merge(&mut cb).unwrap();
    cb.merge(&mut ca).unwrap();
    cb.react(&b, &mid("m1"), Some("👍"), T0 + 3).unwrap();
    ca.merge(&mut cb).unwrap();
    for c in [&mut ca, &mut cb] {
        assert_eq!(ids(c), ["m1", "m2"]);
        let doc = c.automerge_mut();
        let (_, container) = doc.get(ROOT, schema::MESSAGES).unwrap().unwrap();
        assert_eq!(layout::entry_map(doc, "m1"), Some(container.clone()));
        assert!(doc.get(&container, "m2").unwrap().is_some());
    }
    let reloaded = ChatDoc::load(&ca.save(), &a).unwrap();
    assert_eq!(reloaded.message(&mid("m1")).unwrap().reactions.len(), 1);

    // A peer claiming the flat chat is now bucketed is refused, and so is the reverse.
    let mut bumped = fork(&mut ca, &b);
    bumped.automerge_mut().put(ROOT, schema::SCHEMA, 3).unwrap();
    bumped.automerge_mut().commit();
    let r = ca.merge(&mut bumped);
    assert!(matches!(r, Err(ModelError::Corrupt(_))), "{r:?}");
    let mut bucketed = chat_with(&a, 1);
    let mut lowered = fork(&mut bucketed, &b);
    lowered
        .automerge_mut()
        .put(ROOT, schema::SCHEMA, 2)
        .unwrap();
    lowered.automerge_mut().commit();
    let r = bucketed.merge(&mut lowered);
    assert!(matches!(r, Err(ModelError::Corrupt(_))), "{r:?}");
    assert_eq!(ids(&bucketed), ["m00"]);
}

/// New chats keep each message in the bucket of its id, all of them made with the chat.
#[test]
fn new_chats_file_messages_in_buckets() {
    let a = dev("dev-a");
    let mut c = chat_with(&a, 20);
    let doc = c.automerge_mut();
    assert_eq!(
        doc.get(ROOT, schema::SCHEMA).unwrap().unwrap().0.as_i64(),
        Some(schema::SCHEMA_VERSION)
    );
    let (_, container) = doc.get(ROOT, schema::MESSAGES).unwrap().unwrap();
    assert_eq!(doc.length(&container), layout::BUCKETS);
    assert_eq!(doc.length(&container), layout::entry_maps(doc).len());
    for i in 0..20 {
        let id = format!("m{i:02}");
        let key = layout::bucket_key(layout::bucket_of(&id));
        let (_, bucket) = doc.get(&container, key).unwrap().unwrap();
        assert!(doc.get(&bucket, id.as_str()).unwrap().is_some(), "{id}");
    }
    // Missing one bucket, the document is no chat.
    doc.delete(&container, "1f").unwrap();
    doc.commit();
    let r = ChatDoc::load(&c.save(), &a);
    assert!(matches!(r, Err(ModelError::Corrupt(_))), "{r:?}");
}

/// Documented in `schema`: "A replica refuses documents with a newer version." Loading does, but
/// `merge` and `apply_changes` accept a newer peer's schema bump without a word, after which the
/// replica holds (and will save) a document that it refuses to load on its next start.
#[test]
fn merging_a_newer_schema_version_is_refused() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut old = chat_with(&a, 1);
    let mut newer = fork(&mut old, &b);
    newer
        .automerge_mut()
        .put(ROOT, schema::SCHEMA, schema::SCHEMA_VERSION + 1)
        .unwrap();
    newer.automerge_mut().commit();
    let merged = old.merge(&mut newer);
    let reload = ChatDoc::load(&old.save(), &a);
    assert!(
        matches!(merged, Err(ModelError::NewerSchema(_))),
        "merge accepted schema {}; reloading the result gives {reload:?}",
        schema::SCHEMA_VERSION + 1
    );
}

#[test]
fn merging_another_chat_is_refused() {
    let a = dev("dev-a");
    let mut c1 = chat_with(&a, 1);
    let mut c2 = ChatDoc::create(ChatId::new("chat-2").unwrap(), "Other", &a, T0).unwrap();
    c2.post(&a, mid("x1"), "other chat", None, T0).unwrap();
    assert!(matches!(c1.merge(&mut c2), Err(ModelError::Invalid(_))));
    assert_eq!(ids(&c1), ["m00"]);
}

// ---------------------------------------------------------------------------------------------
// Posting
// ---------------------------------------------------------------------------------------------

#[test]
fn post_returns_the_stored_message() {
    let a = dev("dev-a");
    let mut c = new_chat(&a);
    let m = c.post(&a, mid("m1"), "hello", None, T0 + 5).unwrap();
    assert_eq!(m.id, mid("m1"));
    assert_eq!(m.author, a.id);
    assert_eq!(m.author_name, "dev-a laptop");
    assert_eq!(m.ts, T0 + 5);
    assert_eq!(Some(m.clock), Clock::tick(Clock::ZERO, T0 + 5));
    assert_eq!(m.text, "hello");
    assert_eq!(m.reply_to, None);
    assert_eq!(m.edited_at, None);
    assert!(!m.edited());
    assert!(!m.deleted);
    assert!(m.reactions.is_empty());
    assert_eq!(c.message(&mid("m1")), Some(m));
    assert_eq!(c.len(), 1);
    assert_eq!(c.info().messages, 1);
    assert!(c.message(&mid("nope")).is_none());

    let r = c
        .post(&a, mid("m2"), "answer", Some(&mid("m1")), T0 + 6)
        .unwrap();
    assert_eq!(r.reply_to, Some(mid("m1")));
}

#[test]
fn post_refuses_invalid_input_and_changes_nothing() {
    let a = dev("dev-a");
    let mut c = chat_with(&a, 1);
    let heads = c.heads();
    let before = all(&c);

    for bad in ["", " ", "\n\t  ", "nul\0inside"] {
        let r = c.post(&a, mid("new"), bad, None, T0 + 10);
        assert!(matches!(r, Err(ModelError::Invalid(_))), "{bad:?}: {r:?}");
    }
    let long = "x".repeat(MAX_TEXT_BYTES + 1);
    assert!(matches!(
        c.post(&a, mid("new"), &long, None, T0 + 10),
        Err(ModelError::Invalid(_))
    ));
    // Multi-byte characters count in bytes, not characters.
    let long_chars = "é".repeat(MAX_TEXT_BYTES / 2 + 1);
    assert!(long_chars.chars().count() < MAX_TEXT_BYTES);
    assert!(matches!(
        c.post(&a, mid("new"), &long_chars, None, T0 + 10),
        Err(ModelError::Invalid(_))
    ));
    // Duplicate id, even from another device and even with different text.
    let b = dev("dev-b");
    for d in [&a, &b] {
        assert!(matches!(
            c.post(d, mid("m00"), "again", None, T0 + 10),
            Err(ModelError::Invalid(_))
        ));
    }
    // Reply to a message that is not in the chat.
    match c.post(&a, mid("new"), "reply", Some(&mid("ghost")), T0 + 10) {
        Err(ModelError::MessageNotFound(id)) => assert_eq!(id, mid("ghost")),
        other => panic!("expected MessageNotFound, got {other:?}"),
    }

    assert_eq!(c.heads(), heads, "a refused post must not write anything");
    assert_eq!(all(&c), before);
    assert!(c.message(&mid("new")).is_none());

    // The limit itself is allowed.
    let max = "x".repeat(MAX_TEXT_BYTES);
    assert_eq!(
        c.post(&a, mid("big"), &max, None, T0 + 11).unwrap().text,
        max
    );
}

#[test]
fn posting_a_duplicate_id_seen_only_after_a_merge_is_refused() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = new_chat(&a);
    let mut cb = fork(&mut ca, &b);
    ca.post(&a, mid("m1"), "from a", None, T0).unwrap();
    cb.merge(&mut ca).unwrap();
    assert!(matches!(
        cb.post(&b, mid("m1"), "from b", None, T0),
        Err(ModelError::Invalid(_))
    ));
    // And a reply to a message only known after the merge is fine.
    cb.post(&b, mid("m2"), "re", Some(&mid("m1")), T0).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Editing
// ---------------------------------------------------------------------------------------------

#[test]
fn edit_by_author_replaces_text_and_sets_edited_at() {
    let a = dev("dev-a");
    let mut c = chat_with(&a, 3);
    let before = c.message(&mid("m01")).unwrap();
    let order = ids(&c);
    let m = c.edit(&a, &mid("m01"), "new text", T0 + 50_000).unwrap();
    assert_eq!(m.text, "new text");
    assert_eq!(m.edited_at, Some(T0 + 50_000));
    assert!(m.edited());
    // An edit changes neither the identity nor the place of a message.
    assert_eq!(m.clock, before.clock);
    assert_eq!(m.ts, before.ts);
    assert_eq!(m.author, before.author);
    assert_eq!(ids(&c), order);
    assert_eq!(c.message(&mid("m01")), Some(m));

    // A second edit moves edited_at, even backwards in wall-clock time (it is the author's clock).
    let m = c.edit(&a, &mid("m01"), "newer text", T0 - 5).unwrap();
    assert_eq!(m.text, "newer text");
    assert_eq!(m.edited_at, Some(T0 - 5));
}

#[test]
fn edit_with_the_same_text_writes_nothing() {
    let a = dev("dev-a");
    let mut c = chat_with(&a, 1);
    let heads = c.heads();
    let m = c.edit(&a, &mid("m00"), "text 0", T0 + 99).unwrap();
    assert_eq!(m.edited_at, None);
    assert_eq!(c.heads(), heads);
}

#[test]
fn only_the_author_can_edit() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = chat_with(&a, 1);
    let mut cb = fork(&mut ca, &b);
    let heads = cb.heads();
    assert!(matches!(
        cb.edit(&b, &mid("m00"), "hijacked", T0 + 1),
        Err(ModelError::Forbidden(_))
    ));
    assert_eq!(cb.heads(), heads);
    assert_eq!(cb.message(&mid("m00")).unwrap().text, "text 0");
    // The same holds on the author's own replica for another device.
    assert!(matches!(
        ca.edit(&b, &mid("m00"), "hijacked", T0 + 1),
        Err(ModelError::Forbidden(_))
    ));
    assert_eq!(ca.message(&mid("m00")).unwrap().edited_at, None);
}

#[test]
fn edit_refuses_unknown_deleted_and_invalid() {
    let a = dev("dev-a");
    let mut c = chat_with(&a, 2);
    match c.edit(&a, &mid("ghost"), "x", T0) {
        Err(ModelError::MessageNotFound(id)) => assert_eq!(id, mid("ghost")),
        other => panic!("{other:?}"),
    }
    for bad in ["", "  ", "a\0"] {
        assert!(matches!(
            c.edit(&a, &mid("m00"), bad, T0),
            Err(ModelError::Invalid(_))
        ));
    }
    assert!(matches!(
        c.edit(&a, &mid("m00"), &"x".repeat(MAX_TEXT_BYTES + 1), T0),
        Err(ModelError::Invalid(_))
    ));
    c.delete(&a, &mid("m01"), T0).unwrap();
    match c.edit(&a, &mid("m01"), "resurrect", T0) {
        Err(ModelError::Deleted(id)) => assert_eq!(id, mid("m01")),
        other => panic!("{other:?}"),
    }
    let m = c.message(&mid("m01")).unwrap();
    assert!(m.deleted);
    assert_eq!(m.text, "");
    assert_eq!(raw_text(&mut c, "m01").as_deref(), Some(""));
}

// ---------------------------------------------------------------------------------------------
// Deleting
// ---------------------------------------------------------------------------------------------

#[test]
fn delete_keeps_the_place_and_clears_text_and_reactions() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = chat_with(&a, 3);
    let mut cb = fork(&mut ca, &b);
    cb.react(&b, &mid("m01"), Some("👍"), T0).unwrap();
    ca.merge(&mut cb).unwrap();
    ca.react(&a, &mid("m01"), Some("❤️"), T0).unwrap();
    assert_eq!(ca.message(&mid("m01")).unwrap().reactions.len(), 2);

    let before = ca.message(&mid("m01")).unwrap();
    let order = ids(&ca);
    let m = ca.delete(&a, &mid("m01"), T0 + 9).unwrap();
    assert!(m.deleted);
    assert_eq!(m.text, "");
    assert!(m.reactions.is_empty());
    assert_eq!(m.clock, before.clock);
    assert_eq!(m.ts, before.ts);
    assert_eq!(m.author, before.author);
    assert_eq!(ids(&ca), order, "a deleted message keeps its place");
    assert_eq!(ca.len(), 3);
    // The text is gone from the document's current state, not just hidden.
    assert_eq!(raw_text(&mut ca, "m01").as_deref(), Some(""));
    assert_eq!(raw_text(&mut ca, "m00").as_deref(), Some("text 0"));

    // Everywhere, after a merge and after a reload.
    cb.merge(&mut ca).unwrap();
    assert_eq!(cb.message(&mid("m01")), Some(m.clone()));
    let reloaded = ChatDoc::load(&ca.save(), &b).unwrap();
    assert_eq!(reloaded.message(&mid("m01")), Some(m));
    assert_eq!(ids(&reloaded), order);
}

#[test]
fn delete_is_idempotent() {
    let a = dev("dev-a");
    let mut c = chat_with(&a, 2);
    let first = c.delete(&a, &mid("m00"), T0 + 1).unwrap();
    let heads = c.heads();
    let second = c.delete(&a, &mid("m00"), T0 + 2).unwrap();
    assert_eq!(first, second);
    assert_eq!(c.heads(), heads, "deleting twice writes nothing");
    // Other messages are untouched.
    assert_eq!(c.message(&mid("m01")).unwrap().text, "text 1");
    assert!(!c.message(&mid("m01")).unwrap().deleted);
}

#[test]
fn only_the_author_can_delete() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = chat_with(&a, 1);
    let mut cb = fork(&mut ca, &b);
    let heads = cb.heads();
    assert!(matches!(
        cb.delete(&b, &mid("m00"), T0),
        Err(ModelError::Forbidden(_))
    ));
    assert_eq!(cb.heads(), heads);
    assert!(!cb.message(&mid("m00")).unwrap().deleted);
    assert!(matches!(
        cb.delete(&b, &mid("ghost"), T0),
        Err(ModelError::MessageNotFound(_))
    ));
}

#[test]
fn reactions_made_concurrently_with_a_delete_stay_hidden() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = chat_with(&a, 1);
    let mut cb = fork(&mut ca, &b);
    ca.delete(&a, &mid("m00"), T0 + 1).unwrap();
    cb.react(&b, &mid("m00"), Some("👍"), T0 + 1).unwrap();
    ca.merge(&mut cb).unwrap();
    cb.merge(&mut ca).unwrap();
    for c in [&ca, &cb] {
        let m = c.message(&mid("m00")).unwrap();
        assert!(m.deleted);
        assert!(m.reactions.is_empty());
        assert_eq!(m.text, "");
    }
    assert_eq!(all(&ca), all(&cb));
}

// ---------------------------------------------------------------------------------------------
// Reactions
// ---------------------------------------------------------------------------------------------

#[test]
fn react_sets_replaces_and_clears_one_reaction_per_device() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = chat_with(&a, 1);
    let m00 = mid("m00");

    let m = ca.react(&a, &m00, Some("👍"), T0).unwrap();
    assert_eq!(m.reactions.len(), 1);
    assert_eq!(m.reactions[&a.id], "👍");

    let m = ca.react(&a, &m00, Some("❤️"), T0).unwrap();
    assert_eq!(m.reactions.len(), 1, "a device has one reaction, replaced");
    assert_eq!(m.reactions[&a.id], "❤️");

    // Setting the same reaction again writes nothing.
    let heads = ca.heads();
    ca.react(&a, &m00, Some("❤️"), T0).unwrap();
    assert_eq!(ca.heads(), heads);

    let mut cb = fork(&mut ca, &b);
    cb.react(&b, &m00, Some("😂"), T0).unwrap();
    ca.merge(&mut cb).unwrap();
    let m = ca.message(&m00).unwrap();
    assert_eq!(m.reactions.len(), 2);
    assert_eq!(m.reactions[&a.id], "❤️");
    assert_eq!(m.reactions[&b.id], "😂");

    let m = ca.react(&a, &m00, None, T0).unwrap();
    assert_eq!(m.reactions.len(), 1);
    assert!(!m.reactions.contains_key(&a.id));
    assert_eq!(m.reactions[&b.id], "😂");

    // Clearing what is not there writes nothing.
    let heads = ca.heads();
    ca.react(&a, &m00, None, T0).unwrap();
    assert_eq!(ca.heads(), heads);

    // Reacting neither edits the message nor moves it.
    assert_eq!(m.edited_at, None);
    assert_eq!(m.text, "text 0");
}

#[test]
fn react_refuses_deleted_unknown_and_invalid() {
    let a = dev("dev-a");
    let mut c = chat_with(&a, 2);
    c.react(&a, &mid("m00"), Some("👍"), T0).unwrap();
    c.delete(&a, &mid("m00"), T0).unwrap();
    for r in [Some("👍"), Some("ok"), None] {
        match c.react(&a, &mid("m00"), r, T0) {
            Err(ModelError::Deleted(id)) => assert_eq!(id, mid("m00")),
            other => panic!("{r:?}: {other:?}"),
        }
    }
    assert!(matches!(
        c.react(&a, &mid("ghost"), Some("👍"), T0),
        Err(ModelError::MessageNotFound(_))
    ));
    let too_long = "x".repeat(MAX_REACTION_BYTES + 1);
    let heads = c.heads();
    for bad in [
        "",
        " ",
        "a b",
        "👍 ",
        "\t",
        "\n",
        "x\u{7}",
        "\0",
        too_long.as_str(),
    ] {
        let r = c.react(&a, &mid("m01"), Some(bad), T0);
        assert!(matches!(r, Err(ModelError::Invalid(_))), "{bad:?}: {r:?}");
    }
    assert_eq!(c.heads(), heads);
    assert!(c.message(&mid("m01")).unwrap().reactions.is_empty());
    let max = "x".repeat(MAX_REACTION_BYTES);
    let m = c.react(&a, &mid("m01"), Some(&max), T0).unwrap();
    assert_eq!(m.reactions[&a.id], max);
    // A multi-codepoint emoji (family with ZWJs and a skin tone modifier) fits.
    let family = "👩🏽\u{200d}👩\u{200d}👧";
    let m = c.react(&a, &mid("m01"), Some(family), T0).unwrap();
    assert_eq!(m.reactions[&a.id], family);
}

// ---------------------------------------------------------------------------------------------
// Read markers
// ---------------------------------------------------------------------------------------------

#[test]
fn mark_read_only_moves_forward() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut c = chat_with(&a, 5);
    assert_eq!(c.read_marker(&b.id), None);

    assert!(c.mark_read(&b, &mid("m02"), T0).unwrap());
    assert_eq!(c.read_marker(&b.id), Some(mid("m02")));

    // Backwards and sideways: no change, nothing written.
    let heads = c.heads();
    assert!(!c.mark_read(&b, &mid("m00"), T0).unwrap());
    assert!(!c.mark_read(&b, &mid("m02"), T0).unwrap());
    assert_eq!(c.read_marker(&b.id), Some(mid("m02")));
    assert_eq!(c.heads(), heads);

    assert!(c.mark_read(&b, &mid("m04"), T0).unwrap());
    assert_eq!(c.read_marker(&b.id), Some(mid("m04")));

    match c.mark_read(&b, &mid("ghost"), T0) {
        Err(ModelError::MessageNotFound(id)) => assert_eq!(id, mid("ghost")),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.read_marker(&b.id), Some(mid("m04")));

    // Markers are per device.
    assert!(c.mark_read(&a, &mid("m01"), T0).unwrap());
    let markers = c.read_markers();
    assert_eq!(markers.len(), 2);
    assert_eq!(markers[&a.id], mid("m01"));
    assert_eq!(markers[&b.id], mid("m04"));
}

#[test]
fn mark_read_follows_display_order_not_id_order() {
    let a = dev("dev-a");
    let mut c = new_chat(&a);
    // Ids in reverse alphabetical order of posting.
    c.post(&a, mid("zz"), "first", None, T0).unwrap();
    c.post(&a, mid("aa"), "second", None, T0 + 1).unwrap();
    assert_eq!(ids(&c), ["zz", "aa"]);
    assert!(c.mark_read(&a, &mid("aa"), T0).unwrap());
    assert!(!c.mark_read(&a, &mid("zz"), T0).unwrap());
    assert_eq!(c.read_marker(&a.id), Some(mid("aa")));
}

#[test]
fn unread_count_counts_live_messages_of_others_after_the_marker() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = chat_with(&a, 2); // m00, m01 by a
    let mut cb = fork(&mut ca, &b);
    cb.post(&b, mid("b1"), "b one", None, T0 + 10_000).unwrap();
    cb.post(&b, mid("b2"), "b two", None, T0 + 11_000).unwrap();
    cb.post(&b, mid("b3"), "b three", None, T0 + 12_000)
        .unwrap();
    ca.merge(&mut cb).unwrap();
    assert_eq!(ids(&ca), ["m00", "m01", "b1", "b2", "b3"]);

    // No marker: everything others wrote. Own messages never count.
    assert_eq!(ca.unread_count(&a.id), 3);
    assert_eq!(ca.unread_count(&b.id), 2);
    // A device that has written nothing and read nothing sees everything.
    assert_eq!(ca.unread_count(&dev("dev-c").id), 5);

    ca.mark_read(&a, &mid("b1"), T0).unwrap();
    assert_eq!(ca.unread_count(&a.id), 2);

    // A deleted message does not count.
    cb.delete(&b, &mid("b3"), T0 + 13_000).unwrap();
    ca.merge(&mut cb).unwrap();
    assert_eq!(ca.unread_count(&a.id), 1);

    // A later message by a itself does not count either.
    ca.post(&a, mid("m02"), "mine", None, T0 + 20_000).unwrap();
    assert_eq!(ca.unread_count(&a.id), 1);

    ca.mark_read(&a, &mid("b2"), T0).unwrap();
    assert_eq!(ca.unread_count(&a.id), 0);

    // Marking an earlier message read does not bring anything back.
    ca.mark_read(&a, &mid("m00"), T0).unwrap();
    assert_eq!(ca.unread_count(&a.id), 0);

    // b's marker at b1: a's messages after b1 (m02 only).
    ca.mark_read(&b, &mid("b1"), T0).unwrap();
    assert_eq!(ca.unread_count(&b.id), 1);
}

// ---------------------------------------------------------------------------------------------
// Paging and lookup
// ---------------------------------------------------------------------------------------------

#[test]
fn paging_before_after_and_last() {
    let a = dev("dev-a");
    let c = chat_with(&a, 10);
    let all_ids: Vec<String> = (0..10).map(|i| format!("m{i:02}")).collect();
    assert_eq!(ids(&c), all_ids);

    assert_eq!(msg_ids(&c.last(3)), ["m07", "m08", "m09"]);
    assert_eq!(msg_ids(&c.last(100)), all_ids);
    assert!(c.last(0).is_empty());

    assert_eq!(msg_ids(&c.page_before(None, 2)), ["m08", "m09"]);
    assert_eq!(
        msg_ids(&c.page_before(Some(&mid("m05")), 2)),
        ["m03", "m04"]
    );
    assert_eq!(
        msg_ids(&c.page_before(Some(&mid("m05")), 100)),
        ["m00", "m01", "m02", "m03", "m04"]
    );
    assert!(c.page_before(Some(&mid("m00")), 5).is_empty());
    assert!(c.page_before(Some(&mid("m05")), 0).is_empty());
    assert!(c.page_before(Some(&mid("ghost")), 5).is_empty());

    assert_eq!(msg_ids(&c.page_after(&mid("m05"), 2)), ["m06", "m07"]);
    assert_eq!(
        msg_ids(&c.page_after(&mid("m05"), 100)),
        ["m06", "m07", "m08", "m09"]
    );
    assert!(c.page_after(&mid("m09"), 5).is_empty());
    assert!(c.page_after(&mid("m05"), 0).is_empty());
    assert!(c.page_after(&mid("ghost"), 5).is_empty());

    // Walking backwards page by page visits every message once, in order.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<MessageId> = None;
    loop {
        let page = c.page_before(cursor.as_ref(), 3);
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        cursor = Some(page[0].id.clone());
        let mut chunk = msg_ids(&page);
        chunk.extend(seen);
        seen = chunk;
    }
    assert_eq!(seen, all_ids);

    // And forwards.
    let mut seen = vec!["m00".to_string()];
    let mut cursor = mid("m00");
    loop {
        let page = c.page_after(&cursor, 4);
        let Some(last) = page.last() else { break };
        cursor = last.id.clone();
        seen.extend(msg_ids(&page));
    }
    assert_eq!(seen, all_ids);
}

#[test]
fn paging_includes_deleted_messages_in_place() {
    let a = dev("dev-a");
    let mut c = chat_with(&a, 4);
    c.delete(&a, &mid("m02"), T0).unwrap();
    let page = c.page_after(&mid("m00"), 10);
    assert_eq!(msg_ids(&page), ["m01", "m02", "m03"]);
    assert!(page[1].deleted);
    assert_eq!(msg_ids(&c.page_before(Some(&mid("m03")), 1)), ["m02"]);
}

#[test]
fn find_messages_by_prefix() {
    let a = dev("dev-a");
    let mut c = new_chat(&a);
    for (i, id) in ["abc1", "abc2", "abd", "xyz", "ab"].iter().enumerate() {
        c.post(&a, mid(id), "t", None, T0 + i as i64).unwrap();
    }
    let sorted = |mut v: Vec<MessageId>| {
        v.sort();
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(sorted(c.find_messages("abc", 10)), ["abc1", "abc2"]);
    assert_eq!(sorted(c.find_messages("x", 10)), ["xyz"]);
    assert_eq!(c.find_messages("abc", 1).len(), 1);
    assert!(c.find_messages("abc", 1)[0].as_str().starts_with("abc"));
    assert!(c.find_messages("q", 10).is_empty());
    assert!(c.find_messages("abc1x", 10).is_empty());
    // Prefixes that are not valid ids simply match nothing.
    assert!(c.find_messages("a b", 10).is_empty());
    assert!(c.find_messages("é", 10).is_empty());
    assert_eq!(c.find_messages("", 100).len(), 5);
    // An exact id wins over longer ids that share it as a prefix.
    assert_eq!(sorted(c.find_messages("abc1", 10)), ["abc1"]);
    assert_eq!(sorted(c.find_messages("ab", 10)), ["ab"]);
    // Prefixes are case sensitive, like ids.
    assert!(c.find_messages("ABC", 10).is_empty());
}

/// The doc says "at most `limit` of them", but an exact match is returned even for `limit` 0.
#[test]
fn find_messages_respects_a_zero_limit() {
    let a = dev("dev-a");
    let c = chat_with(&a, 1);
    assert!(c.find_messages("m0", 0).is_empty());
    assert!(c.find_messages("m00", 0).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Titles
// ---------------------------------------------------------------------------------------------

#[test]
fn set_title_validates_and_merges() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = new_chat(&a);
    let mut cb = fork(&mut ca, &b);
    for bad in ["", "  ", "x\0"] {
        assert!(matches!(ca.set_title(bad, T0), Err(ModelError::Invalid(_))));
    }
    assert!(matches!(
        ca.set_title(&"t".repeat(MAX_TITLE_BYTES + 1), T0),
        Err(ModelError::Invalid(_))
    ));
    assert_eq!(ca.title(), "Team");
    let heads = ca.heads();
    ca.set_title("Team", T0).unwrap();
    assert_eq!(ca.heads(), heads, "same title writes nothing");
    ca.set_title("Renamed", T0 + 1).unwrap();
    assert_eq!(ca.title(), "Renamed");
    assert_eq!(ca.info().title, "Renamed");
    cb.merge(&mut ca).unwrap();
    assert_eq!(cb.title(), "Renamed");
}

// ---------------------------------------------------------------------------------------------
// Merge and apply_changes
// ---------------------------------------------------------------------------------------------

#[test]
fn merge_reports_touched_messages() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = chat_with(&a, 2);
    let mut cb = fork(&mut ca, &b);
    ca.post(&a, mid("n1"), "new", None, T0 + 10_000).unwrap();
    assert_eq!(cb.merge(&mut ca).unwrap(), vec![mid("n1")]);
    assert!(cb.merge(&mut ca).unwrap().is_empty(), "nothing new");

    cb.react(&b, &mid("m00"), Some("👍"), T0).unwrap();
    assert_eq!(ca.merge(&mut cb).unwrap(), vec![mid("m00")]);
    cb.mark_read(&b, &mid("n1"), T0).unwrap();
    assert!(
        ca.merge(&mut cb).unwrap().is_empty(),
        "a read marker is not a message"
    );
    assert_eq!(ca.read_marker(&b.id), Some(mid("n1")));

    ca.edit(&a, &mid("m01"), "edited", T0).unwrap();
    ca.delete(&a, &mid("m00"), T0).unwrap();
    let mut touched = cb.merge(&mut ca).unwrap();
    touched.sort();
    assert_eq!(touched, vec![mid("m00"), mid("m01")]);
    assert_eq!(all(&ca), all(&cb));
}

#[test]
fn apply_changes_updates_the_index_including_out_of_order_batches() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = new_chat(&a);
    let mut cb = fork(&mut ca, &b);
    let genesis = ca.heads();
    ca.post(&a, mid("m1"), "one", None, T0 + 1).unwrap();
    ca.post(&a, mid("m2"), "two", Some(&mid("m1")), T0 + 2)
        .unwrap();
    ca.react(&a, &mid("m1"), Some("👍"), T0 + 3).unwrap();
    let changes = ca.automerge_mut().get_changes(&genesis);
    assert_eq!(changes.len(), 3);

    // The last change alone cannot apply yet (its dependencies are missing).
    let touched = cb.apply_changes(vec![changes[2].clone()]).unwrap();
    assert!(touched.is_empty());
    assert!(cb.is_empty());

    // The rest arrive in reverse order; all three apply.
    let mut touched = cb
        .apply_changes(vec![changes[1].clone(), changes[0].clone()])
        .unwrap();
    touched.sort();
    assert_eq!(touched, vec![mid("m1"), mid("m2")]);
    assert_eq!(all(&cb), all(&ca));
    assert_eq!(cb.message(&mid("m1")).unwrap().reactions[&a.id], "👍");

    // Applying everything again is harmless.
    let every = ca.automerge_mut().get_changes(&[]);
    assert!(cb.apply_changes(every).unwrap().is_empty());
    assert_eq!(all(&cb), all(&ca));
    // The local clock follows what arrived.
    let m3 = cb.post(&b, mid("m3"), "three", None, 0).unwrap();
    assert!(m3.clock > ca.message(&mid("m2")).unwrap().clock);
}

// ---------------------------------------------------------------------------------------------
// Display order and clocks
// ---------------------------------------------------------------------------------------------

#[test]
fn a_device_far_behind_still_sorts_its_reply_after_the_parent() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = new_chat(&a);
    let mut cb = fork(&mut ca, &b);
    let q = ca.post(&a, mid("q"), "question", None, T0).unwrap();
    cb.merge(&mut ca).unwrap();

    // b's clock says 1970 (and then goes further backwards).
    let r = cb.post(&b, mid("r"), "answer", Some(&mid("q")), 5).unwrap();
    assert_eq!(r.ts, 5, "the shown time is the author's own clock");
    assert!(r.clock > q.clock);
    let r2 = cb.post(&b, mid("r2"), "more", None, -1_000).unwrap();
    assert!(r2.clock > r.clock);
    assert_eq!(ids(&cb), ["q", "r", "r2"]);
    ca.merge(&mut cb).unwrap();
    assert_eq!(ids(&ca), ["q", "r", "r2"]);

    // When the far-behind clock is in the parent's author instead, real time wins for others.
    let s = ca
        .post(&a, mid("s"), "later", Some(&mid("r2")), T0 + 1)
        .unwrap();
    assert!(s.clock > r2.clock);
    assert_eq!(ids(&ca), ["q", "r", "r2", "s"]);
}

#[test]
fn a_device_far_ahead_does_not_break_the_order() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = new_chat(&a);
    let mut cb = fork(&mut ca, &b);
    // b's clock is absurdly far ahead (beyond what a clock can carry).
    let far = cb
        .post(&b, mid("far"), "from the future", None, i64::MAX)
        .unwrap();
    assert_eq!(far.clock.wall_ms(), chatsync_model::clock::MAX_WALL_MS);
    ca.merge(&mut cb).unwrap();
    let n = ca
        .post(&a, mid("now"), "reply", Some(&mid("far")), T0)
        .unwrap();
    assert!(n.clock > far.clock);
    let n2 = ca.post(&a, mid("now2"), "again", None, T0 + 1).unwrap();
    assert!(n2.clock > n.clock);
    cb.merge(&mut ca).unwrap();
    assert_eq!(ids(&cb), ["far", "now", "now2"]);
    // The stored clocks survive a save and load (they fit Automerge's signed integers).
    let reloaded = ChatDoc::load(&cb.save(), &a).unwrap();
    assert_eq!(all(&reloaded), all(&cb));
}

#[test]
fn a_clock_that_goes_backwards_keeps_own_messages_in_posting_order() {
    let a = dev("dev-a");
    let mut c = new_chat(&a);
    for (i, now) in [T0, T0 - 60_000, T0 - 3_600_000, T0 + 1, 0, -5, T0]
        .iter()
        .enumerate()
    {
        c.post(&a, mid(&format!("m{i}")), "t", None, *now).unwrap();
    }
    assert_eq!(ids(&c), ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
    let clocks: Vec<Clock> = c.messages().map(|m| m.clock).collect();
    assert!(clocks.windows(2).all(|w| w[0] < w[1]), "{clocks:?}");
}

#[test]
fn concurrent_messages_order_by_clock_then_author_then_id() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = new_chat(&a);
    let mut cb = fork(&mut ca, &b);
    // Same wall clock, no knowledge of each other: same HLC value.
    let ma = ca.post(&a, mid("zzz"), "from a", None, T0).unwrap();
    let mb = cb.post(&b, mid("aaa"), "from b", None, T0).unwrap();
    assert_eq!(ma.clock, mb.clock);
    ca.merge(&mut cb).unwrap();
    cb.merge(&mut ca).unwrap();
    // dev-a < dev-b, so a's message first although its id sorts last.
    assert_eq!(ids(&ca), ["zzz", "aaa"]);
    assert_eq!(ids(&cb), ["zzz", "aaa"]);

    // A smaller clock wins over a smaller author id.
    let mut cc = new_chat(&a);
    let mut cd = fork(&mut cc, &b);
    cc.post(&a, mid("x"), "later", None, T0 + 1).unwrap();
    cd.post(&b, mid("y"), "earlier", None, T0).unwrap();
    cc.merge(&mut cd).unwrap();
    assert_eq!(ids(&cc), ["y", "x"]);

    // Same clock and same author (one device id on two installs with distinct actors): the
    // message id decides.
    let twin1 = Device {
        id: DeviceId::new("twin").unwrap(),
        name: "twin".into(),
        actor: chatsync_model::authorship::actor_for(&DeviceId::new("twin").unwrap(), b"1"),
    };
    let twin2 = Device {
        actor: chatsync_model::authorship::actor_for(&DeviceId::new("twin").unwrap(), b"2"),
        ..twin1.clone()
    };
    let mut c1 = ChatDoc::create(chat_id(), "t", &twin1, T0).unwrap();
    let mut c2 = fork(&mut c1, &twin2);
    c1.post(&twin1, mid("m-b"), "b", None, T0).unwrap();
    c2.post(&twin2, mid("m-a"), "a", None, T0).unwrap();
    c1.merge(&mut c2).unwrap();
    assert_eq!(ids(&c1), ["m-a", "m-b"]);
}

#[test]
fn messages_are_sorted_by_their_order_keys() {
    let (mut c, _, _) = busy_chat();
    let keys: Vec<_> = c.messages().map(|m| m.order_key()).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    let reloaded = ChatDoc::load(&c.save(), &dev("dev-z")).unwrap();
    assert_eq!(all(&reloaded), all(&c));
}

/// A post is three operations: the message's map, its header and its text. (The count is what
/// a post costs; see `header.rs`.)
#[test]
fn a_post_writes_its_map_header_and_text_only() {
    let a = dev("dev-a");
    let mut c = new_chat(&a);
    let parent = c.post(&a, mid("parent"), "p", None, T0).unwrap();
    c.post(&a, mid("reply"), "r", Some(&parent.id), T0 + 1)
        .unwrap();
    let change = c.automerge_mut().get_last_local_change().unwrap().clone();
    assert_eq!(change.len(), 3);
    let reply = c.message(&mid("reply")).unwrap();
    assert_eq!(reply.reply_to, Some(parent.id));
    assert_eq!((reply.author.as_str(), reply.ts), ("dev-a", T0 + 1));
}

/// Messages of schema 1 documents keep their facts in fields of their own; they are read as
/// before, and sort among messages with headers.
#[test]
fn messages_written_with_separate_fields_are_still_read() {
    let a = dev("dev-a");
    let mut c = new_chat(&a);
    c.post(&a, mid("new"), "with a header", None, T0 + 10)
        .unwrap();
    let doc = c.automerge_mut();
    let messages = layout::entry_map(doc, "old").unwrap();
    let obj = doc.put_object(&messages, "old", ObjType::Map).unwrap();
    doc.put(&obj, schema::AUTHOR, "dev-a").unwrap();
    doc.put(&obj, schema::AUTHOR_NAME, "old laptop").unwrap();
    doc.put(&obj, schema::TS, T0).unwrap();
    doc.put(&obj, schema::CLOCK, T0 << 16).unwrap();
    doc.put(&obj, schema::TEXT, "before headers").unwrap();
    doc.put(&obj, schema::REPLY_TO, "new").unwrap();
    doc.commit();
    let reloaded = ChatDoc::load(&c.save(), &a).unwrap();
    assert_eq!(ids(&reloaded), ["old", "new"]);
    let old = reloaded.message(&mid("old")).unwrap();
    assert_eq!(
        (old.author_name.as_str(), old.ts, old.text.as_str()),
        ("old laptop", T0, "before headers")
    );
    assert_eq!(old.reply_to, Some(mid("new")));
}

/// A header this version cannot read hides its message, on every replica alike; the rest of
/// the chat is unaffected.
#[test]
fn a_message_with_an_unreadable_header_is_not_shown() {
    let a = dev("dev-a");
    let mut c = new_chat(&a);
    c.post(&a, mid("fine"), "fine", None, T0).unwrap();
    c.post(&a, mid("broken"), "broken", None, T0 + 1).unwrap();
    let doc = c.automerge_mut();
    let messages = layout::entry_map(doc, "broken").unwrap();
    let (_, obj) = doc.get(&messages, "broken").unwrap().unwrap();
    doc.put(&obj, schema::HEADER, "9\nfrom a later version")
        .unwrap();
    doc.commit();
    let reloaded = ChatDoc::load(&c.save(), &a).unwrap();
    assert_eq!(ids(&reloaded), ["fine"]);
    assert!(reloaded.message(&mid("broken")).is_none());
}

/// Rewrites the clock in a message's header, bypassing the model.
fn set_stored_clock(chat: &mut ChatDoc, message: &str, clock: i64) {
    let doc = chat.automerge_mut();
    let messages = layout::entry_map(doc, message).unwrap();
    let (_, obj) = doc.get(&messages, message).unwrap().unwrap();
    let (header, _) = doc.get(&obj, schema::HEADER).unwrap().unwrap();
    let mut header = Header::decode(header.as_str().unwrap()).unwrap();
    header.clock = Clock::from_stored(clock).unwrap();
    doc.put(&obj, schema::HEADER, header.encode()).unwrap();
    doc.commit();
}

/// The clock space ends at `i64::MAX` (`Clock::MAX`). A chat whose largest clock is already
/// there (a device stamping clocks thousands of years ahead, or a forged document) cannot give
/// a new message a clock that sorts after it, so the post is refused; no replica ever shows a
/// reply before its parent, and one below the largest clock still leaves room for one message.
#[test]
fn at_the_largest_clock_posts_are_refused_and_order_holds() {
    let a = dev("dev-a");
    let y = dev("dev-y");
    let z = dev("dev-z");
    let mut cz = new_chat(&z);
    let parent = cz.post(&z, mid("parent"), "p", None, T0).unwrap();
    // Move the parent's stored clock to the largest value `Clock` can store.
    set_stored_clock(&mut cz, "parent", i64::MAX);
    let bytes = cz.save();
    let mut ca = ChatDoc::load(&bytes, &a).unwrap();
    let mut cy = ChatDoc::load(&bytes, &y).unwrap();
    let p = ca.message(&parent.id).unwrap();
    assert_eq!(p.clock, Clock::from_raw(i64::MAX as u64));

    // No clock is greater than the parent's: the post is refused rather than stamped with a
    // clock that does not sort after it, and every replica keeps agreeing.
    let refused = ca.post(&a, mid("reply"), "r", Some(&parent.id), T0);
    assert!(
        matches!(refused, Err(ModelError::Invalid(_))),
        "expected a refusal, got {refused:?}"
    );
    cy.merge(&mut ca).unwrap();
    let reloaded = ChatDoc::load(&ca.save(), &a).unwrap();
    for order in [ids(&ca), ids(&cy), ids(&reloaded)] {
        assert_eq!(order, ["parent"]);
    }
    // One below the largest clock still leaves room for exactly one more message.
    let mut cw = ChatDoc::load(&bytes, &a).unwrap();
    set_stored_clock(&mut cw, "parent", i64::MAX - 1);
    let mut cw = ChatDoc::load(&cw.save(), &a).unwrap();
    let reply = cw
        .post(&a, mid("reply"), "r", Some(&parent.id), T0)
        .unwrap();
    let reloaded = ChatDoc::load(&cw.save(), &a).unwrap();
    assert_eq!(reply.clock, Clock::MAX);
    assert_eq!(ids(&cw), ["parent", "reply"]);
    assert_eq!(ids(&reloaded), ["parent", "reply"]);
}

/// Automerge 0.12 delta-encodes change times and overflows when two differ by more than
/// `i64::MAX` ("attempt to subtract with overflow" in debug builds, "delta run overflows i64" in
/// release builds). The model clamps change times to the clock's range, so devices with wild
/// clocks (`i64::MAX` on one, -2 on another; `i64::MIN`) can still post.
#[test]
fn extreme_wall_clocks_on_two_devices_do_not_panic() {
    let a = dev("dev-a");
    let b = dev("dev-b");
    let mut ca = ChatDoc::create(chat_id(), "t", &a, i64::MAX).unwrap();
    let mut cb = fork(&mut ca, &b);
    let posted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cb.post(&b, mid("m1"), "hi", None, -2).map(|m| m.id)
    }));
    assert!(
        matches!(posted, Ok(Ok(_))),
        "post with now_ms = -2 in a chat created at i64::MAX panicked or failed"
    );
    let mut cc = new_chat(&a);
    let posted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cc.post(&a, mid("m1"), "hi", None, i64::MIN).map(|m| m.id)
    }));
    assert!(
        matches!(posted, Ok(Ok(_))),
        "post with now_ms = i64::MIN in a chat created at T0 panicked or failed"
    );
}

fn attachment(name: &str, size: u64) -> chatsync_model::Attachment {
    chatsync_model::Attachment {
        hash: chatsync_model::BlobHash([size as u8; 32]),
        size,
        name: name.into(),
        media_type: "image/jpeg".into(),
    }
}

#[test]
fn attachments_travel_with_their_message_and_go_with_its_deletion() {
    let (a, b) = (dev("dev-a"), dev("dev-b"));
    let mut ca = new_chat(&a);
    let files = vec![attachment("one.jpg", 10), attachment("two.jpg", 2_000_000)];
    // With attachments the text may be empty; without, it may not.
    let posted = ca
        .post_with(&a, mid("m1"), "", None, &files, T0 + 1)
        .unwrap();
    assert_eq!(posted.attachments, files);
    assert!(ca.post_with(&a, mid("m2"), " ", None, &[], T0 + 2).is_err());
    let too_many: Vec<_> = (0..=chatsync_model::attachment::MAX_ATTACHMENTS)
        .map(|i| attachment(&format!("{i}"), 1))
        .collect();
    assert!(
        ca.post_with(&a, mid("m3"), "x", None, &too_many, T0 + 3)
            .is_err()
    );
    let path_name = [attachment("../../etc/passwd", 1)];
    assert!(
        ca.post_with(&a, mid("m4"), "x", None, &path_name, T0 + 4)
            .is_err()
    );
    // Another replica reads them from the document.
    let mut cb = fork(&mut ca, &b);
    assert_eq!(cb.message(&mid("m1")).unwrap().attachments, files);
    ca.delete(&a, &mid("m1"), T0 + 5).unwrap();
    cb.merge(&mut ca).unwrap();
    let deleted = cb.message(&mid("m1")).unwrap();
    assert!(deleted.deleted && deleted.attachments.is_empty());
    assert_eq!(raw_field(&mut cb, "m1", schema::ATTACHMENTS), None);
}

#[test]
fn a_message_with_an_unreadable_attachment_list_is_not_shown() {
    let a = dev("dev-a");
    let mut c = new_chat(&a);
    c.post_with(&a, mid("m1"), "hi", None, &[attachment("a.jpg", 1)], T0)
        .unwrap();
    let doc = c.automerge_mut();
    let messages = layout::entry_map(doc, "m1").unwrap();
    let msg = match doc.get(&messages, "m1").unwrap() {
        Some((Value::Object(ObjType::Map), id)) => id,
        other => panic!("{other:?}"),
    };
    doc.put(&msg, schema::ATTACHMENTS, "1\nnot a hash\t1\ta/b\tx")
        .unwrap();
    doc.commit();
    let reloaded = ChatDoc::load(&c.save(), &a).unwrap();
    assert!(reloaded.message(&mid("m1")).is_none());
}

/// A message's field as stored in the document.
fn raw_field(c: &mut ChatDoc, id: &str, field: &str) -> Option<String> {
    let doc = c.automerge_mut();
    let messages = layout::entry_map(doc, id)?;
    let (_, msg) = doc.get(&messages, id).unwrap()?;
    match doc.get(&msg, field).unwrap()? {
        (Value::Scalar(v), _) => v.as_str().map(str::to_owned),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading pages: one pass over the document and one message at a time agree
// ---------------------------------------------------------------------------------------------

/// What one device does to the chat in [`pages_read_in_one_pass_match_messages_read_one_by_one`].
#[derive(Clone, Debug)]
enum PageOp {
    Post {
        attached: bool,
        reply: Option<usize>,
    },
    Edit(usize),
    Delete(usize),
    React(usize, Option<&'static str>),
}

fn page_op() -> impl Strategy<Value = PageOp> {
    prop_oneof![
        4 => (any::<bool>(), proptest::option::of(0usize..200))
            .prop_map(|(attached, reply)| PageOp::Post { attached, reply }),
        1 => (0usize..200).prop_map(PageOp::Edit),
        1 => (0usize..200).prop_map(PageOp::Delete),
        1 => (0usize..200, proptest::option::of(prop_oneof![Just("👍"), Just("ok")]))
            .prop_map(|(i, r)| PageOp::React(i, r)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A large page is read in one pass over the document, a small one message by message:
    /// with edits, deletions, reactions, replies, attachments, two devices' concurrent work and
    /// messages that cannot be shown, every page says what `message` says of each message.
    #[test]
    fn pages_read_in_one_pass_match_messages_read_one_by_one(
        ops in proptest::collection::vec((any::<bool>(), page_op()), 40..160),
        unreadable in proptest::collection::vec(0usize..200, 0..3),
    ) {
        let (a, b) = (dev("dev-a"), dev("dev-b"));
        let mut ca = new_chat(&a);
        let mut cb = fork(&mut ca, &b);
        let mut posted: Vec<MessageId> = Vec::new();
        for (n, (on_b, op)) in ops.into_iter().enumerate() {
            let (c, d) = if on_b { (&mut cb, &b) } else { (&mut ca, &a) };
            let now = T0 + n as i64;
            let pick = |i: usize| posted.get(i % posted.len().max(1)).cloned();
            // Refusals (editing another device's message, a message not merged yet) are fine.
            match op {
                PageOp::Post { attached, reply } => {
                    let id = mid(&format!("m{n:03}"));
                    let reply = reply.and_then(pick).filter(|r| c.message(r).is_some());
                    let files = if attached { vec![attachment("a.jpg", n as u64)] } else { vec![] };
                    if c.post_with(d, id.clone(), "text", reply.as_ref(), &files, now).is_ok() {
                        posted.push(id);
                    }
                }
                PageOp::Edit(i) => if let Some(id) = pick(i) { let _ = c.edit(d, &id, &format!("edit {n}"), now); },
                PageOp::Delete(i) => if let Some(id) = pick(i) { let _ = c.delete(d, &id, now); },
                PageOp::React(i, r) => if let Some(id) = pick(i) { let _ = c.react(d, &id, r, now); },
            }
            if n % 17 == 16 {
                ca.merge(&mut cb).unwrap();
                cb.merge(&mut ca).unwrap();
            }
        }
        ca.merge(&mut cb).unwrap();
        // Messages no replica can show: a header or an attachment list from a later version.
        for (k, i) in unreadable.into_iter().enumerate() {
            let Some(id) = posted.get(i % posted.len().max(1)) else { continue };
            let doc = ca.automerge_mut();
            let messages = layout::entry_map(doc, id.as_str()).unwrap();
            let Some((_, obj)) = doc.get(&messages, id.as_str()).unwrap() else { continue };
            let (field, value) = if k % 2 == 0 {
                (schema::HEADER, "9\nfrom a later version")
            } else {
                (schema::ATTACHMENTS, "1\nnot a hash\t1\ta/b\tx")
            };
            doc.put(&obj, field, value).unwrap();
            doc.commit();
        }
        let c = ChatDoc::load(&ca.save(), &a).unwrap();
        let one_by_one: Vec<Message> = c.message_ids().filter_map(|id| c.message(id)).collect();
        prop_assert_eq!(&c.last(c.len()), &one_by_one);
        prop_assert_eq!(&all(&c), &one_by_one);
        // A page after the first message, and the last pages of several sizes.
        if let Some(first) = one_by_one.first() {
            prop_assert_eq!(&c.page_after(&first.id, c.len()), &one_by_one[1..].to_vec());
        }
        // A page is the last `size` places; those of messages that cannot be shown are empty.
        let ids: Vec<&MessageId> = c.message_ids().collect();
        for size in [1, 8, 31, 32, 33, 64] {
            let from = ids.len().saturating_sub(size);
            let expected: Vec<Message> = ids[from..].iter().filter_map(|id| c.message(id)).collect();
            prop_assert_eq!(&c.last(size), &expected);
        }
    }
}
