//! The real `chatsyncd`, started as a child process: the one launcher behind
//! [`crate::TestDaemon::start_binary`] and the end-to-end tests' devices.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// Environment variables that would point the binaries somewhere other than the test's home.
pub const SCRUBBED_ENV: [&str; 8] = [
    "CHATSYNC_HOME",
    "CHATSYNC_SOCKET",
    "CHATSYNC_CONFIG",
    "CHATSYNC_LOG",
    "CHATSYNCD_BIN",
    // A test runner under systemd must not have its daemons notify the real manager.
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// How to start one `chatsyncd`.
#[derive(Clone, Debug)]
pub struct Chatsyncd {
    bin: PathBuf,
    home: PathBuf,
    netns: Option<String>,
    log: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Chatsyncd {
    /// `bin --home home`, with the environment scrubbed of chatsync's variables.
    pub fn new(bin: &Path, home: &Path) -> Chatsyncd {
        Chatsyncd {
            bin: bin.to_path_buf(),
            home: home.to_path_buf(),
            netns: None,
            log: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// With `key` set to `value` in its environment (after the scrubbing).
    pub fn env(mut self, key: &str, value: &str) -> Chatsyncd {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Listening on an ephemeral loopback port only, without mDNS: for tests and benchmarks
    /// that must never touch the real network.
    pub fn loopback_only(self) -> Chatsyncd {
        self.args(["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
    }

    /// Inside network namespace `netns` (`ip netns exec`).
    pub fn in_netns(mut self, netns: &str) -> Chatsyncd {
        self.netns = Some(netns.to_string());
        self
    }

    /// Its standard output and error into `log` (else output is dropped and errors inherited).
    pub fn log_to(mut self, log: &Path) -> Chatsyncd {
        self.log = Some(log.to_path_buf());
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Chatsyncd {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn spawn(&self) -> Child {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--home")
            .arg(&self.home)
            .args(&self.args)
            .stdin(Stdio::null());
        match &self.log {
            Some(path) => {
                let log = File::create(path).expect("cannot create the daemon log");
                cmd.stdout(log.try_clone().expect("cannot clone the log file"))
                    .stderr(log);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()))
    }
}
