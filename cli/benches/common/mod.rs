//! What the benchmarks share: temporary homes, and real `chatsyncd` processes on loopback.

#![allow(dead_code, clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chatsync_api::client::Client;
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

    /// CPU time the daemon has used so far, by kind of thread (see [`CpuTime`]).
    pub fn cpu(&self) -> CpuTime {
        CpuTime::of_process(self.child.id())
    }

    pub async fn stop(mut self) {
        self.client.shutdown().await.unwrap();
        self.child.wait().unwrap();
    }
}

pub fn text(i: usize) -> String {
    format!("message number {i}: the quick brown fox jumps over the lazy dog {i}")
}

/// CPU time a process has used, in seconds, from `/proc` (in clock ticks of 10 ms): user and
/// kernel time of the whole process, and of its threads grouped by name (`sled-io-3` counts as
/// `sled-io`). Threads that have exited count in the totals only.
#[derive(Clone, Debug, Default)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
    pub threads: std::collections::BTreeMap<String, (f64, f64)>,
}

impl CpuTime {
    pub fn of_process(pid: u32) -> CpuTime {
        let mut cpu = CpuTime::default();
        if let Some((_, user, system)) = stat_times(&format!("/proc/{pid}/stat")) {
            (cpu.user, cpu.system) = (user, system);
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let Some((name, user, system)) =
                    stat_times(&task.path().join("stat").display().to_string())
                else {
                    continue;
                };
                let group = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
                let entry = cpu.threads.entry(group.to_string()).or_default();
                entry.0 += user;
                entry.1 += system;
            }
        }
        cpu
    }

    /// The time used since `earlier`.
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            threads: self
                .threads
                .iter()
                .map(|(name, (u, s))| {
                    let (eu, es) = earlier.threads.get(name).copied().unwrap_or_default();
                    (name.clone(), (u - eu, s - es))
                })
                .collect(),
        }
    }
}

/// Name, user and system seconds from a `/proc/.../stat` file.
fn stat_times(path: &str) -> Option<(String, f64, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The name is in parentheses and may contain spaces; the fields after it are numbers.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((name, ticks(11)? / 100.0, ticks(12)? / 100.0))
}
