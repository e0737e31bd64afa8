//! Many daemons in one process over loopback, all writing at once: every post reaches every
//! device, every device shows them in one order, and no device refuses another's data (no
//! unproven authorship, no offence, no suspension). And a chat made on one end of a chain of
//! devices is passed on at once by the device in the middle, not at its next summary exchange.

use std::time::{Duration, Instant};

use chatsync_api::wire::ChatJson;
use chatsync_daemon::config::Config;
use chatsync_testkit::{
    TestDaemon, eventually,
    home::{fixed_loopback_addr, temp_home},
};
use reqwest::StatusCode;
use serde_json::json;

/// Starts `count` daemons; `dials(i)` lists the daemons daemon `i` dials. Every daemon trusts
/// daemon 0 and daemon 0 trusts every daemon, so the roster makes them all trust each other.
async fn start(
    count: usize,
    dials: impl Fn(usize) -> Vec<usize>,
) -> (Vec<TestDaemon>, Vec<String>) {
    let addrs: Vec<String> = (0..count).map(|_| fixed_loopback_addr()).collect();
    // Start each once to learn its device id, which the others' peer addresses need.
    let mut ids = Vec::new();
    let mut homes = Vec::new();
    for _ in 0..count {
        let first = TestDaemon::start_in(temp_home(), Config::default()).await;
        ids.push(first.device_id.clone());
        homes.push(first.shutdown().await);
    }
    let mut daemons = Vec::new();
    for (i, home) in homes.into_iter().enumerate() {
        let mut config = Config::default();
        config.network.listen = vec![addrs[i].parse().unwrap()];
        config.network.peers = dials(i)
            .into_iter()
            .map(|j| format!("{}/p2p/{}", addrs[j], ids[j]).parse().unwrap())
            .collect();
        daemons.push(TestDaemon::start_in(home, config).await);
    }
    for i in 1..count {
        for (x, y) in [(0, i), (i, 0)] {
            daemons[x].trust(&ids[y]).await;
        }
    }
    for daemon in &daemons {
        eventually(
            "every device trusts every other",
            Duration::from_secs(60),
            || async {
                let list = daemon.devices().await;
                list.iter().filter(|d| d.trusted).count() >= count - 1
            },
        )
        .await;
    }
    (daemons, ids)
}

async fn has_chat(daemon: &TestDaemon, chat: &str) -> bool {
    daemon.get(&format!("/chats/{chat}")).await.status == StatusCode::OK
}

/// Every refusal of another device's data that `daemon` counted, by device.
async fn refusals(daemon: &TestDaemon) -> Vec<(String, u64, u64, Option<i64>)> {
    let peers = daemon.peers().await;
    peers
        .into_iter()
        .filter(|p| p.refusals > 0 || p.offences > 0 || p.suspended_until.is_some())
        .map(|p| (p.device, p.refusals, p.offences, p.suspended_until))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_devices_posting_at_once_converge_with_no_refusal() {
    // `CHATSYNC_MESH_DEVICES` runs a larger mesh by hand (12 is about 30 s on two cores).
    let devices: usize = std::env::var("CHATSYNC_MESH_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8);
    const POSTS: usize = 12;
    // Every device dials every device before it: one connection per pair.
    let (daemons, _) = start(devices, |i| (0..i).collect()).await;
    let chat: ChatJson = daemons[0]
        .post("/chats", json!({ "title": "everyone" }))
        .await
        .json(StatusCode::CREATED);
    for daemon in &daemons {
        eventually("every device has the chat", Duration::from_secs(60), || {
            has_chat(daemon, &chat.id)
        })
        .await;
    }

    // Everyone posts at the same moment.
    let posting = daemons.iter().enumerate().map(|(i, daemon)| {
        let chat = chat.id.clone();
        async move {
            for n in 0..POSTS {
                daemon.post_message(&chat, &format!("{i}-{n}")).await;
            }
        }
    });
    futures_util::future::join_all(posting).await;

    let expected = devices * POSTS;
    for daemon in &daemons {
        eventually(
            "every post is on every device",
            Duration::from_secs(90),
            || async {
                daemon
                    .try_all_messages(&chat.id, 1000)
                    .await
                    .is_ok_and(|m| m.len() == expected)
            },
        )
        .await;
    }
    let order = |messages: Vec<chatsync_api::wire::MessageJson>| -> Vec<String> {
        messages.into_iter().map(|m| m.id).collect()
    };
    let first = order(daemons[0].all_messages(&chat.id, 1000).await);
    for (i, daemon) in daemons.iter().enumerate() {
        assert_eq!(
            order(daemon.all_messages(&chat.id, 1000).await),
            first,
            "device {i} shows another order than device 0"
        );
    }
    for (i, daemon) in daemons.iter().enumerate() {
        assert_eq!(
            refusals(daemon).await,
            Vec::new(),
            "device {i} refused honest devices' data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_chat_crosses_a_device_in_the_middle_at_once() {
    // A and B both dial S; A and B never meet.
    let (daemons, _) = start(3, |i| if i == 0 { Vec::new() } else { vec![0] }).await;
    let (s, a, b) = (&daemons[0], &daemons[1], &daemons[2]);
    let began = Instant::now();
    let chat = a.create_chat("two hops").await;
    // The summary exchange that would otherwise bring it runs every 30 s. Asked every 2 ms,
    // so that the time printed is the time it took (docs/benchmarks.md has the figures).
    let deadline = began + Duration::from_secs(10);
    while !has_chat(b, &chat.id).await {
        assert!(
            Instant::now() < deadline,
            "the chat did not reach B through S"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let crossed = began.elapsed();
    assert!(has_chat(s, &chat.id).await);
    eprintln!("a new chat crossed two hops in {crossed:?}");
    a.post_message(&chat.id, "over two hops").await;
    eventually(
        "a post reaches B through S",
        Duration::from_secs(10),
        || async {
            b.texts(&chat.id)
                .await
                .contains(&"over two hops".to_string())
        },
    )
    .await;
}
