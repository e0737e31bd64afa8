//! `chatsync pair` and `chatsync join`: a new device joins with a one-time ticket, over
//! loopback only, and receives every chat; used, expired, altered and garbage tickets are
//! refused; a device that is not paired gets no chat data even while an invitation is open.

use std::{process::Stdio, time::Duration};

use chatsync_daemon::pairing::ticket::Ticket;
use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};
use serde_json::Value;

use crate::support::{Device, LineReader, Pairing, device_id, eventually_blocking};

fn roster_ids(dev: &Device) -> Vec<String> {
    let mut ids: Vec<String> = dev
        .ok_json(&["devices", "--json"])
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn started() -> Device {
    let d = Device::new();
    d.start();
    d
}

#[test]
fn a_new_device_joins_with_a_ticket_and_receives_every_chat() {
    let a = started();
    let b = started();
    let (a_id, b_id) = (device_id(&a), device_id(&b));
    let chat = a.ok_json1(&["chat", "create", "family", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.ok(&["post", &chat, "dinner at 7"]);
    a.ok(&["chat", "create", "work"]);

    let mut pairing = Pairing::start(&a, &[]);
    assert!(pairing.ticket.starts_with("cspair1_"), "{}", pairing.ticket);
    let join = b.run(&["--json", "join", &pairing.ticket, "--name", "laptop"]);
    assert_eq!(join.code, 0, "{}\n{}", join.stderr, b.daemon_logs());
    let lines = join.json_lines();
    assert_eq!(lines[0]["joined"]["device_id"], a_id.as_str(), "{lines:?}");
    assert_eq!(lines.last().unwrap()["in_sync"]["chats"], 2, "{lines:?}");

    // The inviter reports the join and exits.
    let (code, stderr) = pairing.wait(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    let joined: Value =
        serde_json::from_str(&pairing.lines.next(Duration::from_secs(1)).unwrap()).unwrap();
    assert_eq!(joined["joined"]["device_id"], b_id.as_str());
    assert_eq!(joined["joined"]["name"], "laptop");

    // Both list each other; the chat and its message arrived.
    let both = {
        let mut v = vec![a_id.clone(), b_id.clone()];
        v.sort();
        v
    };
    assert_eq!(roster_ids(&a), both);
    assert_eq!(roster_ids(&b), both);
    let on_a = a.ok_json(&["devices", "--json"]);
    let laptop = on_a.iter().find(|d| d["id"] == b_id.as_str()).unwrap();
    assert_eq!(laptop["name"], "laptop");
    assert_eq!(laptop["trusted"], true);
    let log = b.ok_json(&["log", &chat, "--json"]);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["text"], "dinner at 7");

    // The joiner goes by the name it joined with (it configured none), and signs posts with it.
    assert_eq!(b.ok_json1(&["status", "--json"])["name"], "laptop");

    // From now on they sync live.
    b.ok(&["post", &chat, "see you"]);
    eventually_blocking("b's post to reach a", Duration::from_secs(15), || {
        a.ok_json(&["log", &chat, "--json"]).len() == 2
    });
    let on_a = a.ok_json(&["log", &chat, "--json"]);
    assert_eq!(on_a[1]["author_name"], "laptop", "{on_a:?}");

    // The ticket worked once.
    let again = Device::new();
    again.start();
    let reused = again.run(&["join", &pairing.ticket]);
    assert_eq!(reused.code, 8, "{}", reused.stderr);
    assert!(reused.stderr.contains("already used"), "{}", reused.stderr);
    assert_eq!(roster_ids(&a), both);
    assert_eq!(roster_ids(&again).len(), 1);

    // The name outlives a restart.
    b.stop();
    b.start();
    assert_eq!(b.ok_json1(&["status", "--json"])["name"], "laptop");
}

#[test]
fn the_human_form_shows_the_ticket_and_the_join() {
    let a = started();
    let b = started();
    let mut child = a
        .command(&["pair", "--expires", "5m"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = LineReader::new(child.stdout.take().unwrap());
    // Not a terminal: no QR code, the ticket text first.
    let ticket = lines.next(Duration::from_secs(10)).unwrap();
    assert!(ticket.starts_with("cspair1_"), "{ticket}");
    let join = b.run(&["join", &ticket]);
    assert_eq!(join.code, 0, "{}", join.stderr);
    assert!(
        join.stdout.starts_with("joined the mesh of "),
        "{}",
        join.stdout
    );
    assert!(join.stdout.contains(&device_id(&a)), "{}", join.stdout);
    let mut rest = Vec::new();
    while let Some(l) = lines.next(Duration::from_secs(10)) {
        rest.push(l);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let last = rest.last().unwrap();
    assert!(
        last.ends_with(&format!("({}) joined", device_id(&b))),
        "{rest:?}"
    );
}

#[test]
fn expired_altered_and_garbage_tickets_are_refused_and_add_nobody() {
    let a = started();
    let b = started();
    let (a_id, b_id) = (device_id(&a), device_id(&b));

    // Expired: the inviter's `pair` gives up, and the joiner refuses it without dialling.
    let mut short = Pairing::start(&a, &["--expires", "1s"]);
    let ticket = short.ticket.clone();
    let (code, stderr) = short.wait(Duration::from_secs(10));
    assert_eq!(code, 10, "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    let expired = b.run(&["join", &ticket]);
    assert_eq!(expired.code, 8, "{}", expired.stderr);
    assert!(expired.stderr.contains("expired"), "{}", expired.stderr);

    // Altered: a well-formed ticket whose secret the inviter never issued.
    let open = Pairing::start(&a, &[]);
    let mut forged = Ticket::from_text(&open.ticket).unwrap();
    forged.secret[0] ^= 0xff;
    let refused = b.run(&["join", &forged.to_text()]);
    assert_eq!(refused.code, 8, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("does not know this ticket"),
        "{}",
        refused.stderr
    );
    // Named after another device: the inviter cannot be reached as that device.
    let mut elsewhere = Ticket::from_text(&open.ticket).unwrap();
    elsewhere.inviter = libp2p_peer();
    let unreachable = b.run(&["join", &elsewhere.to_text()]);
    assert_eq!(unreachable.code, 9, "{}", unreachable.stderr);

    // Garbage of every kind, with a message that says what is wrong.
    let mut damaged = open.ticket.clone();
    let last = damaged.pop().unwrap();
    damaged.push(if last == 'a' { 'b' } else { 'a' });
    for (text, says) in [
        ("hello", "not a chatsync pairing ticket"),
        (a_id.as_str(), "not a chatsync pairing ticket"),
        ("cspair7_aaaa", "newer version"),
        (damaged.as_str(), "damaged"),
        (&open.ticket[..open.ticket.len() - 10], "damaged"),
    ] {
        let run = b.run(&["join", text]);
        assert_eq!(run.code, 8, "{text}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{text}: {}", run.stderr);
    }

    // Nothing was added on either side, and the real ticket still works.
    assert_eq!(roster_ids(&a), [a_id]);
    assert_eq!(roster_ids(&b), [b_id]);
    let ok = b.run(&["join", &open.ticket]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
}

#[test]
fn ctrl_c_cancels_the_ticket() {
    let a = started();
    let b = started();
    let mut pairing = Pairing::start(&a, &[]);
    let pid = Pid::from_raw(i32::try_from(pairing.child.id()).unwrap());
    signal::kill(pid, Signal::SIGINT).unwrap();
    let ticket = pairing.ticket.clone();
    let (code, stderr) = pairing.wait(Duration::from_secs(10));
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    let run = b.run(&["join", &ticket]);
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert_eq!(roster_ids(&a).len(), 1);
}

#[test]
fn a_device_that_is_not_paired_gets_no_chat_data_while_an_invitation_is_open() {
    let a = started();
    let a_id = device_id(&a);
    let chat = a.ok_json1(&["chat", "create", "secret plans", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.ok(&["post", &chat, "do not leak"]);
    let status = a.ok_json1(&["status", "--json"]);
    let a_addr = format!("{}/p2p/{a_id}", status["listen_addrs"][0].as_str().unwrap());

    // An invitation is open on a, so a admits devices that come to pair.
    let _open = Pairing::start(&a, &["--expires", "5m"]);
    // c trusts a and dials it, but never joins: it tries to sync right away.
    let c = Device::new();
    c.set_peers(&[a_addr]);
    c.start();
    let c_id = device_id(&c);
    c.ok(&["devices", "add", &a_id]);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        c.ok_json(&["chats", "--json"]).is_empty(),
        "a device outside the roster received chats"
    );
    let peers = a.ok_json(&["peers", "--json"]);
    assert!(
        peers.iter().all(|p| p["device"] != c_id.as_str()),
        "{peers:?}"
    );
    assert_eq!(roster_ids(&a), [a_id]);
    let logs = c.daemon_logs();
    assert!(!logs.contains("do not leak"), "{logs}");
}

fn libp2p_peer() -> libp2p::PeerId {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
}

#[test]
fn paired_devices_find_each_other_again_after_both_restart() {
    // No mDNS, no configured peers, ports chosen by the system: only what the devices
    // remember brings them back together.
    let a = started();
    let b = started();
    let chat = a.ok_json1(&["chat", "create", "family", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut pairing = Pairing::start(&a, &[]);
    let join = b.run(&["join", &pairing.ticket]);
    assert_eq!(join.code, 0, "{}", join.stderr);
    let (code, stderr) = pairing.wait(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");

    for restarted in [&a, &b] {
        restarted.stop();
    }
    for restarted in [&a, &b] {
        restarted.start();
    }
    a.ok(&["post", &chat, "still here"]);
    eventually_blocking(
        "a's post to reach b after both restarted",
        Duration::from_secs(20),
        || {
            b.ok_json(&["log", &chat, "--json"])
                .iter()
                .any(|m| m["text"] == "still here")
        },
    );
    b.ok(&["post", &chat, "me too"]);
    eventually_blocking("b's post to reach a", Duration::from_secs(20), || {
        a.ok_json(&["log", &chat, "--json"])
            .iter()
            .any(|m| m["text"] == "me too")
    });
}
