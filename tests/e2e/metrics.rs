//! Metrics as an operator scrapes them: the real daemon, started the way a user starts it, with
//! `[metrics] listen` in its config; its TCP endpoint read with plain HTTP as Prometheus does,
//! after posts made with the real CLI.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use chatsync_testkit::{home::free_loopback_port, openmetrics};

use crate::support::Device;

/// `GET /metrics` over TCP: the status line and the body.
fn scrape(port: u16) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn an_operator_scrapes_the_daemon_over_tcp() {
    let dev = Device::new();
    let port = free_loopback_port();
    let config = std::fs::read_to_string(dev.home().join("config.toml")).unwrap();
    std::fs::write(
        dev.home().join("config.toml"),
        format!("{config}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    dev.start();
    dev.ok(&["chat", "create", "family"]);
    for text in ["one", "two", "three"] {
        dev.ok(&["post", "family", text]);
    }
    let (status, body) = scrape(port);
    assert!(status.ends_with("200 OK"), "{status}");
    let samples = openmetrics::parse(&body).unwrap_or_else(|e| panic!("{e}:\n{body}"));
    assert_eq!(
        samples["chatsync_writes_total{kind=\"post\"}"], 3.0,
        "{body}"
    );
    assert_eq!(samples["chatsync_chats"], 1.0);
    assert!(samples["chatsync_durable_write_seconds_count"] >= 4.0);
    assert!(samples["chatsync_store_bytes"] > 0.0);
    assert_eq!(samples["chatsync_devices_connected"], 0.0);
    dev.stop();
}

/// A metrics address other computers could reach is refused unless the config allows it: the
/// daemon does not start, and says why.
#[test]
fn a_metrics_address_reachable_from_other_computers_needs_allow_remote() {
    let dev = Device::new();
    let config = std::fs::read_to_string(dev.home().join("config.toml")).unwrap();
    std::fs::write(
        dev.home().join("config.toml"),
        format!(
            "{config}[metrics]\nlisten = \"0.0.0.0:{}\"\n",
            free_loopback_port()
        ),
    )
    .unwrap();
    let run = dev.run(&["daemon", "start"]);
    assert_ne!(run.code, 0, "{run:?}");
    let said = format!("{}{}{}", run.stdout, run.stderr, dev.daemon_logs());
    assert!(said.contains("allow_remote"), "{said}");
}
