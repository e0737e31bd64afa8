//! Three devices on a LAN of network namespaces, with no other network: they find each other
//! with mDNS alone, sync, converge after one of them is cut off and comes back, and a restarted
//! device catches up.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{netns::Lan, support::Device};

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connected_count(dev: &Device) -> usize {
    dev.ok_json(&["peers", "--json"])
        .iter()
        .filter(|p| p["connected"] == true)
        .count()
}

/// The ids of `chat`'s messages on `dev`, in display order; none while the chat has not reached
/// `dev` yet.
fn ids_in(dev: &Device, chat: &str) -> Vec<Value> {
    let run = dev.run(&["--json", "log", chat, "-n", "1000"]);
    if run.code == 4 {
        return Vec::new();
    }
    assert_eq!(run.code, 0, "chatsync log failed: {}", run.stderr);
    run.json_lines().iter().map(|m| m["id"].clone()).collect()
}

#[test]
fn three_devices_find_each_other_by_mdns_and_converge_through_a_cut() {
    let lan = match Lan::create(3) {
        Ok(lan) => lan,
        Err(why) => {
            eprintln!("skipping the LAN test: cannot build network namespaces here ({why})");
            return;
        }
    };
    let mut devs = [Device::new(), Device::new(), Device::new()];
    for (i, dev) in devs.iter_mut().enumerate() {
        dev.set_network(&format!("/ip4/{}/tcp/0", lan.addr(i)), true, &[]);
        dev.spawn_daemon_in(Some(lan.host(i)));
    }
    let ids: Vec<String> = devs
        .iter()
        .map(|d| {
            d.ok_json1(&["status", "--json"])["device_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for (i, dev) in devs.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                dev.ok(&["devices", "add", id]);
            }
        }
    }
    wait_for(
        "all three connected by mDNS",
        Duration::from_secs(30),
        || devs.iter().all(|d| connected_count(d) == 2),
    );

    let chat = devs[0].ok_json1(&["chat", "create", "lan", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    devs[0].ok(&["post", &chat, "hello lan"]);
    wait_for("the post everywhere", Duration::from_secs(20), || {
        devs.iter().all(|d| ids_in(d, &chat).len() == 1)
    });

    // Cut host 2 off; both sides keep posting.
    lan.cut(2);
    wait_for("the cut to be noticed", Duration::from_secs(20), || {
        connected_count(&devs[0]) == 1 && connected_count(&devs[2]) == 0
    });
    for i in 0..20 {
        devs[0].ok(&["post", &chat, &format!("from 0 during the cut {i}")]);
        devs[1].ok(&["post", &chat, &format!("from 1 during the cut {i}")]);
    }
    for i in 0..10 {
        devs[2].ok(&["post", &chat, &format!("from 2 while cut off {i}")]);
    }
    assert_eq!(ids_in(&devs[2], &chat).len(), 11, "the cut host got posts");

    lan.heal(2);
    wait_for("convergence after the cut", Duration::from_secs(60), || {
        let first = ids_in(&devs[0], &chat);
        first.len() == 51 && devs.iter().all(|d| ids_in(d, &chat) == first)
    });
    // Nothing duplicated.
    let all = ids_in(&devs[0], &chat);
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len());

    // Restart host 1 (it comes back on a new port): it finds the others again by mDNS and
    // catches up with what was posted while it was down.
    devs[1].ok(&["daemon", "stop"]);
    devs[1].forget_daemon();
    for i in 0..10 {
        devs[0].ok(&["post", &chat, &format!("while 1 was down {i}")]);
    }
    devs[1].spawn_daemon_in(Some(lan.host(1)));
    wait_for(
        "host 1 to catch up after its restart",
        Duration::from_secs(60),
        || {
            let first = ids_in(&devs[0], &chat);
            first.len() == 61 && ids_in(&devs[1], &chat) == first
        },
    );
}
