//! Chaos: devices converge after any fault.
//!
//! Three daemons, each in its own network namespace on one bridge LAN (mDNS, `devices add`),
//! share one chat and post to it concurrently all the time, while a seeded random schedule of
//! faults plays out for 20-26 s per round: a host partitioned from the others (its port on the
//! switch moved to a second bridge, or taken down), a pair of hosts cut from each other with
//! blackhole routes, a link flapping, a daemon killed with SIGKILL and restarted a few seconds
//! later (same home, same namespace). Faults overlap at times. Then everything heals, posting
//! stops, and within 30 s of the heal every acknowledged post (its `chatsync post` exited 0 and
//! printed an id) must be on every device, no message twice, the same messages in the same
//! order everywhere, and no device may have refused, blamed or suspended another.
//!
//! Every round prints its seed; `CHATSYNC_CHAOS_SEED=<seed> CHATSYNC_CHAOS_ROUNDS=1` replays
//! that round's schedule (the timing of the daemons themselves is not replayable, so a replay
//! is a strong hint, not a guarantee). `CHATSYNC_CHAOS_ROUNDS` runs more rounds (default 2).
//!
//! Only namespaces this test creates are touched, and only addresses inside them (a private
//! /24 that exists nowhere else); they are removed on drop, also when the test fails.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    netns::ip,
    support::{CHATSYNC, Device, SCRUBBED_ENV, device_id, eventually_blocking, random_u64},
};

const HOSTS: usize = 3;
const DEFAULT_ROUNDS: usize = 2;
/// How long after the heal every device must hold the same messages.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
/// Longest a single `chatsync post` may take before it counts as failed (and is killed).
const POST_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Seeds and randomness

/// The schedule's randomness: seeded, so that a round's faults replay from its seed.
struct Rng(rand::rngs::StdRng);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    fn next(&mut self) -> u64 {
        rand::RngExt::random(&mut self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        rand::RngExt::random_range(&mut self.0, 0..n)
    }

    /// A duration between `lo` and `hi` milliseconds, both included.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.below(items.len() as u64) as usize])
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The LAN

/// How a host is cut off the LAN.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Isolation {
    /// Its port on the switch is moved to a second bridge, where it is alone.
    OtherBridge,
    /// Its port on the switch is taken down.
    PortDown,
}

/// Which end of a host's link flaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum End {
    /// `eth0` inside the host's namespace.
    Host,
    /// Its port on the switch.
    Switch,
}

/// A switch namespace with two bridges (`br0`, the LAN, and `br1`, where partitioned hosts
/// go), and one namespace per host with a veth into `br0`. Removed on drop.
struct ChaosNet {
    tag: String,
    subnet: u8,
    namespaces: Vec<String>,
    isolated: [Option<Isolation>; HOSTS],
    blackholed: HashSet<(usize, usize)>,
    down: HashSet<(usize, End)>,
}

impl ChaosNet {
    fn create() -> Result<ChaosNet, String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("not root".into());
        }
        // Names and a /24 of their own (lan.rs uses 10.213, apart.rs 10.214-215), per process.
        let tag = format!("csc{}", std::process::id() % 100_000);
        let subnet = (std::process::id() % 200 + 20) as u8;
        let mut net = ChaosNet {
            tag,
            subnet,
            namespaces: Vec::new(),
            isolated: [None; HOSTS],
            blackholed: HashSet::new(),
            down: HashSet::new(),
        };
        let switch = net.switch();
        net.add_ns(&switch)?;
        for bridge in ["br0", "br1"] {
            ip(&["-n", &switch, "link", "add", bridge, "type", "bridge"])?;
            ip(&["-n", &switch, "link", "set", bridge, "up"])?;
        }
        for i in 0..HOSTS {
            let host = net.host(i);
            net.add_ns(&host)?;
            let port = Self::port(i);
            ip(&[
                "-n", &host, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
            let addr = format!("{}/24", net.addr(i));
            ip(&["-n", &host, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up", "multicast", "on"])?;
            ip(&["-n", &host, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(net)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    fn switch(&self) -> String {
        format!("{}sw", self.tag)
    }

    fn host(&self, i: usize) -> String {
        format!("{}h{i}", self.tag)
    }

    fn port(i: usize) -> String {
        format!("p{i}")
    }

    /// Host `i`'s address (inside its namespace only).
    fn addr(&self, i: usize) -> String {
        format!("10.216.{}.{}", self.subnet, i + 1)
    }

    fn run(&self, args: &[&str]) {
        if let Err(e) = ip(args) {
            panic!("{e}");
        }
    }

    fn isolate(&mut self, i: usize, how: Isolation) {
        let (switch, port) = (self.switch(), Self::port(i));
        match how {
            Isolation::OtherBridge => {
                self.run(&["-n", &switch, "link", "set", &port, "master", "br1"]);
            }
            Isolation::PortDown => self.run(&["-n", &switch, "link", "set", &port, "down"]),
        }
        self.isolated[i] = Some(how);
    }

    fn rejoin(&mut self, i: usize) {
        let (switch, port) = (self.switch(), Self::port(i));
        match self.isolated[i].take() {
            Some(Isolation::OtherBridge) => {
                self.run(&["-n", &switch, "link", "set", &port, "master", "br0"]);
            }
            Some(Isolation::PortDown) => self.run(&["-n", &switch, "link", "set", &port, "up"]),
            None => {}
        }
    }

    /// Hosts `a` and `b` can no longer reach each other (blackhole routes on both sides).
    fn blackhole(&mut self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let dest = format!("{}/32", self.addr(to));
            self.run(&["-n", &self.host(from), "route", "add", "blackhole", &dest]);
        }
        self.blackholed.insert((a, b));
    }

    fn unblackhole(&mut self, a: usize, b: usize) {
        if self.blackholed.remove(&(a, b)) {
            for (from, to) in [(a, b), (b, a)] {
                let dest = format!("{}/32", self.addr(to));
                self.run(&["-n", &self.host(from), "route", "del", "blackhole", &dest]);
            }
        }
    }

    fn link_down(&mut self, i: usize, end: End) {
        match end {
            End::Host => self.run(&["-n", &self.host(i), "link", "set", "eth0", "down"]),
            End::Switch => {
                self.run(&["-n", &self.switch(), "link", "set", &Self::port(i), "down"]);
            }
        }
        self.down.insert((i, end));
    }

    fn link_up(&mut self, i: usize, end: End) {
        if !self.down.remove(&(i, end)) {
            return;
        }
        match end {
            End::Host => self.host_link_up(i),
            End::Switch => {
                self.run(&["-n", &self.switch(), "link", "set", &Self::port(i), "up"]);
            }
        }
    }

    /// Undoes every fault still in place.
    fn heal_all(&mut self) {
        for i in 0..HOSTS {
            self.rejoin(i);
            for end in [End::Host, End::Switch] {
                self.link_up(i, end);
            }
        }
        for (a, b) in self.blackholed.clone() {
            self.unblackhole(a, b);
        }
        // Belt and braces: the LAN as it was built.
        let switch = self.switch();
        for i in 0..HOSTS {
            let port = Self::port(i);
            self.run(&["-n", &switch, "link", "set", &port, "master", "br0"]);
            self.run(&["-n", &switch, "link", "set", &port, "up"]);
            self.host_link_up(i);
        }
    }

    /// Brings host `i`'s link up. Taking a link down drops the routes through it; the
    /// connected route comes back by itself, the multicast route for mDNS does not.
    fn host_link_up(&self, i: usize) {
        let host = self.host(i);
        self.run(&["-n", &host, "link", "set", "eth0", "up"]);
        self.run(&[
            "-n",
            &host,
            "route",
            "replace",
            "224.0.0.0/4",
            "dev",
            "eth0",
        ]);
    }
}

impl Drop for ChaosNet {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The schedule

#[derive(Clone, Copy, Debug)]
enum Action {
    Isolate(usize, Isolation),
    Rejoin(usize),
    Blackhole(usize, usize),
    Unblackhole(usize, usize),
    LinkDown(usize, End),
    LinkUp(usize, End),
    Kill(usize),
    Restart(usize),
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Partition,
    Blackhole,
    Flap,
    Kill,
}

const PAIRS: [(usize, usize); 3] = [(0, 1), (0, 2), (1, 2)];

/// A seeded schedule of faults over `window`: one of each kind first (in a random order), then
/// random ones, each starting 0.3-3 s after the previous one, so that some overlap. A host's
/// link, a pair's routes and a daemon take one fault at a time. Everything started is undone
/// within the window.
fn schedule(rng: &mut Rng, window: Duration) -> Vec<(Duration, Action)> {
    let mut events: Vec<(Duration, Action)> = Vec::new();
    let mut link_free = [Duration::ZERO; HOSTS];
    let mut daemon_free = [Duration::ZERO; HOSTS];
    let mut pair_free = [Duration::ZERO; PAIRS.len()];
    let mut first = [Kind::Partition, Kind::Blackhole, Kind::Flap, Kind::Kill];
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let last_start = window - Duration::from_secs(2);
    let mut t = rng.ms(300, 1500);
    let mut n = 0;
    while t < last_start {
        let kind = first.get(n).copied().unwrap_or_else(|| {
            rng.pick(&[Kind::Partition, Kind::Blackhole, Kind::Flap, Kind::Kill])
                .unwrap()
        });
        n += 1;
        let free_hosts =
            |free: &[Duration; HOSTS]| (0..HOSTS).filter(|&i| free[i] <= t).collect::<Vec<_>>();
        match kind {
            Kind::Partition => {
                if let Some(i) = rng.pick(&free_hosts(&link_free)) {
                    let how = if rng.below(2) == 0 {
                        Isolation::OtherBridge
                    } else {
                        Isolation::PortDown
                    };
                    // Longer cuts outlast the daemons' ping timeout (the connection closes).
                    let end = (t + rng.ms(2000, 10_000)).min(window);
                    events.push((t, Action::Isolate(i, how)));
                    events.push((end, Action::Rejoin(i)));
                    link_free[i] = end + Duration::from_millis(200);
                }
            }
            Kind::Blackhole => {
                let free: Vec<usize> = (0..PAIRS.len()).filter(|&p| pair_free[p] <= t).collect();
                if let Some(p) = rng.pick(&free) {
                    let (a, b) = PAIRS[p];
                    let end = (t + rng.ms(2000, 10_000)).min(window);
                    events.push((t, Action::Blackhole(a, b)));
                    events.push((end, Action::Unblackhole(a, b)));
                    pair_free[p] = end + Duration::from_millis(200);
                }
            }
            Kind::Flap => {
                if let Some(i) = rng.pick(&free_hosts(&link_free)) {
                    let end_of_link = if rng.below(2) == 0 {
                        End::Host
                    } else {
                        End::Switch
                    };
                    let mut at = t;
                    for _ in 0..1 + rng.below(3) {
                        if at >= last_start {
                            break;
                        }
                        let up = (at + rng.ms(100, 1200)).min(window);
                        events.push((at, Action::LinkDown(i, end_of_link)));
                        events.push((up, Action::LinkUp(i, end_of_link)));
                        at = up + rng.ms(100, 800);
                    }
                    link_free[i] = at;
                }
            }
            Kind::Kill => {
                if let Some(i) = rng.pick(&free_hosts(&daemon_free)) {
                    let back = (t + rng.ms(2000, 5000)).min(window);
                    events.push((t, Action::Kill(i)));
                    events.push((back, Action::Restart(i)));
                    // Give it a moment to be back in the mesh before the next kill.
                    daemon_free[i] = back + Duration::from_secs(2);
                }
            }
        }
        t += rng.ms(300, 3000);
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

// ---------------------------------------------------------------------------------------------
// Posting

/// One acknowledged post: `chatsync post` exited 0 and printed this id.
#[derive(Clone, Debug)]
struct Acked {
    id: String,
    text: String,
    device: usize,
}

#[derive(Default)]
struct PostStats {
    acked: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
}

/// A `chatsync --home HOME ARGS...` command.
fn chatsync(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(CHATSYNC);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.arg("--home").arg(home).args(args);
    cmd
}

/// Posts `text`; the message id if the post was acknowledged.
fn post(home: &Path, chat: &str, text: &str, stats: &PostStats) -> Option<String> {
    let mut child = chatsync(home, &["post", chat, text])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run chatsync post");
    let deadline = Instant::now() + POST_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot poll chatsync post") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let mut out = String::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut out);
    let id = out.trim();
    if status.success() && !id.is_empty() {
        Some(id.to_string())
    } else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// One thread per device posting to the chat until stopped. Dropping it stops and joins them.
struct Posters {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    stats: Vec<Arc<PostStats>>,
}

impl Posters {
    fn start(
        homes: &[PathBuf],
        chat: &str,
        round: usize,
        seed: u64,
        acked: &Arc<Mutex<Vec<Acked>>>,
    ) -> Posters {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut stats = Vec::new();
        for (device, home) in homes.iter().enumerate() {
            let (stop, acked, home, chat) =
                (stop.clone(), acked.clone(), home.clone(), chat.to_string());
            let st = Arc::new(PostStats::default());
            stats.push(st.clone());
            let mut rng =
                Rng::seeded(seed ^ (device as u64 + 1).wrapping_mul(0x5851_f42d_4c95_7f2d));
            threads.push(thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("chaos round {round} device {device} post {n}");
                    n += 1;
                    if let Some(id) = post(&home, &chat, &text, &st) {
                        st.acked.fetch_add(1, Ordering::Relaxed);
                        acked.lock().unwrap_or_else(|p| p.into_inner()).push(Acked {
                            id,
                            text,
                            device,
                        });
                    }
                    thread::sleep(rng.ms(20, 150));
                }
            }));
        }
        Posters {
            stop,
            threads,
            stats,
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Posters {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Watching the round

/// One look at every device: connected peers and messages in the chat (`None`: no answer, its
/// daemon is down or busy).
struct Sample {
    at: Duration,
    connected: Vec<Option<u64>>,
    messages: Vec<Option<u64>>,
}

/// A thread that looks at every device once a second while the round runs, to show that the
/// faults bite (devices disconnected, apart) and, on failure, what happened when.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Vec<Sample>>>,
}

impl Monitor {
    fn start(homes: &[PathBuf], chat: &str) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let (homes, chat, flag) = (homes.to_vec(), chat.to_string(), stop.clone());
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                // Every line of `chatsync --json ARGS...`, if it succeeds.
                let json = |home: &Path, args: &[&str]| -> Option<Vec<Value>> {
                    let out = chatsync(home, args).stdin(Stdio::null()).output().ok()?;
                    out.status.success().then_some(())?;
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(|l| serde_json::from_str(l).ok())
                        .collect()
                };
                let at = start.elapsed();
                let connected = homes
                    .iter()
                    .map(|h| json(h, &["--json", "status"])?.first()?["peers_connected"].as_u64())
                    .collect();
                let messages = homes
                    .iter()
                    .map(|h| {
                        json(h, &["--json", "chats"])?
                            .iter()
                            .find(|c| c["id"] == chat.as_str())?["messages"]
                            .as_u64()
                    })
                    .collect();
                samples.push(Sample {
                    at,
                    connected,
                    messages,
                });
                thread::sleep(Duration::from_secs(1));
            }
            samples
        });
        Monitor {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(&mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.finish();
    }
}

fn show(values: &[Option<u64>]) -> String {
    let shown: Vec<String> = values
        .iter()
        .map(|v| v.map_or("-".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", shown.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Looking at the devices

/// `(id, text)` of every message of `chat` on the device at `home`, in display order; `Err`
/// when `chatsync log` fails.
fn messages(home: &Path, chat: &str) -> Result<Vec<(String, String)>, String> {
    let out = chatsync(home, &["--json", "log", chat, "-n", "1000000"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run chatsync log: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "chatsync log exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let m: Value = serde_json::from_str(l).map_err(|e| format!("not JSON ({e}): {l}"))?;
            Ok((
                m["id"].as_str().unwrap_or_default().to_string(),
                m["text"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// What the devices hold, and how far that is from converged (empty when converged).
fn divergence(acked: &[Acked], logs: &[Result<Vec<(String, String)>, String>]) -> Vec<String> {
    let mut problems = Vec::new();
    for (d, log) in logs.iter().enumerate() {
        let log = match log {
            Ok(log) => log,
            Err(e) => {
                problems.push(format!("device {d}: {e}"));
                continue;
            }
        };
        let ids: HashSet<&str> = log.iter().map(|(id, _)| id.as_str()).collect();
        let missing: Vec<&Acked> = acked
            .iter()
            .filter(|a| !ids.contains(a.id.as_str()))
            .collect();
        if !missing.is_empty() {
            let mut by_origin = [0usize; HOSTS];
            for m in &missing {
                by_origin[m.device] += 1;
            }
            problems.push(format!(
                "device {d} lacks {} of {} acknowledged posts (by origin device: {by_origin:?}), \
                 e.g. {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(3)]
            ));
        }
    }
    if let (Ok(first), rest) = (&logs[0], &logs[1..]) {
        for (d, log) in rest.iter().enumerate() {
            if let Ok(log) = log
                && log != first
            {
                let at = first
                    .iter()
                    .zip(log)
                    .position(|(a, b)| a != b)
                    .unwrap_or(first.len().min(log.len()));
                problems.push(format!(
                    "device {} differs from device 0 ({} vs {} messages), first at position \
                     {at}: {:?} vs {:?}",
                    d + 1,
                    log.len(),
                    first.len(),
                    log.get(at),
                    first.get(at)
                ));
            }
        }
    }
    problems
}

/// Lines of every daemon log in `home` (every run of its daemon) that contain any of
/// `needles`.
fn log_lines(home: &Path, needles: &[&str]) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(home)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.push(home.join("data").join("chatsyncd.log"));
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        for line in text.lines().map(strip_ansi) {
            if needles.iter().any(|n| line.contains(n)) {
                out.push(format!("{name}: {line}"));
            }
        }
    }
    out
}

/// Lines that say a device was blamed: an offence, or a suspension.
const OFFENCE_LINES: [&str; 2] = ["refused data from a device", "suspending a device"];

/// The warnings and errors of every device's daemons, the last `per_device` of each.
fn warnings(homes: &[PathBuf], per_device: usize) -> String {
    let mut out = String::new();
    for (d, home) in homes.iter().enumerate() {
        let lines = log_lines(home, &["WARN", "ERROR"]);
        let _ = writeln!(
            out,
            "--- device {d} ({}): {} warning/error lines, the last {}:",
            home.display(),
            lines.len(),
            lines.len().min(per_device)
        );
        for l in &lines[lines.len().saturating_sub(per_device)..] {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

/// The kinds of warnings and errors in `home`'s daemon logs, with how often each occurred.
fn warning_summary(home: &Path) -> String {
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for line in log_lines(home, &["WARN", "ERROR"]) {
        let Some(at) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
            continue;
        };
        // The level, the target and the message, without the fields (`key=value`).
        let kind: Vec<&str> = line[at..]
            .split_whitespace()
            .take_while(|w| !w.contains('='))
            .collect();
        let kind = kind.join(" ");
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
    if kinds.is_empty() {
        return "no warnings or errors".into();
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{n} x {k:?}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `text` without ANSI colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Copies every device's daemon logs out of its temporary home when the test fails (the homes
/// go with the devices), and says where.
struct KeepLogsOnFailure {
    homes: Vec<PathBuf>,
    seed: std::cell::Cell<u64>,
}

impl Drop for KeepLogsOnFailure {
    fn drop(&mut self) {
        if !thread::panicking() {
            return;
        }
        let dir = PathBuf::from(format!(
            "/tmp/chatsync-chaos-{}-{}",
            self.seed.get(),
            std::process::id()
        ));
        for (d, home) in self.homes.iter().enumerate() {
            let to = dir.join(format!("device{d}"));
            if std::fs::create_dir_all(&to).is_err() {
                return;
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(home)
                .map(|e| e.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.push(home.join("data").join("chatsyncd.log"));
            for file in files {
                if file.extension().is_some_and(|x| x == "log")
                    && let Some(name) = file.file_name()
                {
                    let _ = std::fs::copy(&file, to.join(name));
                }
            }
        }
        eprintln!(
            "chaos: the daemons' logs of this failed run are in {}",
            dir.display()
        );
    }
}

fn peers_json(home: &Path) -> Vec<Value> {
    let out = chatsync(home, &["--json", "peers"])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run chatsync peers");
    assert!(
        out.status.success(),
        "chatsync peers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn connected_count(home: &Path) -> usize {
    peers_json(home)
        .iter()
        .filter(|p| p["connected"] == true)
        .count()
}

// ---------------------------------------------------------------------------------------------
// The test

#[test]
fn devices_converge_after_any_fault() {
    let began = Instant::now();
    let mut net = match ChaosNet::create() {
        Ok(net) => net,
        Err(why) => {
            eprintln!("skipping the chaos test: cannot build network namespaces here ({why})");
            return;
        }
    };
    let first_seed = env_number("CHATSYNC_CHAOS_SEED").unwrap_or_else(random_u64);
    let rounds = env_number("CHATSYNC_CHAOS_ROUNDS").map_or(DEFAULT_ROUNDS, |n| n as usize);
    eprintln!("chaos: {rounds} round(s), first seed {first_seed}");

    let mut devs: Vec<Device> = (0..HOSTS).map(|_| Device::new()).collect();
    for (i, dev) in devs.iter_mut().enumerate() {
        dev.set_network(&format!("/ip4/{}/tcp/0", net.addr(i)), true, &[]);
        dev.spawn_daemon_in(Some(&net.host(i)));
    }
    let homes: Vec<PathBuf> = devs.iter().map(|d| d.home().to_path_buf()).collect();
    let keep_logs = KeepLogsOnFailure {
        homes: homes.clone(),
        seed: std::cell::Cell::new(first_seed),
    };
    let ids: Vec<String> = devs.iter().map(device_id).collect();
    for (i, dev) in devs.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                dev.ok(&["devices", "add", id]);
            }
        }
    }
    for (i, id) in ids.iter().enumerate() {
        eprintln!(
            "chaos: device {i} is {id}, at {} in {}",
            net.addr(i),
            net.host(i)
        );
    }
    eventually_blocking("all three connected", Duration::from_secs(30), || {
        homes.iter().all(|h| connected_count(h) == HOSTS - 1)
    });
    let chat = devs[0].ok_json1(&["chat", "create", "chaos", "--json"])["id"]
        .as_str()
        .expect("the chat has an id")
        .to_string();
    let genesis = devs[0].ok(&["post", &chat, "before the chaos"]);
    let acked = Arc::new(Mutex::new(vec![Acked {
        id: genesis.trim().to_string(),
        text: "before the chaos".into(),
        device: 0,
    }]));
    eventually_blocking("the chat on every device", Duration::from_secs(30), || {
        homes
            .iter()
            .all(|h| messages(h, &chat).is_ok_and(|m| m.len() == 1))
    });
    eprintln!("chaos: set up in {:?}", began.elapsed());

    let mut seed = first_seed;
    for round in 0..rounds {
        if round > 0 {
            seed = Rng::seeded(seed).next();
        }
        keep_logs.seed.set(seed);
        eprintln!(
            "chaos: round {round} seed {seed} (replay: CHATSYNC_CHAOS_SEED={seed} \
             CHATSYNC_CHAOS_ROUNDS=1)"
        );
        let mut rng = Rng::seeded(seed);
        let window = rng.ms(20_000, 26_000);
        let events = schedule(&mut rng, window);
        eprintln!(
            "chaos: round {round}: {} events over {window:?}:",
            events.len()
        );
        for (at, action) in &events {
            eprintln!("chaos:   {:>6} ms  {action:?}", at.as_millis());
        }

        let mut monitor = Monitor::start(&homes, &chat);
        let mut posters = Posters::start(&homes, &chat, round, rng.next(), &acked);
        let start = Instant::now();
        for (at, action) in &events {
            if let Some(wait) = (start + *at).checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            match *action {
                Action::Isolate(i, how) => net.isolate(i, how),
                Action::Rejoin(i) => net.rejoin(i),
                Action::Blackhole(a, b) => net.blackhole(a, b),
                Action::Unblackhole(a, b) => net.unblackhole(a, b),
                Action::LinkDown(i, end) => net.link_down(i, end),
                Action::LinkUp(i, end) => net.link_up(i, end),
                Action::Kill(i) => devs[i].kill_daemon(),
                Action::Restart(i) => {
                    let host = net.host(i);
                    devs[i].spawn_daemon_in(Some(&host));
                }
            }
            eprintln!(
                "chaos:   [{:>6} ms] {action:?}",
                start.elapsed().as_millis()
            );
        }
        if let Some(wait) = (start + window).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }

        // Heal: the schedule undid everything it did; make sure of it, and that every daemon
        // runs.
        net.heal_all();
        for (i, dev) in devs.iter_mut().enumerate() {
            // Only this test kills daemons: one that ended otherwise crashed.
            if let Some(status) = dev.child().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "round {round} (seed {seed}): device {i}'s daemon exited by itself \
                     ({status}):\n{}",
                    warnings(&homes[i..=i], 80)
                );
            }
            if dev.child().is_none() {
                let host = net.host(i);
                dev.spawn_daemon_in(Some(&host));
            }
        }
        let healed = Instant::now();
        let samples = monitor.finish();
        drop(monitor);
        posters.stop();
        let stats: Vec<(u64, u64, u64)> = posters
            .stats
            .iter()
            .map(|s| {
                (
                    s.acked.load(Ordering::Relaxed),
                    s.failed.load(Ordering::Relaxed),
                    s.timed_out.load(Ordering::Relaxed),
                )
            })
            .collect();
        drop(posters);
        eprintln!(
            "chaos: round {round}: healed after {:?}; posts per device (acknowledged, failed, \
             timed out): {stats:?}",
            start.elapsed()
        );
        for s in &samples {
            eprintln!(
                "chaos:   {:>6} ms  connected {}  messages {}",
                s.at.as_millis(),
                show(&s.connected),
                show(&s.messages)
            );
        }
        let gap = samples
            .iter()
            .filter_map(|s| {
                let counts: Vec<u64> = s.messages.iter().flatten().copied().collect();
                Some(counts.iter().max()? - counts.iter().min()?)
            })
            .max()
            .unwrap_or(0);
        let cut = samples
            .iter()
            .filter(|s| s.connected.iter().any(|c| *c != Some(HOSTS as u64 - 1)))
            .count();
        eprintln!(
            "chaos: round {round}: of {} looks at the devices, {cut} found one down or not \
             connected to both others; the message counts of running devices were up to {gap} \
             apart",
            samples.len()
        );
        assert!(
            stats.iter().all(|s| s.0 > 0),
            "round {round} (seed {seed}): a device had no post acknowledged: {stats:?}"
        );

        // Converged within CONVERGE_WITHIN of the heal.
        let acked_now = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut problems;
        let mut logs;
        loop {
            logs = homes.iter().map(|h| messages(h, &chat)).collect::<Vec<_>>();
            problems = divergence(&acked_now, &logs);
            if problems.is_empty() || healed.elapsed() > CONVERGE_WITHIN {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
        if !problems.is_empty() {
            let peers: Vec<String> = homes
                .iter()
                .enumerate()
                .map(|(d, h)| {
                    let peers: Vec<String> = peers_json(h).iter().map(Value::to_string).collect();
                    format!("device {d}: {}", peers.join("\n          "))
                })
                .collect();
            panic!(
                "round {round} (seed {seed}): not converged {CONVERGE_WITHIN:?} after the heal:\n\
                 {}\npeers:\n{}\n{}",
                problems.join("\n"),
                peers.join("\n"),
                warnings(&homes, 60)
            );
        }
        let log = logs[0].as_ref().expect("checked above");
        eprintln!(
            "chaos: round {round}: converged {:?} after the heal: {} messages, {} acknowledged",
            healed.elapsed(),
            log.len(),
            acked_now.len()
        );

        // Nothing twice: no id, and no text (each post's text is unique, and never retried).
        let mut seen_ids = HashSet::new();
        let mut seen_texts = HashMap::new();
        for (id, text) in log {
            assert!(
                seen_ids.insert(id.as_str()),
                "round {round} (seed {seed}): message {id} is listed twice"
            );
            if let Some(other) = seen_texts.insert(text.as_str(), id.as_str()) {
                panic!(
                    "round {round} (seed {seed}): {text:?} is in the chat twice, as {other} and \
                     {id}"
                );
            }
        }
        // The acknowledged text is the stored text.
        let by_id: HashMap<&str, &str> = log
            .iter()
            .map(|(id, text)| (id.as_str(), text.as_str()))
            .collect();
        for a in &acked_now {
            assert_eq!(
                by_id.get(a.id.as_str()).copied(),
                Some(a.text.as_str()),
                "round {round} (seed {seed}): acknowledged post {a:?} changed"
            );
        }

        // No blame, no suspension, no refusal: counters of the running daemons, and the logs of
        // every daemon run (counters start from zero at each restart).
        let mut bad = Vec::new();
        for (d, home) in homes.iter().enumerate() {
            let peers = peers_json(home);
            let mut listed = Vec::new();
            for p in &peers {
                let who = p["device"].as_str().unwrap_or_default();
                let j = ids.iter().position(|id| id == who);
                listed.extend(j);
                let (refusals, offences) = (&p["refusals"], &p["offences"]);
                eprintln!(
                    "chaos: round {round}: device {d} about device {j:?}: connected {}, \
                     refusals {refusals}, offences {offences}, suspended_until {}",
                    p["connected"], p["suspended_until"]
                );
                if refusals != 0 || offences != 0 || !p["suspended_until"].is_null() {
                    bad.push(format!("device {d} about device {j:?}: {p}"));
                }
            }
            listed.sort_unstable();
            let others: Vec<usize> = (0..HOSTS).filter(|&j| j != d).collect();
            assert_eq!(
                listed,
                others,
                "round {round} (seed {seed}): device {d} does not list the other devices: \
                 {}",
                Value::Array(peers.clone())
            );
            for line in log_lines(home, &OFFENCE_LINES) {
                bad.push(format!("device {d} logged: {line}"));
            }
        }
        if !bad.is_empty() {
            let refusal_lines: Vec<String> = homes
                .iter()
                .enumerate()
                .flat_map(|(d, h)| {
                    log_lines(h, &["refused a sync request", "a sync round failed"])
                        .into_iter()
                        .map(move |l| format!("device {d}: {l}"))
                })
                .collect();
            panic!(
                "round {round} (seed {seed}): devices refused or blamed each other:\n{}\n\
                 refusals in the logs ({}):\n{}\n{}",
                bad.join("\n"),
                refusal_lines.len(),
                refusal_lines.join("\n"),
                warnings(&homes, 40)
            );
        }
        for (d, home) in homes.iter().enumerate() {
            eprintln!(
                "chaos: round {round}: device {d}'s daemons (all runs so far): {} \
                 disconnections logged; {}",
                log_lines(home, &["device disconnected"]).len(),
                warning_summary(home)
            );
        }
        eprintln!(
            "chaos: round {round} passed ({:?} since the test began)",
            began.elapsed()
        );
    }
}
