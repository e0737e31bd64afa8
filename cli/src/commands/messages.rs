use chatsync_api::wire::MessageJson;

use chatsync_api::Client;

use super::attachments::{self, Source};
use crate::{output, retry};

pub async fn post(
    client: &Client,
    chat: &str,
    text: &str,
    reply_to: Option<&str>,
    files: Vec<Source>,
    key: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    // Uploaded first: a post names only bytes this device has. Uploading again (a run after a
    // lost answer) stores nothing twice; the bytes name themselves.
    let mut attached = Vec::with_capacity(files.len());
    for file in attachments::open_all(files).await? {
        attached.push(attachments::upload(client, file, json).await?);
    }
    let key = key.unwrap_or_else(retry::new_key);
    let msg = retry::with_key("post", &key, |key| {
        let attached = attached.clone();
        async move {
            client
                .post_with_attachments(chat, text, reply_to, attached, Some(&key))
                .await
        }
    })
    .await?;
    if json {
        output::json_line(&msg)
    } else {
        // The id alone, so that scripts can capture it.
        println!("{}", msg.id);
        Ok(())
    }
}

pub async fn edit(
    client: &Client,
    chat: &str,
    message: &str,
    text: &str,
    json: bool,
) -> anyhow::Result<()> {
    let msg = client.edit(chat, message, text).await?;
    show(&msg, json)
}

pub async fn delete(client: &Client, chat: &str, message: &str, json: bool) -> anyhow::Result<()> {
    let msg = client.delete(chat, message).await?;
    show(&msg, json)
}

pub async fn react(
    client: &Client,
    chat: &str,
    message: &str,
    reaction: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let msg = client.react(chat, message, reaction).await?;
    show(&msg, json)
}

pub async fn mark_read(
    client: &Client,
    chat: &str,
    message: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let state = client.mark_read(chat, message).await?;
    if json {
        return output::json_line(&state);
    }
    match &state.message {
        Some(m) => println!("read up to {}; {} unread", output::short(m), state.unread),
        None => println!("nothing to mark read"),
    }
    Ok(())
}

fn show(msg: &MessageJson, json: bool) -> anyhow::Result<()> {
    if json {
        output::json_line(msg)
    } else {
        println!("{}", output::message_line(msg, 0));
        Ok(())
    }
}
