//! Two daemons in one process over loopback: `peer.up` and `peer.down` on the event stream,
//! and `/v1/peers` as connections come and go.

use std::time::Duration;

use chatsync_daemon::config::Config;
use chatsync_testkit::TestDaemon;
use reqwest::StatusCode;

/// A second daemon configured to dial `a`; returns `a`'s status with it.
async fn start_dialling(a: &TestDaemon) -> (chatsync_api::wire::StatusJson, TestDaemon) {
    let a_status = a.status().await;
    let a_addr = format!("{}/p2p/{}", a_status.listen_addrs[0], a_status.device_id);
    let mut config = Config::default();
    config.network.peers = vec![a_addr.parse().unwrap()];
    (a_status, TestDaemon::start_with(config).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_events_follow_connections_and_trust() {
    let a = TestDaemon::start().await;
    let (a_status, b) = start_dialling(&a).await;
    let b_id = b.status().await.device_id;
    let mut a_events = a.events("").await;

    a.client.add_device(&b_id, Some("bee")).await.unwrap();
    a_events.expect("device.added").await;
    b.trust(&a_status.device_id).await;

    let up = tokio::time::timeout(Duration::from_secs(15), a_events.expect("peer.up"))
        .await
        .expect("no peer.up within 15 s");
    assert_eq!(up["device"], b_id.as_str());
    let peers = a.peers().await;
    let bee = peers.iter().find(|p| p.device == b_id).unwrap();
    assert!(bee.connected);
    assert_eq!(bee.name.as_deref(), Some("bee"));
    assert_eq!(bee.direction, Some(chatsync_api::wire::Direction::Inbound));
    assert_eq!(a.status().await.peers_connected, 1);

    // Removing b from a's roster disconnects it.
    a.delete(&format!("/devices/{b_id}"))
        .await
        .json::<serde_json::Value>(StatusCode::OK);
    a_events.expect("device.removed").await;
    let down = tokio::time::timeout(Duration::from_secs(10), a_events.expect("peer.down"))
        .await
        .expect("no peer.down within 10 s");
    assert_eq!(down["device"], b_id.as_str());
    let peers = a.peers().await;
    assert!(peers.iter().all(|p| p.device != b_id));
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_catching_up_reports_its_progress_on_the_event_stream() {
    let a = TestDaemon::start().await;
    for title in ["family", "work", "club"] {
        a.create_chat(title).await;
    }
    let (a_status, b) = start_dialling(&a).await;
    let b_id = b.status().await.device_id;
    let mut progress = b.events("progress=true").await;
    // Where it stands comes first.
    let now = progress.expect("sync.progress").await;
    assert_eq!(now["state"], "offline", "{now}");
    assert_eq!(now["chats"], 0, "{now}");
    // Without asking, a stream carries no progress.
    let mut quiet = b.events("").await;

    a.trust(&b_id).await;
    b.trust(&a_status.device_id).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let event = progress
            .next_within(left)
            .await
            .unwrap_or_else(|_| panic!("never in sync; progress seen: {seen:?}"))
            .unwrap();
        if event["type"] != "sync.progress" {
            continue;
        }
        seen.push(event.clone());
        if event["state"] == "in_sync" && event["chats"] == 3 {
            assert_eq!(event["chats_behind"], 0);
            assert_eq!(event["peers_connected"], 1);
            break;
        }
    }
    while let Ok(Some(event)) = quiet.next_within(Duration::from_millis(300)).await {
        assert_ne!(event["type"], "sync.progress", "{event}");
    }
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_sync_through_a_relay() {
    use chatsync_api::wire::ConnectionPath;
    let (relay, relay_addr) = chatsync_testkit::start_relay().await;
    let (a, b) = chatsync_testkit::pair_through_relay(&relay_addr).await;
    let link = b.peer(&a.device_id).await.unwrap();
    assert_eq!(link.path, Some(ConnectionPath::Relayed), "{link:?}");
    assert_eq!(link.relay.as_deref(), Some(relay.device_id.as_str()));
    let chat = a.create_chat("apart").await;
    a.post_message(&chat.id, "through the relay").await;
    chatsync_testkit::eventually("b has a's post", Duration::from_secs(30), || async {
        b.texts(&chat.id).await == ["through the relay"]
    })
    .await;
    b.shutdown().await;
    a.shutdown().await;
    relay.shutdown().await;
}
