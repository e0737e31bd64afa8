//! Devices apart: two LANs (two bridges in their own "switch" namespaces) and a relay host with
//! a leg in each and no forwarding, so the only way between the LANs is a circuit through the
//! relay daemon. A device on each LAN pairs with a ticket, receives a catch-up larger than the
//! relay lets one circuit carry, keeps syncing live, and survives the relay going away and
//! coming back; the relay stores no chat data. Hole punching cannot succeed here (nothing
//! routes between the LANs): the relayed connection must stay up after it fails.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    netns::ip,
    support::{Device, LineReader, device_id, eventually_blocking, message_ids, random_u64},
};

/// The relay's byte limit per circuit in this test: far below the catch-up.
const CIRCUIT_BYTES: u64 = 256 * 1024;
const RELAY_PORT: u16 = 4001;

/// Two LANs and a relay between them, in network namespaces; removed on drop.
struct Apart {
    namespaces: Vec<String>,
    subnet: u8,
}

impl Apart {
    fn create() -> Result<Apart, String> {
        let tag = format!("csa{}", std::process::id() % 100_000);
        let subnet = (std::process::id() % 200 + 20) as u8;
        let mut net = Apart {
            namespaces: Vec::new(),
            subnet,
        };
        for lan in 0..2 {
            let switch = format!("{tag}sw{lan}");
            net.add_ns(&switch)?;
            ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        }
        // Host 0 on LAN 0, host 1 on LAN 1, the relay on both.
        for (host, lans) in [("h0", &[0][..]), ("h1", &[1][..]), ("rl", &[0, 1][..])] {
            let ns = format!("{tag}{host}");
            net.add_ns(&ns)?;
            for &lan in lans {
                let switch = format!("{tag}sw{lan}");
                let dev = format!("eth{lan}");
                let port = format!("{host}l{lan}");
                ip(&[
                    "-n", &ns, "link", "add", &dev, "type", "veth", "peer", "name", &port, "netns",
                    &switch,
                ])?;
                ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
                ip(&["-n", &switch, "link", "set", &port, "up"])?;
                let addr = if host == "rl" {
                    net.relay_addr(lan)
                } else {
                    net.host_addr(lan)
                };
                ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &dev])?;
                ip(&["-n", &ns, "link", "set", &dev, "up", "multicast", "on"])?;
            }
        }
        // No forwarding on the relay host: the LANs meet only in the relay daemon.
        let forwarding = Command::new("ip")
            .args(["netns", "exec", &net.ns("rl"), "cat"])
            .arg("/proc/sys/net/ipv4/ip_forward")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&forwarding.stdout).trim() != "0" {
            return Err("the relay namespace forwards packets".into());
        }
        Ok(net)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    fn ns(&self, host: &str) -> String {
        format!("csa{}{host}", std::process::id() % 100_000)
    }

    /// The device's address on LAN `lan` (device `lan` lives there).
    fn host_addr(&self, lan: usize) -> String {
        format!("10.{}.{}.1", 214 + lan, self.subnet)
    }

    fn relay_addr(&self, lan: usize) -> String {
        format!("10.{}.{}.254", 214 + lan, self.subnet)
    }
}

impl Drop for Apart {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn write_config(dev: &Device, text: &str) {
    std::fs::write(dev.home().join("config.toml"), text).unwrap();
}

fn status(dev: &Device) -> Value {
    dev.ok_json1(&["status", "--json"])
}

fn reserved(dev: &Device) -> bool {
    status(dev)["reservations"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["state"] == "reserved"))
}

fn peer(dev: &Device, id: &str) -> Option<Value> {
    dev.ok_json(&["peers", "--json"])
        .into_iter()
        .find(|p| p["device"] == id && p["connected"] == true)
}

/// Text that does not compress much, so that the chat's size on the wire is what it seems.
fn noise(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes);
    while out.len() < bytes {
        out.push_str(&format!("{:016x}", random_u64()));
    }
    out.truncate(bytes);
    out
}

fn bytes_received(dev: &Device, from: &str) -> u64 {
    dev.ok_json(&["peers", "--json"])
        .into_iter()
        .find(|p| p["device"] == from)
        .and_then(|p| p["bytes_received"].as_u64())
        .unwrap_or(0)
}

#[test]
fn devices_on_two_lans_pair_and_sync_through_a_relay_that_keeps_nothing() {
    let net = match Apart::create() {
        Ok(net) => net,
        Err(why) => {
            eprintln!("skipping the relay test: cannot build network namespaces here ({why})");
            return;
        }
    };
    let mut relay = Device::new();
    write_config(
        &relay,
        &format!(
            "[network]\nlisten = [\"/ip4/{a}/tcp/{RELAY_PORT}\", \"/ip4/{b}/tcp/{RELAY_PORT}\"]\n\
             mdns = false\n\
             [relay]\nenabled = true\nexternal_addrs = [\"/ip4/{a}/tcp/{RELAY_PORT}\", \"/ip4/{b}/tcp/{RELAY_PORT}\"]\n\
             max_circuit_bytes = {CIRCUIT_BYTES}\ncircuits_per_minute = 600\n",
            a = net.relay_addr(0),
            b = net.relay_addr(1),
        ),
    );
    relay.spawn_daemon_in(Some(&net.ns("rl")));
    let relay_id = device_id(&relay);
    let mut devs = [Device::new(), Device::new()];
    for (lan, dev) in devs.iter_mut().enumerate() {
        write_config(
            dev,
            &format!(
                "[network]\nlisten = [\"/ip4/{}/tcp/0\"]\nmdns = true\n\
                 relays = [\"/ip4/{}/tcp/{RELAY_PORT}/p2p/{relay_id}\"]\n",
                net.host_addr(lan),
                net.relay_addr(lan),
            ),
        );
        dev.spawn_daemon_in(Some(&net.ns(if lan == 0 { "h0" } else { "h1" })));
    }
    let ids: Vec<String> = devs.iter().map(device_id).collect();
    eventually_blocking("both reservations", Duration::from_secs(30), || {
        devs.iter().all(reserved)
    });
    let relay_status = status(&relay);
    assert_eq!(relay_status["relay"]["reservations"], 2, "{relay_status}");

    // Device 0 has a chat far larger than one circuit may carry.
    let chat = devs[0].ok_json1(&["chat", "create", "apart", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..30 {
        devs[0].ok(&["post", &chat, &noise(40_000)]);
    }
    devs[0].ok(&[
        "post",
        &chat,
        "apart-marker: the relay must never store this",
    ]);

    // Pairing across the LANs: the ticket carries the relayed addresses.
    let mut pairing = devs[0]
        .command(&["--json", "pair"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = LineReader::new(pairing.stdout.take().unwrap());
    let first: Value =
        serde_json::from_str(&lines.next(Duration::from_secs(10)).expect("no ticket")).unwrap();
    let ticket = first["ticket"].as_str().unwrap().to_string();
    let parsed = chatsync_daemon::pairing::ticket::Ticket::from_text(&ticket).unwrap();
    assert!(
        parsed
            .addresses
            .iter()
            .any(|a| a.to_string().contains("p2p-circuit")),
        "the ticket has no relayed address: {:?}",
        parsed.addresses
    );
    devs[1].ok(&["join", &ticket]);
    let _ = pairing.wait();

    // The catch-up arrives in full, over circuits the relay keeps cutting.
    let began = Instant::now();
    eventually_blocking(
        "the catch-up through the relay",
        Duration::from_secs(180),
        || message_ids(&devs[1], &chat).len() == 31,
    );
    eprintln!("catch-up of 31 messages took {:?}", began.elapsed());
    assert!(
        bytes_received(&devs[1], &ids[0]) > 2 * CIRCUIT_BYTES,
        "the catch-up was not larger than a circuit's limit"
    );
    let link = peer(&devs[1], &ids[0]).expect("device 0 is not connected to device 1");
    assert_eq!(link["path"], "relayed", "{link}");
    assert_eq!(link["relay"], relay_id.as_str(), "{link}");
    let relay_status = status(&relay);
    assert!(
        relay_status["relay"]["circuits_accepted"].as_u64().unwrap() > 1,
        "one circuit carried it all: the limit did not bite ({relay_status})"
    );

    // Live, both ways.
    for round in 0..5 {
        for (from, to) in [(0, 1), (1, 0)] {
            let text = format!("live {round} from {from}");
            devs[from].ok(&["post", &chat, &text]);
            eventually_blocking("a live post", Duration::from_secs(30), || {
                message_ids(&devs[to], &chat).len() == message_ids(&devs[from], &chat).len()
            });
        }
    }
    // Hole punching was tried and failed (nothing routes between the LANs), and the relayed
    // connection stayed up and kept working.
    let link = peer(&devs[0], &ids[1]).expect("the devices were disconnected");
    assert_eq!(link["path"], "relayed", "{link}");
    assert_eq!(link["hole_punched"], false, "{link}");
    let failures = |dev: &Device, other: &str| {
        dev.ok_json(&["peers", "--json"])
            .into_iter()
            .find(|p| p["device"] == other)
            .and_then(|p| p["hole_punch_failures"].as_u64())
            .unwrap_or(0)
    };
    eventually_blocking("a hole punching attempt", Duration::from_secs(30), || {
        failures(&devs[0], &ids[1]) + failures(&devs[1], &ids[0]) > 0
    });
    devs[1].ok(&["post", &chat, "after hole punching failed"]);
    eventually_blocking(
        "a post after hole punching failed",
        Duration::from_secs(30),
        || message_ids(&devs[0], &chat).len() == message_ids(&devs[1], &chat).len(),
    );

    // The relay holds no chat data.
    let relay_status = status(&relay);
    assert_eq!(relay_status["chats"], 0, "{relay_status}");
    assert!(
        !dir_contains(&relay.home().join("data"), b"apart-marker"),
        "the relay's data dir holds chat text"
    );

    // The relay goes away; both sides keep posting; it comes back, and they catch up.
    relay.kill_daemon();
    eventually_blocking("the devices to notice", Duration::from_secs(30), || {
        peer(&devs[0], &ids[1]).is_none()
    });
    for i in 0..8 {
        devs[0].ok(&[
            "post",
            &chat,
            &format!("while the relay was down {i} {}", noise(30_000)),
        ]);
    }
    devs[1].ok(&["post", &chat, "from 1 while the relay was down"]);
    relay.spawn_daemon_in(Some(&net.ns("rl")));
    eventually_blocking(
        "convergence after the relay came back",
        Duration::from_secs(180),
        || {
            let first = message_ids(&devs[0], &chat);
            first.len() == 31 + 10 + 1 + 9 && message_ids(&devs[1], &chat) == first
        },
    );
    assert_eq!(status(&relay)["chats"], 0);
    assert!(!dir_contains(&relay.home().join("data"), b"apart-marker"));
}

/// Whether any file under `dir` contains `needle`.
fn dir_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}
