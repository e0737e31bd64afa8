//! `chatsync web [status|enable|disable|link|sessions|revoke]`.

use chatsync_api::{
    Client,
    wire::{WebSettingsRequest, WebStatusJson},
};

use crate::{args::WebCommand, output};

pub async fn run(cmd: Option<WebCommand>, client: &Client, json: bool) -> anyhow::Result<()> {
    match cmd.unwrap_or(WebCommand::Status) {
        WebCommand::Status => show(&client.web_status().await?, json),
        WebCommand::Enable {
            listen,
            allow_remote,
        } => {
            let request = WebSettingsRequest {
                enabled: true,
                listen,
                allow_remote,
            };
            let status = client.web_settings(&request).await?;
            show(&status, json)?;
            if !json {
                println!("link a browser with `chatsync web link`");
            }
            Ok(())
        }
        WebCommand::Disable => {
            let request = WebSettingsRequest {
                enabled: false,
                listen: None,
                allow_remote: false,
            };
            show(&client.web_settings(&request).await?, json)
        }
        WebCommand::Link => {
            let link = client.web_link().await?;
            if json {
                return output::json_line(&link);
            }
            if let Ok(art) = output::qr_code(&link.url, qrcode::EcLevel::L) {
                println!("{art}");
            }
            println!("{}", link.url);
            println!(
                "Open it in the browser to link (once; until {}).",
                output::local_time(link.expires_at)
            );
            Ok(())
        }
        WebCommand::Sessions => {
            let sessions = client.web_sessions().await?;
            if json {
                for s in &sessions {
                    output::json_line(s)?;
                }
                return Ok(());
            }
            if sessions.is_empty() {
                println!("no browser is linked");
            }
            for s in &sessions {
                println!(
                    "{}  last seen {} from {}  {}",
                    s.id,
                    output::local_time(s.last_seen),
                    output::visible_line(&s.address),
                    output::visible_line(&s.user_agent)
                );
            }
            Ok(())
        }
        WebCommand::Revoke { session } => {
            let revoked = client.web_revoke(&session).await?;
            if json {
                return output::json_line(&revoked);
            }
            println!("unlinked {} browser(s)", revoked.revoked);
            Ok(())
        }
    }
}

fn show(status: &WebStatusJson, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json_line(status);
    }
    match &status.url {
        Some(url) if status.enabled => println!(
            "web client on at {url} ({} browser(s) linked{})",
            status.sessions,
            if status.allow_remote {
                "; reachable from other computers"
            } else {
                ""
            }
        ),
        _ => println!("web client off"),
    }
    Ok(())
}
