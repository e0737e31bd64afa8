//! Automerge's sync protocol through `ChatDoc`: replicas that exchange sync messages until both
//! are quiet end up equal, and each reports what it received.
#![allow(clippy::unwrap_used)]

use automerge::sync::State;
use chatsync_model::{ChatDoc, ChatId, Device, DeviceId, MessageId};

fn dev(id: &str) -> Device {
    Device::new(DeviceId::new(id).unwrap(), id).unwrap()
}

/// Runs the protocol both ways until neither side has anything to say. Returns the changes
/// each side received, as bytes.
fn sync(a: &mut ChatDoc, b: &mut ChatDoc) -> (usize, usize) {
    let (mut sa, mut sb) = (State::new(), State::new());
    let (mut got_a, mut got_b) = (0, 0);
    for _ in 0..20 {
        let to_b = a.generate_sync_message(&mut sa);
        let to_a = b.generate_sync_message(&mut sb);
        if to_b.is_none() && to_a.is_none() {
            return (got_a, got_b);
        }
        if let Some(m) = to_b {
            got_b += b.receive_sync_message(&mut sb, &m).unwrap().changes.len();
        }
        if let Some(m) = to_a {
            got_a += a.receive_sync_message(&mut sa, &m).unwrap().changes.len();
        }
    }
    panic!("sync did not settle");
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
    assert!(got_a > 0 && got_b > 0);
    let ids = |c: &ChatDoc| c.message_ids().cloned().collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.len(), 10);
    // The changes each side received reload on top of its old save.
    let (again_a, again_b) = sync(&mut a, &mut b);
    assert_eq!(
        (again_a, again_b),
        (0, 0),
        "a settled pair exchanges nothing new"
    );
}

#[test]
fn garbage_sync_messages_are_errors() {
    let da = dev("dev-a");
    let mut a = ChatDoc::create(ChatId::new("c").unwrap(), "t", &da, 1).unwrap();
    let mut state = State::new();
    assert!(
        a.receive_sync_message(&mut state, b"not a sync message")
            .is_err()
    );
    assert!(a.receive_sync_message(&mut state, &[]).is_err());
}
