use crate::{args::ChatCommand, client::Client, output};

pub async fn chat(cmd: ChatCommand, client: &Client, json: bool) -> anyhow::Result<()> {
    let (chat, verb) = match cmd {
        ChatCommand::Create { name } => (client.create_chat(&name).await?, "created"),
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
