//! Devices on one machine, over loopback with configured peers: only devices in each other's
//! roster connect, an untrusted device gets nowhere, and removal from the roster disconnects.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Device, device_id, eventually_blocking};

/// A dialable address of a running device: `/ip4/127.0.0.1/tcp/PORT/p2p/ID`.
fn address_of(dev: &Device) -> String {
    let status = dev.ok_json1(&["status", "--json"]);
    let listen = status["listen_addrs"][0]
        .as_str()
        .expect("a listen address");
    format!("{listen}/p2p/{}", status["device_id"].as_str().unwrap())
}

fn peer(dev: &Device, id: &str) -> Option<Value> {
    dev.ok_json(&["peers", "--json"])
        .into_iter()
        .find(|p| p["device"] == id)
}

fn connected(dev: &Device, id: &str) -> bool {
    peer(dev, id).is_some_and(|p| p["connected"] == true)
}

#[test]
fn only_trusted_devices_connect_and_removal_disconnects() {
    let a = Device::new();
    a.start();
    let a_id = device_id(&a);
    let a_addr = address_of(&a);

    let b = Device::new();
    b.set_peers(std::slice::from_ref(&a_addr));
    b.start();
    let b_id = device_id(&b);
    let c = Device::new();
    c.set_peers(std::slice::from_ref(&a_addr));
    c.start();
    let c_id = device_id(&c);

    // a and b trust each other; c trusts a, but a does not trust c.
    a.ok(&["devices", "add", &b_id, "--name", "bee"]);
    b.ok(&["devices", "add", &a_id, "--name", "ay"]);
    c.ok(&["devices", "add", &a_id]);

    eventually_blocking("a and b to connect", Duration::from_secs(15), || {
        connected(&a, &b_id) && connected(&b, &a_id)
    });
    let seen_by_b = peer(&b, &a_id).unwrap();
    assert_eq!(seen_by_b["name"], "ay");
    assert_eq!(seen_by_b["transport"], "tcp");
    assert_eq!(seen_by_b["direction"], "outbound");
    assert!(seen_by_b["connected_since"].is_i64());
    assert_eq!(peer(&a, &b_id).unwrap()["direction"], "inbound");
    assert_eq!(a.ok_json1(&["status", "--json"])["peers_connected"], 1);
    let table = b.ok(&["peers"]);
    assert!(table.contains(&a_id) && table.contains("tcp"), "{table}");

    // c keeps dialling a and is refused every time.
    std::thread::sleep(Duration::from_secs(2));
    assert!(peer(&a, &c_id).is_none(), "a lists the untrusted device");
    assert!(
        !connected(&c, &a_id),
        "the untrusted device counts as connected"
    );

    // Removing b disconnects it, and its redials are refused from then on.
    a.ok(&["devices", "remove", &b_id]);
    eventually_blocking("b to be disconnected", Duration::from_secs(10), || {
        !connected(&a, &b_id) && !connected(&b, &a_id)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!connected(&b, &a_id), "b got back in after removal");
    assert!(peer(&a, &b_id).is_none());
}

#[test]
fn a_device_reconnects_after_the_other_restarts() {
    let (a, b, a_id, b_id) = connected_pair();
    a.stop();
    eventually_blocking("b to notice", Duration::from_secs(15), || {
        !connected(&b, &a_id)
    });
    a.start();
    eventually_blocking("b to reconnect", Duration::from_secs(30), || {
        connected(&b, &a_id)
    });
    assert!(connected(&a, &b_id));
}

/// Two trusted devices connected over loopback, `b` dialling `a` at a fixed address.
fn connected_pair() -> (Device, Device, String, String) {
    let a = Device::new();
    a.start();
    let a_id = device_id(&a);
    let a_addr = address_of(&a);
    let port = a_addr.split('/').nth(4).unwrap().to_string();
    a.stop();
    std::fs::write(
        a.home().join("config.toml"),
        format!("[network]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nmdns = false\n"),
    )
    .unwrap();
    a.start();
    let b = Device::new();
    b.set_peers(&[a_addr]);
    b.start();
    let b_id = device_id(&b);
    a.ok(&["devices", "add", &b_id]);
    b.ok(&["devices", "add", &a_id]);
    eventually_blocking("a and b to connect", Duration::from_secs(15), || {
        connected(&a, &b_id) && connected(&b, &a_id)
    });
    (a, b, a_id, b_id)
}

fn log_texts(dev: &Device, chat: &str) -> Vec<String> {
    dev.ok_json(&["log", chat, "-n", "5000", "--json"])
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

fn has_chat(dev: &Device, chat: &str) -> bool {
    dev.ok_json(&["chats", "--json"])
        .iter()
        .any(|c| c["id"] == chat)
}

#[test]
fn chats_and_posts_sync_both_ways_and_converge() {
    let (a, b, a_id, b_id) = connected_pair();
    let chat = a.ok_json1(&["chat", "create", "family", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.ok(&["post", &chat, "dinner at 7"]);
    eventually_blocking("the chat to reach b", Duration::from_secs(15), || {
        has_chat(&b, &chat) && log_texts(&b, &chat) == ["dinner at 7"]
    });
    b.ok(&["post", &chat, "see you"]);
    eventually_blocking("b's post to reach a", Duration::from_secs(15), || {
        log_texts(&a, &chat).len() == 2
    });
    // Concurrent posts on both sides end in the same messages in the same order.
    for i in 0..10 {
        a.ok(&["post", &chat, &format!("a{i}")]);
        b.ok(&["post", &chat, &format!("b{i}")]);
    }
    eventually_blocking("both to have 22 messages", Duration::from_secs(20), || {
        log_texts(&a, &chat).len() == 22 && log_texts(&b, &chat).len() == 22
    });
    let (la, lb) = (
        a.ok_json(&["log", &chat, "-n", "100", "--json"]),
        b.ok_json(&["log", &chat, "-n", "100", "--json"]),
    );
    let ids = |l: &Vec<Value>| l.iter().map(|m| m["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&la), ids(&lb));
    // Both report being in sync, in `peers` and in `status`, for people and for programs.
    eventually_blocking("both to report in sync", Duration::from_secs(15), || {
        [(&a, &b_id), (&b, &a_id)].iter().all(|(d, other)| {
            peer(d, other).is_some_and(|p| {
                p["chats_behind"] == 0 && p["chats_ahead"] == 0 && p["last_sync"].is_i64()
            }) && d.ok_json1(&["status", "--json"])["sync"]["state"] == "in_sync"
        })
    });
    let from_a = peer(&b, &a_id).unwrap();
    assert!(from_a["bytes_received"].as_u64().unwrap() > 0, "{from_a}");
    assert!(a.ok(&["peers"]).contains("in sync"));
    assert!(
        a.ok(&["status"])
            .contains("in sync with 1 of 1 trusted devices")
    );
    // Edits and reactions travel too.
    let first = la[0]["id"].as_str().unwrap().to_string();
    a.ok(&["edit", &chat, &first, "dinner at 8"]);
    b.ok(&["react", &chat, &first, "👍"]);
    eventually_blocking(
        "the edit and the reaction on both",
        Duration::from_secs(15),
        || {
            [&a, &b].iter().all(|d| {
                let m = &d.ok_json(&["log", &chat, "-n", "100", "--json"])[0];
                m["text"] == "dinner at 8"
                    && m["reactions"].as_object().is_some_and(|r| r.len() == 1)
            })
        },
    );
}

#[test]
fn a_device_that_was_offline_catches_up() {
    let (a, b, _, b_id) = connected_pair();
    let chat = a.ok_json1(&["chat", "create", "family", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.ok(&["post", &chat, "before"]);
    eventually_blocking("the chat to reach b", Duration::from_secs(15), || {
        has_chat(&b, &chat)
    });
    b.stop();
    eventually_blocking("a to notice", Duration::from_secs(15), || {
        !connected(&a, &b_id)
    });
    for i in 0..200 {
        a.ok(&["post", &chat, &format!("while away {i}")]);
    }
    let other = a.ok_json1(&["chat", "create", "created while away", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.ok(&["post", &other, "hello"]);
    b.start();
    eventually_blocking("b to catch up", Duration::from_secs(30), || {
        log_texts(&b, &chat).len() == 201 && has_chat(&b, &other)
    });
    assert_eq!(log_texts(&b, &chat), log_texts(&a, &chat));
    eventually_blocking("the new chat's post", Duration::from_secs(15), || {
        log_texts(&b, &other) == ["hello"]
    });
}
