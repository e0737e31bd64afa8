//! `GET /metrics` as Prometheus scrapes it: well-formed OpenMetrics text, on the local socket
//! and on the TCP address `[metrics] listen` names, counting what this device wrote, what it
//! received and how long writes took to become durable, and showing its devices, their
//! connections and the traffic with each.

use std::collections::BTreeMap;

use chatsync_daemon::config::Config;
use chatsync_testkit::{
    TestDaemon, eventually,
    home::{fixed_loopback_addr, free_loopback_port},
    openmetrics, pair_by_address,
};

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn scrape(daemon: &TestDaemon) -> BTreeMap<String, f64> {
    let reply = daemon.get_unversioned("/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let content_type = reply.content_type.unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    openmetrics::parse(&reply.text).unwrap_or_else(|e| panic!("{e}:\n{}", reply.text))
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_writes_and_show_devices_connections_and_traffic() {
    let addr = fixed_loopback_addr();
    let mut config_a = Config::default();
    config_a.network.listen = vec![addr.parse().unwrap()];
    let a = TestDaemon::start_with(config_a).await;
    let metrics_port = free_loopback_port();
    let mut config_b = Config::default();
    config_b.network.peers = vec![format!("{addr}/p2p/{}", a.device_id).parse().unwrap()];
    config_b.metrics.listen = Some(format!("127.0.0.1:{metrics_port}"));
    let b = TestDaemon::start_with(config_b).await;
    pair_by_address(&a, &b).await;

    // The chat reaches B whole; what is written in it afterwards, as sync messages.
    let chat = a.create_chat("family").await;
    let first = a.post_message(&chat.id, "one").await;
    eventually("B has the chat", WAIT, || async {
        b.texts(&chat.id).await == ["one"]
    })
    .await;
    a.post_message(&chat.id, "two").await;
    a.client
        .edit(&chat.id, &first.id, "one, edited")
        .await
        .unwrap();
    a.client
        .react(&chat.id, &first.id, Some("👍"))
        .await
        .unwrap();
    eventually("B has every change", WAIT, || async {
        b.texts(&chat.id).await == ["one, edited", "two"]
    })
    .await;

    let on_a = scrape(&a).await;
    assert_eq!(sample(&on_a, "chatsync_writes_total{kind=\"post\"}"), 2.0);
    assert_eq!(sample(&on_a, "chatsync_writes_total{kind=\"edit\"}"), 1.0);
    assert_eq!(
        sample(&on_a, "chatsync_writes_total{kind=\"reaction\"}"),
        1.0
    );
    // Every write that was acknowledged was timed, the chat's creation too.
    assert!(sample(&on_a, "chatsync_durable_write_seconds_count") >= 5.0);
    assert!(sample(&on_a, "chatsync_durable_write_seconds_sum") > 0.0);
    assert_eq!(sample(&on_a, "chatsync_chats"), 1.0);
    assert_eq!(sample(&on_a, "chatsync_devices_trusted"), 1.0);
    assert_eq!(sample(&on_a, "chatsync_devices_connected"), 1.0);
    assert!(sample(&on_a, "chatsync_connections{path=\"lan\"}") >= 1.0);
    assert_eq!(sample(&on_a, "chatsync_connections{path=\"relayed\"}"), 0.0);
    let to_b = format!("{{device=\"{}\"}}", b.device_id);
    assert!(sample(&on_a, &format!("chatsync_sync_sent_bytes_total{to_b}")) > 0.0);
    assert_eq!(
        sample(&on_a, &format!("chatsync_offences_total{to_b}")),
        0.0
    );
    assert_eq!(
        sample(&on_a, &format!("chatsync_device_connected{to_b}")),
        1.0
    );
    assert_eq!(
        sample(&on_a, &format!("chatsync_device_suspended{to_b}")),
        0.0
    );
    assert_eq!(sample(&on_a, "chatsync_store_healthy"), 1.0);
    assert!(sample(&on_a, "chatsync_memory_budget_bytes") > 0.0);

    // B, scraped over TCP as Prometheus would: what it received, and how long applying took.
    let body = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let on_b = openmetrics::parse(&body).unwrap_or_else(|e| panic!("{e}:\n{body}"));
    // "one" with the whole chat; "two", the edit and the reaction in sync messages.
    assert!(sample(&on_b, "chatsync_messages_received_total") >= 3.0);
    assert!(sample(&on_b, "chatsync_apply_seconds_count") >= 1.0);
    assert!(
        !on_b.keys().any(|k| k.starts_with("chatsync_writes_total")),
        "B wrote nothing"
    );
    let from_a = format!("{{device=\"{}\"}}", a.device_id);
    assert!(
        sample(
            &on_b,
            &format!("chatsync_sync_received_bytes_total{from_a}")
        ) > 0.0
    );
    // Only the metrics there.
    let other = reqwest::get(format!("http://127.0.0.1:{metrics_port}/v1/status"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}
