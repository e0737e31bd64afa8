//! The harness: one [`Device`] is one chatsync home (a temporary directory under /tmp) with at
//! most one daemon running for it. Devices never share homes, so tests may run in parallel.
//!
//! A daemon is started either the way a user does (`chatsync daemon start`, which detaches it)
//! or directly as a child process (`chatsyncd --home ...`, for tests that SIGKILL it). Either
//! way, dropping the device kills whatever daemon still serves its home.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use chatsync_testkit::binary::Chatsyncd;
use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};
use serde_json::Value;
use tempfile::TempDir;

pub const CHATSYNC: &str = env!("CARGO_BIN_EXE_chatsync");
pub const CHATSYNCD: &str = env!("CARGO_BIN_EXE_chatsyncd");

/// How long to wait for a daemon to answer after starting it.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub use chatsync_testkit::binary::SCRUBBED_ENV;

/// What one `chatsync` run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(args: &[&str], out: Output) -> Run {
        let code = out.status.code().unwrap_or_else(|| {
            panic!("chatsync {args:?} was killed by a signal: {:?}", out.status)
        });
        Run {
            code,
            stdout: String::from_utf8(out.stdout).expect("stdout is not UTF-8"),
            stderr: String::from_utf8(out.stderr).expect("stderr is not UTF-8"),
        }
    }

    /// Each stdout line parsed as JSON (for `--json` output).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect()
    }
}

/// One chatsync home, and the daemon serving it (if any).
pub struct Device {
    home: TempDir,
    /// A chatsyncd started directly.
    child: Option<Child>,
    /// How many daemons were started directly (names their log files).
    spawned: usize,
    /// Pids of daemons started with `chatsync daemon start`.
    started: std::sync::Mutex<Vec<u32>>,
}

impl Device {
    pub fn new() -> Device {
        // Short, so that home/run/api.sock stays well under the 107 bytes a socket path may have.
        let home = tempfile::Builder::new()
            .prefix("cse2e-")
            .tempdir_in("/tmp")
            .expect("cannot create a temporary home");
        let device = Device {
            home,
            child: None,
            spawned: 0,
            started: std::sync::Mutex::new(Vec::new()),
        };
        device.set_peers(&[]);
        device
    }

    /// Writes the device's config: loopback only and no mDNS (tests never touch the machine's
    /// real network), with `peers` to connect to.
    pub fn set_peers(&self, peers: &[String]) {
        self.set_network("/ip4/127.0.0.1/tcp/0", false, peers);
    }

    /// Writes the device's network config.
    pub fn set_network(&self, listen: &str, mdns: bool, peers: &[String]) {
        let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
        let config = format!(
            "[network]\nlisten = [{listen:?}]\nmdns = {mdns}\npeers = [{}]\n",
            peers.join(", ")
        );
        std::fs::write(self.home().join("config.toml"), config).expect("cannot write the config");
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.home().join("run").join("api.sock")
    }

    /// A `chatsync --home HOME ARGS...` command, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CHATSYNC);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd.arg("--home").arg(self.home()).args(args);
        cmd
    }

    /// Runs `chatsync ARGS...` and captures what it did.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run chatsync");
        Run::from_output(args, out)
    }

    /// Runs `chatsync ARGS...` with `input` on its standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run chatsync");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(input).expect("cannot write to stdin");
        drop(stdin);
        let out = child.wait_with_output().expect("cannot wait for chatsync");
        Run::from_output(args, out)
    }

    /// Runs `chatsync ARGS...`, which must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "chatsync {args:?} failed:\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// Runs `chatsync --json ARGS...`, which must succeed; returns every line as JSON.
    pub fn ok_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = self.run(&all);
        assert_eq!(
            run.code, 0,
            "chatsync {all:?} failed:\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        run.json_lines()
    }

    /// Like [`Device::ok_json`], for commands that print exactly one object.
    pub fn ok_json1(&self, args: &[&str]) -> Value {
        let mut lines = self.ok_json(args);
        assert_eq!(
            lines.len(),
            1,
            "expected one JSON line from {args:?}: {lines:?}"
        );
        lines.remove(0)
    }

    /// `chatsync daemon start`, the way a user starts it. Returns the daemon's pid.
    pub fn start(&self) -> i32 {
        let started = self.ok_json1(&["daemon", "start"]);
        assert_eq!(started["running"], true, "{started}");
        let pid = started["pid"]
            .as_i64()
            .expect("daemon start --json has a pid");
        i32::try_from(pid).expect("pid fits in i32")
    }

    /// `chatsync daemon stop`, which must succeed.
    pub fn stop(&self) {
        self.ok(&["daemon", "stop"]);
    }

    /// Starts chatsyncd directly as a child process and waits until it answers.
    pub fn spawn_daemon(&mut self) -> u32 {
        self.spawn_daemon_in(None)
    }

    /// Starts chatsyncd directly, inside network namespace `netns` if given.
    pub fn spawn_daemon_in(&mut self, netns: Option<&str>) -> u32 {
        assert!(self.child.is_none(), "a daemon child is already running");
        self.spawned += 1;
        let log_path = self.home().join(format!("chatsyncd-{}.log", self.spawned));
        let mut daemon = Chatsyncd::new(Path::new(CHATSYNCD), self.home())
            .args(["--name", "e2e-device", "--log", "info"])
            .log_to(&log_path);
        if let Some(ns) = netns {
            daemon = daemon.in_netns(ns);
        }
        let child = daemon.spawn();
        let pid = child.id();
        self.child = Some(child);
        let socket = self.socket();
        let child = self.child.as_mut().expect("the child just started");
        eventually_blocking("chatsyncd answers", READY_TIMEOUT, || {
            if let Some(exit) = child.try_wait().expect("cannot poll chatsyncd") {
                panic!(
                    "chatsyncd exited at start ({exit}):\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            status_pid(&socket).is_some()
        });
        pid
    }

    /// SIGKILLs the daemon started by [`Device::spawn_daemon`] and reaps it.
    pub fn kill_daemon(&mut self) {
        let mut child = self.child.take().expect("no daemon child to kill");
        sigkill(child.id());
        let status = child.wait().expect("cannot reap chatsyncd");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(Signal::SIGKILL as i32),
            "chatsyncd ended otherwise than by SIGKILL: {status:?}"
        );
    }

    /// Forgets a daemon child that has already exited (and been reaped), so another can start.
    pub fn forget_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `daemon stop` returns once the process is a zombie; its last threads may still be
            // exiting (and the parent cannot reap it yet) for a moment on a loaded machine.
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().expect("cannot poll chatsyncd").is_none() {
                assert!(
                    Instant::now() < deadline,
                    "forget_daemon on a running daemon"
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The daemon child started by [`Device::spawn_daemon`], if any.
    pub fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// An API client for this device's socket.
    pub fn client(&self) -> chatsync_api::client::Client {
        chatsync_api::client::Client::new(&self.socket()).expect("cannot build a client")
    }

    /// The text of every daemon log in this home (for failure messages).
    pub fn daemon_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.home()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") {
                    out.push_str(&format!("== {name}\n"));
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        let started = self.home().join("data").join("chatsyncd.log");
        out.push_str("== data/chatsyncd.log\n");
        out.push_str(&std::fs::read_to_string(started).unwrap_or_default());
        out
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigkill(child.id());
            let _ = child.wait();
        }
        // A daemon started with `chatsync daemon start` is not our child: find it through its
        // API and the pids `start` saw, and make sure the pid really is a chatsyncd serving this
        // home before killing it.
        let mut pids = std::mem::take(&mut *self.started.lock().unwrap_or_else(|p| p.into_inner()));
        pids.extend(status_pid(&self.socket()));
        let home = self.home().to_string_lossy().into_owned();
        for pid in pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if alive(pid) && cmdline.contains("chatsyncd") && cmdline.contains(&home) {
                sigkill(pid);
                wait_gone(pid, Duration::from_secs(10));
            }
        }
    }
}

fn sigkill(pid: u32) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    let _ = signal::kill(pid, Signal::SIGKILL);
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !stat
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'))
}

/// Waits until a process (not necessarily our child) has gone; returns whether it did.
/// (Not `eventually_blocking`: it runs in `Drop`, where a failing test must not panic again.)
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Waits until nothing listens on `socket` any more (connecting is refused).
pub fn wait_refused(socket: &Path) {
    let what = format!("{} refuses connections", socket.display());
    eventually_blocking(&what, Duration::from_secs(10), || {
        UnixStream::connect(socket).is_err()
    });
}

/// The pid of the daemon answering on `socket`, if one does.
pub fn status_pid(socket: &Path) -> Option<u32> {
    let resp = http(socket, "GET", "/v1/status", None, b"").ok()?;
    if resp.status != 200 {
        return None;
    }
    resp.json()
        .get("pid")?
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

pub use chatsync_testkit::raw::blocking::{HttpResponse, http, http_with_headers, raw_exchange};

/// A random number, different in every call (no rand dependency needed for test jitter).
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Reads a child's standard output line by line on a thread, so that tests can wait for a line
/// with a timeout.
pub struct LineReader {
    rx: mpsc::Receiver<String>,
}

impl LineReader {
    pub fn new(stdout: impl Read + Send + 'static) -> LineReader {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        LineReader { rx }
    }

    /// The next line, or `None` on timeout or end of output.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }
}

/// A running `chatsync --json pair`, whose output lines are read as they come.
pub struct Pairing {
    pub child: Child,
    pub lines: LineReader,
    pub ticket: String,
}

impl Pairing {
    /// Runs `chatsync --json pair` with `extra` arguments on `dev`, and reads its ticket.
    pub fn start(dev: &Device, extra: &[&str]) -> Pairing {
        let mut args = vec!["--json", "pair"];
        args.extend_from_slice(extra);
        let mut child = dev
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run chatsync pair");
        let lines = LineReader::new(child.stdout.take().unwrap());
        // The ticket is the first line, printed at once (not when the join happens).
        let first = lines
            .next(Duration::from_secs(10))
            .expect("pair printed no ticket line");
        let first: Value = serde_json::from_str(&first).unwrap();
        let ticket = first["ticket"].as_str().unwrap().to_string();
        assert_eq!(first.as_object().unwrap().len(), 1, "{first}");
        Pairing {
            child,
            lines,
            ticket,
        }
    }

    /// Waits for the command to exit; returns its exit code and standard error.
    pub fn wait(&mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "chatsync pair did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status.code().unwrap_or(-1), stderr)
    }

    /// Waits for `pair` to report the join and exit successfully; returns what it reported.
    pub fn joined(mut self) -> Value {
        let (code, stderr) = self.wait(Duration::from_secs(10));
        assert_eq!(code, 0, "chatsync pair failed: {stderr}");
        let line = self
            .lines
            .next(Duration::from_secs(1))
            .expect("chatsync pair reported no join");
        let report: Value = serde_json::from_str(&line).unwrap();
        report["joined"].clone()
    }
}

impl Drop for Pairing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use chatsync_testkit::eventually_blocking;

/// `dev`'s device id, as `chatsync status` shows it.
pub fn device_id(dev: &Device) -> String {
    dev.ok_json1(&["status", "--json"])["device_id"]
        .as_str()
        .expect("status --json has a device id")
        .to_string()
}

/// The ids of `chat`'s messages on `dev`, in display order; none while the chat has not reached
/// `dev` yet.
pub fn message_ids(dev: &Device, chat: &str) -> Vec<Value> {
    let run = dev.run(&["--json", "log", chat, "-n", "1000"]);
    if run.code == 4 {
        return Vec::new();
    }
    assert_eq!(run.code, 0, "chatsync log failed: {}", run.stderr);
    run.json_lines().iter().map(|m| m["id"].clone()).collect()
}
