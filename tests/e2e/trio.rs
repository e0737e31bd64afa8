//! Three devices linked the way a person links them, then one revoked from another device.
//!
//! Device A starts a mesh with chats; it pairs B and then C with `chatsync pair` and
//! `chatsync join`, a fresh single-use ticket each. B and C are never paired with each other
//! and are given no address of each other (loopback, no mDNS, no configured peers), so all
//! they know of each other comes through A: the test proves that the roster A replicates makes
//! them trust each other, that both receive A's history, and that a post by either joiner
//! reaches the other and A.
//!
//! Then C, which did not pair B, revokes it with `chatsync devices revoke` (any device may
//! revoke): the removal reaches A through the replicated roster, A and C list B as removed,
//! B's `chatsync status` tells its user, and from then on nothing crosses in either direction
//! (a post B makes is refused by the mesh, a post in the mesh never reaches B). Absence is
//! asserted only after A and C show they are in sync with each other and a further grace
//! period, so a late delivery would be caught.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{Device, Pairing, device_id};

/// Bound for every wait on the network (loopback syncs within a second or two).
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a message that must not arrive is given to arrive anyway, once the mesh is in sync.
const ABSENCE_GRACE: Duration = Duration::from_secs(3);

const FAMILY_HISTORY: [&str; 2] = ["dinner at 7", "bring dessert"];
const WORK_HISTORY: [&str; 1] = ["standup moved to 10"];

fn create_chat(dev: &Device, title: &str) -> String {
    dev.ok_json1(&["chat", "create", title, "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The texts of `chat` on `dev`, oldest first; none while the chat has not reached `dev`.
fn texts(dev: &Device, chat: &str) -> Vec<String> {
    let run = dev.run(&["--json", "log", chat, "-n", "1000"]);
    if run.code == 4 {
        return Vec::new();
    }
    assert_eq!(run.code, 0, "chatsync log failed: {}", run.stderr);
    run.json_lines()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

fn has_text(dev: &Device, chat: &str, text: &str) -> bool {
    texts(dev, chat).iter().any(|t| t == text)
}

/// `chatsync devices --json` on `dev`: every device in its roster, removed ones included.
fn roster(dev: &Device) -> Vec<Value> {
    dev.ok_json(&["devices", "--json"])
}

fn roster_entry(dev: &Device, id: &str) -> Option<Value> {
    roster(dev).into_iter().find(|d| d["id"] == id)
}

/// The ids of the devices `dev` lists as trusted members of the mesh.
fn members(dev: &Device) -> BTreeSet<String> {
    roster(dev)
        .iter()
        .filter(|d| d["trusted"] == true)
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

fn is_connected_to(dev: &Device, id: &str) -> bool {
    dev.ok_json(&["peers", "--json"])
        .iter()
        .any(|p| p["device"] == id && p["connected"] == true)
}

fn in_sync(dev: &Device) -> bool {
    dev.ok_json1(&["status", "--json"])["sync"]["state"] == "in_sync"
}

/// Polls `check` every 50 ms until it holds; fails the test after `timeout`, showing `devices`'
/// daemon logs.
fn eventually_blocking(what: &str, devices: &[&Device], mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    while !check() {
        if Instant::now() >= deadline {
            let logs: Vec<String> = devices.iter().map(|d| d.daemon_logs()).collect();
            panic!(
                "timed out after {SYNC_TIMEOUT:?} waiting for {what}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pairs `joiner` into `inviter`'s mesh under `name` with a fresh ticket, and checks that each
/// side names the other's device id and that `join` waited for every one of `chats`.
fn pair(inviter: &Device, joiner: &Device, name: &str, chats: usize) -> String {
    let invitation = Pairing::start(inviter, &[]);
    let ticket = invitation.ticket.clone();
    let join = joiner.run(&["--json", "join", &ticket, "--name", name]);
    assert_eq!(
        join.code,
        0,
        "chatsync join failed: {}\n{}",
        join.stderr,
        inviter.daemon_logs()
    );
    let lines = join.json_lines();
    assert_eq!(
        lines[0]["joined"]["device_id"],
        device_id(inviter).as_str(),
        "the joiner does not name the inviter: {lines:?}"
    );
    assert_eq!(
        lines.last().unwrap()["in_sync"]["chats"],
        chats,
        "join did not wait for every chat: {lines:?}"
    );
    let seen_by_inviter = invitation.joined();
    assert_eq!(
        seen_by_inviter["device_id"],
        device_id(joiner).as_str(),
        "the inviter does not name the joiner: {seen_by_inviter}"
    );
    assert_eq!(seen_by_inviter["name"], name);
    ticket
}

fn started() -> Device {
    let dev = Device::new();
    dev.start();
    dev
}

#[test]
fn two_joiners_sync_through_the_inviter_and_one_revokes_the_other() {
    let (a, b, c) = (started(), started(), started());
    let (a_id, b_id, c_id) = (device_id(&a), device_id(&b), device_id(&c));
    let all = [&a, &b, &c];

    // A's history, before anyone joins.
    let family = create_chat(&a, "family");
    for text in FAMILY_HISTORY {
        a.ok(&["post", &family, text]);
    }
    let work = create_chat(&a, "work");
    for text in WORK_HISTORY {
        a.ok(&["post", &work, text]);
    }

    // A pairs B, then C with a fresh ticket: B's ticket is spent.
    let used_ticket = pair(&a, &b, "laptop", 2);
    let reused = c.run(&["join", &used_ticket, "--name", "desktop"]);
    assert_eq!(
        reused.code, 8,
        "a spent ticket was accepted: {}",
        reused.stderr
    );
    assert!(reused.stderr.contains("already used"), "{}", reused.stderr);
    pair(&a, &c, "desktop", 2);

    // The replicated roster: every device lists all three, under the names given at join.
    let trio: BTreeSet<String> = [&a_id, &b_id, &c_id].into_iter().cloned().collect();
    eventually_blocking("every device to list all three", &all, || {
        all.iter().all(|d| members(d) == trio)
    });
    for dev in all {
        for (id, name) in [(&b_id, "laptop"), (&c_id, "desktop")] {
            let entry = roster_entry(dev, id).unwrap();
            assert_eq!(entry["name"], name, "{entry}");
            assert!(entry["removed_at"].is_null(), "{entry}");
        }
    }

    // Both joiners have A's history.
    for joiner in [&b, &c] {
        eventually_blocking("a joiner to have A's history", &all, || {
            texts(joiner, &family) == FAMILY_HISTORY && texts(joiner, &work) == WORK_HISTORY
        });
    }

    // Live sync between the joiners, both ways, and back to A.
    b.ok(&["post", &family, "laptop says hi"]);
    eventually_blocking("B's post to reach C and A", &all, || {
        has_text(&c, &family, "laptop says hi") && has_text(&a, &family, "laptop says hi")
    });
    c.ok(&["post", &family, "desktop says hi"]);
    eventually_blocking("C's post to reach B and A", &all, || {
        has_text(&b, &family, "desktop says hi") && has_text(&a, &family, "desktop says hi")
    });

    // C revokes B, which A paired.
    let removed = c.ok_json1(&["devices", "revoke", "laptop", "--json"]);
    assert_eq!(removed["id"], b_id.as_str(), "{removed}");
    assert_eq!(removed["trusted"], false, "{removed}");
    let removed_at = removed["removed_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("no removal time: {removed}"));

    // A learns it from C; A and C list B as removed, and only each other as members.
    let remaining: BTreeSet<String> = [&a_id, &c_id].into_iter().cloned().collect();
    eventually_blocking("A and C to list B as removed", &all, || {
        [&a, &c].iter().all(|d| members(d) == remaining)
    });
    for dev in [&a, &c] {
        let entry = roster_entry(dev, &b_id).expect("a removed device stays listed");
        assert_eq!(entry["trusted"], false, "{entry}");
        assert_eq!(entry["removed_at"], removed_at, "{entry}");
        let table = dev.ok(&["devices"]);
        let line = table.lines().find(|l| l.starts_with(&b_id)).unwrap();
        assert!(line.trim_end().ends_with("removed"), "{table}");
    }

    // B is told, for programs and for people.
    eventually_blocking("B to learn it was removed", &all, || {
        b.ok_json1(&["status", "--json"])["removed_from_mesh_at"].is_i64()
    });
    assert_eq!(
        b.ok_json1(&["status", "--json"])["removed_from_mesh_at"],
        removed_at
    );
    let human = b.ok(&["status"]);
    assert!(
        human.contains("This device was removed from the mesh by another device"),
        "{human}"
    );
    for dev in [&a, &c] {
        let status = dev.ok_json1(&["status", "--json"]);
        assert!(status.get("removed_from_mesh_at").is_none(), "{status}");
    }

    // From now on nothing crosses: B keeps writing locally, the mesh keeps writing without it.
    b.ok(&["post", &family, "written after removal"]);
    a.ok(&["post", &family, "sent after the removal"]);
    assert!(has_text(&b, &family, "written after removal"));
    eventually_blocking("A's post to reach C", &all, || {
        has_text(&c, &family, "sent after the removal")
    });
    eventually_blocking("A to disconnect B", &all, || {
        !is_connected_to(&a, &b_id) && !is_connected_to(&b, &a_id)
    });
    eventually_blocking("A and C to be in sync with each other", &all, || {
        is_connected_to(&a, &c_id)
            && in_sync(&a)
            && in_sync(&c)
            && texts(&a, &family) == texts(&c, &family)
    });
    std::thread::sleep(ABSENCE_GRACE);
    for (name, dev) in [("A", &a), ("C", &c)] {
        assert!(
            !has_text(dev, &family, "written after removal"),
            "{name} took a post B wrote after its removal"
        );
    }
    assert!(
        !has_text(&b, &family, "sent after the removal"),
        "B received a post made after its removal"
    );
    // B stayed cut off: it did not get back in (A's pairing window is still open from the two
    // joins, so only B's own standing keeps it from calling on A again).
    assert!(!is_connected_to(&b, &a_id), "B reconnected to A");
    assert!(
        a.ok_json(&["peers", "--json"])
            .iter()
            .all(|p| p["device"] != b_id.as_str()),
        "A lists B among its peers"
    );
    assert_eq!(texts(&a, &family), texts(&c, &family));
}
