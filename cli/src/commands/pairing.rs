//! `chatsync pair` (on a device in the mesh) and `chatsync join TICKET` (on the new device).
//!
//! `pair` subscribes to the event stream before it asks for the ticket, so the `paired` event
//! cannot slip past it; it then waits for the join, the ticket's expiry, or Ctrl-C (which
//! cancels the ticket, so that a ticket left on a screen is worth nothing afterwards).
//! `join` links the device, then follows `status` until every chat has arrived.

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use chatsync_api::{
    Client,
    wire::{EventJson, InviteJson, StatusJson, SyncStatus},
};
use serde_json::json;

use crate::{
    exit::{self, Failure},
    output,
};

/// How often `join` looks at the sync state.
const POLL: Duration = Duration::from_millis(200);
/// `join` gives up waiting when nothing has moved for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn pair(client: &Client, expires_secs: u64, json: bool) -> anyhow::Result<()> {
    // Listening for Ctrl-C from before the ticket exists, so that no interrupt leaves it open.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut events = client.events(None).await?;
    let invite = client.create_invite(expires_secs).await?;
    show_ticket(&invite, json)?;
    let left_ms = invite.expires_at - chatsync_daemon::engine::now_ms();
    let expiry = tokio::time::sleep(Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            event = events.next() => match event? {
                Some(EventJson::Paired { invite: id, device_id, name }) if id == invite.invite => {
                    if json {
                        output::json_line(&json!({
                            "joined": { "device_id": device_id, "name": name }
                        }))?;
                    } else {
                        println!("{} ({device_id}) joined", crate::output::visible_line(&name));
                    }
                    return Ok(());
                }
                Some(_) => {}
                None => {
                    return Err(Failure::error(
                        exit::FAILURE,
                        "the daemon stopped; the ticket no longer works",
                    ));
                }
            },
            _ = &mut expiry => {
                return Err(Failure::error(
                    exit::TIMED_OUT,
                    "the ticket expired before a device joined; run `chatsync pair` again",
                ));
            }
            _ = interrupt.recv() => {
                let cancelled = client.cancel_invite(&invite.invite).await.is_ok();
                return Err(Failure::error(
                    exit::INTERRUPTED,
                    if cancelled {
                        "cancelled; the ticket no longer works"
                    } else {
                        "interrupted (the ticket could not be cancelled; it expires on its own)"
                    },
                ));
            }
        }
    }
}

fn show_ticket(invite: &InviteJson, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json_line(&json!({ "ticket": invite.ticket }));
    }
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        // Upper case (the ticket reads the same in any case) lets the QR code use its compact
        // alphanumeric mode for the base32 body; a screen needs little error correction.
        let data = invite.ticket.to_ascii_uppercase();
        match output::qr_code(&data, qrcode::EcLevel::L) {
            Ok(art) => writeln!(out, "{art}")?,
            Err(e) => writeln!(out, "(no QR code: {e})")?,
        }
    }
    writeln!(out, "{}", invite.ticket)?;
    writeln!(out)?;
    writeln!(
        out,
        "On the new device, run:  chatsync join {}",
        invite.ticket
    )?;
    writeln!(
        out,
        "Waiting for it to join (the ticket works once, until {}; Ctrl-C cancels it)...",
        output::local_time(invite.expires_at)
    )?;
    out.flush()?;
    Ok(())
}

pub async fn join(
    client: &Client,
    ticket: &str,
    name: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let joined = client.join(ticket, name).await?;
    if json {
        output::json_line(&json!({
            "joined": { "device_id": joined.device_id, "name": joined.name }
        }))?;
    } else {
        println!(
            "joined the mesh of {} ({})",
            crate::output::visible_line(&joined.name),
            joined.device_id
        );
    }
    wait_for_chats(client, json).await
}

/// Follows the sync state until this device is in sync with a connected device, showing the
/// chats as they arrive (a bar on a terminal, NDJSON lines with `--json`).
async fn wait_for_chats(client: &Client, json: bool) -> anyhow::Result<()> {
    let bar = (!json).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("receiving chats {bar:30} {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last = None;
    let mut last_move = tokio::time::Instant::now();
    loop {
        let status = client.status().await?;
        let now = (status.chats, status.sync.chats_behind);
        if last != Some(now) {
            last = Some(now);
            last_move = tokio::time::Instant::now();
            report_progress(&status, bar.as_ref(), json)?;
        }
        if in_sync(&status) {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
                let plural = if status.chats == 1 { "" } else { "s" };
                println!("in sync: {} chat{plural}", status.chats);
            } else {
                output::json_line(&json!({ "in_sync": { "chats": status.chats } }))?;
            }
            return Ok(());
        }
        if last_move.elapsed() > STALL_TIMEOUT {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            return Err(Failure::error(
                exit::TIMED_OUT,
                format!(
                    "joined, but the chats have not all arrived ({} so far); they keep \
                     arriving in the background while the devices are connected \
                     (see `chatsync status`)",
                    status.chats
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn in_sync(status: &StatusJson) -> bool {
    status.sync.state == SyncStatus::InSync && status.sync.peers_connected > 0
}

fn report_progress(
    status: &StatusJson,
    bar: Option<&indicatif::ProgressBar>,
    json: bool,
) -> anyhow::Result<()> {
    let (chats, behind) = (status.chats, status.sync.chats_behind);
    if json {
        return output::json_line(&json!({
            "progress": { "chats": chats, "behind": behind, "state": status.sync.state }
        }));
    }
    if let Some(bar) = bar {
        bar.set_length((chats + behind) as u64);
        bar.set_position(chats as u64);
    }
    Ok(())
}
