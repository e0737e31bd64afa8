//! `chatsync backup init|now|list|verify|restore`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use chatsync_api::{
    Client,
    wire::{BackupInitRequest, RestoreRequest},
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{args::BackupCommand, output};

pub async fn run(cmd: BackupCommand, client: &Client, json: bool) -> anyhow::Result<()> {
    let cwd = std::env::current_dir()
        .ok()
        .map(|d| d.display().to_string());
    match cmd {
        BackupCommand::Init {
            target,
            passphrase_stdin,
            recovery_key,
        } => {
            let passphrase = if recovery_key {
                None
            } else {
                Some(secret(passphrase_stdin, "passphrase for the backup", true)?)
            };
            let done = client
                .backup_init(&BackupInitRequest {
                    target,
                    passphrase,
                    recovery_key,
                    cwd,
                })
                .await?;
            if json {
                return output::json_line(&done);
            }
            println!(
                "backups go to {} (repository {})",
                done.target, done.repository
            );
            if let Some(key) = &done.recovery_key {
                show_recovery_key(key)?;
            }
            println!("back up now with `chatsync backup now`");
            Ok(())
        }
        BackupCommand::Now => {
            let report = with_progress(client, json, "backing up", client.backup_now()).await?;
            if json {
                return output::json_line(&report);
            }
            println!(
                "snapshot {} (#{}): {} chats, {} messages, {} attachments; wrote {} in {} \
                 objects in {:.1} s",
                report.snapshot,
                report.seq,
                report.chats,
                report.messages,
                report.attachments,
                output::human_bytes(report.bytes_written),
                report.objects_written,
                report.elapsed_ms as f64 / 1000.0
            );
            Ok(())
        }
        BackupCommand::List => {
            let snapshots = client.backup_snapshots().await?;
            if json {
                for s in &snapshots {
                    output::json_line(s)?;
                }
                return Ok(());
            }
            if snapshots.is_empty() {
                println!("no snapshots yet: run `chatsync backup now`");
            }
            for s in &snapshots {
                println!(
                    "{}  #{:<4} {}  {} chats  {} messages  {}",
                    s.id,
                    s.seq,
                    output::local_time(s.created_at),
                    s.chats,
                    s.messages,
                    output::human_bytes(s.bytes)
                );
            }
            Ok(())
        }
        BackupCommand::Verify { snapshot } => {
            let spinner = spinner(json, "reading back every object");
            let report = client.backup_verify(snapshot.as_deref()).await;
            spinner.finish_and_clear();
            let report = report?;
            if json {
                return output::json_line(&report);
            }
            println!(
                "ok: {} snapshots, {} objects, {} read back and checked in {:.1} s",
                report.snapshots,
                report.objects,
                output::human_bytes(report.bytes),
                report.elapsed_ms as f64 / 1000.0
            );
            Ok(())
        }
        BackupCommand::Restore {
            target,
            snapshot,
            passphrase_stdin,
            recovery_key_stdin,
        } => {
            let (passphrase, recovery_key) = if recovery_key_stdin {
                (None, Some(secret(true, "recovery key", false)?))
            } else {
                (
                    Some(secret(passphrase_stdin, "passphrase of the backup", false)?),
                    None,
                )
            };
            let request = RestoreRequest {
                target,
                passphrase,
                recovery_key,
                snapshot,
                cwd,
            };
            let report =
                with_progress(client, json, "restoring", client.backup_restore(&request)).await?;
            if json {
                return output::json_line(&report);
            }
            println!(
                "restored snapshot {}: {} chats, {} messages in {:.1} s",
                report.snapshot,
                report.restored,
                report.messages,
                report.elapsed_ms as f64 / 1000.0
            );
            if report.already_here > 0 {
                println!(
                    "{} chats were here already: {} messages merged into them",
                    report.already_here, report.merged_messages
                );
            }
            if report.not_merged > 0 {
                println!(
                    "{} chats could not be merged (see the daemon's log)",
                    report.not_merged
                );
            }
            if report.attachments > 0 || report.attachments_skipped > 0 {
                println!("{} attachments restored", report.attachments);
            }
            if report.attachments_skipped > 0 {
                println!(
                    "{} attachments left in the backup: they do not fit this device's \
                     attachment quota or disk",
                    report.attachments_skipped
                );
            }
            Ok(())
        }
    }
}

/// A secret from standard input (one line), or asked for on the terminal (twice when it is
/// new).
fn secret(from_stdin: bool, what: &str, new: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read standard input")?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the {what} on: use --passphrase-stdin");
    }
    let first = rpassword::prompt_password(format!("{what}: "))?;
    if new {
        let again = rpassword::prompt_password("again: ")?;
        if again != first {
            bail!("the two passphrases differ");
        }
    }
    Ok(first)
}

fn show_recovery_key(key: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "Your recovery key (shown this once; store it safely, offline):"
    )?;
    writeln!(out)?;
    writeln!(out, "    {key}")?;
    writeln!(out)?;
    if out.is_terminal()
        && let Ok(art) = output::qr_code(key, qrcode::EcLevel::M)
    {
        writeln!(out, "{art}")?;
    }
    writeln!(
        out,
        "Without it the backup cannot be restored: nobody else holds a copy."
    )?;
    Ok(())
}

/// Runs `work` (a backup or a restore) with a bar fed by the daemon's `backup.progress`
/// events, on a terminal.
async fn with_progress<T>(
    client: &Client,
    json: bool,
    what: &str,
    work: impl std::future::Future<Output = Result<T, chatsync_api::ClientError>>,
) -> Result<T, chatsync_api::ClientError> {
    if json || !std::io::stderr().is_terminal() {
        return work.await;
    }
    let bar = ProgressBar::new(0).with_message(what.to_string());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} chats ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let watcher = client.progress_events().await.ok().map(|mut events| {
        let bar = bar.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = events.next().await {
                if let chatsync_api::wire::EventJson::BackupProgress { done, total, .. } = event {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            }
        })
    });
    let outcome = work.await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    bar.finish_and_clear();
    outcome
}

fn spinner(json: bool, what: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(what.to_string());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
