//! `chatsync daemon start|stop|status` and `chatsync status`.

use std::{
    fs::OpenOptions,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chatsync_api::{
    Client, ClientError,
    wire::{ReservationState, StoreState, SyncJson, SyncStatus},
};
use chatsync_daemon::paths::{PathArgs, Paths};
use nix::{sys::signal, unistd::Pid};
use serde_json::json;

use crate::{
    args::DaemonCommand,
    output::{self, human_bytes},
};

/// How long `start` waits for the API to answer, and `stop` for the process to exit.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

pub async fn run(
    cmd: DaemonCommand,
    path_args: &PathArgs,
    paths: &Paths,
    client: &Client,
    json: bool,
) -> anyhow::Result<()> {
    match cmd {
        DaemonCommand::Start { bin } => start(bin, path_args, paths, client, json).await,
        DaemonCommand::Stop => stop(client, json).await,
        DaemonCommand::Status => daemon_status(client, json).await,
    }
}

async fn start(
    bin: Option<PathBuf>,
    path_args: &PathArgs,
    paths: &Paths,
    client: &Client,
    json: bool,
) -> anyhow::Result<()> {
    if let Ok(status) = client.status().await {
        return report_running(&status, "already running", json);
    }
    let bin = match bin {
        Some(b) => b,
        None => daemon_binary()?,
    };
    std::fs::create_dir_all(&paths.data_dir)
        .with_context(|| format!("cannot create {}", paths.data_dir.display()))?;
    let log_path = paths.log_file();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open the log file {}", log_path.display()))?;
    let mut cmd = Command::new(&bin);
    if let Some(home) = &path_args.home {
        cmd.arg("--home").arg(home);
    }
    if let Some(socket) = &path_args.socket {
        cmd.arg("--socket").arg(socket);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal must not stop the daemon.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(status) = client.status().await {
            return report_running(&status, "started", json);
        }
        if let Some(exit) = child.try_wait()? {
            bail!(
                "chatsyncd exited at start ({exit}); last lines of {}:\n{}",
                log_path.display(),
                tail(&log_path, 10)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "chatsyncd did not answer within {}s; see {}",
                WAIT.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn stop(client: &Client, json: bool) -> anyhow::Result<()> {
    let status = match client.status().await {
        Ok(s) => s,
        Err(ClientError::NotRunning { .. }) => {
            if json {
                output::json_line(&json!({"running": false}))?;
            } else {
                println!("chatsyncd is not running");
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    client.shutdown().await?;
    let pid = Pid::from_raw(i32::try_from(status.pid).context("bad pid from the daemon")?);
    let deadline = Instant::now() + WAIT;
    while process_alive(pid) {
        if Instant::now() > deadline {
            bail!(
                "chatsyncd (pid {pid}) is still running {}s after being asked to stop",
                WAIT.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    if json {
        output::json_line(&json!({"running": false, "stopped_pid": status.pid}))
    } else {
        println!("chatsyncd stopped (pid {})", status.pid);
        Ok(())
    }
}

/// One line on how this device stands with the others.
fn sync_line(sync: &SyncJson) -> String {
    let last = sync
        .last_sync
        .map(|t| format!("; last sync {}", output::local_time(t)))
        .unwrap_or_default();
    match sync.state {
        SyncStatus::Offline => format!(
            "offline: none of {} trusted devices connected{last}",
            sync.peers_trusted
        ),
        SyncStatus::InSync => format!(
            "in sync with {} of {} trusted devices{last}",
            sync.peers_connected, sync.peers_trusted
        ),
        _ => {
            let detail = output::sync_words(Some(sync.chats_behind), Some(sync.chats_ahead));
            let detail = if detail == "in sync" {
                String::new()
            } else {
                format!(" ({detail})")
            };
            format!(
                "syncing with {} of {} trusted devices{detail}{last}",
                sync.peers_connected, sync.peers_trusted
            )
        }
    }
}

async fn daemon_status(client: &Client, json: bool) -> anyhow::Result<()> {
    let status = client.status().await?;
    report_running(&status, "running", json)
}

/// `chatsync status`: this device and the daemon.
pub async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let s = client.status().await?;
    if json {
        return output::json_line(&s);
    }
    let rows = [
        ("device id", s.device_id.clone()),
        ("name", output::visible_line(&s.name)),
        ("version", s.version.clone()),
        ("chats", s.chats.to_string()),
        (
            "network",
            format!(
                "{} connected; listening on {}",
                s.peers_connected,
                if s.listen_addrs.is_empty() {
                    "nothing".to_string()
                } else {
                    s.listen_addrs.join(" ")
                }
            ),
        ),
        ("sync", sync_line(&s.sync)),
        ("data dir", s.data_dir.clone()),
        ("socket", s.socket.clone()),
        (
            "daemon",
            format!("pid {}, up {}", s.pid, human_duration(s.uptime_ms)),
        ),
        (
            "store",
            format!(
                "{} on disk{}, {}",
                human_bytes(s.store_bytes),
                s.store_free_bytes
                    .map(|f| format!(", {} free", human_bytes(f)))
                    .unwrap_or_default(),
                match s.store_state {
                    StoreState::Ok => "healthy",
                    StoreState::Full => {
                        "DISK FULL (new writes refused until space is freed; reads work)"
                    }
                    StoreState::Failed | StoreState::Unknown => {
                        "FAILED (writes refused; see the daemon log)"
                    }
                }
            ),
        ),
        (
            "in memory",
            format!(
                "{} {}, about {}",
                s.loaded_chats,
                if s.loaded_chats == 1 { "chat" } else { "chats" },
                human_bytes(s.loaded_bytes_estimate)
            ),
        ),
        ("files", attachments_line(&s.attachments)),
    ];
    if let Some(at) = s.removed_from_mesh_at {
        println!("{}", removed_notice(at));
    }
    for (k, v) in rows {
        println!("{k:<10}  {v}");
    }
    for line in relay_lines(&s) {
        println!("{line}");
    }
    // An older daemon may not know the route: no backup line then.
    if let Ok(backup) = client.backup_status().await {
        println!("{:<10}  {}", "backups", backup_line(&backup));
    }
    Ok(())
}

/// The `files` row of `chatsync status`: attachments stored here, and downloads under way.
fn attachments_line(a: &chatsync_api::wire::AttachmentStatsJson) -> String {
    let mut line = format!(
        "{} {}, {} of {} quota",
        a.blobs,
        if a.blobs == 1 {
            "attachment"
        } else {
            "attachments"
        },
        human_bytes(a.bytes),
        human_bytes(a.quota_bytes)
    );
    if a.transfers > 0 {
        line.push_str(&format!(
            "; {} {} under way ({} so far)",
            a.transfers,
            if a.transfers == 1 {
                "download"
            } else {
                "downloads"
            },
            human_bytes(a.partial_bytes)
        ));
    }
    line
}

/// The `backups` row of `chatsync status`: where to, the last good one, any failure, the next.
fn backup_line(b: &chatsync_api::wire::BackupStatusJson) -> String {
    let Some(target) = &b.target else {
        return "not set up (chatsync backup init --to DIR)".into();
    };
    let mut line = format!("to {target}");
    match (&b.last_snapshot, b.last_backup_at) {
        (Some(snapshot), Some(at)) => {
            line.push_str(&format!(
                "; last good {} ({snapshot})",
                output::local_time(at)
            ));
        }
        _ => line.push_str("; none made yet"),
    }
    if let Some(failure) = &b.failure {
        line.push_str(&format!(
            "; FAILED {}: {}",
            output::local_time(failure.at),
            output::visible_line(&failure.error)
        ));
    }
    if let Some(next) = b.next_at {
        line.push_str(&format!("; next {}", output::local_time(next)));
    }
    line
}

/// The `relays` and `relay mode` rows of `chatsync status`.
fn relay_lines(s: &chatsync_api::wire::StatusJson) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in s.reservations.iter().enumerate() {
        let key = if i == 0 { "relays" } else { "" };
        let mut line = format!("{key:<10}  {} {}", output::short_id(&r.relay), r.state);
        if let Some(since) = r.since {
            line.push_str(&format!(" since {}", output::local_time(since)));
        }
        if let Some(bytes) = r.circuit_bytes {
            line.push_str(&format!(", circuits up to {}", human_bytes(bytes)));
        }
        if let Some(secs) = r.circuit_secs {
            line.push_str(&format!(" / {}", human_duration(secs.saturating_mul(1000))));
        }
        if let Some(error) = &r.error
            && r.state != ReservationState::Reserved
        {
            line.push_str(&format!(" ({error})"));
        }
        out.push(line);
        for addr in &r.relayed_addrs {
            out.push(format!("{:<10}    reachable at {addr}", ""));
        }
    }
    if let Some(relay) = &s.relay {
        out.push(format!(
            "{:<10}  on: {} of {} reservations, {} of {} circuits, {} clients; \
             circuits up to {} / {}; {}",
            "relay mode",
            relay.reservations,
            relay.max_reservations,
            relay.circuits,
            relay.max_circuits,
            relay.clients,
            human_bytes(relay.max_circuit_bytes),
            human_duration(relay.max_circuit_secs.saturating_mul(1000)),
            if relay.allow.is_empty() {
                "any device".to_string()
            } else {
                format!("{} devices allowed", relay.allow.len())
            }
        ));
        // With the relay's id: what devices pass to `--relay-addr`.
        for addr in &relay.external_addrs {
            out.push(format!(
                "{:<10}    reachable at {addr}/p2p/{}",
                "", s.device_id
            ));
        }
    }
    out
}

/// What a device removed from the mesh tells its user.
pub fn removed_notice(at: i64) -> String {
    format!(
        "This device was removed from the mesh by another device ({}). It no longer syncs; \
         to join again it needs a new identity: stop it, delete identity.key in its data dir, start it and pair it again.",
        output::local_time(at)
    )
}

fn report_running(
    s: &chatsync_api::wire::StatusJson,
    what: &str,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        output::json_line(&json!({
            "running": true,
            "pid": s.pid,
            "device_id": s.device_id,
            "socket": s.socket,
            "uptime_ms": s.uptime_ms,
        }))
    } else {
        println!(
            "chatsyncd {what} (pid {}, device {}, socket {})",
            s.pid, s.device_id, s.socket
        );
        Ok(())
    }
}

/// The daemon binary installed next to this one, else `chatsyncd` from PATH.
fn daemon_binary() -> anyhow::Result<PathBuf> {
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let sibling = dir.join("chatsyncd");
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("chatsyncd"))
        .find(|p| p.is_file())
        .context("cannot find the chatsyncd binary next to chatsync or on PATH; pass --bin")
}

fn process_alive(pid: Pid) -> bool {
    // Signal 0 checks for existence. A zombie (exited, not yet reaped) counts as gone.
    if signal::kill(pid, None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}
