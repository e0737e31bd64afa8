//! `chatsync doctor`: one line per check of what makes this device sync, each problem with the
//! command that fixes it; exit 0 only when no check failed. The checks are worked out from what
//! the daemon reports (`status`, `peers`, `devices`) by [`checks`], which is pure, so that each
//! verdict is tested on its own.

use chatsync_api::{
    Client, ClientError,
    wire::{DeviceJson, PeerJson, ReservationState, StatusJson, StoreState, SyncStatus},
};
use serde::Serialize;

use crate::{
    exit::{self, Failure},
    output,
};

/// Free space on the store's disk below which doctor warns (the daemon refuses writes at its
/// own, smaller, reserve).
const LOW_DISK_BYTES: u64 = 1 << 30;
/// A device not synced with for this long is worth a warning even if that is expected.
const LONG_APART_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One check: what was checked, how it stands, and what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Verdict,
    pub detail: String,
    /// The command or step that fixes it (none when all is well).
    pub fix: Option<String>,
}

fn check(name: impl Into<String>, status: Verdict, detail: impl Into<String>) -> Check {
    Check {
        check: name.into(),
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

pub async fn run(client: &Client, json: bool) -> anyhow::Result<()> {
    let found = match gather(client).await {
        Ok((status, peers, devices)) => checks(
            env!("CARGO_PKG_VERSION"),
            &status,
            &peers,
            &devices,
            chatsync_daemon::engine::now_ms(),
        ),
        Err(ClientError::NotRunning { socket }) => vec![
            check(
                "daemon",
                Verdict::Fail,
                format!("not running (no answer on {socket})"),
            )
            .fix("chatsync daemon start"),
        ],
        Err(e) => return Err(e.into()),
    };
    for c in &found {
        if json {
            output::json_line(c)?;
        } else {
            print_check(c);
        }
    }
    let failed = found.iter().filter(|c| c.status == Verdict::Fail).count();
    if failed > 0 {
        return Err(Failure::error(
            exit::FAILURE,
            format!(
                "{failed} check{} failed",
                if failed == 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(())
}

async fn gather(
    client: &Client,
) -> Result<(StatusJson, Vec<PeerJson>, Vec<DeviceJson>), ClientError> {
    Ok((
        client.status().await?,
        client.peers().await?,
        client.devices().await?,
    ))
}

fn print_check(c: &Check) {
    let mark = match c.status {
        Verdict::Ok => "ok  ",
        Verdict::Warn => "warn",
        Verdict::Fail => "FAIL",
    };
    println!(
        "{mark}  {}: {}",
        output::visible_line(&c.check),
        output::visible_line(&c.detail)
    );
    if let Some(fix) = &c.fix {
        println!("      fix: {fix}");
    }
}

/// How long ago `ms` was, in words: "3 min", "2 h", "5 days".
fn ago(now_ms: i64, ms: i64) -> String {
    let secs = (now_ms - ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// Every check, from what the daemon reports. `cli_version` is this `chatsync`'s.
pub fn checks(
    cli_version: &str,
    status: &StatusJson,
    peers: &[PeerJson],
    devices: &[DeviceJson],
    now_ms: i64,
) -> Vec<Check> {
    let mut out = vec![check(
        "daemon",
        Verdict::Ok,
        format!(
            "running (pid {}, up {})",
            status.pid,
            ago(now_ms, status.started_at)
        ),
    )];
    out.push(if status.version == cli_version {
        check(
            "versions",
            Verdict::Ok,
            format!("chatsync and chatsyncd {cli_version}"),
        )
    } else {
        check(
            "versions",
            Verdict::Warn,
            format!(
                "chatsync {cli_version} talks to chatsyncd {}: restart the daemon after an upgrade",
                status.version
            ),
        )
        .fix("chatsync daemon stop && chatsync daemon start")
    });
    out.push(store_check(status));
    if let Some(at) = status.removed_from_mesh_at {
        out.push(
            check(
                "mesh",
                Verdict::Fail,
                format!(
                    "this device was removed from the mesh at {}: no device syncs with it",
                    output::local_time(at)
                ),
            )
            .fix("pair it again: `chatsync pair` on a device of the mesh, then `chatsync join TICKET` here"),
        );
    }
    out.push(if status.listen_addrs.is_empty() {
        check(
            "network",
            Verdict::Fail,
            "listening on no address: other devices cannot reach this one",
        )
        .fix("check [network] listen in the config file (docs/configuration.md), then restart the daemon")
    } else {
        check(
            "network",
            Verdict::Ok,
            format!("listening on {}", status.listen_addrs.join(", ")),
        )
    });
    for r in &status.reservations {
        let name = format!("relay {}", output::short_id(&r.relay));
        out.push(match r.state {
            ReservationState::Reserved => check(
                name,
                Verdict::Ok,
                format!("reservation held: reachable at {}", r.relayed_addrs.join(", ")),
            ),
            state => check(
                name,
                Verdict::Warn,
                format!("no reservation ({state}): devices apart cannot reach this one through {}", r.address),
            )
            .fix("check that the relay runs and its address in [network] relays is right (`chatsync status` shows the address)"),
        });
    }
    out.extend(device_checks(status, peers, devices, now_ms));
    out
}

fn store_check(status: &StatusJson) -> Check {
    let size = output::human_bytes(status.store_bytes);
    let free = status.store_free_bytes.map(output::human_bytes);
    match status.store_state {
        StoreState::Failed => check(
            "store",
            Verdict::Fail,
            "a write to the store failed: nothing more is stored until the daemon restarts",
        )
        .fix("read the daemon's log for the cause (`journalctl --user -u chatsyncd`, or chatsyncd.log in the data directory), then `chatsync daemon stop && chatsync daemon start`"),
        StoreState::Full => check(
            "store",
            Verdict::Fail,
            format!(
                "the disk holding the store is nearly full ({} free): new posts are refused",
                free.unwrap_or_else(|| "?".into())
            ),
        )
        .fix(format!("free space on the disk holding {}", status.data_dir)),
        _ if status
            .store_free_bytes
            .is_some_and(|f| f < LOW_DISK_BYTES) =>
        {
            check(
                "store",
                Verdict::Warn,
                format!(
                    "healthy, {size}, but only {} free on its disk",
                    free.unwrap_or_default()
                ),
            )
            .fix(format!("free space on the disk holding {}", status.data_dir))
        }
        _ => check(
            "store",
            Verdict::Ok,
            match free {
                Some(free) => format!("healthy, {size}, {free} free"),
                None => format!("healthy, {size}"),
            },
        ),
    }
}

fn device_checks(
    status: &StatusJson,
    peers: &[PeerJson],
    devices: &[DeviceJson],
    now_ms: i64,
) -> Vec<Check> {
    let mut out = Vec::new();
    let others: Vec<&DeviceJson> = devices
        .iter()
        .filter(|d| d.trusted && !d.this_device)
        .collect();
    if others.is_empty() && status.removed_from_mesh_at.is_none() {
        out.push(
            check(
                "devices",
                Verdict::Warn,
                "no other devices: nothing syncs yet",
            )
            .fix("`chatsync pair` here, then `chatsync join TICKET` on the other device"),
        );
    }
    for d in others {
        let name = format!("device {} ({})", d.name, output::short_id(&d.id));
        let Some(p) = peers.iter().find(|p| p.device == d.id) else {
            out.push(
                check(name, Verdict::Warn, "never connected since the daemon started")
                    .fix("start chatsync on it; if it is on another network, give both a relay (docs/configuration.md, \"Devices apart\"), or `chatsync devices` to check its id"),
            );
            continue;
        };
        if let Some(until) = p.suspended_until {
            out.push(
                check(
                    name,
                    Verdict::Fail,
                    format!(
                        "suspended until {} for sending data no honest device sends ({} offences)",
                        output::local_time(until),
                        p.offences
                    ),
                )
                .fix(format!(
                    "if it is not yours any more: `chatsync devices remove {}`; else update chatsync on it",
                    d.id
                )),
            );
            continue;
        }
        if !p.connected {
            let last = match p.last_sync {
                Some(at) => format!("last synced {} ago", ago(now_ms, at)),
                None => "not synced since the daemon started".into(),
            };
            let long = if p.last_sync.is_some_and(|at| now_ms - at > LONG_APART_MS) {
                " (over a week)"
            } else {
                ""
            };
            out.push(
                check(name, Verdict::Warn, format!("not connected; {last}{long}"))
                .fix("start chatsync on it; if it is on another network, give both a relay (docs/configuration.md, \"Devices apart\")"),
            );
            continue;
        }
        let path = output::path_words(p);
        let sync = output::sync_words(p.chats_behind, p.chats_ahead);
        let mut detail = format!("connected ({path})");
        if !sync.is_empty() {
            detail.push_str(&format!(", {sync}"));
        }
        if p.offences > 0 {
            out.push(
                check(
                    name,
                    Verdict::Warn,
                    format!("{detail}; {} offences since the daemon started", p.offences),
                )
                .fix("check the daemon's log for what it sent; remove it if it is not yours"),
            );
        } else {
            out.push(check(name, Verdict::Ok, detail));
        }
    }
    for p in peers.iter().filter(|p| p.connected) {
        if !devices.iter().any(|d| d.id == p.device && d.trusted) {
            out.push(
                check(
                    format!("device {}", output::short_id(&p.device)),
                    Verdict::Warn,
                    "connected, but not in this device's roster: it does not sync",
                )
                .fix("pair it (`chatsync pair` here, `chatsync join TICKET` there)"),
            );
        }
    }
    if status.sync.state == SyncStatus::Syncing && status.sync.peers_connected > 0 {
        out.push(check(
            "sync",
            Verdict::Ok,
            format!(
                "catching up: {} chats behind, {} ahead, {} sessions",
                status.sync.chats_behind, status.sync.chats_ahead, status.sync.sessions
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(store_state: &str, free: Option<u64>) -> StatusJson {
        serde_json::from_value(json!({
            "device_id": "12D3KooWLz1fvPKpHvqAC7uigDiMUmNzHrCwNg6VDjmSMre4qqMc",
            "name": "desk", "version": "0.1.0", "pid": 7, "data_dir": "/home/u/.local/share/chatsync",
            "socket": "/run/user/1000/chatsync/api.sock", "chats": 1, "loaded_chats": 0,
            "loaded_bytes_estimate": 0, "store_bytes": 4096, "store_healthy": store_state != "failed",
            "store_state": store_state, "store_free_bytes": free, "started_at": 0, "uptime_ms": 0,
            "listen_addrs": ["/ip4/127.0.0.1/tcp/4001"], "peers_connected": 0,
            "sync": {"state": "offline", "peers_connected": 0, "peers_trusted": 0,
                     "chats_behind": 0, "chats_ahead": 0, "sessions": 0, "last_sync": null},
            "removed_from_mesh_at": null, "reservations": [], "relay": null
        }))
        .unwrap()
    }

    fn verdict(found: &[Check], name: &str) -> Verdict {
        found.iter().find(|c| c.check == name).unwrap().status
    }

    #[test]
    fn the_store_fails_when_it_failed_or_is_full_and_warns_when_its_disk_is_low() {
        let cases = [
            ("ok", Some(50 << 30), Verdict::Ok),
            ("ok", Some(100 << 20), Verdict::Warn),
            ("full", Some(10 << 20), Verdict::Fail),
            ("failed", Some(50 << 30), Verdict::Fail),
        ];
        for (state, free, expected) in cases {
            let found = checks("0.1.0", &status(state, free), &[], &[], 1_000);
            assert_eq!(verdict(&found, "store"), expected, "{state} {free:?}");
            let store = found.iter().find(|c| c.check == "store").unwrap();
            assert_eq!(store.fix.is_some(), expected != Verdict::Ok, "{store:?}");
        }
    }

    #[test]
    fn another_version_of_the_daemon_is_a_warning_with_the_restart() {
        let found = checks("0.2.0", &status("ok", None), &[], &[], 1_000);
        assert_eq!(verdict(&found, "versions"), Verdict::Warn);
        let found = checks("0.1.0", &status("ok", None), &[], &[], 1_000);
        assert_eq!(verdict(&found, "versions"), Verdict::Ok);
    }
}
