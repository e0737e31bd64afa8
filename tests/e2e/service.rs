//! The real daemon under a service manager's protocol (systemd's `Type=notify`), played by the
//! test: a datagram socket in `NOTIFY_SOCKET` hears `READY=1` once the daemon answers on its
//! socket, `WATCHDOG=1` at half the watchdog period asked for in `WATCHDOG_USEC`, and
//! `STOPPING=1` when it is told to stop.

use std::{os::unix::net::UnixDatagram, path::Path, time::Duration};

use chatsync_testkit::binary::Chatsyncd;

use crate::support::{CHATSYNCD, Device, status_pid};

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("the daemon told the service manager nothing in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_service_manager_hears_ready_then_the_watchdog_then_stopping() {
    let dev = Device::new();
    let path = dev.home().join("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Chatsyncd::new(Path::new(CHATSYNCD), dev.home())
        .args(["--log", "info"])
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .log_to(&dev.home().join("chatsyncd-notify.log"))
        .spawn();

    let first = next(&manager);
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert!(
        status_pid(&dev.socket()).is_some(),
        "ready was told before the socket answered"
    );
    let mut watchdogs = 0;
    while watchdogs < 3 {
        let said = next(&manager);
        assert!(!said.contains("STOPPING"), "{said:?}");
        if said.lines().any(|l| l == "WATCHDOG=1") {
            watchdogs += 1;
        }
    }

    dev.stop();
    loop {
        if next(&manager).lines().any(|l| l == "STOPPING=1") {
            break;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
