//! Two daemons in one process over loopback, with chats too large for one message on the wire:
//! a whole chat over the part size is fetched in parts, catch-ups over it go both ways (so both
//! the side that starts a session and the side that answers send large messages), and
//! `/v1/peers` and `/v1/status` report the progress and the bytes moved. Also many chats new to
//! a device at once: more fetches than may be in flight to one device.

use std::time::Duration;

use chatsync_api::wire::{ChatJson, PeerJson};
use chatsync_daemon::{config::Config, net::protocol::PART_BYTES};
use chatsync_testkit::{
    TestDaemon, eventually,
    home::{fixed_loopback_addr, temp_home},
};
use reqwest::StatusCode;
use serde_json::json;

/// Text that compresses poorly, so that a few hundred messages make a document over
/// [`PART_BYTES`].
fn noisy_text(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Posts `count` messages of 16 KiB of noise: about 1.5 MiB of document per 100.
async fn post_noise(daemon: &TestDaemon, chat: &str, seed: u64, count: u64) {
    for i in 0..count {
        daemon
            .post(
                &format!("/chats/{chat}/messages"),
                json!({ "text": noisy_text(seed + i, 16 * 1024) }),
            )
            .await
            .json::<serde_json::Value>(StatusCode::CREATED);
    }
}

fn config(listen: &str, peer: &str) -> Config {
    let mut config = Config::default();
    config.network.listen = vec![listen.parse().unwrap()];
    config.network.peers = vec![peer.parse().unwrap()];
    config
}

async fn peer(daemon: &TestDaemon, device: &str) -> Option<PeerJson> {
    let peers = daemon.peers().await;
    peers.into_iter().find(|p| p.device == device)
}

/// Messages in `chat` on `daemon`; none while the chat has not arrived.
async fn message_count(daemon: &TestDaemon, chat: &str) -> usize {
    let reply = daemon.get(&format!("/chats/{chat}")).await;
    if reply.status == StatusCode::NOT_FOUND {
        return 0;
    }
    reply.json::<ChatJson>(StatusCode::OK).messages as usize
}

/// Waits until `daemon` has `count` messages in `chat` and reports being in sync with `other`.
async fn wait_synced(daemon: &TestDaemon, other: &str, chat: &str, count: usize) {
    let what = format!("{count} messages arrived and the devices report being in sync");
    eventually(&what, Duration::from_secs(60), || async {
        let in_sync = peer(daemon, other)
            .await
            .is_some_and(|p| p.connected && p.chats_behind == Some(0) && p.chats_ahead == Some(0));
        message_count(daemon, chat).await == count && in_sync
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_over_the_part_size_sync_both_ways_and_progress_is_reported() {
    let (a_home, b_home) = (temp_home(), temp_home());
    let (a_addr, b_addr) = (fixed_loopback_addr(), fixed_loopback_addr());
    // Start each once to learn its device id, which the other's peer address needs.
    let first = TestDaemon::start_in(a_home, Config::default()).await;
    let a_id = first.device_id.clone();
    let a_home = first.shutdown().await;
    let first = TestDaemon::start_in(b_home, Config::default()).await;
    let b_id = first.device_id.clone();
    let b_home = first.shutdown().await;
    let a_config = config(&a_addr, &format!("{b_addr}/p2p/{b_id}"));
    let b_config = config(&b_addr, &format!("{a_addr}/p2p/{a_id}"));

    let a = TestDaemon::start_in(a_home, a_config).await;
    a.trust(&b_id).await;
    let chat = a.create_chat("photos").await.id;
    post_noise(&a, &chat, 0, 120).await;
    let a_stored = a.status().await.store_bytes;
    assert!(
        a_stored > PART_BYTES as u64,
        "the chat must be larger than one part ({a_stored} bytes stored)"
    );

    // B has never seen the chat: it is fetched whole, in parts.
    let b = TestDaemon::start_in(b_home, b_config).await;
    b.trust(&a_id).await;
    wait_synced(&b, &a_id, &chat, 120).await;
    let from_a = peer(&b, &a_id).await.unwrap();
    assert!(
        from_a.bytes_received > PART_BYTES as u64,
        "B received only {} bytes from A",
        from_a.bytes_received
    );
    assert!(from_a.last_sync.is_some());
    let status = b.status().await;
    assert_eq!(status.sync.peers_connected, 1);
    assert_eq!(status.sync.peers_trusted, 1);

    // B is away while A posts more than a part's worth: B catches up on return.
    let b_home = b.shutdown().await;
    post_noise(&a, &chat, 1000, 100).await;
    let b = TestDaemon::start_in(b_home, config(&b_addr, &format!("{a_addr}/p2p/{a_id}"))).await;
    wait_synced(&b, &a_id, &chat, 220).await;

    // And the other way: A is away while B posts; A catches up from B.
    let a_home = a.shutdown().await;
    post_noise(&b, &chat, 2000, 100).await;
    let a = TestDaemon::start_in(a_home, config(&a_addr, &format!("{b_addr}/p2p/{b_id}"))).await;
    wait_synced(&a, &b_id, &chat, 320).await;
    wait_synced(&b, &a_id, &chat, 320).await;

    let ids = |messages: Vec<chatsync_api::wire::MessageJson>| {
        messages.into_iter().map(|m| m.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(a.all_messages(&chat, 500).await),
        ids(b.all_messages(&chat, 500).await)
    );
    eventually("A reports in_sync", Duration::from_secs(10), || async {
        a.status().await.sync.state == chatsync_api::wire::SyncStatus::InSync
    })
    .await;
    let sync = a.status().await.sync;
    assert_eq!((sync.chats_behind, sync.chats_ahead), (0, 0));
    assert!(sync.last_sync.is_some());
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_chats_new_to_a_device_all_arrive() {
    let a = TestDaemon::start().await;
    let a_status = a.status().await;
    let a_peer = format!("{}/p2p/{}", a_status.listen_addrs[0], a_status.device_id);
    let mut b_config = Config::default();
    b_config.network.peers = vec![a_peer.parse().unwrap()];
    let b = TestDaemon::start_with(b_config).await;
    // Far more chats than requests may be in flight to one device (the rest wait in a queue).
    let mut chats = Vec::new();
    for i in 0..60 {
        let chat = a.create_chat(&format!("chat {i}")).await.id;
        a.post_message(&chat, &format!("hello {i}")).await;
        chats.push(chat);
    }
    a.trust(&b.device_id).await;
    b.trust(&a.device_id).await;
    for chat in &chats {
        wait_synced(&b, &a.device_id, chat, 1).await;
    }
    assert_eq!(b.chats().await.len(), 60);
    b.shutdown().await;
    a.shutdown().await;
}
