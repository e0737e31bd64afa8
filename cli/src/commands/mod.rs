//! One handler per command. Each talks to the daemon only through the [`Client`].

mod attachments;
mod backup;
mod chats;
mod daemon;
mod devices;
mod doctor;
mod log;
mod messages;
mod pairing;
mod web;

use std::io::Read;

use anyhow::Context;
use chatsync_api::Client;
use chatsync_daemon::paths::Paths;
use clap::CommandFactory;

use crate::args::{AttachmentCommand, Cli, Command};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = Paths::resolve(&cli.paths)?;
    let client = Client::new(&paths.socket)?;
    let json = cli.json;
    match cli.command {
        Command::Daemon(cmd) => daemon::run(cmd, &cli.paths, &paths, &client, json).await,
        Command::Status => daemon::status(&client, json).await,
        Command::Chat(cmd) => chats::chat(cmd, &client, json).await,
        Command::Chats => chats::list(&client, json).await,
        Command::Devices { command } => devices::run(command, &client, json).await,
        Command::Peers => devices::peers(&client, json).await,
        Command::Doctor => doctor::run(&client, json).await,
        Command::Backup(cmd) => backup::run(cmd, &client, json).await,
        Command::Web { command } => web::run(command, &client, json).await,
        Command::Pair { expires } => pairing::pair(&client, expires, json).await,
        Command::Join { ticket, name } => {
            pairing::join(&client, &ticket, name.as_deref(), json).await
        }
        Command::Post {
            chat,
            text,
            files,
            name,
            media_type,
            reply_to,
            idempotency_key,
        } => {
            let files =
                attachments::sources(files, name, media_type, text.as_deref() == Some("-"))?;
            // Left out only with files (clap sees to that): a message of files alone.
            let text = match text {
                Some(text) => text_arg(&text)?,
                None => String::new(),
            };
            messages::post(
                &client,
                &chat,
                &text,
                reply_to.as_deref(),
                files,
                idempotency_key,
                json,
            )
            .await
        }
        Command::Attachment(AttachmentCommand::Get {
            chat,
            message,
            out,
            index,
        }) => attachments::get(&client, &chat, &message, out, index, json).await,
        Command::Log {
            chat,
            count,
            follow,
        } => log::run(&client, &chat, count, follow, json).await,
        Command::Edit {
            chat,
            message,
            text,
        } => messages::edit(&client, &chat, &message, &text_arg(&text)?, json).await,
        Command::Delete { chat, message } => messages::delete(&client, &chat, &message, json).await,
        Command::React {
            chat,
            message,
            reaction,
            remove,
        } => {
            let reaction = if remove { None } else { reaction };
            messages::react(&client, &chat, &message, reaction.as_deref(), json).await
        }
        Command::MarkRead { chat, message } => {
            messages::mark_read(&client, &chat, message.as_deref(), json).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "chatsync",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// A text argument: itself, or standard input when it is `-` (without its final newline).
fn text_arg(arg: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let limit = chatsync_model::limits::MAX_TEXT_BYTES as u64;
    let mut text = String::new();
    std::io::stdin()
        .take(limit + 2)
        .read_to_string(&mut text)
        .context("cannot read the text from standard input (is it UTF-8?)")?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.len() as u64 > limit {
        // Refused like the same text given as an argument, which the daemon refuses.
        return Err(crate::exit::Failure::error(
            crate::exit::REFUSED,
            format!("the text on standard input is longer than {limit} bytes"),
        ));
    }
    Ok(text)
}
