//! The benchmark's side of the samod replicas (`peer.rs`): start one, ask it something and
//! wait for the answer, read the `seen` lines it prints, stop it.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
};

use crate::measure::DiskWrites;

/// How long a replica may take to start (and connect), or to stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One samod replica process. Dropping it kills the process.
pub struct Peer {
    pub name: &'static str,
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::UnboundedReceiver<String>,
    /// Message ids it saw arrive in a watched chat, with when the benchmark read the line.
    pub seen: mpsc::UnboundedReceiver<(String, Instant)>,
    /// The loopback port it accepts connections on (S only).
    pub port: u16,
    pub pid: u32,
}

impl Peer {
    /// Starts a replica on `dir` that accepts connections (`listen`) or dials `dial`; returns
    /// once it listens or is connected, with the time that took.
    pub async fn start(
        name: &'static str,
        dir: &Path,
        listen: bool,
        dial: Option<u16>,
    ) -> (Peer, Duration) {
        let started = Instant::now();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg("--samod-peer").arg("--dir").arg(dir);
        if listen {
            cmd.arg("--listen");
        }
        if let Some(port) = dial {
            cmd.arg("--dial").arg(port.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start samod replica {name}: {e}"));
        let pid = child.id().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (answer_tx, mut answers) = mpsc::unbounded_channel();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                match line.strip_prefix("seen ") {
                    Some(id) => {
                        let _ = seen_tx.send((id.to_string(), at));
                    }
                    None => {
                        let _ = answer_tx.send(line);
                    }
                }
            }
        });
        let ready = tokio::time::timeout(START_TIMEOUT, answers.recv())
            .await
            .unwrap_or_else(|_| panic!("samod replica {name} not ready within {START_TIMEOUT:?}"))
            .unwrap_or_else(|| panic!("samod replica {name} exited while starting"));
        let port = ready
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("samod replica {name} said {ready:?} instead of ready"));
        let peer = Peer {
            name,
            child,
            stdin,
            answers,
            seen,
            port,
            pid,
        };
        (peer, started.elapsed())
    }

    /// Sends `command` and waits at most `timeout` for its answer (what follows `ok`).
    pub async fn ask(&mut self, command: &str, timeout: Duration) -> String {
        let verb = command.split_whitespace().next().unwrap_or("");
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("samod replica {} is gone ({verb}): {e}", self.name));
        let answer = tokio::time::timeout(timeout, self.answers.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "samod replica {} did not answer {verb} within {timeout:?}",
                    self.name
                )
            })
            .unwrap_or_else(|| panic!("samod replica {} exited during {verb}", self.name));
        match answer.strip_prefix("ok") {
            Some(rest) => rest.trim_start().to_string(),
            None => panic!("samod replica {} failed: {answer}", self.name),
        }
    }

    /// Stops the replica once its storage writes are done, and waits for the process to end.
    /// Returns what it has written to disk.
    pub async fn stop(mut self) -> DiskWrites {
        let written = self.ask("stop", START_TIMEOUT).await;
        tokio::time::timeout(START_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("samod replica {} did not exit", self.name))
            .unwrap();
        DiskWrites::from_line(&written)
    }

    /// Bytes received on its socket to S since it started (length-delimited frames included).
    pub async fn bytes_received(&mut self) -> u64 {
        self.ask("bytes", START_TIMEOUT).await.parse().unwrap()
    }
}

/// The three replicas of the topology: S accepts, A and B dial S.
pub struct Three {
    pub s: Peer,
    pub a: Peer,
    /// None while B is stopped.
    pub b: Option<Peer>,
    pub b_dir: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

impl Three {
    pub async fn start() -> Three {
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::Builder::new().prefix("samod").tempdir().unwrap())
            .collect();
        let (s, _) = Peer::start("S", dirs[0].path(), true, None).await;
        let (a, _) = Peer::start("A", dirs[1].path(), false, Some(s.port)).await;
        let (b, _) = Peer::start("B", dirs[2].path(), false, Some(s.port)).await;
        Three {
            b_dir: dirs[2].path().to_path_buf(),
            s,
            a,
            b: Some(b),
            _dirs: dirs,
        }
    }

    pub fn b(&mut self) -> &mut Peer {
        self.b.as_mut().expect("B is stopped")
    }

    pub async fn stop_b(&mut self) {
        self.b.take().expect("B is stopped").stop().await;
    }

    /// Starts B again on its store; returns when it is connected to S.
    pub async fn start_b(&mut self) {
        assert!(self.b.is_none(), "B is running");
        let (b, _) = Peer::start("B", &self.b_dir, false, Some(self.s.port)).await;
        self.b = Some(b);
    }

    /// Chats made on A that S and B then find (so that each knows them).
    pub async fn chats(&mut self, k: usize) -> Vec<String> {
        let ids: Vec<String> = self
            .a
            .ask(&format!("create {k}"), Duration::from_secs(60))
            .await
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let find = format!("find {}", ids.join(" "));
        self.s.ask(&find, Duration::from_secs(60)).await;
        self.b().ask(&find, Duration::from_secs(60)).await;
        ids
    }

    pub async fn shutdown(self) {
        if let Some(b) = self.b {
            b.stop().await;
        }
        self.a.stop().await;
        self.s.stop().await;
    }
}
