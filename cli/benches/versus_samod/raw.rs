//! The floor under a catch-up: Automerge's sync protocol between two documents in memory, with
//! nothing around it (no network, no storage, no checks). Measured for each system's document
//! shape: chatsync's chat (`ChatDoc`, as `sync.rs` measures it) and the list of message maps
//! the samod side writes.

use std::time::{Duration, Instant};

use automerge::{
    AutoCommit, Automerge, ObjType, ROOT, ReadDoc,
    sync::{Message, State, SyncDoc},
    transaction::Transactable,
};
use chatsync_model::{ChatDoc, ChatId, Device, DeviceId, MessageId};

use crate::common::text;

/// A catch-up done by Automerge alone, in memory.
pub struct RawSync {
    pub time: Duration,
    /// Sync message bytes, both directions.
    pub bytes: u64,
}

/// Sync of a chatsync chat with `n` messages into a copy holding only its genesis. Messages
/// get random ids and real times, as the daemon gives them (both cost bytes).
pub fn chat_doc(n: usize) -> RawSync {
    let (da, db) = (device("12D3KooWA"), device("12D3KooWB"));
    let start = chatsync_daemon::engine::now_ms();
    let mut a = ChatDoc::create(ChatId::new("raw").unwrap(), "raw", &da, start).unwrap();
    let mut b = ChatDoc::load(&a.save(), &db).unwrap();
    for i in 0..n {
        a.post(
            &da,
            MessageId::new(chatsync_daemon::engine::random_id()).unwrap(),
            &text(i),
            None,
            start + i as i64,
        )
        .unwrap();
    }
    let raw = sync(a.automerge_mut(), b.automerge_mut());
    // The model's index never saw these changes (they went straight into Automerge): compare
    // the documents themselves.
    assert_eq!(a.heads(), b.heads(), "the raw sync did not converge");
    raw
}

/// Sync of the samod side's chat (a list of maps {id, author, text, time}, one change per
/// message) with `n` messages into a copy holding only the empty list.
pub fn message_list(n: usize) -> RawSync {
    let mut a = Automerge::new();
    let mut tx = a.transaction();
    let list = tx.put_object(ROOT, "messages", ObjType::List).unwrap();
    tx.commit();
    let mut b = Automerge::load(&a.save()).unwrap();
    for i in 0..n {
        let mut tx = a.transaction();
        let m = tx.insert_object(&list, i, ObjType::Map).unwrap();
        tx.put(&m, "id", chatsync_daemon::engine::random_id())
            .unwrap();
        tx.put(
            &m,
            "author",
            "12D3KooWSamodBenchmarkAuthorAuthorAuthorAuthorAuthor",
        )
        .unwrap();
        tx.put(&m, "text", text(i)).unwrap();
        tx.put(&m, "time", chatsync_daemon::engine::now_ms())
            .unwrap();
        tx.commit();
    }
    let raw = sync(&mut a, &mut b);
    assert_eq!(b.length(&list), n, "the raw sync did not converge");
    raw
}

/// A document that speaks the sync protocol: an `Automerge`, or the `AutoCommit` in a chat.
trait Syncs {
    fn generate(&mut self, state: &mut State) -> Option<Vec<u8>>;
    fn receive(&mut self, state: &mut State, message: Message);
}

impl Syncs for Automerge {
    fn generate(&mut self, state: &mut State) -> Option<Vec<u8>> {
        self.generate_sync_message(state).map(Message::encode)
    }

    fn receive(&mut self, state: &mut State, message: Message) {
        self.receive_sync_message(state, message).unwrap();
    }
}

impl Syncs for AutoCommit {
    fn generate(&mut self, state: &mut State) -> Option<Vec<u8>> {
        self.sync()
            .generate_sync_message(state)
            .map(Message::encode)
    }

    fn receive(&mut self, state: &mut State, message: Message) {
        self.sync().receive_sync_message(state, message).unwrap();
    }
}

/// Runs the sync protocol between `a` and `b` until neither has anything to send.
fn sync(a: &mut impl Syncs, b: &mut impl Syncs) -> RawSync {
    let (mut sa, mut sb) = (State::new(), State::new());
    let started = Instant::now();
    let mut bytes = 0u64;
    loop {
        let to_b = a.generate(&mut sa);
        let to_a = b.generate(&mut sb);
        if to_b.is_none() && to_a.is_none() {
            break;
        }
        bytes +=
            to_b.as_ref().map_or(0, Vec::len) as u64 + to_a.as_ref().map_or(0, Vec::len) as u64;
        if let Some(m) = to_b {
            let m = Message::decode(&m).unwrap();
            b.receive(&mut sb, m);
        }
        if let Some(m) = to_a {
            let m = Message::decode(&m).unwrap();
            a.receive(&mut sa, m);
        }
    }
    RawSync {
        time: started.elapsed(),
        bytes,
    }
}

fn device(id: &str) -> Device {
    Device::new(DeviceId::new(id).unwrap(), "bench").unwrap()
}
