//! Three devices on a LAN of network namespaces, with no other network: they find each other
//! with mDNS alone, sync, converge after one of them is cut off and comes back, and a restarted
//! device catches up.

use std::time::Duration;

use crate::{
    netns::Lan,
    support::{Device, eventually_blocking, message_ids},
};

fn connected_count(dev: &Device) -> usize {
    dev.ok_json(&["peers", "--json"])
        .iter()
        .filter(|p| p["connected"] == true)
        .count()
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
    eventually_blocking(
        "all three connected by mDNS",
        Duration::from_secs(30),
        || devs.iter().all(|d| connected_count(d) == 2),
    );

    let chat = devs[0].ok_json1(&["chat", "create", "lan", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    devs[0].ok(&["post", &chat, "hello lan"]);
    eventually_blocking("the post everywhere", Duration::from_secs(20), || {
        devs.iter().all(|d| message_ids(d, &chat).len() == 1)
    });

    // Cut host 2 off; both sides keep posting.
    // Pings go every 2 s and time out after 5 s: a dead link shows as disconnected within
    // about 7 s (not once the close of a dead connection has waited out its own timeout).
    let cut_at = std::time::Instant::now();
    lan.cut(2);
    eventually_blocking("the cut to be noticed", Duration::from_secs(12), || {
        connected_count(&devs[0]) == 1 && connected_count(&devs[2]) == 0
    });
    eprintln!("the cut was noticed after {:?}", cut_at.elapsed());
    for i in 0..20 {
        devs[0].ok(&["post", &chat, &format!("from 0 during the cut {i}")]);
        devs[1].ok(&["post", &chat, &format!("from 1 during the cut {i}")]);
    }
    for i in 0..10 {
        devs[2].ok(&["post", &chat, &format!("from 2 while cut off {i}")]);
    }
    assert_eq!(
        message_ids(&devs[2], &chat).len(),
        11,
        "the cut host got posts"
    );

    lan.heal(2);
    eventually_blocking("convergence after the cut", Duration::from_secs(60), || {
        let first = message_ids(&devs[0], &chat);
        first.len() == 51 && devs.iter().all(|d| message_ids(d, &chat) == first)
    });
    // Nothing duplicated.
    let all = message_ids(&devs[0], &chat);
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
    eventually_blocking(
        "host 1 to catch up after its restart",
        Duration::from_secs(60),
        || {
            let first = message_ids(&devs[0], &chat);
            first.len() == 61 && message_ids(&devs[1], &chat) == first
        },
    );
}
