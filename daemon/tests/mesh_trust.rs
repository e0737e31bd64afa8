//! Three daemons in one process over loopback: the roster replicates (a device added on one is
//! trusted on all), signed changes pass through the mesh, and a device removed on one is
//! removed everywhere, told so, and neither receives nor adds anything afterwards.

use std::time::Duration;

use chatsync_daemon::config::Config;
use chatsync_testkit::{
    TestDaemon, eventually,
    home::{fixed_loopback_addr, temp_home},
};
use reqwest::StatusCode;

/// How long a test waits for daemons to converge.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn trusts(daemon: &TestDaemon, device: &str) -> bool {
    let list = daemon.devices().await;
    list.iter().any(|d| d.id == device && d.trusted)
}

async fn removed(daemon: &TestDaemon, device: &str) -> bool {
    let list = daemon.devices().await;
    list.iter()
        .any(|d| d.id == device && d.removed_at.is_some())
}

async fn has_text(daemon: &TestDaemon, chat: &str, text: &str) -> bool {
    daemon.texts(chat).await.iter().any(|t| t == text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roster_replicates_and_a_removed_device_is_cut_off_everywhere() {
    let homes = [temp_home(), temp_home(), temp_home()];
    let addrs = [
        fixed_loopback_addr(),
        fixed_loopback_addr(),
        fixed_loopback_addr(),
    ];
    // Start each once to learn its device id, which the others' peer addresses need.
    let mut ids = Vec::new();
    let mut kept = Vec::new();
    for home in homes {
        let first = TestDaemon::start_in(home, Config::default()).await;
        ids.push(first.device_id.clone());
        kept.push(first.shutdown().await);
    }
    let mut daemons = Vec::new();
    for (i, home) in kept.into_iter().enumerate() {
        let mut config = Config::default();
        config.network.listen = vec![addrs[i].parse().unwrap()];
        config.network.peers = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("{}/p2p/{}", addrs[j], ids[j]).parse().unwrap())
            .collect();
        daemons.push(TestDaemon::start_in(home, config).await);
    }
    let (a, b, c) = (&daemons[0], &daemons[1], &daemons[2]);
    let (b_id, c_id) = (&ids[1], &ids[2]);

    // a pairs with b and with c; b and c only pair with a.
    for (x, y) in [(0, 1), (0, 2), (1, 0), (2, 0)] {
        daemons[x].trust(&ids[y]).await;
    }
    // a's roster reaches b and c: they trust each other without anyone typing an id.
    eventually("b trusts c", WAIT, || trusts(b, c_id)).await;
    eventually("c trusts b", WAIT, || trusts(c, b_id)).await;

    // Signed changes from b reach c, directly or through a.
    let chat = a.create_chat("family").await;
    eventually("b has the chat", WAIT, || async {
        b.get(&format!("/chats/{}", chat.id)).await.status == StatusCode::OK
    })
    .await;
    b.post_message(&chat.id, "hello from b").await;
    eventually("c has b's post", WAIT, || {
        has_text(c, &chat.id, "hello from b")
    })
    .await;
    eventually("a has b's post", WAIT, || {
        has_text(a, &chat.id, "hello from b")
    })
    .await;

    // a removes b: everyone learns it, and b is told.
    a.remove(b_id).await;
    eventually("c saw the removal", WAIT, || removed(c, b_id)).await;
    eventually("b was told it was removed", WAIT, || async {
        b.status().await.removed_from_mesh_at.is_some()
    })
    .await;

    // b keeps writing; nobody takes it. The mesh keeps writing; b gets none of it.
    b.post_message(&chat.id, "after removal").await;
    a.post_message(&chat.id, "without b").await;
    eventually("c has a's post", WAIT, || {
        has_text(c, &chat.id, "without b")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, daemon) in [("a", a), ("c", c)] {
        assert!(
            !has_text(daemon, &chat.id, "after removal").await,
            "{name} took a post b wrote after its removal"
        );
    }
    assert!(
        !has_text(b, &chat.id, "without b").await,
        "b received a post made after its removal"
    );
}
