//! `chatsync devices`: the roster of devices that may sync, kept across restarts.

use crate::support::{Device, device_id};

#[test]
fn devices_are_added_listed_removed_for_good_and_kept() {
    let a = Device::new();
    let b = Device::new();
    a.start();
    b.start();
    let a_id = device_id(&a);
    let b_id = device_id(&b);

    // A new device's roster holds only itself.
    let listed = a.ok_json(&["devices", "--json"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], a_id.as_str());
    assert_eq!(listed[0]["this_device"], true);
    assert_eq!(listed[0]["trusted"], true);

    let added = a.ok_json1(&["devices", "add", &b_id, "--name", "desktop", "--json"]);
    assert_eq!(added["id"], b_id.as_str());
    assert_eq!(added["name"], "desktop");
    assert_eq!(added["added_by"], a_id.as_str());
    assert_eq!(added["trusted"], true);
    let table = a.ok(&["devices"]);
    assert!(
        table.contains("desktop") && table.contains("trusted"),
        "{table}"
    );

    // Not a device id: refused with a hint.
    let bad = a.run(&["devices", "add", "not-a-device"]);
    assert_eq!(bad.code, 6, "{}", bad.stderr);
    assert!(bad.stderr.contains("not a device id"), "{}", bad.stderr);

    // Removed by name; then never trusted again, also after a restart.
    let removed = a.ok_json1(&["devices", "remove", "desktop", "--json"]);
    assert_eq!(removed["trusted"], false);
    assert!(removed["removed_at"].is_i64());
    let again = a.run(&["devices", "add", &b_id]);
    assert_eq!(again.code, 6, "{}", again.stderr);
    assert!(
        again.stderr.contains("cannot be added again"),
        "{}",
        again.stderr
    );
    let itself = a.run(&["devices", "remove", &a_id]);
    assert_eq!(itself.code, 6, "{}", itself.stderr);
    let unknown = a.run(&["devices", "remove", "nobody"]);
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);

    a.stop();
    a.start();
    let listed = a.ok_json(&["devices", "--json"]);
    assert_eq!(listed.len(), 2);
    let b_entry = listed.iter().find(|d| d["id"] == b_id.as_str()).unwrap();
    assert_eq!(b_entry["trusted"], false);
    assert_eq!(device_id(&a), a_id);
}

#[test]
fn this_device_keeps_its_configured_name_in_the_roster() {
    let mut a = Device::new();
    a.spawn_daemon();
    let me = a.ok_json(&["devices", "--json"]);
    // `spawn_daemon` names the device "e2e-device".
    assert_eq!(me[0]["name"], "e2e-device");
    a.ok(&["daemon", "stop"]);
    a.forget_daemon();
    a.start();
    // Started by `daemon start` without --name: the host name.
    let host = a.ok_json1(&["status", "--json"])["name"].clone();
    let me = a.ok_json(&["devices", "--json"]);
    assert_eq!(me[0]["name"], host);
}
