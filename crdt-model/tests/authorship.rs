//! Provable authorship: a device cannot write as another, nor touch what another wrote, and a
//! device removed from the mesh cannot add changes nobody in the mesh built on.
#![allow(clippy::unwrap_used)]

mod support;

use automerge::{ROOT, ReadDoc, sync::State, transaction::Transactable};
use chatsync_model::{
    ChatDoc, ChatId, Clock, Device, DeviceId, MessageId, ModelError, SyncReceived,
    authorship::{self, Attestation, Provenance, Standing},
    header::Header,
    layout, schema,
};

fn dev(id: &str, session: &[u8]) -> Device {
    Device::with_session(DeviceId::new(id).unwrap(), id, session).unwrap()
}

fn mid(s: &str) -> MessageId {
    MessageId::new(s).unwrap()
}

/// A chat created by `a` with one message `m1`, and a copy on `b` and on `c`.
fn three() -> (Device, ChatDoc, Device, ChatDoc, Device, ChatDoc) {
    let (da, db, dc) = (dev("dev-a", b"1"), dev("dev-b", b"1"), dev("dev-c", b"1"));
    let mut a = ChatDoc::create(ChatId::new("c").unwrap(), "t", &da, 1).unwrap();
    a.post(&da, mid("m1"), "from a", None, 10).unwrap();
    let saved = a.save();
    let b = ChatDoc::load(&saved, &db).unwrap();
    let c = ChatDoc::load(&saved, &dc).unwrap();
    (da, a, db, b, dc, c)
}

/// Attestations `signer` can make: the newest change of each of `from`'s actors, all signed
/// with `signer`'s key (right only for `signer`'s own actors).
fn signed_by(signer: &DeviceId, from: &mut ChatDoc) -> Vec<Attestation> {
    let chat = from.id().clone();
    from.actors()
        .into_iter()
        .filter_map(|actor| from.newest_change_of(&actor))
        .map(|(_, hash)| Attestation {
            hash,
            signature: support::sign(signer, &authorship::statement(&chat, &hash)),
        })
        .collect()
}

/// Runs sync from `from` to `to` (both ways until quiet), with `attest` making the attestations
/// `from` sends and `standing` the roster `to` checks against. Returns the first error `to`
/// reported, or what it received.
fn sync_into(
    from: &mut ChatDoc,
    to: &mut ChatDoc,
    attest: &dyn Fn(&mut ChatDoc) -> Vec<Attestation>,
    standing: &dyn Fn(&DeviceId) -> Standing,
) -> Result<Vec<SyncReceived>, ModelError> {
    let (mut s_from, mut s_to) = (State::new(), State::new());
    let mut got = Vec::new();
    for _ in 0..20 {
        let to_to = from.generate_sync_message(&mut s_from);
        let to_from = to.generate_sync_message(&mut s_to);
        if to_to.is_none() && to_from.is_none() {
            return Ok(got);
        }
        if let Some(m) = to_to {
            let attestations = attest(from);
            let chat = to.id().clone();
            let proof = Provenance {
                chat: &chat,
                attestations: &attestations,
                verify: &support::verify,
                standing,
            };
            got.push(to.receive_sync_message(&mut s_to, &m, &proof)?);
        }
        if let Some(m) = to_from {
            support::receive(from, &mut s_from, &m).unwrap();
        }
    }
    panic!("sync did not settle");
}

fn trusted(_: &DeviceId) -> Standing {
    Standing::Trusted
}

fn honest(doc: &mut ChatDoc) -> Vec<Attestation> {
    support::attest_all(doc)
}

#[test]
fn honest_changes_with_their_devices_signatures_are_accepted() {
    let (_, mut a, db, mut b, _, mut c) = three();
    b.post(&db, mid("m2"), "from b", None, 20).unwrap();
    sync_into(&mut b, &mut c, &honest, &trusted).unwrap();
    // c relays a's and b's changes to a fresh replica with their own devices' attestations.
    let dd = dev("dev-d", b"1");
    let mut d = ChatDoc::load(&a.save(), &dd).unwrap();
    sync_into(&mut c, &mut d, &honest, &trusted).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d.message(&mid("m2")).unwrap().author, db.id);
    sync_into(&mut d, &mut a, &honest, &trusted).unwrap();
    assert_eq!(a.len(), 2);
}

#[test]
fn a_change_under_another_devices_actor_is_refused() {
    let (da, _, _, mut b, _, mut c) = three();
    // b writes under a's device id (a second session of "dev-a") and can only sign as b.
    let forger = dev("dev-a", b"forged");
    let mut forged = ChatDoc::load(&b.save(), &forger).unwrap();
    forged
        .post(&forger, mid("fake"), "a never said this", None, 30)
        .unwrap();
    let b_id = DeviceId::new("dev-b").unwrap();
    let err = sync_into(
        &mut forged,
        &mut c,
        &|doc: &mut ChatDoc| signed_by(&b_id, doc),
        &trusted,
    )
    .unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    assert!(c.message(&mid("fake")).is_none());
    // Without any attestation for a's new actor: refused as well.
    let err = sync_into(&mut forged, &mut c, &|_: &mut ChatDoc| Vec::new(), &trusted).unwrap_err();
    assert!(err.to_string().contains("without its signature"), "{err}");
    assert_eq!(c.len(), 1);
    // The genuine a is unaffected.
    assert_eq!(c.message(&mid("m1")).unwrap().author, da.id);
    let _ = &mut b;
}

#[test]
fn a_forged_change_hidden_under_an_honest_signature_is_refused() {
    // b builds its own (signed) change on top of a forged change claiming to be a's: b's
    // signature reaches the forged change, a's signature does not.
    let (_, mut a, db, mut b, _, mut c) = three();
    let forger = dev("dev-a", b"forged");
    let mut doc = ChatDoc::load(&b.save(), &forger).unwrap();
    doc.post(&forger, mid("fake"), "a never said this", None, 30)
        .unwrap();
    let mut doc = ChatDoc::load(&doc.save(), &db).unwrap();
    doc.post(&db, mid("m2"), "from b", None, 31).unwrap();
    let real_a = {
        let chat = a.id().clone();
        let (_, hash) = a.last_local_change().unwrap();
        Attestation {
            hash,
            signature: support::sign(
                &DeviceId::new("dev-a").unwrap(),
                &authorship::statement(&chat, &hash),
            ),
        }
    };
    let attest = |doc: &mut ChatDoc| {
        let mut mine = signed_by(&DeviceId::new("dev-b").unwrap(), doc);
        mine.push(real_a.clone());
        mine
    };
    let err = sync_into(&mut doc, &mut c, &attest, &trusted).unwrap_err();
    assert!(
        err.to_string().contains("not covered") || err.to_string().contains("signature"),
        "{err}"
    );
    assert!(c.message(&mid("fake")).is_none());
    assert!(c.message(&mid("m2")).is_none());
}

#[test]
fn a_message_naming_another_author_is_not_shown() {
    let (_, _, db, mut b, dc, mut c) = three();
    // b writes a message map whose author field says dev-a, bypassing the model.
    let am = b.automerge_mut();
    let messages = layout::entry_map(am, "posing").unwrap();
    let obj = am
        .put_object(&messages, "posing", automerge::ObjType::Map)
        .unwrap();
    am.put(&obj, schema::AUTHOR, "dev-a").unwrap();
    am.put(&obj, schema::AUTHOR_NAME, "a").unwrap();
    am.put(&obj, schema::TS, 40_i64).unwrap();
    am.put(&obj, schema::CLOCK, 40_i64 << 16).unwrap();
    am.put(&obj, schema::TEXT, "posing as a").unwrap();
    am.commit();
    let _ = db;
    sync_into(&mut b, &mut c, &honest, &trusted).unwrap();
    assert!(c.message(&mid("posing")).is_none());
    assert_eq!(c.messages().count(), 1);
    // Nor does it take a place in the order, as received or once loaded again.
    assert_eq!(c.len(), 1);
    assert_eq!(ChatDoc::load(&c.save(), &dc).unwrap().len(), 1);
}

#[test]
fn a_header_naming_another_author_is_not_shown() {
    let (_, _, db, mut b, dc, mut c) = three();
    // b writes a message whose header says dev-a wrote it, bypassing the model.
    let forged = Header {
        author: DeviceId::new("dev-a").unwrap(),
        author_name: "a".into(),
        ts: 40,
        clock: Clock::from_stored(40 << 16).unwrap(),
        reply_to: None,
    };
    let am = b.automerge_mut();
    let messages = layout::entry_map(am, "posing").unwrap();
    let obj = am
        .put_object(&messages, "posing", automerge::ObjType::Map)
        .unwrap();
    am.put(&obj, schema::HEADER, forged.encode()).unwrap();
    am.put(&obj, schema::TEXT, "posing as a").unwrap();
    am.commit();
    let _ = db;
    sync_into(&mut b, &mut c, &honest, &trusted).unwrap();
    assert!(c.message(&mid("posing")).is_none());
    assert_eq!(c.messages().count(), 1);
    // Nor does it take a place in the order, as received or once loaded again.
    assert_eq!(c.len(), 1);
    assert_eq!(ChatDoc::load(&c.save(), &dc).unwrap().len(), 1);
}

#[test]
fn editing_deleting_or_reacting_for_another_device_is_refused() {
    type Tamper = fn(&mut automerge::AutoCommit, &automerge::ObjId);
    let cases: [(&str, Tamper); 4] = [
        ("edit", |am, msg| {
            am.put(msg, schema::TEXT, "b rewrote this").unwrap();
        }),
        ("delete", |am, msg| {
            am.put(msg, schema::DELETED, true).unwrap();
        }),
        ("react as c", |am, msg| {
            am.put(msg, "reaction:dev-c", "👎").unwrap();
        }),
        ("replace", |am, _| {
            let messages = layout::entry_map(am, "m1").unwrap();
            am.put_object(&messages, "m1", automerge::ObjType::Map)
                .unwrap();
        }),
    ];
    // Alone, and among 100 honest posts (a batch that large is read in one pass).
    for (what, tamper) in cases {
        for honest_posts in [0, 100] {
            let (_, _, db, mut b, _, mut c) = three();
            post_many(&mut b, &db, honest_posts);
            let am = b.automerge_mut();
            let messages = layout::entry_map(am, "m1").unwrap();
            let (_, msg) = am.get(&messages, "m1").unwrap().unwrap();
            tamper(am, &msg);
            am.commit();
            let err = sync_into(&mut b, &mut c, &honest, &trusted).unwrap_err();
            assert!(
                matches!(err, ModelError::Forbidden(_)),
                "{what}, {honest_posts}: {err}"
            );
            let m1 = c.message(&mid("m1")).unwrap();
            assert_eq!((m1.text.as_str(), m1.deleted), ("from a", false), "{what}");
            assert!(m1.reactions.is_empty(), "{what}");
            assert_eq!(c.len(), 1, "{what}, {honest_posts}");
        }
    }
}

fn post_many(doc: &mut ChatDoc, device: &Device, n: usize) {
    for i in 0..n {
        let id = mid(&format!("{}-{i}", device.id));
        doc.post(device, id, "honest", None, 100 + i as i64)
            .unwrap();
    }
}

/// A device that writes a message under an id another device's message has is refused even
/// when it never saw that message (the two entries conflict; neither replaces the other), alone
/// or among many honest posts.
#[test]
fn a_message_under_an_id_another_device_used_is_refused() {
    for honest_posts in [0, 100] {
        let (da, db, dc) = (dev("dev-a", b"1"), dev("dev-b", b"1"), dev("dev-c", b"1"));
        let mut a = ChatDoc::create(ChatId::new("c").unwrap(), "t", &da, 1).unwrap();
        let mut b = ChatDoc::load(&a.save(), &db).unwrap();
        a.post(&da, mid("m1"), "from a", None, 10).unwrap();
        let mut c = ChatDoc::load(&a.save(), &dc).unwrap();
        post_many(&mut b, &db, honest_posts);
        b.post(&db, mid("m1"), "from b", None, 20).unwrap();
        let err = sync_into(&mut b, &mut c, &honest, &trusted).unwrap_err();
        assert!(
            matches!(err, ModelError::Forbidden(_)),
            "{honest_posts}: {err}"
        );
        assert_eq!(c.message(&mid("m1")).unwrap().text, "from a");
        assert_eq!(c.len(), 1, "{honest_posts}");
    }
}

/// Each message has one place: the bucket of its id. Nobody (the chat's creator included)
/// writes to the container of buckets after the genesis, and an entry filed in another bucket
/// is refused, so no replica can hide a bucket's messages or show a message twice.
#[test]
fn rewriting_the_buckets_or_filing_a_message_in_another_bucket_is_refused() {
    type Tamper = fn(&mut automerge::AutoCommit);
    let container = |am: &automerge::AutoCommit| am.get(ROOT, schema::MESSAGES).unwrap().unwrap().1;
    let cases: [(&str, bool, Tamper); 4] = [
        ("a bucket replaced by its creator", true, |am| {
            let bucket = layout::bucket_key(layout::bucket_of("m1"));
            let container = am.get(ROOT, schema::MESSAGES).unwrap().unwrap().1;
            am.put_object(&container, bucket, automerge::ObjType::Map)
                .unwrap();
        }),
        ("a bucket deleted", false, |am| {
            let container = am.get(ROOT, schema::MESSAGES).unwrap().unwrap().1;
            am.delete(&container, "00").unwrap();
        }),
        ("a message put beside the buckets", false, |am| {
            let container = am.get(ROOT, schema::MESSAGES).unwrap().unwrap().1;
            am.put_object(&container, "m9", automerge::ObjType::Map)
                .unwrap();
        }),
        ("a message filed in another bucket", false, |am| {
            let own = layout::bucket_of("m9");
            let other = layout::bucket_key((own + 1) % layout::BUCKETS as u8);
            let container = am.get(ROOT, schema::MESSAGES).unwrap().unwrap().1;
            let (_, bucket) = am.get(&container, other).unwrap().unwrap();
            am.put_object(&bucket, "m9", automerge::ObjType::Map)
                .unwrap();
        }),
    ];
    for (what, by_creator, tamper) in cases {
        let (_, mut a, _, mut b, _, mut c) = three();
        let writer = if by_creator { &mut a } else { &mut b };
        let before = container(writer.automerge_mut());
        tamper(writer.automerge_mut());
        writer.automerge_mut().commit();
        let err = sync_into(writer, &mut c, &honest, &trusted).unwrap_err();
        assert!(matches!(err, ModelError::Forbidden(_)), "{what}: {err}");
        assert_eq!(container(c.automerge_mut()), before, "{what}");
        assert_eq!(c.message(&mid("m1")).unwrap().text, "from a", "{what}");
        assert!(c.message(&mid("m9")).is_none(), "{what}");
        // A whole document holding the same is refused too.
        let chat = writer.id().clone();
        let attestations = support::attest_all(writer);
        let err = ChatDoc::load_untrusted(
            &writer.save(),
            &dev("dev-d", b"1"),
            &support::proof(&chat, &attestations),
        )
        .unwrap_err();
        assert!(
            matches!(err, ModelError::Forbidden(_) | ModelError::Corrupt(_)),
            "{what}: {err}"
        );
    }
}

#[test]
fn moving_another_devices_read_marker_is_refused_and_own_writes_pass() {
    let (_, _, db, mut b, _, mut c) = three();
    b.react(&db, &mid("m1"), Some("👍"), 50).unwrap();
    b.mark_read(&db, &mid("m1"), 51).unwrap();
    sync_into(&mut b, &mut c, &honest, &trusted).unwrap();
    assert_eq!(c.message(&mid("m1")).unwrap().reactions.len(), 1);

    let am = b.automerge_mut();
    let (_, read) = am.get(ROOT, schema::READ).unwrap().unwrap();
    am.put(&read, "dev-c", "m1").unwrap();
    am.commit();
    let err = sync_into(&mut b, &mut c, &honest, &trusted).unwrap_err();
    assert!(err.to_string().contains("read marker"), "{err}");
    assert_eq!(c.read_marker(&DeviceId::new("dev-c").unwrap()), None);
}

#[test]
fn a_removed_device_adds_nothing_unless_the_mesh_built_on_it() {
    let (da, mut a, db, mut b, _, mut c) = three();
    let removed_b = |d: &DeviceId| {
        if d.as_str() == "dev-b" {
            Standing::Removed
        } else {
            Standing::Trusted
        }
    };
    // b (removed on c) posts; sent straight to c it is refused.
    b.post(&db, mid("late"), "after removal", None, 60).unwrap();
    let err = sync_into(&mut b, &mut c, &honest, &removed_b).unwrap_err();
    // Not misbehaviour: an honest device may pass it on before it learns of the removal.
    assert!(matches!(err, ModelError::Untrusted(_)), "{err}");
    assert!(err.to_string().contains("removed from the mesh"), "{err}");
    assert!(c.message(&mid("late")).is_none());

    // a had received b's post before it learnt of the removal, and answered it: the answer
    // vouches for it, so c takes both and the replicas still converge.
    sync_into(&mut b, &mut a, &honest, &trusted).unwrap();
    a.post(&da, mid("reply"), "seen", Some(&mid("late")), 61)
        .unwrap();
    sync_into(&mut a, &mut c, &honest, &removed_b).unwrap();
    assert!(c.message(&mid("late")).is_some());
    assert!(c.message(&mid("reply")).is_some());
    assert_eq!(a.heads(), c.heads());
}

#[test]
fn a_device_not_in_the_roster_is_refused() {
    let (_, _, db, mut b, _, mut c) = three();
    b.post(&db, mid("m2"), "x", None, 70).unwrap();
    let only_a = |d: &DeviceId| {
        if d.as_str() == "dev-a" {
            Standing::Trusted
        } else {
            Standing::Unknown
        }
    };
    let err = sync_into(&mut b, &mut c, &honest, &only_a).unwrap_err();
    assert!(matches!(err, ModelError::Untrusted(_)), "{err}");
    assert!(
        err.to_string().contains("not in this device's roster"),
        "{err}"
    );
}

#[test]
fn whole_documents_are_checked_like_sync_messages() {
    let (_, mut a, db, mut b, dc, _) = three();
    b.post(&db, mid("m2"), "from b", None, 20).unwrap();
    sync_into(&mut b, &mut a, &honest, &trusted).unwrap();
    let bytes = a.save();
    let chat = a.id().clone();
    let good = support::attest_all(&mut a);
    let proof = support::proof(&chat, &good);
    let (loaded, tops) = ChatDoc::load_untrusted(&bytes, &dc, &proof).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(tops.len(), 2);
    // Missing b's attestation: refused.
    let partial: Vec<Attestation> = good
        .iter()
        .filter(|att| {
            a.automerge_mut()
                .get_change_by_hash(&att.hash)
                .is_some_and(|ch| {
                    authorship::device_of_actor(ch.actor_id()).unwrap().as_str() != "dev-b"
                })
        })
        .cloned()
        .collect();
    assert_eq!(partial.len(), 1);
    assert!(ChatDoc::load_untrusted(&bytes, &dc, &support::proof(&chat, &partial)).is_err());
}

#[test]
fn a_whole_document_with_changes_missing_their_dependencies_is_refused() {
    let (da, mut a, _, _, dc, _) = three();
    let before = a.heads();
    a.post(&da, mid("gap"), "never sent", None, 30).unwrap();
    a.post(&da, mid("on-gap"), "built on it", None, 31).unwrap();
    let after = a.automerge_mut().get_changes(&before);
    let chat = a.id().clone();
    let attestations = support::attest_all(&mut a);
    // The document as it was, then a change whose dependency is left out.
    let mut bytes = ChatDoc::load(&a.save(), &dc)
        .unwrap()
        .snapshot_at(&before)
        .unwrap()
        .save();
    bytes.extend_from_slice(after[1].raw_bytes());
    let err =
        ChatDoc::load_untrusted(&bytes, &dc, &support::proof(&chat, &attestations)).unwrap_err();
    assert!(matches!(err, ModelError::Corrupt(_)), "{err}");
}

#[test]
fn one_signature_over_a_devices_newest_change_vouches_for_all_its_sessions() {
    let (da, mut a, db, mut b, dc, _) = three();
    // `a` goes on in a second session (a new actor), after changes of `b`'s arrived.
    b.post(&db, mid("m2"), "from b", None, 20).unwrap();
    sync_into(&mut b, &mut a, &honest, &trusted).unwrap();
    let later = dev(da.id.as_str(), b"2");
    let mut a2 = ChatDoc::load(&a.save(), &later).unwrap();
    a2.post(&later, mid("m3"), "from a, later", None, 30)
        .unwrap();
    let (seq, hash) = a2.last_local_change().unwrap();
    assert_eq!(
        a2.newest_change_by(&da.id),
        Some((a2.actor().clone(), seq, hash))
    );
    assert_eq!(a2.newest_change_by(&dc.id), None);
    // That one signature and `b`'s prove the whole document to a device that saw neither.
    let chat = a2.id().clone();
    let (_, _, b_newest) = a2.newest_change_by(&db.id).unwrap();
    let attestations = [
        Attestation {
            hash,
            signature: support::sign(&da.id, &authorship::statement(&chat, &hash)),
        },
        Attestation {
            hash: b_newest,
            signature: support::sign(&db.id, &authorship::statement(&chat, &b_newest)),
        },
    ];
    let bytes = a2.save();
    let (loaded, _) =
        ChatDoc::load_untrusted(&bytes, &dc, &support::proof(&chat, &attestations)).unwrap();
    assert_eq!(loaded.len(), 3);
}
