//! `chatsync doctor` as a user runs it: with no daemon, on a healthy pair of devices, when the
//! other device goes away, and on a device removed from its mesh. Every problem comes with the
//! command that fixes it, and the exit code is 0 only when no check failed.

use std::time::Duration;

use chatsync_testkit::eventually_blocking;
use serde_json::Value;

use crate::support::{Device, Pairing, device_id};

const WAIT: Duration = Duration::from_secs(30);

/// The check named `name` in `doctor --json`'s lines.
fn check<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {lines:#?}"))
}

#[test]
fn doctor_says_how_to_start_a_daemon_that_is_not_running() {
    let dev = Device::new();
    let run = dev.run(&["doctor"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("FAIL  daemon: not running"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("fix: chatsync daemon start"),
        "{}",
        run.stdout
    );
}

#[test]
fn doctor_on_a_healthy_pair_then_one_gone_then_one_removed() {
    let a = Device::new();
    a.start();
    let b = Device::new();
    b.start();
    let pairing = Pairing::start(&a, &[]);
    let join = b.run(&["join", &pairing.ticket, "--name", "laptop"]);
    assert_eq!(join.code, 0, "{}", join.stderr);
    pairing.joined();
    let b_id = device_id(&b);
    let b_check = format!("device laptop ({}…{})", &b_id[..6], &b_id[b_id.len() - 4..]);

    // Healthy: every check passes, and the other device shows how it is connected.
    eventually_blocking("doctor sees the pair connected", WAIT, || {
        let run = a.run(&["doctor", "--json"]);
        run.code == 0 && {
            let lines = run.json_lines();
            let device = check(&lines, &b_check);
            device["status"] == "ok"
                && device["detail"]
                    .as_str()
                    .unwrap()
                    .contains("connected (lan")
        }
    });
    let lines = a.ok_json(&["doctor", "--json"]);
    for c in &lines {
        assert_eq!(c["status"], "ok", "{c}");
        assert!(c["fix"].is_null(), "{c}");
    }
    for name in ["daemon", "versions", "store", "network"] {
        check(&lines, name);
    }

    // The other device goes away: a warning that says what to do, and still exit 0.
    b.stop();
    eventually_blocking("doctor sees the device gone", WAIT, || {
        let run = a.run(&["doctor"]);
        run.code == 0
            && run
                .stdout
                .contains(&format!("warn  {b_check}: not connected"))
    });
    let text = a.ok(&["doctor"]);
    assert!(text.contains("fix: start chatsync on it"), "{text}");

    // Removed from the mesh: the removed device's doctor fails, and says how to come back.
    // (Removed while connected, so that it is told; a device removed while away is refused
    // without being told.)
    b.start();
    eventually_blocking("the pair is connected again", WAIT, || {
        a.run(&["doctor"])
            .stdout
            .contains(&format!("ok    {b_check}: connected"))
    });
    a.ok(&["devices", "remove", &b_id]);
    eventually_blocking("B learns it was removed", WAIT, || {
        b.run(&["doctor"]).code == 1
    });
    let run = b.run(&["doctor", "--json"]);
    let lines = run.json_lines();
    let mesh = check(&lines, "mesh");
    assert_eq!(mesh["status"], "fail", "{mesh}");
    assert!(
        mesh["fix"].as_str().unwrap().contains("chatsync join"),
        "{mesh}"
    );
    assert!(run.stderr.contains("1 check failed"), "{}", run.stderr);
}
