//! What the benchmarks share: temporary homes, and real `chatsyncd` processes on loopback.

#![allow(dead_code, clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chatsync::client::Client;
use chatsync_daemon::paths::{PathArgs, Paths};

pub fn bin(name: &str) -> PathBuf {
    match name {
        "chatsyncd" => PathBuf::from(env!("CARGO_BIN_EXE_chatsyncd")),
        _ => unreachable!(),
    }
}

pub fn home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("csb")
        .tempdir_in("/tmp")
        .unwrap()
}

pub fn paths(home: &Path) -> Paths {
    Paths::resolve(&PathArgs {
        home: Some(home.to_path_buf()),
        socket: None,
    })
    .unwrap()
}

pub struct Daemon {
    pub child: Child,
    pub client: Client,
}

impl Daemon {
    /// Starts chatsyncd and returns it with the time until its API first answered.
    pub async fn start(home: &Path) -> (Daemon, Duration) {
        Self::start_with(home, &[]).await
    }

    /// Starts chatsyncd with extra flags.
    pub async fn start_with(home: &Path, extra: &[String]) -> (Daemon, Duration) {
        let p = paths(home);
        let started = Instant::now();
        let child = Command::new(bin("chatsyncd"))
            .arg("--home")
            .arg(home)
            .arg("--log")
            .arg("warn")
            // Loopback only, no mDNS: the benchmark never touches the real network.
            .args(["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let client = Client::new(&p.socket).unwrap();
        loop {
            if client.status().await.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "daemon did not start"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let elapsed = started.elapsed();
        (Daemon { child, client }, elapsed)
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub async fn stop(mut self) {
        self.client.shutdown().await.unwrap();
        self.child.wait().unwrap();
    }
}

pub fn text(i: usize) -> String {
    format!("message number {i}: the quick brown fox jumps over the lazy dog {i}")
}
