use chatsync_api::Client;

use crate::{args::ChatCommand, output, retry};

pub async fn chat(cmd: ChatCommand, client: &Client, json: bool) -> anyhow::Result<()> {
    let (chat, verb) = match cmd {
        ChatCommand::Create {
            name,
            idempotency_key,
        } => {
            let key = idempotency_key.unwrap_or_else(retry::new_key);
            let chat = retry::with_key("chat", &key, |key| {
                let name = &name;
                async move { client.create_chat_keyed(name, Some(&key)).await }
            })
            .await?;
            (chat, "created")
        }
        ChatCommand::Rename { chat, title } => {
            (client.rename_chat(&chat, &title).await?, "renamed")
        }
    };
    if json {
        output::json_line(&chat)
    } else {
        println!("{verb} chat {:?}  {}", chat.title, chat.id);
        Ok(())
    }
}

pub async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let chats = client.chats().await?;
    if json {
        for chat in &chats {
            output::json_line(chat)?;
        }
    } else if chats.is_empty() {
        println!("no chats yet; create one with `chatsync chat create NAME`");
    } else {
        for line in output::chat_table(&chats) {
            println!("{line}");
        }
    }
    Ok(())
}
