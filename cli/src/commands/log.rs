//! `chatsync log`: the latest messages, and with `--follow` every change after them.
//!
//! To miss nothing between the listing and the live stream, the stream is opened first (the
//! daemon's `hello` line marks the point from which nothing is missed), then the messages are
//! listed, then the stream is read; a message listed and also streamed is shown once.

use std::collections::HashSet;

use anyhow::bail;
use chatsync_api::wire::{EventJson, MessageJson};

use chatsync_api::Client;

use crate::{exit, output};

pub async fn run(
    client: &Client,
    chat: &str,
    count: usize,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    // Resolve once, so a title that becomes ambiguous later does not matter.
    let chat_id = client.chat(chat).await?.id;
    let mut stream = if follow {
        Some(client.events(Some(&chat_id)).await?)
    } else {
        None
    };
    let messages = if count == 0 {
        Vec::new()
    } else {
        fetch_last(client, &chat_id, count).await?
    };
    if json {
        for m in &messages {
            output::json_line(m)?;
        }
    } else {
        for line in output::message_lines(&messages) {
            println!("{line}");
        }
    }
    let Some(stream) = stream.as_mut() else {
        return Ok(());
    };
    let mut shown: HashSet<String> = messages.into_iter().map(|m| m.id).collect();
    loop {
        let Some(event) = stream.next().await? else {
            eprintln!("the daemon stopped; no more messages will arrive");
            std::process::exit(exit::NOT_RUNNING.into());
        };
        let (message, change) = match event {
            EventJson::MessageCreated { message } => {
                if !shown.insert(message.id.clone()) {
                    continue;
                }
                (message, Change::Created)
            }
            EventJson::MessageEdited { message } => (message, Change::Edited),
            EventJson::MessageDeleted { message } => (message, Change::Deleted),
            EventJson::MessageReaction { message } => (message, Change::Reaction),
            EventJson::Lagged { missed } => {
                eprintln!("warning: fell behind and missed {missed} events");
                continue;
            }
            _ => continue,
        };
        print_live(&message, change, json)?;
    }
}

/// The last `count` messages, paging backwards as the API returns at most 1000 at a time.
async fn fetch_last(client: &Client, chat: &str, count: usize) -> anyhow::Result<Vec<MessageJson>> {
    const PAGE: usize = 1000;
    let mut out: Vec<MessageJson> = Vec::new();
    let mut before: Option<String> = None;
    while out.len() < count {
        let want = (count - out.len()).min(PAGE);
        let mut page = client.messages(chat, want, before.as_deref()).await?;
        let got = page.len();
        if got == 0 {
            break;
        }
        before = page.first().map(|m| m.id.clone());
        page.append(&mut out);
        out = page;
        if got < want {
            break;
        }
    }
    if out.len() > count {
        bail!("the daemon returned more messages than asked for");
    }
    Ok(out)
}

/// What happened to a message shown live.
#[derive(Clone, Copy)]
enum Change {
    Created,
    Edited,
    Deleted,
    Reaction,
}

impl Change {
    /// As the `event` field of a live `--json` line.
    fn name(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Edited => "edited",
            Change::Deleted => "deleted",
            Change::Reaction => "reaction",
        }
    }
}

/// A message that arrived or changed while following. With `--json`, the message's object
/// with `"event"` saying which (`created`, `edited`, `deleted`, `reaction`), so that a
/// reaction is not taken for a new post; as text, a change is marked `[edited]` and so on.
fn print_live(message: &MessageJson, change: Change, json: bool) -> anyhow::Result<()> {
    if json {
        let mut line = serde_json::to_value(message)?;
        if let Some(object) = line.as_object_mut() {
            object.insert("event".into(), change.name().into());
        }
        return output::json_line(&line);
    }
    let line = output::message_line(message, 0);
    match change {
        Change::Created => println!("{line}"),
        Change::Edited => println!("[edited] {line}"),
        Change::Deleted => println!("[deleted] {line}"),
        Change::Reaction => println!("[reactions] {line}"),
    }
    Ok(())
}
