//! What the benchmarks share beyond the test kit: temporary homes, real `chatsyncd` processes
//! on loopback (`chatsync_testkit::TestDaemon`), and what they cost in memory and CPU.

#![allow(dead_code, clippy::unwrap_used)]

pub mod sync;

use std::{path::Path, sync::Arc, time::Duration};

use chatsync_daemon::{
    identity::Identity,
    paths::Paths,
    store::{ChatRecord, OwnNewest, Store},
};
use chatsync_model::{ChatDoc, ChatId, Device, MessageId};
use chatsync_testkit::TestDaemon;
use tempfile::TempDir;

/// A temporary home, kept while any clone of it is.
pub type Home = Arc<TempDir>;

pub fn home() -> Home {
    chatsync_testkit::home::temp_home()
}

pub fn paths(home: &Path) -> Paths {
    chatsync_testkit::home::paths(home)
}

/// Starts the real chatsyncd on `home` with `flags`; returns it with the time until its API
/// first answered.
pub async fn start(home: &Home, flags: &[String]) -> (TestDaemon, Duration) {
    let bin = Path::new(env!("CARGO_BIN_EXE_chatsyncd"));
    TestDaemon::start_binary(bin, home.clone(), flags).await
}

/// The daemon's resident memory, in KiB.
pub fn rss_kib(daemon: &TestDaemon) -> u64 {
    status_kib(daemon.pid().expect("a chatsyncd process"), "VmRSS:")
}

/// A field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read the status of process {pid}: {e}"));
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time the daemon has used so far, by kind of thread (see [`CpuTime`]).
pub fn cpu(daemon: &TestDaemon) -> CpuTime {
    CpuTime::of_process(daemon.pid().expect("a chatsyncd process"))
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

/// Where the store of `chats` x `messages` is kept between runs (named for the layout
/// [`build_store`] writes: a new layout gets a new name).
pub fn store_cache(chats: usize, messages: usize) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("startup-store-{chats}x{messages}-v4"))
}

/// Writes `chats` chats of `messages` messages straight into a store, as the daemon would
/// find them after compaction. Cached between runs: building a million messages takes a while.
pub fn build_store(home: &Path, chats: usize, messages: usize) {
    let p = paths(home);
    std::fs::create_dir_all(&p.data_dir).unwrap();
    let identity = Identity::load_or_create(&p.identity_file()).unwrap();
    let dev = Device::new(identity.device_id.clone(), "bench").unwrap();
    let store = Store::open(&p.store_dir(), 16 << 20).unwrap();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    std::thread::scope(|scope| {
        for w in 0..workers {
            let store = store.clone();
            let dev = dev.clone();
            scope.spawn(move || {
                for c in (w..chats).step_by(workers) {
                    let id = ChatId::new(format!("{c:032x}")).unwrap();
                    let mut doc =
                        ChatDoc::create(id.clone(), &format!("chat {c}"), &dev, 0).unwrap();
                    for i in 0..messages {
                        let mid = MessageId::new(format!("{c:016x}{i:016x}")).unwrap();
                        doc.post(&dev, mid, &text(i), None, 1_700_000_000_000 + i as i64)
                            .unwrap();
                    }
                    let record = ChatRecord {
                        title: format!("chat {c}"),
                        created_at: 0,
                        created_by: dev.id.to_string(),
                        messages: messages as u64,
                        last_activity: 1_700_000_000_000 + c as i64,
                        heads: Vec::new(),
                        next_seq: 0,
                        own_newest: Some(OwnNewest::of(&mut doc, &dev.id)),
                        unchecked: false,
                    };
                    store.create_chat(&id, &record, &doc.save()).unwrap();
                }
            });
        }
    });
    store.flush().unwrap();
}
