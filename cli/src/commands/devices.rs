//! `chatsync devices [list|add|remove]` and `chatsync peers`.

use chatsync_api::wire::DeviceJson;

use chatsync_api::Client;

use crate::{args::DevicesCommand, output};

pub async fn run(cmd: Option<DevicesCommand>, client: &Client, json: bool) -> anyhow::Result<()> {
    match cmd.unwrap_or(DevicesCommand::List) {
        DevicesCommand::List => list(client, json).await,
        DevicesCommand::Add { device_id, name } => {
            let device = client.add_device(&device_id, name.as_deref()).await?;
            show(&device, "trusted", json)
        }
        DevicesCommand::Remove { device } => {
            let device = client.remove_device(&device).await?;
            show(&device, "removed", json)
        }
    }
}

async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let devices = client.devices().await?;
    if json {
        for d in &devices {
            output::json_line(d)?;
        }
        return Ok(());
    }
    for line in output::device_table(&devices) {
        println!("{line}");
    }
    Ok(())
}

fn show(device: &DeviceJson, verb: &str, json: bool) -> anyhow::Result<()> {
    if json {
        output::json_line(device)
    } else {
        println!(
            "{verb} {} ({})",
            device.id,
            crate::output::visible_line(&device.name)
        );
        Ok(())
    }
}

pub async fn peers(client: &Client, json: bool) -> anyhow::Result<()> {
    let removed = client.status().await?.removed_from_mesh_at;
    if !json && let Some(at) = removed {
        eprintln!("{}", super::daemon::removed_notice(at));
    }
    let peers = client.peers().await?;
    if json {
        for p in &peers {
            output::json_line(p)?;
        }
    } else if peers.is_empty() {
        // A removed device has nobody, and adding devices is not its way back.
        if removed.is_none() {
            println!("no other devices yet; pair one with `chatsync pair`");
        }
    } else {
        for line in output::peer_table(&peers) {
            println!("{line}");
        }
    }
    Ok(())
}
