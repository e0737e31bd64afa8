//! What the sync benchmarks share: waits on real daemons, and the floor under a catch-up
//! (Automerge's sync protocol between two documents in memory, with nothing around it).

use std::time::{Duration, Instant};

use automerge::{
    AutoCommit, Automerge,
    sync::{Message, State, SyncDoc},
};
use chatsync_api::client::Client;
use chatsync_model::{ChatDoc, ChatId, Device, DeviceId, MessageId};
use chatsync_testkit::eventually;

use super::text;

/// How long a sync may take before the run fails.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn wait_connected(client: &Client, other: &str) {
    eventually("the devices connect", Duration::from_secs(60), || async {
        client
            .peers()
            .await
            .is_ok_and(|peers| peers.iter().any(|p| p.device == other && p.connected))
    })
    .await;
}

/// Waits until the chat is there with at least `n` messages; returns how long that took.
pub async fn wait_messages(client: &Client, chat: &str, n: u64) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(c) = client.chat(chat).await
            && c.messages >= n
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < SYNC_TIMEOUT,
            "chat {chat} did not reach {n} messages within {SYNC_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Posts `n` messages through `clients` concurrent API clients, each awaiting its posts.
pub async fn post_many(client: &Client, chat: &str, n: usize, clients: usize) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, chat) = (client.clone(), chat.to_string());
        // Client c posts messages c, c + clients, ...: n in all, whatever n is.
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(clients) {
                client.post(&chat, &text(i), None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Sync payload bytes the daemon has received from the device `from` since it started.
pub async fn bytes_received(client: &Client, from: &str) -> u64 {
    client
        .peers()
        .await
        .unwrap()
        .iter()
        .find(|p| p.device == from)
        .map_or(0, |p| p.bytes_received)
}

/// A catch-up done by Automerge alone, in memory.
pub struct RawSync {
    pub time: Duration,
    /// Sync message bytes, both directions.
    pub bytes: u64,
    /// The missed changes, compressed as Automerge saves them (the whole document less what
    /// the other side started with).
    pub compressed: u64,
}

/// Automerge's sync protocol between two in-memory chats: one with `n` messages, one with only
/// the chat's genesis, with no checks (wire, authorship, rules). The floor under a catch-up.
/// Messages get random ids and real times, as the daemon gives them (both cost bytes).
pub fn raw_sync(n: usize) -> RawSync {
    let (da, db) = (device("12D3KooWA"), device("12D3KooWB"));
    let start = chatsync_daemon::engine::now_ms();
    let mut a = ChatDoc::create(ChatId::new("raw").unwrap(), "raw", &da, start).unwrap();
    let genesis = a.save().len() as u64;
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
    let compressed = a.save().len() as u64 - genesis;
    // Straight into Automerge: the floor has no checks of its own.
    let (time, bytes) = until_quiet(a.automerge_mut(), b.automerge_mut());
    // The model's index never saw these changes: compare the documents themselves.
    assert_eq!(a.heads(), b.heads(), "the raw sync did not converge");
    RawSync {
        time,
        bytes,
        compressed,
    }
}

/// A document that speaks the sync protocol: an `Automerge`, or the `AutoCommit` in a chat.
pub trait Syncs {
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

/// Runs the sync protocol between `a` and `b` until neither has anything to send: how long it
/// took and the message bytes, both directions.
pub fn until_quiet(a: &mut impl Syncs, b: &mut impl Syncs) -> (Duration, u64) {
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
            b.receive(&mut sb, Message::decode(&m).unwrap());
        }
        if let Some(m) = to_a {
            a.receive(&mut sa, Message::decode(&m).unwrap());
        }
    }
    (started.elapsed(), bytes)
}

fn device(id: &str) -> Device {
    Device::new(DeviceId::new(id).unwrap(), "bench").unwrap()
}
