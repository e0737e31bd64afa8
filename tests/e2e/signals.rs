//! Graceful shutdown on SIGTERM and SIGINT: the daemon exits 0, removes its socket, and keeps
//! what it acknowledged; an open `log --follow` does not hold shutdown up.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

use crate::support::Device;

fn stops_gracefully_on(signal: Signal) {
    let mut dev = Device::new();
    let pid = dev.spawn_daemon();
    dev.ok(&["chat", "create", "family"]);
    let id = dev
        .ok(&["post", "family", "before the signal"])
        .trim()
        .to_string();
    // A follower with an open event stream must not keep the daemon alive.
    let mut follower = dev
        .command(&["log", "family", "--follow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    nix::sys::signal::kill(Pid::from_raw(pid as i32), signal).unwrap();
    let child = dev.child().expect("daemon child");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "chatsyncd ignored {signal}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        status.success(),
        "chatsyncd exited with {status} on {signal}"
    );
    assert!(!dev.socket().exists(), "the socket was left behind");
    assert!(
        dev.daemon_logs().contains("stopped"),
        "no clean stop in the log:\n{}",
        dev.daemon_logs()
    );
    let follower_status = follower.wait().unwrap();
    assert_eq!(
        follower_status.code(),
        Some(3),
        "follower: {follower_status}"
    );

    // Restarted, it has everything it acknowledged.
    dev.forget_daemon();
    dev.spawn_daemon();
    let log = dev.ok_json(&["log", "family"]);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["id"], id.as_str());
}

#[test]
fn sigterm_stops_the_daemon_gracefully() {
    stops_gracefully_on(Signal::SIGTERM);
}

#[test]
fn sigint_stops_the_daemon_gracefully() {
    stops_gracefully_on(Signal::SIGINT);
}
